"""Fault injection (issue 13, item 8): rerun after a fault = an uninterrupted run, nothing lost or duplicated.

* ``kill -9`` at seeded points of every stage run as a real subprocess (``mtllm adapt``, ``finetune``,
  ``distill``, ``evaluate``) and of ``mtllm run``, then a rerun (``--resume true`` for a per-stage command,
  a plain rerun of ``mtllm run``): the same weights (<= 1e-6) as one uninterrupted ``mtllm run`` of
  configs/tiny-sib200.yaml (each per-stage command is given that stage's settings, so the run's stage
  folders are every reference), every step exactly once in ``metrics.jsonl`` with the same numbers, the same
  results, no temporary file (``.NAME.tmp-PID``) left, every ``stage.json`` done.
* a full disk (ENOSPC) while writing a checkpoint, results or a cache; a read-only output folder.
* corrupt cache files (teacher targets, pre-embeddings, encoder outputs, translations, the tiny models).

A kill point is either *outside* (``SIGKILL`` sent by the test once a file appears, or after a delay: anywhere
in what follows) or *inside* (tests/fault_inject.py: the process kills itself at an exact write, a file torn
after a given number of bytes, or right after an atomic rename). Points are drawn with ``random.Random(SEED)``;
each test prints the points it killed at (``pytest -rP``).

Every command runs as its own process, forked from a server that imported torch, transformers and mtllm once
(``tests/fault_inject.py --serve``; a fresh interpreter costs ~10 s here, a fork ~0); one killed run is a fresh
``python`` interpreter.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fault_inject import Plan, command, install
from mtllm.training.checkpoint import latest_valid_checkpoint, list_checkpoints, verify_checkpoint
from saved_run import max_weight_diff

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
RUN_CONFIG = str(ROOT / "configs" / "tiny-sib200.yaml")
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")
SEED = 13
TIMEOUT = 300

QUIET = ["--progress", "false", "--report_to", "none", "--log_steps", "1"]
MODEL = ["--encoder", "tiny:xlmr", "--llm", "tiny:gemma3", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout",
         "0.0",
         "--max_seq_length", "64", "--dtype", "float32", "--bidirectional", "false", "--pooling", "mean"]
TASK = ["--task", "sib200", "--data_dir", DATA, "--seed", "0", "--eval_batch_size", "8", "--learning_rate", "3e-3",
        "--num_epochs", "2", "--batch_size", "4", "--save_steps", "2"]
STEPS = {"stage1": 10, "teacher-sib200": 12, "distill-sib200": 12}  # tiny-sib200: 10 steps; 2 epochs of 24 / 4


# ------------------------------------------------------------------------------------------- commands
def _stage_argv(stage: str, out: Path, ref: Path) -> list[str]:
    """``mtllm STAGE`` with the settings ``mtllm run`` gives that stage of tiny-sib200 (checkpoints every 2 steps)."""
    return {
        "adapt": ["adapt", "--config", TINY, "--data", "[task:sib200/eng_Latn/train]", "--data_dir", DATA,
                  "--max_steps", "10", "--save_steps", "2", "--save_initial", "true"],
        "finetune": ["finetune", *MODEL, *TASK],
        "distill": ["distill", *MODEL, *TASK, "--train_projection", "true", "--stage1_model",
                    str(ref / "stage1" / "final"),
                    "--teacher_model", str(ref / "teacher-sib200" / "best")],
        "evaluate": ["evaluate", "--task", "sib200", "--model", str(ref / "distill-sib200" / "final"),
                     "--teacher", str(ref / "teacher-sib200" / "best"), "--systems", "[mtllm,llm,encoder]",
                     "--langs", "[all]", "--batch_size", "8", "--data_dir", DATA],
    }[stage] + ["--output_dir", str(out)] + (QUIET if stage != "evaluate" else [])


def _run_argv(out: Path, *extra: str) -> list[str]:
    """``mtllm run`` of tiny-sib200, checkpoints every 2 steps in every training stage (bookkeeping: same hashes)."""
    sections = [f"--{s}.{k}" for s in ("finetune", "distill") for k in ("save_steps", "progress", "report_to")]
    values = ["2", "false", "none"] * 2
    return ["run", "--config", RUN_CONFIG, "--data-dir", DATA, "--output-dir", str(out), "--save_steps", "2",
            *QUIET, *(x for pair in zip(sections, values) for x in pair), *extra]


# the stage folder a per-stage command's output is compared with
REFERENCE = {"adapt": "stage1", "finetune": "teacher-sib200", "distill": "distill-sib200", "evaluate": "eval-sib200"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


class _Forked:
    """A command forked by the server, seen like a :class:`subprocess.Popen`."""

    def __init__(self, server: "_Server", pid: int) -> None:
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            line = self.server.readline(0)
            if line is not None:
                self.returncode = int(line)
        return self.returncode

    def wait(self, timeout: float) -> int:
        if self.returncode is None:
            line = self.server.readline(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(f"mtllm (pid {self.pid})", timeout)
            self.returncode = int(line)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    """``tests/fault_inject.py --serve``: imports torch, transformers and mtllm once (~10 s here), then forks
    each command as its own process (``mtllm.cli.main``, what ``python -m mtllm`` runs), one at a time."""

    def __init__(self, log: Path) -> None:
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_inject.py"), "--serve"], cwd=ROOT,
                                     env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._buf = b""
        assert self.readline(TIMEOUT) == "ready", "the fork server did not start (see its log)"

    def readline(self, timeout: float) -> str | None:
        """The next reply line, or None when none came within ``timeout`` seconds."""
        import select

        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if not select.select([fd], [], [], max(0.0, left))[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the fork server ended (rc {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def launch(self, argv: list[str], log: Path, plan: Plan | None) -> _Forked:
        request = {"argv": argv, "log": str(log), "plan": asdict(plan) if plan is not None else None}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return _Forked(self, int(self.readline(TIMEOUT)))

    def close(self) -> None:
        self.proc.kill()  # idle between commands: nothing to finish (an orderly exit of torch takes seconds)
        self.proc.wait(TIMEOUT)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._log.close()


_SERVER: list[_Server] = []  # started on first use, stopped when the module's tests are done


@pytest.fixture(scope="module", autouse=True)
def _stop_server():
    yield
    while _SERVER:
        _SERVER.pop().close()


def _launch(argv: list[str], log: Path, plan: Plan | None = None, *, fork: bool = True):
    """Start ``mtllm ARGV`` (with ``plan`` installed) as its own process writing ``log``: forked by the server, or
    (``fork=False``) as ``python -m mtllm`` / ``python tests/fault_inject.py PLAN``."""
    if fork:
        if not _SERVER:
            _SERVER.append(_Server(log.parent / "fork-server.log"))
        return _SERVER[0].launch(argv, log, plan)
    cmd = command(plan, *argv) if plan is not None else [sys.executable, "-m", "mtllm", *argv]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT)


def _finish(argv: list[str], log: Path, plan: Plan | None = None, *, fork: bool = True) -> tuple[int, str]:
    proc = _launch(argv, log, plan, fork=fork)
    try:
        rc = proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return rc, log.read_text()


def _ok(argv: list[str], log: Path) -> str:
    rc, out = _finish(argv, log)
    assert rc == 0, f"mtllm {' '.join(argv[:1])} failed (rc {rc}):\n{out[-3000:]}"
    return out


# ------------------------------------------------------------------------------------------- comparisons
def _assert_same_weights(ref: Path, got: Path) -> None:
    diff = max_weight_diff(ref, got)
    assert diff <= 1e-6, f"{got}: weights differ from {ref} by {diff}"


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(ref: Path, got: Path) -> None:
    """Every step exactly once, in order, with the numbers of the uninterrupted run (all but the wall clock)."""
    a, b = _metrics(ref), _metrics(got)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, len(a) + 1)), got
    for x, y in zip(a, b):
        assert x.keys() == y.keys(), (x, y)
        for key in x.keys() - {"elapsed_s"}:
            assert y[key] == pytest.approx(x[key], abs=1e-6), (got, x["step"], key)


def _results(folder: Path, *roots: Path) -> dict:
    """results.json without the wall-clock times and the note that an evaluation continued after an
    interruption (mtllm.evaluation.partial), each of ``roots`` (run folders) in its paths written ``<root>``."""
    text = (folder / "results.json").read_text()
    for root in roots:
        text = text.replace(json.dumps(str(root))[1:-1], "<root>")
    data = json.loads(text)
    for part in (data, data.get("meta", {})):
        part.pop("seconds", None)
    data["notes"] = [n for n in data.get("notes", []) if not n.startswith("continued after an interruption")]
    return data


def _temporaries(root: Path) -> list[str]:
    """``.NAME.tmp-PID`` files and folders (mtllm._io.atomic_path) anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp-*"))


def _assert_same_stage(kind: str, ref: Path, got: Path) -> None:
    """``got`` (a stage folder) holds what ``ref`` holds, and no temporary."""
    if kind in ("stage1", "adapt"):
        _assert_same_weights(ref / "final", got / "final")
        _assert_same_weights(ref / "initial", got / "initial")
        _assert_same_metrics(ref, got)
    elif kind in ("teacher-sib200", "finetune"):
        _assert_same_weights(ref / "best", got / "best")
        _assert_same_weights(ref / "final", got / "final")
        assert json.loads((got / "best_score.json").read_text()) == json.loads((ref / "best_score.json").read_text())
        _assert_same_metrics(ref, got)
    elif kind in ("distill-sib200", "distill"):
        _assert_same_weights(ref / "final", got / "final")
        _assert_same_metrics(ref, got)
    else:  # eval-sib200, retrieval, evaluate
        roots = (ref.parent, got.parent)
        assert _results(got, *roots) == _results(ref, *roots), got
        assert (got / "results.md").exists() and (got / "results.png").exists()
    assert _temporaries(got) == [], f"temporaries left in {got}"


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to show that nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- the reference
@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """One uninterrupted ``mtllm run`` of tiny-sib200 (a subprocess, like every run compared with it)."""
    out = tmp_path_factory.mktemp("faults") / "ref"
    _ok(_run_argv(out), out.parent / "ref.log")
    for stage in ("stage1", "retrieval", "teacher-sib200", "distill-sib200", "eval-sib200"):
        assert json.loads((out / stage / "stage.json").read_text())["status"] == "done"
    return out


# ------------------------------------------------------------------------------------------- kill points
@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: ``where`` says it; ``plan(step)`` (inside: given the step the run starts from) or
    ``ready(folder)`` (outside: SIGKILL once it holds) or ``delay`` (outside: seconds after the launch)."""

    where: str
    plan: Callable[[int], Plan] | None = None
    ready: Callable[[Path], bool] | None = None
    delay: float | None = None


CHECKPOINT_FILES = ("trainables.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.pt",
                    "trainer_state.json", "manifest.json")
STEP_KINDS = ("metrics line", "checkpoint file", "checkpoint done")


def _step_point(rng: random.Random, folder: str, step: int, kind: str) -> KillPoint:
    """A kill point of ``kind`` at training step ``step`` of the stage whose output folder is named ``folder`` (a
    per-stage command's: ``out``): inside the append of the step's line to metrics.jsonl, inside a file of its
    checkpoint (even steps), or from outside once its checkpoint exists (even steps); which file is torn, and
    after how many bytes, is drawn from ``rng``."""
    if kind == "metrics line":  # appended after every step: torn mid-line
        cut = rng.randint(1, 60)
        return KillPoint(f"{folder}: step {step}'s line of metrics.jsonl torn after {cut} bytes",
                         plan=lambda start: Plan("kill", f"*/{folder}/metrics.jsonl", skip=step - 1 - start,
                                                 partial=cut))
    if kind == "checkpoint file":
        name, cut = rng.choice(CHECKPOINT_FILES), rng.randint(0, 200)
        return KillPoint(f"{folder}: checkpoint step-{step}, {name} torn after {cut} bytes",
                         plan=lambda start: Plan("kill", f"*/{folder}/checkpoints/.step-{step:07d}.tmp-*/{name}",
                                                 partial=cut))
    return KillPoint(f"{folder}: SIGKILL from outside once checkpoint step-{step} exists",
                     ready=lambda out: (out / "checkpoints" / f"step-{step:07d}").is_dir())


def _final_point(folder: str) -> KillPoint:
    return KillPoint(f"{folder}: right after final/ is in place, before the summary",
                     plan=lambda start: Plan("kill", f"*/{folder}/final", on="replace"))


def _training_points(rng: random.Random, folder: str, n_steps: int, n: int) -> list[KillPoint]:
    """``n`` seeded points of different kinds (:data:`STEP_KINDS`) at distinct steps of the training loop, after
    the first checkpoint (step 2) and before the last step, in the order a run meets them."""
    chosen: dict[int, str] = {}
    for kind in rng.sample(STEP_KINDS, n):
        free = [s for s in range(3, n_steps) if s not in chosen and (kind == "metrics line" or s % 2 == 0)]
        chosen[rng.choice(free)] = kind
    return [_step_point(rng, folder, step, kind) for step, kind in sorted(chosen.items())]


def _eval_points(rng: random.Random, folder: str) -> list[KillPoint]:
    """Right after one of the result files is in place (the others not yet), and from outside a seeded delay after
    the launch (anywhere in loading and predicting)."""
    name = rng.choice(["results.json", "results.md"])
    delay = round(rng.uniform(0.2, 1.0), 2)
    return [KillPoint(f"{folder}: right after {name} is written, before the rest",
                      plan=lambda start: Plan("kill", f"*/{folder}/{name}", on="replace")),
            KillPoint(f"{folder}: SIGKILL from outside {delay} s after the launch", delay=delay)]


def _start_step(folder: Path) -> int:
    ckpt = latest_valid_checkpoint(folder) if folder.is_dir() else None
    return int(ckpt.name.split("-")[1]) if ckpt is not None else 0


def _kill(argv: list[str], point: KillPoint, folder: Path, log: Path, *, fork: bool = True) -> str:
    """Run ``argv`` and kill it at ``point``; returns what happened, for the report."""
    plan = point.plan(_start_step(folder)) if point.plan is not None else None
    proc = _launch(argv, log, plan, fork=fork)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < TIMEOUT:
            if (point.ready is not None and point.ready(folder)) or (
                    point.delay is not None and time.monotonic() - t0 >= point.delay):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        rc = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    if rc == -signal.SIGKILL:
        return f"killed: {point.where}"
    assert rc == 0 and plan is None, f"{point.where}: the run ended ({rc}) before the kill:\n{log.read_text()[-3000:]}"
    return f"not killed (the run finished first): {point.where}"


def _chain(first: list[str], rerun: list[str], points: list[KillPoint], folder: Path, logs: Path) -> list[str]:
    """Run ``first``, killed at ``points[0]``, then ``rerun`` killed at each further point, then ``rerun`` to the
    end; returns what happened at each point."""
    happened = []
    for i, point in enumerate(points):
        happened.append(_kill(first if i == 0 else rerun, point, folder, logs / f"kill-{i}.log"))
    _ok(rerun, logs / "rerun.log")
    print("\n".join(happened))
    return happened


# ------------------------------------------------------------------------------------------- kill -9 tests
@pytest.mark.parametrize("stage", ["adapt", "finetune", "distill", "evaluate"])
def test_kill_9_then_resume_equals_uninterrupted(stage, ref, tmp_path):
    """``mtllm STAGE`` killed at seeded points (training: three steps and after final/; evaluate: two), each
    followed by ``--resume true`` (evaluate: a rerun with ``--overwrite``, which continues from the languages it
    finished, mtllm.evaluation.partial, unless the kill came after results.json), ends exactly
    as the uninterrupted run's stage."""
    rng = random.Random(f"{SEED}-{stage}")
    out = tmp_path / "out"
    first = _stage_argv(stage, out, ref)
    if stage == "evaluate":
        points, rerun = _eval_points(rng, "out"), first + ["--overwrite", "true"]
    else:
        points = [*_training_points(rng, "out", STEPS[REFERENCE[stage]], 3), _final_point("out")]
        rerun = first + ["--resume", "true"]
    happened = _chain(first, rerun, points, out, tmp_path)
    assert sum(h.startswith("killed") for h in happened) >= len(points) - 1
    _assert_same_stage(stage, ref / REFERENCE[stage], out)


@pytest.fixture(scope="module")
def killed_run(ref, tmp_path_factory) -> tuple[Path, list[str], str]:
    """``mtllm run`` killed at seeded points in every stage (two in each training stage), rerun plainly after each
    kill and once more to the end: (its folder, what happened at each point, the last rerun's output)."""
    logs = tmp_path_factory.mktemp("killed-run")
    rng = random.Random(f"{SEED}-run")
    out = logs / "out"
    if rng.random() < 0.5:  # a step of epoch 1, then right after its best/ is written (step 6), before best_score.json
        teacher = [_step_point(rng, "teacher-sib200", 4, rng.choice(STEP_KINDS)),
                   KillPoint("teacher-sib200: right after best/ (epoch 1) is in place, before best_score.json",
                             plan=lambda start: Plan("kill", "*/teacher-sib200/best", on="replace"))]
    else:
        teacher = _training_points(rng, "teacher-sib200", STEPS["teacher-sib200"], 2)
    points = {
        "stage1": _training_points(rng, "stage1", STEPS["stage1"], 2),
        "retrieval": [KillPoint("retrieval: right after results.json is written",
                                plan=lambda start: Plan("kill", "*/retrieval/results.json", on="replace"))],
        "teacher-sib200": teacher,
        "distill-sib200": [*_training_points(rng, "distill-sib200", STEPS["distill-sib200"], 1),
                           _final_point("distill-sib200")],
        "eval-sib200": [KillPoint("eval-sib200: right after stage.json says done, before run_summary.json",
                                  plan=lambda start: Plan("kill", "*/eval-sib200/stage.json", on="replace", skip=1))],
    }
    happened = []
    for folder, stage_points in points.items():
        for point in stage_points:
            happened.append(_kill(_run_argv(out), point, out / folder, logs / f"kill-{len(happened)}.log"))
    rerun = _ok(_run_argv(out), logs / "rerun.log")
    return out, happened, rerun


RUN_FOLDERS = ("stage1", "retrieval", "teacher-sib200", "distill-sib200", "eval-sib200")


def test_kill_9_in_every_stage_of_mtllm_run_then_rerun_equals_uninterrupted(ref, killed_run):
    """Every stage folder of the killed and rerun ``mtllm run`` ends as the uninterrupted run's, with the same
    inputs hash and status done; the last rerun (after a kill that came when every stage was done) redoes nothing."""
    out, happened, rerun = killed_run
    print("\n".join(happened))
    assert all(h.startswith("killed") for h in happened), happened
    assert rerun.count("skipping") == 5
    for folder in RUN_FOLDERS:
        _assert_same_stage(folder, ref / folder, out / folder)
        got, want = (json.loads((root / folder / "stage.json").read_text()) for root in (out, ref))
        assert got["status"] == "done" and got["hash"] == want["hash"], folder
    assert _temporaries(out) == []
    summary = json.loads((out / "run_summary.json").read_text())
    assert set(summary["stages"]) == {"stage1", "retrieval", "teacher", "distill", "eval"}


def _normalised(obj, roots: tuple[Path, ...]):
    """``obj`` (parsed JSON) without wall-clock fields, the run folders in its paths written ``<root>``."""
    text = json.dumps(obj)
    for root in roots:
        text = text.replace(json.dumps(str(root))[1:-1], "<root>")

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("seconds", "elapsed_s")}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(json.loads(text))


def test_summaries_after_kill_9_equal_uninterrupted(ref, killed_run):
    """What the stages report (stage.json summaries, run_summary.json, the *_summary.json files) after the kills
    equals the uninterrupted run's: no epoch evaluation or step lost from them."""
    out = killed_run[0]
    roots = (ref, out)
    for rel in ("run_summary.json", "stage1/stage1_summary.json", "teacher-sib200/finetune_summary.json",
                "distill-sib200/distill_summary.json"):
        assert _normalised(json.loads((out / rel).read_text()), roots) == \
            _normalised(json.loads((ref / rel).read_text()), roots), rel


def test_kill_9_before_the_first_checkpoint_then_rerun_is_a_fresh_run(ref, tmp_path):
    """Killed at step 1 (no checkpoint yet), ``mtllm run`` reruns stage 1 as a fresh run: the same weights as
    the uninterrupted run (the projection's rms_match initialisation included). The killed run is started as
    ``python tests/fault_inject.py PLAN run ...`` (a fresh interpreter, as ``python -m mtllm``), not forked."""
    out = tmp_path / "out"
    point = KillPoint("stage1: step 1's line of metrics.jsonl torn after 10 bytes (no checkpoint yet)",
                      plan=lambda start: Plan("kill", "*/stage1/metrics.jsonl", partial=10))
    argv = _run_argv(out, "--stages", "[stage1]")
    happened = _kill(argv, point, out / "stage1", tmp_path / "kill.log", fork=False)
    print(happened)
    assert happened.startswith("killed")
    assert not list_checkpoints(out / "stage1") and len((out / "stage1" / "metrics.jsonl").read_bytes()) == 10
    _ok(argv, tmp_path / "rerun.log")
    _assert_same_stage("stage1", ref / "stage1", out / "stage1")


def test_temporaries_of_writers_killed_mid_write_are_cleaned_by_the_rerun(ref, tmp_path):
    """kill -9 inside three atomic writes of ``mtllm adapt`` (the teacher-target cache entry, stage1_config.json,
    final/) leaves their ``.NAME.tmp-PID``; the reruns remove them and end as the uninterrupted run."""
    out = tmp_path / "out"
    points = [KillPoint("adapt: teacher-target cache entry, targets.npy torn after 100 bytes",
                        plan=lambda start: Plan("kill", "*/out/cache/.teacher-*.tmp-*/targets.npy", partial=100)),
              KillPoint("adapt: stage1_config.json torn after 5 bytes",
                        plan=lambda start: Plan("kill", "*/out/.stage1_config.json.tmp-*", partial=5)),
              KillPoint("adapt: final/model.safetensors torn after 100 bytes (after the last checkpoint)",
                        plan=lambda start: Plan("kill", "*/out/.final.tmp-*/model.safetensors", partial=100))]
    argv = _stage_argv("adapt", out, ref) + ["--resume", "true"]
    happened = _chain(argv, argv, points, out, tmp_path)
    assert all(h.startswith("killed") for h in happened), happened
    _assert_same_stage("adapt", ref / "stage1", out)


# ------------------------------------------------------------------------------------------- full disk
def _last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_full_disk_in_the_teacher_cache_then_in_a_checkpoint_then_resume_equals_uninterrupted(ref, tmp_path):
    """``mtllm adapt`` on a disk that fills up, twice: while writing the teacher-target cache (before any step),
    then while writing checkpoint step-6. Each time: a clear error, no half-written cache entry or checkpoint and
    no temporary left, the older checkpoints intact; ``--resume true`` after space is freed ends as the
    uninterrupted run."""
    out = tmp_path / "out"
    argv = _stage_argv("adapt", out, ref) + ["--resume", "true"]
    full = str(out / "*")
    rc, log = _finish(argv, tmp_path / "cache.log",
                      Plan("enospc", "*/out/cache/.teacher-*.tmp-*/targets.npy", partial=64, scope=full))
    assert rc != 0 and "No space left on device" in _last_line(log), log[-2000:]
    assert not list((out / "cache").glob("teacher-*")) and _temporaries(out) == []
    assert not (out / "checkpoints").exists() and not (out / "final").exists()

    rc, log = _finish(argv, tmp_path / "checkpoint.log",
                      Plan("enospc", "*/out/checkpoints/.step-0000006.tmp-*/optimizer.bin", partial=100, scope=full))
    last = _last_line(log)
    assert rc != 0 and "No space left on device" in last and "--resume" in last and "step-0000006" in last, log[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002", "step-0000004"]
    for ckpt in list_checkpoints(out):
        verify_checkpoint(ckpt)  # the older checkpoints are intact
    assert _temporaries(out) == [] and not (out / "final").exists()
    assert [r["step"] for r in _metrics(out)] == list(range(1, 7))

    _ok(argv, tmp_path / "resume.log")
    _assert_same_stage("adapt", ref / "stage1", out)


def test_full_disk_while_writing_results_keeps_every_earlier_stage(ref, tmp_path):
    """``mtllm run`` whose last stage (eval) finds the disk full while writing results.json: a clear error, no
    results file half-written, no temporary, every earlier stage's files unchanged; the rerun after space is freed
    skips the four finished stages, evaluates no language again and writes the same results as the uninterrupted
    run."""
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    shutil.rmtree(out / "eval-sib200")
    (out / "run_summary.json").unlink()
    before = _tree(out)
    rc, log = _finish(_run_argv(out), tmp_path / "full.log",
                      Plan("enospc", "*/eval-sib200/.results.json.tmp-*", partial=50, scope=str(out / "*")))
    assert rc != 0 and "No space left on device" in _last_line(log), log[-2000:]
    after = _tree(out)
    def kept(tree: dict[str, str]) -> dict[str, str]:  # run_config.json records this run's config
        return {k: v for k, v in tree.items() if not k.startswith("eval-sib200/") and k != "run_config.json"}

    assert kept(after) == kept(before)  # nothing of the earlier stages touched
    # every language measured is kept (mtllm.evaluation.partial), so the rerun evaluates none again
    assert sorted(k for k in after if k.startswith("eval-sib200/")) == ["eval-sib200/partial_results.json",
                                                                          "eval-sib200/stage.json"]
    assert _temporaries(out) == []
    rerun = _ok(_run_argv(out), tmp_path / "rerun.log")
    assert rerun.count("skipping") == 4
    assert "continuing: 3 languages already done" in rerun
    _assert_same_stage("eval-sib200", ref / "eval-sib200", out / "eval-sib200")
    assert json.loads((out / "eval-sib200" / "stage.json").read_text())["status"] == "done"


# ------------------------------------------------------------------------------------------- read-only folder
def _read_only_argv(kind: str, folder: Path, ref: Path) -> list[str]:
    """A command that has work to do in ``folder`` (prepared from the reference run)."""
    if kind == "mtllm run":
        shutil.copytree(ref, folder)
        shutil.rmtree(folder / "eval-sib200")  # the last stage is still to do
        return _run_argv(folder)
    if kind == "mtllm adapt --resume":
        shutil.copytree(ref / "stage1", folder, ignore=shutil.ignore_patterns("final", "stage.json"))
        return _stage_argv("adapt", folder, ref) + ["--resume", "true"]  # an unfinished run, to continue
    folder.mkdir()
    return _stage_argv("evaluate", folder, ref)  # an empty folder


@pytest.mark.parametrize("kind", ["mtllm run", "mtllm adapt --resume", "mtllm evaluate"])
def test_read_only_output_folder_is_one_clear_line_and_loses_nothing(kind, ref, tmp_path):
    """An output folder that cannot be written: one line naming the folder, exit 2, every file as it was.

    Tests run as root here, where ``chmod`` does not stop writes: the folder is then made read-only inside the
    command (tests/fault_inject.py: every write, rename or removal in it fails with EACCES, as on a read-only
    mount); for other users it is ``chmod -R a-w``."""
    folder = tmp_path / "ro"
    argv = _read_only_argv(kind, folder, ref)
    before = _tree(folder)
    if os.geteuid() == 0:
        rc, log = _finish(argv, tmp_path / "ro.log", Plan("eacces", scope=str(folder)))
    else:  # pragma: no cover - the CI runs as root
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        try:
            rc, log = _finish(argv, tmp_path / "ro.log")
        finally:
            for p in reversed(paths):
                p.chmod(modes[p])
    assert _tree(folder) == before and _temporaries(folder) == []  # nothing lost or added
    assert rc == 2, log[-3000:]
    assert str(folder) in log.strip().splitlines()[-1] and "Traceback" not in log, log[-3000:]


# ------------------------------------------------------------------------------------------- corrupt caches
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _reshape(entry: Path, name: str, *, meta_too: bool) -> None:
    """Drop the last row of ``name``.npy (and, with ``meta_too``, say so in meta.json, so the entry is consistent
    in itself but does not fit its inputs)."""
    array = np.load(entry / f"{name}.npy")
    np.save(entry / f"{name}.npy", array[:-1])
    if meta_too:
        meta = json.loads((entry / "meta.json").read_text())
        meta["shapes"][name] = list(array[:-1].shape)
        (entry / "meta.json").write_text(json.dumps(meta))


#: corruption -> what it does to a cache entry folder, given the name of its main array
CORRUPTIONS: dict[str, Callable[[Path, str], None]] = {
    "truncated .npy": lambda entry, name: _truncate(entry / f"{name}.npy"),
    "missing .npy": lambda entry, name: (entry / f"{name}.npy").unlink(),
    "garbage meta.json": lambda entry, name: (entry / "meta.json").write_bytes(b"\x00\xff{garbage"),
    "meta.json is a JSON list": lambda entry, name: (entry / "meta.json").write_text("[1, 2, 3]"),
    "wrong shape (.npy vs meta)": lambda entry, name: _reshape(entry, name, meta_too=False),
    "wrong shape (.npy and meta agree)": lambda entry, name: _reshape(entry, name, meta_too=True),
}


@pytest.fixture(scope="module")
def cache_model():
    from mtllm import LoraSettings, MTLLMModel

    torch.manual_seed(0)
    return MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                           max_seq_length=64)


def _teacher_targets(model, cache_dir: Path) -> dict[str, np.ndarray]:
    from mtllm.training.stage1 import teacher_targets

    texts = [line for line in (ROOT / "tests" / "fixtures" / "english.txt").read_text().splitlines() if line.strip()]
    return {"targets": teacher_targets(model, texts, cache_dir=cache_dir, show_progress=False).numpy()}


def _pre_embeddings(model, cache_dir: Path) -> dict[str, np.ndarray]:
    from mtllm.tasks import load_examples
    from mtllm.training.distill import pre_embed

    examples = load_examples("sib200", "eng_Latn", "train", DATA)
    return {"embeddings": np.array(pre_embed(model, examples, cache_dir=cache_dir, teacher_id="teacher",
                                             batch_size=8, show_progress=False))}


def _encoder_outputs(model, cache_dir: Path) -> dict[str, np.ndarray]:
    from mtllm.training.encoder_cache import EncoderCache

    texts = [line for line in (ROOT / "tests" / "fixtures" / "english.txt").read_text().splitlines() if line.strip()]
    cache = EncoderCache(model, texts, cache_dir=cache_dir, batch_size=4)
    return {"hidden": np.array(cache.hidden), "offsets": np.array(cache.offsets)}


#: cache -> (how it is computed, its entry folders' prefix, its main array)
CACHES = {"teacher targets": (_teacher_targets, "teacher-", "targets"),
          "pre-embeddings": (_pre_embeddings, "preembed-", "embeddings"),
          "encoder outputs": (_encoder_outputs, "encoder-", "hidden")}


def _cache_cases() -> list:
    return [pytest.param(cache, corruption, id=f"{cache}-{corruption}") for cache in CACHES
            for corruption in CORRUPTIONS]


@pytest.mark.parametrize(("cache", "corruption"), _cache_cases())
def test_corrupt_cache_entry_is_rebuilt_equal_to_a_clean_one(cache, corruption, cache_model, tmp_path):
    """Every :class:`mtllm.training.caches.ArrayCache` user: a damaged entry is taken for absent and rebuilt; what
    the caller gets, and the entry left on disk, equal a clean build."""
    compute, prefix, name = CACHES[cache]
    clean = compute(cache_model, tmp_path / "clean")
    (entry,) = (tmp_path / "clean").glob(f"{prefix}*")
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "clean", damaged)
    CORRUPTIONS[corruption](damaged / entry.name, name)
    got = compute(cache_model, damaged)
    assert got.keys() == clean.keys()
    for key in clean:
        np.testing.assert_array_equal(got[key], clean[key], err_msg=key)
    assert _tree(damaged) == _tree(tmp_path / "clean")  # rebuilt: the same files, byte for byte
    assert _temporaries(damaged) == []


def test_corrupt_teacher_cache_in_a_real_run_gives_the_uninterrupted_result(ref, tmp_path):
    """``mtllm adapt`` into a folder whose teacher-target cache (from the reference run) was truncated: the entry is
    rebuilt and the run equals the uninterrupted one."""
    out = tmp_path / "out"
    shutil.copytree(ref / "stage1" / "cache", out / "cache")
    (entry,) = (out / "cache").glob("teacher-*")
    _truncate(entry / "targets.npy")
    _ok(_stage_argv("adapt", out, ref), tmp_path / "adapt.log")
    _assert_same_stage("adapt", ref / "stage1", out)
    assert _tree(out / "cache") == _tree(ref / "stage1" / "cache")


# translation cache (mtllm.baselines.translate_test): one JSON record a line after a meta line
TRANSLATE_TEXTS = ["Le chat dort sur le tapis chaud.", "Un chien court.", "Chat.", "Le parc.",
                   "Un chien court dans le parc chaque matin.", "Le chat dort."]


def _torn_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 8])


TRANSLATION_CORRUPTIONS = [
    pytest.param(_torn_last_line, id="torn last line"),
    pytest.param(_truncate, id="truncated to half"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\x00garbage\n"),
                 id="a line of binary garbage (not UTF-8)"),
    pytest.param(lambda p: p.write_text(p.read_text() + '{"k": 5, "t": null}\n[1, 2]\n"text"\n'),
                 id="records of the wrong types"),
    pytest.param(lambda p: p.write_bytes(b""), id="empty file"),
]


@pytest.fixture(scope="module")
def tiny_mt(tmp_path_factory):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from mtllm.sources.tiny import build_tiny_seq2seq

    path = build_tiny_seq2seq(tmp_path_factory.mktemp("tiny-m2m100"))
    return AutoModelForSeq2SeqLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _translator(tiny_mt, cache_dir: Path):
    from mtllm.baselines.translate_test import TranslateSettings, Translator

    settings = TranslateSettings(mt_model="tiny", cache_dir=str(cache_dir), max_new_tokens=6, batch_size=2)
    return Translator(*tiny_mt, settings=settings)


@pytest.mark.parametrize("corruption", TRANSLATION_CORRUPTIONS)
def test_corrupt_translation_cache_is_repaired_and_translations_equal_a_clean_run(corruption, tiny_mt, tmp_path):
    clean = _translator(tiny_mt, tmp_path / "clean").translate(TRANSLATE_TEXTS, "fra_Latn", progress=False)
    shutil.copytree(tmp_path / "clean", tmp_path / "damaged")
    translator = _translator(tiny_mt, tmp_path / "damaged")
    corruption(translator.cache_path("fra_Latn"))
    assert translator.translate(TRANSLATE_TEXTS, "fra_Latn", progress=False) == clean
    again = _translator(tiny_mt, tmp_path / "damaged")
    assert again.translate(TRANSLATE_TEXTS, "fra_Latn", progress=False) == clean
    assert again.last_stats.translated == 0  # the repaired cache holds every translation


def test_full_disk_while_appending_translations_keeps_the_finished_batches(tiny_mt, tmp_path):
    """The disk fills up in the middle of the second batch's cache records: the error is ENOSPC, the first
    batch's records stay usable, and the rerun (space freed) translates only the rest, equal to a clean run."""
    import errno

    clean = _translator(tiny_mt, tmp_path / "clean").translate(TRANSLATE_TEXTS, "fra_Latn", progress=False)
    translator = _translator(tiny_mt, tmp_path / "full")
    path = translator.cache_path("fra_Latn")
    uninstall = install(Plan("enospc", str(path), skip=1, partial=30))
    try:
        with pytest.raises(OSError) as err:
            translator.translate(TRANSLATE_TEXTS, "fra_Latn", progress=False)
    finally:
        uninstall()
    assert err.value.errno == errno.ENOSPC
    again = _translator(tiny_mt, tmp_path / "full")
    assert again.translate(TRANSLATE_TEXTS, "fra_Latn", progress=False) == clean
    assert 0 < again.last_stats.translated < len(TRANSLATE_TEXTS)  # the first batch came from the cache


# model caches: the tiny models (built on first use) and the pocket conversions (with a manifest)
@pytest.mark.parametrize("damage", ["truncated model.safetensors", "garbage config.json"])
def test_corrupt_tiny_model_cache_is_rebuilt_or_named(damage, tmp_path, monkeypatch):
    """A damaged ``$MTLLM_CACHE/tiny/xlmr`` is rebuilt (the same model as a clean build), or the error names the
    damaged file and what to do."""
    from mtllm.errors import UserError
    from mtllm.sources import load_encoder, tiny_path

    monkeypatch.setenv("MTLLM_CACHE", str(tmp_path / "cache"))
    folder = tiny_path("xlmr")
    clean = {k: v.clone() for k, v in load_encoder("tiny:xlmr").state_dict().items()}
    victim = folder / damage.split()[-1]
    if damage.startswith("truncated"):
        _truncate(victim)
    else:
        victim.write_bytes(b"\x00garbage{")
    try:
        rebuilt = load_encoder("tiny:xlmr").state_dict()
    except UserError as err:  # or one line naming the file
        assert victim.name in str(err) and str(folder) in str(err), err
        return
    assert rebuilt.keys() == clean.keys()
    for key in clean:
        torch.testing.assert_close(rebuilt[key], clean[key], rtol=0, atol=0)


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"format": 1, "files": []}', "\xff\xfe not UTF-8"])
def test_corrupt_pocket_manifest_triggers_a_new_conversion(manifest, tmp_path, monkeypatch):
    import importlib.metadata

    from mtllm.sources import pocket

    monkeypatch.setenv("MTLLM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 8)
    calls = []

    def convert(src: Path, out: Path) -> dict:
        calls.append(src)
        (out / "config.json").write_text("{}")
        (out / "weights.bin").write_bytes(src.read_bytes())
        return {}

    spec = pocket.PocketSpec(name="synthetic", package="numpy", version=importlib.metadata.version("numpy"),
                             license="test", description="test", source_sha256=None, locate=lambda scratch: source,
                             convert=convert)
    monkeypatch.setitem(pocket.POCKET_MODELS, "synthetic", spec)
    path = pocket.pocket_path("synthetic")
    clean = _tree(path)
    (path / pocket.MANIFEST_NAME).write_bytes(manifest.encode("latin-1"))
    assert pocket.pocket_path("synthetic") == path and len(calls) == 2
    rebuilt = _tree(path)
    assert {k: v for k, v in rebuilt.items() if k != pocket.MANIFEST_NAME} == \
        {k: v for k, v in clean.items() if k != pocket.MANIFEST_NAME}
    assert json.loads((path / pocket.MANIFEST_NAME).read_text())["files"].keys() == \
        {k for k in clean if k != pocket.MANIFEST_NAME}
