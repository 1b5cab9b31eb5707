"""Typed dataclass settings, read from flat YAML presets and ``--key value`` overrides.

A config is one flat mapping (``key: value``); ``base: other.yaml`` makes a preset extend another one
(relative to its own folder). ``--key value`` on the command line overrides any key (``--output-dir``
and ``--output_dir`` are the same; values are YAML, e.g. ``--data '[a.txt, b.txt]'`` or
``--max_steps null``), and ``--config FILE`` (or ``--config=FILE``) names the config. A value for a key
whose field holds text (a path, a name, a list of them) keeps the text as written, in a config and on the
command line: ``output_dir: 007`` is the folder ``007``, ``--split 2024-06-01`` a name, not a date
(:class:`mtllm._yaml._ConfigLoader`, which also refuses YAML aliases and deep nesting). The keys of a command are the
fields of its settings dataclasses: every value is checked against its field's type by
`jsonargparse <https://jsonargparse.readthedocs.io>`_ (``Literal[...]`` fields take only their choices),
which also writes ``--help``. An unknown key is a
:class:`ConfigError` naming close matches, never silently ignored; so is a value of the wrong type.

Beyond its type, a field says which values it takes with a :class:`Rule` in its metadata, next to its
help (``field(default=16, metadata={"help": "LoRA rank.", "check": at_least(1)})``): ranges, non-empty
lists, output folders that are not files, inputs that exist. :func:`check_settings` (each settings
dataclass's ``__post_init__``) applies the ``Literal`` choices and the rules that need only the values when a
settings object is made, which so does no I/O; :func:`build_settings` then applies, before any work, those
that look at the file system or read a file (:func:`check_io`: output folders and files, task files) and
those that look for input files and folders (:func:`check_inputs`). Every mistake is so one
:class:`ConfigError` naming the key, the value and the fix, raised before any model loads; ``--help`` prints
each field's rule after its help.

Stage hashes (:mod:`mtllm.cli.pipeline`) are taken over the values as the user wrote them, which is why
the overrides are kept as plain YAML values here and typed only when the settings objects are built.
"""
from __future__ import annotations

import dataclasses
import difflib
from argparse import ArgumentError
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
import yaml

from mtllm._io import read_text_file
from mtllm._yaml import MAX_YAML_DEPTH, Refused as _Refused, load_document as _load
from mtllm import device as device_policy  # fast_bf16 looked up at each call (tests patch mtllm.device.fast_bf16)
from mtllm.errors import ConfigError, UserError
from mtllm.modeling.config import LoraSettings
from mtllm.modeling.model import MTLLMModel
from mtllm.sources import POCKET_PREFIX, TINY_PREFIX, looks_local
from mtllm.sources.pocket import POCKET_MODELS
from mtllm.sources.tiny import TINY_BUILDERS
from mtllm.tasks import get_task, is_task_file
from mtllm.tasks.texts import source_problem

__all__ = ["ConfigError", "load_yaml", "parse_overrides", "config_arg", "read_config", "string_keys",
           "MAX_YAML_DEPTH", "settings_parser", "check_keys",
           "build_settings", "Rule", "at_least", "above", "between", "FRACTION", "SEED", "NON_EMPTY", "OUTPUT_DIR",
           "EXISTING_DIR", "MODEL", "TASK", "TASK_OR_RETRIEVAL", "TEXT_SOURCE", "NAMED_MODELS", "each", "divides",
           "required_if", "check_settings", "check_io", "check_inputs", "parse_dtype", "dtype_name", "Dtype",
           "InferenceDtype", "inference_dtype_field", "inference_device_field", "MIN_SEQ_LENGTH",
           "ModelSettings"]


# ----------------------------------------------------------------------------------------- raw values
def _is_text(hint: Any) -> bool:
    """Whether a field typed ``hint`` holds free text (or null): ``str``, ``str | None``, a list of those. Not a
    ``Literal``: YAML types none of the choices but ``no`` (a boolean), and a boolean word given for a choice
    means that choice (``--mixed_precision off`` is ``no``: :func:`_choice_read_as_bool`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or _is_text(a) for a in args)
    if origin is list:
        return bool(args) and _is_text(args[0])
    return hint is str


def string_keys(classes: Sequence[type]) -> frozenset[str]:
    """The keys of ``classes`` whose values are text (:func:`_is_text`): a config's or command line's value for
    one keeps the text as written (``--output_dir 007`` is the folder ``007``, not ``7``)."""
    return frozenset(name for cls in classes for name, hint in _field_types(cls).items() if _is_text(hint))


def load_yaml(path: str | Path, *, strings: frozenset[str] = frozenset(),
              _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no Python objects can be constructed, no aliases, at most
    :data:`MAX_YAML_DEPTH` levels: :func:`mtllm._yaml.load_document`); the values of the keys in ``strings``
    (:func:`string_keys`) keep their text. A ``base:`` key names a preset (relative to this file) whose keys
    this one extends and overrides."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.yaml"))
        raise ConfigError(f"config file {path} is a folder; give a YAML file"
                          + (f" in it, e.g. {path / found[0]}" if found else ", e.g. configs/tiny.yaml"))
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; give the path of a YAML file, e.g. configs/tiny.yaml")
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: base: makes a loop ({' -> '.join(p.name for p in (*_chain, path.resolve()))}); "
                          f"remove one of these base: keys")
    try:
        data = _load(read_text_file(path), strings) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    except _Refused as err:
        raise ConfigError(f"{path} {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be the path of one YAML file (relative to {path.name}), not {base!r}")
        data = {**load_yaml(path.parent / base, strings=strings, _chain=(*_chain, path.resolve())), **data}
    return data


def parse_overrides(argv: Sequence[str], strings: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``["--max-steps", "40", "--data=[a, b]", "--progress"]`` -> ``{"max_steps": 40, "data": ["a", "b"],
    "progress": True}``: each value is a YAML value (read as :func:`load_yaml` reads a config: the value of a key
    in ``strings`` keeps its text, ``--output_dir 007`` -> ``"007"``; ``--section.key`` is ``key`` there), a
    flag without one means ``true``. Typing happens in :func:`build_settings`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, eq, raw = arg[2:].partition("=")
        name = key.replace("-", "_")
        if eq:
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw, i = argv[i + 1], i + 2
        else:
            out[name], i = True, i + 1  # a bare flag: true (a string-typed key refuses it)
            continue
        try:
            value = _load(raw, strings, as_text=name.rpartition(".")[2] in strings)
        except yaml.YAMLError:
            value = raw
        except _Refused as err:
            raise ConfigError(f"--{key} {err}") from None
        out[name] = value
    return out


def config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``argv``'s config file (``--config FILE`` or ``--config=FILE``; None without one) and its other arguments."""
    at = [i for i, arg in enumerate(argv) if arg == "--config" or arg.startswith("--config=")]
    if not at:
        return None, list(argv)
    if len(at) > 1:
        raise ConfigError("--config is given more than once; give one config file (a config extends another with "
                          "base: other.yaml)")
    i = at[0]
    path, eq, value = argv[i].partition("=")
    path, end = (value, i + 1) if eq else (argv[i + 1] if i + 1 < len(argv) else "", i + 2)
    if not path or path.startswith("--"):
        raise ConfigError("--config needs a file path, e.g. --config configs/tiny.yaml")
    return path, [*argv[:i], *argv[end:]]


def read_config(argv: Sequence[str], strings: frozenset[str] = frozenset()) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[--config FILE] [--key value ...]`` (or ``--config=FILE``) -> (the preset's keys, the command-line
    overrides); the values of the keys in ``strings`` (:func:`string_keys`) keep their text."""
    config, rest = config_arg(argv)
    preset = load_yaml(config, strings=strings) if config is not None else {}
    return preset, parse_overrides(rest, strings)


# ------------------------------------------------------------------------------------- typed settings
@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a settings dataclass (its ``__init__`` fields)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else (
        None if f.default is dataclasses.MISSING else f.default)


def settings_parser(classes: Sequence[type], sections: Mapping[str, Sequence[type]] | None = None,
                    **parser_kwargs: Any):
    """A jsonargparse parser with one ``--key`` per field of ``classes`` (a key several classes share is
    one argument) and one ``--section.key`` per field of each section's classes; its help lists every
    key with type, default and the field's ``metadata["help"]``."""
    from jsonargparse import ArgumentParser  # slow: jsonargparse (~20 ms), only when a parser is built

    parser = ArgumentParser(exit_on_error=False, default_env=False, **parser_kwargs)
    for prefix, group_classes in [("", classes), *((f"{name}.", cs) for name, cs in (sections or {}).items())]:
        seen: set[str] = set()
        for cls in group_classes:
            doc = (cls.__doc__ or "").strip().splitlines()
            group = parser.add_argument_group(f"{prefix}{cls.__name__}" + (f": {doc[0].rstrip('.')}" if doc else ""))
            for f in dataclasses.fields(cls):
                if f.init and f.name not in seen:
                    seen.add(f.name)
                    hint = _field_types(cls)[f.name]
                    group.add_argument(f"--{prefix}{f.name}", type=hint, default=_default(f),
                                       help=f.metadata.get("help", "") + _rules_help(f, hint))
    return parser


def check_keys(values: Mapping[str, Any], classes: Sequence[type], *, extra: Sequence[str] = (),
               where: str = "") -> None:
    """Raise :class:`ConfigError` naming close matches when a key of ``values`` is no field of ``classes``
    (nor one of ``extra``)."""
    known = {name for cls in classes for name in _field_types(cls)} | set(extra)
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(f"{where}unknown config key(s): {'; '.join(hints)}. Known keys: {', '.join(sorted(known))}")


def _normalise(value: Any, hint: Any) -> Any:
    """The command-line shorthands: ``a,b`` for a list, any scalar for a string, and a choice that YAML read as
    a boolean given back its word (``--mixed_precision no``). (A config or the command line gives a string-typed
    key its text already, ``007`` not 7: :func:`mtllm._yaml.load_document`; these are for values given in Python.)"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if origin is list and value is not None and not isinstance(value, (list, tuple)):
        return [value]
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if (word := _choice_read_as_bool(value, hint)) is not None:
        return word
    return value


def _or(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _describe(hint: Any) -> str:
    """A type for an error message: ``'standardize' or 'none'``, ``an integer or null``, ``a list of ...``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return _or([repr(a) for a in args])
    if origin in (typing.Union, types.UnionType):
        return _or([_describe(a) for a in args])
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def build_settings(classes: Sequence[type], values: Mapping[str, Any], *, where: str = "",
                   inputs: bool = True) -> list[Any]:
    """Instantiate each settings dataclass of ``classes`` from ``values`` (a key several classes share goes
    to each), every value checked against its field's type and rules: those that need only the values when
    each object is made, then those that look at the file system (:func:`check_io`) and (with ``inputs``) its
    input files and folders (:func:`check_inputs`): an unknown key or a bad value raises :class:`ConfigError` (prefixed
    by ``where``, e.g. ``"evaluate: "``). ``mtllm run`` builds its later stages with ``inputs=False``: their
    inputs are what the earlier stages write."""
    check_keys(values, classes, where=where)
    types_ = {k: v for cls in reversed(classes) for k, v in _field_types(cls).items()}
    given = {k: _normalise(v, types_[k]) for k, v in values.items()}
    try:
        parsed = settings_parser(classes).parse_object(given)
    except ArgumentError as err:
        key = re.search(r'Parser key "([^"]+)"', str(err))
        if key is None or key.group(1) not in given:
            raise ConfigError(where + " ".join(str(err).split())) from None
        name = key.group(1)
        raise ConfigError(f"{where}{name} must be {_describe(types_[name])}, not {given[name]!r}") from None
    built = []
    try:
        for cls in classes:
            built.append(cls(**{k: parsed[k] for k in _field_types(cls) if k in given}))
            check_io(built[-1])
            if inputs:
                check_inputs(built[-1])
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    return built


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is one of the choices that ``Literal`` parts of ``hint`` allow (other types: yes)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else _fits(value, a) for a in args)
    if origin is list and args and isinstance(value, (list, tuple)):
        return all(_fits(v, args[0]) for v in value)
    return True


#: ``(value, settings) -> None`` when the value is fine, else what is wrong and how to fix it ("" when the
#: rule's text says it all). ``settings`` is the whole settings object, for rules between fields.
Problem = Callable[[Any, Any], "str | None"]


@dataclass(frozen=True)
class Rule:
    """What a setting's values must be, beyond their type: ``text`` completes "KEY must be ..." (errors and
    ``--help``), ``problem`` tests a value. :func:`check_settings` (making a settings object) applies the rules
    that need only the values; ``io`` rules look at the file system or read a file (an output folder that must
    not be a file, a task file): :func:`check_io` applies them; ``inputs`` rules look for input files and
    folders, which an earlier stage of ``mtllm run`` may still have to write: :func:`check_inputs` applies them.
    :func:`build_settings` calls both, before any work. ``null`` passes every rule (where the type allows it,
    it means "the default") except those with ``on_null`` (:func:`required_if`)."""

    text: str
    problem: Problem
    inputs: bool = False
    on_null: bool = False
    io: bool = False


def _number(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and math.isfinite(value) else "not a finite number"


def _range(text: str, ok: Callable[[float], bool]) -> Rule:
    return Rule(text, lambda v, _: _number(v) or (None if ok(v) else ""))


def at_least(low: int | float) -> Rule:
    """``>= low``: step counts, batch sizes (1), ``save_steps`` (0)."""
    return _range(f">= {low}", lambda v: v >= low)


def above(low: int | float) -> Rule:
    """``> low``: learning rates, epochs (0)."""
    return _range(f"> {low}", lambda v: v > low)


def between(low: int | float, high: int | float, *, high_open: bool = False) -> Rule:
    """``low <= value <= high`` (``< high`` with ``high_open``)."""
    return _range(f"in [{low}, {high}{')' if high_open else ']'}",
                  lambda v: low <= v and (v < high if high_open else v <= high))


#: Ratios and probabilities: warmup, dropout.
FRACTION = between(0, 1, high_open=True)
#: What numpy, torch and ``random`` all take as a seed.
SEED = between(0, 2**32 - 1)
#: A non-empty string or list.
NON_EMPTY = Rule("non-empty", lambda v, _: None if (v.strip() if isinstance(v, str) else len(v)) else "")


def _first_existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def _folder_path(value: Any, _: Any) -> str | None:
    return None if str(value).strip() else "give a folder path (an empty one would write into the current folder)"


def _output_dir(value: Any, _: Any) -> str | None:
    path = Path(str(value)).expanduser()
    found = _first_existing(path)
    if found is None or found.is_dir():
        return None
    return f"{found} is a file, not a folder; choose a folder path (new or existing) for it"


#: Where a command writes: a folder that may exist, never a file (nor a path through one); the second rule
#: looks at the file system (``io``).
OUTPUT_DIR = (Rule("a folder path", _folder_path), Rule("a folder path", _output_dir, io=True))


def _existing_dir(value: Any, _: Any) -> str | None:
    path = Path(str(value)).expanduser()
    if path.is_dir():
        return None
    return f"{path} is a file; give the folder" if path.exists() else f"there is no folder {path}"


#: A local folder the command reads (``data_dir``).
EXISTING_DIR = Rule("an existing folder", _existing_dir, inputs=True)


def _model(value: Any, _: Any) -> str | None:
    ref = str(value)
    if ref.startswith(POCKET_PREFIX):
        name, known = ref[len(POCKET_PREFIX):], POCKET_MODELS
    elif ref.startswith(TINY_PREFIX):
        name, known = ref[len(TINY_PREFIX):], TINY_BUILDERS
    else:
        path = Path(ref).expanduser()
        if path.is_dir() or not (looks_local(ref) or path.exists()):
            return None  # a local folder, or a hub id (owner/name)
        return (f"{path} is a file; give the model's folder" if path.exists() else
                f"there is no folder {path} (a path like this is never looked up on the hub); check the path, "
                f"or give a hub id (owner/name)")
    if name in known:
        return None
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"{ref.split(':')[0]}: models are {', '.join(sorted(known))}" + (
        f" (did you mean {close[0]}?)" if close else "")


#: A model: a hub id (``owner/name``), ``pocket:NAME``, ``tiny:NAME`` or a local folder, which must exist.
MODEL = Rule("a hub id, pocket:NAME, tiny:NAME or an existing model folder", _model, inputs=True)


def _lookup_problem(value: Any) -> str | None:
    """Why the registry cannot give task ``value`` (one line), or None."""
    try:
        get_task(value)
    except UserError as err:
        return " ".join(str(err).split())
    return None


def _task(value: Any, _: Any, also: tuple[str, ...] = ()) -> str | None:
    """A task name the registry does not have (in memory); a task file is :func:`_task_file`'s."""
    return None if value in also or is_task_file(value) else _lookup_problem(value)


def _task_file(value: Any, _: Any) -> str | None:
    """A task file (``my-task.yaml``) that cannot be used: it is read and checked here (keys, languages,
    files, labels), and registered."""
    return _lookup_problem(value) if is_task_file(value) else None


#: A registered task (:func:`mtllm.tasks.list_tasks`) or the path of a task file (``my-task.yaml``,
#: :mod:`mtllm.tasks.files`); ``TASK_OR_RETRIEVAL`` also takes ``retrieval``. A task file is read by the second
#: rule (``io``).
TASK = (Rule("a task name", _task), Rule("a task name", _task_file, io=True))
TASK_OR_RETRIEVAL = (Rule("a task name or 'retrieval'", lambda v, s: _task(v, s, ("retrieval",))),
                     Rule("a task name or 'retrieval'", _task_file, io=True))


def _text_source(value: Any, settings: Any) -> str | None:
    return source_problem(str(value), getattr(settings, "data_dir", None))


#: A source of stage-1 text (:func:`mtllm.tasks.texts.iter_texts`).
TEXT_SOURCE = Rule("a text file or folder, data:PATH (inside the data directory), 'fineweb' or task:NAME/LANG/SPLIT",
                   _text_source, inputs=True)


def _named(value: Any, _: Any) -> str | None:
    name, eq, ref = str(value).partition("=")
    return None if name.strip() and eq and ref.strip() else "write NAME=DIR, e.g. before=runs/x/stage1/initial"


def _named_model(value: Any, settings: Any) -> str | None:
    return _model(str(value).partition("=")[2], settings)


#: ``NAME=DIR`` entries naming extra models (``compare``): their form, and (an input rule) their models.
NAMED_MODELS = (Rule("a list of NAME=DIR", lambda v, s: next(
                    (f"{item!r}: {why}" for item in v if (why := _named(item, s))), None)),
                Rule("a list of NAME=DIR", lambda v, s: next(
                    (f"{item!r}: {why}" for item in v if (why := _named_model(item, s))), None), inputs=True))


def each(rule: Rule | tuple[Rule, ...]) -> Rule | tuple[Rule, ...]:
    """``rule`` for every item of a list (for a tuple of rules, each of them)."""
    if isinstance(rule, tuple):
        return tuple(each(r) for r in rule)

    def problem(values: Any, settings: Any) -> str | None:
        for item in values:
            if item is not None and (why := rule.problem(item, settings)) is not None:
                return f"{item!r}: {why or f'must be {rule.text}'}"
        return None

    return Rule(f"a list, each {rule.text}", problem, inputs=rule.inputs, io=rule.io)


def divides(other: str) -> Rule:
    """A divisor of the field ``other`` (``micro_batch_size`` of ``batch_size``)."""
    return Rule(f"a divisor of {other}", lambda v, s: None if getattr(s, other) % v == 0 else
                f"{other} is {getattr(s, other)}, not a multiple of it; choose {other} / k for some k "
                f"(or null: {other} split over the processes)")


def required_if(other: str, value: Any, what: str) -> Rule:
    """Not null when the field ``other`` is ``value``; ``what`` says what to give."""
    return Rule(f"given when {other} is {value!r}", lambda v, s: None if v is not None or getattr(s, other) != value
                else f"give {what}", on_null=True)


def _rules(f: dataclasses.Field) -> tuple[Rule, ...]:
    """A field's rules: its ``metadata["check"]``, one :class:`Rule` or a tuple of them (and of tuples, such as
    :data:`TASK`)."""
    check = f.metadata.get("check", ())
    return tuple(r for item in (check if isinstance(check, tuple) else (check,))
                 for r in (item if isinstance(item, tuple) else (item,)))


def _rules_help(f: dataclasses.Field, hint: Any) -> str:
    """What ``--help`` adds to a field's help: ``Must be >= 1 or null.``"""
    texts = list(dict.fromkeys(r.text for r in _rules(f)))
    return f" Must be {' and '.join(texts)}{' or null' if _allows_none(hint) else ''}." if texts else ""


def _allows_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _apply(settings: Any, *, inputs: bool, io: bool = False) -> None:
    """Apply one kind of rules: ``inputs`` ones (:func:`check_inputs`), else ``io`` ones (:func:`check_io`), else
    those that need only the values (:func:`check_settings`)."""
    hints = _field_types(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        for rule in _rules(f):
            kind = rule.inputs if inputs else not rule.inputs and rule.io == io
            if not kind or (value is None and not rule.on_null):
                continue
            why = rule.problem(value, settings)
            if why is None:
                continue
            if value is None:
                raise ConfigError(f"{f.name} must be {rule.text}: {why}")
            or_null = " or null" if _allows_none(hints[f.name]) else ""
            if not why:
                default = _default(f)
                why = (f"the default is {default!r}" if default is not None and rule.problem(default, settings) is None
                       else f"the default is null ({f.metadata['help'].rstrip('.')})" if default is None and or_null
                       else "")
            raise ConfigError(f"{f.name} must be {rule.text}{or_null}, not {value!r}" + (f": {why}" if why else ""))


#: YAML 1.1 (PyYAML, and so jsonargparse) reads these words as booleans: ``--mixed_precision no`` arrives as False
_YAML_BOOL_WORDS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def _choice_read_as_bool(value: Any, hint: Any) -> str | None:
    """The choice of a ``Literal`` of words that YAML turned into ``value`` (a bool), if there is one."""
    if not isinstance(value, bool):
        return None
    choices = [a for a in typing.get_args(hint) if isinstance(a, str)] if typing.get_origin(hint) is Literal else []
    return next((c for c in choices if c.lower() in _YAML_BOOL_WORDS[value]), None)


def check_settings(settings: Any) -> None:
    """For every settings dataclass's ``__post_init__``: a field typed ``Literal[...]`` (or a list of them)
    holding another value, or a value that breaks its field's rules (``metadata["check"]``, see :class:`Rule`;
    those that need only the values: no I/O here, see :func:`check_io`), raises :class:`ConfigError` naming the
    key, the value and the fix, when the settings object is made.
    A choice that YAML read as a boolean (``no`` -> False) is given back its word."""
    for f in dataclasses.fields(settings):
        value, hint = getattr(settings, f.name), _field_types(type(settings)).get(f.name, Any)
        if (word := _choice_read_as_bool(value, hint)) is not None:
            setattr(settings, f.name, value := word)
        if value is None and hint is not Any and not _allows_none(hint):  # jsonargparse lets null through
            default = _default(f)
            raise ConfigError(f"{f.name} must be {_describe(hint)}, not null"
                              + (f": the default is {default!r}" if default is not None else ""))
        if not _fits(value, hint):
            raise ConfigError(f"{f.name} must be {_describe(hint)}, not {value!r}")
    _apply(settings, inputs=False)



def check_io(settings: Any) -> None:
    """The rules that look at the file system or read a file (``Rule.io``: an output folder or file that must not
    be what it is, a task file): a :class:`ConfigError` when one fails. :func:`build_settings` calls it for every
    settings object it makes, before any work (and before :func:`check_inputs`)."""
    _apply(settings, inputs=False, io=True)


def check_inputs(settings: Any) -> None:
    """The rules about input files and folders (``Rule.inputs``: data, models, data folders): a
    :class:`ConfigError` when one is missing or of the wrong kind. :func:`build_settings` calls it."""
    _apply(settings, inputs=True)


def parse_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` -> the torch dtype (a clear error otherwise).
    ``auto``: bfloat16 where it is faster than float32 on ``device`` (:func:`mtllm.device.fast_bf16`), else float32."""
    if name == "auto":
        return torch.bfloat16 if device_policy.fast_bf16(device) else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be float32, bfloat16, float16 or auto, not {name!r}") from None


Dtype = Literal["float32", "bfloat16", "float16"]
#: Inference weights: also ``auto`` (bfloat16 where the device does it faster than float32, else float32).
InferenceDtype = Literal["auto", "float32", "bfloat16", "float16"]


def dtype_name(name: str, device: str | torch.device | None = None) -> str:
    """The dtype ``name`` gives on ``device``, as a name: ``auto`` resolved (:func:`parse_dtype`), e.g. for
    records that must tell bfloat16 from float32 results, whatever setting chose them."""
    return str(parse_dtype(name, device)).removeprefix("torch.")


def inference_dtype_field() -> Any:
    """The ``dtype`` setting of every inference command (``mtllm predict``, ``encode``, ``evaluate`` and the
    pipeline's evaluate/retrieval stages): one default, ``auto``, and one help, so they cannot drift apart."""
    return field(default="auto", metadata={
        "help": "Weights dtype. auto (the default): bfloat16 weights where the device computes bf16 natively, "
                "i.e. a CPU with avx512_bf16 or AMX, or a CUDA GPU with bf16 (faster there), else float32 (CPUs "
                "without them, MPS). --dtype float32 forces float32 weights on every device; bfloat16 or float16 "
                "force those."})


def inference_device_field(runs: str = "the model runs") -> Any:
    """The ``device`` setting of every inference command; ``runs`` says what runs there (e.g. "the models run")."""
    return field(default=None, metadata={"help": f"Where {runs}: cpu, cuda, cuda:N or mps (default: $MTLLM_DEVICE, "
                                                 f"else cuda if available, else mps, else cpu)."})


#: The shortest ``max_seq_length``: room for the special tokens (``<bos>``, ``</s>``, a language token or
#: e5's ``query:`` prefix) and a few tokens of text.
MIN_SEQ_LENGTH = 8


@dataclass
class ModelSettings:
    """Which models to stack and how (shared by every stage)."""

    encoder: str = field(default="pocket:e5-small", metadata={"help": "Encoder: hub id, local dir, pocket:NAME or "
                                                                      "tiny:NAME.", "check": MODEL})
    llm: str = field(default="pocket:gemma3-270m", metadata={"help": "Decoder LLM: hub id, local dir, pocket:NAME or "
                                                                     "tiny:NAME.", "check": MODEL})
    llm_adapters_to_merge: list[str] = field(default_factory=list,
                                             metadata={"help": "PEFT adapters merged into the LLM first (LLM2Vec).",
                                                       "check": each(MODEL)})
    bidirectional: bool = field(default=False, metadata={"help": "Non-causal LLM attention (LLM2Vec)."})
    pooling: Literal["mean", "eos", "cls"] = field(default="mean", metadata={"help": "mean, eos or cls."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank.", "check": at_least(1)})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha.", "check": above(0)})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout.", "check": FRACTION})
    lora_target_modules: str | list[str] = field(default="all-linear",
                                                 metadata={"help": "LoRA target modules: 'all-linear' or a list of "
                                                                   "module names.", "check": NON_EMPTY})
    load_in_4bit: bool = field(default=False, metadata={"help": "NF4 LLM weights (CUDA + bitsandbytes only)."})
    dtype: Dtype = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    max_seq_length: int = field(default=512,
                                metadata={"help": "Truncation length of both tokenisations.",
                                          "check": at_least(MIN_SEQ_LENGTH)})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager or sdpa (default: transformers' "
                                                                            "choice)."})

    def __post_init__(self) -> None:
        check_settings(self)

    def lora(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target_modules=self.lora_target_modules)

    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    def build(self):
        return MTLLMModel.from_encoder_and_llm(
            self.encoder, self.llm, bidirectional=self.bidirectional, lora=self.lora(), pooling=self.pooling,
            load_in_4bit=self.load_in_4bit, dtype=self.torch_dtype(), llm_adapters_to_merge=self.llm_adapters_to_merge,
            max_seq_length=self.max_seq_length, attn_implementation=self.attn_implementation)
