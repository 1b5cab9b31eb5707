"""``mtllm run``: the whole method end to end, resumable stage by stage.

Stages, each in its own folder under ``output_dir``::

    models     pocket models converted (or hub/local models resolved)
    stage1/         self-distillation on English text        -> stage1/final, stage1/initial
    retrieval/      alignment probe before vs after stage 1  -> results.json/.md/.png
    teacher-TASK/   the LLM fine-tuned on the English task   -> teacher-TASK/best
    distill-TASK/   task distillation into the MT-LLM        -> distill-TASK/final
    encoder-ft-TASK/ the encoder + a head fine-tuned on the English task (only when a system needs it)
                                                             -> encoder-ft-TASK/best
    eval-TASK/      mtllm, llm, encoder (, encoder-ft, translate_test) on every language -> results.json/.md/.png

Runs of several tasks can share one ``output_dir``: stage 1 and the retrieval probe are then done
once and reused (same inputs, same hash).

Train on one source, evaluate on others: ``train_file`` gives the English training data of the teacher, the
distillation, encoder-ft and the encoder probe (a file in the columns of the task's kind, or ``data:PATH`` inside
the data directory, e.g. ``data:english-nli/train.tsv``; :func:`mtllm.tasks.check_train_file`), instead of the
task's own (for XNLI: MultiNLI from the hub), and ``max_train_examples`` cuts it to its first rows for all of them.
``eval_tasks`` lists the tasks the trained model is evaluated on, one stage and folder each (``eval-xnli``,
``eval-kardes-nlu``; default: the training task alone, the stage called ``eval`` as before, the others
``eval-NAME``); each must have the training task's kind and label names (:func:`mtllm.tasks.check_transfer`). A
training file's columns and labels, the evaluation tasks' labels and the languages each evaluation asks for are all
checked before the first stage starts. With several evaluation tasks, ``evaluate.langs`` other than ``[all]``
gives each task the listed languages it has (a language none of them has is an error).

The ``encoder-ft`` system (the encoder fine-tuned with a head, :mod:`mtllm.training.encoder_ft`) is trained by
the ``encoder-ft`` stage (its ``encoder_ft:`` section takes the teacher's keys), which runs before the first
evaluation whenever an evaluation's ``systems`` hold ``encoder-ft``, listed in ``stages`` or not. Settings added
after a run was made (``train_file``, ``max_train_examples``, ``eval_tasks``, the encoder-ft stage) enter the
stage hashes only when set or used, so earlier runs keep their hashes.

``task`` is a task name or the path of a task file (``task: my-task.yaml``, :mod:`mtllm.tasks.files`): its
stage folders are named by the task's ``name:`` (``teacher-my-sentiment``), its hashes cover the bytes of
every file it names (changing a file redoes the stages that read it), and the splits and languages the
stages use are checked before the first stage starts. The teacher and distillation stages print the bad
rows (kept with a blank segment, dropped without text: :mod:`mtllm.tasks.readers`) of their training data.

A run config is a flat preset (model and stage-1 keys, e.g. ``base: pocket.yaml``) plus one section
per later stage (``finetune:``, ``distill:``, ``evaluate:``, ``retrieval:``) holding that stage's
keys; ``--section.key value`` overrides one of them (``--finetune.num_epochs 2``). Every stage's
settings are built from the config, and so checked, before the first stage starts (:func:`plan_run`).
Every stage writes ``stage.json`` (a run record, :mod:`mtllm.records`) with a hash of its inputs (its settings as
written in the config and the hashes of the stages it reads) and those inputs by name; a finished stage with the same
hash is skipped, an unfinished one resumes from its last checkpoint, and a stage whose inputs changed is redone (with
everything downstream), naming what changed. A stage folder is only ever cleared of what mtllm wrote there
(:mod:`mtllm.outputs`): one that holds files mtllm did not write, or a run that ``mtllm run`` did not start (no
``stage.json``, or one that cannot be read), is refused before the first stage starts, unless ``--overwrite`` (which
still keeps the files mtllm did not write).
Ctrl-C stops the current stage at a checkpoint; rerunning the same command continues from there.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from mtllm._io import atomic_write_json
from mtllm.device import resolve_device
from mtllm.errors import ConfigError
from mtllm.fingerprints import changed_files, json_digest, recording_reads
from mtllm.locks import exclusive_output
from mtllm.outputs import claim_output_dir, clear_outputs, foreign_entries
from mtllm.records import RunRecord, differences
from mtllm.data.languages import suggest_languages, validate_lang
from mtllm.evaluation.evaluate import EvaluateSettings, evaluation_languages, run_evaluate
from mtllm.settings import (EXISTING_DIR, NON_EMPTY, OUTPUT_DIR, SEED, TASK, ModelSettings, at_least, build_settings,
                            check_keys, check_settings, each)
from mtllm.sources import resolve_source
from mtllm.tasks import (DATA_PREFIX, available_languages, check_train_file, check_transfer, get_task,
                         load_examples, load_training_data, resolve_data_dir, train_file_digest)
from mtllm.training.distill import DistillSettings, run_distill
from mtllm.training.encoder_ft import EncoderFTSettings, run_encoder_ft
from mtllm.training.finetune import TRAIN_FILE, TRAIN_FILE_HELP, TaskSettings, run_finetune
from mtllm.training.loop import TrainingArgs
from mtllm.training.stage1 import Stage1Settings, run_stage1

__all__ = ["PipelineSettings", "RunPlan", "plan_run", "run_pipeline", "STAGE1_SETTINGS", "SECTION_SETTINGS"]

StageName = Literal["stage1", "retrieval", "teacher", "distill", "encoder-ft", "eval"]

#: The flat keys of a run config besides :class:`PipelineSettings`: the models and stage 1.
STAGE1_SETTINGS: tuple[type, ...] = (ModelSettings, Stage1Settings, TrainingArgs)
#: The keys of each section of a run config.
SECTION_SETTINGS: dict[str, tuple[type, ...]] = {
    "finetune": (TaskSettings, TrainingArgs),
    "distill": (TaskSettings, DistillSettings, TrainingArgs),
    "encoder_ft": (TaskSettings, EncoderFTSettings, TrainingArgs),
    "evaluate": (EvaluateSettings,),
    "retrieval": (EvaluateSettings,),
}


@dataclass
class PipelineSettings:
    """Top-level keys of ``mtllm run`` (besides the model/stage-1 keys and the per-stage sections)."""

    task: str = field(default="sib200", metadata={"help": "Task to train the teacher on and evaluate: a name, or the "
                                                          "path of a task YAML (mtllm.tasks.files).", "check": TASK})
    output_dir: str = field(default="runs/pocket-sib200",
                            metadata={"help": "Root folder of the run.", "check": OUTPUT_DIR})
    data_dir: str | None = field(default=None,
                                 metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub).",
                                           "check": EXISTING_DIR})
    train_file: str | None = field(default=None, metadata={"help": TRAIN_FILE_HELP + " Used by the teacher, the "
                                                                                     "distillation, encoder-ft and the "
                                                                                     "encoder probe.",
                                                           "check": TRAIN_FILE})
    max_train_examples: int | None = field(default=None, metadata={
        "help": "Train the teacher, the distillation, encoder-ft and the encoder probe on at most this many training "
                "examples (the first rows; default: all). A section's own max_train_examples overrides it there.",
        "check": at_least(1)})
    eval_tasks: list[str] = field(default_factory=list, metadata={
        "help": "Tasks to evaluate the trained model on, one stage and folder each (eval-NAME); each needs the "
                "training task's kind and label names. Default: the training task alone.", "check": each(TASK)})
    stages: list[StageName] = field(default_factory=lambda: ["stage1", "retrieval", "teacher", "distill", "eval"],
                                    metadata={"help": "Stages to run, in order ('eval': every evaluation task; "
                                                      "'encoder-ft' runs before the first evaluation when a system "
                                                      "needs it, listed or not).", "check": NON_EMPTY})
    notes: list[str] = field(default_factory=list, metadata={"help": "Notes for the results tables."})
    seed: int = field(default=0, metadata={"help": "Seed for every stage.", "check": SEED})

    def __post_init__(self) -> None:
        check_settings(self)  # an unknown task fails now, not after stage 1


def _split_sections(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any] | None]]:
    """The flat keys, and each section's keys (``retrieval: null`` -> ``None``: skip the probe)."""
    flat: dict[str, Any] = {}
    sections: dict[str, dict[str, Any] | None] = {s: {} for s in SECTION_SETTINGS}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if dot and head in sections:
            sections[head] = {**(sections[head] or {}), rest: value}
        elif key in sections:
            if value in (None, False) and key == "retrieval":
                sections[key] = None
            elif not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a mapping of that stage's keys, not {value!r}"
                                  + (" (only retrieval can be null: skipped)" if value in (None, False) else ""))
            else:
                sections[key] = {**(sections[key] or {}), **value}
        else:
            flat[key] = value
    return flat, sections


def _hash(*parts: Any) -> str:
    return json_digest(parts, length=16)


#: Keys that change how a stage runs or logs, not what it computes: left out of stage hashes, so that
#: e.g. ``--save_steps`` or ``--micro_batch_size`` (gradient accumulation) never redo finished work.
BOOKKEEPING_KEYS = frozenset({"output_dir", "resume", "overwrite", "log_steps", "save_steps", "keep_checkpoints",
                              "progress",
                              "report_to", "micro_batch_size", "eval_batch_size", "batch_size_eval"})


def _args_key(values: Any) -> dict[str, Any]:
    """``values`` (a settings dataclass or a section dict) without :data:`BOOKKEEPING_KEYS`."""
    d = asdict(values) if not isinstance(values, dict) else dict(values)
    _drop_defaults(d, (("max_minutes", None), ("lr_scheduler_type", "linear")))
    return {k: v for k, v in d.items() if k not in BOOKKEEPING_KEYS}


def _drop_defaults(key: dict[str, Any], added_later: Sequence[tuple[str, Any]]) -> None:
    """Remove from a stage-hash ``key`` the settings added after runs existed that are at their default: they
    count only when set, so earlier runs keep their hash."""
    for name, default in added_later:
        if key.get(name) == default:
            key.pop(name, None)


def _stage1_key(stage1_s: Any) -> dict[str, Any]:
    """Stage-1 settings for the stage hash; ``cache_encoder_outputs`` only counts when on, so runs
    started before that setting existed keep their hash (and are not redone)."""
    key = asdict(stage1_s)
    if not key.get("cache_encoder_outputs"):
        key.pop("cache_encoder_outputs", None)
    if key.get("stage1_objective") == "sequence":  # the paper's: runs from before the span objective keep their hash
        key.pop("stage1_objective", None)
        key.pop("span_weight", None)
    _drop_defaults(key, (("student_layers", None), ("eval_data", []), ("eval_steps", 0), ("max_eval_texts", 256),
                         ("eval_patience", None), ("full_depth_steps", 0)))
    return key


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class RunPlan:
    """Every stage's settings, built from the run config before any stage runs.

    ``model``, ``stage1`` and ``stage1_args`` are as configured (their hash is the stage-1 hash); the
    stage-1 run adds the output folder, ``save_initial`` and the data folder. The sections' settings
    hold their output folders and the paths of the stages they read; only ``resume`` is set when a
    stage starts. ``sections`` keeps each section's keys as written, which the stage hashes cover.
    ``evals`` holds one evaluation per evaluation task, by stage name (``eval`` for the training task,
    ``eval-NAME`` for another), ``eval_names`` the task each evaluates (its folder name)."""

    pipe: PipelineSettings
    root: Path
    data_dir: str | None
    stages: tuple[str, ...]
    dirs: dict[str, Path]
    model: ModelSettings
    stage1: Stage1Settings
    stage1_args: TrainingArgs
    teacher: tuple[TaskSettings, TrainingArgs]
    distill: tuple[TaskSettings, DistillSettings, TrainingArgs]
    evals: dict[str, EvaluateSettings]
    retrieval: EvaluateSettings | None
    sections: dict[str, dict[str, Any] | None]
    task_name: str = ""               # the task's name (a task file's name:), for folders and headers
    task_files: str | None = None     # a task file's FileTask.files_digest(); None for a registered task
    encoder_ft: tuple[TaskSettings, EncoderFTSettings, TrainingArgs] | None = None
    eval_names: dict[str, str] = field(default_factory=dict)   # eval stage -> the task's folder name
    eval_files: dict[str, str | None] = field(default_factory=dict)  # eval stage -> its task file's digest
    train_data: dict[str, Any] = field(default_factory=dict)   # train_file's bytes, max_train_examples: when set

    @property
    def evaluate(self) -> EvaluateSettings:
        """The first evaluation's settings (the training task's, by default the only one)."""
        return next(iter(self.evals.values()))


def _resolve_data_dir(data_dir: str | None) -> str | None:
    """The run's data folder, absolute (else ``$MTLLM_DATA_DIR``, else None = the hub); a missing folder
    is a :class:`mtllm.errors.DataError` now."""
    resolved = resolve_data_dir(str(Path(data_dir).expanduser().resolve()) if data_dir else None)
    return str(resolved) if resolved else None


def _section_settings(sections: dict[str, dict[str, Any] | None], name: str, defaults: dict[str, Any],
                      out: Path) -> list[Any]:
    """A section's settings: ``defaults`` (what the run gives the stage: task, data, the folders it reads),
    then the section's keys, then the stage's own folder ``out``. Their inputs are not looked for now: the
    earlier stages write them."""
    return build_settings(SECTION_SETTINGS[name], {**defaults, **(sections[name] or {}), "output_dir": str(out)},
                          where=f"{name}: ", inputs=False)


def _eval_langs(evals: dict[str, EvaluateSettings], names: dict[str, str], data_dir: str | None) -> None:
    """With several evaluation tasks and explicit ``evaluate.langs``: each evaluation keeps the listed languages its
    task has here (in place); a language none has, or a task left with none, is a :class:`ConfigError`."""
    first = next(iter(evals.values()))
    if len(evals) < 2 or list(first.langs) in (["all"], []):
        return
    codes = [validate_lang(c) for c in first.langs]
    have = {key: set(available_languages(ev.task, data_dir)) for key, ev in evals.items()}
    for code in codes:
        if not any(code in langs for langs in have.values()):
            every = sorted(set().union(*have.values()))
            close = suggest_languages(code, every)
            raise ConfigError(f"evaluate: langs: none of the evaluation tasks ({', '.join(names.values())}) has "
                              f"{code!r} data here" + (f"; closest: {', '.join(close)}" if close else ""))
    for key, ev in evals.items():
        mine = [c for c in codes if c in have[key]]
        if not mine:
            raise ConfigError(f"evaluate: langs: {names[key]} has none of {', '.join(codes)} here (it has "
                              f"{', '.join(sorted(have[key])[:10])}); add one of its languages, or leave it out of "
                              f"eval_tasks")
        evals[key] = replace(ev, langs=mine)


def plan_run(values: dict[str, Any]) -> RunPlan:
    """Build (and so check) every stage's settings from a run config's ``values``; writes nothing."""
    flat, sections = _split_sections(values)
    top_keys = {f.name for f in fields(PipelineSettings)}
    check_keys(flat, (PipelineSettings, *STAGE1_SETTINGS), extra=tuple(SECTION_SETTINGS))
    (pipe,) = build_settings((PipelineSettings,), {k: v for k, v in flat.items() if k in top_keys})
    model, stage1, stage1_args = build_settings(
        STAGE1_SETTINGS, {k: v for k, v in flat.items() if k not in top_keys or k == "seed"})
    data_dir = _resolve_data_dir(pipe.data_dir)
    root = Path(pipe.output_dir)
    spec = _task_spec(pipe.task)
    task_name = spec.name if spec.reads_own_files else pipe.task
    # the evaluation tasks: the training task's evaluation is the stage "eval", another task's "eval-NAME"
    eval_names: dict[str, str] = {}
    eval_specs: dict[str, Any] = {}
    eval_given: dict[str, str] = {}  # as written: a name, or a task file's path
    for task in pipe.eval_tasks or [pipe.task]:
        other = get_task(task)
        check_transfer(spec, other, what="eval_tasks: ")  # kind and label names, before any model loads
        key = "eval" if other.name == spec.name else f"eval-{other.name}"
        name = task_name if key == "eval" else other.name
        eval_names.setdefault(key, name)
        eval_specs.setdefault(key, other)
        eval_given.setdefault(key, pipe.task if key == "eval" else str(task))
    dirs = {"stage1": root / "stage1", "retrieval": root / "retrieval", "teacher": root / f"teacher-{task_name}",
            "distill": root / f"distill-{task_name}", "encoder-ft": root / f"encoder-ft-{task_name}",
            **{key: root / f"eval-{name}" for key, name in eval_names.items()}}
    train_data: dict[str, Any] = {}
    if pipe.train_file is not None:  # its bytes; a data: file without a data directory: run_pipeline refuses it
        if _train_file_reachable(pipe.train_file, data_dir):
            check_train_file(spec, pipe.train_file, data_dir)  # (again: data_dir resolved now)
            train_data["train_file"] = train_file_digest(pipe.train_file, data_dir)
        else:
            train_data["train_file"] = pipe.train_file
    if pipe.max_train_examples is not None:
        train_data["max_train_examples"] = pipe.max_train_examples
    trains = {k: getattr(pipe, k) for k in ("train_file", "max_train_examples") if getattr(pipe, k) is not None}
    common = {"task": pipe.task, "data_dir": data_dir, **trains}
    ev_common = {"data_dir": data_dir, "notes": pipe.notes}
    teacher = _section_settings(sections, "finetune", {**common, "seed": pipe.seed}, dirs["teacher"])
    distill = _section_settings(sections, "distill", {
        **common, "seed": pipe.seed, "stage1_model": str(dirs["stage1"] / "final"),
        "teacher_model": str(dirs["teacher"] / "best")}, dirs["distill"])
    encoder_ft = _section_settings(sections, "encoder_ft", {**common, "seed": pipe.seed}, dirs["encoder-ft"])
    evals: dict[str, EvaluateSettings] = {}
    for key in eval_specs:
        defaults = {"task": eval_given[key], "model": str(dirs["distill"] / "final"),
                    "teacher": str(dirs["teacher"] / "best"), **ev_common, **trains,
                    **({} if key == "eval" else {"train_task": pipe.task})}
        (evaluate,) = _section_settings(sections, "evaluate", defaults, dirs[key])
        if "encoder-ft" in evaluate.systems and evaluate.encoder_ft is None:
            evaluate = replace(evaluate, encoder_ft=str(dirs["encoder-ft"] / "best"))
        evals[key] = evaluate
    _eval_langs(evals, eval_names, data_dir)
    for key, evaluate in evals.items():  # every language each evaluation names exists here, before any stage
        if list(evaluate.langs) not in (["all"], []) or eval_specs[key].reads_own_files:
            evaluation_languages(eval_specs[key], evaluate.langs, data_dir)
    retrieval = None
    if sections["retrieval"] is not None:
        (retrieval,) = _section_settings(sections, "retrieval", {
            "task": "retrieval", "model": str(dirs["stage1"] / "final"), "systems": ["mtllm", "llm", "encoder"],
            "compare": [f"mtllm_before_stage1={dirs['stage1'] / 'initial'}"], **ev_common}, dirs["retrieval"])
    stages = _expand_stages(pipe.stages, evals, retrieval is not None)
    task_files = None
    if spec.reads_own_files:  # a task file: the splits the stages use exist, before any stage
        for split in (teacher[0].train_split, teacher[0].eval_split, distill[0].train_split, distill[0].eval_split,
                      encoder_ft[0].train_split, encoder_ft[0].eval_split):
            spec.check_split(split)
        task_files = spec.files_digest()
    for key, evaluate in evals.items():
        if eval_specs[key].reads_own_files:
            eval_specs[key].check_split(evaluate.split)
    eval_files = {key: other.files_digest() if other.reads_own_files else None for key, other in eval_specs.items()}
    return RunPlan(pipe, root, data_dir, stages, dirs, model, stage1, stage1_args, tuple(teacher), tuple(distill),
                   evals, retrieval, sections, task_name, task_files, tuple(encoder_ft), eval_names, eval_files,
                   train_data)


def _train_file_reachable(ref: str, data_dir: str | None) -> bool:
    return not str(ref).startswith(DATA_PREFIX) or data_dir is not None


def _expand_stages(listed: list[str], evals: dict[str, EvaluateSettings], retrieval: bool) -> tuple[str, ...]:
    """The stages to run, in order: ``eval`` becomes one stage per evaluation task; ``encoder-ft`` comes before the
    first evaluation when one of them has the encoder-ft system (listed or not); ``retrieval`` only when
    configured."""
    needs_ft = any("encoder-ft" in ev.systems for ev in evals.values())
    if "encoder-ft" in listed and "eval" in listed and listed.index("encoder-ft") > listed.index("eval"):
        raise ConfigError(f"stages: {listed}: encoder-ft must come before eval (the evaluation reads its model)")
    out: list[str] = []
    for name in dict.fromkeys(listed):
        if name == "retrieval" and not retrieval:
            continue
        if name == "eval":
            if needs_ft and "encoder-ft" not in out:
                out.append("encoder-ft")
            out.extend(evals)
        else:
            out.append(name)
    return tuple(out)


def _task_spec(task: str):
    return get_task(task)  # already checked by PipelineSettings (a task file is read once, then cached)


def _kind(name: str) -> str:
    """A stage's kind: ``eval`` for every evaluation (``eval``, ``eval-NAME``), else its name."""
    return "eval" if name == "eval" or name.startswith("eval-") else name


def _reads(plan: RunPlan, name: str) -> tuple[str, ...]:
    """The stages whose outputs stage ``name`` reads (:data:`UPSTREAM`; an evaluation with the encoder-ft system
    also reads encoder-ft's)."""
    kind = _kind(name)
    extra = ("encoder-ft",) if kind == "eval" and "encoder-ft" in plan.evals[name].systems else ()
    return UPSTREAM.get(kind, ()) + extra


def _stage_input_parts(plan: RunPlan, name: str, hashes: dict[str, str]) -> dict[str, Any]:
    """What stage ``name``'s hash covers, each part by name: its settings (sections as written) and the hashes of
    the stages it reads, when they ran earlier in this run. Settings added later (train_file, max_train_examples,
    another evaluation task, the encoder-ft system) count only when set, so earlier runs keep their hashes. The hash
    is over the values, in this order (:func:`_stage_inputs`); the names let a stage record say what changed."""
    s, data_dir, pipe = plan.sections, plan.data_dir, plan.pipe
    # a task file: its name and the hash of its files' bytes, not its path (moving it redoes nothing); a
    # registered task's hash stays what it always was
    files = {"task_files": plan.task_files} if plan.task_files is not None else {}
    task = plan.task_name if plan.task_files is not None else pipe.task
    train = {"train_data": plan.train_data} if plan.train_data else {}  # the training file's bytes, not its place
    if _kind(name) == "eval":
        evaluate = plan.evals[name]
        if name == "eval":
            what = {"task": task, **files}
        else:  # another task: its name (a task file: and its files' bytes)
            digest = plan.eval_files.get(name)
            what = {"task": plan.eval_names[name], **({"task_files": digest} if digest is not None else {})}
        ft = {"encoder-ft": hashes.get("encoder-ft")} if "encoder-ft" in evaluate.systems else {}
        return {"distill": hashes.get("distill"), "teacher": hashes.get("teacher"),
                "evaluate": _args_key(s["evaluate"]), "data_dir": data_dir, **what, **train, **ft}
    if name == "encoder-ft":  # the encoder and how its text is cut: not the LLM, which it never runs
        encoder = {k: v for k, v in asdict(plan.model).items() if k in ("encoder", "dtype", "max_seq_length")}
        return {"encoder": encoder, "task": task, "encoder_ft": _args_key(s["encoder_ft"] or {}), "data_dir": data_dir,
                "seed": pipe.seed, **files, **train}
    return {
        "stage1": {"model": asdict(plan.model), "stage1": _stage1_key(plan.stage1),
                   "training": _args_key(plan.stage1_args)},
        "retrieval": {"stage1": hashes.get("stage1"), "retrieval": _args_key(s["retrieval"] or {}),
                      "data_dir": data_dir},
        "teacher": {"model": asdict(plan.model), "task": task, "finetune": _args_key(s["finetune"]),
                    "data_dir": data_dir, "seed": pipe.seed, **files, **train},
        "distill": {"stage1": hashes.get("stage1"), "teacher": hashes.get("teacher"),
                    "distill": _args_key(s["distill"]), "data_dir": data_dir, "seed": pipe.seed, **files, **train},
    }[name]


def _stage_inputs(plan: RunPlan, name: str, hashes: dict[str, str]) -> list[Any]:
    """What stage ``name``'s hash covers (:func:`_stage_input_parts`'s values, in order)."""
    return list(_stage_input_parts(plan, name, hashes).values())


# ---------------------------------------------------------------------------------------- the stages
StageResult = tuple[dict[str, str], Any]  # (artefact paths, summary)
#: The stages whose outputs each kind of stage reads (when they are in the same run); an evaluation with the
#: encoder-ft system reads encoder-ft's too (:func:`_reads`).
UPSTREAM: dict[str, tuple[str, ...]] = {"retrieval": ("stage1",), "distill": ("stage1", "teacher"),
                                        "eval": ("distill", "teacher")}


def _results_artefacts(out: Path) -> dict[str, str]:
    return {"results": str(out / "results.json"), "table": str(out / "results.md"), "plot": str(out / "results.png")}


def _run_stage1(plan: RunPlan, resume: bool) -> StageResult:
    out = plan.dirs["stage1"]
    summary = run_stage1(plan.model, replace(plan.stage1, save_initial=True, data_dir=plan.data_dir),
                         replace(plan.stage1_args, output_dir=str(out), resume=resume, overwrite=True))
    return {"final": str(out / "final"), "initial": str(out / "initial"),
            "metrics": str(out / "metrics.jsonl")}, summary


def _run_retrieval(plan: RunPlan, resume: bool) -> StageResult:
    return _results_artefacts(plan.dirs["retrieval"]), run_evaluate(plan.retrieval).averages()


def _print_bad_rows(stage: str, task: TaskSettings) -> None:
    """Print the bad rows (kept with a blank segment, dropped without text) of ``task``'s training and
    validation data, as the stage will load them; nothing when there are none."""
    spec = get_task(task.task)
    for split in dict.fromkeys([task.train_split, task.eval_split]):
        if split == "train":
            examples = load_training_data(spec, train_file=task.train_file, lang=task.train_lang,
                                          data_dir=task.data_dir, limit=task.max_train_examples)
        else:
            examples = load_examples(spec, task.train_lang, split, data_dir=task.data_dir)
        report = examples.report
        if report.any:
            print(f"[run] {stage}: {report.task} {report.lang} {report.split} data: {report.summary()}", flush=True)


def _run_teacher(plan: RunPlan, resume: bool) -> StageResult:
    task, args = plan.teacher
    _print_bad_rows("teacher", task)
    summary = run_finetune(plan.model, task, replace(args, resume=resume, overwrite=True))
    return {"best": summary["best_dir"], "metrics": str(plan.dirs["teacher"] / "metrics.jsonl")}, summary["best"]


def _run_distill(plan: RunPlan, resume: bool) -> StageResult:
    task, distill, args = plan.distill
    _print_bad_rows("distill", task)
    summary = run_distill(plan.model, task, distill, replace(args, resume=resume, overwrite=True))
    return ({"final": summary["final_dir"], "metrics": str(plan.dirs["distill"] / "metrics.jsonl")},
            {k: summary[k] for k in ("evals", "steps", "seconds", "trainable")})


def _run_encoder_ft(plan: RunPlan, resume: bool) -> StageResult:
    task, ft, args = plan.encoder_ft
    _print_bad_rows("encoder-ft", task)
    summary = run_encoder_ft(plan.model, task, ft, replace(args, resume=resume, overwrite=True))
    return ({"best": summary["best_dir"], "metrics": str(plan.dirs["encoder-ft"] / "metrics.jsonl")},
            {**summary["best"], "seconds": summary["seconds"], "n_train": summary["n_train"]})


def _run_eval(plan: RunPlan, resume: bool, name: str = "eval") -> StageResult:
    return _results_artefacts(plan.dirs[name]), run_evaluate(plan.evals[name]).averages()


#: stage kind -> (what it does, for its header; how it runs)
STAGES: dict[str, tuple[str, Callable[[RunPlan, bool], StageResult]]] = {
    "stage1": ("self-distillation on English text", _run_stage1),
    "retrieval": ("English<->X retrieval before vs after stage 1", _run_retrieval),
    "teacher": ("fine-tune the LLM alone on English {task}", _run_teacher),
    "distill": ("distil the teacher into the MT-LLM (English data only)", _run_distill),
    "encoder-ft": ("fine-tune the encoder + a head on English {task} (the encoder-ft baseline)", _run_encoder_ft),
    "eval": ("zero-shot {task} on every language", _run_eval),
}


class _Stage:
    """Bookkeeping of one stage folder: skip when done with the same inputs, resume when interrupted with
    them, else (re)run; the stage functions get ``overwrite=True``, since :meth:`check` has claimed the folder.

    Its record is ``stage.json`` (:mod:`mtllm.records`), its identity the inputs hash; it also keeps the inputs
    themselves (``inputs``, by name: :func:`_stage_input_parts`), so a redone stage says what changed."""

    def __init__(self, folder: Path, name: str, inputs_hash: str, overwrite: bool = False,
                 upstream: tuple["_Stage", ...] = (), inputs: dict[str, Any] | None = None):
        self.dir, self.name, self.hash, self.overwrite = folder, name, inputs_hash, overwrite
        self.marker = self.dir / "stage.json"
        self.record = RunRecord(self.marker, finished=("status", "done"))
        self.upstream = upstream  # the stages of this run whose outputs it reads
        self.inputs = inputs  # what the hash covers, by name (None: not kept)
        self.why = ""  # why check() said redo
        self.changes: list[str] = []  # what changed, when the earlier record kept its inputs
        self.damaged: str | None = None  # why its stage.json cannot be read

    def _upstream_records(self) -> dict[str, str]:
        """The digest of what each upstream stage's outputs were computed from, as its record says now: its inputs
        hash, the data it read and its own upstream record (a stage redone on changed data has another)."""
        return {u.name: json_digest({k: (u._info() or {}).get(k) for k in ("hash", "data", "upstream")})
                for u in self.upstream}

    def stale(self, info: dict[str, Any]) -> str | None:
        """Why a finished stage with the same inputs hash must still be redone: a data file it read changed
        (its ``data`` record: :func:`mtllm.fingerprints.recording_reads`), or a stage it reads was redone since.
        Records from before these were kept have neither, and stand."""
        changed = changed_files(info.get("data") or {})
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            return f"a data file it read changed since ({changed[0]}{more})"
        recorded = info.get("upstream")
        if isinstance(recorded, dict):
            now = self._upstream_records()
            redone = [name for name in recorded if recorded[name] != now.get(name)]
            if redone:
                return f"{', '.join(redone)} was redone since"
        return None

    def _info(self) -> dict[str, Any] | None:
        """The folder's ``stage.json``: None when there is none or it cannot be read."""
        return self.record.read()

    def done(self) -> dict[str, Any] | None:
        found = self.record.compare({"hash": self.hash})
        return found.record if found.action == "complete" and self.stale(found.record) is None else None

    def check(self) -> str:
        """What :meth:`run` will do: ``skip`` (done with the same inputs), ``resume`` (interrupted with them),
        ``redo`` (an earlier ``mtllm run`` with other inputs) or ``fresh``. Raises :class:`ConfigError`, naming
        the files and ``--overwrite``, when the folder holds files mtllm did not write (``redo``) or anything
        ``mtllm run`` did not start there (``fresh``, also when its stage.json cannot be read:
        :func:`mtllm.outputs.claim_output_dir`)."""
        found = self.record.compare({"hash": self.hash})
        if found.action == "continue":
            return "resume"
        if found.action == "complete":
            self.why = self.stale(found.record) or ""
            if not self.why:
                return "skip"
        elif found.action == "changed":
            self.why = "inputs changed since the last run"
            kept = found.record.get("inputs")
            self.changes = differences(kept, self.inputs) if isinstance(kept, dict) and self.inputs else []
        if found.action != "fresh":
            foreign = foreign_entries(self.dir)
            if foreign and not self.overwrite:
                raise ConfigError(
                    f"{self.name}: its inputs changed, so {self.dir} is to be redone, but it holds files mtllm did not "
                    f"write ({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}): move them away, or pass "
                    f"--overwrite to redo it anyway (those files are kept)")
            return "redo"
        self.damaged = found.damaged
        why = (f"its stage.json cannot be read: {found.damaged}" if found.damaged else
               "it has no stage.json: not a stage of `mtllm run`")
        try:
            claim_output_dir(self.dir, overwrite=self.overwrite)
        except ConfigError as err:
            raise ConfigError(f"{self.name}: {err} ({why})") from None
        return "fresh"

    def begin(self, action: str) -> bool:
        """Prepare the folder for ``action`` (:meth:`check`); returns whether the stage resumes."""
        if action == "resume":
            return True
        removed = clear_outputs(self.dir, keep=frozenset())  # only what mtllm wrote; other files stay
        kept = foreign_entries(self.dir)
        if action == "redo":
            print(f"[run] {self.name}: {self.why or 'inputs changed since the last run'}; redoing it", flush=True)
            for change in self.changes:
                print(f"[run]   {change}", flush=True)
        elif removed:
            whose = f"whose stage.json cannot be read ({self.damaged})" if self.damaged else "without a stage.json"
            print(f"[run] {self.name}: removed {', '.join(removed)} from {self.dir}, left by a run {whose}", flush=True)
        if kept:
            print(f"[run] {self.name}: --overwrite: keeping the files mtllm did not write: {', '.join(kept)}",
                  flush=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.record.write({"hash": self.hash}, status="running", inputs=self.inputs)
        return False

    def finish(self, artefacts: dict[str, Any], seconds: float, summary: Any = None,
               data: dict[str, str] | None = None) -> dict[str, Any]:
        info = {"status": "done", "artefacts": artefacts, "seconds": round(seconds, 1), "summary": summary,
                "data": data or {}, "upstream": self._upstream_records(), "inputs": self.inputs}
        self.record.write({"hash": self.hash}, **info)
        return {"hash": self.hash, **info}

    def run(self, body: Callable[[RunPlan, bool], StageResult], plan: RunPlan) -> dict[str, Any]:
        """Skip when done, else run ``body(plan, resume)`` and record what it wrote."""
        info = self.done()
        if info is not None:
            print(f"[run] {self.name}: already done with the same inputs ({self.marker}); skipping", flush=True)
            _print_artefacts(info["artefacts"])
            return info
        resume = self.begin(self.check())
        if resume:
            print(f"[run] {self.name}: resuming the interrupted run in {self.dir}", flush=True)
        t0 = time.perf_counter()
        with recording_reads() as reads:  # the data files it reads: a later change redoes it
            artefacts, summary = body(plan, resume)
        info = self.finish(artefacts, time.perf_counter() - t0, summary, reads)
        _print_artefacts(artefacts)
        print(f"[run] {self.name} done in {info['seconds']:.0f} s", flush=True)
        return info


def _print_artefacts(artefacts: dict[str, Any]) -> None:
    for k, v in artefacts.items():
        print(f"[run]   {k}: {v}", flush=True)


def _header(i: int, n: int, name: str, what: str) -> None:
    print(f"\n=== [{i}/{n}] {name}: {what} ===", flush=True)


def _resolve_models(plan: RunPlan) -> None:
    _header(0, len(plan.stages), "models", "resolve and convert the models (once, cached)")
    for src in (plan.model.encoder, plan.model.llm):
        print(f"[run] {src} -> {resolve_source(src)}", flush=True)
    print(f"[run] device: {resolve_device()} (set MTLLM_DEVICE to choose)", flush=True)


def _print_summary(plan: RunPlan, results: dict[str, Any], seconds: float) -> None:
    print(f"\n[run] finished in {seconds:.0f} s; outputs in {plan.root}", flush=True)
    for name in [n for n in results if n == "retrieval" or _kind(n) == "eval"]:
        if results[name].get("summary"):
            print(f"[run] {name} averages: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name]["summary"].items()),
                  flush=True)


def run_pipeline(values: dict[str, Any]) -> dict[str, Any]:
    """Run the stages of a run config (``values``: its keys, ``section.key`` overrides included) in order;
    every setting is checked before the first stage starts. Returns each stage's ``stage.json`` record."""
    plan = plan_run(values)
    if plan.pipe.train_file is not None and not _train_file_reachable(plan.pipe.train_file, plan.data_dir):
        raise ConfigError(f"train_file {plan.pipe.train_file}: a data: reference is a path inside the data directory; "
                          f"pass --data-dir DIR (or set $MTLLM_DATA_DIR), or give the file's path instead")
    stages: dict[str, _Stage] = {}
    hashes: dict[str, str] = {}
    for name in plan.stages:  # in the order given: a stage's hash covers the hashes of those before it
        upstream = tuple(stages[u] for u in _reads(plan, name) if u in stages)
        inputs = _stage_input_parts(plan, name, hashes)
        stages[name] = _Stage(plan.dirs[name], name, _hash(list(inputs.values())), plan.stage1_args.overwrite,
                              upstream, inputs)
        hashes[name] = stages[name].hash
    with contextlib.ExitStack() as held:
        # one writer per stage folder (mtllm.locks): the folders this run writes (a stage not done, or one whose
        # upstream stage is to run) are locked for the whole run, before they are checked; a finished stage it
        # only reads is not, so two runs can share it
        to_run: set[str] = set()
        for name, stage in stages.items():
            if stage.done() is None or any(u.name in to_run for u in stage.upstream):
                to_run.add(name)
                held.enter_context(exclusive_output(stage.dir, what=f"the {stage.name} stage folder"))
        for stage in stages.values():  # every folder is checked before the first stage starts
            stage.check()
        plan.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan.root / "run_config.json", values, indent=1, default=str)
        t_run = time.perf_counter()
        _resolve_models(plan)
        results: dict[str, Any] = {}
        for i, (name, stage) in enumerate(stages.items(), 1):
            what, body = STAGES[_kind(name)]
            if _kind(name) == "eval":
                body = functools.partial(_run_eval, name=name)
            task = plan.eval_names.get(name) or plan.task_name or plan.pipe.task
            _header(i, len(plan.stages), name, what.format(task=task))
            results[name] = stage.run(body, plan)
        total = time.perf_counter() - t_run
    _print_summary(plan, results, total)
    atomic_write_json(plan.root / "run_summary.json", {"seconds": round(total, 1), "stages": results}, indent=1,
                      default=str)
    return results
