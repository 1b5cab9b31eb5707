"""Flat YAML configs with command-line overrides, validated against typed dataclasses.

A config is one flat mapping (``key: value``). ``--key value`` on the command line overrides any key
(``--output-dir`` and ``--output_dir`` are the same). Every key must belong to one of the settings
classes of the command, so a typo is an error that names close matches, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to change."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no Python objects can be constructed)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:  # a preset may extend another one, relative to its own folder
        parent = load_yaml(path.parent / base)
        parent.update(data)
        data = parent
    return data


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``["--max_steps", "40", "--bidirectional", "true"]`` -> ``{"max_steps": 40, "bidirectional": True}``.

    Values are parsed as YAML scalars/lists (``[a, b]``); a flag with no value means ``true``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 2
        else:
            raw = "true"
            i += 1
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out[key.replace("-", "_")] = value
    return out


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key) if len(non_none) == 1 else value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], key) if args else v for v in value]
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value
    if annotation in (int, float):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number ({annotation.__name__}), not {value!r}") from None
    if annotation is str and not isinstance(value, str):
        return str(value)
    return value


def build_settings(classes: Sequence[type], values: dict[str, Any], *, extra_keys: Sequence[str] = ()) -> list[Any]:
    """Instantiate each settings dataclass from ``values``; unknown keys raise :class:`ConfigError`."""
    known: dict[str, type] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            known.setdefault(f.name, cls)
    unknown = [] if "*" in extra_keys else [k for k in values if k not in known and k not in extra_keys]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(known) + list(extra_keys), n=3, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(f"unknown config key(s): {'; '.join(hints)}. Known keys: {', '.join(sorted(known))}")
    out = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        kwargs = {f.name: _coerce(values[f.name], hints[f.name], f.name)
                  for f in dataclasses.fields(cls) if f.name in values and f.init}
        out.append(cls(**kwargs))
    return out


def describe(classes: Sequence[type]) -> str:
    """Help text listing every key with its default and documentation."""
    lines = []
    for cls in classes:
        lines.append(f"{cls.__name__}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            lines.append(f"  --{f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
