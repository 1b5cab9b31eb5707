"""Stage 1 under torchrun with 2 CPU processes (gloo): same loss curve as 1 process at the same global
batch, only rank 0 writes checkpoints and logs, and a 2-process checkpoint resumes in 1 process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "english.txt")
COMMON = ["adapt", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", f"[{DATA}]", "--max_steps", "12",
          "--batch_size", "4", "--save_steps", "6", "--keep_checkpoints", "5", "--progress", "false",
          "--report_to", "none", "--log_steps", "100"]


def _env():
    # CPU processes even where a GPU exists: two ranks on one GPU would ask for cuda:1 (seen on an H100)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")


def _single(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtllm", *COMMON, "--output_dir", str(out), *extra],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _two(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mtllm", *COMMON, "--output_dir", str(out), *extra],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _curve(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    one = _single(root / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _two(root / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    return root, two


def test_two_processes_match_one_process_loss_curve(runs):
    root, _ = runs
    one, two = _curve(root / "one"), _curve(root / "two")
    assert len(one) == len(two) == 12
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-3, (one, two)


def test_only_rank0_writes(runs):
    root, two = runs
    lines = (root / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12  # one record per step, not one per rank
    assert two.stdout.count("[stage1] saved") == 1
    assert [p.name for p in sorted((root / "two" / "checkpoints").iterdir())] == ["step-0000006"]


def test_resume_two_process_checkpoint_in_one_process(runs, tmp_path):
    root, _ = runs
    import shutil

    shutil.copytree(root / "two", tmp_path / "re")
    shutil.rmtree(tmp_path / "re" / "final")
    first_six = (root / "two" / "metrics.jsonl").read_text().splitlines()[:6]
    (tmp_path / "re" / "metrics.jsonl").write_text("\n".join(first_six) + "\n")
    res = _single(tmp_path / "re", "--resume", "true")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "step 6" in res.stdout
    resumed, reference = _curve(tmp_path / "re"), _curve(root / "one")
    assert max(abs(a - b) for a, b in zip(resumed[6:], reference[6:])) < 1e-3


def test_distillation_runs_under_torchrun(tmp_path):
    """Task training (here the cross-entropy variant, no teacher needed) on 2 processes matches 1 process."""
    data = str(ROOT / "tests" / "fixtures" / "pipeline")
    args = ["distill", "--config", str(ROOT / "configs" / "tiny.yaml"), "--task", "sib200", "--data_dir", data,
            "--objective", "ce", "--max_steps", "6", "--batch_size", "4", "--progress", "false",
            "--report_to", "none", "--eval_batch_size", "8"]
    one = subprocess.run([sys.executable, "-m", "mtllm", *args, "--output_dir", str(tmp_path / "one")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mtllm", *args, "--output_dir", str(tmp_path / "two")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3, (a, b)
