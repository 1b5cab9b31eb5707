"""Stage 1 (self-distillation) on tiny models: the loss falls, resume equals an uninterrupted run,
runs are reproducible, and faults stop cleanly with the last good checkpoint kept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtllm.training import loop
from mtllm.errors import CheckpointError, TrainingDiverged
from mtllm.training.checkpoint import latest_valid_checkpoint, list_checkpoints, verify_checkpoint
from mtllm.training.loop import TrainingArgs
from mtllm.settings import ModelSettings
from mtllm.training.stage1 import Stage1Settings, run_stage1
from saved_run import max_weight_diff

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "english.txt")


def _settings(out: Path, **overrides):
    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          max_seq_length=64)
    stage1 = Stage1Settings(data=[DATA])
    args = dict(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=30, warmup_ratio=0.1,
                log_steps=10, save_steps=0, seed=0, progress=False, report_to="none")
    args.update(overrides)
    return model, stage1, TrainingArgs(**args)


def test_stage1_loss_falls_over_30_steps(tmp_path):
    summary = run_stage1(*_settings(tmp_path))
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 30 and {"loss", "mse", "fvu", "lr"} <= history[0].keys()
    first = sum(h["mse"] for h in history[:5]) / 5
    last = sum(h["mse"] for h in history[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert summary["steps"] == 30 and (tmp_path / "final" / "config.json").exists()


def test_same_seed_same_metrics(tmp_path):
    run_stage1(*_settings(tmp_path / "a", max_steps=8))
    run_stage1(*_settings(tmp_path / "b", max_steps=8))
    ma = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line)["loss"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb
    assert max_weight_diff(tmp_path / "a" / "final", tmp_path / "b" / "final") == 0.0


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    run_stage1(*_settings(tmp_path / "full", max_steps=12, save_steps=4))

    real_save = loop._save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if args[5] == 8:  # step
            raise KeyboardInterrupt("simulated pre-emption after the step-8 checkpoint")

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(*_settings(tmp_path / "cut", max_steps=12, save_steps=4))
    monkeypatch.setattr(loop, "_save_checkpoint", real_save)
    assert latest_valid_checkpoint(tmp_path / "cut").name == "step-0000008"
    run_stage1(*_settings(tmp_path / "cut", max_steps=12, save_steps=4, resume=True))
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut" / "final") <= 1e-6
    curve = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert curve[-4:] == [9, 10, 11, 12]


def test_kill_9_mid_run_then_resume_matches(tmp_path):
    """A real subprocess is killed with SIGKILL right after a checkpoint appears; --resume finishes it."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    common = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--data", f"[{DATA}]", "--max_steps", "300",
              "--save_steps", "25", "--progress", "false", "--report_to", "none", "--log_steps", "100"]
    cmd = [sys.executable, "-m", "mtllm", "adapt"]
    subprocess.run(cmd + common + ["--output_dir", str(tmp_path / "full")], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    proc = subprocess.Popen(cmd + common + ["--output_dir", str(tmp_path / "cut")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.startswith("step-") for p in ckpts.iterdir()):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "final").exists()
    resumed = subprocess.run(cmd + common + ["--output_dir", str(tmp_path / "cut"), "--resume", "true"],
                             env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut" / "final") <= 1e-6


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
    run_stage1(*_settings(tmp_path, max_steps=10, save_steps=3, keep_checkpoints=5))
    ckpts = list_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["step-0000003", "step-0000006", "step-0000009"]
    victim = ckpts[-1] / "trainables.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(ckpts[-1])
    assert latest_valid_checkpoint(tmp_path) == ckpts[-2]


def test_nan_loss_stops_and_names_step_keeping_checkpoint(tmp_path, monkeypatch):
    from mtllm.modeling.model import MTLLMModel

    real_forward = MTLLMModel.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if self.training and calls["n"] > 6:
            out.pooled = out.pooled * float("nan")
        return out

    monkeypatch.setattr(MTLLMModel, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"at step \d+ .*examples .*last good checkpoint") as err:
        run_stage1(*_settings(tmp_path, max_steps=10, save_steps=2))
    good = latest_valid_checkpoint(tmp_path)
    assert good is not None and str(good) in str(err.value)
    assert not (tmp_path / "final").exists()


def test_full_disk_on_checkpoint_is_clear_and_keeps_old_ones(tmp_path, monkeypatch):
    run_stage1(*_settings(tmp_path, max_steps=4, save_steps=2))
    before = latest_valid_checkpoint(tmp_path)
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import safetensors.torch

    # the checkpoint writer imports safetensors.torch.save_file when it writes (raising=True: must exist)
    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    accelerator = loop.make_accelerator(TrainingArgs(output_dir=str(tmp_path), report_to="none"))
    layer = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(layer, torch.optim.SGD(layer.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(CheckpointError, match="No space left on device.*--resume"):
        loop._save_checkpoint(accelerator, model, optimizer, scheduler, tmp_path, 99, [], 2)
    assert latest_valid_checkpoint(tmp_path) == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []  # no temporary
