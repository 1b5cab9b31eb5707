"""The pocket main job against issue 12's targets: one markdown table per language (this run next to an
earlier one) and the target checks, all computed from the runs' results.json files.

    python experiments/pocket/targets.py [--run experiments/pocket] [--before experiments/pocket/before-issue-12]

Reads ``eval-sib200/results.json`` and ``retrieval/results.json`` under each folder (``eval-nusax`` too when
there is one) and prints markdown. Nothing here trains or evaluates.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def task_checks(res: dict, train_lang: str = "eng_Latn") -> dict:
    """Averages and the per-language comparisons of issue 12's targets, from one results.json."""
    sy = res["systems"]
    langs = sorted(sy["mtllm"])
    x = [l for l in langs if l != train_lang]
    out = {"n_langs": len(langs), "n_x": len(x)}
    for s in ("mtllm", "llm", "encoder"):
        out[f"avg_{s}"] = mean(sy[s][l] for l in langs)
        out[f"avg_x_{s}"] = mean(sy[s][l] for l in x)
    out["above_llm"] = sum(sy["mtllm"][l] > sy["llm"][l] for l in x)
    out["at_or_above_encoder"] = sum(sy["mtllm"][l] >= sy["encoder"][l] for l in x)
    out["at_or_above_both"] = sum(sy["mtllm"][l] >= max(sy["llm"][l], sy["encoder"][l]) for l in x)
    if train_lang in sy["mtllm"]:
        out["eng_mtllm"], out["eng_teacher"] = sy["mtllm"][train_lang], sy["llm"][train_lang]
    return out


def retrieval_check(res: dict) -> dict:
    sy = res["systems"]
    out = {s: mean(v.values()) for s, v in sy.items()}
    # results written before the sample was recorded took the first rows (the retrieval protocol then)
    out["protocol"] = (res.get("sample") or {}).get("method", "first rows")
    out["n"] = next(iter(res["n_examples"].values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(HERE))
    ap.add_argument("--before", default=str(HERE / "before-issue-12"))
    a = ap.parse_args()
    run, before = Path(a.run), Path(a.before)
    new, old = _read(run / "eval-sib200" / "results.json"), _read(before / "eval-sib200" / "results.json")
    lines = []
    if new:
        langs = sorted(new["systems"]["mtllm"])
        lines += ["| lang | mtllm | llm | encoder | mtllm ≥ both | mtllm before |",
                  "|---|---|---|---|---|---|"]
        for l in langs:
            s = {k: new["systems"][k][l] for k in ("mtllm", "llm", "encoder")}
            prev = old["systems"]["mtllm"].get(l) if old else None
            lines.append(f"| {l} | {_pct(s['mtllm'])} | {_pct(s['llm'])} | {_pct(s['encoder'])} | "
                         f"{'yes' if s['mtllm'] >= max(s['llm'], s['encoder']) else ''} | {_pct(prev)} |")
        c = task_checks(new)
        lines += [f"| **average ({c['n_langs']})** | **{_pct(c['avg_mtllm'])}** | **{_pct(c['avg_llm'])}** | "
                  f"**{_pct(c['avg_encoder'])}** | {c['at_or_above_both']} of {c['n_x']} | "
                  f"{_pct(task_checks(old)['avg_mtllm']) if old else '–'} |",
                  f"| average without English | {_pct(c['avg_x_mtllm'])} | {_pct(c['avg_x_llm'])} | "
                  f"{_pct(c['avg_x_encoder'])} | | {_pct(task_checks(old)['avg_x_mtllm']) if old else '–'} |", ""]
    lines += ["| target (issue 12) | this run | before issue 12 |", "|---|---|---|"]
    runs = {"this run": (new, _read(run / "retrieval" / "results.json"), _read(run / "eval-nusax" / "results.json")),
            "before": (old, _read(before / "retrieval" / "results.json"), _read(before / "eval-nusax" / "results.json"))}
    cells: dict[str, list[str]] = {}
    for name, (task, ret, nusax) in runs.items():
        c = task_checks(task) if task else {}
        r = retrieval_check(ret) if ret else {}
        n = task_checks(nusax) if nusax else {}
        cells.setdefault("SIB-200 mtllm average ≥ encoder average", []).append(
            f"{_pct(c.get('avg_mtllm'))} vs {_pct(c.get('avg_encoder'))}" if c else "–")
        cells.setdefault("mtllm ≥ max(llm, encoder) on ≥ 75 % of the X languages", []).append(
            f"{c['at_or_above_both']} of {c['n_x']} ({100 * c['at_or_above_both'] / c['n_x']:.0f} %)" if c else "–")
        cells.setdefault("mtllm above the LLM alone (X languages)", []).append(
            f"{c['above_llm']} of {c['n_x']}" if c else "–")
        cells.setdefault("English within 3 points of the teacher", []).append(
            f"{_pct(c.get('eng_mtllm'))} vs {_pct(c.get('eng_teacher'))}" if c.get("eng_mtllm") is not None else "–")
        cells.setdefault("retrieval after stage 1 ≥ 50 % top-1", []).append(
            f"{_pct(r.get('mtllm'))} ({r.get('protocol')}, {r.get('n')} sentences; encoder {_pct(r.get('encoder'))})"
            if r else "–")
        cells.setdefault("NusaX X average ≥ 67.9 and above both baselines", []).append(
            f"{_pct(n.get('avg_x_mtllm'))} vs llm {_pct(n.get('avg_x_llm'))} / encoder {_pct(n.get('avg_x_encoder'))}"
            if n else "not run")
    lines += [f"| {k} | {' | '.join(v)} |" for k, v in cells.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
