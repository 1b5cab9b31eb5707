"""A task defined by files: a small YAML (or a dict) naming one file per split and language.

::

    # my-task.yaml
    name: my-sentiment          # lower case, '-' not '_'; not the name of another task
    kind: single                # single | pair | multiple_choice
    text_column: text           # default 'text' (multiple_choice: the passage)
    pair_column: hypothesis     # pair: the second segment; multiple_choice: the question
    option_columns: [a, b, c]   # multiple_choice only: the answers, in order
    label_column: label         # default 'label' (multiple_choice: the 1-based number of the right option)
    id_column: id               # optional; else the row number (0-based, counting every row of the file)
    labels: [negative, neutral, positive]   # optional (not for multiple_choice)
    description: ...            # optional
    train: {eng_Latn: data/en/train.csv}
    validation: {eng_Latn: data/en/valid.csv}            # optional
    test: {eng_Latn: data/en/test.csv, swh_Latn: data/sw/test.csv}

Every split maps FLORES-200 codes (:mod:`mtllm.data.languages`; a typo gets a suggestion) to a file,
relative to the YAML's folder: ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet``. ``train`` and ``test`` are
required. The task is trained in ``eng_Latn`` when ``train`` has it, else in its only train language.

Labels: ``labels`` as given, else the distinct values of the label column of the training file, sorted
(so the same data always gives the same order). Values are matched by their text (``1`` and ``"1"`` alike);
when ``labels`` is given and none of its names is a number, integer values are indices into it (the hub's
``ClassLabel`` style). A value in any file that is not a label (one the training data never has) is a
:class:`mtllm.errors.DataError` naming the unseen and the known labels; blank rows follow the policy of
:mod:`mtllm.tasks.readers` (a blank segment kept as ``""``, a row without text dropped, both counted).

Everything is checked when the task is read (keys, languages, files, columns, labels: every file is
read once), so ``mtllm run --task my-task.yaml`` fails in one line before any model loads. The task is a
:class:`FileTask`, a :class:`~mtllm.tasks.TaskSpec`, so every loader and command takes it:

* ``load_task_file("my-task.yaml")`` / ``task_from_dict({...}, base_dir=...)`` build it (not registered);
  ``register_task(spec)`` then makes its name known to every command in this process;
* ``get_task("my-task.yaml")`` (and so ``--task my-task.yaml`` and ``task: my-task.yaml`` in a config, for
  every command) reads it, registers it under its name and returns it; it is read again when the YAML or
  one of its files changes;
* :meth:`FileTask.files_digest` hashes the files' bytes, for ``mtllm run``'s stage hashes.

A *training file* needs no YAML: ``train_file: english-nli/train.tsv`` (or ``data:english-nli/train.tsv``, a path
inside the data directory) gives a task, built-in or from a file, other English training data in the columns of
its kind (pair: premise, hypothesis, label; an id column optional). :func:`check_train_file` reads it once and
refuses, in one line naming the file, a file of another kind (single texts for a pair task) and labels that are not
the task's label names (naming both sets); :func:`load_train_file` reads its examples under the bad-row policy of
:mod:`mtllm.tasks.readers`; :func:`load_training_data` is the one rule of what a model trained for a task learns
from (the training file, else the task's training data). Columns of other names: a task file.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import yaml

from mtllm._io import file_sha256, read_text_file
from mtllm._yaml import Refused, load_document
from mtllm.data.languages import UnknownLanguageError, validate_lang
from mtllm.errors import ConfigError, DataError
from mtllm.fingerprints import json_digest
from mtllm.tasks.examples import (SPLITS, DataNotFoundError, Example, Examples, LoadReport, TaskDataError,
                                  _normalise_split, _recording)
from mtllm.tasks.readers import _blank_label, _read_rows, _require_columns, _segments, _text
from mtllm.tasks.spec import TaskSpec, _task_key
from mtllm.tasks.registry import TASKS, get_task, register_task, set_task_file_loader, _ALIASES
from mtllm.tasks.loading import load_examples, load_train_examples, resolve_data_ref, _limit_iter
from mtllm.tasks.sampling import sample_examples

__all__ = ["FileTask", "load_task_file", "task_from_dict", "task_from_file", "TASK_KEYS", "FILE_KINDS",
           "DATA_SUFFIXES", "check_train_file", "load_train_file", "load_training_data", "train_file_digest",
           "TRAIN_SAMPLE_SEED"]

#: ``kind:`` in a task file -> :attr:`TaskSpec.kind` (the TaskSpec names are accepted too).
FILE_KINDS = {"single": "classification", "pair": "pair_classification", "multiple_choice": "multiple_choice",
              "classification": "classification", "pair_classification": "pair_classification"}
#: The file types a task file may name.
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
_REQUIRED = ("name", "kind", "train", "test")
_OPTIONAL = ("description", "text_column", "pair_column", "option_columns", "label_column", "id_column", "labels",
             "validation")
#: Every key a task file may hold.
TASK_KEYS = _REQUIRED + _OPTIONAL
_KEYS_HELP = ("name, kind (single | pair | multiple_choice), train, test; optional: validation, text_column, "
              "pair_column, option_columns, label_column, id_column, labels, description")


@dataclass(frozen=True)
class FileTask(TaskSpec):
    """A :class:`TaskSpec` whose data are the files it names (``files[split][code]``, absolute paths) in the
    columns it names; built by :func:`load_task_file` / :func:`task_from_dict` (module docstring)."""

    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict, compare=False)
    text_column: str = "text"
    pair_column: str | None = None
    option_columns: tuple[str, ...] = ()
    label_column: str = "label"
    id_column: str | None = None
    source: str = field(default="", compare=False)       # the YAML file, or "task dict"
    labels_from: str = field(default="", compare=False)  # where label_names come from, for messages
    labels_given: bool = False       # label_names given (labels:), not taken from the training data

    reads_own_files: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_columns", tuple(self.option_columns))
        super().__post_init__()

    # --------------------------------------------------------------------------- TaskSpec's hooks
    @property
    def columns(self) -> tuple[str, ...]:
        """The columns every file of this task must have (the id column too, when named)."""
        cols = [self.text_column]
        if self.pair_column:
            cols.append(self.pair_column)
        cols += list(self.option_columns)
        cols.append(self.label_column)
        if self.id_column:
            cols.append(self.id_column)
        return tuple(dict.fromkeys(cols))

    @property
    def segment_columns(self) -> tuple[str, ...]:
        return (self.text_column,) + ((self.pair_column,) if self.pair_column else ())

    def check_split(self, split: str) -> str:
        s = _normalise_split(split)
        if s in self.files:
            return s
        raise ConfigError(f"task {self.name!r} ({self.source}) has no {s!r} split: add {s}: {{{self.train_lang}: "
                          f"path/to/{s}.csv}} to it, or use {' or '.join(repr(k) for k in self.files)}.")

    def local_languages(self, base: Path | None = None) -> set[str]:
        """The test languages (what ``langs: [all]`` evaluates); ``base`` is not used."""
        return set(self.files.get("test", {}))

    def read_local(self, root: Path | None, lang: str, split: str) -> Iterator[Example]:
        """The examples of ``lang``'s ``split`` file (``root``, a data directory, is not used)."""
        return iter(self.read_file(self.path_of(lang, split)))

    def path_of(self, lang: str, split: str) -> Path:
        by_lang = self.files.get(split, {})
        if lang not in by_lang:
            have = ", ".join(by_lang) or "none"
            raise DataNotFoundError(f"task {self.name!r} ({self.source}) has no {split} file for {lang!r} (its {split} "
                                    f"languages: {have}); add {lang}: path/to/file under {split}: in {self.source}.")
        return Path(by_lang[lang])

    def read_file(self, path: Path) -> list[Example]:  # type: ignore[override]
        """Every example of ``path`` in this task's columns; labels that are not the task's are one
        :class:`DataError` naming them and the known ones (after reading the whole file)."""
        columns, rows = _read_rows(path)
        _require_columns(columns, self.columns, str(path),
                         f"Name the file's columns in {self.source} (text_column, pair_column, option_columns, "
                         f"label_column, id_column).")
        out: list[Example] = []
        unseen: dict[str, str] = {}  # label -> first row
        for n, (where, row) in enumerate(rows):
            texts = _segments(row, self.segment_columns, where)
            if texts is None:
                continue
            raw = row.get(self.label_column)
            _blank_label(raw, where, self.label_column)
            label = self.label_index(raw)
            if label is None:
                unseen.setdefault(str(raw).strip(), where)
                continue
            options = tuple(_text(row.get(c), where, c) for c in self.option_columns)
            rid = row.get(self.id_column) if self.id_column else None
            out.append(Example(id=str(rid) if rid not in (None, "") else str(n), texts=texts, label=label,
                               options=options))
        if unseen:
            first = next(iter(unseen.values()))
            if self.kind == "multiple_choice":
                raise TaskDataError(
                    f"{path}: answer(s) {sorted(unseen)} in column {self.label_column!r} (first at {first}) are not "
                    f"option numbers 1..{len(self.option_columns)} (the options are {list(self.option_columns)}); "
                    f"fix those rows.")
            raise TaskDataError(
                f"{path}: label(s) {sorted(unseen)} in column {self.label_column!r} (first at {first}) are not among "
                f"{self.name}'s training labels {list(self.label_names)} ({self.labels_from}); fix those rows, or "
                f"list every label under labels: in {self.source}.")
        return out

    def label_index(self, value: Any) -> int | None:
        """The class of a (non-blank) label value, or ``None`` when it is not one of this task's labels."""
        key = str(value).strip()
        if self.kind == "multiple_choice":
            return int(key) - 1 if re.fullmatch(r"\d+", key) and 1 <= int(key) <= len(self.option_columns) else None
        if key in self.label_names:
            return self.label_names.index(key)
        if (self.labels_given and re.fullmatch(r"\d+", key) and int(key) < len(self.label_names)
                and not any(re.fullmatch(r"-?\d+", n) for n in self.label_names)):
            return int(key)
        return None

    # --------------------------------------------------------------------------- bookkeeping
    def data_files(self) -> list[Path]:
        return [Path(p) for by_lang in self.files.values() for p in by_lang.values()]

    def files_digest(self) -> str:
        """A hash of what this task computes from: its kind, columns and labels, and the bytes of every file
        (by split and language; not their paths). ``mtllm run``'s stage hashes include it, so changing a
        file's contents redoes the stages that read it."""
        parts = {"kind": self.kind, "columns": [self.text_column, self.pair_column, list(self.option_columns),
                                                self.label_column, self.id_column],
                 "labels": list(self.label_names), "train_lang": self.train_lang,
                 "files": {s: {lang: file_sha256(p) for lang, p in by_lang.items()}
                           for s, by_lang in self.files.items()}}
        return json_digest(parts, length=16)

    def validate(self) -> "FileTask":
        """Read every file once (columns, labels, text), so that a bad file fails now, not mid-run."""
        for split, by_lang in self.files.items():
            for lang in by_lang:
                with _recording(LoadReport(self.name, lang, split)):
                    self.read_file(self.path_of(lang, split))
        return self


# ------------------------------------------------------------------------------------------ building
def _where(source: str, key: str | None = None) -> str:
    return f"{source}: {key}" if key else source


def _str_key(config: Mapping[str, Any], key: str, source: str, default: Any = None, *, required: bool = False) -> Any:
    value = config.get(key, default)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_where(source, key)} must be a non-empty string (a column name), not {value!r}.")
    return value.strip()


def _split_files(config: Mapping[str, Any], split: str, source: str, base_dir: Path) -> dict[str, str]:
    """``{code: absolute path}`` of one split, every code and file checked."""
    value = config[split]
    example = f"{split}: {{eng_Latn: data/en/{split}.csv, swh_Latn: data/sw/{split}.csv}}"
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{_where(source, split)} must map FLORES-200 codes to files, e.g. {example}; got {value!r}.")
    out: dict[str, str] = {}
    for code, file in value.items():
        try:
            canonical = validate_lang(str(code))
        except UnknownLanguageError as err:
            raise ConfigError(f"{_where(source, split)}: {err}") from None
        if canonical in out:
            raise ConfigError(f"{_where(source, split)}: {code!r} is {canonical!r} twice; give each language once.")
        if not isinstance(file, (str, os.PathLike)) or not str(file).strip():
            raise ConfigError(f"{_where(source, split)}: {canonical} must be the path of a file, not {file!r}.")
        path = Path(str(file)).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise ConfigError(f"{_where(source, split)}: {canonical}: {path} is not a {', '.join(DATA_SUFFIXES)} file; "
                              f"convert it, or name the right file.")
        if not path.is_file():
            rel = "" if Path(str(file)).is_absolute() else f" (paths are relative to {base_dir})"
            raise DataNotFoundError(f"{_where(source, split)}: {canonical}: file {path} not found{rel}; fix the path "
                                    f"or add the file.")
        out[canonical] = str(path.resolve())
    return out


def _train_lang(train: Mapping[str, str], source: str) -> str:
    if "eng_Latn" in train:
        return "eng_Latn"
    if len(train) == 1:
        return next(iter(train))
    raise ConfigError(f"{_where(source, 'train')}: {', '.join(train)}: with several training languages one must be "
                      f"eng_Latn (the language the task is trained in); give one train file, or add eng_Latn.")


def _check_columns(files: Mapping[str, Mapping[str, str]], needed: Sequence[str], source: str) -> None:
    """Every file has the ``needed`` columns (else a DataError naming the file, what it has and the keys)."""
    for by_lang in files.values():
        for path in by_lang.values():
            columns, _ = _read_rows(Path(path))
            _require_columns(columns, needed, path, f"Name the file's columns in {source} (text_column, "
                             f"pair_column, option_columns, label_column, id_column).")


def _labels_from_data(path: Path, segments: Sequence[str], column: str) -> list[str]:
    """The distinct labels of ``path``'s rows that have text, sorted (a blank label is an error)."""
    _, rows = _read_rows(path)
    found: set[str] = set()
    with _recording(LoadReport()):  # counted when the examples are loaded
        for where, row in rows:
            if _segments(row, segments, where) is None:
                continue
            raw = row.get(column)
            _blank_label(raw, where, column)
            found.add(str(raw).strip())
    return sorted(found)


def task_from_dict(config: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
                   source: str = "task dict") -> FileTask:
    """The :class:`FileTask` that ``config`` (the keys of a task file, module docstring) describes; file
    paths relative to ``base_dir`` (default: the current folder). Everything is checked and every file read
    once; a mistake is a one-line :class:`ConfigError` (keys, values, languages) or :class:`DataError` (files,
    columns, labels) naming the key or file and the fix. Not registered: :func:`register_task` it to make its
    name known, or pass the spec itself to the loaders."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source} must be a mapping of key: value ({_KEYS_HELP}), not {type(config).__name__}.")
    base = Path(base_dir).expanduser() if base_dir is not None else Path.cwd()
    unknown = [k for k in config if k not in TASK_KEYS]
    if unknown:
        hints = []
        for key in unknown:
            alias = {"dev": "validation", "valid": "validation", "val": "validation"}.get(str(key).lower())
            close = [alias] if alias else difflib.get_close_matches(str(key), TASK_KEYS, n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError(f"{source}: unknown key(s) {'; '.join(hints)}. Task file keys: {_KEYS_HELP}.")
    missing = [k for k in _REQUIRED if k not in config or config[k] is None]
    if missing:
        raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}. Task file keys: {_KEYS_HELP}.")
    name = config["name"]
    if not isinstance(name, str) or _task_key(name) != name or not name:
        raise ConfigError(f"{_where(source, 'name')} must be lower case with '-' (e.g. "
                          f"{_task_key(str(name)) or 'my-task'!r}), not {name!r}.")
    kind_value = config["kind"]
    if kind_value not in FILE_KINDS:
        raise ConfigError(f"{_where(source, 'kind')} must be single, pair or multiple_choice, not {kind_value!r}.")
    kind = FILE_KINDS[kind_value]
    text_column = _str_key(config, "text_column", source, "text")
    label_column = _str_key(config, "label_column", source, "label")
    id_column = _str_key(config, "id_column", source)
    pair_column = _str_key(config, "pair_column", source)
    options = config.get("option_columns")
    if kind == "classification" and pair_column is not None:
        raise ConfigError(f"{_where(source, 'pair_column')} is for kind pair (a second text); remove it, or set "
                          f"kind: pair.")
    if kind != "classification" and pair_column is None:
        what = "the second text of each pair" if kind == "pair_classification" else "the question"
        raise ConfigError(f"{source}: kind {kind_value} needs pair_column: the column of {what}.")
    if kind != "multiple_choice" and options is not None:
        raise ConfigError(f"{_where(source, 'option_columns')} is for kind multiple_choice; remove it.")
    if kind == "multiple_choice":
        if (not isinstance(options, (list, tuple)) or len(options) < 2
                or not all(isinstance(o, str) and o.strip() for o in options) or len(set(options)) != len(options)):
            raise ConfigError(f"{_where(source, 'option_columns')}: kind multiple_choice needs the answer columns, at "
                              f"least two distinct names, e.g. [mc_answer1, mc_answer2, mc_answer3, mc_answer4]; "
                              f"got {options!r}.")
        if config.get("labels") is not None:
            raise ConfigError(f"{_where(source, 'labels')}: a multiple_choice task's labels are the option numbers "
                              f"(label_column holds 1..{len(options)}); remove labels.")
    files = {s: _split_files(config, s, source, base) for s in SPLITS if config.get(s) is not None}
    train_lang = _train_lang(files["train"], source)
    segments = [text_column] + ([pair_column] if pair_column else [])
    _check_columns(files, list(dict.fromkeys(segments + list(options or []) + [label_column]
                                             + ([id_column] if id_column else []))), source)
    labels = config.get("labels")
    if kind == "multiple_choice":
        label_names = tuple(str(i) for i in range(1, len(options) + 1))
        labels_from = f"option numbers of {list(options)}"
    elif labels is not None:
        if (not isinstance(labels, (list, tuple)) or len(labels) < 2 or any(_blank_value(v) for v in labels)
                or len({str(v).strip() for v in labels}) != len(labels)):
            raise ConfigError(f"{_where(source, 'labels')} must be a list of at least two distinct names, e.g. "
                              f"[negative, neutral, positive], not {labels!r}; or leave it out to take them from the "
                              f"training data.")
        label_names = tuple(str(v).strip() for v in labels)
        labels_from = f"given by labels: in {source}"
    else:
        train_file = Path(files["train"][train_lang])
        label_names = tuple(_labels_from_data(train_file, segments, label_column))
        labels_from = f"from the {train_lang} training file {train_file}"
        if len(label_names) < 2:
            raise TaskDataError(f"{train_file}: its rows have the label(s) {list(label_names)}; a classifier needs at "
                                f"least two classes. Fix the training file, or give labels: in {source}.")
    languages = tuple(dict.fromkeys(code for s in SPLITS for code in files.get(s, {})))
    try:
        spec = FileTask(name=name, kind=kind, label_names=label_names, hub_id=None, languages=languages,
                        train_lang=train_lang, splits={s: s for s in files}, description=str(config.get("description")
                        or f"{name}: a task defined by files"), files=files, text_column=text_column,
                        pair_column=pair_column, option_columns=tuple(options or ()), label_column=label_column,
                        id_column=id_column, source=source, labels_from=labels_from,
                        labels_given=labels is not None)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    return spec.validate()


def _blank_value(value: Any) -> bool:
    return value is None or not str(value).strip()


def load_task_file(path: str | os.PathLike) -> FileTask:
    """The :class:`FileTask` a task YAML describes (module docstring); paths in it are relative to its
    folder. Not registered (see :func:`task_from_file` / :func:`~mtllm.tasks.register_task`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"task file {path} not found; give the path of a task YAML (relative to the current "
                          f"folder: {Path.cwd()}) or the name of a task (mtllm.tasks.list_tasks()).")
    try:  # the safe loader, no aliases, bounded nesting: the rules of every YAML mtllm reads (mtllm._yaml)
        config = load_document(read_text_file(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"task file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except Refused as err:
        raise ConfigError(f"task file {path} {err}") from None
    except DataError as err:
        raise ConfigError(f"task file {err}") from None
    if not isinstance(config, Mapping):
        raise ConfigError(f"task file {path} must hold a mapping of key: value ({_KEYS_HELP}), not "
                          f"{type(config).__name__}.")
    return task_from_dict(config, base_dir=path.resolve().parent, source=str(path))


#: resolved YAML path -> (its stamp, the task)
_LOADED: dict[Path, tuple[tuple, FileTask]] = {}


def _stamp(paths: Sequence[Path]) -> tuple:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), None))
    return tuple(out)


def task_from_file(path: str | os.PathLike) -> FileTask:
    """:func:`load_task_file`, registered under the task's name (what :func:`~mtllm.tasks.get_task` does with
    a ``.yaml`` path). Read once per process and again when the YAML or one of its files changes; a name
    that another task (built-in, or from another file) holds is a :class:`ConfigError`."""
    resolved = Path(path).expanduser().resolve()
    cached = _LOADED.get(resolved)
    if cached is not None and cached[0] == _stamp([resolved, *cached[1].data_files()]):
        spec = cached[1]
    else:
        spec = load_task_file(path)
        _LOADED[resolved] = (_stamp([resolved, *spec.data_files()]), spec)
    key = spec.name
    holder = TASKS.get(key) or (TASKS.get(_ALIASES[key]) if key in _ALIASES else None)
    if holder is spec:
        return spec
    if holder is not None and not (isinstance(holder, FileTask) and Path(holder.source).expanduser().resolve()
                                   == resolved):
        origin = f"the task file {holder.source}" if isinstance(holder, FileTask) else "a built-in or registered task"
        raise ConfigError(f"{_where(str(path), 'name')}: {key!r} is already {origin} ({holder.name!r}); choose another "
                          f"name.")
    try:
        return register_task(spec, overwrite=holder is not None)
    except ValueError as err:  # pragma: no cover - the checks above cover the registry's
        raise ConfigError(f"{path}: {err}") from None


# ------------------------------------------------------------------------------------------ a training file
#: ``(path, size, mtime, task, kind, labels, columns)`` of the training files already checked
_TRAIN_FILES_CHECKED: set[tuple] = set()
_KIND_WORDS = {"classification": "single texts", "pair_classification": "text pairs",
               "multiple_choice": "multiple-choice questions"}


def _label_column(spec: TaskSpec) -> str:
    if isinstance(spec, FileTask):
        return spec.label_column
    return "correct_answer_num" if spec.kind == "multiple_choice" else "label"


def _segment_columns(spec: TaskSpec) -> tuple[str, ...]:
    if isinstance(spec, FileTask):
        return spec.segment_columns
    return {"classification": ("text",), "pair_classification": ("premise", "hypothesis"),
            "multiple_choice": ("flores_passage", "question")}[spec.kind]


def _file_kind(columns: Sequence[str]) -> str | None:
    """What a file with ``columns`` holds, when the columns say it (for messages)."""
    if {"premise", "hypothesis"} <= set(columns) or {"sentence1", "sentence2"} <= set(columns):
        return "pair_classification"
    if "text" in columns:
        return "classification"
    return None


def check_train_file(task: str | TaskSpec, ref: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """The path of ``ref`` (a file, or ``data:PATH`` inside the data directory), checked as training data for
    ``task``: a ``.csv``/``.tsv``/``.jsonl``/``.parquet`` file with the columns of the task's kind (an id column
    optional) whose labels are the task's label names (matched by name; every one of them present). Every
    problem is one line: a :class:`ConfigError` or :class:`DataError` naming the file, and for labels both sets.
    The whole file is read once per change of the file."""
    spec = get_task(task)
    path = resolve_data_ref(ref, data_dir)
    if not path.is_file():
        raise DataNotFoundError(f"train_file {ref}: {path} {'is a folder' if path.is_dir() else 'not found'}; give the "
                                f"path of a {', '.join(DATA_SUFFIXES)} file (data:PATH for one inside the data "
                                f"directory)")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise ConfigError(f"train_file {ref}: {path} is not a {', '.join(DATA_SUFFIXES)} file; convert it, or name the "
                          f"right file")
    needed = tuple(c for c in spec.columns if not (isinstance(spec, FileTask) and c == spec.id_column))
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, spec.name, spec.kind, spec.label_names, needed)
    if key in _TRAIN_FILES_CHECKED:
        return path
    columns, rows = _read_rows(path)
    missing = [c for c in needed if c not in columns]
    if missing:
        holds = _file_kind(columns)
        what = (f"it holds {_KIND_WORDS[holds]} (columns {list(columns)}), but {spec.name} is a task of "
                f"{_KIND_WORDS[spec.kind]}" if holds is not None and holds != spec.kind else
                f"it has the columns {list(columns)}")
        raise TaskDataError(f"train_file {path}: {what}; training data for {spec.name} needs the columns "
                            f"{list(needed)} (an id column is optional; other column names: a task file, "
                            f"mtllm.tasks.files)")
    if spec.kind != "multiple_choice":
        found: dict[str, str] = {}  # label as written -> first row
        segments, label_col = _segment_columns(spec), _label_column(spec)
        with _recording(LoadReport()):  # blank segments are counted when the examples are loaded
            for where, row in rows:
                if _segments(row, segments, where) is None:
                    continue
                raw = row.get(label_col)
                _blank_label(raw, where, label_col)
                found.setdefault(str(raw).strip(), where)
        names = list(spec.label_names)
        lowered = {n.lower(): n for n in names}
        unknown = sorted(v for v in found if v not in names and v.lower() not in lowered)
        absent = [n for n in names if not any(v == n or v.lower() == n.lower() for v in found)]
        if unknown or absent:
            them = "it" if len(absent) == 1 else "them"
            why = (f"{unknown} (first at {found[unknown[0]]}) are not among them" if unknown else
                   f"it has no rows labelled {absent}, so the head would never learn {them}")
            raise TaskDataError(f"train_file {path}: its labels {sorted(found)} are not {spec.name}'s label names "
                                f"{names}: {why}; labels are matched by name, so rename them in the file (or give a "
                                f"task file whose labels: are the evaluation task's)")
    _TRAIN_FILES_CHECKED.add(key)
    return path


def train_file_digest(ref: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> str:
    """A hash of a training file's bytes (not its place): what ``mtllm run``'s stage hashes take of it."""
    return file_sha256(resolve_data_ref(ref, data_dir))[:16]


def load_train_file(task: str | TaskSpec, ref: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                    lang: str | None = None, limit: int | None = None) -> Examples:
    """The examples of the training file ``ref`` (:func:`check_train_file`) for ``task``, labels as the task's
    indices; ``lang`` (default: the task's training language) is what the report says. Bad rows follow
    :mod:`mtllm.tasks.readers` (a pair with a blank segment kept and counted, a row without text dropped and
    counted: the :class:`Examples`' ``report``). ``limit``: the first ``limit`` examples."""
    spec = get_task(task)
    path = check_train_file(spec, ref, data_dir)
    report = LoadReport(spec.name, lang or spec.train_lang, "train")
    with _recording(report):
        examples = spec.read_file(path)
    return _limit_iter(examples, limit, f"train_file {path}", report)


#: The seed of the ``max_train_examples`` / ``max_eval_examples`` samples of the training stages (fixed: the same
#: setting gives the same examples in every stage and every run).
TRAIN_SAMPLE_SEED = 0


def load_training_data(task: str | TaskSpec, *, train_file: str | os.PathLike | None = None, lang: str = "eng_Latn",
                       data_dir: str | os.PathLike | None = None, limit: int | None = None,
                       seed: int = TRAIN_SAMPLE_SEED) -> Examples:
    """What a model trained for ``task`` learns from, the one rule every stage and baseline follows: the
    ``train_file`` when one is given (:func:`load_train_file`), else the task's training data in ``lang``
    (English: :func:`~mtllm.tasks.load_train_examples`, which follows a task's ``train_task``, e.g. MultiNLI for
    AmericasNLI; another language: that language's train split).

    ``limit`` (``max_train_examples``): at most this many, a fixed-seed random sample stratified by label
    (:func:`mtllm.tasks.sampling.sample_examples`, ``seed``), in file order; not the first rows, which in a file
    sorted by label hold one class. The whole data is read, so the ``report`` counts the bad rows of all of it."""
    if train_file is not None:
        examples = load_train_file(task, train_file, data_dir, lang=lang)
    else:
        spec = get_task(task)
        if lang == "eng_Latn":
            examples = load_train_examples(spec, data_dir=data_dir)
        else:
            examples = load_examples(spec, lang, "train", data_dir=data_dir)
    if limit is None or len(examples) <= limit:
        return examples
    return Examples(sample_examples(examples, limit, seed=seed), report=examples.report)


set_task_file_loader(task_from_file)  # get_task reads task YAMLs with it (mtllm.tasks.registry sits below this module)
