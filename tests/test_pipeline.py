"""`mtllm run` end to end on tiny models: every stage writes its artefacts, a re-run skips finished
stages, a changed setting redoes that stage and what depends on it, an interrupted stage resumes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtllm.cli import main
from mtllm.training import loop

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny-sib200.yaml")
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--config", CONFIG, "--data-dir", DATA, "--output-dir", str(out), "--progress", "false",
                 "--report_to", "none", *extra])


def _hashes(out: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["hash"] for p in out.glob("*/stage.json")}


def test_run_end_to_end_then_skip_then_partial_redo(tmp_path, capsys):
    assert _run(tmp_path) == 0
    for rel in ("stage1/final/config.json", "stage1/initial/config.json", "retrieval/results.json",
                "teacher-sib200/best/config.json", "distill-sib200/final/config.json", "eval-sib200/results.json",
                "eval-sib200/results.md", "eval-sib200/results.png", "run_summary.json"):
        assert (tmp_path / rel).exists(), rel
    results = json.loads((tmp_path / "eval-sib200" / "results.json").read_text())
    assert set(results["systems"]) == {"mtllm", "llm", "encoder"}
    assert set(results["systems"]["mtllm"]) == {"eng_Latn", "fra_Latn", "swh_Latn"}
    first = _hashes(tmp_path)
    capsys.readouterr()

    assert _run(tmp_path, "--save_steps", "3", "--log_steps", "1", "--micro_batch_size", "2") == 0
    out = capsys.readouterr().out
    assert out.count("skipping") == 5  # bookkeeping keys do not redo finished work
    assert _hashes(tmp_path) == first

    assert _run(tmp_path, "--distill.learning_rate", "1e-3") == 0
    out = capsys.readouterr().out
    assert out.count("skipping") == 3  # stage1, retrieval, teacher
    now = _hashes(tmp_path)
    assert now["stage1"] == first["stage1"] and now["teacher-sib200"] == first["teacher-sib200"]
    assert now["distill-sib200"] != first["distill-sib200"] and now["eval-sib200"] != first["eval-sib200"]


def test_interrupted_stage_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    real = loop._save_checkpoint

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(loop, "_save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "--stages", "[stage1]", "--save_steps", "5")
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    capsys.readouterr()
    assert _run(tmp_path, "--stages", "[stage1]", "--save_steps", "5") == 0
    out = capsys.readouterr().out
    assert "resuming the interrupted run" in out and "resumed from" in out


def test_unreachable_data_names_both_options(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    code = main(["run", "--config", CONFIG, "--data_dir", "null", "--data", "[task:sib200/eng_Latn/train]",
                 "--output-dir", str(tmp_path), "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2
    assert "data-dir" in err.lower() or "data_dir" in err.lower()
    assert "MTLLM_DATA_DIR" in err and "hub" in err.lower()
