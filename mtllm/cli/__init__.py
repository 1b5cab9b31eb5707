"""The ``mtllm`` command line: ``mtllm COMMAND [--config FILE] [--key value ...]``.

Every command is defined here, in :data:`COMMANDS`: its settings dataclasses (imported when the
command runs, so ``mtllm --help`` stays fast) and what it does with them. A command reads a flat YAML
preset (``configs/``), any key overridden by a flag; ``mtllm COMMAND --help`` lists every key with its
type, default and meaning (:mod:`mtllm.settings`). A preset may hold the keys of other commands too
(``configs/pocket.yaml`` serves every stage): each command takes the keys it knows and leaves those
another command knows; any other key is an error.

A mistake in what the user gave (:class:`mtllm.errors.UserError`) prints one line,
``mtllm COMMAND: error: MESSAGE``, and exits 2; any other exception keeps its traceback.
``python -m mtllm``, ``python -m mtllm.cli`` (for ``torchrun -m`` / ``accelerate launch -m``) and the
``mtllm`` console script are this :func:`main`.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mtllm.errors import UserError
from mtllm.settings import build_settings, read_config, settings_parser

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """One ``mtllm`` command."""

    help: str
    settings: Callable[[], tuple[type, ...]]  # its settings dataclasses (flat keys)
    run: Callable[[dict[str, Any]], Any]  # what it does with the config's values
    sections: Callable[[], Mapping[str, tuple[type, ...]]] = dict  # `run` only: per-stage sections


@dataclass
class ConvertSettings:
    """Which pocket models to convert."""

    names: list[str] = field(default_factory=lambda: ["e5-small", "gemma3-270m"],
                             metadata={"help": "Pocket model names (see mtllm.sources.pocket.POCKET_MODELS)."})
    force: bool = field(default=False, metadata={"help": "Convert again even if the cache is valid."})


@dataclass
class TranslateTestSettings:
    """Translate a task's texts to English with a seq2seq MT model (cached) and classify them."""

    teacher: str | None = field(default=None, metadata={"help": "Fine-tuned English teacher (finetune's DIR/best)."})
    task: str = field(default="sib200", metadata={"help": "Task name."})
    langs: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "'all' or FLORES-200 codes."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub)."})
    output_dir: str = field(default="runs/translate-test", metadata={"help": "Where results go."})
    max_examples: int | None = field(default=None, metadata={"help": "At most this many examples per language."})


def _is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_summary(summary: Mapping[str, Any], keys: Sequence[str]) -> None:
    if _is_main_process():
        print(json.dumps({k: summary[k] for k in keys}))


# ------------------------------------------------------------------------------------------- commands
def _adapt_settings() -> tuple[type, ...]:
    from mtllm.settings import ModelSettings
    from mtllm.training.loop import TrainingArgs
    from mtllm.training.stage1 import Stage1Settings

    return ModelSettings, Stage1Settings, TrainingArgs


def _adapt(values: dict[str, Any]) -> None:
    from mtllm.training.stage1 import run_stage1

    summary = run_stage1(*build_settings(_adapt_settings(), values))
    _print_summary(summary, ("final_dir", "steps", "seconds", "n_texts"))


def _finetune_settings() -> tuple[type, ...]:
    from mtllm.settings import ModelSettings
    from mtllm.training.finetune import TaskSettings
    from mtllm.training.loop import TrainingArgs

    return ModelSettings, TaskSettings, TrainingArgs


def _finetune(values: dict[str, Any]) -> None:
    from mtllm.training.finetune import run_finetune

    summary = run_finetune(*build_settings(_finetune_settings(), values))
    _print_summary(summary, ("best_dir", "best", "steps", "seconds"))


def _distill_settings() -> tuple[type, ...]:
    from mtllm.settings import ModelSettings
    from mtllm.training.distill import DistillSettings
    from mtllm.training.finetune import TaskSettings
    from mtllm.training.loop import TrainingArgs

    return ModelSettings, TaskSettings, DistillSettings, TrainingArgs


def _distill(values: dict[str, Any]) -> None:
    from mtllm.training.distill import run_distill

    summary = run_distill(*build_settings(_distill_settings(), values))
    _print_summary(summary, ("final_dir", "steps", "seconds", "trainable", "objective"))


def _evaluate_settings() -> tuple[type, ...]:
    from mtllm.evaluation.evaluate import EvaluateSettings

    return (EvaluateSettings,)


def _evaluate(values: dict[str, Any]) -> None:
    from mtllm.evaluation.evaluate import run_evaluate

    (settings,) = build_settings(_evaluate_settings(), values)
    run_evaluate(settings)


def _translate_test_settings() -> tuple[type, ...]:
    from mtllm.baselines.translate_test import TranslateSettings

    return TranslateTestSettings, TranslateSettings


def _translate_test(values: dict[str, Any]) -> None:
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate

    tt, tr = build_settings(_translate_test_settings(), values)
    run_evaluate(EvaluateSettings(teacher=tt.teacher, task=tt.task, langs=tt.langs, split=tt.split,
                                  data_dir=tt.data_dir, output_dir=tt.output_dir, max_examples=tt.max_examples,
                                  systems=["translate_test"], translate_model=tr.mt_model),
                 translate_settings=tr)


def _run_settings() -> tuple[type, ...]:
    from mtllm.cli.pipeline import PipelineSettings, STAGE1_SETTINGS

    return (PipelineSettings, *STAGE1_SETTINGS)


def _run_sections() -> Mapping[str, tuple[type, ...]]:
    from mtllm.cli.pipeline import SECTION_SETTINGS

    return SECTION_SETTINGS


def _run(values: dict[str, Any]) -> None:
    from mtllm.cli.pipeline import run_pipeline

    run_pipeline(values)


def _convert(values: dict[str, Any]) -> None:
    from mtllm.sources.pocket import pocket_path

    (convert,) = build_settings((ConvertSettings,), values)
    for name in convert.names:
        print(f"{name}: {pocket_path(name, force=convert.force)}")


COMMANDS: dict[str, Command] = {
    "adapt": Command("stage 1: self-distil the MT-LLM on unlabelled English text", _adapt_settings, _adapt),
    "finetune": Command("stage 2a: fine-tune the LLM alone (fresh LoRA + head) on an English task",
                        _finetune_settings, _finetune),
    "distill": Command("stage 2b: distil the fine-tuned teacher into the MT-LLM", _distill_settings, _distill),
    "evaluate": Command("zero-shot evaluation of mtllm/llm/encoder/translate_test on many languages, or retrieval",
                        _evaluate_settings, _evaluate),
    "translate-test": Command("translate-test baseline: MT to English, then the English teacher",
                              _translate_test_settings, _translate_test),
    "run": Command("the whole pipeline (models, stage 1, teacher, distillation, evaluation), resumable",
                   _run_settings, _run, _run_sections),
    "convert": Command("convert the pocket models (from PyPI) once into the cache", lambda: (ConvertSettings,),
                       _convert),
}


# ------------------------------------------------------------------------------------------- parsing
def command_help(name: str) -> str:
    """``mtllm NAME --help``: every key of the command (and of each ``run`` section) with type, default and
    meaning."""
    cmd = COMMANDS[name]
    return settings_parser(
        cmd.settings(), cmd.sections(), prog=f"mtllm {name}", description=cmd.help,
        usage=f"mtllm {name} [--config FILE] [--key value ...]   (--some-key and --some_key are the same)",
    ).format_help()


def _keys(cmd: Command) -> set[str]:
    return {f for cls in cmd.settings() for f in cls.__dataclass_fields__} | set(cmd.sections())


def command_values(name: str, argv: Sequence[str]) -> dict[str, Any]:
    """``[--config FILE] [--key value ...]`` -> the values of command ``name``: the preset's keys, less those
    that only other commands know (a shared preset, e.g. configs/pocket.yaml), updated by the overrides.
    ``run`` takes every key of its preset (a key none of its stages knows is an error there)."""
    preset, overrides = read_config(argv)
    if name != "run":
        own = _keys(COMMANDS[name])
        others = set().union(*(_keys(cmd) for other, cmd in COMMANDS.items() if other not in (name, "run")))
        preset = {k: v for k, v in preset.items() if k in own or k not in others}
    return {**preset, **overrides}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mtllm COMMAND [--config FILE] [--key value ...]\n\ncommands:")
        for name, cmd in COMMANDS.items():
            print(f"  {name:16s} {cmd.help}")
        print("\n`mtllm COMMAND --help` lists the keys of a command.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=2)
        print(f"mtllm: unknown command {name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else "")
              + f"; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        print(command_help(name))
        return 0
    try:
        COMMANDS[name].run(command_values(name, rest))
    except UserError as err:
        print(f"mtllm {name}: error: {err}", file=sys.stderr)
        return 2
    return 0
