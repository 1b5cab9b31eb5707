"""One writer per output: an exclusive lock on every output a command writes.

Two processes writing one output mix their rows (two ``mtllm predict`` runs on one ``--output`` once wrote
3,200 rows for 2,000 inputs, both marked complete) or log every step twice. :func:`exclusive_output` holds a
lock for as long as a command writes an output; a second process is refused at once, in one line naming
the holder (process id, host, command, since when), before it does any work.

The lock is `filelock <https://py-filelock.readthedocs.io>`_'s :class:`~filelock.FileLock`: an OS lock
(``flock`` on POSIX) on a hidden file, so the kernel lets go of it when its holder dies in any way,
``kill -9`` included, and the next writer takes it over with no stale-lock rule to get wrong. The lock
file of an output, folder or file, is ``.<name>.lock`` beside it (so a refused command leaves the output as it
was, and a folder's own listing never shows the lock). Who holds it is written (by the holder, after it has the lock) to
``<lock file>.json`` and removed on release; the
lock files themselves stay, as filelock leaves them (removing one while another process may be opening it
would let two processes hold "the" lock). Under ``torchrun`` / ``accelerate launch`` rank 0 holds the lock for
the whole run and the other ranks take none. An OS lock is per open file, not per process, so a process that
already holds an output's lock takes it again at no cost (a pipeline that locks a stage folder, then calls
the stage's function, which locks the same folder).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from mtllm.errors import ConfigError

__all__ = ["lock_file", "exclusive_output", "holder_of"]


_held: dict[str, list] = {}  # lock file -> [FileLock, depth], for the locks this process holds
_guard = threading.Lock()


def lock_file(output: str | Path) -> Path:
    """The lock file of ``output`` (a folder or a file alike): ``.<name>.lock`` beside it, so that the output
    itself is untouched by a command that is refused."""
    output = Path(output).absolute()
    return output.with_name(f".{output.name}.lock")


def _describe(info: dict) -> str:
    command = " ".join(info.get("argv") or [])
    command = command if len(command) <= 120 else command[:117] + "..."
    return (f"process {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"
            + (f": {command}" if command else ""))


def holder_of(lock: Path) -> str:
    """Who holds ``lock``, from its ``.json`` record (or "another process" while none is readable yet)."""
    try:
        info = json.loads(Path(f"{lock}.json").read_text(encoding="utf-8"))
        return _describe(info) if isinstance(info, dict) else "another process"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def exclusive_output(output: str | Path, *, what: str = "output") -> Iterator[Path]:
    """Hold the lock of ``output`` (a folder or a file) while the block runs.

    Raises :class:`~mtllm.errors.ConfigError` at once (no waiting) when another process holds it, naming the
    holder; ``what`` names the output in that message. Creates the folder the lock file lives in (the output's
    parent), not the output. Re-entrant within a process. Yields the lock file."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate launch: rank 0 holds it for the whole run
        yield lock_file(output)
        return
    path = lock_file(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{what} {output} cannot be created ({err.strerror or err}): choose another {what} or fix "
                          f"its permissions / free space; nothing was written") from None
    key = str(path.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield path
        finally:
            with _guard:
                entry[1] -= 1
        return
    lock = FileLock(key, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{what} {output} is being written by {holder_of(path)}: two writers would mix their "
                          f"results; wait for that run to finish (or stop it: a killed run's lock is taken over "
                          f"by the next run), or choose another {what}") from None
    except OSError as err:  # a read-only folder, or one where no lock file can be made
        raise ConfigError(f"{what} {output}: cannot create its lock file {path} ({err.strerror or err}): choose "
                          f"another {what} or fix its permissions / free space; nothing was written") from None
    record = Path(f"{key}.json")
    with _guard:
        _held[key] = [lock, 1]
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):  # the record only names the holder; the lock is what counts
            record.write_text(json.dumps(info), encoding="utf-8")
        yield path
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            record.unlink()
        lock.release()
