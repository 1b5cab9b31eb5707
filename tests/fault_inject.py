"""Inject one fault into the file writes of an ``mtllm`` command, for tests/test_faults.py.

As a script it runs the command line with the fault installed first (so every module imported later
sees the patched writers)::

    python tests/fault_inject.py '<plan as JSON>' COMMAND [--key value ...]

A plan (:class:`Plan`) names the fault and the writes it hits (an :func:`fnmatch.fnmatch` pattern of
absolute paths):

- ``kill``: the first ``skip`` matching writes go through; the next one writes ``partial`` bytes, then
  the process sends itself ``SIGKILL`` (a file torn at an exact point; ``partial`` larger than the file:
  killed right after the file is written, before anything else happens). With ``on="replace"`` the
  matching events are renames (``os.replace``/``os.rename`` onto a matching path), and the kill comes
  right after one: an atomic write has just completed, the next has not begun.
- ``enospc``: the same write stops after ``partial`` bytes with ``OSError(ENOSPC)``, and from then on
  every write under ``scope`` (default: those matching ``match``) fails at once: the disk is full.
- ``eacces``: every creation, write, rename or removal of a path strictly inside the folder ``scope``
  raises ``PermissionError(EACCES)``: a read-only folder, also for root (for whom ``chmod`` does not
  stop writes).

Writes seen: ``open``/``io.open``/``os.open`` for writing (so ``pathlib``, ``json``, ``numpy``,
``matplotlib``), ``safetensors.torch.save_file`` and ``torch.save`` (their files are written by the
real function, then cut to ``partial`` bytes), and ``os.mkdir``/``rmdir``/``unlink``/``rename``/
``replace`` for ``eacces``. Writes through a memory map (the encoder cache's hidden states) are not
seen. :func:`install` also works inside a test process, where only the ``open`` family and module
attributes looked up at call time are patched (modules that bound ``save_file`` by name keep theirs).
"""
from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Plan", "install", "command"]


@dataclass(frozen=True)
class Plan:
    fault: str  # "kill", "enospc" or "eacces"
    match: str = ""  # fnmatch pattern of absolute paths (kill, enospc)
    skip: int = 0  # matching writes that go through before the fault
    partial: int = 0  # bytes of the hit file written before the fault
    scope: str | None = None  # enospc: pattern of the writes that fail afterwards; eacces: the read-only folder
    on: str = "write"  # kill: "write" (inside a file write) or "replace" (right after a rename onto `match`)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def command(plan: Plan, *argv: str) -> list[str]:
    """The argv that runs ``mtllm *argv`` with ``plan`` installed."""
    return [sys.executable, str(Path(__file__).resolve()), plan.to_json(), *argv]


def _abs(path: Any, dir_fd: int | None = None) -> str | None:
    if isinstance(path, int):
        return None
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if dir_fd is not None and not os.path.isabs(path):
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return os.path.abspath(path)


class _Injector:
    def __init__(self, plan: Plan | None = None) -> None:
        self.arm(plan)

    def arm(self, plan: Plan | None) -> None:
        self.plan, self.seen, self.tripped = plan or Plan("none"), 0, False
        self.root = os.path.abspath(plan.scope) if plan is not None and plan.fault == "eacces" else None

    # which writes fail
    def _read_only(self, path: str | None) -> bool:
        return self.root is not None and path is not None and path.startswith(self.root + os.sep)

    def guard(self, path: str | None) -> None:
        """Before creating, renaming or removing ``path``: raise when the folder is read-only."""
        if self._read_only(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    def budget(self, path: str | None) -> int | None:
        """Before writing the file ``path``: ``None`` (write it normally), or how many bytes to write before
        the fault fires; raises at once where nothing can be written."""
        self.guard(path)
        plan = self.plan
        if path is None or plan.fault not in ("kill", "enospc") or plan.on != "write":
            return None
        if self.tripped:
            if plan.fault == "enospc" and fnmatch.fnmatch(path, plan.scope or plan.match):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return None
        if not fnmatch.fnmatch(path, plan.match):
            return None
        self.seen += 1
        if self.seen <= plan.skip:
            return None
        self.tripped = True
        return plan.partial

    def after_replace(self, dst: str | None) -> bool:
        """Whether the rename onto ``dst`` that just happened is the one to be killed after."""
        plan = self.plan
        if plan.fault != "kill" or plan.on != "replace" or self.tripped or dst is None or \
                not fnmatch.fnmatch(dst, plan.match):
            return False
        self.seen += 1
        self.tripped = self.seen > plan.skip
        return self.tripped

    def fire(self, path: str) -> None:
        if self.plan.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class _FaultyFile:
    """A file object that lets ``budget`` bytes (characters in text mode) through, then fires."""

    def __init__(self, fh: Any, budget: int, fire: Callable[[], None]) -> None:
        self._fh, self._left, self._fire, self._fired = fh, budget, fire, False

    def _trip(self) -> None:
        self._fired = True
        self._fh.flush()
        self._fire()

    def write(self, data: Any) -> int:
        if self._fired:
            self._fire()
        n = len(data)
        if n > self._left:
            self._fh.write(data[:self._left])
            self._left = 0
            self._trip()
        self._left -= n
        return self._fh.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self._fh.close()
        if not self._fired:  # the whole file went through: the fault fires right after it
            self._fired = True
            self._fire()

    def __enter__(self) -> "_FaultyFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._fh.close()

    def __iter__(self):
        return iter(self._fh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


_INJECTOR: _Injector | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install(plan: Plan | None) -> Callable[[], None]:
    """Patch the writers for ``plan`` (None: pass every write through until :func:`arm`); returns the function
    that undoes it."""
    global _INJECTOR
    inj = _INJECTOR = _Injector(plan)
    undo: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        real = getattr(owner, name)
        undo.append((owner, name, real))
        setattr(owner, name, make(real))

    def make_open(real):
        def fault_open(file, mode="r", *args, **kwargs):
            path = _abs(file)
            if any(c in mode for c in "wax+"):
                budget = inj.budget(path)
                if budget is not None:
                    return _FaultyFile(real(file, mode, *args, **kwargs), budget, lambda: inj.fire(path))
            return real(file, mode, *args, **kwargs)
        return fault_open

    for owner in (builtins, io):
        patch(owner, "open", make_open)

    def make_os_open(real):
        def fault_os_open(path, flags, *args, dir_fd=None, **kwargs):
            if flags & _WRITE_FLAGS:
                inj.guard(_abs(path, dir_fd))
            return real(path, flags, *args, dir_fd=dir_fd, **kwargs)
        return fault_os_open

    patch(os, "open", make_os_open)

    def make_guarded(real):
        def guarded(path, *args, dir_fd=None, **kwargs):
            target = _abs(path, dir_fd)
            if target and os.path.lexists(target):  # removing what is not there is ENOENT, also when read-only
                inj.guard(target)
            return real(path, *args, dir_fd=dir_fd, **kwargs) if dir_fd is not None else real(path, *args, **kwargs)
        return guarded

    def make_mkdir(real):
        def fault_mkdir(path, *args, dir_fd=None, **kwargs):
            target = _abs(path, dir_fd)
            if not (target and os.path.lexists(target)):  # an existing folder is EEXIST, also when read-only
                inj.guard(target)
            return real(path, *args, dir_fd=dir_fd, **kwargs) if dir_fd is not None else real(path, *args, **kwargs)
        return fault_mkdir

    patch(os, "mkdir", make_mkdir)
    for name in ("rmdir", "unlink", "remove"):
        patch(os, name, make_guarded)

    def make_move(real):
        def fault_move(src, dst, *args, **kwargs):
            target = _abs(dst, kwargs.get("dst_dir_fd"))
            inj.guard(_abs(src, kwargs.get("src_dir_fd")))
            inj.guard(target)
            result = real(src, dst, *args, **kwargs)
            if inj.after_replace(target):
                inj.fire(target)
            return result
        return fault_move

    for name in ("rename", "replace"):
        patch(os, name, make_move)

    def make_access(real):
        def fault_access(path, mode, *args, **kwargs):
            target = _abs(path, kwargs.get("dir_fd"))
            if mode & os.W_OK and inj.root is not None and target is not None and (
                    target == inj.root or inj._read_only(target)):
                return False
            return real(path, mode, *args, **kwargs)
        return fault_access

    patch(os, "access", make_access)

    def make_writer(real, arg: int):
        def fault_writer(*args, **kwargs):
            target = args[arg] if len(args) > arg else kwargs.get("filename", kwargs.get("f"))
            path = _abs(target) if isinstance(target, (str, os.PathLike)) else None
            budget = inj.budget(path)
            result = real(*args, **kwargs)
            if budget is not None:
                with builtins_open(path, "r+b") as fh:
                    fh.truncate(min(budget, os.path.getsize(path)))
                inj.fire(path)
            return result
        return fault_writer

    builtins_open = undo[0][2]  # the real open
    try:
        import safetensors.torch
        import torch

        patch(safetensors.torch, "save_file", lambda real: make_writer(real, 1))
        patch(torch, "save", lambda real: make_writer(real, 1))
    except ImportError:  # pragma: no cover - both are dependencies of mtllm
        pass

    def uninstall() -> None:
        for owner, name, real in reversed(undo):
            setattr(owner, name, real)

    return uninstall


# ------------------------------------------------------------------------------------------- fork server
#: What a forked command needs loaded: every command's modules and the tiny models' classes (imported once).
PRELOAD = ("mtllm.cli", "mtllm.cli.pipeline", "mtllm.evaluation.report", "mtllm.baselines.encoder_probe",
           "mtllm.training.encoder_cache", "peft", "matplotlib.pyplot",
           "transformers.models.xlm_roberta.modeling_xlm_roberta", "transformers.models.gemma3.modeling_gemma3")


def _run_forked(request: dict[str, Any]) -> None:
    """In the forked child: output to the log, arm the plan, run the command line, exit as Python would."""
    import traceback

    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _INJECTOR.arm(Plan(**request["plan"]) if request.get("plan") else None)
    code = 1
    try:
        from mtllm.cli import main

        code = main(request["argv"])
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, exit status 1
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    os._exit(code)


def serve() -> None:
    """A fork server: loads everything once, then for each JSON request on stdin (``argv``, ``log``, ``plan``)
    forks a child that runs ``mtllm ARGV`` into ``log``, writes ``pid`` and, when the child ends, its status
    (``-SIGNAL`` when killed, as :mod:`subprocess` says it) on stdout, one line each. Each child is a separate
    process, started as if by ``python -m mtllm`` but without importing torch again (seconds each)."""
    import importlib

    install(None)
    for module in PRELOAD:
        importlib.import_module(module)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing but replies on the pipe
    reply.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_forked(request)
        reply.write(f"{pid}\n")
        _, status = os.waitpid(pid, 0)
        reply.write(f"{-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        install(Plan(**json.loads(sys.argv[1])))
        from mtllm.cli import main

        sys.exit(main(sys.argv[2:]))
