"""Plot a stage's loss curve from its metrics.jsonl (MSE and FVU for stage 1, loss for stage 2).

    python experiments/plot_curve.py runs/pocket/stage1/metrics.jsonl docs/pocket-stage1-curve.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(metrics: str, out: str, window: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    keys = [k for k in ("mse", "fvu", "loss") if k in rows[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4))
    axes = [axes] if len(keys) == 1 else list(axes)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes, keys):
        values = [r[key] for r in rows]
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        ax.plot(steps, values, alpha=0.3, label="per step")
        ax.plot(steps, smooth, label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
