"""benchmarks/run.py --quick end to end (tiny models): it runs, writes its JSON, its summary ratios
are those of the recorded times, and its last line is that summary, machine-readable."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^stage1_speedup=(\S+) distill_speedup=(\S+) mtllm_vs_translate_test=(\S+)$")


def _median(values):
    import statistics

    return statistics.median(values)


def test_quick_benchmark_last_line_and_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # one thread: on a shared 2-core machine several OpenMP threads can stall for seconds at barriers
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--threads", "1",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.rstrip("\n").splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-5:]
    ratios = [float(x) for x in match.groups()]
    assert sum(1 for line in lines if line.startswith("stage1_speedup=")) == 1

    result = json.loads(out.read_text())
    summary, reps = result["summary"], result["repeats"]
    assert len(reps) == result["args"]["repeats"] == 1
    epochs = result["args"]["epochs"]
    # every ratio is recomputed here from the recorded times of each repeat (median over repeats)
    for stage in ("stage1", "distill"):
        for run in ("naive", "opt"):
            for r in reps:
                rec = r[stage][run]
                assert rec["total_s"] == pytest.approx(rec["setup_s"] + rec["train_s"])
                assert len(rec["epoch_s"]) == epochs
                assert sum(rec["epoch_s"]) == pytest.approx(rec["train_s"], rel=0.05, abs=0.01)
        sec = summary[stage]
        assert sec["speedup_total"]["median"] == pytest.approx(
            _median([r[stage]["naive"]["total_s"] / r[stage]["opt"]["total_s"] for r in reps]))
        assert sec["speedup_epochs_ge2"]["median"] == pytest.approx(
            _median([sum(r[stage]["naive"]["epoch_s"][1:]) / sum(r[stage]["opt"]["epoch_s"][1:]) for r in reps]))
    inf_reps = [r["inference"] for r in reps]
    for r in inf_reps:
        for system in ("mtllm", "translate_test"):
            assert r[system]["examples_per_s"] == pytest.approx(r["n"] / r[system]["total_s"])
        tt = r["translate_test"]
        assert tt["mt_decode_s"] == pytest.approx(max(tt["translate_s"] - tt["mt_encode_s"], 0.0))
        assert tt["total_s"] == pytest.approx(tt["translate_s"] + tt["llm_classify_s"])
    assert summary["inference"]["ratio"]["median"] == pytest.approx(
        _median([r["translate_test"]["total_s"] / r["mtllm"]["total_s"] for r in inf_reps]))
    # the printed last line is the summary (3 decimals)
    assert abs(summary["stage1"]["speedup_total"]["median"] - ratios[0]) <= 5e-4
    assert abs(summary["distill"]["speedup_epochs_ge2"]["median"] - ratios[1]) <= 5e-4
    assert abs(summary["inference"]["ratio"]["median"] - ratios[2]) <= 5e-4
    for stage in ("stage1", "distill"):
        sec = summary[stage]
        assert sec["same_examples_per_epoch"] is True
        assert sec["opt"]["padding_overhead"] < sec["naive"]["padding_overhead"]  # length grouping pads less
        for run in ("naive", "opt"):
            assert sec[run]["padding_overhead"] == pytest.approx(
                sec[run]["train_flops"]["executed"] / sec[run]["train_flops"]["useful"] - 1)
            for r in reps:  # the loss curve: each epoch's mean over its steps' recorded losses
                rec = r[stage][run]
                per_epoch = rec["steps"] // epochs
                assert len(rec["step_loss"]) == rec["steps"] == per_epoch * epochs
                assert rec["epoch_loss"] == pytest.approx(
                    [sum(rec["step_loss"][e * per_epoch:(e + 1) * per_epoch]) / per_epoch for e in range(epochs)])
            curve = [e["median"] for e in sec[run]["epoch_loss"]]
            assert len(curve) == epochs >= 2 and curve[-1] == sec[run]["final_epoch_loss"]["median"]
            assert curve[-1] < curve[0]  # both paths train
    for check in summary["flop_check"].values():  # FlopCounterMode counts exactly the analytic matmuls
        assert abs(check["counted"] / check["analytic_matmul"] - 1) < 0.02
    assert summary["peak_fp32_gflops"]["median"] == pytest.approx(
        _median([r["peak"]["fp32_flops"] / 1e9 for r in reps]))
    assert {"infer_fp32_s", "infer_bf16_weights_s", "train_step_bf16_autocast_s"} <= set(summary["precision"])
    assert result["machine"]["nproc"] == os.cpu_count() and result["machine"]["torch"] == torch.__version__


def test_unknown_ablation_is_a_clear_error():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--ablations", "bf17"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "bf17" in proc.stderr and "target_cache" in proc.stderr
