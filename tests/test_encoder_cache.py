"""EncoderCache: cached frozen-encoder outputs give the uncached forward's results (up to fp16), are
reused, are rebuilt when texts/settings change or the entry is broken, and plug into stages 1 and 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.data.collate import collate_examples
from mtllm.tasks import Example
from mtllm.training.encoder_cache import EncoderCache, encoder_input_texts
from mtllm.training.loop import TrainingArgs
from mtllm.settings import ModelSettings
from mtllm.training.stage1 import Stage1Settings, run_stage1
from mtllm.training.distill import DistillSettings, run_distill
from mtllm.training.finetune import TaskSettings

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = str(ROOT / "tests" / "fixtures" / "english.txt")
PIPELINE = str(ROOT / "tests" / "fixtures" / "pipeline")
FP16 = dict(atol=2e-3, rtol=2e-3)  # fp16 storage of the encoder states


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                        max_seq_length=128)
    with torch.no_grad():  # non-zero LoRA so the adapter path is exercised too
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return m.eval()


class _Counter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1


def test_cached_forward_equals_uncached(model, english_texts, tmp_path):
    cache = EncoderCache(model, english_texts, cache_dir=tmp_path, batch_size=4)
    assert cache.built and len(cache) == len(english_texts)
    idx = [3, 0, 7, 12, 5]
    batch = model.tokenize([english_texts[i] for i in idx])
    with torch.no_grad():
        ref = model(batch["input_ids"], batch["attention_mask"])
        got = model(**cache.collate(idx))  # no tokens at all: states + mask
        got2 = model(batch["input_ids"], batch["attention_mask"],
                     encoder_hidden_states=cache.states_for(idx, batch["attention_mask"]))
    torch.testing.assert_close(got.pooled, ref.pooled, **FP16)
    torch.testing.assert_close(got2.pooled, ref.pooled, **FP16)
    assert torch.equal(got.attention_mask, ref.attention_mask) and torch.equal(got.pool_mask, ref.pool_mask)
    # the stored states are the encoder's, rounded to fp16
    with torch.no_grad():
        enc = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden, mask = cache.hidden_states(idx)
    assert hidden.dtype == torch.float16 and torch.equal(mask, batch["attention_mask"])
    real = mask.bool()
    torch.testing.assert_close(hidden.float()[real], enc[real], atol=1e-3, rtol=1e-3)
    assert (hidden[~real] == 0).all()


def test_pairs_and_multiple_choice_match_collate_examples(model, tmp_path):
    pairs = [Example(id=str(i), texts=(a, b), label=0) for i, (a, b) in
             enumerate([("A dog runs.", "The dog is running."), ("Le chat dort.", "Un chien court dans le parc.")])]
    mc = [Example(id="m1", texts=("The bridge opened in 1932.", "When did it open?"), label=1,
                  options=("1923", "1932", "1952", "1992")),
          Example(id="m2", texts=("Η γέφυρα άνοιξε το 1932.", "Πότε άνοιξε;"), label=1,
                  options=("1923", "1932", "πλοία", "τρένα"))]
    for examples, head in ((pairs, "classification"), (mc, "multiple_choice")):
        m = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=128).eval()
        m.set_head(head, ["a", "b"] if head == "classification" else ())
        cache = EncoderCache(m, encoder_input_texts(m, examples), cache_dir=tmp_path / head, lang="eng_Latn")
        batch = collate_examples(m, examples, route="encoder", lang="eng_Latn")
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
        with torch.no_grad():
            ref = m(**inputs).logits
            got = m(**inputs,
                    encoder_hidden_states=cache.states_for(range(len(examples)), batch["attention_mask"])).logits
        torch.testing.assert_close(got, ref, **FP16)


def test_cache_is_reused_without_running_the_encoder(model, english_texts, tmp_path):
    first = EncoderCache(model, english_texts, cache_dir=tmp_path)
    counter = _Counter(model.encoder)
    try:
        again = EncoderCache(model, english_texts, cache_dir=tmp_path)
    finally:
        counter.handle.remove()
    assert not again.built and counter.calls == 0 and again.root == first.root
    assert isinstance(again.hidden, np.memmap)  # memory-mapped, not loaded
    assert np.array_equal(np.asarray(again.hidden), np.asarray(first.hidden))
    assert len(list(tmp_path.iterdir())) == 1


def test_cache_is_rebuilt_when_texts_or_settings_change(model, english_texts, tmp_path):
    base = EncoderCache(model, english_texts, cache_dir=tmp_path)
    changed = EncoderCache(model, english_texts[:-1] + ["A new last text."], cache_dir=tmp_path)
    reordered = EncoderCache(model, english_texts[::-1], cache_dir=tmp_path)
    assert changed.built and reordered.built and len({base.key, changed.key, reordered.key}) == 3
    other_lang = EncoderCache(model, english_texts, cache_dir=tmp_path, lang="fra_Latn")
    assert other_lang.built and other_lang.key != base.key
    old = model.config.max_seq_length
    try:
        model.config.max_seq_length = 8  # a different truncation length: other token sequences
        short = EncoderCache(model, english_texts, cache_dir=tmp_path)
    finally:
        model.config.max_seq_length = old
    assert short.built and short.key != base.key
    full = [len(model.encoder_tokenizer(t)["input_ids"]) for t in english_texts]  # untruncated token counts
    assert short.lengths.tolist() == [min(n, 8) for n in full]
    assert short.n_truncated == sum(n > 8 for n in full) > 0
    # other encoder weights: another key
    other = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=128)
    with torch.no_grad():
        next(other.encoder.parameters()).add_(0.01)
    assert EncoderCache(other, english_texts, cache_dir=tmp_path).key != base.key


def test_broken_entry_is_rebuilt(model, english_texts, tmp_path):
    cache = EncoderCache(model, english_texts, cache_dir=tmp_path)
    good = np.asarray(cache.hidden).copy()
    hidden = cache.root / "hidden.npy"
    hidden.write_bytes(hidden.read_bytes()[:200])  # truncated by a crash
    rebuilt = EncoderCache(model, english_texts, cache_dir=tmp_path)
    assert rebuilt.built and np.array_equal(np.asarray(rebuilt.hidden), good)
    meta = json.loads((cache.root / "meta.json").read_text())
    meta["key"] = "something-else"
    (cache.root / "meta.json").write_text(json.dumps(meta))
    assert EncoderCache(model, english_texts, cache_dir=tmp_path).built
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_mismatched_batch_is_a_clear_error(model, english_texts, tmp_path):
    cache = EncoderCache(model, english_texts, cache_dir=tmp_path)
    batch = model.tokenize([english_texts[1], english_texts[0]])  # swapped order
    with pytest.raises(ValueError, match="does not match this batch"):
        cache.states_for([0, 1], batch["attention_mask"])
    with pytest.raises(ValueError, match="no texts"):
        EncoderCache(model, [], cache_dir=tmp_path)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_stage1_with_cached_encoder_outputs_matches(tmp_path):
    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          max_seq_length=64)
    runs = {}
    for cached in (False, True):
        out = tmp_path / str(cached)
        args = TrainingArgs(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=9, warmup_ratio=0.1,
                            seed=0, progress=False, report_to="none", log_steps=100)
        run_stage1(model, Stage1Settings(data=[ENGLISH], cache_encoder_outputs=cached), args)
        runs[cached] = _losses(out)
        assert any(p.name.startswith("encoder-") for p in (out / "cache").iterdir()) == cached
    assert len(runs[True]) == 9
    np.testing.assert_allclose(runs[True], runs[False], rtol=2e-2, atol=1e-3)


def test_distill_with_cached_encoder_outputs_matches(tmp_path):
    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          max_seq_length=64)
    task = TaskSettings(task="sib200", data_dir=PIPELINE, eval_batch_size=8)
    runs = {}
    for cached in (False, True):
        out = tmp_path / str(cached)
        args = TrainingArgs(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=6, warmup_ratio=0.1,
                            seed=0, progress=False, report_to="none", log_steps=100)
        run_distill(model, task, DistillSettings(stage1_model=None, objective="ce", train_projection=True,
                                                 cache_encoder_outputs=cached), args)
        runs[cached] = _losses(out)
    np.testing.assert_allclose(runs[True], runs[False], rtol=2e-2, atol=1e-3)
