"""Unlabelled text for stage 1: local files and folders, or streaming FineWeb from the hub.

Documents are cut into chunks that fit *both* tokenisers (the LLM's and the encoder's) so the
teacher and the student always see the same text.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from mtllm._io import read_text_file
from mtllm.errors import DataError  # noqa: F401 (raised here, re-exported)

logger = logging.getLogger(__name__)

FINEWEB = "fineweb"
FINEWEB_HUB_ID = "HuggingFaceFW/fineweb"
FINEWEB_CONFIG = "sample-10BT"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv")


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        # blank-line separated paragraphs; a file without blank lines gives one text per line
        content = read_text_file(path)
        blocks = re.split(r"\n\s*\n", content) if re.search(r"\n\s*\n", content) else content.splitlines()
        yield from blocks
    elif suffix in (".jsonl", ".json"):
        for n, line in enumerate(read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if text_field not in row:
                raise DataError(f"{path}:{n}: no field {text_field!r} (found {sorted(row)}); set text_field "
                                f"to the field that holds the text")
            yield row[text_field]
    elif suffix in (".csv", ".tsv"):
        content = read_text_file(path)
        reader = csv.DictReader(content.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            raise DataError(f"{path}: no column {text_field!r} (found {reader.fieldnames}); set text_field to the "
                            f"column that holds the text")
        for row in reader:
            yield row[text_field]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise DataError(f"{path}: no column {text_field!r} (found {table.column_names}); set text_field")
        yield from table.column(text_field).to_pylist()
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")


def iter_texts(sources: str | Sequence[str], *, text_field: str = "text", data_dir: str | None = None) -> Iterator[str]:
    """Texts from ``sources``: files, folders (every supported file inside, sorted), ``"fineweb"``
    (streamed from the hub, ``HuggingFaceFW/fineweb`` ``sample-10BT``), or ``"task:NAME/LANG/SPLIT"``
    (every text field of a task's examples, e.g. ``task:sib200/eng_Latn/train``, from the local data
    dir or the hub, see :mod:`mtllm.tasks`). Empty texts are skipped."""
    if isinstance(sources, str):
        sources = [sources]
    for source in sources:
        if source.startswith(TASK_PREFIX):
            yield from _iter_task(source, data_dir)
            continue
        if source == FINEWEB or source.startswith(FINEWEB_HUB_ID):
            yield from _iter_fineweb(text_field)
            continue
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in LOCAL_SUFFIXES)
            if not files:
                raise DataError(f"{path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
        elif path.exists():
            files = [path]
        else:
            raise DataError(f"{source}: no such file or folder. Give local text files/folders "
                            f"({', '.join(LOCAL_SUFFIXES)}) or 'fineweb' to stream from the hub")
        for file in files:
            for text in _iter_file(file, text_field):
                if text and text.strip():
                    yield text.strip()


TASK_PREFIX = "task:"


def _iter_task(source: str, data_dir: str | None) -> Iterator[str]:
    from mtllm.tasks import load_examples

    parts = source[len(TASK_PREFIX):].split("/")
    if len(parts) != 3:
        raise DataError(f"{source!r}: task sources look like task:NAME/LANG/SPLIT, e.g. task:sib200/eng_Latn/train")
    for example in load_examples(parts[0], parts[1], parts[2], data_dir=data_dir):
        for text in (*example.texts, *example.options):
            if text and text.strip():
                yield text.strip()


def _iter_fineweb(text_field: str) -> Iterator[str]:
    import datasets

    try:
        stream = datasets.load_dataset(FINEWEB_HUB_ID, FINEWEB_CONFIG, split="train", streaming=True)
        for row in stream:
            yield row[text_field]
    except (ConnectionError, OSError) as err:
        raise DataError(f"cannot stream {FINEWEB_HUB_ID} from the hub ({err}). Give local text files instead "
                        f"(data: [path/to/texts.jsonl, ...]) or run where the hub is reachable.") from err


_SENTENCE_END = re.compile(r"(?<=[.!?。！？।])\s+")


def chunk_text(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut ``text`` into chunks for which ``fits(chunk)`` holds, at sentence boundaries, then words.

    ``fits`` checks that the chunk fits both tokenisers. A single word that does not fit on its own
    is kept whole (it is truncated later, and counted)."""
    if fits(text):
        return [text]
    pieces = [s for s in _SENTENCE_END.split(text) if s]
    if len(pieces) == 1:
        pieces = text.split()
        if len(pieces) <= 1:
            return [text]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current} {piece}".strip()
        if fits(candidate):
            current = candidate
            continue
        if current:
            chunks.append(current)
        if fits(piece):
            current = piece
        else:
            sub = chunk_text(piece, fits)
            chunks.extend(sub[:-1])
            current = sub[-1]
    if current:
        chunks.append(current)
    return chunks


def load_stage1_texts(sources: str | Sequence[str], *, fits: Callable[[str], bool] | None = None,
                      max_texts: int | None = None, text_field: str = "text", dedupe: bool = True,
                      data_dir: str | None = None) -> list[str]:
    """Read, chunk and (optionally) de-duplicate texts for a finite stage-1 run."""
    out: list[str] = []
    seen: set[str] = set()
    for text in iter_texts(sources, text_field=text_field, data_dir=data_dir):
        for chunk in (chunk_text(text, fits) if fits else [text]):
            if dedupe:
                if chunk in seen:
                    continue
                seen.add(chunk)
            out.append(chunk)
            if max_texts is not None and len(out) >= max_texts:
                return out
    if not out:
        raise DataError(f"no non-empty text found in {sources}")
    return out


def iter_chunks(texts: Iterable[str], fits: Callable[[str], bool]) -> Iterator[str]:
    for text in texts:
        yield from chunk_text(text, fits)
