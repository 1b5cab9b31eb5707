"""Digests that identify what a result was computed from: settings, data, files.

Every digest of a JSON-able value is :func:`json_digest` (sorted keys, so two equal dicts always give one
digest); a file's is :func:`mtllm._io.file_sha256`. Resume records (partial evaluation results, ``mtllm run``'s
stage records, predict/encode progress) compare these to decide whether earlier work still stands.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mtllm._io import file_sha256

__all__ = ["json_digest", "examples_digest", "recording_reads", "note_read", "changed_files"]


def json_digest(value: Any, *, length: int = 64) -> str:
    """Hex sha256 of ``value`` as JSON with sorted keys (non-JSON values by ``str``), cut to ``length``."""
    text = json.dumps(value, sort_keys=True, default=str)  # ASCII: non-ASCII text (and lone surrogates) escaped
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:length]


def examples_digest(examples: Iterable[Any]) -> str:
    """The digest of task examples (:class:`mtllm.tasks.Example`: id, texts, label, options, in order): what
    a language's score was computed from, so that a result is reused only for the same data."""
    return json_digest([[e.id, list(e.texts), e.label, list(e.options)] for e in examples])


# ---------------------------------------------------------------------------------------------- data read
_READS: contextvars.ContextVar[tuple[dict[str, str], ...]] = contextvars.ContextVar("mtllm_reads", default=())


@contextlib.contextmanager
def recording_reads() -> Iterator[dict[str, str]]:
    """Record every data file read while the block runs (by :class:`mtllm.tables.Table`, the one reader of
    table files) as ``{absolute path: sha256 of its bytes}``, the dict yielded. Blocks nest: a file read inside
    two is recorded in both. A result stored with this record can later be checked against its data
    (:func:`changed_files`)."""
    log: dict[str, str] = {}
    token = _READS.set(_READS.get() + (log,))
    try:
        yield log
    finally:
        _READS.reset(token)


def note_read(path: str | os.PathLike) -> None:
    """Record that ``path`` is being read (see :func:`recording_reads`; nothing when no block is open)."""
    logs = _READS.get()
    if not logs:
        return
    key = str(Path(path).resolve())
    if any(key not in log for log in logs):
        digest = file_sha256(key)
        for log in logs:
            log.setdefault(key, digest)


def changed_files(record: Mapping[str, str]) -> list[str]:
    """The files of a :func:`recording_reads` record whose bytes differ now, or that are gone."""
    changed = []
    for path, digest in record.items():
        try:
            now = file_sha256(path)
        except OSError:
            now = None
        if now != digest:
            changed.append(path)
    return changed
