"""Input rows for ``mtllm predict`` and ``mtllm encode`` (:func:`iter_rows`, :func:`count_rows`).

A ``.txt`` (one text per line), ``.csv``, ``.tsv``, ``.jsonl`` (one object per line) or ``.parquet`` file
(:data:`INPUT_SUFFIXES`) is read row by row by the one table reader, :class:`mtllm.tables.Table` (strict; its
module doc has the rules: lines, blank lines, what is an error of the file and what a malformed row), never
whole: memory stays that of one chunk of ``batch_rows`` rows (:data:`CHUNK_ROWS`, 4096) whatever the file's size.
Rows are numbered from 1 (the first data row); a row's id is its ``id_column`` value, or its row number when there
is no id column. A malformed row (more or fewer fields than the header, bad quoting, a lone ``\\r``, a JSON line
that is not an object or not valid JSON, a lone surrogate) is a :class:`Row` whose ``problem`` says why (the job
decides, :mod:`mtllm.inference.jobs`); a file that cannot be read at all (not UTF-8, no header, a quote that never
closes) is a :class:`~mtllm.errors.DataError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mtllm.errors import DataError
from mtllm.tables import Table, lone_surrogate

__all__ = ["INPUT_SUFFIXES", "CHUNK_ROWS", "Row", "iter_rows", "count_rows"]

INPUT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Row:
    """One input row: its number (from 1), id, and the raw values of the columns in use (``None``: missing);
    ``problem``: for a row the reader found malformed (:class:`mtllm.tables.TableRow`: too many fields, not a JSON
    object, a lone surrogate, ...), ``(reason, column, detail)`` as :meth:`mtllm.inference.jobs._Job._row_problem`
    gives it (its values are then ``None``, its id the row number unless ``id_column`` could be read)."""

    number: int
    id: Any
    text: Any
    pair: Any = None
    lang: Any = None
    options: tuple = ()
    problem: tuple[str, str, str] | None = None


def _suffix(path: str | Path) -> str:
    return Path(path).suffix.lower()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def iter_rows(path: str | Path, *, text_column: str = "text", pair_column: str | None = None,
              lang_column: str | None = None, id_column: str | None = None, option_columns: Sequence[str] = (),
              batch_rows: int = CHUNK_ROWS) -> Iterator[Row]:
    """The rows of ``path`` (see the module doc), streamed by the one table reader (:class:`mtllm.tables.Table`,
    whose rules and errors are those of every table mtllm reads). A ``.txt`` file has one text per line and no
    columns. A file that cannot be read (not UTF-8, no header, a missing column, a quote that never closes) is a
    :class:`DataError`; a malformed row (too many fields, a JSON line that is not an object, a lone surrogate,
    ...) is a :class:`Row` whose ``problem`` says why (``--on_bad_row`` decides). A text, pair or option that is
    not a string (or null), and a row without an id in ``id_column``, are :class:`DataError` s naming the row."""
    path = Path(path)
    is_txt = _suffix(path) == ".txt"
    text_key = "text" if is_txt else text_column
    columns = [c for c in (text_column, pair_column, lang_column, id_column,
                           *option_columns) if c] if not is_txt else []
    table = Table(path, select=columns, batch_rows=batch_rows, formats=INPUT_SUFFIXES)
    table.require(columns, "set the *_column settings to the file's column names")
    for trow in table:
        number, rec = trow.number, trow.values
        if trow.problem is not None:
            row_id = number if id_column is None else rec.get(id_column)
            if isinstance(row_id, str) and lone_surrogate(row_id) is not None:
                row_id = None  # an id no output can hold
            detail = (f"line {trow.line}: " if trow.line is not None else "") + trow.problem
            yield Row(number, None if _blank(row_id) else row_id, None, problem=(trow.reason or "malformed row", "",
                                                                                  detail))
            continue
        values = {}
        for role, col in (("text", text_key), ("pair", pair_column), ("lang", lang_column)):
            if col is None:
                continue
            value = rec.get(col)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}: row {number}, column {col!r}: {type(value).__name__} {value!r:.40}, not a "
                                f"string; set the {role if role != 'text' else 'text'}_column setting to the column "
                                f"that holds the {role}")
            values[role] = value
        options = []
        for col in option_columns:
            value = rec.get(col)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}: row {number}, column {col!r}: {type(value).__name__} {value!r:.40}, not a "
                                f"string; option_columns name the columns that hold the answer options")
            options.append(value)
        if id_column is not None:
            row_id = rec.get(id_column)
            if _blank(row_id):
                raise DataError(f"{path}: row {number} has no id in column {id_column!r}; give every row an id, or "
                                f"leave id_column unset to use row numbers")
        else:
            row_id = number
        yield Row(number, row_id, values.get("text"), values.get("pair"), values.get("lang"), tuple(options))


def count_rows(path: str | Path, **columns: Any) -> int:
    """The number of rows :func:`iter_rows` gives (a Parquet file's from its metadata; others by one pass)."""
    path = Path(path)
    if _suffix(path) == ".parquet" and not columns:
        import pyarrow.parquet as pq  # slow: pyarrow (~50 ms), only for Parquet

        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_rows(path, **columns))
