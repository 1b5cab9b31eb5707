"""The ``mtllm`` command line: ``mtllm COMMAND [--config FILE] [--key value ...]``.

Each command reads a flat YAML config (presets in ``configs/``) and lets any key be overridden by a
flag. ``mtllm COMMAND --help`` lists every key with its default and meaning.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .settings import ConfigError, build_settings, describe, load_yaml, parse_overrides


@dataclass
class Command:
    help: str
    settings: Callable[[], list[type]]
    run: Callable[[list[Any], dict[str, Any]], Any]
    extra_keys: tuple[str, ...] = ()


def _adapt_settings():
    from .training.loop import TrainingArgs
    from .training.stage1 import ModelSettings, Stage1Settings

    return [ModelSettings, Stage1Settings, TrainingArgs]


def _adapt_run(settings, values):
    from .training.stage1 import run_stage1

    summary = run_stage1(*settings)
    if _is_main_process():
        print(json.dumps({k: summary[k] for k in ("final_dir", "steps", "seconds", "n_texts")}))
    return summary


def _is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (or a single process)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class ConvertSettings:
    """Which pocket models to convert."""

    names: list[str] = field(default_factory=lambda: ["e5-small", "gemma3-270m"],
                             metadata={"help": "Pocket model names (see mtllm.pocket.POCKET_MODELS)."})
    force: bool = field(default=False, metadata={"help": "Convert again even if the cache is valid."})


def _convert_settings():
    return [ConvertSettings]


def _convert_run(settings, values):
    from .pocket import pocket_path

    (convert,) = settings
    for name in convert.names:
        print(f"{name}: {pocket_path(name, force=convert.force)}")


COMMANDS: dict[str, Command] = {
    "adapt": Command("stage 1: self-distil the MT-LLM on unlabelled English text", _adapt_settings, _adapt_run),
    "convert": Command("convert the pocket models (from PyPI) once into the cache", _convert_settings, _convert_run),
}


def register(name: str, command: Command) -> None:
    COMMANDS[name] = command


def _load_optional_commands() -> None:
    """Commands defined next to their stage; imported lazily so `mtllm --help` stays fast."""
    import importlib

    for module in ("mtllm.commands",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def _preset_keys(current: str) -> tuple[str, ...]:
    """Keys of the other commands: a preset (e.g. configs/pocket.yaml) holds the keys of every stage,
    so each command takes the ones it knows and leaves the others; a key no command knows is still
    an error."""
    import dataclasses

    keys: set[str] = set()
    for other, cmd in COMMANDS.items():
        if other in (current, "run"):
            continue
        for cls in cmd.settings():
            keys.update(f.name for f in dataclasses.fields(cls))
    return tuple(sorted(keys))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _load_optional_commands()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mtllm COMMAND [--config FILE] [--key value ...]\n\ncommands:")
        for name, cmd in COMMANDS.items():
            print(f"  {name:16s} {cmd.help}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=2)
        print(f"mtllm: unknown command {name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else "")
              + f"; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    if "-h" in rest or "--help" in rest:
        print(f"mtllm {name}: {cmd.help}\n\nkeys (set in --config FILE or as --key value):")
        print(describe(cmd.settings()))
        return 0
    try:
        values: dict[str, Any] = {}
        if "--config" in rest:
            i = rest.index("--config")
            if i + 1 >= len(rest):
                raise ConfigError("--config needs a file path")
            values.update(load_yaml(rest[i + 1]))
            rest = rest[:i] + rest[i + 2:]
        values.update(parse_overrides(rest))
        settings = build_settings(cmd.settings(), values, extra_keys=cmd.extra_keys + _preset_keys(name))
        cmd.run(settings, values)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mtllm {name}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # `python -m mtllm.cli`: run the imported module's main, so commands registered by
    # mtllm.commands (which imports mtllm.cli) land in the same registry.
    from mtllm.cli import main as _main

    raise SystemExit(_main())
