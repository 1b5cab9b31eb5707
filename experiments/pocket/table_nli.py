"""The pocket NLI job's tables (issue 21): XNLI and Kardes-NLU per language with every system, from results.json.

    python experiments/pocket/table_nli.py [--run experiments/pocket]

For each evaluation folder (eval-xnli, eval-kardes-nlu) prints markdown: per language the sample size, mtllm,
llm, encoder, encoder-ft, whether mtllm is at or above every baseline and above llm; then the averages (all
languages, non-English), the chance level, the teacher's English accuracy (the llm system on English is the
fine-tuned teacher) and the issue's targets; then every stage's wall time. Only reads files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent
SYSTEMS = ("mtllm", "llm", "encoder", "encoder-ft")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def task_table(results: dict, teacher_english: float | None) -> str:
    sy = results["systems"]
    systems = [s for s in SYSTEMS if s in sy]
    baselines = [s for s in systems if s != "mtllm"]
    langs = sorted(sy["mtllm"])
    x = [lang for lang in langs if lang != "eng_Latn"]
    out = [f"| lang | n | {' | '.join(systems)} | mtllm ≥ every baseline | mtllm > llm |",
           "|" + "---|" * (len(systems) + 4)]
    for lang in langs:
        top = all(sy["mtllm"][lang] >= sy[b][lang] for b in baselines)
        above = sy["mtllm"][lang] > sy["llm"][lang]
        out.append(f"| {lang} | {results['n_examples'].get(lang, '')} | "
                   + " | ".join(_pct(sy[s][lang]) for s in systems)
                   + f" | {'yes' if top else 'no'} | {'yes' if above else 'no'} |")
    for name, group in ((f"average ({len(langs)})", langs), (f"non-English average ({len(x)})", x)):
        if group:
            out.append(f"| **{name}** | | " + " | ".join(f"**{_pct(mean(sy[s][lang] for lang in group))}**"
                                                       for s in systems) + " | | |")
    avg = {s: mean(sy[s][lang] for lang in x) for s in systems}
    best = max(baselines, key=lambda s: avg[s])
    gap = 100 * (avg[best] - avg["mtllm"])
    n_top = sum(all(sy["mtllm"][lang] >= sy[b][lang] for b in baselines) for lang in x)
    lines = ["\n".join(out), "",
             f"- chance (majority class of the balanced sample): {_pct(results['majority_baseline'])} %",
             f"- non-English average: mtllm {_pct(avg['mtllm'])} vs the best baseline {best} {_pct(avg[best])} "
             f"({'met' if gap <= 0 else f'missed by {gap:.1f} points'})",
             f"- mtllm ≥ every baseline on {n_top} of {len(x)} non-English languages; mtllm > llm on "
             f"{sum(sy['mtllm'][lang] > sy['llm'][lang] for lang in x)} of {len(x)}"]
    if "eng_Latn" in sy["mtllm"]:
        teacher = sy["llm"]["eng_Latn"]
        lines.append(f"- English: mtllm {_pct(sy['mtllm']['eng_Latn'])} vs the teacher {_pct(teacher)} "
                     f"({100 * (teacher - sy['mtllm']['eng_Latn']):+.1f} points behind)")
    elif teacher_english is not None:
        lines.append(f"- no English rows in this task; the teacher's English accuracy (XNLI) is "
                     f"{_pct(teacher_english)}")
    return "\n".join(lines)


def stage_times(run: Path) -> str:
    rows = ["| stage | seconds |", "|---|---:|"]
    total = 0.0
    for name in ("teacher-xnli", "distill-xnli", "encoder-ft-xnli", "eval-xnli", "eval-kardes-nlu"):
        path = run / name / "stage.json"
        if path.exists():
            seconds = json.loads(path.read_text()).get("seconds")
            total += seconds or 0
            rows.append(f"| {name} | {'not finished' if seconds is None else f'{seconds:,.0f}'} |")
    rows.append(f"| **total** | **{total:,.0f}** ({total / 60:.0f} min) |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(HERE))
    run = Path(p.parse_args(argv).run)
    teacher_english = None
    for task in ("xnli", "kardes-nlu"):
        path = run / f"eval-{task}" / "results.json"
        if not path.exists():
            print(f"\n{path}: not there (the NLI job has not finished this evaluation)")
            continue
        results = json.loads(path.read_text())
        teacher_english = teacher_english or results["systems"]["llm"].get("eng_Latn")
        print(f"\n### {task}\n")
        print(task_table(results, teacher_english))
    print("\n### wall time per stage\n")
    print(stage_times(run))


if __name__ == "__main__":
    main()
