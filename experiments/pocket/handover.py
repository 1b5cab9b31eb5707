"""Issue 20's hand-over question: does stage 1's better alignment reach SIB-200 accuracy? From committed files.

    python experiments/pocket/handover.py [--run experiments/pocket] [--before experiments/pocket/before-issue-20]

Prints the retrieval of the stage-1 model and of the distilled model, and across the 59 non-English languages the
correlations between retrieval, its gain over the stage 1 before, and the stacked model's accuracy (and the
frozen encoder's). Only reads results.json files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _systems(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["systems"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(HERE))
    p.add_argument("--before", default=str(HERE / "before-issue-20"))
    args = p.parse_args(argv)
    run, before = Path(args.run), Path(args.before)
    stage1 = _systems(run / "retrieval")["mtllm"]
    distilled = _systems(run / "retrieval-distilled")["mtllm"]
    acc, acc_before = _systems(run / "eval-sib200"), _systems(before / "eval-sib200")["mtllm"]
    ret_before = _systems(before / "retrieval")["mtllm"]
    langs = sorted(stage1)
    v = lambda d: np.array([d[lang] for lang in langs])  # noqa: E731
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    print(f"retrieval top-1 over {len(langs)} languages: stage-1 model {100 * v(stage1).mean():.1f} %, "
          f"distilled model {100 * v(distilled).mean():.1f} %, stage 1 before {100 * v(ret_before).mean():.1f} %")
    print(f"per language, stage-1 vs distilled retrieval: r = {corr(v(stage1), v(distilled)):.2f}")
    print(f"per language, mtllm accuracy vs frozen encoder accuracy: r = {corr(v(acc['mtllm']), v(acc['encoder'])):.2f}"
          f"; mtllm - encoder = {100 * (v(acc['mtllm']) - v(acc['encoder'])).mean():+.2f} points on average")
    print(f"per language, retrieval vs mtllm accuracy: r = {corr(v(stage1), v(acc['mtllm'])):.2f}")
    gain_r, gain_a = v(stage1) - v(ret_before), v(acc["mtllm"]) - v(acc_before)
    print(f"per language, retrieval gain ({100 * gain_r.mean():+.1f}) vs accuracy change ({100 * gain_a.mean():+.2f}):"
          f" r = {corr(gain_r, gain_a):.2f}")


if __name__ == "__main__":
    main()
