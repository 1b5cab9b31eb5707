"""Collect issue 20's stage-1 speed cells into one markdown table and a copy of each cell's small files.

    python experiments/stage1-speed/summarize.py [--runs runs/speed] [--out experiments/stage1-speed]

Reads, per cell folder under --runs: ``stage1/stage.json`` (the stage's wall time), ``stage1/metrics.jsonl`` (steps,
seconds per step, the held-out English FVU every eval_steps), ``retrieval-all/results.json`` (English<->X top-1,
the main job's protocol: 50 topic-stratified SIB-200 test sentences, 59 languages, the MT-LLM alone) and
``retrieval-fvu/results.json`` (the same protocol on one X language with the LLM as well, for the FVU of the
student's English against the teacher's, the quantity the issue's 0.616 target is) and, where
``downstream.sh`` ran, ``distill-sib200/stage.json`` and ``eval-sib200/results.json`` (the MT-LLM distilled from the
main job's teacher, on issue 12's 15 fixed languages + English). Writes ``results.md`` (the stage-1 table, then the
lever table on the 15 languages with the main job's runs before and after issue 20 as rows, read from
experiments/pocket/) and ``results.json`` into --out and copies those files to --out/cells/<cell>/. Nothing here
trains or evaluates.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from statistics import mean, median, stdev

ROOT = Path(__file__).resolve().parents[2]
#: issue 12's fixed subset of SIB-200 languages spanning resource levels (experiments/stage1-levers/common.yaml)
SUBSET = ["fra_Latn", "rus_Cyrl", "zho_Hans", "arb_Arab", "hin_Deva", "swh_Latn", "tur_Latn", "tha_Thai", "tam_Taml",
          "amh_Ethi", "yor_Latn", "quy_Latn", "ace_Latn", "tir_Ethi", "wol_Latn"]


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def cell_row(folder: Path) -> dict:
    stage = _read(folder / "stage1" / "stage.json") or {}
    summary = stage.get("summary") or _read(folder / "stage1" / "stage1_summary.json") or {}
    rows = [json.loads(line) for line in (folder / "stage1" / "metrics.jsonl").read_text().splitlines() if line]
    evals = [(r["step"], r["heldout_fvu"]) for r in rows if "heldout_fvu" in r]
    plain = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:]) if "heldout_fvu" not in b]
    retrieval = _read(folder / "retrieval-all" / "results.json")
    probe = _read(folder / "retrieval-fvu" / "results.json") or retrieval  # (a main job's retrieval has the LLM too)
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
        **downstream(folder / "eval-sib200" / "results.json", folder / "retrieval-all" / "results.json"),
        "distill_seconds": (_read(folder / "distill-sib200" / "stage.json") or {}).get("seconds"),
    }


def _pct(values) -> float | None:
    values = list(values)
    return round(100 * mean(values), 1) if values else None


def downstream(eval_results: Path, retrieval_results: Path) -> dict:
    """SIB-200 accuracy of every system there on the 15 languages and English, and retrieval top-1 on the 15."""
    ev, rt = _read(eval_results), _read(retrieval_results)
    row: dict = {}
    if ev:
        for system, langs in ev["systems"].items():
            if all(lang in langs for lang in SUBSET):
                row[f"sib200_15_{system}"] = _pct(langs[lang] for lang in SUBSET)
                row[f"sib200_wins_{system}"] = langs  # per language, for the per-language comparisons
            row[f"sib200_eng_{system}"] = _pct([langs["eng_Latn"]]) if "eng_Latn" in langs else None
    if rt:
        row["retrieval_15"] = _pct(rt["systems"]["mtllm"][lang] for lang in SUBSET)
    return row


#: what each cell is, for the lever table
LABELS = {"full-m16": "full depth, micro-batch 16, cached encoder (15-min loop)",
          "k6-m16": "layer-6 target, micro-batch 16 (15-min loop)",
          "k9-m16": "layer-9 target, micro-batch 16 (15-min loop)",
          "k6-wn10k": "layer 6 + 10,000 WordNet texts (660 steps, done in 10 of its 11 loop minutes)",
          "k6-lr4": "layer 6, learning rate 4e-4 (15-min loop)"}
#: the row the others are compared with, language by language
ANCHOR = "k6-m16"


def paired(per: dict, anchor: dict) -> str:
    """Mean and standard error of the per-language difference (points) against the anchor over the 15 languages:
    the same test sentences in both, so the languages' own difficulty cancels."""
    diffs = [100 * (per[lang] - anchor[lang]) for lang in SUBSET]
    return f"{mean(diffs):+.1f} ± {stdev(diffs) / len(diffs) ** 0.5:.1f}"


def lever_table(cells: list[dict], refs: list[dict]) -> str:
    """The lever table: stage-1 wall time, probes and SIB-200 accuracy on the 15 languages; the baselines' line from
    the main job (they do not depend on stage 1)."""
    base = next(r for r in reversed(refs) if r.get("sib200_15_llm") is not None)
    head = ("| stage 1 | stage-1 wall s | retrieval top-1 %, 59 langs | retrieval top-1 %, 15 | English FVU vs teacher "
            f"(probe) | SIB-200 mtllm %, 15 X | vs {ANCHOR}, per language (± SE) | SIB-200 mtllm %, English | "
            "≥ max(llm, encoder), of 15 |")
    lines = [head, "|" + "---|" * 9]
    anchor = next((c["sib200_wins_mtllm"] for c in cells if c["cell"] == ANCHOR and "sib200_wins_mtllm" in c), None)
    for c in [*refs, *cells]:
        if c.get("sib200_15_mtllm") is None:
            continue
        per = c["sib200_wins_mtllm"]
        llm, encoder = base["sib200_wins_llm"], base["sib200_wins_encoder"]
        wins = sum(per[lang] >= max(llm[lang], encoder[lang]) for lang in SUBSET)
        fvu = "%.3f" % c["eng_fvu"] if c.get("eng_fvu") is not None else "–"
        lines.append(f"| {LABELS.get(c['cell'], c['cell'])} | {c.get('stage_seconds') or '–'} | "
                     f"{c.get('retrieval_top1') or '–'} | "
                     f"{c.get('retrieval_15') or '–'} | {fvu} | {c['sib200_15_mtllm']} | "
                     f"{paired(per, anchor) if anchor and c['cell'] != ANCHOR else '–'} | {c['sib200_eng_mtllm']} | "
                     f"{wins} |")
    lines.append(f"| *baselines (main job)* | | | | | llm {base['sib200_15_llm']} / encoder {base['sib200_15_encoder']}"
                 f" / encoder-ft {base.get('sib200_15_encoder-ft', '–')} | | teacher – / encoder "
                 f"{base['sib200_eng_encoder']} | |")
    return "\n".join(lines) + "\n"


def reference(name: str, folder: Path) -> dict:
    """A committed main job (experiments/pocket/...) as a row of the lever table."""
    stage = _read(folder / "stage1" / "stage.json") or {}
    retrieval = _read(folder / "retrieval" / "results.json")
    eng_fvu = None
    if retrieval and retrieval.get("measures"):
        eng_fvu = retrieval["measures"].get("FVU against the teacher's English", {}).get("systems", {}).get(
            "mtllm", {}).get("eng_Latn")
    return {"cell": name, "stage_seconds": stage.get("seconds"), "eng_fvu": eng_fvu,
            "retrieval_top1": _pct(retrieval["systems"]["mtllm"].values()) if retrieval else None,
            **downstream(folder / "eval-sib200" / "results.json", folder / "retrieval" / "results.json")}


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
                    "retrieval-all/results.json", "retrieval-all/results.md", "retrieval-fvu/results.json",
                    "distill-sib200/stage.json", "distill-sib200/metrics.jsonl", "eval-sib200/results.json",
                    "eval-sib200/results.md"):
            src = runs / c["cell"] / rel
            if src.exists():
                shutil.copyfile(src, dest / rel.replace("/", "-"))
    pocket = ROOT / "experiments" / "pocket"
    refs = [reference("the preset before issue 20 (main job: 240 full-depth steps of 4 x 4)",
                      pocket / "before-issue-20"),
            reference("issue 20's first preset (main job: 460 layer-6 steps, then 100 at full depth)",
                      pocket / "issue20-two-phase"),
            reference("layer 6 alone, 640 steps at 2e-4 (clean main job; teacher and distillation retrained)",
                      pocket / "issue20-layer6-lr2e4"),
            reference("**the preset now** (main job: the k6-lr4 cell's stage 1, the row above's teacher)", pocket)]
    text = table(cells) + "\n" + lever_table(cells, refs)
    (out / "results.json").write_text(json.dumps({"cells": cells, "references": refs}, indent=1))
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
