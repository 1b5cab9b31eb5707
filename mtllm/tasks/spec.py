"""A task's description: :class:`TaskSpec` (what the task is, as fields, and how its local files and hub rows
become examples, as overridable methods) and the columns its default readers expect by kind
(:data:`KIND_COLUMNS`).

A task of your own is a :class:`TaskSpec` (or a subclass overriding :meth:`TaskSpec.read_local` /
:meth:`TaskSpec.read_hub` / :meth:`TaskSpec.local_languages`) passed to
:func:`mtllm.tasks.registry.register_task`. The defaults read
``DATA_DIR/<local_dir or name>/<language>/<split>.{jsonl,tsv,csv}`` with the columns of the task's kind, and hub
datasets with the same columns (:mod:`mtllm.tasks.readers`). A task defined by files (a YAML naming one file per
split and language) is a :class:`mtllm.tasks.files.FileTask`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

from mtllm.data.languages import FLORES200, UnknownLanguageError, suggest_languages, validate_lang
from mtllm.errors import ConfigError
from mtllm.tasks.examples import KINDS, SPLITS, Example, Row, _normalise_split
from mtllm.tasks.readers import (_hub_class_names, _hub_columns, _hub_rows, _multiple_choice, _must_exist, _pairs,
                                 _read_rows, _require_columns, _single)

__all__ = ["TaskSpec", "KIND_COLUMNS"]

_GENERIC_SUFFIXES = (".jsonl", ".tsv", ".csv")


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



def _task_key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")

