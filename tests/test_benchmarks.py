"""benchmarks/run.py --quick end to end (tiny models): it runs, writes its JSON, and its last line
is the machine-readable summary with positive ratios."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^stage1_speedup=(\S+) distill_speedup=(\S+) mtllm_vs_translate_test=(\S+)$")


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
    assert all(math.isfinite(r) and r > 0 for r in ratios), ratios
    assert sum(1 for line in lines if line.startswith("stage1_speedup=")) == 1

    result = json.loads(out.read_text())
    summary = result["summary"]
    assert abs(summary["stage1"]["speedup_total"]["median"] - ratios[0]) <= 5e-4  # printed with 3 decimals
    assert abs(summary["distill"]["speedup_epochs_ge2"]["median"] - ratios[1]) <= 5e-4
    assert abs(summary["inference"]["ratio"]["median"] - ratios[2]) <= 5e-4
    for stage in ("stage1", "distill"):
        sec = summary[stage]
        assert sec["same_examples_per_epoch"] is True
        assert sec["opt"]["padding_overhead"] < sec["naive"]["padding_overhead"]  # length grouping pads less
        for run in ("naive", "opt"):
            assert sec[run]["train_flops"]["executed"] > 0 and math.isfinite(sec[run]["final_epoch_loss"]["median"])
            curve = [e["median"] for e in sec[run]["epoch_loss"]]  # the loss curve: one mean per epoch
            assert len(curve) >= 2 and curve[-1] == sec[run]["final_epoch_loss"]["median"]
            assert curve[-1] < curve[0]  # both paths train
    inf = summary["inference"]
    assert inf["translate_test"]["mt_decode_s"]["median"] > 0 and inf["mtllm"]["encode_s"]["median"] > 0
    for check in summary["flop_check"].values():  # FlopCounterMode counts exactly the analytic matmuls
        assert abs(check["counted"] / check["analytic_matmul"] - 1) < 0.02
    assert summary["peak_fp32_gflops"]["median"] > 0
    assert {"infer_fp32_s", "infer_bf16_weights_s", "train_step_bf16_autocast_s"} <= set(summary["precision"])
    assert result["machine"]["nproc"] >= 1 and result["machine"]["torch"]


def test_unknown_ablation_is_a_clear_error():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--ablations", "bf17"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "bf17" in proc.stderr and "target_cache" in proc.stderr
