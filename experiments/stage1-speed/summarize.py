"""Collect issue 20's stage-1 speed cells into one markdown table and a copy of each cell's small files.

    python experiments/stage1-speed/summarize.py [--runs runs/speed] [--out experiments/stage1-speed]

Reads, per cell folder under --runs: ``stage1/stage.json`` (the stage's wall time), ``stage1/metrics.jsonl`` (steps,
seconds per step, the held-out English FVU every eval_steps), ``retrieval-all/results.json`` (English<->X top-1,
the main job's protocol: 50 topic-stratified SIB-200 test sentences, 59 languages, the MT-LLM alone) and
``retrieval-fvu/results.json`` (the same protocol on one X language with the LLM as well, for the FVU of the
student's English against the teacher's, the quantity the issue's 0.616 target is). Writes ``results.md`` and
``results.json`` into --out and copies those files to --out/cells/<cell>/. Nothing here trains or evaluates.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from statistics import mean, median

ROOT = Path(__file__).resolve().parents[2]


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def cell_row(folder: Path) -> dict:
    stage = _read(folder / "stage1" / "stage.json") or {}
    summary = stage.get("summary") or _read(folder / "stage1" / "stage1_summary.json") or {}
    rows = [json.loads(line) for line in (folder / "stage1" / "metrics.jsonl").read_text().splitlines() if line]
    evals = [(r["step"], r["heldout_fvu"]) for r in rows if "heldout_fvu" in r]
    plain = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:]) if "heldout_fvu" not in b]
    retrieval = _read(folder / "retrieval-all" / "results.json")
    probe = _read(folder / "retrieval-fvu" / "results.json")
    eng_fvu = None
    if probe and probe.get("measures"):
        eng_fvu = probe["measures"].get("FVU against the teacher's English", {}).get("systems", {}).get(
            "mtllm", {}).get("eng_Latn")
    return {
        "cell": folder.name, "student_layers": summary.get("student_layers"), "steps": summary.get("steps"),
        "stopped_by": summary.get("stopped_by"), "stage_seconds": stage.get("seconds"),
        "loop_seconds": summary.get("seconds"), "median_step_s": round(median(plain), 3) if plain else None,
        "heldout_fvu": evals, "best": summary.get("best"),
        "retrieval_top1": round(100 * mean(retrieval["systems"]["mtllm"].values()), 1) if retrieval else None,
        "retrieval_langs": len(retrieval["systems"]["mtllm"]) if retrieval else None,
        "eng_fvu": eng_fvu,
    }


def table(cells: list[dict]) -> str:
    head = ("| cell | k | steps (stop) | stage 1 wall s | s/step (median) | held-out FVU, best (step) | "
            "English FVU vs teacher (50 SIB-200 test) | retrieval top-1 %, 59 languages |")
    lines = [head, "|" + "---|" * 8]
    for c in cells:
        best = c["best"] or {}
        lines.append(f"| {c['cell']} | {c['student_layers'] or 'all'} | {c['steps']} ({c['stopped_by'] or 'max_steps'})"
                     f" | {c['stage_seconds']} | {c['median_step_s']} | "
                     f"{best.get('fvu', float('nan')):.3f} ({best.get('step')}) | "
                     f"{'%.3f' % c['eng_fvu'] if c['eng_fvu'] is not None else 'not run'} | "
                     f"{c['retrieval_top1'] if c['retrieval_top1'] is not None else 'not run'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "speed"))
    p.add_argument("--out", default=str(ROOT / "experiments" / "stage1-speed"))
    args = p.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    cells = [cell_row(f) for f in sorted(runs.iterdir()) if (f / "stage1" / "metrics.jsonl").exists()]
    for c in cells:
        dest = out / "cells" / c["cell"]
        dest.mkdir(parents=True, exist_ok=True)
        for rel in ("stage1/metrics.jsonl", "stage1/stage.json", "stage1/stage1_summary.json",
                    "retrieval-all/results.json", "retrieval-all/results.md", "retrieval-fvu/results.json"):
            src = runs / c["cell"] / rel
            if src.exists():
                shutil.copyfile(src, dest / rel.replace("/", "-"))
    (out / "results.json").write_text(json.dumps(cells, indent=1))
    (out / "results.md").write_text(table(cells))
    print(table(cells))


if __name__ == "__main__":
    main()
