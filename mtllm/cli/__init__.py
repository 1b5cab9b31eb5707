"""The ``mtllm`` command line: ``mtllm COMMAND [--config FILE] [--key value ...]``.

Every command is defined here, in :data:`COMMANDS`: its settings dataclasses (imported when the
command runs, so ``mtllm --help`` stays fast) and what it does with them. A command reads a flat YAML
preset (``configs/``), any key overridden by a flag; ``mtllm COMMAND --help`` lists every key with its
type, default and meaning (:mod:`mtllm.settings`), and every value is checked (type, range, paths)
before any model loads. A preset may hold the keys of other stages in a shared layer: the models and
stage-1 keys at the top (``configs/pocket.yaml`` serves every stage), the later stages' keys in their
sections of a ``run`` config (``finetune:``, ...). Each command takes the keys it knows and leaves the
shared layer; a key that only another command uses is an error, as is any other unknown key (see
:func:`command_values`).

A mistake in what the user gave (:class:`mtllm.errors.UserError`) prints one line,
``mtllm COMMAND: error: MESSAGE``, and exits 2; any other exception keeps its traceback.
``python -m mtllm``, ``python -m mtllm.cli`` (for ``torchrun -m`` / ``accelerate launch -m``) and the
``mtllm`` console script are this :func:`main`.
"""
from __future__ import annotations

import difflib
import errno
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mtllm.errors import ConfigError, TrainingInterrupted, UserError
from mtllm.settings import (EXISTING_DIR, MODEL, NON_EMPTY, OUTPUT_DIR, TASK, Rule, at_least, build_settings,
                            ModelSettings, check_settings, config_arg, each, read_config, settings_parser,
                            string_keys)
from mtllm.sources.pocket import pocket_path

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
                             metadata={"help": "Pocket model names (see mtllm.sources.pocket.POCKET_MODELS).",
                                       "check": (NON_EMPTY, each(Rule("a pocket model name",
                                                                      lambda v, s: MODEL.problem(f"pocket:{v}", s))))})
    force: bool = field(default=False, metadata={"help": "Convert again even if the cache is valid."})

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class TranslateTestSettings:
    """Translate a task's texts to English with a seq2seq MT model (cached) and classify them."""

    teacher: str | None = field(default=None,
                                metadata={"help": "Fine-tuned English teacher (finetune's DIR/best).", "check": MODEL})
    task: str = field(default="sib200", metadata={"help": "Task name.", "check": TASK})
    langs: list[str] = field(default_factory=lambda: ["all"],
                             metadata={"help": "'all' or FLORES-200 codes.", "check": NON_EMPTY})
    split: str = field(default="test", metadata={"help": "Split to evaluate.", "check": NON_EMPTY})
    data_dir: str | None = field(default=None,
                                 metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub).",
                                           "check": EXISTING_DIR})
    output_dir: str = field(default="runs/translate-test", metadata={"help": "Where results go.", "check": OUTPUT_DIR})
    overwrite: bool = field(default=False, metadata={"help": "Write into an output_dir that holds results or files "
                                                             "mtllm did not write."})
    max_examples: int | None = field(default=None, metadata={"help": "At most this many examples per language: the "
                                                                     "same fixed-seed sample, stratified by label, as "
                                                                     "evaluate's max_examples.", "check": at_least(1)})

    def __post_init__(self) -> None:
        check_settings(self)


def _is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_summary(summary: Mapping[str, Any], keys: Sequence[str]) -> None:
    if _is_main_process():
        print(json.dumps({k: summary[k] for k in keys}))


# ------------------------------------------------------------------------------------------- commands
# (b) Each command imports its settings and runner inside these functions, so that `mtllm --help` and
# `mtllm COMMAND --help` load only the modules they need (mtllm/__init__ already loads torch and
# transformers); every function-level import in this module is tagged (b).
def _writing(output_dir: str):
    """Hold ``output_dir``'s lock while a command writes it: a second process is refused (:mod:`mtllm.locks`)."""
    from mtllm.locks import exclusive_output  # (b)

    return exclusive_output(output_dir, what="output_dir")


def _named(target: str) -> Any:
    """``"module:name"`` -> that object, imported now (b): the training commands name their settings and runner
    this way, so that declaring a command imports nothing."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _training_command(help: str, settings: tuple[str, ...], runner: str, shown: tuple[str, ...]) -> Command:
    """A training command: ``ModelSettings`` plus ``settings`` (``"module:Class"``, the output dir in the last),
    run by ``runner`` under the output folder's lock, then the summary's ``shown`` keys printed."""

    def settings_classes() -> tuple[type, ...]:
        return (ModelSettings, *(_named(name) for name in settings))

    def run(values: dict[str, Any]) -> None:
        built = build_settings(settings_classes(), values)
        with _writing(built[-1].output_dir):
            summary = _named(runner)(*built)
        _print_summary(summary, shown)

    return Command(help, settings_classes, run)


_TASK_SETTINGS, _TRAINING_ARGS = "mtllm.training.finetune:TaskSettings", "mtllm.training.loop:TrainingArgs"


def _evaluate_settings() -> tuple[type, ...]:
    from mtllm.evaluation.evaluate import EvaluateSettings  # (b)

    return (EvaluateSettings,)


def _evaluate(values: dict[str, Any]) -> None:
    from mtllm.evaluation.evaluate import run_evaluate  # (b)

    from mtllm.outputs import claim_output_dir  # (b)

    (settings,) = build_settings(_evaluate_settings(), values)
    with _writing(settings.output_dir):
        claim_output_dir(settings.output_dir, overwrite=settings.overwrite)
        run_evaluate(settings)


def _translate_test_settings() -> tuple[type, ...]:
    from mtllm.baselines.translate_test import TranslateSettings  # (b)

    return TranslateTestSettings, TranslateSettings


def _translate_test(values: dict[str, Any]) -> None:
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate  # (b)

    from mtllm.outputs import claim_output_dir  # (b)

    tt, tr = build_settings(_translate_test_settings(), values)
    with _writing(tt.output_dir):
        claim_output_dir(tt.output_dir, overwrite=tt.overwrite)
        run_evaluate(EvaluateSettings(teacher=tt.teacher, task=tt.task, langs=tt.langs, split=tt.split,
                                      data_dir=tt.data_dir, output_dir=tt.output_dir, max_examples=tt.max_examples,
                                      systems=["translate_test"], translate_model=tr.mt_model),
                     translate_settings=tr)


def _run_settings() -> tuple[type, ...]:
    from mtllm.cli.pipeline import PipelineSettings, STAGE1_SETTINGS  # (b)

    return (PipelineSettings, *STAGE1_SETTINGS)


def _run_sections() -> Mapping[str, tuple[type, ...]]:
    from mtllm.cli.pipeline import SECTION_SETTINGS  # (b)

    return SECTION_SETTINGS


def _run(values: dict[str, Any]) -> None:
    from mtllm.cli.pipeline import run_pipeline  # (b)

    run_pipeline(values)


def _predict_settings() -> tuple[type, ...]:
    from mtllm.inference.jobs import PredictFileSettings  # (b)

    return (PredictFileSettings,)


def _predict(values: dict[str, Any]) -> None:
    from mtllm.inference.jobs import predict_file  # (b)

    (settings,) = build_settings(_predict_settings(), values)
    print(json.dumps(predict_file(settings)))


def _encode_settings() -> tuple[type, ...]:
    from mtllm.inference.jobs import EncodeFileSettings  # (b)

    return (EncodeFileSettings,)


def _encode(values: dict[str, Any]) -> None:
    from mtllm.inference.jobs import encode_file  # (b)

    (settings,) = build_settings(_encode_settings(), values)
    print(json.dumps(encode_file(settings)))


def _convert(values: dict[str, Any]) -> None:
    (convert,) = build_settings((ConvertSettings,), values)
    for name in convert.names:
        print(f"{name}: {pocket_path(name, force=convert.force)}")


COMMANDS: dict[str, Command] = {
    "adapt": _training_command("stage 1: self-distil the MT-LLM on unlabelled English text",
                               ("mtllm.training.stage1:Stage1Settings", _TRAINING_ARGS),
                               "mtllm.training.stage1:run_stage1",
                               ("final_dir", "steps", "seconds", "n_texts")),
    "finetune": _training_command("stage 2a: fine-tune the LLM alone (fresh LoRA + head) on an English task",
                                  (_TASK_SETTINGS, _TRAINING_ARGS), "mtllm.training.finetune:run_finetune",
                                  ("best_dir", "best", "steps", "seconds")),
    "distill": _training_command("stage 2b: distil the fine-tuned teacher into the MT-LLM",
                                 (_TASK_SETTINGS, "mtllm.training.distill:DistillSettings", _TRAINING_ARGS),
                                 "mtllm.training.distill:run_distill",
                                 ("final_dir", "steps", "seconds", "trainable", "objective")),
    "encoder-ft": _training_command("the encoder-ft baseline: fine-tune the encoder + a head on an English task "
                                    "(embeddings frozen; evaluate it with --systems '[encoder-ft]' --encoder_ft "
                                    "DIR/best)",
                                    (_TASK_SETTINGS, "mtllm.training.encoder_ft:EncoderFTSettings", _TRAINING_ARGS),
                                    "mtllm.training.encoder_ft:run_encoder_ft",
                                    ("best_dir", "best", "steps", "seconds", "n_train", "n_val")),
    "evaluate": Command("zero-shot evaluation of mtllm/llm/encoder/encoder-ft/translate_test on many languages, or "
                        "retrieval", _evaluate_settings, _evaluate),
    "translate-test": Command("translate-test baseline: MT to English, then the English teacher",
                              _translate_test_settings, _translate_test),
    "run": Command("the whole pipeline (models, stage 1, teacher, distillation, encoder-ft when a system needs it, "
                   "evaluation), resumable",
                   _run_settings, _run, _run_sections),
    "predict": Command("label every row of a .txt/.csv/.tsv/.jsonl/.parquet file with a trained model (streamed, "
                       "resumable)", _predict_settings, _predict),
    "encode": Command("embed every row of a file into .npy or .parquet (streamed, resumable)", _encode_settings,
                      _encode),
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


#: The sections of a ``run`` config that hold a per-stage command's own settings.
_OWN_SECTIONS = {"finetune": ("finetune",), "distill": ("distill",), "encoder-ft": ("encoder_ft",),
                 "evaluate": ("evaluate", "retrieval")}


def command_values(name: str, argv: Sequence[str]) -> dict[str, Any]:
    """``[--config FILE] [--key value ...]`` (or ``--config=FILE``) -> the values of command ``name``: the
    preset's keys, then the overrides. ``run`` takes every key (a key none of its stages knows is an error
    there). Another command takes the keys it knows and, by design, leaves those of the shared layer, which
    every preset may hold:
    the flat keys of a ``run`` config (models, stage 1, ``task``, ``stages``...) and the sections of the
    other stages (``finetune:``, ``distill:``, ``evaluate:``, ``retrieval:``). A key that belongs to another
    command only (``mtllm adapt --objective ce``, or ``objective: ce`` at the top of a preset given to
    ``adapt``) or the command's own section of a ``run`` config (which ``mtllm run`` alone reads: it
    layers it differently) is a :class:`~mtllm.errors.ConfigError`; any other key is left to
    :func:`mtllm.settings.build_settings`, which names close matches."""
    cmd = COMMANDS[name]
    classes = [*cmd.settings(), *(cls for section in cmd.sections().values() for cls in section)]
    preset, overrides = read_config(argv, string_keys(classes))  # a path or a name keeps its text: 007 stays 007
    if name == "run":
        return {**preset, **overrides}
    own = _keys(cmd)
    shared = _keys(COMMANDS["run"])
    owners = {k: [other for other, cmd in COMMANDS.items() if other not in (name, "run") and k in _keys(cmd)]
              for k in {*preset, *overrides} if k not in own}
    config, _ = config_arg(argv)
    wrong = [k for k in overrides if owners.get(k)]
    if wrong:
        raise ConfigError(f"{name} does not use {_list(wrong, owners, '--')}; give "
                          f"{'them' if len(wrong) > 1 else 'it'} "
                          f"to the command that uses {'them' if len(wrong) > 1 else 'it'} (`mtllm {name} --help` lists "
                          f"{name}'s keys)")
    sections = [k for k in preset if k in _OWN_SECTIONS.get(name, ())]
    if sections:
        raise ConfigError(f"{config} is a `mtllm run` config: its {' and '.join(s + ':' for s in sections)} "
                          f"section{'s are' if len(sections) > 1 else ' is'} read by `mtllm run` only; run `mtllm run "
                          f"--config {config}`, or give `mtllm {name}` a flat preset (e.g. configs/pocket.yaml) and "
                          f"--key value flags")
    wrong = [k for k in preset if owners.get(k) and k not in shared]
    if wrong:
        raise ConfigError(f"{config}: {name} does not use {_list(wrong, owners, '')}; a config shared by several "
                          f"commands keeps the keys of later stages in their sections (e.g. distill: {{objective: "
                          f"ce}}, read by `mtllm run`): move {'them' if len(wrong) > 1 else 'it'} there, or give "
                          f"{'them' if len(wrong) > 1 else 'it'} to the command that uses "
                          f"{'them' if len(wrong) > 1 else 'it'}")
    return {**{k: v for k, v in preset.items() if k in own or k not in shared}, **overrides}


def _list(keys: Sequence[str], owners: Mapping[str, Sequence[str]], dashes: str) -> str:
    """``--objective (a key of distill), --langs (a key of evaluate and translate-test)``."""
    return ", ".join(f"{dashes}{k} (a key of {' and '.join(owners[k])})" for k in keys)


class _Console(logging.Handler):
    """mtllm's progress messages (INFO) as plain lines on the command's console stream, looked up when each one
    is written (so whatever stands for ``sys.stdout`` / ``sys.stderr`` at that moment gets it)."""

    def __init__(self, stream: str) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.addFilter(lambda record: record.levelno < logging.WARNING)  # warnings: the prefixed handler

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = getattr(sys, self.stream)
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:  # noqa: BLE001 (logging's own rule: a failed write never stops the command)
            self.handleError(record)


def _configure_logging(command: str) -> None:
    """The library logs (one logger per module, under ``mtllm``); the command line shows it: progress messages
    as plain lines on stdout, or on stderr for ``predict`` / ``encode``, whose stdout is their JSON result;
    warnings and errors of every library on stderr, prefixed with their level and logger. Idempotent."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("mtllm")
    logger.setLevel(logging.INFO)
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    logger.addHandler(_Console("stderr" if command in ("predict", "encode") else "stdout"))
    for handler in logging.getLogger().handlers:  # the root's: warnings and errors only (INFO is _Console's)
        handler.setLevel(max(handler.level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging(argv[0] if argv else "")
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
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        print(f"mtllm {name}: error: {_disk_full(name, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: one line, exit 130 (128 + SIGINT), no traceback
        if _is_main_process():
            print(f"mtllm {name}: {_interrupted(name, err)}", file=sys.stderr, flush=True)
        return 130
    return 0


#: The commands that train (a checkpoint to --resume from).
_TRAINING_COMMANDS = ("adapt", "finetune", "distill", "encoder-ft")
#: A write that failed for want of space: no space left, over quota, a file over the size limit.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _disk_full(name: str, err: OSError) -> str:
    """What a full disk left and how to go on, for command ``name`` (every output is written crash-safely:
    a file whole or not at all, predict/encode rows chunk by chunk, training from its last checkpoint)."""
    where = f" writing {err.filename}" if err.filename else ""
    if name in ("predict", "encode"):
        how = "rerun the same command: it continues with the next row"
    elif name in _TRAINING_COMMANDS:
        how = "rerun the same command with --resume: it continues from the last checkpoint"
    elif name == "run":
        how = "rerun the same command: finished stages are skipped, the interrupted one resumes"
    else:
        how = "rerun the same command (finished work is kept)"
    return f"no space left{where} ({err.strerror or err}); free some space, then {how}"


def _interrupted(name: str, err: KeyboardInterrupt) -> str:
    """What Ctrl-C left and how to go on, for command ``name``."""
    what = f"interrupted: {err}" if isinstance(err, TrainingInterrupted) else "interrupted (Ctrl-C)"
    if name == "run":
        return (f"{what}; to continue, rerun the same command (finished stages are skipped, an interrupted one "
                f"resumes from its last checkpoint)")
    if name in _TRAINING_COMMANDS:
        if isinstance(err, TrainingInterrupted):
            return f"{what}; to continue from it, rerun the same command with --resume"
        return f"{what}; to continue from the last checkpoint, if any, rerun the same command with --resume"
    if name in ("predict", "encode"):
        return (f"{what}; every finished chunk of rows is kept: rerun the same command to continue with the next row "
                f"(--overwrite starts again)")
    return f"{what}; every file is written whole or not at all, so rerunning the same command redoes it"
