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

A run config is a flat preset (model and stage-1 keys, e.g. ``base: pocket.yaml``) plus one section
per later stage (``finetune:``, ``distill:``, ``evaluate:``, ``retrieval:``) holding that stage's
keys; ``--section.key value`` overrides one of them (``--finetune.num_epochs 2``). Every stage
writes ``stage.json`` with a hash of its inputs (its settings and the hashes of the stages it
reads); a finished stage with the same hash is skipped, an unfinished one resumes from its last
checkpoint, and a stage whose inputs changed is redone (with everything downstream).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .settings import ConfigError, build_settings

__all__ = ["PipelineSettings", "run_pipeline"]

SECTIONS = ("finetune", "distill", "evaluate", "retrieval")


@dataclass
class PipelineSettings:
    """Top-level keys of ``mtllm run`` (besides the model/stage-1 keys and the per-stage sections)."""

    task: str = field(default="sib200", metadata={"help": "Task to train the teacher on and evaluate."})
    output_dir: str = field(default="runs/pocket-sib200", metadata={"help": "Root folder of the run."})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub)."})
    stages: list[str] = field(default_factory=lambda: ["stage1", "retrieval", "teacher", "distill", "eval"],
                              metadata={"help": "Stages to run, in order."})
    notes: list[str] = field(default_factory=list, metadata={"help": "Notes for the results tables."})
    seed: int = field(default=0, metadata={"help": "Seed for every stage."})


def _split_sections(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    flat, sections = {}, {s: {} for s in SECTIONS}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if dot and head in sections:
            sections[head][rest] = value
        elif key in sections:
            if value in (None, False):
                sections[key] = None
            elif not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a mapping of that stage's keys, not {value!r}")
            else:
                sections[key].update(value)
        else:
            flat[key] = value
    return flat, sections


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Keys that change how a stage runs or logs, not what it computes: left out of stage hashes, so that
#: e.g. ``--save_steps`` or ``--micro_batch_size`` (gradient accumulation) never redo finished work.
BOOKKEEPING_KEYS = frozenset({"output_dir", "resume", "log_steps", "save_steps", "keep_checkpoints", "progress",
                              "report_to", "micro_batch_size", "eval_batch_size", "batch_size_eval"})


def _args_key(values: Any) -> dict[str, Any]:
    """``values`` (a settings dataclass or a section dict) without :data:`BOOKKEEPING_KEYS`."""
    d = asdict(values) if not isinstance(values, dict) else dict(values)
    return {k: v for k, v in d.items() if k not in BOOKKEEPING_KEYS}


def _stage1_key(stage1_s: Any) -> dict[str, Any]:
    """Stage-1 settings for the stage hash; ``cache_encoder_outputs`` only counts when on, so runs
    started before that setting existed keep their hash (and are not redone)."""
    key = asdict(stage1_s)
    if not key.get("cache_encoder_outputs"):
        key.pop("cache_encoder_outputs", None)
    return key


class _Stage:
    """Bookkeeping of one stage folder: skip when done with the same inputs, else (re)run."""

    def __init__(self, root: Path, name: str, inputs_hash: str, dirname: str | None = None):
        self.dir, self.name, self.hash = root / (dirname or name), name, inputs_hash
        self.marker = self.dir / "stage.json"

    def done(self) -> dict[str, Any] | None:
        if self.marker.exists():
            info = json.loads(self.marker.read_text())
            if info.get("hash") == self.hash and info.get("status") == "done":
                return info
        return None

    def begin(self) -> bool:
        """Prepare the folder; returns whether an interrupted run with the same inputs can resume."""
        if self.marker.exists():
            info = json.loads(self.marker.read_text())
            if info.get("hash") == self.hash:
                return True
            print(f"[run] {self.name}: inputs changed since the last run; redoing it", flush=True)
            shutil.rmtree(self.dir)
        elif self.dir.exists() and any(self.dir.iterdir()):
            print(f"[run] {self.name}: {self.dir} holds files from an unknown run; redoing it", flush=True)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(json.dumps({"hash": self.hash, "status": "running"}))
        return False

    def finish(self, artefacts: dict[str, Any], seconds: float, summary: Any = None) -> dict[str, Any]:
        info = {"hash": self.hash, "status": "done", "artefacts": artefacts, "seconds": round(seconds, 1),
                "summary": summary}
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1, default=str))
        tmp.replace(self.marker)
        return info


def _header(i: int, n: int, name: str, what: str) -> None:
    print(f"\n=== [{i}/{n}] {name}: {what} ===", flush=True)


def run_pipeline(values: dict[str, Any]) -> dict[str, Any]:
    from .evaluation.evaluate import EvaluateSettings, run_evaluate
    from .training.loop import TrainingArgs
    from .training.stage1 import ModelSettings, Stage1Settings, run_stage1
    from .training.stage2 import DistillSettings, TaskSettings, run_distill, run_finetune

    flat, sections = _split_sections(values)
    top_keys = {f.name for f in fields(PipelineSettings)}
    pipe = build_settings([PipelineSettings], {k: v for k, v in flat.items() if k in top_keys})[0]
    model_s, stage1_s, stage1_args = build_settings(
        [ModelSettings, Stage1Settings, TrainingArgs],
        {k: v for k, v in flat.items() if k not in top_keys or k == "seed"})
    if pipe.data_dir:
        data_dir = str(Path(pipe.data_dir).expanduser().resolve())
        os.environ["MTLLM_DATA_DIR"] = data_dir  # task:... stage-1 sources and every loader see it
    else:
        data_dir = None
    from .tasks import resolve_data_dir

    data_dir = str(resolve_data_dir(data_dir)) if resolve_data_dir(data_dir) else None
    root = Path(pipe.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in pipe.stages if s not in ("stage1", "retrieval", "teacher", "distill", "eval")]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: stages are stage1, retrieval, teacher, distill, eval")
    (root / "run_config.json").write_text(json.dumps(values, indent=1, default=str))
    stages = [s for s in pipe.stages if not (s == "retrieval" and sections["retrieval"] is None)]
    n = len(stages)
    t_run = time.perf_counter()
    results: dict[str, Any] = {}
    hashes: dict[str, str] = {}
    model_key = asdict(model_s)

    def stage_args(section: dict[str, Any], keys_from: list[type], out: Path) -> list[Any]:
        vals = dict(section)
        vals.setdefault("seed", pipe.seed)
        vals["output_dir"] = str(out)
        return build_settings(keys_from, vals)

    def run_stage(name: str, what: str, inputs: Any, body: Callable[[_Stage, bool], tuple[dict, Any]],
                  dirname: str | None = None) -> dict:
        i = stages.index(name) + 1
        _header(i, n, name, what)
        stage = _Stage(root, name, _hash(inputs), dirname)
        hashes[name] = stage.hash
        info = stage.done()
        if info is not None:
            print(f"[run] {name}: already done with the same inputs ({stage.marker}); skipping", flush=True)
            for k, v in info["artefacts"].items():
                print(f"[run]   {k}: {v}", flush=True)
            return info
        resume = stage.begin()
        if resume:
            print(f"[run] {name}: resuming the interrupted run in {stage.dir}", flush=True)
        t0 = time.perf_counter()
        artefacts, summary = body(stage, resume)
        info = stage.finish(artefacts, time.perf_counter() - t0, summary)
        for k, v in artefacts.items():
            print(f"[run]   {k}: {v}", flush=True)
        print(f"[run] {name} done in {info['seconds']:.0f} s", flush=True)
        return info

    # --- models -------------------------------------------------------------------------------
    from .sources import resolve_source

    _header(0, n, "models", "resolve and convert the models (once, cached)")
    for src in (model_s.encoder, model_s.llm):
        print(f"[run] {src} -> {resolve_source(src)}", flush=True)

    # --- stage 1 ------------------------------------------------------------------------------
    stage1_dir = root / "stage1"
    teacher_dir = root / f"teacher-{pipe.task}"
    distill_dir = root / f"distill-{pipe.task}"

    def _stage_stage1() -> None:
        def body(stage: _Stage, resume: bool):
            stage1_s.save_initial = True
            stage1_args.output_dir, stage1_args.resume = str(stage.dir), resume
            summary = run_stage1(model_s, stage1_s, stage1_args)
            return {"final": str(stage.dir / "final"), "initial": str(stage.dir / "initial"),
                    "metrics": str(stage.dir / "metrics.jsonl")}, summary

        results["stage1"] = run_stage("stage1", "self-distillation on English text",
                                      [model_key, _stage1_key(stage1_s), _args_key(stage1_args)], body)

    def _stage_retrieval() -> None:
        sec = dict(sections["retrieval"] or {})

        def body(stage: _Stage, resume: bool):
            ev = build_settings([EvaluateSettings], {
                "task": "retrieval", "model": str(stage1_dir / "final"), "systems": ["mtllm", "llm", "encoder"],
                "compare": [f"mtllm_before_stage1={stage1_dir / 'initial'}"], "data_dir": data_dir,
                "notes": pipe.notes, **sec, "output_dir": str(stage.dir)})[0]
            res = run_evaluate(ev)
            return {"results": str(stage.dir / "results.json"), "table": str(stage.dir / "results.md"),
                    "plot": str(stage.dir / "results.png")}, res.averages()

        results["retrieval"] = run_stage("retrieval", "English<->X retrieval before vs after stage 1",
                                         [hashes.get("stage1"), _args_key(sec), data_dir], body)

    def _stage_teacher() -> None:
        sec = dict(sections["finetune"])

        def body(stage: _Stage, resume: bool):
            task_s, args = stage_args({"task": pipe.task, "data_dir": data_dir, **sec},
                                      [TaskSettings, TrainingArgs], stage.dir)
            args.resume = resume
            summary = run_finetune(model_s, task_s, args)
            return {"best": summary["best_dir"], "metrics": str(stage.dir / "metrics.jsonl")}, summary["best"]

        results["teacher"] = run_stage("teacher", f"fine-tune the LLM alone on English {pipe.task}",
                                       [model_key, pipe.task, _args_key(sec), data_dir, pipe.seed], body, teacher_dir.name)

    def _stage_distill() -> None:
        sec = dict(sections["distill"])

        def body(stage: _Stage, resume: bool):
            task_s, dist_s, args = stage_args(
                {"task": pipe.task, "data_dir": data_dir, "stage1_model": str(stage1_dir / "final"),
                 "teacher_model": str(teacher_dir / "best"), **sec}, [TaskSettings, DistillSettings, TrainingArgs],
                stage.dir)
            args.resume = resume
            summary = run_distill(model_s, task_s, dist_s, args)
            return {"final": summary["final_dir"], "metrics": str(stage.dir / "metrics.jsonl")}, {
                k: summary[k] for k in ("evals", "steps", "seconds", "trainable")}

        results["distill"] = run_stage("distill", "distil the teacher into the MT-LLM (English data only)",
                                       [hashes.get("stage1"), hashes.get("teacher"), _args_key(sec), data_dir, pipe.seed], body,
                                       distill_dir.name)

    def _stage_eval() -> None:
        sec = dict(sections["evaluate"])

        def body(stage: _Stage, resume: bool):
            ev = build_settings([EvaluateSettings], {
                "task": pipe.task, "model": str(distill_dir / "final"), "teacher": str(teacher_dir / "best"),
                "data_dir": data_dir, "notes": pipe.notes, **sec, "output_dir": str(stage.dir)})[0]
            res = run_evaluate(ev)
            return {"results": str(stage.dir / "results.json"), "table": str(stage.dir / "results.md"),
                    "plot": str(stage.dir / "results.png")}, res.averages()

        results["eval"] = run_stage("eval", f"zero-shot {pipe.task} on every language",
                                    [hashes.get("distill"), hashes.get("teacher"), _args_key(sec), data_dir, pipe.task], body,
                                    f"eval-{pipe.task}")

    bodies = {"stage1": _stage_stage1, "retrieval": _stage_retrieval, "teacher": _stage_teacher,
              "distill": _stage_distill, "eval": _stage_eval}
    for name in stages:  # in the order given: a stage reads the hashes of those run before it
        bodies[name]()

    total = time.perf_counter() - t_run
    print(f"\n[run] finished in {total:.0f} s; outputs in {root}", flush=True)
    for name in ("retrieval", "eval"):
        if name in results and results[name].get("summary"):
            print(f"[run] {name} averages: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name]["summary"].items()),
                  flush=True)
    (root / "run_summary.json").write_text(json.dumps({"seconds": round(total, 1), "stages": results}, indent=1,
                                                      default=str))
    return results
