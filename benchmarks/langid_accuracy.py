"""The table of docs/langid.md: mtllm.langid's accuracy per language on a SIB-200 folder.

    python benchmarks/langid_accuracy.py ../shared/data/sib200 [SPLIT] > table.md
"""
from __future__ import annotations

import sys

from mtllm.langid import evaluate, markdown_report

if __name__ == "__main__":
    sys.stdout.write(markdown_report(evaluate(sys.argv[1], split=sys.argv[2] if len(sys.argv) > 2 else "test")) + "\n")
