"""The pocket main job's table per language with every system (issue 20/21), from results.json files.

    python experiments/pocket/table_issue20.py [--task sib200|nusax] [--run experiments/pocket]
                                               [--before experiments/pocket/before-issue-20]

Prints markdown: per language mtllm, llm, encoder, encoder-ft (where evaluated), whether mtllm is at or above the
best baseline, and the previous main job's mtllm; then the averages and the target counts. Only reads files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sib200", help="sib200 (the main job) or nusax (pocket-nusax.yaml)")
    p.add_argument("--run", default=str(HERE))
    p.add_argument("--before", default=str(HERE / "before-issue-20"))
    args = p.parse_args(argv)
    folder = f"eval-{args.task}"
    sy = json.loads((Path(args.run) / folder / "results.json").read_text())["systems"]
    before = json.loads((Path(args.before) / folder / "results.json").read_text())["systems"]["mtllm"]
    systems = [s for s in ("mtllm", "llm", "encoder", "encoder-ft") if s in sy]
    baselines = [s for s in systems if s != "mtllm"]
    langs = sorted(sy["mtllm"])
    x = [lang for lang in langs if lang != "eng_Latn"]
    print("| lang | " + " | ".join(systems) + " | mtllm ≥ all baselines | mtllm before |")
    print("|" + "---|" * (len(systems) + 3))
    for lang in langs:
        top = all(sy["mtllm"][lang] >= sy[b][lang] for b in baselines)
        print(f"| {lang} | " + " | ".join(f"{100 * sy[s][lang]:.1f}" for s in systems)
              + f" | {'yes' if top and lang != 'eng_Latn' else ''} | {100 * before.get(lang, float('nan')):.1f} |")
    n_top = sum(all(sy["mtllm"][lang] >= sy[b][lang] for b in baselines) for lang in x)
    print(f"| **average ({len(langs)})** | " + " | ".join(f"**{100 * mean(sy[s][lang] for lang in langs):.1f}**"
                                                       for s in systems)
          + f" | {n_top} of {len(x)} | {100 * mean(before[lang] for lang in langs):.1f} |")
    print("| average without English | " + " | ".join(f"{100 * mean(sy[s][lang] for lang in x):.1f}" for s in systems)
          + f" | | {100 * mean(before[lang] for lang in x):.1f} |")
    for group in (["llm", "encoder"], baselines):
        n = sum(sy["mtllm"][lang] >= max(sy[b][lang] for b in group) for lang in x)
        print(f"\nmtllm ≥ max({', '.join(group)}) on {n} of {len(x)} non-English languages")
    print(f"mtllm > llm on {sum(sy['mtllm'][lang] > sy['llm'][lang] for lang in x)} of {len(x)}")
    print(f"English: mtllm {100 * sy['mtllm']['eng_Latn']:.1f}, "
          f"teacher (llm on English) {100 * sy['llm']['eng_Latn']:.1f}")


if __name__ == "__main__":
    main()
