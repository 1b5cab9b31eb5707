"""Outputs of ``mtllm predict`` and ``mtllm encode``, written resumably: one writer (sink) per format, and the
names a run writes (:func:`output_paths`, :func:`written_names`) with the check that none of them touches the
input (:func:`output_problem`).

Output is written chunk by chunk, flushed and fsynced; each sink's ``state()`` (the output's byte offset, or its
part count) goes into the job's progress record ``<output>.progress.json`` (:data:`PROGRESS_SUFFIX`,
:mod:`mtllm.inference.jobs`), and ``open(state)`` of a rerun cuts the output back to that state, so the job
continues with the next row: no row lost or written twice (the output equals an uninterrupted run's, byte for
byte). Formats:

* predictions ``.jsonl`` / ``.csv`` / ``.tsv``: appended in place;
* ``.parquet`` (predictions or embeddings): one part file per chunk in ``<output>.parts/``, combined into the
  output (row group by row group) when every chunk is done, then the parts are removed;
* embeddings ``.npy``: a memory-mapped ``<output>.partial`` (``numpy.lib.format.open_memmap``, sized by the
  first pass) renamed to the output at the end, and the ids, one per line, in ``<stem>.ids.txt``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from mtllm._io import atomic_path, remove_path
from mtllm.errors import ConfigError
from mtllm.inference.rows import _suffix
from mtllm.locks import lock_file

__all__ = ["PREDICT_SUFFIXES", "ENCODE_SUFFIXES", "PROGRESS_SUFFIX", "output_paths", "written_names",
           "output_problem"]

PREDICT_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")
ENCODE_SUFFIXES = (".npy", ".parquet")
PROGRESS_SUFFIX = ".progress.json"


def _ids_path(output: Path) -> Path:
    return output.with_name(output.stem + ".ids.txt")


def output_paths(output: str | Path) -> list[Path]:
    """Everything ``mtllm predict`` / ``mtllm encode`` may write for ``output``: the output, its progress record
    and its in-progress files (what ``--overwrite`` removes)."""
    output = Path(output)
    paths = [output, output.with_name(output.name + PROGRESS_SUFFIX), output.with_name(output.name + ".parts")]
    if _suffix(output) == ".npy":
        paths += [output.with_name(output.name + ".partial"), _ids_path(output)]
    return paths


def written_names(output: Path) -> list[Path]:
    """Every path a run for ``output`` writes, removes or locks: :func:`output_paths`, the lock file and its
    holder record (each may also get crash-safe temporaries ``.<name>.tmp-<pid>``, :func:`_touches`)."""
    lock = lock_file(output)
    return [*output_paths(output), lock, Path(f"{lock}.json")]


def _touches(written: Path, other: Path) -> bool:
    """Whether writing or removing ``written`` (and its temporaries) touches ``other``: the same path, links to
    one file, ``other`` inside the folder ``written``, or ``other`` named like a temporary of ``written``."""
    try:
        if written.exists() and other.exists() and os.path.samefile(written, other):
            return True
    except OSError:
        pass
    rw, ro = written.resolve(), other.resolve()
    temporary = ro.parent == rw.parent and ro.name.startswith(f".{rw.name}.tmp-")
    return rw == ro or rw in ro.parents or temporary


def output_problem(output: Path, input_path: Path | None) -> str | None:
    """Why a predict/encode ``output`` cannot be written for ``input_path``: one of the files it writes or
    removes (:func:`written_names`: the ``.ids.txt`` of an ``.npy``, the progress record, parquet part files,
    the lock) is the input or holds it, or a name is longer than the file system allows. ``None``: fine."""
    names = written_names(output)
    if input_path is not None:
        for path in names:
            if _touches(path, input_path):
                what = "the output" if path == output else f"{path.name}, which a run for this output writes"
                return (f"{what} would overwrite the input {input_path}; choose an output name whose companion "
                        f"files do not touch the input (e.g. another stem or folder)")
    folder = next((p for p in output.parents if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max((p.with_name(f".{p.name}.tmp-{'9' * 10}") for p in names), key=lambda p: len(os.fsencode(p.name)))
    if len(os.fsencode(longest.name)) > limit:
        return (f"the output name is too long: a run writes {longest.name[:40]}... ({len(os.fsencode(longest.name))} "
                f"bytes), over this file system's limit of {limit} bytes per name; choose a shorter output name")
    return None


def _fsync_append(path: Path, data: bytes) -> int:
    """Append ``data`` to ``path``, flushed and fsynced; returns the new size."""
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def _truncate(path: Path, size: int, what: str, progress: Path) -> None:
    """Cut ``path`` back to ``size`` bytes (what the progress record says was complete), creating it when
    ``size`` is 0."""
    if not path.exists():
        if size:
            raise ConfigError(f"{progress} records {size} bytes of {path}, which is missing; rerun with --overwrite "
                              f"to start again")
        path.touch()
        return
    if path.stat().st_size < size:
        raise ConfigError(f"{path} is shorter ({path.stat().st_size} bytes) than its progress record says ({size}): "
                          f"it was changed after the run stopped; rerun with --overwrite to start again")
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


class _TextSink:
    """JSON lines / CSV / TSV predictions, appended chunk by chunk; state: the byte offset."""

    def __init__(self, path: Path, columns: list[str], progress: Path) -> None:
        self.path, self.columns, self.progress = path, columns, progress
        self.kind = _suffix(path)
        self.offset = 0

    def open(self, state: dict | None) -> None:
        self.offset = int((state or {}).get("bytes", 0))
        _truncate(self.path, self.offset, "output", self.progress)

    def _encode(self, records: list[dict]) -> bytes:
        if self.kind == ".jsonl":
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t" if self.kind == ".tsv" else ",", lineterminator="\n")
        if self.offset == 0:
            writer.writerow(self.columns)
        writer.writerows([["" if r[c] is None else r[c] for c in self.columns] for r in records])
        return buf.getvalue().encode("utf-8")

    def write(self, records: list[dict], start: int) -> None:
        self.offset = _fsync_append(self.path, self._encode(records))

    def state(self) -> dict:
        return {"bytes": self.offset}

    def finish(self) -> None:
        if self.offset == 0:  # no rows: a CSV still gets its header
            self.offset = _fsync_append(self.path, self._encode([]))


class _ParquetSink:
    """Parquet (predictions or embeddings): one part file per chunk in ``<output>.parts/``, combined at the end;
    state: the number of parts."""

    def __init__(self, path: Path, schema: Any, progress: Path) -> None:
        self.path, self.schema, self.progress = path, schema, progress
        self.parts_dir = path.with_name(path.name + ".parts")
        self.n_parts = 0
        self.finished = False

    def _part(self, k: int) -> Path:
        return self.parts_dir / f"part-{k:06d}.parquet"

    def open(self, state: dict | None) -> None:
        self.n_parts = int((state or {}).get("parts", 0))
        if self.n_parts and self.path.is_file() and not self.parts_dir.exists():
            self.finished = True  # stopped after combining the parts, before recording it
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        missing = [k for k in range(self.n_parts) if not self._part(k).is_file()]
        if missing:
            raise ConfigError(f"{self.progress} records {self.n_parts} part files in {self.parts_dir}, but "
                              f"{self._part(missing[0]).name} is missing; rerun with --overwrite to start again")
        for part in self.parts_dir.iterdir():  # parts of the chunk that was cut off, temporaries
            if not (part.name.startswith("part-") and part.name.endswith(".parquet")
                    and part.name[5:11].isdigit() and int(part.name[5:11]) < self.n_parts):
                remove_path(part)

    def write(self, records: list[dict], start: int) -> None:
        import pyarrow as pa  # slow: pyarrow (~50 ms), only for Parquet
        import pyarrow.parquet as pq  # slow: pyarrow (~50 ms), only for Parquet

        table = pa.Table.from_pylist(records, schema=self.schema)
        with atomic_path(self._part(self.n_parts), fsync=True) as tmp:
            pq.write_table(table, tmp)
        self.n_parts += 1

    def state(self) -> dict:
        return {"parts": self.n_parts}

    def finish(self) -> None:
        import pyarrow.parquet as pq  # slow: pyarrow (~50 ms), only for Parquet

        if self.finished:
            return
        with atomic_path(self.path, fsync=True) as tmp:
            with pq.ParquetWriter(tmp, self.schema) as writer:
                for k in range(self.n_parts):
                    writer.write_table(pq.read_table(self._part(k), schema=self.schema))
                if self.n_parts == 0:
                    writer.write_table(self.schema.empty_table())
        remove_path(self.parts_dir)


class _NpySink:
    """Embeddings ``.npy``: a memory map ``<output>.partial`` of ``(n_rows, dim)`` float32, renamed to the output
    at the end; ids one per line in ``<stem>.ids.txt``; state: the ids file's byte offset."""

    def __init__(self, path: Path, n_rows: int, dim: int, progress: Path) -> None:
        self.path, self.n_rows, self.dim, self.progress = path, n_rows, dim, progress
        self.partial = path.with_name(path.name + ".partial")
        self.ids = _ids_path(path)
        self.offset = 0
        self.array = None

    def open(self, state: dict | None) -> None:
        self.offset = int((state or {}).get("ids_bytes", 0))
        if state and state.get("rows_written", 0) and not self.partial.is_file() and self.path.is_file():
            self.partial = self.path  # stopped after the final rename, before recording it
        if state and state.get("rows_written", 0) and self.partial.is_file():
            self.array = open_memmap(self.partial, mode="r+")
            if self.array.shape != (self.n_rows, self.dim) or self.array.dtype != np.float32:
                raise ConfigError(f"{self.partial} holds {self.array.dtype} {self.array.shape}, not float32 "
                                  f"({self.n_rows}, {self.dim}); rerun with --overwrite to start again")
        elif state and state.get("rows_written", 0):
            raise ConfigError(f"{self.progress} records rows written to {self.partial}, which is missing; rerun "
                              f"with --overwrite to start again")
        else:
            self.array = open_memmap(self.partial, mode="w+", dtype=np.float32, shape=(self.n_rows, self.dim))
        _truncate(self.ids, self.offset, "ids", self.progress)

    def write(self, records: list[dict], start: int) -> None:
        block = np.full((len(records), self.dim), np.nan, dtype=np.float32)
        for j, r in enumerate(records):
            if r["embedding"] is not None:
                block[j] = r["embedding"]
        self.array[start:start + len(records)] = block
        self.array.flush()
        self.offset = _fsync_append(self.ids, "".join(f"{r['id']}\n" for r in records).encode("utf-8"))

    def state(self) -> dict:
        return {"ids_bytes": self.offset, "rows_written": 1 if self.offset else 0}

    def finish(self) -> None:
        self.array.flush()
        del self.array
        self.array = None
        with open(self.partial, "rb+") as fh:
            os.fsync(fh.fileno())
        if self.partial != self.path:
            os.replace(self.partial, self.path)
        if not self.ids.exists():
            self.ids.touch()

