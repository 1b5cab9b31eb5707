"""The pocket main job against issue 12's targets, as markdown: the SIB-200 table per language (this run next
to the run before issue 12), the retrieval probe, NusaX, each stage's wall time and the target checks, all
computed from the runs' files.

    python experiments/pocket/targets.py [--run experiments/pocket] [--before experiments/pocket/before-issue-12]

Reads ``eval-sib200``, ``eval-nusax`` and ``retrieval`` ``results.json`` and each stage's ``stage.json`` (or
``run_summary.json``) under each folder. Nothing here trains or evaluates.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent
FVU_KEY = "FVU against the teacher's English"
STAGES = ("stage1", "teacher-sib200", "distill-sib200", "eval-sib200", "retrieval", "teacher-nusax",
          "distill-nusax", "eval-nusax")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def task_checks(res: dict, train_lang: str = "eng_Latn") -> dict:
    """Averages and the per-language comparisons of issue 12's targets, from one results.json."""
    sy = res["systems"]
    langs = sorted(sy["mtllm"])
    x = [lang for lang in langs if lang != train_lang]
    out = {"n_langs": len(langs), "n_x": len(x)}
    for s in ("mtllm", "llm", "encoder"):
        out[f"avg_{s}"] = mean(sy[s][lang] for lang in langs)
        out[f"avg_x_{s}"] = mean(sy[s][lang] for lang in x)
    out["above_llm"] = sum(sy["mtllm"][lang] > sy["llm"][lang] for lang in x)
    out["at_or_above_encoder"] = sum(sy["mtllm"][lang] >= sy["encoder"][lang] for lang in x)
    out["at_or_above_both"] = sum(sy["mtllm"][lang] >= max(sy["llm"][lang], sy["encoder"][lang]) for lang in x)
    if train_lang in sy["mtllm"]:
        out["eng_mtllm"], out["eng_teacher"] = sy["mtllm"][train_lang], sy["llm"][train_lang]
    return out


def retrieval_check(res: dict) -> dict:
    out = {s: mean(v.values()) for s, v in res["systems"].items()}
    # results written before the sample was recorded took the first rows (the retrieval protocol then)
    out["protocol"] = (res.get("sample") or {}).get("method", "first rows")
    out["n"] = next(iter(res["n_examples"].values()))
    return out


def task_table(new: dict, old: dict | None) -> list[str]:
    """Per language: this run's three systems, whether mtllm is at or above both, and mtllm before."""
    lines = ["| lang | mtllm | llm | encoder | mtllm ≥ both | mtllm before issue 12 |", "|---|---|---|---|---|---|"]
    for lang in sorted(new["systems"]["mtllm"]):
        s = {k: new["systems"][k][lang] for k in ("mtllm", "llm", "encoder")}
        prev = old["systems"]["mtllm"].get(lang) if old else None
        lines.append(f"| {lang} | {_pct(s['mtllm'])} | {_pct(s['llm'])} | {_pct(s['encoder'])} | "
                     f"{'yes' if s['mtllm'] >= max(s['llm'], s['encoder']) else ''} | {_pct(prev)} |")
    c, p = task_checks(new), task_checks(old) if old else {}
    lines += [f"| **average ({c['n_langs']})** | **{_pct(c['avg_mtllm'])}** | **{_pct(c['avg_llm'])}** | "
              f"**{_pct(c['avg_encoder'])}** | {c['at_or_above_both']} of {c['n_x']} | {_pct(p.get('avg_mtllm'))} |",
              f"| average without English | {_pct(c['avg_x_mtllm'])} | {_pct(c['avg_x_llm'])} | "
              f"{_pct(c['avg_x_encoder'])} | | {_pct(p.get('avg_x_mtllm'))} |"]
    return lines


def retrieval_table(new: dict, old: dict | None) -> list[str]:
    systems = [s for s in ("mtllm", "mtllm_before_stage1", "llm", "encoder") if s in new["systems"]]
    fvu = (new.get("measures") or {}).get(FVU_KEY, {}).get("systems", {})
    head = systems + [f"FVU {s}" for s in ("mtllm", "mtllm_before_stage1") if s in fvu]
    lines = ["| lang | " + " | ".join(head) + " | mtllm before issue 12 (first 50) |", "|---" * (len(head) + 2) + "|"]
    langs = sorted(new["systems"]["mtllm"])
    for lang in ["eng_Latn"] * bool(fvu.get("mtllm", {}).get("eng_Latn") is not None) + langs:
        cells = [_pct(new["systems"][s].get(lang)) if lang != "eng_Latn" else "" for s in systems]
        cells += [f"{fvu[s][lang]:.3f}" if lang in fvu.get(s, {}) else "–" for s in ("mtllm", "mtllm_before_stage1")
                  if s in fvu]
        prev = old["systems"]["mtllm"].get(lang) if old and lang != "eng_Latn" else None
        lines.append(f"| {lang} | " + " | ".join(cells) + f" | {_pct(prev)} |")
    avg = [_pct(mean(new["systems"][s].values())) for s in systems]
    avg += [f"{mean(v for k, v in fvu[s].items() if k != 'eng_Latn'):.3f}" for s in ("mtllm", "mtllm_before_stage1")
            if s in fvu]
    prev = _pct(mean(old["systems"]["mtllm"].values())) if old else "–"
    lines.append(f"| **average ({len(langs)} X)** | " + " | ".join(f"**{a}**" for a in avg) + f" | {prev} |")
    return lines


def stage_seconds(run: Path) -> dict[str, float]:
    """Each stage's wall time: its stage.json (``mtllm run`` records it), else the run summary's record."""
    out = {}
    # a run summary names its stages by kind (teacher, distill, ...): its artefacts' paths say which folder
    recorded = {Path(path).parent.name: info
                for info in ((_read(run / "run_summary.json") or {}).get("stages") or {}).values()
                for path in (info.get("artefacts") or {}).values()}
    for stage in STAGES:
        info = _read(run / stage / "stage.json") or recorded.get(stage) or {}
        if info.get("status") == "done" and info.get("seconds") is not None:
            out[stage] = info["seconds"]
    return out


def targets_table(runs: dict[str, Path]) -> list[str]:
    cells: dict[str, list[str]] = {}
    for run in runs.values():
        task, ret = _read(run / "eval-sib200" / "results.json"), _read(run / "retrieval" / "results.json")
        nusax = _read(run / "eval-nusax" / "results.json")
        c = task_checks(task) if task else {}
        r = retrieval_check(ret) if ret else {}
        n = task_checks(nusax) if nusax else {}
        cells.setdefault("SIB-200 mtllm average ≥ encoder average", []).append(
            f"{_pct(c.get('avg_mtllm'))} vs {_pct(c.get('avg_encoder'))}" if c else "not run")
        cells.setdefault("mtllm ≥ max(llm, encoder) on ≥ 75 % of the X languages", []).append(
            f"{c['at_or_above_both']} of {c['n_x']} ({100 * c['at_or_above_both'] / c['n_x']:.0f} %)"
            if c else "not run")
        cells.setdefault("(mtllm above the LLM alone, X languages)", []).append(
            f"{c['above_llm']} of {c['n_x']}" if c else "not run")
        cells.setdefault("English within 3 points of the teacher", []).append(
            f"{_pct(c.get('eng_mtllm'))} vs {_pct(c.get('eng_teacher'))}"
            if c.get("eng_mtllm") is not None else "not run")
        cells.setdefault("retrieval after stage 1 ≥ 50 % top-1", []).append(
            f"{_pct(r.get('mtllm'))} ({r.get('protocol')} {r.get('n')}; encoder {_pct(r.get('encoder'))})"
            if r else "not run")
        cells.setdefault("NusaX X average ≥ 67.9 and above both baselines", []).append(
            f"{_pct(n.get('avg_x_mtllm'))} (llm {_pct(n.get('avg_x_llm'))}, encoder {_pct(n.get('avg_x_encoder'))})"
            if n else "not run")
    lines = ["| target (issue 12) | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    return lines + [f"| {k} | {' | '.join(v)} |" for k, v in cells.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(HERE))
    ap.add_argument("--before", default=str(HERE / "before-issue-12"))
    a = ap.parse_args()
    run, before = Path(a.run), Path(a.before)
    out = ["#### Targets", "", *targets_table({"this run": run, "before issue 12": before}), ""]
    times_new, times_old = stage_seconds(run), stage_seconds(before)
    out += ["#### Wall time per stage (s)", "", "| stage | this run | before issue 12 |", "|---|---|---|"]
    out += [f"| {s} | {times_new.get(s, '–')} | {times_old.get(s, '–')} |" for s in STAGES
            if s in times_new or s in times_old]
    for task in ("sib200", "nusax"):
        new, old = _read(run / f"eval-{task}" / "results.json"), _read(before / f"eval-{task}" / "results.json")
        if new:
            out += ["", f"#### {'SIB-200' if task == 'sib200' else 'NusaX'} (accuracy %)", "", *task_table(new, old)]
    ret = _read(run / "retrieval" / "results.json")
    if ret:
        out += ["", "#### Retrieval probe after stage 1 (top-1 %, FVU against the teacher's English)", "",
                *retrieval_table(ret, _read(before / "retrieval" / "results.json"))]
    print("\n".join(out))


if __name__ == "__main__":
    main()
