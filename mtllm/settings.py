"""Typed dataclass settings, read from flat YAML presets and ``--key value`` overrides.

A config is one flat mapping (``key: value``); ``base: other.yaml`` makes a preset extend another one
(relative to its own folder). ``--key value`` on the command line overrides any key (``--output-dir``
and ``--output_dir`` are the same; values are YAML, e.g. ``--data '[a.txt, b.txt]'`` or
``--max_steps null``). The keys of a command are the fields of its settings dataclasses: every value is
checked against its field's type by `jsonargparse <https://jsonargparse.readthedocs.io>`_
(``Literal[...]`` fields take only their choices), which also writes ``--help``. An unknown key is a
:class:`ConfigError` naming close matches, never silently ignored; so is a value of the wrong type.

Stage hashes (:mod:`mtllm.cli.pipeline`) are taken over the values as the user wrote them, which is why
the overrides are kept as plain YAML values here and typed only when the settings objects are built.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import yaml

from mtllm.errors import ConfigError
from mtllm.modeling.config import LoraSettings

__all__ = ["ConfigError", "load_yaml", "parse_overrides", "read_config", "settings_parser", "check_keys",
           "build_settings", "check_choices", "parse_dtype", "Dtype", "ModelSettings"]


# ----------------------------------------------------------------------------------------- raw values
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no Python objects can be constructed); a ``base:`` key
    names a preset (relative to this file) whose keys this one extends and overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = {**load_yaml(path.parent / base), **data}
    return data


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``["--max-steps", "40", "--data=[a, b]", "--progress"]`` -> ``{"max_steps": 40, "data": ["a", "b"],
    "progress": True}``: each value is a YAML value, a flag without one means ``true``. Typing happens in
    :func:`build_settings`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, eq, raw = arg[2:].partition("=")
        if eq:
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw, i = argv[i + 1], i + 2
        else:
            raw, i = "true", i + 1
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out[key.replace("-", "_")] = value
    return out


def read_config(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[--config FILE] [--key value ...]`` -> (the preset's keys, the command-line overrides)."""
    argv = list(argv)
    preset: dict[str, Any] = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            raise ConfigError("--config needs a file path")
        preset = load_yaml(argv[i + 1])
        del argv[i:i + 2]
    return preset, parse_overrides(argv)


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
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, default_env=False, **parser_kwargs)
    for prefix, group_classes in [("", classes), *((f"{name}.", cs) for name, cs in (sections or {}).items())]:
        seen: set[str] = set()
        for cls in group_classes:
            doc = (cls.__doc__ or "").strip().splitlines()
            group = parser.add_argument_group(f"{prefix}{cls.__name__}" + (f": {doc[0].rstrip('.')}" if doc else ""))
            for f in dataclasses.fields(cls):
                if f.init and f.name not in seen:
                    seen.add(f.name)
                    group.add_argument(f"--{prefix}{f.name}", type=_field_types(cls)[f.name], default=_default(f),
                                       help=f.metadata.get("help", ""))
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
    """The command-line shorthands: ``a,b`` for a list, any scalar for a string (``--output_dir 2024``)."""
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


def build_settings(classes: Sequence[type], values: Mapping[str, Any], *, where: str = "") -> list[Any]:
    """Instantiate each settings dataclass of ``classes`` from ``values`` (a key several classes share goes
    to each), every value checked against its field's type: an unknown key or a bad value raises
    :class:`ConfigError` (prefixed by ``where``, e.g. ``"evaluate: "``)."""
    from argparse import ArgumentError

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
    return [cls(**{k: parsed[k] for k in _field_types(cls) if k in given}) for cls in classes]


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


def check_choices(settings: Any) -> None:
    """For ``__post_init__``: a field typed ``Literal[...]`` (or a list of them) holding another value
    raises :class:`ConfigError` when the settings object is built, before any model loads."""
    for name, hint in _field_types(type(settings)).items():
        value = getattr(settings, name)
        if not _fits(value, hint):
            raise ConfigError(f"{name} must be {_describe(hint)}, not {value!r}")


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` -> the torch dtype (a clear error otherwise)."""
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be float32, bfloat16 or float16, not {name!r}") from None


Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class ModelSettings:
    """Which models to stack and how (shared by every stage)."""

    encoder: str = field(default="pocket:e5-small", metadata={"help": "Encoder: hub id, local dir, pocket:NAME or tiny:NAME."})
    llm: str = field(default="pocket:gemma3-270m", metadata={"help": "Decoder LLM: hub id, local dir, pocket:NAME or tiny:NAME."})
    llm_adapters_to_merge: list[str] = field(default_factory=list, metadata={"help": "PEFT adapters merged into the LLM first (LLM2Vec)."})
    bidirectional: bool = field(default=False, metadata={"help": "Non-causal LLM attention (LLM2Vec)."})
    pooling: Literal["mean", "eos", "cls"] = field(default="mean", metadata={"help": "mean, eos or cls."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | list[str] = field(default="all-linear", metadata={"help": "LoRA target modules: 'all-linear' or a list of module names."})
    load_in_4bit: bool = field(default=False, metadata={"help": "NF4 LLM weights (CUDA + bitsandbytes only)."})
    dtype: Dtype = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    max_seq_length: int = field(default=512, metadata={"help": "Truncation length of both tokenisations."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager or sdpa (default: transformers' choice)."})

    def __post_init__(self) -> None:
        check_choices(self)

    def lora(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target_modules=self.lora_target_modules)

    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    def build(self):
        from mtllm.modeling.model import MTLLMModel

        return MTLLMModel.from_encoder_and_llm(
            self.encoder, self.llm, bidirectional=self.bidirectional, lora=self.lora(), pooling=self.pooling,
            load_in_4bit=self.load_in_4bit, dtype=self.torch_dtype(), llm_adapters_to_merge=self.llm_adapters_to_merge,
            max_seq_length=self.max_seq_length, attn_implementation=self.attn_implementation)
