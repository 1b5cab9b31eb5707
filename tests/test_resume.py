"""Exact resume: with LoRA dropout (so random states matter) a run interrupted after a checkpoint and resumed
equals the uninterrupted run, on the CPU, on CUDA and with 2 processes; without restoring the random states it
would not; and ``metrics.jsonl`` holds every step once after a resume."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtllm.settings import ModelSettings
from mtllm.training import loop
from mtllm.training.checkpoint import latest_valid_checkpoint, list_checkpoints
from mtllm.training.loop import TrainingArgs
from mtllm.training.stage1 import Stage1Settings, run_stage1
from saved_run import max_weight_diff, metrics_records

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "english.txt")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def device(request, monkeypatch):
    """Train on this device (the device policy, $MTLLM_DEVICE, would pick a GPU when there is one)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # Accelerate fixes the device once per process
    monkeypatch.setenv("MTLLM_DEVICE", request.param)
    yield request.param
    AcceleratorState._reset_state(reset_partial_state=True)


def _run(out: Path, **overrides) -> None:
    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8,
                          lora_dropout=overrides.pop("lora_dropout", 0.1), max_seq_length=64)
    args = dict(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=12, save_steps=4, warmup_ratio=0.1,
                seed=0, progress=False, report_to="none")
    run_stage1(model, Stage1Settings(data=[DATA]), TrainingArgs(**dict(args, **overrides)))


def _max_loss_diff(a: Path, b: Path) -> float:
    ra, rb = metrics_records(a), metrics_records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    return max(abs(x["loss"] - y["loss"]) for x, y in zip(ra, rb))


def _interrupt_after_checkpoint(out: Path, monkeypatch, at_step: int, **overrides) -> None:
    real_save = loop._save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if args[5] == at_step:
            raise KeyboardInterrupt("simulated pre-emption")

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_save_checkpoint", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            _run(out, **overrides)
    assert latest_valid_checkpoint(out).name == f"step-{at_step:07d}"


def test_resume_with_dropout_equals_uninterrupted_run(device, tmp_path, monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import load

    _run(tmp_path / "full")
    assert PartialState().device.type == device
    _interrupt_after_checkpoint(tmp_path / "cut", monkeypatch, at_step=8)
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-no-rng")
    rng = load(latest_valid_checkpoint(tmp_path / "cut") / "random_states_0.pkl")
    assert {"random_state", "numpy_random_seed", "torch_manual_seed"} <= rng.keys()
    assert ("torch_cuda_manual_seed" in rng) == torch.cuda.is_available()  # saved whenever there is a GPU

    _run(tmp_path / "cut", resume=True)
    assert [r["step"] for r in metrics_records(tmp_path / "cut")] == list(range(1, 13))
    assert _max_loss_diff(tmp_path / "full", tmp_path / "cut") <= 1e-6
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut" / "final") <= 1e-6

    # The same resume with the random states left as they are: dropout draws other masks, the run diverges.
    real_load_state = Accelerator.load_state

    def load_state_keeping_rng(self, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(torch, "set_rng_state", lambda state: None)
            patch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
            return real_load_state(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "load_state", load_state_keeping_rng)
    _run(tmp_path / "cut-no-rng", resume=True)
    assert _max_loss_diff(tmp_path / "full", tmp_path / "cut-no-rng") > 1e-4
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut-no-rng" / "final") > 1e-4


def test_resume_truncates_metrics_to_the_checkpoint(tmp_path):
    """A run that logged steps 1..6 (and a line cut short by the crash) resumes from its step-4 checkpoint:
    metrics.jsonl then holds every step once, with the losses of the uninterrupted run."""
    out = tmp_path / "run"
    _run(out, lora_dropout=0.0, max_steps=6, save_steps=2, keep_checkpoints=5)
    before = metrics_records(out)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002", "step-0000004"]
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "lo')
    _run(out, lora_dropout=0.0, max_steps=6, save_steps=2, keep_checkpoints=5, resume=True)
    after = metrics_records(out)
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in after] == [r["loss"] for r in before]


def test_every_process_saves_and_restores_its_random_states(tmp_path):
    """2 processes (torchrun, gloo) with dropout: the checkpoint holds both processes' random states, and
    resuming from it on 2 processes reproduces the uninterrupted 2-process run."""
    from accelerate.utils import load

    # CPU processes even where a GPU exists: two ranks on one GPU would ask for cuda:1 (seen on an H100)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mtllm",
           "adapt", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", f"[{DATA}]", "--lora_dropout", "0.1",
           "--max_steps", "8", "--batch_size", "4", "--save_steps", "4", "--progress", "false",
           "--report_to", "none", "--log_steps", "100"]
    full = subprocess.run(cmd + ["--output_dir", str(tmp_path / "full")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    ckpt = latest_valid_checkpoint(tmp_path / "full")
    assert ckpt.name == "step-0000004"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert {"random_states_0.pkl", "random_states_1.pkl", "trainables.safetensors"} <= manifest.keys()
    assert not any(name.startswith("model") for name in manifest)  # no frozen base model in checkpoints
    states = [load(ckpt / f"random_states_{rank}.pkl") for rank in (0, 1)]
    assert not torch.equal(states[0]["torch_manual_seed"], states[1]["torch_manual_seed"])

    shutil.copytree(tmp_path / "full", tmp_path / "re")
    shutil.rmtree(tmp_path / "re" / "final")
    resumed = subprocess.run(cmd + ["--output_dir", str(tmp_path / "re"), "--resume", "true"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step 4" in resumed.stdout
    assert [r["step"] for r in metrics_records(tmp_path / "re")] == list(range(1, 9))
    assert _max_loss_diff(tmp_path / "full", tmp_path / "re") <= 1e-6
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "re" / "final") <= 1e-6
