"""Collect the stage-1 lever experiment (issue 12) into one markdown table and one plot.

    python experiments/stage1-levers/summarize.py [--runs runs/levers] [--out experiments/stage1-levers]

Reads, per cell folder under --runs: ``stage1/metrics.jsonl`` and ``stage1/stage1_summary.json`` (the stage-1
curve), ``retrieval/results.json`` (English<->X top-1 and the FVU against the teacher's English, written
by ``mtllm run``'s retrieval stage) and, where the cell was distilled and evaluated,
``eval-sib200/results.json``. The ``today`` downstream row comes from the committed pocket main job
(``experiments/pocket/before-issue-12/eval-sib200``), restricted to the same languages; the ``no stage 1`` row's
downstream
numbers from the ``none`` folder (distilled from the initial stack, ``none.yaml``), where there is one. Writes
``results.md``,
``results.json`` and ``results.png`` into --out. Nothing here trains or evaluates: it only reads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[2]
FVU_KEY = "FVU against the teacher's English"


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _curve_tail(metrics: Path, key: str, n: int = 20) -> float | None:
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    values = [r[key] for r in rows if key in r]
    return mean(values[-n:]) if values else None


def cell_row(folder: Path) -> dict:
    summary = _read(folder / "stage1" / "stage1_summary.json") or {}
    retrieval = _read(folder / "retrieval" / "results.json")
    row = {"cell": folder.name, "n_texts": summary.get("n_texts"), "steps": summary.get("steps"),
           "stage1_seconds": summary.get("seconds"),
           "fvu_last20": _curve_tail(folder / "stage1" / "metrics.jsonl", "fvu"),
           "span_fvu_last20": _curve_tail(folder / "stage1" / "metrics.jsonl", "span_fvu")}
    if retrieval:
        langs = [lang for lang in retrieval["systems"]["mtllm"]]
        row["langs"] = langs
        for system in ("mtllm", "mtllm_before_stage1", "llm", "encoder"):
            if system in retrieval["systems"]:
                row[f"retrieval_{system}"] = 100 * mean(retrieval["systems"][system].values())
        fvu = (retrieval.get("measures") or retrieval.get("meta", {}).get("measures") or {}).get(FVU_KEY)
        if fvu:
            for system, per_lang in fvu["systems"].items():
                xs = [v for lang, v in per_lang.items() if lang != "eng_Latn"]
                row[f"fvu_x_{system}"] = mean(xs) if xs else None
                if "eng_Latn" in per_lang:
                    row[f"fvu_eng_{system}"] = per_lang["eng_Latn"]
    first50 = _read(folder / "retrieval-first50" / "results.json")
    if first50:
        row["retrieval_first50_mtllm"] = 100 * mean(first50["systems"]["mtllm"].values())
    evaluation = _read(folder / "eval-sib200" / "results.json")
    if evaluation:
        mt = evaluation["systems"]["mtllm"]
        row["sib_langs"] = sorted(mt)
        row["sib_mtllm_x"] = 100 * mean(v for lang, v in mt.items() if lang != "eng_Latn")
        if "eng_Latn" in mt:
            row["sib_mtllm_eng"] = 100 * mt["eng_Latn"]
    return row


def committed_today(langs: list[str]) -> dict:
    """The committed pocket main job (today's stage 1) on the same languages."""
    ev = _read(ROOT / "experiments" / "pocket" / "before-issue-12" / "eval-sib200" / "results.json")
    out = {}
    # the first 50 sentences
    ret = _read(ROOT / "experiments" / "pocket" / "before-issue-12" / "retrieval" / "results.json")
    if ret:
        for system in ("mtllm", "mtllm_before_stage1", "llm", "encoder"):
            out[f"retrieval_first50_{system}"] = 100 * mean(ret["systems"][system][lang] for lang in langs)
    if ev:
        for system in ("mtllm", "llm", "encoder"):
            out[f"sib_{system}_x"] = 100 * mean(ev["systems"][system][lang] for lang in langs if lang != "eng_Latn")
            out[f"sib_{system}_eng"] = 100 * ev["systems"][system]["eng_Latn"]
    return out


def _fmt(v, digits=1):
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/levers")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    a = ap.parse_args()
    rows = [cell_row(p) for p in sorted(Path(a.runs).iterdir()) if (p / "stage1" / "stage1_summary.json").exists()]
    langs = next((r["langs"] for r in rows if r.get("langs")), [])
    today = committed_today(langs) if langs else {}
    # the two reference rows: the stacked model before any stage 1 (projection initialised, LoRA at zero), and
    # today's stage 1 as the committed main job ran it (its retrieval probe used the first 50 sentences)
    first_cell = next((r for r in rows if r.get("retrieval_mtllm_before_stage1") is not None), {})
    committed_stage1 = ROOT / "experiments" / "pocket" / "before-issue-12" / "stage1"
    reference = [{"cell": "no stage 1", "retrieval_first50_mtllm": today.get("retrieval_first50_mtllm_before_stage1"),
                  "retrieval_mtllm": first_cell.get("retrieval_mtllm_before_stage1"),
                  "fvu_x_mtllm": first_cell.get("fvu_x_mtllm_before_stage1"),
                  "fvu_eng_mtllm": first_cell.get("fvu_eng_mtllm_before_stage1")},
                 {"cell": "today (committed: sequence, 1.2k)", "n_texts": 1202, "steps": 240,
                  "fvu_last20": _curve_tail(committed_stage1 / "metrics.jsonl", "fvu"),
                  "retrieval_first50_mtllm": today.get("retrieval_first50_mtllm"),
                  "sib_mtllm_x": today.get("sib_mtllm_x"), "sib_mtllm_eng": today.get("sib_mtllm_eng")}]
    # the no-stage-1 cell (experiments/stage1-levers/none.yaml) has no stage-1 folder: only its downstream numbers
    if (Path(a.runs) / "none").is_dir():
        none = cell_row(Path(a.runs) / "none")
        reference[0].update({k: none[k] for k in ("sib_mtllm_x", "sib_mtllm_eng") if none.get(k) is not None})
    rows = reference + rows
    cols = [("cell", "cell", None), ("n_texts", "English texts", None), ("steps", "steps", None),
            ("fvu_last20", "stage-1 FVU (pooled, last 20 steps)", 3), ("span_fvu_last20", "span FVU (last 20)", 3),
            ("retrieval_first50_mtllm", "retrieval top-1 % (first 50)", 1),
            ("retrieval_mtllm", "retrieval top-1 % (stratified 50)", 1),
            ("retrieval_mtllm_before_stage1", "…before stage 1", 1),
            ("fvu_x_mtllm", "FVU X vs teacher English", 3), ("fvu_eng_mtllm", "FVU English vs teacher", 3),
            ("sib_mtllm_x", "SIB-200 mtllm % (15 X)", 1), ("sib_mtllm_eng", "SIB-200 mtllm % eng", 1),
            ("stage1_seconds", "stage-1 s", 0)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), d) if d is not None else _fmt(r.get(k)) for k, _, d in cols)
                     + " |")
    base = next((r for r in rows if r.get("retrieval_llm") is not None), {})
    text = ["# Stage-1 levers (issue 12): pocket preset, fixed 15-language SIB-200 subset", "",
            f"Languages: {', '.join(langs)}", "", *lines, "",
            f"Baselines on the same languages: LLM alone retrieval {_fmt(base.get('retrieval_llm'))} %, "
            f"encoder alone retrieval {_fmt(base.get('retrieval_encoder'))} %, LLM-alone FVU X vs teacher English "
            f"{_fmt(base.get('fvu_x_llm'), 3)}.", ""]
    if today.get("retrieval_first50_mtllm") is not None:
        text.append(f"Committed pocket main job (today's stage 1), retrieval over the first 50 sentences of the same "
                    f"languages: mtllm {today['retrieval_first50_mtllm']:.1f} %, before stage 1 "
                    f"{today['retrieval_first50_mtllm_before_stage1']:.1f} %, llm {today['retrieval_first50_llm']:.1f} "
                    "%, "
                    f"encoder {today['retrieval_first50_encoder']:.1f} %.")
        text.append("")
    if today.get("sib_mtllm_x") is not None:
        text.append(f"Committed pocket main job (today's stage 1, bf16 inference) on the 15 non-English languages: "
                    f"SIB-200 mtllm {today['sib_mtllm_x']:.1f} %, llm {today['sib_llm_x']:.1f} %, encoder "
                    f"{today['sib_encoder_x']:.1f} %; English {today['sib_mtllm_eng']:.1f} / "
                    f"{today['sib_llm_eng']:.1f} / "
                    f"{today['sib_encoder_eng']:.1f}.")
    out = Path(a.out)
    (out / "results.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps({"cells": rows, "today_committed": today}, indent=1) + "\n")
    _plot(rows, today, out / "results.png")
    print("\n".join(text))


def _plot(rows: list[dict], today: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        if r.get("n_texts") is None or r["cell"].startswith("today"):
            continue
        label = r["cell"]
        if r.get("retrieval_mtllm") is not None:
            ax1.scatter(r["n_texts"], r["retrieval_mtllm"], label=label)
        if r.get("sib_mtllm_x") is not None:
            ax2.scatter(r["n_texts"], r["sib_mtllm_x"], label=label)
    before = next((r["retrieval_mtllm_before_stage1"] for r in rows if r.get("retrieval_mtllm_before_stage1")), None)
    if before is not None:
        ax1.axhline(before, ls=":", c="gray", label="no stage 1")
    enc = next((r["retrieval_encoder"] for r in rows if r.get("retrieval_encoder")), None)
    if enc is not None:
        ax1.axhline(enc, ls="--", c="k", label="encoder alone")
    if today:
        ax2.axhline(today["sib_mtllm_x"], ls=":", c="gray", label="today (committed)")
        ax2.axhline(today["sib_encoder_x"], ls="--", c="k", label="encoder alone")
    ax1.set(xscale="log", xlabel="English texts in stage 1", ylabel="English<->X retrieval top-1 %", title="alignment")
    ax2.set(xscale="log", xlabel="English texts in stage 1", ylabel="SIB-200 accuracy %, 15 languages",
            title="downstream")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
