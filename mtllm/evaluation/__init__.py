"""Evaluation: per-language results of several systems and their report (``results.json``/``.md``/``.png``)."""
from mtllm.evaluation.report import EvalResults, format_summary_lines, read_results, write_results

__all__ = ["EvalResults", "write_results", "read_results", "format_summary_lines"]
