"""Ctrl-C and resume: a real SIGINT during training finishes the step, writes a checkpoint at it and exits 130
with one line saying how to go on, no traceback; ``--resume`` then ends exactly where an uninterrupted run
ends. ``--resume`` with no checkpoint is exactly a fresh run, and no metric or evaluation is lost or
repeated across a resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtllm.cli import main
from mtllm.settings import ModelSettings
from mtllm.training import loop
from mtllm.training.checkpoint import latest_valid_checkpoint, list_checkpoints
from mtllm.training.finetune import TaskSettings, run_finetune
from mtllm.training.loop import TrainingArgs
from mtllm.training.stage1 import Stage1Settings, run_stage1
from saved_run import max_weight_diff, metrics_records

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "english.txt")
PIPELINE_DATA = str(ROOT / "tests" / "fixtures" / "pipeline")
MODEL = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.1,
                      max_seq_length=64)


# ------------------------------------------------------------------------------------- a real Ctrl-C
def _popen(argv: list[str]) -> subprocess.Popen:
    # SIGINT at its default, so that the child's Python turns it into KeyboardInterrupt (a shell running
    # this suite in the background may have it ignored)
    return subprocess.Popen([sys.executable, "-m", "mtllm", *argv], cwd=ROOT, text=True,
                            env=dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture
def sigint_at_default():
    """The in-process Ctrl-C tests need Python's own SIGINT handler: a shell that runs this suite in the
    background (``nohup ... &``) starts it with SIGINT ignored, where the training loop rightly leaves it alone."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _interrupt_after(proc: subprocess.Popen, metrics: Path, n_steps: int) -> tuple[str, str]:
    """Send SIGINT once ``metrics`` holds ``n_steps`` records; return the process's stdout and stderr."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n_steps:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=300)


def _stopped_at(stderr: str) -> int:
    """The step the one-line report names (and checks that it is the only line of the report)."""
    lines = [line for line in stderr.splitlines() if line.startswith("mtllm ")]
    assert len(lines) == 1, stderr[-3000:]
    found = re.search(r"stopped by Ctrl-C after step (\d+)/", lines[0])
    assert found, lines[0]
    return int(found.group(1))


def test_ctrl_c_checkpoints_the_step_and_resume_equals_the_uninterrupted_run(tmp_path, capsys):
    """A real `mtllm adapt` process gets SIGINT after its third step. No periodic checkpoints (save_steps 0): the
    only checkpoint is the one Ctrl-C writes. With LoRA dropout, so the random states in it matter. The reference
    and the resumed runs run in this process, on one thread as the child does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _interrupted_adapt_then_resume(tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def _interrupted_adapt_then_resume(tmp_path: Path, capsys) -> None:
    common = ["adapt", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", f"[{DATA}]", "--max_steps", "100",
              "--save_steps", "0", "--lora_dropout", "0.1", "--progress", "false", "--report_to", "none",
              "--log_steps", "1000"]
    assert main([*common, "--output_dir", str(tmp_path / "full")]) == 0

    cut = tmp_path / "cut"
    proc = _popen([*common, "--output_dir", str(cut)])
    _, err = _interrupt_after(proc, cut / "metrics.jsonl", 3)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    step = _stopped_at(err)
    assert 3 <= step < 100
    assert f"checkpoint {cut / 'checkpoints' / f'step-{step:07d}'}" in err
    assert "rerun the same command with --resume" in err
    assert [p.name for p in list_checkpoints(cut)] == [f"step-{step:07d}"]
    assert latest_valid_checkpoint(cut).name == f"step-{step:07d}"
    assert [r["step"] for r in metrics_records(cut)] == list(range(1, step + 1))  # the finished step is logged, once
    assert not (cut / "final").exists()

    capsys.readouterr()
    assert main([*common, "--output_dir", str(cut), "--resume"]) == 0
    assert f"at step {step}" in capsys.readouterr().out
    assert [r["step"] for r in metrics_records(cut)] == list(range(1, 101))
    assert [r["loss"] for r in metrics_records(cut)] == pytest.approx([r["loss"]
                                                                       for r in metrics_records(tmp_path / "full")],
                                                             abs=1e-6)
    assert max_weight_diff(tmp_path / "full" / "final", cut / "final") <= 1e-6


def test_ctrl_c_in_the_middle_of_a_step_in_mtllm_run(tmp_path, capsys, monkeypatch, sigint_at_default):
    """A real SIGINT that arrives in the middle of step 3 (inside its forward pass), in `mtllm run`: step 3 is
    finished and checkpointed, the command says to rerun it (no --resume there) and exits 130; the rerun ends
    with the weights and the loss curve of an uninterrupted run."""
    import mtllm.training.stage1 as stage1

    def run(out: Path) -> int:
        return main(["run", "--config", str(ROOT / "configs" / "tiny-sib200.yaml"), "--data-dir", PIPELINE_DATA,
                     "--output-dir", str(out), "--stages", "[stage1]", "--max_steps", "12", "--lora_dropout", "0.1",
                     "--progress", "false", "--report_to", "none"])

    assert run(tmp_path / "full") == 0
    real_loss, calls = stage1.stage1_loss, {"n": 0}

    def loss_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # delivered while step 3 is being computed
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(stage1, "stage1_loss", loss_then_ctrl_c)
    capsys.readouterr()
    assert run(tmp_path / "cut") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _stopped_at(err) == 3
    assert "to continue, rerun the same command (finished stages are skipped" in err and "--resume" not in err
    stage = tmp_path / "cut" / "stage1"
    assert json.loads((stage / "stage.json").read_text())["status"] == "running"
    assert [p.name for p in list_checkpoints(stage)] == ["step-0000003"]
    assert [r["step"] for r in metrics_records(stage)] == [1, 2, 3]

    monkeypatch.setattr(stage1, "stage1_loss", real_loss)
    assert run(tmp_path / "cut") == 0
    assert "resumed from" in capsys.readouterr().out
    full = tmp_path / "full" / "stage1"
    assert [r["step"] for r in metrics_records(stage)] == list(range(1, 13))
    assert [r["loss"] for r in metrics_records(stage)] == pytest.approx(
        [r["loss"] for r in metrics_records(full)], abs=1e-6)
    assert max_weight_diff(full / "final", stage / "final") <= 1e-6
    assert json.loads((stage / "stage.json").read_text())["status"] == "done"


def test_a_second_ctrl_c_stops_at_once(sigint_at_default):
    before = signal.getsignal(signal.SIGINT)
    with loop._StopRequest("test") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between two bytecodes of the main thread
            if stop.requested:
                break
            time.sleep(0.001)
        assert stop.requested  # the first one only asks
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("command", ["adapt", "run"])
def test_ctrl_c_outside_training_is_one_line_and_130(command, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the texts load (no training yet): one line saying how to go on, exit 130."""
    import mtllm.training.stage1 as stage1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage1, "load_stage1_texts", interrupted)
    config = "tiny.yaml" if command == "adapt" else "tiny-sib200.yaml"
    argv = [command, "--config", str(ROOT / "configs" / config), "--output_dir", str(tmp_path / "out"),
            "--progress", "false", "--report_to", "none"]
    argv += ["--data", f"[{DATA}]"] if command == "adapt" else ["--data_dir", PIPELINE_DATA, "--stages", "[stage1]"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    report = [line for line in err.splitlines() if line.startswith("mtllm ")]
    assert len(report) == 1 and report[0].startswith(f"mtllm {command}: interrupted (Ctrl-C); to continue"), err
    assert ("--resume" in err) == (command == "adapt")


# ------------------------------------------------------------------------------------- resume = fresh
def _stage1_args(out: Path, **kw) -> TrainingArgs:
    return TrainingArgs(**dict(dict(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=6,
                                    warmup_ratio=0.1, seed=0, progress=False, report_to="none"), **kw))


def test_resume_without_a_checkpoint_is_exactly_a_fresh_run(tmp_path, monkeypatch):
    """--resume on a folder with no valid checkpoint (a missing folder, or what a run with another seed left when
    it was killed: metrics, config, initial/, a torn checkpoint) trains the same weights as a fresh run: the
    projection is calibrated, and nothing left there is taken for this run's."""
    stage1 = Stage1Settings(data=[DATA], save_initial=True)
    run_stage1(MODEL, stage1, _stage1_args(tmp_path / "fresh"))
    run_stage1(MODEL, stage1, _stage1_args(tmp_path / "missing", resume=True))

    left = tmp_path / "leftovers"
    real = loop._save_checkpoint

    def killed(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(loop, "_save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(MODEL, stage1, _stage1_args(left, save_steps=2, seed=1))
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    victim = list_checkpoints(left)[0] / "trainables.safetensors"
    victim.write_bytes(victim.read_bytes()[:50])  # torn: no valid checkpoint left
    assert latest_valid_checkpoint(left) is None and (left / "initial").exists()
    run_stage1(MODEL, stage1, _stage1_args(left, resume=True))

    for out in (tmp_path / "missing", left):
        assert max_weight_diff(tmp_path / "fresh" / "initial", out / "initial") == 0.0, out  # calibrated, not seed 1's
        assert max_weight_diff(tmp_path / "fresh" / "final", out / "final") == 0.0, out
        assert [r["loss"] for r in metrics_records(out)] == [r["loss"] for r in metrics_records(tmp_path / "fresh")]
        assert list_checkpoints(out) == []  # the torn checkpoint of the killed run is gone


TASK = TaskSettings(task="sib200", data_dir=PIPELINE_DATA, eval_batch_size=8)
LLM = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                    max_seq_length=64)


def _finetune_args(out: Path, **kw) -> TrainingArgs:
    return TrainingArgs(**dict(dict(output_dir=str(out), learning_rate=3e-3, head_lr=3e-2, batch_size=4, num_epochs=3,
                                    warmup_ratio=0.1, seed=0, progress=False, report_to="none", log_steps=100), **kw))


def test_finetune_resume_keeps_every_evaluation_and_the_best(tmp_path, monkeypatch):
    """A teacher interrupted after its epoch-2 checkpoint and resumed: its summary lists all three evaluations,
    metrics.jsonl each step once, and best/ + best_score.json are those of the uninterrupted run. A stale
    best_score.json in a folder with no checkpoint is not taken for the run's (--resume = fresh)."""
    full = run_finetune(LLM, TASK, _finetune_args(tmp_path / "full"))
    steps_per_epoch = full["evals"][0]["step"]
    real = loop._save_checkpoint

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        if args[5] == 2 * steps_per_epoch:
            raise KeyboardInterrupt("simulated pre-emption")

    monkeypatch.setattr(loop, "_save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(LLM, TASK, _finetune_args(tmp_path / "cut", save_steps=steps_per_epoch))
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    resumed = run_finetune(LLM, TASK, _finetune_args(tmp_path / "cut", save_steps=steps_per_epoch, resume=True))
    assert [e["epoch"] for e in resumed["evals"]] == [1, 2, 3]
    assert resumed["evals"] == full["evals"] and resumed["best"] == full["best"]
    assert [r["step"] for r in metrics_records(tmp_path / "cut")] == [
        r["step"] for r in metrics_records(tmp_path / "full")]
    assert json.loads((tmp_path / "cut" / "best_score.json").read_text()) == full["best"]
    assert max_weight_diff(tmp_path / "full" / "best", tmp_path / "cut" / "best") <= 1e-6

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "best_score.json").write_text(json.dumps({"accuracy": 1.0, "epoch": 9, "step": 99}))
    again = run_finetune(LLM, TASK, _finetune_args(stale, resume=True))
    assert again["best"] == full["best"] and again["evals"] == full["evals"]
    assert max_weight_diff(tmp_path / "full" / "best", stale / "best") == 0.0
