"""Digests that identify what a result was computed from: settings, data, files, models. The one home of them.

Every digest of a JSON-able value is :func:`json_digest` (sorted keys, so two equal dicts always give one
digest), with texts appended :func:`cache_key`; a file's is :func:`mtllm._io.file_sha256`; a saved model
folder's, :func:`folder_fingerprint` (over its own files: :func:`mtllm.modeling.serialization.model_fingerprint`
names them); a model in memory, :func:`module_fingerprint`. Resume records (partial evaluation results,
``mtllm run``'s stage records, predict/encode progress) compare these to decide whether earlier work still stands.
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

__all__ = ["json_digest", "cache_key", "examples_digest", "folder_fingerprint", "module_fingerprint",
           "recording_reads", "note_read", "changed_files"]


def _canonical_json(value: Any) -> bytes:
    """``value`` as JSON with sorted keys (non-JSON values by ``str``): what every digest here hashes."""
    return json.dumps(value, sort_keys=True, default=str).encode("ascii")  # non-ASCII text (lone surrogates) escaped


def json_digest(value: Any, *, length: int = 64) -> str:
    """Hex sha256 of ``value`` as JSON with sorted keys (non-JSON values by ``str``), cut to ``length``."""
    return hashlib.sha256(_canonical_json(value)).hexdigest()[:length]


def cache_key(settings: Any, texts: Iterable[str] = (), *, length: int = 20) -> str:
    """Hex sha256 of ``settings`` (as :func:`json_digest` encodes it: sorted keys) and every text, in order, each
    ended by a NUL: the key of a cache of per-text outputs (:class:`mtllm.training.caches.ArrayCache`)."""
    digest = hashlib.sha256(_canonical_json(settings))
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:length]


def examples_digest(examples: Iterable[Any]) -> str:
    """The digest of task examples (:class:`mtllm.tasks.Example`: id, texts, label, options, in order): what
    a language's score was computed from, so that a result is reused only for the same data."""
    return json_digest([[e.id, list(e.texts), e.label, list(e.options)] for e in examples])


def folder_fingerprint(root: str | os.PathLike, names: Iterable[str]) -> str:
    """Hex sha256 over the files ``names`` (relative to ``root``) that exist, each as its name and its sha256:
    the same contents under the same names, the same fingerprint, wherever the folder is."""
    digest = hashlib.sha256()
    root = Path(root)
    for rel in names:
        if (root / rel).exists():
            digest.update(rel.encode())
            digest.update(bytes.fromhex(file_sha256(root / rel)))
    return digest.hexdigest()


def module_fingerprint(model: Any, tokenizer: Any) -> str:
    """A cheap identity of a model in memory (an ``nn.Module`` with a ``config``) and its tokenizer: its config
    (without paths and versions), the tokenizer's class and vocabulary size, and 16 evenly spaced values of
    every parameter. Two checkpoints of one architecture (differently seeded or fine-tuned) differ. Caches of
    its outputs (translations, encoder states) key on it."""
    import torch  # slow to import: only callers that hold a model need it

    digest = hashlib.sha1()
    config = model.config.to_dict() if hasattr(model, "config") else {}
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype"):
        config.pop(volatile, None)
    digest.update(_canonical_json(config))
    digest.update(f"{type(tokenizer).__name__}|{len(tokenizer)}".encode())
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            flat = param.detach().reshape(-1)
            digest.update(f"{name}|{tuple(param.shape)}|".encode())
            if flat.numel():
                k = min(16, flat.numel())  # evenly spaced, in integers (float linspace overshoots past 2**24)
                idx = (torch.arange(k, dtype=torch.int64) * (flat.numel() - 1) // max(k - 1, 1)).to(flat.device)
                digest.update(flat[idx].to(torch.float64).cpu().numpy().tobytes())
    return digest.hexdigest()


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
