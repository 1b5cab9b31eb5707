"""``mtllm run``: the whole method end to end, resumable stage by stage.

Stages, each in its own folder under ``output_dir``::

    models     pocket models converted (or hub/local models resolved)
    stage1/         self-distillation on English text        -> stage1/final, stage1/initial
    retrieval/      alignment probe before vs after stage 1  -> results.json/.md/.png
    teacher-TASK/   the LLM fine-tuned on the English task   -> teacher-TASK/best
    distill-TASK/   task distillation into the MT-LLM        -> distill-TASK/final
    eval-TASK/      mtllm, llm, encoder (, translate_test) on every language -> results.json/.md/.png

Runs of several tasks can share one ``output_dir``: stage 1 and the retrieval probe are then done
once and reused (same inputs, same hash).

``task`` is a task name or the path of a task file (``task: my-task.yaml``, :mod:`mtllm.tasks.files`): its
stage folders are named by the task's ``name:`` (``teacher-my-sentiment``), its hashes cover the bytes of
every file it names (changing a file redoes the stages that read it), and the splits and languages the
stages use are checked before the first stage starts. The teacher and distillation stages print the bad
rows (kept with a blank segment, dropped without text: :mod:`mtllm.tasks.base`) of their training data.

A run config is a flat preset (model and stage-1 keys, e.g. ``base: pocket.yaml``) plus one section
per later stage (``finetune:``, ``distill:``, ``evaluate:``, ``retrieval:``) holding that stage's
keys; ``--section.key value`` overrides one of them (``--finetune.num_epochs 2``). Every stage's
settings are built from the config, and so checked, before the first stage starts (:func:`plan_run`).
Every stage writes ``stage.json`` with a hash of its inputs (its settings as written in the config and
the hashes of the stages it reads); a finished stage with the same hash is skipped, an unfinished one
resumes from its last checkpoint, and a stage whose inputs changed is redone (with everything
downstream). A stage folder is only ever cleared of what mtllm wrote there (:mod:`mtllm.outputs`): one that
holds files mtllm did not write, or a run that ``mtllm run`` did not start (no ``stage.json``), is refused
before the first stage starts, unless ``--overwrite`` (which still keeps the files mtllm did not write).
Ctrl-C stops the current stage at a checkpoint; rerunning the same command continues from there.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal

from mtllm._io import atomic_write_json
from mtllm.device import resolve_device
from mtllm.errors import ConfigError
from mtllm.fingerprints import changed_files, json_digest, recording_reads
from mtllm.locks import exclusive_output
from mtllm.outputs import claim_output_dir, clear_outputs, foreign_entries
from mtllm.evaluation.evaluate import EvaluateSettings, evaluation_languages, run_evaluate
from mtllm.settings import (EXISTING_DIR, NON_EMPTY, OUTPUT_DIR, SEED, TASK, ModelSettings, build_settings,
                            check_keys, check_settings)
from mtllm.sources import resolve_source
from mtllm.tasks import get_task, load_examples, load_train_examples, resolve_data_dir
from mtllm.training.distill import DistillSettings, run_distill
from mtllm.training.finetune import TaskSettings, run_finetune
from mtllm.training.loop import TrainingArgs
from mtllm.training.stage1 import Stage1Settings, run_stage1

__all__ = ["PipelineSettings", "RunPlan", "plan_run", "run_pipeline", "STAGE1_SETTINGS", "SECTION_SETTINGS"]

StageName = Literal["stage1", "retrieval", "teacher", "distill", "eval"]

#: The flat keys of a run config besides :class:`PipelineSettings`: the models and stage 1.
STAGE1_SETTINGS: tuple[type, ...] = (ModelSettings, Stage1Settings, TrainingArgs)
#: The keys of each section of a run config.
SECTION_SETTINGS: dict[str, tuple[type, ...]] = {
    "finetune": (TaskSettings, TrainingArgs),
    "distill": (TaskSettings, DistillSettings, TrainingArgs),
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
    stages: list[StageName] = field(default_factory=lambda: ["stage1", "retrieval", "teacher", "distill", "eval"],
                                    metadata={"help": "Stages to run, in order.", "check": NON_EMPTY})
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
    if d.get("max_minutes") is None:  # added later: counts only when set, so earlier runs keep their hash
        d.pop("max_minutes", None)
    return {k: v for k, v in d.items() if k not in BOOKKEEPING_KEYS}


def _stage1_key(stage1_s: Any) -> dict[str, Any]:
    """Stage-1 settings for the stage hash; ``cache_encoder_outputs`` only counts when on, so runs
    started before that setting existed keep their hash (and are not redone)."""
    key = asdict(stage1_s)
    if not key.get("cache_encoder_outputs"):
        key.pop("cache_encoder_outputs", None)
    if key.get("stage1_objective") == "sequence":  # the paper's: runs from before the span objective keep their hash
        key.pop("stage1_objective", None)
        key.pop("span_weight", None)
    # settings added later count only when set, so earlier runs keep their hash
    for name, default in (("student_layers", None), ("eval_data", []), ("eval_steps", 0), ("max_eval_texts", 256),
                          ("eval_patience", None)):
        if key.get(name) == default:
            key.pop(name, None)
    return key


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class RunPlan:
    """Every stage's settings, built from the run config before any stage runs.

    ``model``, ``stage1`` and ``stage1_args`` are as configured (their hash is the stage-1 hash); the
    stage-1 run adds the output folder, ``save_initial`` and the data folder. The sections' settings
    hold their output folders and the paths of the stages they read; only ``resume`` is set when a
    stage starts. ``sections`` keeps each section's keys as written, which the stage hashes cover."""

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
    evaluate: EvaluateSettings
    retrieval: EvaluateSettings | None
    sections: dict[str, dict[str, Any] | None]
    task_name: str = ""               # the task's name (a task file's name:), for folders and headers
    task_files: str | None = None     # a task file's FileTask.files_digest(); None for a registered task


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
    dirs = {"stage1": root / "stage1", "retrieval": root / "retrieval", "teacher": root / f"teacher-{task_name}",
            "distill": root / f"distill-{task_name}", "eval": root / f"eval-{task_name}"}
    common = {"task": pipe.task, "data_dir": data_dir}
    ev_common = {"data_dir": data_dir, "notes": pipe.notes}
    teacher = _section_settings(sections, "finetune", {**common, "seed": pipe.seed}, dirs["teacher"])
    distill = _section_settings(sections, "distill", {
        **common, "seed": pipe.seed, "stage1_model": str(dirs["stage1"] / "final"),
        "teacher_model": str(dirs["teacher"] / "best")}, dirs["distill"])
    (evaluate,) = _section_settings(sections, "evaluate", {
        "task": pipe.task, "model": str(dirs["distill"] / "final"), "teacher": str(dirs["teacher"] / "best"),
        **ev_common}, dirs["eval"])
    retrieval = None
    if sections["retrieval"] is not None:
        (retrieval,) = _section_settings(sections, "retrieval", {
            "task": "retrieval", "model": str(dirs["stage1"] / "final"), "systems": ["mtllm", "llm", "encoder"],
            "compare": [f"mtllm_before_stage1={dirs['stage1'] / 'initial'}"], **ev_common}, dirs["retrieval"])
    stages = tuple(s for s in pipe.stages if not (s == "retrieval" and retrieval is None))
    task_files = None
    if spec.reads_own_files:  # a task file: the splits and languages the stages use exist, before any stage
        for split in (teacher[0].train_split, teacher[0].eval_split, distill[0].train_split, distill[0].eval_split,
                      evaluate.split):
            spec.check_split(split)
        evaluation_languages(spec, evaluate.langs, None)
        task_files = spec.files_digest()
    return RunPlan(pipe, root, data_dir, stages, dirs, model, stage1, stage1_args, tuple(teacher), tuple(distill),
                   evaluate, retrieval, sections, task_name, task_files)


def _task_spec(task: str):
    return get_task(task)  # already checked by PipelineSettings (a task file is read once, then cached)


def _stage_inputs(plan: RunPlan, name: str, hashes: dict[str, str]) -> list[Any]:
    """What stage ``name``'s hash covers: its settings (sections as written) and the hashes of the stages
    it reads, when they ran earlier in this run."""
    s, data_dir, pipe = plan.sections, plan.data_dir, plan.pipe
    # a task file: its name and the hash of its files' bytes, not its path (moving it redoes nothing); a
    # registered task's hash stays what it always was
    files = [plan.task_files] if plan.task_files is not None else []
    task = plan.task_name if plan.task_files is not None else pipe.task
    return {
        "stage1": [asdict(plan.model), _stage1_key(plan.stage1), _args_key(plan.stage1_args)],
        "retrieval": [hashes.get("stage1"), _args_key(s["retrieval"] or {}), data_dir],
        "teacher": [asdict(plan.model), task, _args_key(s["finetune"]), data_dir, pipe.seed, *files],
        "distill": [hashes.get("stage1"), hashes.get("teacher"), _args_key(s["distill"]), data_dir, pipe.seed, *files],
        "eval": [hashes.get("distill"), hashes.get("teacher"), _args_key(s["evaluate"]), data_dir, task, *files],
    }[name]


# ---------------------------------------------------------------------------------------- the stages
StageResult = tuple[dict[str, str], Any]  # (artefact paths, summary)
#: The stages whose outputs each stage reads (when they are in the same run).
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
        if split == "train" and task.train_lang == "eng_Latn":
            examples = load_train_examples(spec, data_dir=task.data_dir)
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


def _run_eval(plan: RunPlan, resume: bool) -> StageResult:
    return _results_artefacts(plan.dirs["eval"]), run_evaluate(plan.evaluate).averages()


#: stage -> (what it does, for its header; how it runs)
STAGES: dict[str, tuple[str, Callable[[RunPlan, bool], StageResult]]] = {
    "stage1": ("self-distillation on English text", _run_stage1),
    "retrieval": ("English<->X retrieval before vs after stage 1", _run_retrieval),
    "teacher": ("fine-tune the LLM alone on English {task}", _run_teacher),
    "distill": ("distil the teacher into the MT-LLM (English data only)", _run_distill),
    "eval": ("zero-shot {task} on every language", _run_eval),
}


class _Stage:
    """Bookkeeping of one stage folder: skip when done with the same inputs, resume when interrupted with
    them, else (re)run; the stage functions get ``overwrite=True``, since :meth:`check` has claimed the folder."""

    def __init__(self, folder: Path, name: str, inputs_hash: str, overwrite: bool = False,
                 upstream: tuple["_Stage", ...] = ()):
        self.dir, self.name, self.hash, self.overwrite = folder, name, inputs_hash, overwrite
        self.marker = self.dir / "stage.json"
        self.upstream = upstream  # the stages of this run whose outputs it reads
        self.why = ""  # why check() said redo

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
        """The folder's ``stage.json``: None when there is none, ``{}`` when it cannot be read (inputs unknown)."""
        if not self.marker.is_file():
            return None
        try:
            info = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def done(self) -> dict[str, Any] | None:
        info = self._info()
        finished = info is not None and info.get("hash") == self.hash and info.get("status") == "done"
        return info if finished and self.stale(info) is None else None

    def check(self) -> str:
        """What :meth:`run` will do: ``skip`` (done with the same inputs), ``resume`` (interrupted with them),
        ``redo`` (an earlier ``mtllm run`` with other inputs) or ``fresh``. Raises :class:`ConfigError`, naming
        the files and ``--overwrite``, when the folder holds files mtllm did not write (``redo``) or anything
        ``mtllm run`` did not start there (``fresh``: :func:`mtllm.outputs.claim_output_dir`)."""
        info = self._info()
        if info is not None and info.get("hash") == self.hash:
            if info.get("status") != "done":
                return "resume"
            self.why = self.stale(info) or ""
            if not self.why:
                return "skip"
        if info is not None:
            foreign = foreign_entries(self.dir)
            if foreign and not self.overwrite:
                raise ConfigError(
                    f"{self.name}: its inputs changed, so {self.dir} is to be redone, but it holds files mtllm did not "
                    f"write ({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}): move them away, or pass "
                    f"--overwrite to redo it anyway (those files are kept)")
            return "redo"
        try:
            claim_output_dir(self.dir, overwrite=self.overwrite)
        except ConfigError as err:
            raise ConfigError(f"{self.name}: {err} (it has no stage.json: not a stage of `mtllm run`)") from None
        return "fresh"

    def begin(self, action: str) -> bool:
        """Prepare the folder for ``action`` (:meth:`check`); returns whether the stage resumes."""
        if action == "resume":
            return True
        unreadable = self._info() == {}
        removed = clear_outputs(self.dir, keep=frozenset())  # only what mtllm wrote; other files stay
        kept = foreign_entries(self.dir)
        if action == "redo":
            why = ("its stage.json is unreadable" if unreadable else self.why or "inputs changed since the last run")
            print(f"[run] {self.name}: {why}; redoing it", flush=True)
        elif removed:
            print(f"[run] {self.name}: removed {', '.join(removed)} from {self.dir}, left by a run without a "
                  f"stage.json", flush=True)
        if kept:
            print(f"[run] {self.name}: --overwrite: keeping the files mtllm did not write: {', '.join(kept)}",
                  flush=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.marker, {"hash": self.hash, "status": "running"})
        return False

    def finish(self, artefacts: dict[str, Any], seconds: float, summary: Any = None,
               data: dict[str, str] | None = None) -> dict[str, Any]:
        info = {"hash": self.hash, "status": "done", "artefacts": artefacts, "seconds": round(seconds, 1),
                "summary": summary, "data": data or {}, "upstream": self._upstream_records()}
        atomic_write_json(self.marker, info, indent=1, default=str)
        return info

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
    for name in ("retrieval", "eval"):
        if name in results and results[name].get("summary"):
            print(f"[run] {name} averages: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name]["summary"].items()),
                  flush=True)


def run_pipeline(values: dict[str, Any]) -> dict[str, Any]:
    """Run the stages of a run config (``values``: its keys, ``section.key`` overrides included) in order;
    every setting is checked before the first stage starts. Returns each stage's ``stage.json`` record."""
    plan = plan_run(values)
    stages: dict[str, _Stage] = {}
    hashes: dict[str, str] = {}
    for name in plan.stages:  # in the order given: a stage's hash covers the hashes of those before it
        upstream = tuple(stages[u] for u in UPSTREAM.get(name, ()) if u in stages)
        stages[name] = _Stage(plan.dirs[name], name, _hash(_stage_inputs(plan, name, hashes)),
                              plan.stage1_args.overwrite,
                              upstream)
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
            what, body = STAGES[name]
            _header(i, len(plan.stages), name, what.format(task=plan.task_name or plan.pipe.task))
            results[name] = stage.run(body, plan)
        total = time.perf_counter() - t_run
    _print_summary(plan, results, total)
    atomic_write_json(plan.root / "run_summary.json", {"seconds": round(total, 1), "stages": results}, indent=1,
                      default=str)
    return results
