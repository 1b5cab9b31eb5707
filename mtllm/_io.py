"""File mechanisms every part of mtllm shares: checksums, crash-safe writes, reading a user's text file whole
(tables are read by :mod:`mtllm.tables`).

Crash-safe writes (:func:`atomic_path`) all work the same way: the content goes to a hidden sibling
``.<name>.tmp-<pid>`` and is renamed over the target with :func:`os.replace` only once it is complete,
so a reader (or a rerun after ``kill -9``) sees either the old or the new file or folder, never half.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from mtllm.errors import DataError

__all__ = ["file_sha256", "atomic_path", "remove_path", "remove_stale_temporaries", "atomic_write_text",
           "atomic_write_json", "read_text_file"]

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (constant memory for multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def remove_path(path: Path) -> None:
    """Remove a file, link or folder (a missing one is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries ``.<name>.tmp-<pid>`` of ``path`` whose writer process is gone (killed
    mid-write); a live writer's temporary is left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*") if path.parent.is_dir() else []:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_path(tmp)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file, or a folder the caller creates), then
    rename it over ``path`` when the block ends without an exception; on an exception the temporary
    is removed and ``path`` is untouched. A folder that already exists at ``path`` is replaced whole,
    unless ``keep_existing`` (for caches that several processes may fill at once: the first one to
    finish wins and the others discard their copy).

    >>> with atomic_path(out / "results.json") as tmp:      # doctest: +SKIP
    ...     tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    remove_path(tmp)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if keep_existing and path.exists():
            remove_path(tmp)
            return
        if tmp.is_dir() and path.exists():
            remove_path(path)  # os.replace cannot replace a non-empty folder
        try:
            os.replace(tmp, path)
        except OSError:
            if not (keep_existing and path.exists()):  # else another process finished first: keep its copy
                raise
            remove_path(tmp)
    except BaseException:
        remove_path(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` crash-safely (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, fsync: bool = False, **json_kwargs: Any) -> Path:
    """``json.dumps(obj, **json_kwargs)`` written crash-safely to ``path``."""
    return atomic_write_text(path, json.dumps(obj, **json_kwargs), fsync=fsync)


def read_text_file(path: str | Path) -> str:
    """A user's text file (a config, a task YAML) as ``str``, whole: UTF-8, with or without a byte-order mark
    (which is dropped). Table files (rows of CSV, TSV, JSON lines, Parquet, text lines) are read, streamed, by
    :class:`mtllm.tables.Table` instead.

    Anything else is a :class:`~mtllm.errors.DataError` that names the file, the first bad byte and its
    offset, and how to re-encode the file."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 (invalid byte 0x{raw[err.start]:02x} at offset {err.start}); re-encode it, e.g. "
            f"`iconv -f LATIN1 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`") from None
