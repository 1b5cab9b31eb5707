"""What every task shares: :class:`Example`, :class:`TaskSpec` (a task's description and, as overridable
methods, how its local files and hub rows become examples), the errors, the file readers and row mappers,
and the registry (:func:`register_task`, :func:`get_task`, :func:`list_tasks`) behind :func:`load_examples`,
:func:`load_train_examples` and :func:`available_languages`.

A task of your own is a :class:`TaskSpec` (or a subclass overriding :meth:`TaskSpec.read_local` /
:meth:`TaskSpec.read_hub` / :meth:`TaskSpec.local_languages`) passed to :func:`register_task`. The
defaults read ``DATA_DIR/<local_dir or name>/<language>/<split>.{jsonl,tsv,csv}`` with the columns of the
task's kind (:data:`KIND_COLUMNS`), and hub datasets with the same columns. A task defined by files
(a YAML naming one file per split and language) is a :class:`mtllm.tasks.files.FileTask`; :func:`get_task`
takes the YAML's path wherever it takes a name.

Bad rows, the same for every loader (built-in tasks, your own, file tasks, hub or local):

* a row with one blank segment of a pair (e.g. a blank premise, as some official XNLI/AmericasNLI rows
  have; for multiple choice, a blank passage or question) is **kept**, that segment the empty string
  ``""``, and counted (``blank_segment_kept``);
* a row with no text at all (every segment blank) is **dropped** and counted (``no_text_dropped``);
* a blank or unknown label stays an error naming the row: the row cannot be scored, and guessing a class
  would change the results silently;
* a blank multiple-choice *option* stays an error too: an empty answer has no tokens to score, so the
  row's answer set is broken (:func:`mtllm.data.multiple_choice.format_multiple_choice` refuses it);
* a column missing from a JSON row is an error (the file's schema, not a blank field).

:func:`load_examples` returns the examples as an :class:`Examples` list whose ``report`` (a
:class:`LoadReport`) holds those counts for its (task, language, split); evaluation writes them to
``results.json`` (``bad_rows``) and ``results.md``, and ``mtllm run`` prints them for the training data.
A row is never dropped silently and a language is never refused for a blank field.
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import difflib
import itertools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

from mtllm.data.languages import FLORES200, UnknownLanguageError, suggest_languages, validate_lang
from mtllm.errors import ConfigError, DataError
from mtllm.tables import Table

__all__ = [
    "Example", "Examples", "LoadReport", "TaskSpec", "TASKS", "SPLITS", "KINDS", "KIND_COLUMNS", "DATA_DIR_ENV",
    "TaskDataError", "DataNotFoundError", "DataUnavailableError", "register_task", "get_task", "list_tasks",
    "resolve_data_dir", "available_languages", "load_examples", "load_train_examples", "is_task_file",
    "TASK_FILE_SUFFIXES", "DATA_PREFIX", "data_ref_problem", "resolve_data_ref", "check_transfer",
]

SPLITS = ("train", "validation", "test")
KINDS = ("classification", "pair_classification", "multiple_choice")
DATA_DIR_ENV = "MTLLM_DATA_DIR"
_SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation"}
_GENERIC_SUFFIXES = (".jsonl", ".tsv", ".csv")

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


def _multiple_choice_columns(n_options: int) -> tuple[str, ...]:
    """Belebele's columns, for ``n_options`` answers."""
    return ("flores_passage", "question", *(f"mc_answer{i}" for i in range(1, n_options + 1)),
            "correct_answer_num")


# the columns the default readers expect, by kind (an "id" column is optional)
KIND_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "pair_classification": ("premise", "hypothesis", "label"),
    "multiple_choice": _multiple_choice_columns(4),  # mc_answer1..N for N = len(label_names)
}
_KIND_FIX = {
    "classification": "Local classification files use the columns text, label (and optionally id).",
    "pair_classification": "Local NLI files use the hub's columns premise, hypothesis, label.",
    "multiple_choice": "Local multiple-choice files use Belebele's columns flores_passage, question, "
                       "mc_answer1.., correct_answer_num.",
}


@dataclass(frozen=True)
class TaskSpec:
    """A task: what it is (fields) and how its data is read (methods; override them in a subclass for a
    layout or columns the defaults do not handle). Register it with :func:`register_task`."""

    name: str                                   # lower case, '-' not '_' (get_task normalises to this)
    kind: str                                   # classification | pair_classification | multiple_choice
    label_names: tuple[str, ...]                # multiple choice: one per option ("1".."4")
    hub_id: str | None                          # Hugging Face dataset, or None (local files only)
    languages: tuple[str, ...]                  # FLORES-200-style codes
    train_lang: str = "eng_Latn"
    splits: Mapping[str, str] = field(default_factory=lambda: {s: s for s in SPLITS},
                                      compare=False)  # ours -> the dataset's
    description: str = ""
    metric: str = "accuracy"
    hub_configs: Mapping[str, str] = field(default_factory=dict, compare=False)  # code -> hub config
    local_dir: str = ""                         # folder under the data directory (default: the name)
    local_names: Mapping[str, str] = field(default_factory=dict, compare=False)  # code -> local folder/file
    train_task: str | None = None               # task whose train split (in train_lang) trains this one
    hub_loadable: bool = True
    notes: str = ""
    aliases: tuple[str, ...] = field(default=(), compare=False)  # other names get_task accepts

    #: True for tasks whose files are named by the task itself (:class:`mtllm.tasks.files.FileTask`): their
    #: ``read_local`` gets ``root=None`` and the data directory is not used; ``local_languages`` gives "all".
    reads_own_files: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for name in ("label_names", "languages", "aliases"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.name, str) or not self.name or self.name != _task_key(self.name):
            raise ValueError(f"task name {self.name!r}: use lower case and '-' (e.g. "
                             f"{_task_key(str(self.name)) or 'my-task'!r}).")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}.")
        if len(self.label_names) < 2 or len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"task {self.name!r}: label_names {list(self.label_names)} must be at least two "
                             f"distinct names.")
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"task {self.name!r}: languages must be a non-empty list of distinct codes.")
        for code in (*self.languages, self.train_lang):
            if validate_lang(code) != code:
                raise ValueError(f"task {self.name!r}: write the language {code!r} as {validate_lang(code)!r}.")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"task {self.name!r}: splits {unknown} are not among {', '.join(SPLITS)} (map ours "
                             f"to the dataset's names: {{'validation': 'dev'}}).")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def on_hub(self) -> bool:
        return self.hub_loadable and self.hub_id is not None

    def hub_config(self, lang: str) -> str:
        return self.hub_configs.get(lang, lang)

    def local_name(self, lang: str) -> str:
        return self.local_names.get(lang, lang)

    def local_root(self, root: Path) -> Path:
        """This task's folder under the data directory ``root``."""
        return root / (self.local_dir or self.name)

    # --------------------------------------------------------------------------- checks (overridable)
    def check_lang(self, lang: str) -> str:
        """The canonical code of ``lang`` if this task has it, else :class:`UnknownLanguageError`."""
        code = validate_lang(lang)
        if code in self.languages:
            return code
        close = suggest_languages(code, self.languages)
        hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
        raise UnknownLanguageError(
            f"task {self.name!r} has no language {code!r} ({FLORES200[code]}).{hint} Its {len(self.languages)} "
            f"languages are mtllm.tasks.get_task({self.name!r}).languages.")

    def check_split(self, split: str) -> str:
        """``split`` (or an alias such as ``dev``) as one of :data:`SPLITS` that this task has."""
        s = _normalise_split(split)
        if s in self.splits:
            return s
        if s == "train" and self.train_task:
            raise ConfigError(
                f"task {self.name!r} has no 'train' split: train on {self.train_task!r} in {self.train_lang!r} "
                f"instead (load_examples({self.train_task!r}, {self.train_lang!r}, 'train'), or "
                f"load_train_examples({self.name!r})).")
        raise ConfigError(f"task {self.name!r} has no {s!r} split; use one of {', '.join(self.splits)}.")

    # --------------------------------------------------------------------------- reading (overridable)
    def local_candidates(self, root: Path, lang: str, split: str) -> list[Path]:
        """Where the default layout may hold ``lang``'s ``split``:
        ``<local_root>/<local name | hub config | code>/<split | dataset split | dev>.{jsonl,tsv,csv}``."""
        base = self.local_root(root)
        names = dict.fromkeys([self.local_name(lang), self.hub_config(lang), lang])
        split_names = dict.fromkeys([split, self.splits.get(split, split), {"validation": "dev"}.get(split, split)])
        return [base / name / f"{s}{suf}" for name in names for s in split_names for suf in _GENERIC_SUFFIXES]

    def read_file(self, path: Path) -> Iterator[Example]:
        """A local file in the columns of this task's kind (:data:`KIND_COLUMNS`)."""
        columns, rows = _read_rows(path)
        _require_columns(columns, self.columns, str(path), _KIND_FIX[self.kind])
        if self.kind == "pair_classification":
            return _pairs(self, rows, id_cols=("id", "pairID"))  # MNLI/XNLI files name their ids pairID
        return self.map_rows(rows)

    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        """Examples of ``lang`` / ``split`` (already checked) under the data directory ``root``."""
        return self.read_file(_must_exist(self, self.local_candidates(root, lang, split), lang, split))

    def read_hub(self, ds: Any, source: str) -> Iterator[Example]:
        """Examples from one split of a hub dataset ``ds`` (``source`` names it for error messages)."""
        _require_columns(_hub_columns(ds), self.columns, source)
        class_names = None if self.kind == "multiple_choice" else _hub_class_names(self, ds, "label", source)
        return self.map_rows(_hub_rows(ds, source), class_names=class_names)

    def local_languages(self, base: Path) -> set[str]:
        """Codes with data in this task's folder ``base``: non-empty sub-folders named by local name, hub
        config or code."""
        by_local = {self.local_name(c): c for c in self.languages}
        by_config = {self.hub_config(c): c for c in self.languages}
        found: set[str] = set()
        for d in base.iterdir():
            if not d.is_dir() or not any(d.iterdir()):
                continue
            code = by_local.get(d.name) or by_config.get(d.name) or (d.name if d.name in self.languages else None)
            if code:
                found.add(code)
        return found

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the default readers require."""
        if self.kind == "multiple_choice":
            return _multiple_choice_columns(self.num_labels)
        return KIND_COLUMNS[self.kind]

    def map_rows(self, rows: Iterable[Row], class_names: Sequence[str] | None = None) -> Iterator[Example]:
        """Rows in the columns of this task's kind as examples (ids from an ``id`` column, else the row index)."""
        if self.kind == "classification":
            return _single(self, rows, id_col="id", text_col="text", label_col="label", class_names=class_names)
        if self.kind == "pair_classification":
            return _pairs(self, rows, class_names=class_names)
        return _multiple_choice(self, rows)


# ------------------------------------------------------------------------------------------ registry
TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}  # alias -> name


def _task_key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_task(task: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Make ``task`` known to :func:`get_task` (and so to every loader and command) under its name and
    aliases; returns it. A name or alias already taken is an error unless ``overwrite`` (which replaces
    the task holding it)."""
    if not isinstance(task, TaskSpec):
        raise TypeError(f"register_task needs a mtllm.tasks.TaskSpec, got {type(task).__name__}")
    keys = [task.name, *(_task_key(a) for a in task.aliases)]
    taken = {k: TASKS.get(k) or TASKS[_ALIASES[k]] for k in keys if k in TASKS or k in _ALIASES}
    if taken and not overwrite:
        held = ", ".join(f"{k!r} (task {t.name!r})" for k, t in taken.items())
        raise ValueError(f"cannot register task {task.name!r}: {held} already registered; pick another name, or "
                         f"pass overwrite=True to replace it.")
    for old in {t.name: t for t in taken.values()}.values():
        del TASKS[old.name]
        for alias in [a for a, n in _ALIASES.items() if n == old.name]:
            del _ALIASES[alias]
    TASKS[task.name] = task
    _ALIASES.update({k: task.name for k in keys[1:] if k != task.name})
    return task


def list_tasks() -> list[str]:
    return sorted(TASKS)


#: What marks a ``task`` value as the path of a task file rather than a name.
TASK_FILE_SUFFIXES = (".yaml", ".yml")


def is_task_file(name: Any) -> bool:
    """Whether ``name`` (a ``task`` value) is the path of a task file: it ends in ``.yaml`` / ``.yml``."""
    return isinstance(name, (str, os.PathLike)) and str(name).strip().lower().endswith(TASK_FILE_SUFFIXES)


def _no_task_files(path: str | os.PathLike) -> TaskSpec:
    raise ConfigError(f"task file {path}: task files are read by mtllm.tasks.files, which is not imported")


#: Reads the task a task YAML defines; :mod:`mtllm.tasks.files` (imported with :mod:`mtllm.tasks`) sets it to its
#: ``task_from_file``, so that this module, below it, never imports it.
_task_file_loader: Callable[[str | os.PathLike], TaskSpec] = _no_task_files


def set_task_file_loader(loader: Callable[[str | os.PathLike], TaskSpec]) -> None:
    """How :func:`get_task` reads a task YAML (:func:`mtllm.tasks.files.task_from_file`, set when it is imported)."""
    global _task_file_loader
    _task_file_loader = loader


def get_task(name: str | os.PathLike | TaskSpec) -> TaskSpec:
    """The task called ``name`` (or one of its aliases; case and ``_``/``-`` do not matter), a
    :class:`TaskSpec` as it is, or, for the path of a task YAML (``my-task.yaml``), the task it defines
    (:func:`mtllm.tasks.files.task_from_file`: read, checked, registered under its name)."""
    if isinstance(name, TaskSpec):
        return name
    if is_task_file(name):
        return _task_file_loader(name)
    key = _task_key(name)
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    close = difflib.get_close_matches(key, list(TASKS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(list_tasks())}. A task of your own: "
                      f"the path of its YAML file (see mtllm.tasks.files).")


# ------------------------------------------------------------------------------------------ data dir
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory: ``data_dir``, else ``$MTLLM_DATA_DIR``, else ``None`` (= load from the hub)."""
    source = "data_dir"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        source = f"${DATA_DIR_ENV}"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(
            f"the data directory {str(path)!r} (from {source}) does not exist or is not a folder; pass "
            f"--data-dir DIR / set {DATA_DIR_ENV} to a folder holding e.g. sib200/ or nusax-senti/, or leave "
            f"both unset to load from the Hugging Face hub.")
    return path


#: ``data:PATH``: a file or folder inside the local data directory (``--data-dir``/``$MTLLM_DATA_DIR``), e.g.
#: ``data:english-wordnet/texts.txt`` (stage-1 text) or ``data:english-nli/train.tsv`` (a ``train_file``).
DATA_PREFIX = "data:"


def data_ref_problem(ref: str) -> str | None:
    """What is wrong with the form of a ``data:PATH`` reference (``None``: fine, or not a ``data:`` one)."""
    if not str(ref).startswith(DATA_PREFIX):
        return None
    rel = str(ref)[len(DATA_PREFIX):]
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return ("data: references look like data:PATH with PATH inside the data directory, e.g. "
                "data:english-nli/train.tsv")
    return None


def resolve_data_ref(ref: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """The path ``ref`` names: ``data:PATH`` inside the data directory (``data_dir``, else ``$MTLLM_DATA_DIR``;
    a :class:`ConfigError` without one), else ``ref`` itself (``~`` expanded)."""
    ref = str(ref)
    if not ref.startswith(DATA_PREFIX):
        return Path(ref).expanduser()
    if (problem := data_ref_problem(ref)) is not None:
        raise ConfigError(f"{ref}: {problem}")
    root = resolve_data_dir(data_dir)
    if root is None:
        raise ConfigError(f"{ref}: a data: reference is a path inside the data directory; pass --data-dir DIR (or "
                          f"set {DATA_DIR_ENV}), or give the file's path instead")
    return root / ref[len(DATA_PREFIX):]


def check_transfer(trained: str | TaskSpec, evaluated: str | TaskSpec, *, what: str = "") -> None:
    """A model trained on ``trained`` can be evaluated on ``evaluated``: the same kind and the same label names
    in the same order (the head's outputs are the label indices). Else a one-line :class:`ConfigError` naming
    both tasks and both sets of labels (``what`` prefixes it, e.g. ``"eval_tasks: "``)."""
    a, b = get_task(trained), get_task(evaluated)
    if a.kind != b.kind:
        raise ConfigError(f"{what}{b.name} is a {b.kind} task but the model is trained on {a.name}, a {a.kind} task; "
                          f"evaluate it on tasks of the kind it was trained for")
    if a.kind == "multiple_choice" or list(a.label_names) == list(b.label_names):
        return
    if set(a.label_names) == set(b.label_names):
        where = f" in {a.source}" if getattr(a, "source", "") else ""
        raise ConfigError(f"{what}{a.name}'s labels {list(a.label_names)} are {b.name}'s {list(b.label_names)} in "
                          f"another order (the head's outputs are label indices): list them in {b.name}'s order, "
                          f"labels: [{', '.join(b.label_names)}]{where}")
    raise ConfigError(f"{what}the model is trained on {a.name}, labels {list(a.label_names)}, but {b.name} has the "
                      f"labels {list(b.label_names)}: evaluate it on tasks with the same label names")


# ------------------------------------------------------------------------------------------ readers
def _normalise_split(split: str) -> str:
    s = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    if s not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    return s


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


def _must_exist(spec: TaskSpec, candidates: Sequence[Path], lang: str, split: str) -> Path:
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


def _hub_class_names(spec: TaskSpec, ds: Any, col: str, source: str) -> Sequence[str] | None:
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


def _label(spec: TaskSpec, value: Any, where: str, column: str, class_names: Sequence[str] | None = None) -> int:
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


def _single(spec: TaskSpec, rows: Iterable[Row], *, id_col: str, text_col: str, label_col: str,
            class_names: Sequence[str] | None = None) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        texts = _segments(row, (text_col,), where)
        if texts is None:
            continue
        rid = row.get(id_col)
        yield Example(id=str(rid) if rid not in (None, "") else str(n), texts=texts,
                      label=_label(spec, row.get(label_col), where, label_col, class_names))


def _pairs(spec: TaskSpec, rows: Iterable[Row], *, premise: str = "premise", hypothesis: str = "hypothesis",
           label_col: str = "label", id_cols: Sequence[str] = ("id",),
           class_names: Sequence[str] | None = None) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        texts = _segments(row, (premise, hypothesis), where)
        if texts is None:
            continue
        rid = next((row[c] for c in id_cols if row.get(c) not in (None, "")), n)
        yield Example(id=str(rid), texts=texts, label=_label(spec, row.get(label_col), where, label_col, class_names))


def _multiple_choice(spec: TaskSpec, rows: Iterable[Row]) -> Iterator[Example]:
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


def _limit_iter(examples: Iterable[Example], limit: int | None, source: str,
                report: LoadReport | None = None) -> Examples:
    """The examples (at most ``limit``), the bad rows met on the way counted in ``report``."""
    report = report if report is not None else LoadReport()
    out = Examples(report=report)
    if limit == 0:
        return out
    with _recording(report):
        for ex in examples:
            out.append(ex)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        why = (f"all {report.no_text_dropped} rows have no text ({report.summary()})" if report.no_text_dropped
               else "the file or split is empty")
        raise TaskDataError(f"{source}: no examples ({why}); an empty evaluation set would give a meaningless "
                            f"score.")
    return out


# ------------------------------------------------------------------------------------------ hub
def _load_hub(spec: TaskSpec, lang: str, split: str):
    """One split of ``spec``'s hub dataset for ``lang`` (``datasets.load_dataset``, imported lazily)."""
    if not spec.on_hub:
        notes = f"{spec.notes} " if spec.notes else ""
        raise DataUnavailableError(
            f"{spec.name} is not on the Hugging Face hub and no data directory is set; {notes}Then pass "
            f"--data-dir DIR or set {DATA_DIR_ENV}.")
    if split not in spec.splits:
        raise DataUnavailableError(
            f"{spec.hub_id!r} has no {split!r} split on the hub (it has {', '.join(spec.splits)}). {spec.notes} "
            f"Pass --data-dir DIR or set {DATA_DIR_ENV}.")
    config, hub_split = spec.hub_config(lang), spec.splits[split]
    try:
        import datasets  # slow: datasets (~0.3 s), only for a hub dataset
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise DataUnavailableError(f"loading {spec.hub_id!r} needs the `datasets` package ({err}); install it, or "
                                   f"use local files: --data-dir DIR / {DATA_DIR_ENV}.") from None
    try:
        return datasets.load_dataset(spec.hub_id, config, split=hub_split)
    except Exception as err:  # network, missing config, auth, ...
        raise DataUnavailableError(
            f"could not load {spec.name} {lang!r} split {split!r}: no local data directory is set (pass "
            f"--data-dir DIR or set {DATA_DIR_ENV}; expected layout: see mtllm.tasks), and loading "
            f"{spec.hub_id!r} config {config!r} split {hub_split!r} from the Hugging Face hub failed: "
            f"{type(err).__name__}: {err}. Either provide the files locally or give this machine hub access to "
            f"{spec.hub_id!r}.") from err


def _hub_examples(spec: TaskSpec, lang: str, split: str) -> Iterator[Example]:
    ds = _load_hub(spec, lang, split)
    source = f"hub dataset {spec.hub_id!r} config {spec.hub_config(lang)!r} split {spec.splits[split]!r}"
    return spec.read_hub(ds, source)


# ------------------------------------------------------------------------------------------ public
def load_examples(task: str | TaskSpec, lang: str, split: str, data_dir: str | os.PathLike | None = None, *,
                  limit: int | None = None) -> list[Example]:
    """Examples of ``task`` in ``lang`` (FLORES-200-style code) for ``split`` (train/validation/test), as an
    :class:`Examples` list whose ``report`` counts the bad rows kept or dropped (module docstring).

    A task defined by files (:class:`mtllm.tasks.files.FileTask`, or the path of its YAML) reads the files
    it names; ``data_dir`` is not used. Others: from ``data_dir`` / ``$MTLLM_DATA_DIR`` when set (local files only: a
    missing file is an error, there is
    no silent switch to the hub), else from the Hugging Face hub. ``limit``: at most this many, the first
    in file order (a file sorted by label gives one class); an evaluation sample is drawn with
    :func:`mtllm.tasks.sampling.sample_examples` instead (fixed seed, stratified by label).
    """
    spec = get_task(task)
    code = spec.check_lang(lang)
    s = spec.check_split(split)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}.")
    report = LoadReport(spec.name, code, s)
    with _recording(report):  # bad rows met while the reader opens its files count too
        if spec.reads_own_files:
            examples = spec.read_local(None, code, s)
            source = f"{spec.name} {code} {s} ({getattr(spec, 'source', '') or 'its own files'})"
        else:
            root = resolve_data_dir(data_dir)
            if root is None:
                examples = _hub_examples(spec, code, s)
                source = f"{spec.name} {code} {s} (hub {spec.hub_id!r})"
            else:
                examples = spec.read_local(root, code, s)
                source = f"{spec.name} {code} {s} (under {root})"
    return _limit_iter(examples, limit, source, report)


def load_train_examples(task: str | TaskSpec, data_dir: str | os.PathLike | None = None, *,
                        limit: int | None = None) -> list[Example]:
    """Training examples for ``task``: its own train split in ``train_lang``, or, for tasks without one
    (AmericasNLI, Kardeş-NLU), the train split of ``train_task`` (English XNLI = MNLI), whose labels are the
    same."""
    spec = get_task(task)
    if "train" in spec.splits or spec.train_task is None:
        return load_examples(spec, spec.train_lang, "train", data_dir, limit=limit)
    source = get_task(spec.train_task)
    if source.label_names != spec.label_names:
        raise ValueError(f"task {spec.name!r} trains on {source.name!r}, but their labels differ: "
                         f"{list(spec.label_names)} vs {list(source.label_names)}.")
    return load_examples(source, spec.train_lang, "train", data_dir, limit=limit)


def available_languages(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Languages of ``task``: those present under the data directory when one is set, else all of
    ``TaskSpec.languages`` (the hub has them all); a task defined by files: its test languages."""
    spec = get_task(task)
    if spec.reads_own_files:
        return sorted(spec.local_languages(Path()))
    root = resolve_data_dir(data_dir)
    if root is None:
        return list(spec.languages)
    base = spec.local_root(root)
    if not base.is_dir():
        raise DataNotFoundError(f"no {spec.name} data under {root}: expected the folder {base} "
                                f"(layout: see mtllm.tasks).")
    return sorted(spec.local_languages(base))
