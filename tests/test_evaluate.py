"""Evaluation on tiny models: every system, translate-test with a tiny random seq2seq model, the
retrieval probe, output files, and explicit language fallbacks."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.evaluation.evaluate import EvaluateSettings, encoder_lang, retrieval_accuracy, run_evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    mtllm = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4))
    from mtllm.tasks import get_task

    labels = get_task("sib200").label_names
    mtllm.set_head("classification", labels)
    teacher = MTLLMModel.llm_only("tiny:gemma3", lora=None)
    teacher.set_head("classification", labels)
    return {"mtllm": mtllm, "teacher": teacher}


def test_all_systems_write_results(models, tmp_path):
    settings = EvaluateSettings(task="sib200", data_dir=DATA, output_dir=str(tmp_path), batch_size=4,
                                systems=["mtllm", "llm", "encoder", "translate_test"], translate_model="tiny:m2m100")
    results = run_evaluate(settings, models=models, progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["task"] == "sib200" and data["metric"] == "accuracy"
    assert set(data["systems"]) == {"mtllm", "llm", "encoder", "translate_test"}
    for system, per_lang in data["systems"].items():
        assert set(per_lang) == {"eng_Latn", "fra_Latn", "swh_Latn"}
        assert all(0.0 <= v <= 1.0 for v in per_lang.values())
    assert data["n_examples"] == {"eng_Latn": 8, "fra_Latn": 8, "swh_Latn": 8}
    assert set(data["averages"]) == set(data["systems"])
    table = (tmp_path / "results.md").read_text()
    assert "swh_Latn" in table and "translate_test" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results.systems["mtllm"]["eng_Latn"] == data["systems"]["mtllm"]["eng_Latn"]
    # translations are cached on disk and reused
    import os

    assert list(Path(os.environ["MTLLM_CACHE"]).glob("translations/*.jsonl"))


def test_mtllm_and_encoder_share_one_encoder_pass(models, tmp_path):
    from mtllm.baselines import EncoderClassifier
    from mtllm.evaluation.evaluate import predict_shared_encoder
    from mtllm.tasks import get_task, load_examples
    from mtllm.training.stage2 import predict

    mtllm = models["mtllm"]
    spec = get_task("sib200")
    with torch.no_grad():
        mtllm.head.weight.normal_()  # distinct logits, so that the comparison can fail
    probe = EncoderClassifier(mtllm)
    probe.fit(load_examples(spec, "eng_Latn", "train", data_dir=DATA), spec.label_names, lang="eng_Latn")
    examples = load_examples(spec, "fra_Latn", "test", data_dir=DATA)
    calls = []
    hook = mtllm.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        mt, enc, secs = predict_shared_encoder(mtllm, probe, examples, lang="fra_Latn", batch_size=3)
        assert len(calls) == 3  # 8 examples in batches of 3: the encoder ran once per batch, for both systems
        calls.clear()
        separate_mt = predict(mtllm, examples, path="encoder", lang="fra_Latn", batch_size=3)
        separate_enc = probe.predict(examples, lang="fra_Latn")
        assert len(calls) == 3 + 1  # separately: the MT-LLM's batches + the encoder baseline's own pass
    finally:
        hook.remove()
    assert mt.tolist() == separate_mt.tolist() and enc.tolist() == separate_enc.tolist()
    assert set(secs) == {"tokenize", "encoder_forward", "mtllm_after_encoder", "encoder_head"}
    results = run_evaluate(EvaluateSettings(task="sib200", data_dir=DATA, output_dir=str(tmp_path), batch_size=3,
                                            systems=["mtllm", "encoder"], langs=["fra_Latn"]),
                           models=models, progress=False)
    assert results.systems["mtllm"]["fra_Latn"] == float((separate_mt == [e.label for e in examples]).mean())
    assert "shared_encoder_forward" in results.meta["seconds"]


def test_unknown_language_and_system_are_clear_errors(models, tmp_path):
    from mtllm.languages import UnknownLanguageError

    with pytest.raises(UnknownLanguageError, match="swh_Latn"):
        run_evaluate(EvaluateSettings(task="sib200", data_dir=DATA, langs=["swh_Ltn"], output_dir=str(tmp_path)),
                     models=models, progress=False)
    with pytest.raises(ValueError, match="translate_test"):
        run_evaluate(EvaluateSettings(task="sib200", data_dir=DATA, systems=["gpt"], output_dir=str(tmp_path)),
                     models=models, progress=False)


def test_retrieval_accuracy_function():
    x = torch.randn(5, 8)
    assert retrieval_accuracy(x, x) == (1.0, 1.0)
    a, b = retrieval_accuracy(x, x[[1, 0, 2, 3, 4]])
    assert a == pytest.approx(0.6) and b == pytest.approx(0.6)


def test_retrieval_probe(models, tmp_path):
    settings = EvaluateSettings(task="retrieval", data_dir=DATA, output_dir=str(tmp_path), batch_size=4,
                                systems=["mtllm", "llm", "encoder"])
    models = dict(models, llm=models["teacher"])
    results = run_evaluate(settings, models=models, progress=False)
    assert set(results.systems) == {"mtllm", "llm", "encoder"}
    assert set(results.systems["mtllm"]) == {"fra_Latn", "swh_Latn"}  # English is the query side
    assert all(0 <= v <= 1 for s in results.systems.values() for v in s.values())


def test_encoder_language_fallback_is_explicit_and_warned():
    model = MTLLMModel.from_encoder_and_llm("tiny:m2m100", "tiny:gemma3", lora=None)
    assert encoder_lang(model, "fra_Latn") == "fra_Latn"
    with pytest.warns(UserWarning, match="fed to the encoder as"):
        assert encoder_lang(model, "ita_Latn", fallbacks={"ita_Latn": "fra_Latn"}) == "fra_Latn"
    from mtllm.languages import UnsupportedLanguageError

    with pytest.raises(UnsupportedLanguageError, match="fallback"):
        encoder_lang(model, "ita_Latn")
