"""Unlabelled text for stage 1: local files and folders, or streaming FineWeb from the hub.

Documents are cut into chunks that fit *both* tokenisers (the LLM's and the encoder's) so the
teacher and the student always see the same text.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from mtllm.errors import DataError  # noqa: F401 (raised here, re-exported)
from mtllm.tables import Table
from mtllm.tasks.loading import DATA_PREFIX, data_ref_problem, load_examples, resolve_data_dir

logger = logging.getLogger(__name__)

FINEWEB = "fineweb"
FINEWEB_HUB_ID = "HuggingFaceFW/fineweb"
FINEWEB_CONFIG = "sample-10BT"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv")


def _text(value: object, where: str, text_field: str) -> str:
    """A row's text: a string (``None`` counts as empty), anything else is a :class:`DataError`."""
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(f"{where}: {text_field!r} holds {type(value).__name__} {_short(value)}, not a string; set "
                    f"text_field to the field that holds the text")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    """The texts of one file, streamed by the one table reader (:class:`mtllm.tables.Table`, strict: a malformed
    row is an error naming its line). ``.txt``: see :func:`_paragraphs`; a JSON line (or ``.json`` item) that is
    one string is a text; else the ``text_field`` column."""
    table = Table(path, formats=LOCAL_SUFFIXES, bare_strings=text_field)
    if table.suffix == ".txt":
        yield from _paragraphs(table)
        return
    table.require([text_field], "set text_field to the column that holds the text")
    for where, row in table.records():
        if text_field not in row:
            raise DataError(f"{where}: no field {text_field!r} (found {sorted(map(str, row))}); set text_field "
                            f"to the field that holds the text")
        yield _text(row[text_field], where, text_field)


def _paragraphs(table: Table) -> Iterator[str]:
    """A ``.txt`` file's texts: blank-line separated paragraphs (the lines of each joined by ``\\n``); a file
    without a blank line after its first line gives one text per line. Two streamed passes (the first stops at
    the first blank line)."""
    by_paragraph = any(i and not row["text"].strip() for i, (_, row) in enumerate(table.records()))
    if not by_paragraph:
        yield from (row["text"] for _, row in table.records())
        return
    lines: list[str] = []
    for _, row in table.records():
        if row["text"].strip():
            lines.append(row["text"])
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def source_problem(source: str, data_dir: str | None = None) -> str | None:
    """What is wrong with the stage-1 text source ``source`` (see :func:`iter_texts`), or ``None``: a missing
    file or folder, a folder without text files, a file type or ``task:`` source that cannot be read. The
    settings check it (:data:`mtllm.settings.TEXT_SOURCE`) before any model loads. A ``data:`` source is
    checked against ``data_dir`` (else ``$MTLLM_DATA_DIR``) when one is set; without one, only its form."""
    if source.startswith(DATA_PREFIX):
        rel = source[len(DATA_PREFIX):]
        if data_ref_problem(source) is not None:
            return ("data sources look like data:PATH with PATH inside the data directory, "
                    "e.g. data:english-wordnet/texts.txt")
        root = _data_root(data_dir)
        if root is None:
            return None
        problem = source_problem(str(root / rel))
        return f"{root / rel}: {problem}" if problem else None
    if source.startswith(TASK_PREFIX):
        if len(source[len(TASK_PREFIX):].split("/")) != 3:
            return "task sources look like task:NAME/LANG/SPLIT, e.g. task:sib200/eng_Latn/train"
        return None
    if source == FINEWEB or source.startswith(FINEWEB_HUB_ID):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        if not any(p.suffix.lower() in LOCAL_SUFFIXES for p in path.rglob("*") if p.is_file()):
            return f"the folder holds no {'/'.join(LOCAL_SUFFIXES)} files"
        return None
    if path.exists():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            return f"unsupported file type {path.suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}"
        return None
    return (f"no such file or folder. Give local text files/folders ({', '.join(LOCAL_SUFFIXES)}), "
            f"'fineweb' to stream from the hub, or task:NAME/LANG/SPLIT")


def iter_texts(sources: str | Sequence[str], *, text_field: str = "text", data_dir: str | None = None) -> Iterator[str]:
    """Texts from ``sources``: files, folders (every supported file inside, sorted), ``"data:PATH"`` (a
    file or folder inside the data directory ``data_dir``), ``"fineweb"``
    (streamed from the hub, ``HuggingFaceFW/fineweb`` ``sample-10BT``), or ``"task:NAME/LANG/SPLIT"``
    (every text field of a task's examples, e.g. ``task:sib200/eng_Latn/train``, from the local data
    dir or the hub, see :mod:`mtllm.tasks`). Files: ``.txt`` (blank-line separated paragraphs, else one
    text per line), ``.jsonl`` (one object per line; its ``text_field``), ``.json`` (one array of objects,
    or JSON lines), ``.csv``/``.tsv`` (the ``text_field`` column), ``.parquet``. Empty texts are skipped;
    a text that is not a string is a :class:`DataError` naming the file and row."""
    if isinstance(sources, str):
        sources = [sources]
    for source in sources:
        if (problem := source_problem(source, data_dir)) is not None:
            raise DataError(f"{source}: {problem}")
        if source.startswith(TASK_PREFIX):
            yield from _iter_task(source, data_dir)
            continue
        if source == FINEWEB or source.startswith(FINEWEB_HUB_ID):
            yield from _iter_fineweb(text_field)
            continue
        if source.startswith(DATA_PREFIX):
            root = _data_root(data_dir)
            if root is None:
                raise DataError(f"{source}: a data: source is a path inside the data directory; pass --data-dir DIR "
                                f"(or set $MTLLM_DATA_DIR), or give the file's path instead")
            source = str(root / source[len(DATA_PREFIX):])
            if (problem := source_problem(source)) is not None:
                raise DataError(f"{source}: {problem}")
        path = Path(source).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES) \
            if path.is_dir() else [path]
        for file in files:
            for text in _iter_file(file, text_field):
                if text and text.strip():
                    yield text.strip()


TASK_PREFIX = "task:"
# ``data:PATH`` (DATA_PREFIX, defined in mtllm.tasks.loading): a file or folder inside the local data directory, e.g.
# ``data:english-wordnet/texts.txt`` (155k English WordNet definitions and examples in ``../shared/data``).


def _data_root(data_dir: str | None) -> Path | None:
    return resolve_data_dir(data_dir)


def _iter_task(source: str, data_dir: str | None) -> Iterator[str]:
    parts = source[len(TASK_PREFIX):].split("/")
    for example in load_examples(parts[0], parts[1], parts[2], data_dir=data_dir):
        for text in (*example.texts, *example.options):
            if text and text.strip():
                yield text.strip()


def _iter_fineweb(text_field: str) -> Iterator[str]:
    import datasets  # slow: datasets (~0.3 s), only for the hub's FineWeb

    try:
        stream = datasets.load_dataset(FINEWEB_HUB_ID, FINEWEB_CONFIG, split="train", streaming=True)
        for n, row in enumerate(stream):
            yield _text(row[text_field], f"{FINEWEB_HUB_ID} row {n}", text_field)
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
