"""Summarise a finished `mtllm run` folder as Markdown: stage wall times, the stage-1 curve, and every
results table (retrieval, eval-TASK) side by side with averages.

    python experiments/summarize_run.py runs/pocket > /tmp/summary.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def table(results: dict, order: list[str] | None = None) -> str:
    systems = order or list(results["systems"])
    systems = [s for s in systems if s in results["systems"]]
    langs = sorted(results["n_examples"], key=lambda c: (c != results.get("train_lang", "eng_Latn"), c))
    lines = ["| lang | n | " + " | ".join(systems) + " |", "|---|---|" + "---|" * len(systems)]
    for lang in langs:
        cells = [_pct(results["systems"][s].get(lang)) for s in systems]
        lines.append(f"| {lang} | {results['n_examples'][lang]} | " + " | ".join(cells) + " |")
    avg = results.get("averages", {})
    lines.append("| **average** | | " + " | ".join(f"**{_pct(avg.get(s))}**" for s in systems) + " |")
    non_en = results.get("averages_non_english")
    if non_en:
        lines.append("| average without English | | " + " | ".join(_pct(non_en.get(s)) for s in systems) + " |")
    return "\n".join(lines)


def main(root: str) -> None:
    root_p = Path(root)
    out = []
    for stage_json in sorted(root_p.glob("*/stage.json")):
        info = json.loads(stage_json.read_text())
        out.append(f"- `{stage_json.parent.name}`: {info.get('status')}, {info.get('seconds', '?')} s")
    metrics = root_p / "stage1" / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        def mean(key, part):
            vals = [r[key] for r in part]
            return sum(vals) / len(vals)
        first, last = rows[:20], rows[-20:]
        out.append(f"\nstage 1: {len(rows)} steps; mean of the first 20 steps MSE {mean('mse', first):.3f} / FVU "
                   f"{mean('fvu', first):.3f}; last 20 steps MSE {mean('mse', last):.3f} / FVU "
                   f"{mean('fvu', last):.3f}; "
                   f"training time {rows[-1]['elapsed_s']:.0f} s")
    for res in sorted(root_p.glob("*/results.json")):
        data = json.loads(res.read_text())
        out.append(f"\n### {res.parent.name} ({data['task']}, {data['metric']})\n")
        order = ["mtllm_before_stage1", "mtllm", "llm", "encoder", "translate_test"]
        out.append(table(data,
                         [s for s in order if s in data["systems"]] + [s for s in data["systems"] if s not in order]))
        for note in data.get("notes", []):
            out.append(f"\n- {note}")
        if "seconds" in data:
            out.append(f"\n- seconds per system: {data['seconds']}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
