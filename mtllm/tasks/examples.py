"""What loading a task gives and how it fails: the split names and task kinds, :class:`Example`, the bad-row
record (:class:`LoadReport`, :class:`Examples` and the recording the row mappers of :mod:`mtllm.tasks.readers`
report to), and the errors. The bottom of :mod:`mtllm.tasks`: every other module of it may import this one.

The bad-row policy itself (what is kept, dropped or refused) is in :mod:`mtllm.tasks.readers`.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

from mtllm.errors import ConfigError, DataError

__all__ = ["Example", "Examples", "LoadReport", "SPLITS", "KINDS", "DATA_DIR_ENV", "TaskDataError", "DataNotFoundError",
           "DataUnavailableError"]

SPLITS = ("train", "validation", "test")
KINDS = ("classification", "pair_classification", "multiple_choice")
DATA_DIR_ENV = "MTLLM_DATA_DIR"
_SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation"}

Row = tuple[str, dict[str, Any]]  # (where: "path:line" or "hub dataset ... row i", the row)


# ---------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Example:
    id: str                 # stable id; the same id in two languages = translations of each other
    texts: tuple[str, ...]  # (text,) | (premise, hypothesis) | (passage, question)
    label: int              # index into TaskSpec.label_names (multiple choice: the correct option); -1 unknown
    options: tuple[str, ...] = ()   # multiple-choice answers


@dataclass
class LoadReport:
    """What :func:`load_examples` did with the bad rows of one (task, language, split) (see the module
    docstring): how many rows it kept with a blank segment and how many it dropped for having no text,
    with where they are (``path:line`` or hub row; the first few)."""

    task: str = ""
    lang: str = ""
    split: str = ""
    blank_segment_kept: int = 0
    no_text_dropped: int = 0
    kept_rows: list[str] = field(default_factory=list)     # where, the first MAX_WHERE
    dropped_rows: list[str] = field(default_factory=list)  # where, the first MAX_WHERE

    MAX_WHERE: ClassVar[int] = 5

    def add(self, kind: str, where: str) -> None:
        if kind == "blank_segment_kept":
            self.blank_segment_kept += 1
            rows = self.kept_rows
        elif kind == "no_text_dropped":
            self.no_text_dropped += 1
            rows = self.dropped_rows
        else:
            raise ValueError(f"unknown bad-row kind {kind!r}")
        if len(rows) < self.MAX_WHERE:
            rows.append(where)

    @property
    def any(self) -> bool:
        return bool(self.blank_segment_kept or self.no_text_dropped)

    def counts(self) -> dict[str, int]:
        """``{"blank_segment_kept": n, "no_text_dropped": m}`` (what results.json's ``bad_rows`` holds)."""
        return {"blank_segment_kept": self.blank_segment_kept, "no_text_dropped": self.no_text_dropped}

    def summary(self) -> str:
        """One line, e.g. ``2 rows kept with a blank segment (a.tsv:3, a.tsv:9); 1 row without text dropped
        (a.tsv:5)``; ``no bad rows`` when there were none."""
        parts = []
        for n, rows, what in ((self.blank_segment_kept, self.kept_rows, "kept with a blank segment (as '')"),
                              (self.no_text_dropped, self.dropped_rows, "without text dropped")):
            if n:
                more = ", ..." if n > len(rows) else ""
                parts.append(f"{n} row{'s' if n != 1 else ''} {what} ({', '.join(rows)}{more})")
        return "; ".join(parts) or "no bad rows"


class Examples(list):
    """The list :func:`load_examples` returns: the examples, and in ``report`` (a :class:`LoadReport`) what
    was done with bad rows. Behaves as a plain list (slicing or ``+`` give plain lists)."""

    def __init__(self, examples: Iterable["Example"] = (), report: LoadReport | None = None):
        super().__init__(examples)
        self.report = report if report is not None else LoadReport()


_ACTIVE_REPORT: contextvars.ContextVar[LoadReport | None] = contextvars.ContextVar("mtllm_load_report",
                                                                                  default=None)


@contextlib.contextmanager
def _recording(report: LoadReport) -> Iterator[LoadReport]:
    """Bad rows met by the row mappers while this is active go to ``report``."""
    token = _ACTIVE_REPORT.set(report)
    try:
        yield report
    finally:
        _ACTIVE_REPORT.reset(token)


def _note_bad_row(kind: str, where: str) -> None:
    report = _ACTIVE_REPORT.get()
    if report is not None:
        report.add(kind, where)
        return
    # read outside load_examples (a TaskSpec's read_local called directly): still never silent
    what = "kept a row with a blank segment (as '')" if kind == "blank_segment_kept" else "dropped a row without text"
    warnings.warn(f"{where}: {what}", stacklevel=3)


class TaskDataError(DataError):
    """Task data that cannot be used as it is; the message names the file (and line) and the fix."""


class DataNotFoundError(TaskDataError, FileNotFoundError):
    """An expected local file or folder is missing."""


class DataUnavailableError(TaskDataError):
    """Neither a local data directory nor the hub could provide the data."""



def _normalise_split(split: str) -> str:
    s = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    if s not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    return s

