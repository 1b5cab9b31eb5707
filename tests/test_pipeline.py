"""`mtllm run` end to end on tiny models: every stage writes its artefacts, a re-run skips finished
stages, a changed setting redoes that stage and what depends on it, an interrupted stage resumes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm.cli import main
from mtllm.inference import predict
from mtllm.modeling.model import MTLLMModel
from mtllm.tasks import load_examples
from mtllm.training import loop
from mtllm.training.checkpoint import latest_valid_checkpoint
from saved_run import max_weight_diff, metrics_records

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny-sib200.yaml")
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--config", CONFIG, "--data-dir", DATA, "--output-dir", str(out), "--progress", "false",
                 "--report_to", "none", *extra])


def _hashes(out: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["hash"] for p in out.glob("*/stage.json")}


LANGS = ("eng_Latn", "fra_Latn", "swh_Latn")  # the languages of tests/fixtures/pipeline


def _test_set(lang: str) -> tuple[list, np.ndarray]:
    examples = load_examples("sib200", lang, "test", DATA)
    return examples, np.array([e.label for e in examples])


def _task_accuracy(model: MTLLMModel, lang: str, route: str) -> float:
    """``mean(predictions == labels)`` of ``model`` on the fixture's test split, computed here."""
    examples, labels = _test_set(lang)
    return float((predict(model, examples, route=route, lang=lang if route == "encoder" else None) == labels).mean())


def _assert_eval_used_the_run_models(out: Path) -> dict:
    """The eval stage's mtllm/llm accuracies are those of ``distill-sib200/final`` (through the encoder) and
    ``teacher-sib200/best`` (the LLM alone), reloaded from disk and run on the same examples here."""
    results = json.loads((out / "eval-sib200" / "results.json").read_text())
    assert results["model"] == str(out / "distill-sib200" / "final") and results["split"] == "test"
    assert results["teacher"] == str(out / "teacher-sib200" / "best")
    distilled = MTLLMModel.from_pretrained(out / "distill-sib200" / "final")
    teacher = MTLLMModel.from_pretrained(out / "teacher-sib200" / "best")
    for lang in LANGS:
        assert results["n_examples"][lang] == len(_test_set(lang)[0]) == 8
        assert results["systems"]["mtllm"][lang] == pytest.approx(_task_accuracy(distilled, lang, "encoder")), lang
        assert results["systems"]["llm"][lang] == pytest.approx(_task_accuracy(teacher, lang, "llm")), lang
    return results


def _retrieval_accuracy(model: MTLLMModel, lang: str) -> float:
    """English<->``lang`` top-1 cosine retrieval on the fixture's test sentences (pairs share an id), the mean
    of both directions, computed here."""
    english = {e.id: e.texts[0] for e in _test_set("eng_Latn")[0]}
    target = {e.id: e.texts[0] for e in _test_set(lang)[0]}
    ids = [i for i in english if i in target]
    src = torch.nn.functional.normalize(model.encode([english[i] for i in ids], lang="eng_Latn"), dim=-1)
    tgt = torch.nn.functional.normalize(model.encode([target[i] for i in ids], lang=lang), dim=-1)
    sim, gold = src @ tgt.T, torch.arange(len(ids))
    return ((sim.argmax(1) == gold).float().mean().item() + (sim.argmax(0) == gold).float().mean().item()) / 2


@pytest.mark.usefixtures("fp32_auto")  # eval's dtype auto -> float32: its accuracies are recomputed in float32 here
def test_run_end_to_end_then_skip_then_partial_redo(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    assert _run(tmp_path) == 0
    assert "MTLLM_DATA_DIR" not in os.environ  # --data-dir is passed to each stage, not through the environment
    for rel in ("stage1/final/config.json", "stage1/initial/config.json", "retrieval/results.json",
                "teacher-sib200/best/config.json", "distill-sib200/final/config.json", "eval-sib200/results.json",
                "eval-sib200/results.md", "eval-sib200/results.png", "run_summary.json"):
        assert (tmp_path / rel).exists(), rel
    results = _assert_eval_used_the_run_models(tmp_path)
    assert set(results["systems"]) == {"mtllm", "llm", "encoder"}
    assert set(results["systems"]["mtllm"]) == set(LANGS)
    # eval loaded teacher-sib200/best (checked above through the recorded path and the recomputed
    # accuracies); best_score.json names the epoch it kept, one of the two the fixture trains
    assert json.loads((tmp_path / "teacher-sib200" / "best_score.json").read_text())["epoch"] in (1, 2)
    # the retrieval probe compares stage 1's final model with the one before stage 1
    retrieval = json.loads((tmp_path / "retrieval" / "results.json").read_text())["systems"]
    for name, folder in (("mtllm", "final"), ("mtllm_before_stage1", "initial")):
        model = MTLLMModel.from_pretrained(tmp_path / "stage1" / folder)
        for lang in LANGS[1:]:
            assert retrieval[name][lang] == pytest.approx(_retrieval_accuracy(model, lang)), (name, lang)
    assert retrieval["mtllm"] != retrieval["mtllm_before_stage1"]  # so a swap of the two would show
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
    _assert_eval_used_the_run_models(tmp_path)  # the redone eval read the redone distillation


def test_interrupted_stage_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    stage1_only = ("--stages", "[stage1]", "--save_steps", "5")  # tiny-sib200: 10 steps, a checkpoint at step 5
    assert _run(full, *stage1_only) == 0  # uninterrupted
    real = loop._save_checkpoint

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(loop, "_save_checkpoint", crash)
    assert _run(cut, *stage1_only) == 130  # the command reports the interruption in one line, exit 130
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    assert json.loads((cut / "stage1" / "stage.json").read_text())["status"] == "running"
    assert latest_valid_checkpoint(cut / "stage1").name == "step-0000005"
    assert not (cut / "stage1" / "final").exists()
    capsys.readouterr()

    assert _run(cut, *stage1_only) == 0
    out = capsys.readouterr().out
    assert f"[run] stage1: resuming the interrupted run in {cut / 'stage1'}" in out
    assert f"resumed from {cut / 'stage1' / 'checkpoints' / 'step-0000005'} at step 5" in out
    assert json.loads((cut / "stage1" / "stage.json").read_text())["status"] == "done"
    resumed, uninterrupted = metrics_records(cut / "stage1"), metrics_records(full / "stage1")
    assert [r["step"] for r in resumed] == list(range(1, 11))  # each step logged exactly once
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in uninterrupted], abs=1e-6)
    assert max_weight_diff(full / "stage1" / "final", cut / "stage1" / "final") <= 1e-6  # as if it had never stopped


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


def test_a_changed_data_file_redoes_the_stages_that_read_it(tmp_path, capsys, monkeypatch):
    """Results follow their data (issue 23): each stage records the data files it read (with their sha256) in its
    stage.json; a finished stage whose files changed since is redone, and so is every stage that reads its output."""
    import shutil

    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    out = tmp_path / "run"

    def run() -> str:
        assert main(["run", "--config", CONFIG, "--data-dir", str(data), "--output-dir", str(out), "--progress",
                     "false", "--report_to", "none"]) == 0
        return capsys.readouterr().out

    run()
    record = json.loads((out / "eval-sib200" / "stage.json").read_text())
    assert str((data / "sib200" / "fra_Latn" / "test.tsv").resolve()) in record["data"]
    assert run().count("skipping") == 5
    test_file = data / "sib200" / "fra_Latn" / "test.tsv"
    lines = test_file.read_text(encoding="utf-8").splitlines(keepends=True)
    test_file.write_text("".join(lines[:5]), encoding="utf-8")  # the header and 4 rows
    printed = run()
    assert printed.count("skipping") == 3  # stage1, teacher and distill did not read the French test split
    assert "retrieval: a data file it read changed since" in printed and "fra_Latn/test.tsv" in printed
    assert "eval: a data file it read changed since" in printed
    assert json.loads((out / "eval-sib200" / "results.json").read_text())["n_examples"]["fra_Latn"] == 4
    train = data / "sib200" / "eng_Latn" / "train.tsv"
    train.write_text(train.read_text(encoding="utf-8").replace("\n", "\n", 1), encoding="utf-8")  # same bytes
    assert run().count("skipping") == 5  # a file rewritten with the same bytes changes nothing
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    train.write_text("".join(lines[:-1]), encoding="utf-8")
    printed = run()
    assert "teacher: a data file it read changed since" in printed
    assert "distill: teacher was redone since" in printed or "distill: a data file it read changed" in printed
    assert "eval: " in printed and printed.count("skipping") <= 2
