"""An interrupted evaluation continues where it stopped (mtllm.evaluation.partial): the languages it
finished are not recomputed, the results equal an uninterrupted run's, and partial results written with
other settings or another model are refused before any work (tiny models, the pipeline fixture data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.errors import ConfigError
from mtllm.evaluation import evaluate as E
from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate
from mtllm.evaluation.partial import PARTIAL_FILE

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny MT-LLM and teacher, saved (the evaluation's key covers the saved folders' files)."""
    from mtllm.tasks import get_task

    root = tmp_path_factory.mktemp("models")
    labels = get_task("sib200").label_names
    torch.manual_seed(0)
    mtllm = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4))
    mtllm.set_head("classification", labels)
    teacher = MTLLMModel.llm_only("tiny:gemma3", lora=None)
    teacher.set_head("classification", labels)
    mtllm.save_pretrained(root / "mtllm")
    teacher.save_pretrained(root / "teacher")
    return root


def _settings(saved: Path, out: Path, **kw) -> EvaluateSettings:
    return EvaluateSettings(**{"task": "sib200", "data_dir": DATA, "output_dir": str(out), "batch_size": 4,
                               "model": str(saved / "mtllm"), "teacher": str(saved / "teacher"), **kw})


class Stop(Exception):
    """Stands for the process being killed mid-evaluation."""


def _counting(monkeypatch, name: str, stop_at: int | None = None) -> list[str]:
    """Wrap ``mtllm.evaluation.evaluate.<name>`` (one call per language), recording the languages it
    ran on; raise :class:`Stop` on call number ``stop_at`` (1-based), before it computes anything."""
    real, seen = getattr(E, name), []

    def wrapper(*args, **kwargs):
        seen.append(kwargs.get("lang"))
        if stop_at is not None and len(seen) == stop_at:
            raise Stop
        return real(*args, **kwargs)

    monkeypatch.setattr(E, name, wrapper)
    return seen


def test_an_interrupted_evaluation_continues_and_matches_an_uninterrupted_one(saved, tmp_path, monkeypatch):
    whole = run_evaluate(_settings(saved, tmp_path / "whole"), progress=False)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _counting(m, "predict_shared_encoder", stop_at=3)  # dies in the third language (swh_Latn)
        with pytest.raises(Stop):
            run_evaluate(_settings(saved, out), progress=False)
    partial = json.loads((out / PARTIAL_FILE).read_text())
    assert sorted(partial["langs"]) == ["eng_Latn", "fra_Latn"]
    assert not (out / "results.json").exists()
    # the rerun, with another batch size (how, not what, is computed), does only the language left
    seen = _counting(monkeypatch, "predict_shared_encoder")
    again = run_evaluate(_settings(saved, out, batch_size=3), progress=False)
    assert seen == ["swh_Latn"]
    assert again.systems == whole.systems
    assert not (out / PARTIAL_FILE).exists()  # removed once results.json is written
    data = json.loads((out / "results.json").read_text())
    assert data["systems"] == whole.systems
    assert any("continued after an interruption: 2 languages" in n for n in data["notes"])
    assert "continued after an interruption" in (out / "results.md").read_text()
    # a run that was never interrupted says nothing of the kind
    assert not any("interruption" in n for n in whole.notes)


def test_partial_results_with_other_settings_are_refused_before_any_work(saved, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _counting(m, "predict_shared_encoder", stop_at=2)
        with pytest.raises(Stop):
            run_evaluate(_settings(saved, out), progress=False)
    loads = []
    monkeypatch.setattr(E, "_load_mtllm", lambda *a, **k: loads.append(a) or pytest.fail("loaded a model"))
    with pytest.raises(ConfigError) as err:
        run_evaluate(_settings(saved, out, max_examples=4), progress=False)
    msg = str(err.value)
    assert PARTIAL_FILE in msg and "1 languages" in msg and "max_examples" in msg and "--overwrite" in msg
    assert not loads
    assert json.loads((out / PARTIAL_FILE).read_text())["langs"].keys() == {"eng_Latn"}  # nothing lost


def test_a_retrained_model_is_another_evaluation(saved, tmp_path, monkeypatch):
    import shutil

    model = tmp_path / "mtllm"
    shutil.copytree(saved / "mtllm", model)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _counting(m, "predict_shared_encoder", stop_at=2)
        with pytest.raises(Stop):
            run_evaluate(_settings(saved, out, model=str(model)), progress=False)
    retrained = MTLLMModel.from_pretrained(model)
    with torch.no_grad():
        retrained.head.weight.add_(1.0)
    retrained.save_pretrained(model)
    with pytest.raises(ConfigError, match=r"differs \(model: '.+' -> '.+'\)"):
        run_evaluate(_settings(saved, out, model=str(model)), progress=False)
    # --overwrite starts over: every language is evaluated with the retrained model
    seen = _counting(monkeypatch, "predict_shared_encoder")
    run_evaluate(_settings(saved, out, model=str(model), overwrite=True), progress=False)
    assert seen == ["eng_Latn", "fra_Latn", "swh_Latn"]
    assert not (out / PARTIAL_FILE).exists()


def test_an_unreadable_partial_file_starts_over(saved, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL_FILE).write_text('{"key": {"task": "sib')  # torn
    seen = _counting(monkeypatch, "predict_shared_encoder")
    run_evaluate(_settings(saved, out), progress=False)
    assert seen == ["eng_Latn", "fra_Latn", "swh_Latn"]


def test_an_interrupted_retrieval_probe_continues(saved, tmp_path, monkeypatch):
    kw = {"task": "retrieval", "systems": ["mtllm", "llm", "encoder"]}
    whole = run_evaluate(_settings(saved, tmp_path / "whole", **kw), progress=False)
    out = tmp_path / "out"
    calls: list[int] = []
    real = E.retrieval_accuracy

    def dies_in_the_second_language(*args):
        calls.append(1)
        if len(calls) == 4:  # 3 systems per language: the first system of the second language
            raise Stop
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(E, "retrieval_accuracy", dies_in_the_second_language)
        with pytest.raises(Stop):
            run_evaluate(_settings(saved, out, **kw), progress=False)
    assert list(json.loads((out / PARTIAL_FILE).read_text())["langs"]) == ["fra_Latn"]
    calls.clear()
    monkeypatch.setattr(E, "retrieval_accuracy", lambda *a: calls.append(1) or real(*a))
    again = run_evaluate(_settings(saved, out, **kw), progress=False)
    assert len(calls) == 3  # only swh_Latn's three systems
    assert again.systems == whole.systems
    fvu = "FVU against the teacher's English"
    assert again.meta["measures"][fvu]["systems"] == whole.meta["measures"][fvu]["systems"]
    assert not (out / PARTIAL_FILE).exists()


def test_mtllm_run_continues_an_interrupted_eval_stage(tmp_path, monkeypatch):
    """`mtllm run` killed inside its eval stage: the rerun skips the finished stages and the finished
    languages, and the eval stage's results equal those of a run that was never interrupted."""
    from mtllm.cli import main

    config = str(ROOT / "configs" / "tiny-sib200.yaml")

    def run(out: Path) -> int:
        return main(["run", "--config", config, "--data-dir", DATA, "--output-dir", str(out), "--progress", "false",
                     "--stages", "[stage1, teacher, distill, eval]", "--report_to", "none"])

    assert run(tmp_path / "whole") == 0
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _counting(m, "predict_shared_encoder", stop_at=2)
        with pytest.raises(Stop):
            run(out)
    assert json.loads((out / "eval-sib200" / "stage.json").read_text())["status"] == "running"
    seen = _counting(monkeypatch, "predict_shared_encoder")
    assert run(out) == 0
    assert seen == ["fra_Latn", "swh_Latn"]
    whole = json.loads((tmp_path / "whole" / "eval-sib200" / "results.json").read_text())
    again = json.loads((out / "eval-sib200" / "results.json").read_text())
    assert again["systems"] == whole["systems"]
    assert not (out / "eval-sib200" / PARTIAL_FILE).exists()


def test_models_passed_in_memory_keep_no_partial_results(saved, tmp_path, monkeypatch):
    """In-memory models have no saved files to fingerprint: nothing is kept, nothing is taken from a file."""
    models = {"mtllm": MTLLMModel.from_pretrained(saved / "mtllm"),
              "teacher": MTLLMModel.from_pretrained(saved / "teacher")}
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _counting(m, "predict_shared_encoder", stop_at=2)
        with pytest.raises(Stop):
            run_evaluate(_settings(saved, out, model=None, teacher=None), models=models, progress=False)
    assert not (out / PARTIAL_FILE).exists()


def test_a_finished_language_whose_file_changed_is_evaluated_again(saved, tmp_path, monkeypatch, caplog):
    """Results follow their data (issue 23): the tester cut a finished language's test file to 50 rows and the
    rerun reported the old accuracy; the language is now evaluated again on what its file holds."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _counting(m, "predict_shared_encoder", stop_at=3)
        with pytest.raises(Stop):
            run_evaluate(_settings(saved, out, data_dir=str(data)), progress=False)
    test_file = data / "sib200" / "fra_Latn" / "test.tsv"
    lines = test_file.read_text(encoding="utf-8").splitlines(keepends=True)
    test_file.write_text("".join(lines[:6]), encoding="utf-8")  # the header and 5 rows
    seen = _counting(monkeypatch, "predict_shared_encoder")
    caplog.set_level("INFO", logger="mtllm")
    again = run_evaluate(_settings(saved, out, data_dir=str(data)), progress=False)
    assert seen == ["fra_Latn", "swh_Latn"]  # eng_Latn unchanged: kept; fra_Latn changed: again
    assert "fra_Latn: its data changed since the interrupted run" in caplog.text
    fresh = run_evaluate(_settings(saved, tmp_path / "fresh", data_dir=str(data)), progress=False)
    assert again.systems == fresh.systems
    results = json.loads((out / "results.json").read_text())
    assert results["n_examples"]["fra_Latn"] == 5
    assert any("continued after an interruption: 1 languages" in n for n in results["notes"])
