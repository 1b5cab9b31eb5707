"""Loading a task's examples: :func:`load_examples`, :func:`load_train_examples`, :func:`available_languages`,
from the local data directory (:func:`resolve_data_dir`; ``data:PATH`` references: :func:`resolve_data_ref`) or,
with none, from the Hugging Face hub.

:func:`load_examples` returns the examples as an :class:`~mtllm.tasks.examples.Examples` list whose ``report`` (a
:class:`~mtllm.tasks.examples.LoadReport`) counts the rows kept with a blank segment and dropped for having no text
(the policy: :mod:`mtllm.tasks.readers`) for its (task, language, split); evaluation writes them to
``results.json`` (``bad_rows``) and ``results.md``, and ``mtllm run`` prints them for the training data.
A row is never dropped silently and a language is never refused for a blank field.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from mtllm.errors import ConfigError
from mtllm.tasks.examples import (DATA_DIR_ENV, DataNotFoundError, DataUnavailableError, Example, Examples,
                                  LoadReport, TaskDataError, _recording)
from mtllm.tasks.registry import get_task
from mtllm.tasks.spec import TaskSpec

__all__ = ["load_examples", "load_train_examples", "available_languages", "resolve_data_dir", "DATA_PREFIX",
           "data_ref_problem", "resolve_data_ref"]


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
