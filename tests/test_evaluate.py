"""Evaluation on tiny models: every system, translate-test with a tiny random seq2seq model, the
retrieval probe, output files, and explicit language fallbacks."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.evaluation.evaluate import EvaluateSettings, retrieval_accuracy, run_evaluate

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


def test_all_systems_write_results(models, tmp_path, monkeypatch):
    from mtllm.baselines.encoder_probe import EncoderClassifier
    from mtllm.baselines.translate_test import TranslateSettings, Translator, translate_examples
    from mtllm.inference import predict
    from mtllm.tasks import get_task, load_examples

    monkeypatch.setenv("MTLLM_CACHE", str(tmp_path / "cache"))  # this test's own translation cache
    out = tmp_path / "out"
    settings = EvaluateSettings(task="sib200", data_dir=DATA, output_dir=str(out), batch_size=4,
                                systems=["mtllm", "llm", "encoder", "translate_test"], translate_model="tiny:m2m100")
    results = run_evaluate(settings, models=models, progress=False)
    data = json.loads((out / "results.json").read_text())
    assert data["task"] == "sib200" and data["metric"] == "accuracy"
    langs = ["eng_Latn", "fra_Latn", "swh_Latn"]
    assert set(data["systems"]) == {"mtllm", "llm", "encoder", "translate_test"}
    assert all(sorted(per_lang) == langs for per_lang in data["systems"].values())
    assert data["n_examples"] == {"eng_Latn": 8, "fra_Latn": 8, "swh_Latn": 8}
    assert data["systems"] == results.systems
    # every accuracy is the fraction of test labels that system's own predictions get right, recomputed here
    spec = get_task("sib200")
    probe = EncoderClassifier(models["mtllm"])
    probe.fit(load_examples(spec, "eng_Latn", "train", data_dir=DATA), spec.label_names, lang="eng_Latn")
    translator = Translator.from_pretrained("tiny:m2m100", TranslateSettings(mt_model="tiny:m2m100"))
    for lang in langs:
        examples = load_examples(spec, lang, "test", data_dir=DATA)
        labels = np.array([e.label for e in examples])
        english = examples if lang == "eng_Latn" else translate_examples(translator, examples, lang, progress=False)
        if lang != "eng_Latn":  # evaluate wrote the translations to the cache; this run only reads them
            assert (translator.last_stats.translated, translator.last_stats.cache_hits) == (0, 8)
        preds = {"mtllm": predict(models["mtllm"], examples, route="encoder", lang=lang, batch_size=4),
                 "llm": predict(models["teacher"], examples, route="llm", batch_size=4),
                 "encoder": probe.predict(examples, lang=lang),
                 "translate_test": predict(models["teacher"], english, route="llm", batch_size=4)}
        for system, p in preds.items():
            assert data["systems"][system][lang] == float((p == labels).mean()), (system, lang)
    for system, per_lang in data["systems"].items():
        assert data["averages"][system] == pytest.approx(sum(per_lang.values()) / len(langs))
    table = (out / "results.md").read_text()
    assert "swh_Latn" in table and "translate_test" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mtllm_and_encoder_share_one_encoder_pass(models, tmp_path):
    from mtllm.baselines.encoder_probe import EncoderClassifier
    from mtllm.evaluation.evaluate import predict_shared_encoder
    from mtllm.tasks import get_task, load_examples
    from mtllm.inference import predict

    mtllm = copy.deepcopy(models["mtllm"])  # the shared module fixture stays as it was
    models = dict(models, mtllm=mtllm)
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
        separate_mt = predict(mtllm, examples, route="encoder", lang="fra_Latn", batch_size=3)
        separate_enc = probe.predict(examples, lang="fra_Latn")
        assert len(calls) == 3 + 1  # separately: the MT-LLM's batches + the encoder baseline's own pass
    finally:
        hook.remove()
    assert mt.tolist() == separate_mt.tolist() and enc.tolist() == separate_enc.tolist()
    assert set(secs) == {"tokenize", "encoder_forward", "mtllm_after_encoder", "encoder_head"}
    results = run_evaluate(EvaluateSettings(task="sib200", data_dir=DATA, output_dir=str(tmp_path), batch_size=3,
                                            systems=["mtllm", "encoder"], langs=["fra_Latn"]),
                           models=models, progress=False)
    labels = np.array([e.label for e in examples])
    assert results.systems["mtllm"]["fra_Latn"] == float((separate_mt == labels).mean())
    assert results.systems["encoder"]["fra_Latn"] == float((separate_enc == labels).mean())
    assert "shared_encoder_forward" in results.meta["seconds"]


def test_unknown_language_and_system_are_clear_errors(models, tmp_path):
    from mtllm.data.languages import UnknownLanguageError

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


def _hand_retrieval(src_ND: torch.Tensor, tgt_ND: torch.Tensor) -> float:
    """Mean of src->tgt and tgt->src top-1 cosine nearest-neighbour accuracy; row i of each translates row i."""
    sim = (src_ND / src_ND.norm(dim=-1, keepdim=True)) @ (tgt_ND / tgt_ND.norm(dim=-1, keepdim=True)).T
    gold = torch.arange(len(sim))
    return ((sim.argmax(1) == gold).float().mean().item() + (sim.argmax(0) == gold).float().mean().item()) / 2


def test_retrieval_probe(models, tmp_path):
    from mtllm.tasks import load_examples

    settings = EvaluateSettings(task="retrieval", data_dir=DATA, output_dir=str(tmp_path), batch_size=4,
                                systems=["mtllm", "llm", "encoder"])
    models = dict(models, llm=models["teacher"])
    results = run_evaluate(settings, models=models, progress=False)
    assert set(results.systems) == {"mtllm", "llm", "encoder"}
    assert set(results.systems["mtllm"]) == {"fra_Latn", "swh_Latn"}  # English is the query side
    mtllm, llm = models["mtllm"], models["llm"]

    def encoder_alone(texts, lang):
        batch = mtllm.tokenize(texts, lang=lang)
        with torch.no_grad():
            hidden = mtllm.encoder(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    embed = {"mtllm": lambda texts, lang: mtllm.encode(texts, lang=lang),
             "llm": lambda texts, lang: llm.encode(texts, route="llm"),
             "encoder": encoder_alone}
    english = {e.id: e.texts[0] for e in load_examples("sib200", "eng_Latn", "test", data_dir=DATA)}
    for lang in ("fra_Latn", "swh_Latn"):
        target = {e.id: e.texts[0] for e in load_examples("sib200", lang, "test", data_dir=DATA)}
        ids = [i for i in english if i in target]  # translations share the id
        assert results.n_examples[lang] == len(ids) == 8
        for system, fn in embed.items():
            expected = _hand_retrieval(fn([english[i] for i in ids], "eng_Latn"), fn([target[i] for i in ids], lang))
            assert results.systems[system][lang] == pytest.approx(expected), (system, lang)
        # the FVU measure: each system's X state against the teacher's (the LLM alone) parallel English state
        teacher = embed["llm"]([english[i] for i in ids], "eng_Latn")
        fvu = results.meta["measures"]["FVU against the teacher's English"]["systems"]
        assert set(fvu) == {"mtllm", "llm"}  # the encoder lives in another space
        for system in ("mtllm", "llm"):
            student = embed[system]([target[i] for i in ids], lang)
            by_hand = ((student - teacher) ** 2).sum(-1).mean() / teacher.var(0).sum()
            assert fvu[system][lang] == pytest.approx(float(by_hand), rel=1e-4), (system, lang)
    english_fvu = ((embed["mtllm"](list(english.values()), "eng_Latn")
                    - embed["llm"](list(english.values()), "eng_Latn")) ** 2)
    assert fvu["mtllm"]["eng_Latn"] == pytest.approx(float(english_fvu.sum(-1).mean() / embed["llm"](
        list(english.values()), "eng_Latn").var(0).sum()), rel=1e-4)
    assert "eng_Latn" not in fvu["llm"]  # the teacher against itself
    assert "## FVU against the teacher's English" in (tmp_path / "results.md").read_text()


def test_alignment_fvu_is_zero_for_the_teacher_and_about_one_for_its_mean():
    from mtllm.modeling.objectives import alignment_fvu

    torch.manual_seed(0)
    teacher = torch.randn(50, 8) * torch.arange(1, 9)
    assert alignment_fvu(teacher, teacher) == 0.0
    assert alignment_fvu(teacher.mean(0, keepdim=True).expand_as(teacher), teacher) == pytest.approx(49 / 50)


def test_encoder_language_fallback_is_explicit_and_warned():
    model = MTLLMModel.from_encoder_and_llm("tiny:m2m100", "tiny:gemma3", lora=None)
    assert model.encoder_lang("fra_Latn") == "fra_Latn"
    with pytest.warns(UserWarning, match="fed to the encoder as"):
        assert model.encoder_lang("ita_Latn", fallbacks={"ita_Latn": "fra_Latn"}) == "fra_Latn"
    from mtllm.data.languages import UnsupportedLanguageError

    with pytest.raises(UnsupportedLanguageError, match="fallback"):
        model.encoder_lang("ita_Latn")
