"""Reading task data: the file readers (:func:`_read_rows`, :func:`_read_lines`: one strict table reader), the
column and file checks (:func:`_require_columns`, :func:`_must_exist`), the hub row helpers, and the row mappers
that turn rows into :class:`~mtllm.tasks.examples.Example` s under the bad-row policy, the same for every loader
(built-in tasks, your own, file tasks, hub or local):

* a row with one blank segment of a pair (e.g. a blank premise, as some official XNLI/AmericasNLI rows
  have; for multiple choice, a blank passage or question) is **kept**, that segment the empty string
  ``""``, and counted (``blank_segment_kept``);
* a row with no text at all (every segment blank) is **dropped** and counted (``no_text_dropped``);
* a blank or unknown label stays an error naming the row: the row cannot be scored, and guessing a class
  would change the results silently;
* a blank multiple-choice *option* stays an error too: an empty answer has no tokens to score, so the
  row's answer set is broken (:func:`mtllm.data.multiple_choice.format_multiple_choice` refuses it);
* a column missing from a JSON row is an error (the file's schema, not a blank field).

The mappers report each kept or dropped row to the :class:`~mtllm.tasks.examples.LoadReport` being recorded.
``spec`` arguments are the :class:`~mtllm.tasks.spec.TaskSpec` reading (used for its name, labels and hub
facts only): this module sits below :mod:`mtllm.tasks.spec`, whose default reading methods call it.
"""
from __future__ import annotations

import csv
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mtllm.errors import DataError
from mtllm.tables import Table
from mtllm.tasks.examples import DATA_DIR_ENV, DataNotFoundError, Example, Row, TaskDataError, _note_bad_row

__all__: list[str] = []  # internal: the task modules import the helpers they use by name

#: The :class:`mtllm.tasks.spec.TaskSpec` a helper reads for (duck-typed: that module is above this one).
_Spec = Any


#: The file types of task data (:func:`_read_rows`).
_TASK_SUFFIXES = (".jsonl", ".tsv", ".csv", ".parquet")


def _task_error(err: DataError) -> TaskDataError:
    return err if isinstance(err, TaskDataError) else TaskDataError(str(err))


def _strict(rows: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[Row]:
    """``rows`` (:meth:`mtllm.tables.Table.records`), their errors as :class:`TaskDataError` s."""
    try:
        yield from rows
    except DataError as err:
        raise _task_error(err) from None


def _read_lines(path: Path) -> Iterator[str]:
    """The lines of a text file (:class:`mtllm.tables.Table`: UTF-8, split at ``\\n`` only), streamed."""
    try:
        table = Table(path, formats=(".txt",))
    except DataError as err:
        raise _task_error(err) from None
    return (row["text"] for _, row in _strict(table.records()))


def _read_rows(path: Path, *, quoting: int = csv.QUOTE_MINIMAL) -> tuple[list[str], Iterator[Row]]:
    """Columns and rows of a .tsv/.csv/.jsonl/.parquet file, streamed by the one table reader
    (:class:`mtllm.tables.Table`: strict; a malformed row is an error naming its line); ``where`` is
    ``path:line`` (Parquet: ``path: row N``) for error messages. A JSON-lines file has no header: its columns
    are the keys of its first row."""
    try:
        table = Table(path, quoting=quoting, formats=_TASK_SUFFIXES)
    except DataError as err:
        raise _task_error(err) from None
    rows = _strict(table.records())
    if table.columns is not None:
        return list(table.columns), rows
    first = next(rows, None)
    if first is None:
        return [], iter(())
    return list(first[1]), itertools.chain([first], rows)


def _require_columns(columns: Sequence[str], expected: Sequence[str], source: str, fix: str = "") -> None:
    missing = [c for c in expected if c not in columns]
    if not missing:
        return
    guesses = []
    for m in missing:
        close = difflib.get_close_matches(m, list(columns), n=1, cutoff=0.5)
        if close:
            guesses.append(f"{close[0]!r} -> {m!r}")
    rename = f" Rename {', '.join(guesses)}." if guesses else ""
    raise TaskDataError(f"{source}: missing column(s) {missing}; found {list(columns)}, expected "
                        f"{list(expected)}.{rename}{(' ' + fix) if fix else ''}")


def _must_exist(spec: _Spec, candidates: Sequence[Path], lang: str, split: str) -> Path:
    """The first existing file of ``candidates``, else a :class:`DataNotFoundError` listing them."""
    for p in candidates:
        if p.is_file():
            return p
    shown = "\n  ".join(str(p) for p in candidates[:6]) + ("\n  ..." if len(candidates) > 6 else "")
    hub = (f", or leave --data-dir / {DATA_DIR_ENV} unset to load {spec.hub_id!r} from the Hugging Face hub"
           if spec.on_hub and split in spec.splits else "")
    extra = f" {spec.notes}" if spec.notes and (not spec.on_hub or split not in spec.splits) else ""
    raise DataNotFoundError(f"no local {spec.name} data for {lang!r} split {split!r}; looked for:\n  {shown}\n"
                            f"Put the file there{hub}.{extra}")


def _hub_columns(ds: Any) -> list[str]:
    return list(getattr(ds, "column_names", None) or [])


def _hub_rows(ds: Any, source: str) -> Iterator[Row]:
    for i, row in enumerate(ds):
        yield f"{source} row {i}", row


def _hub_class_names(spec: _Spec, ds: Any, col: str, source: str) -> Sequence[str] | None:
    """The names of ``ds``'s ClassLabel column ``col`` (None if not a ClassLabel), checked against the task's."""
    feat = (getattr(ds, "features", None) or {}).get(col)
    names = getattr(feat, "names", None)
    if names is not None and sorted(names) != sorted(spec.label_names):
        raise TaskDataError(f"{source}: its labels {list(names)} are not {spec.name}'s {list(spec.label_names)}.")
    return names


# ------------------------------------------------------------------------------------------ row mappers
def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _segments(row: Mapping[str, Any], columns: Sequence[str], where: str) -> tuple[str, ...] | None:
    """The text segments of ``row`` in ``columns`` under the bad-row policy (module docstring): a blank
    segment (empty, whitespace-only or null) becomes ``""`` and the row is kept and counted, unless every
    segment is blank: then ``None`` (the row is dropped, and counted). A column absent from the row or a
    value that is not text is an error naming the row."""
    texts: list[str] = []
    for column in columns:
        if column not in row:
            raise TaskDataError(f"{where}: missing {column!r} (the row has {list(row)}); every row needs the "
                                f"column {column!r} (write it empty if the row has no such text).")
        value = row[column]
        if _blank(value):
            texts.append("")
        elif isinstance(value, str):
            texts.append(value)
        else:
            raise TaskDataError(f"{where}: {column!r} is {type(value).__name__} {value!r}, not text; fix the row "
                                f"(quote it as a string).")
    blank = sum(t == "" for t in texts)
    if blank == len(texts):
        _note_bad_row("no_text_dropped", where)
        return None
    if blank:
        _note_bad_row("blank_segment_kept", where)
    return tuple(texts)


def _text(value: Any, where: str, column: str) -> str:
    """A text that must not be blank (a multiple-choice option: an empty answer has nothing to score)."""
    if value is None or not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else "empty"
        raise TaskDataError(f"{where}: {what} {column!r} (got {value!r}); an answer option needs text (an empty one "
                            f"has no tokens to score) — fix the row or delete it.")
    return value


def _blank_label(value: Any, where: str, column: str) -> None:
    if _blank(value):
        raise TaskDataError(f"{where}: blank label in column {column!r} (got {value!r}); every row with text needs "
                            f"a label (a row without one cannot be scored) — fix the row or delete it.")


def _label(spec: _Spec, value: Any, where: str, column: str, class_names: Sequence[str] | None = None) -> int:
    names = spec.label_names
    _blank_label(value, where, column)
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip())):
        idx = int(value)
        if idx == -1:
            return -1
        if class_names is not None:  # the hub's ClassLabel order: map by name
            if 0 <= idx < len(class_names) and class_names[idx] in names:
                return names.index(class_names[idx])
        elif 0 <= idx < len(names):
            return idx
    elif isinstance(value, str) and value.strip():
        v = value.strip()
        if v in names:
            return names.index(v)
        lowered = [n.lower() for n in names]
        if v.lower() in lowered:
            return lowered.index(v.lower())
    raise TaskDataError(f"{where}: label {value!r} in column {column!r} is not one of {spec.name}'s labels "
                        f"{list(names)} (or their indices 0..{len(names) - 1}); fix the row or the label names.")


def _single(spec: _Spec, rows: Iterable[Row], *, id_col: str, text_col: str, label_col: str,
            class_names: Sequence[str] | None = None) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        texts = _segments(row, (text_col,), where)
        if texts is None:
            continue
        rid = row.get(id_col)
        yield Example(id=str(rid) if rid not in (None, "") else str(n), texts=texts,
                      label=_label(spec, row.get(label_col), where, label_col, class_names))


def _pairs(spec: _Spec, rows: Iterable[Row], *, premise: str = "premise", hypothesis: str = "hypothesis",
           label_col: str = "label", id_cols: Sequence[str] = ("id",),
           class_names: Sequence[str] | None = None) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        texts = _segments(row, (premise, hypothesis), where)
        if texts is None:
            continue
        rid = next((row[c] for c in id_cols if row.get(c) not in (None, "")), n)
        yield Example(id=str(rid), texts=texts, label=_label(spec, row.get(label_col), where, label_col, class_names))


def _multiple_choice(spec: _Spec, rows: Iterable[Row]) -> Iterator[Example]:
    """Rows in Belebele's columns; one option per label name, ``correct_answer_num`` 1-based."""
    n_opt = spec.num_labels
    allowed = ", ".join(map(str, range(1, n_opt))) + f" or {n_opt}"
    for n, (where, row) in enumerate(rows):
        texts = _segments(row, ("flores_passage", "question"), where)
        if texts is None:
            continue
        options = tuple(_text(row.get(f"mc_answer{i}"), where, f"mc_answer{i}") for i in range(1, n_opt + 1))
        raw = row.get("correct_answer_num")
        _blank_label(raw, where, "correct_answer_num")
        try:
            ans = int(str(raw).strip())
        except ValueError:
            ans = 0
        if not 1 <= ans <= n_opt:
            raise TaskDataError(f"{where}: correct_answer_num {raw!r} must be {allowed} (the 1-based number "
                                f"of the correct mc_answer).")
        if row.get("link") not in (None, "") and row.get("question_number") not in (None, ""):
            rid = f"{row['link']}#{row['question_number']}"
        else:
            rid = str(row.get("id", n))
        yield Example(id=rid, texts=texts, label=ans - 1, options=options)
