"""The one mechanism behind every disk cache of computed arrays (teacher targets, pre-embeddings,
frozen-encoder outputs): a folder named by a hash of everything the arrays depend on, holding ``.npy``
files and a ``meta.json``, written crash-safely and validated on every read.

Layout::

    <cache_dir>/<kind>-<key>/<name>.npy     one file per array (memory-mapped on read if asked)
    <cache_dir>/<kind>-<key>/meta.json      {"key", "shapes": {name: shape}, ...caller's fields}

An entry is used only when its ``meta.json`` names the same key and every array has the recorded
shape (and the caller's own check passes); anything else -- an interrupted write, a truncated file, a
stale entry -- counts as absent and is rebuilt. Entries are written into a temporary folder and
renamed (:func:`mtllm._io.atomic_path`), so readers never see half of one.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from mtllm._io import atomic_path, atomic_write_json

__all__ = ["ArrayCache"]

META = "meta.json"


class ArrayCache:
    """One cache entry: ``ArrayCache(cache_dir, "teacher", key)`` is ``cache_dir/teacher-<key>/``."""

    def __init__(self, cache_dir: str | Path, kind: str, key: str) -> None:
        self.key = key
        self.root = Path(cache_dir) / f"{kind}-{key}"

    def load(self, names: Iterable[str], *, mmap: bool = True, rows: int | None = None,
             check: Callable[[Mapping[str, Any], Mapping[str, np.ndarray]], bool] | None = None,
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The arrays ``names`` and the meta of a valid entry, or ``None`` if there is none. ``rows``: the
        number of items every array must hold along its first axis (one row per text or example)."""
        try:
            meta = json.loads((self.root / META).read_text())
            if not isinstance(meta, dict) or meta.get("key") != self.key:
                return None
            arrays = {name: np.load(self.root / f"{name}.npy", mmap_mode="r" if mmap else None) for name in names}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        shapes = meta.get("shapes")
        if not isinstance(shapes, dict) or any(list(a.shape) != shapes.get(name) for name, a in arrays.items()):
            return None
        if rows is not None and any(a.ndim == 0 or a.shape[0] != rows for a in arrays.values()):
            return None
        if check is not None and not check(meta, arrays):
            return None
        return arrays, meta

    @contextlib.contextmanager
    def writing(self, meta: Mapping[str, Any]) -> Iterator[Path]:
        """Yield an empty temporary folder to write ``<name>.npy`` files into; when the block ends, the
        meta (with the key and every array's shape) is added and the folder becomes the entry."""
        with atomic_path(self.root) as tmp:
            tmp.mkdir(parents=True)
            yield tmp
            shapes = {p.stem: list(np.load(p, mmap_mode="r").shape) for p in sorted(tmp.glob("*.npy"))}
            atomic_write_json(tmp / META, {**meta, "key": self.key, "shapes": shapes})

    def save(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Write ``arrays`` as the entry (replacing a stale one)."""
        with self.writing(meta or {}) as tmp:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
