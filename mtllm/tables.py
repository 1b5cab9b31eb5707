"""The one reader of table files: ``.csv``, ``.tsv``, ``.jsonl`` (``.json``), ``.parquet`` and ``.txt`` rows,
streamed and strict, the same for every caller (task files, ``mtllm predict`` / ``encode`` inputs, stage-1 texts).

>>> table = Table("data.csv")                       # doctest: +SKIP
>>> table.require(["text"], "set text_column")      # a missing column: one DataError naming the file
>>> for row in table:                               # TableRow: number, where ("data.csv:7"), values, problem
...     ...

**Libraries, and why.** Parquet is read with ``pyarrow`` (:meth:`pyarrow.parquet.ParquetFile.iter_batches`: one
record batch at a time). CSV/TSV are read with the standard library's :mod:`csv` (``strict=True``) and JSON lines
with :mod:`json`, one line at a time, because only they give what errors must name: the exact physical line of
each row. ``pyarrow.csv`` / ``pyarrow.json`` read blocks of the file at once, report a bad row without its line
(or fail the whole block), and infer column types (a column of digits would become integers, a text column of
``"null"`` would become nulls), which would change the values a caller sees.

**Lines.** The bytes are split at ``\\n`` only (a ``\\r`` right before it belongs to the line ending, so
``\\r\\n`` files read like ``\\n`` files); never with :meth:`str.splitlines`, which also breaks at U+2028,
U+2029, U+0085, ``\\x0b``, ``\\x0c``, ... that are text (in a JSON string, in a sentence). Each line is decoded as
strict UTF-8 (a byte-order mark at the start of the file is dropped); a byte that is not UTF-8 is an error of the
whole file naming the line and the byte. A lone ``\\r`` (one not followed by ``\\n``) ends nothing: outside a
quoted CSV/TSV field and in a ``.txt`` line it makes the row malformed (old Mac line endings, or a stray
``\\r`` that other tools would read as a line break); inside a quoted CSV field it is data; in JSON it is what
JSON says (whitespace between tokens; inside a string, invalid).

**Blank lines.** In CSV/TSV an empty line, and in JSON lines a line of only whitespace, is no row: it is
skipped (line numbers still count it). In ``.txt`` every line is a row, so a blank line is a row with empty
text: ``mtllm predict`` / ``encode`` skip it as ``no text`` (written, counted), stage 1 reads blank lines as
paragraph breaks.

**Errors** are :class:`~mtllm.errors.DataError` s in one form, ``path:LINE: <problem>; <fix>`` (Parquet, which
has no lines: ``path: row N: ...``; one item of a ``.json`` array: ``path: item I: ...``), which the command line
prints as one line (exit 2). Two kinds:

* **the whole file** cannot be read: raised (by :class:`Table` or while iterating): not UTF-8; an empty CSV/TSV
  (no header), a header that is not valid CSV or names a column twice; a quoted field that never closes (it
  would swallow the rest of the file into one field; the error names the line where its row starts), or a field
  longer than :data:`CSV_FIELD_LIMIT` characters (the same mistake, found before the end of a huge file); not a
  readable Parquet file;
* **one row** is malformed: yielded as a :class:`TableRow` whose ``problem`` says why (``values`` then holds at
  most what could be read, to name the row): a CSV/TSV row with more or fewer fields than the header (never
  merged, shifted or padded), bad quoting (``"a"b``), a lone ``\\r``; a JSON line that is not valid JSON, not an
  object, holds a key twice, or holds a string that is not Unicode text (a lone surrogate escape such as
  ``"\\ud800"``, which no UTF-8 writer or tokenizer can take); a ``.txt`` line with a lone ``\\r``. A strict
  caller (:meth:`Table.records`) raises it; ``mtllm predict --on_bad_row skip`` writes the row as skipped with
  its reason.

Multi-megabyte CSV fields are valid (the :mod:`csv` field limit is raised to :data:`CSV_FIELD_LIMIT`); a quoted
field may hold line breaks (its row's line is the one where the row starts).

Row numbers (``TableRow.number``) count the data rows from 1, malformed ones included, blank lines not.

**Callers**: task data and task files (:func:`mtllm.tasks.readers._read_rows`, strict: any malformed row is a
:class:`~mtllm.tasks.TaskDataError`; blank *fields* are then the :class:`~mtllm.tasks.LoadReport`'s business),
stage-1 text sources (:func:`mtllm.tasks.texts.iter_texts`, strict; ``.json`` arrays are read whole, the only
format that is not streamed) and ``mtllm predict`` / ``encode`` inputs (:func:`mtllm.inference.rows.iter_rows`:
a malformed row becomes a bad row, skipped or an error by ``--on_bad_row``). A ground-layer module: it imports the
standard library, ``pyarrow`` (lazily), :mod:`mtllm.errors` and :mod:`mtllm.fingerprints` (which records the files
read, for results that must follow their data) only.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mtllm.errors import DataError
from mtllm.fingerprints import note_read

__all__ = ["TABLE_SUFFIXES", "CSV_FIELD_LIMIT", "TableRow", "Table", "lone_surrogate", "not_utf8"]

#: The file types :class:`Table` reads.
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")
#: The longest CSV/TSV field read (characters): far above any real text, low enough that a quote that never
#: closes in a multi-GB file is an error before it fills the memory.
CSV_FIELD_LIMIT = 1 << 27
_BOM = b"\xef\xbb\xbf"
_JSON_SPACE = " \t\r\n"


@dataclass(frozen=True)
class TableRow:
    """One data row: its number (from 1), where it is (``path:LINE``, ``path: row N``, ``path: item I``), the
    physical line where it starts (``None`` for Parquet and ``.json`` arrays), its values (``{column: value}``;
    a JSON object as it is, a ``.txt`` line as ``{"text": line}``) and, for a malformed row, ``problem`` (what is
    wrong and the fix) and ``reason`` (a short name for it, e.g. ``too many fields``)."""

    number: int
    where: str
    values: dict[str, Any] = field(default_factory=dict)
    line: int | None = None
    problem: str | None = None
    reason: str | None = None

    @property
    def message(self) -> str:
        """``where: problem`` (the one-line error of a malformed row)."""
        return f"{self.where}: {self.problem}"

    def error(self) -> DataError:
        """The :class:`DataError` of a malformed row."""
        return DataError(self.message)


def _short(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _reencode(path: Path) -> str:
    return f"re-encode the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`"


def not_utf8(path: Path, line: int, byte: int, column: int, offset: int) -> DataError:
    """The error of a file that is not UTF-8: the invalid ``byte`` is the ``column``-th byte (from 1) of line
    ``line`` and at ``offset`` (from 0) in the file."""
    return DataError(f"{path}:{line}: not UTF-8 (invalid byte 0x{byte:02x} at byte {column} of the line, offset "
                     f"{offset} of the file); {_reencode(path)}")


class _Lines:
    """The lines of a file, decoded (strict UTF-8, a leading BOM dropped), each with its ``\\n``; split at ``\\n``
    only. ``eof`` turns true once the last line has been handed out and another was asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "rb")
        self.number = 0
        self.offset = 0
        self.eof = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self.fh.readline()
        if not raw:
            self.eof = True
            raise StopIteration
        self.number += 1
        start = self.offset
        self.offset += len(raw)
        if self.number == 1 and raw.startswith(_BOM):
            raw, start = raw[len(_BOM):], start + len(_BOM)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise not_utf8(self.path, self.number, raw[err.start], err.start + 1, start + err.start) from None

    def close(self) -> None:
        self.fh.close()


def _raise_field_limit() -> None:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


class _DuplicateKey(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names no key twice (``json`` would keep the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) in ``value`` that cannot be encoded as UTF-8 (it holds a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return value[err.start]
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if (bad := lone_surrogate(k)) is not None or (bad := lone_surrogate(v)) is not None:
                return bad
    elif isinstance(value, list):
        for v in value:
            if (bad := lone_surrogate(v)) is not None:
                return bad
    return None


class Table:
    """A table file, opened: its ``columns`` (a CSV/TSV header, a Parquet schema, ``["text"]`` for ``.txt``,
    ``None`` for JSON, which has no header), then its rows, streamed (iterate it: :class:`TableRow` s, malformed
    ones included; or :meth:`records`: strict). See the module doc for the formats and the rules.

    ``quoting``: :mod:`csv` quoting of CSV/TSV (``csv.QUOTE_NONE`` for files whose quotes are text, such as the
    XNLI release); ``select``: the Parquet columns to read (the others are not decoded; absent ones are ignored,
    :meth:`require` checks them); ``batch_rows``: Parquet rows decoded at a time; ``bare_strings``: the column a
    JSON line (or ``.json`` item) that is one string fills (``None``: such a line is a malformed row);
    ``formats``: the suffixes this caller takes.
    """

    def __init__(self, path: str | Path, *, quoting: int = csv.QUOTE_MINIMAL, select: Sequence[str] | None = None,
                 batch_rows: int = 4096, bare_strings: str | None = None,
                 formats: Sequence[str] = TABLE_SUFFIXES) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in formats or self.suffix not in TABLE_SUFFIXES:
            raise DataError(f"{self.path}: unsupported file type {self.suffix!r}; use one of {', '.join(formats)}")
        if self.path.is_file():
            note_read(self.path)  # results keyed on the data they read (mtllm.fingerprints.recording_reads)
        self.quoting, self.batch_rows, self.bare_strings = quoting, batch_rows, bare_strings
        self.select = list(dict.fromkeys(select)) if select is not None else None
        self.header_line = 1
        self.columns: list[str] | None = None
        if self.suffix in (".csv", ".tsv"):
            lines, reader, self.columns = self._open_csv()
            lines.close()
        elif self.suffix == ".parquet":
            self.columns = list(self._parquet().schema_arrow.names)
        elif self.suffix == ".txt":
            self.columns = ["text"]

    # ------------------------------------------------------------------ columns
    def require(self, names: Sequence[str], fix: str) -> None:
        """Every column of ``names`` is in the header (CSV/TSV) or schema (Parquet), else a :class:`DataError`
        naming the first missing one, the columns found and ``fix``. JSON has no header: a field a JSON row lacks
        is for the caller to judge, row by row."""
        if self.columns is None or self.suffix == ".txt":
            return
        missing = [c for c in names if c not in self.columns]
        if missing:
            where = f"{self.path}:{self.header_line}" if self.suffix != ".parquet" else str(self.path)
            raise DataError(f"{where}: no column {missing[0]!r} (found {self.columns}); {fix}")

    # ------------------------------------------------------------------ rows
    def __iter__(self) -> Iterator[TableRow]:
        if self.suffix in (".csv", ".tsv"):
            return self._csv_rows()
        if self.suffix == ".parquet":
            return self._parquet_rows()
        if self.suffix == ".txt":
            return self._txt_rows()
        if self.suffix == ".json":
            return self._json_file_rows()
        return self._json_rows_of_file()

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(where, values)`` of every row, streamed; a malformed row is its :class:`DataError`."""
        for row in self:
            if row.problem is not None:
                raise row.error()
            yield row.where, row.values

    # ------------------------------------------------------------------ CSV / TSV
    def _open_csv(self) -> tuple[_Lines, Any, list[str]]:
        """The file's lines, a strict :mod:`csv` reader on them, and the header (read; blank lines before it are
        skipped)."""
        _raise_field_limit()
        lines = _Lines(self.path)
        kind = self.suffix[1:].upper()
        try:
            reader = csv.reader(lines, delimiter="\t" if self.suffix == ".tsv" else ",", quoting=self.quoting,
                                strict=True)
            header: list[str] = []
            while not header:
                self.header_line = reader.line_num + 1
                try:
                    header = next(reader)
                except StopIteration:
                    raise DataError(f"{self.path}:1: empty, no header row; a {kind} file starts with a header row "
                                    f"naming its columns, e.g. id{',' if kind == 'CSV' else '<tab>'}text") from None
                except csv.Error as err:
                    if lines.eof or "field limit" in str(err):
                        raise self._unclosed(self.header_line, lines.eof) from None
                    raise DataError(f"{self.path}:{self.header_line}: the header row is not valid {kind} ({err}); "
                                    f"fix its quoting, or the line endings (\\n or \\r\\n)") from None
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise DataError(f"{self.path}:{self.header_line}: the header names the column {twice[0]!r} twice "
                                f"({header}); give every column its own name")
        except BaseException:
            lines.close()
            raise
        return lines, reader, header

    def _csv_rows(self) -> Iterator[TableRow]:
        lines, reader, header = self._open_csv()
        kind = self.suffix[1:].upper()
        number = 0
        try:
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    if lines.eof or "field limit" in str(err):
                        raise self._unclosed(start, lines.eof) from None
                    number += 1
                    yield self._bad_csv_row(number, start, reader.line_num, str(err), kind)
                    continue
                if not fields:  # an empty line: no row
                    continue
                number += 1
                where = f"{self.path}:{start}"
                if len(fields) != len(header):
                    more = len(fields) > len(header)
                    yield TableRow(number, where, dict(zip(header, fields)), start,
                                   f"{len(fields)} field{'s' if len(fields) != 1 else ''} but the header has "
                                   f"{len(header)} ({header}); check the delimiter and quoting (a field that holds "
                                   f"the delimiter{', a quote' if self.quoting != csv.QUOTE_NONE else ''} or a line "
                                   f"break must be quoted)", "too many fields" if more else "too few fields")
                    continue
                yield TableRow(number, where, dict(zip(header, fields)), start)
        finally:
            lines.close()

    def _unclosed(self, start: int, eof: bool) -> DataError:
        """The error of a quoted field, in the row starting on line ``start``, that never closes."""
        why = "the file ends inside it" if eof else f"it grows past {CSV_FIELD_LIMIT} characters"
        return DataError(f"{self.path}:{start}: a quoted field in the row starting on this line never closes ({why}: "
                         f"it would swallow the rest of the file into one field); close the quote, or double a quote "
                         f"that is text (\"\")")

    def _bad_csv_row(self, number: int, start: int, line: int, err: str, kind: str) -> TableRow:
        """The row starting at ``start`` that :mod:`csv` refused at ``line`` (reading goes on at the next line)."""
        at = f" (on line {line})" if line != start else ""
        if "new-line character" in err:
            return TableRow(number, f"{self.path}:{start}", {}, start,
                            f"a carriage return (\\r) that does not end the line{at}, in an unquoted field; quote the "
                            f"field, or remove the \\r (lines end with \\n or \\r\\n)", "carriage return in a field")
        return TableRow(number, f"{self.path}:{start}", {}, start,
                        f"not valid {kind}{at}: {err}; a field that starts with a quote must end with one, right "
                        f"before the delimiter (double a quote that is text: \"\")", "bad quoting")

    # ------------------------------------------------------------------ text
    def _txt_rows(self) -> Iterator[TableRow]:
        lines = _Lines(self.path)
        try:
            for n, line in enumerate(lines, 1):
                text = line[:-1] if line.endswith("\n") else line
                if text.endswith("\r"):
                    text = text[:-1]
                where = f"{self.path}:{n}"
                if "\r" in text:
                    yield TableRow(n, where, {"text": text}, n,
                                   "a carriage return (\\r) in the middle of the line, which other tools read as a "
                                   "line break; remove it (lines end with \\n or \\r\\n)", "carriage return in a line")
                else:
                    yield TableRow(n, where, {"text": text}, n)
        finally:
            lines.close()

    # ------------------------------------------------------------------ JSON
    def _json_rows_of_file(self) -> Iterator[TableRow]:
        lines = _Lines(self.path)
        try:
            yield from self._json_rows(lines)
        finally:
            lines.close()

    def _json_rows(self, lines: Iterable[str]) -> Iterator[TableRow]:
        number = 0
        for n, line in enumerate(lines, 1):
            if not line.strip(_JSON_SPACE):
                continue
            number += 1
            where = f"{self.path}:{n}"
            try:
                value = json.loads(line, object_pairs_hook=_object)
            except _DuplicateKey as err:
                yield TableRow(number, where, {}, n, f"the key {str(err)!r} twice in one object; keep one",
                               "duplicate key")
                continue
            except json.JSONDecodeError as err:
                yield TableRow(number, where, {}, n, f"not valid JSON ({err.msg} at column {err.colno}); each line "
                               f"must be one JSON object" + (" (a .json file may instead hold one array of objects)"
                                                             if self.suffix == ".json" else ""), "not valid JSON")
                continue
            yield self._json_row(number, where, n, value, line)

    def _json_row(self, number: int, where: str, line: int | None, value: Any, text: str | None) -> TableRow:
        if (text is None or "\\ud" in text or "\\uD" in text) and (bad := lone_surrogate(value)) is not None:
            return TableRow(number, where, value if isinstance(value, dict) else {}, line,
                            f"a string with the lone surrogate \\u{ord(bad):04x} (half of a UTF-16 pair, not a "
                            f"character: no UTF-8 file or tokenizer can hold it); write the character itself, or "
                            f"both halves of its escaped pair", "not UTF-8 text")
        if isinstance(value, dict):
            return TableRow(number, where, value, line)
        if isinstance(value, str) and self.bare_strings is not None:
            return TableRow(number, where, {self.bare_strings: value}, line)
        key = self.bare_strings or "text"
        return TableRow(number, where, {}, line,
                        f"{_a(type(value).__name__)} {_short(value)}, not a JSON object; write one object per "
                        f"{'line' if line is not None else 'item'}, e.g. {{\"{key}\": \"...\"}}", "not a JSON object")

    def _json_file_rows(self) -> Iterator[TableRow]:
        """A ``.json`` file: one array (of objects), one object, or else JSON lines. Read whole (an array cannot be
        streamed with :mod:`json`); only stage-1 text sources take ``.json``."""
        raw = self.path.read_bytes()
        start = len(_BOM) if raw.startswith(_BOM) else 0
        try:
            content = raw[start:].decode("utf-8")
        except UnicodeDecodeError as err:
            at = start + err.start
            line_start = max(raw.rfind(b"\n", 0, at) + 1, start)
            raise not_utf8(self.path, raw.count(b"\n", 0, at) + 1, raw[at], at - line_start + 1, at) from None
        try:
            data = json.loads(content, object_pairs_hook=_object)
        except (json.JSONDecodeError, _DuplicateKey):
            yield from self._json_rows(line + "\n" for line in content.split("\n"))
            return
        if isinstance(data, list):
            for i, item in enumerate(data):
                yield self._json_row(i + 1, f"{self.path}: item {i}", None, item, None)
        elif isinstance(data, dict):
            yield self._json_row(1, str(self.path), None, data, None)
        else:
            raise DataError(f"{self.path} holds one {type(data).__name__}; a .json file holds an array of objects "
                            f"(or one object per line)")

    # ------------------------------------------------------------------ Parquet
    def _parquet(self) -> Any:
        import pyarrow as pa  # slow: pyarrow (~50 ms), only for Parquet
        import pyarrow.parquet as pq  # slow: pyarrow (~50 ms), only for Parquet

        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{self.path}: not a readable Parquet file ({err}); check the file, or rewrite it (or "
                            f"convert it to .jsonl/.csv/.tsv)") from None

    def _parquet_rows(self) -> Iterator[TableRow]:
        import pyarrow as pa  # slow: pyarrow (~50 ms), only for Parquet

        pf = self._parquet()
        names = pf.schema_arrow.names
        select = None if self.select is None else [c for c in self.select if c in names]
        number = 0
        try:
            for batch in pf.iter_batches(batch_size=self.batch_rows, columns=select):
                for record in batch.to_pylist():
                    number += 1
                    yield TableRow(number, f"{self.path}: row {number}", record)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
            raise DataError(f"{self.path}: row {number + 1}: cannot be read ({type(err).__name__}: {err}); the file is "
                            f"damaged: rewrite it") from None
