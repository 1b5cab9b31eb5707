"""Property-based tests for tokenisation/collation on random Unicode in many scripts."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from mtllm.data.collate import collate_examples
from mtllm.tasks import Example

SCRIPTS = st.sampled_from(["Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Ethiopic", "Han", "Thai",
                           "Tifinagh", "Tibetan", "Hangul"])
RANGES = {"Latin": (0x41, 0x24F), "Cyrillic": (0x400, 0x4FF), "Greek": (0x391, 0x3C9), "Arabic": (0x621, 0x64A),
          "Hebrew": (0x5D0, 0x5EA), "Devanagari": (0x905, 0x939), "Ethiopic": (0x1200, 0x1357), "Han": (0x4E00, 0x9FFF),
          "Thai": (0xE01, 0xE30), "Tifinagh": (0x2D30, 0x2D67), "Tibetan": (0xF40, 0xF6C), "Hangul": (0xAC00, 0xD7A3)}


@st.composite
def texts(draw):
    script = draw(SCRIPTS)
    lo, hi = RANGES[script]
    words = draw(st.lists(st.text(st.characters(min_codepoint=lo, max_codepoint=hi), min_size=1, max_size=8),
                          min_size=1, max_size=40))
    text = " ".join(words)
    assume(any(c.isalnum() for c in text))  # only control/format characters: refused (tests/test_bad_inputs.py)
    return text


@pytest.fixture(scope="module")
def model():
    from mtllm import MTLLMModel

    torch.manual_seed(0)
    return MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=48)


@settings(max_examples=40, deadline=None)
@given(batch=st.lists(texts(), min_size=1, max_size=5), route=st.sampled_from(["encoder", "llm"]),
       pairs=st.booleans())
def test_collation_shapes_masks_and_truncation(model, batch, route, pairs):
    examples = [Example(id=str(i), texts=(t, t[::-1]) if pairs else (t,), label=i % 7) for i, t in enumerate(batch)]
    out = collate_examples(model, examples, route=route, lang="eng_Latn")
    ids = out["input_ids"] if route == "encoder" else out["llm_input_ids"]
    mask = out["attention_mask"] if route == "encoder" else out["llm_attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == len(batch) and ids.shape[1] <= 48
    lengths = mask.sum(1)
    assert int(lengths.max()) == ids.shape[1]  # padded to the longest, no further
    for row, n in zip(mask, lengths):  # right padding: ones then zeros
        assert row[:n].all() and not row[n:].any()
    # each row is the tokenizer's own encoding of the text (pairs joined by the separator), cut to 48 tokens:
    # the encoder keeps its end-of-sequence token, the LLM its <bos>
    tok = model.encoder_tokenizer if route == "encoder" else model.llm_tokenizer
    texts = [t + model.config.pair_separator + t[::-1] if pairs else t for t in batch]
    expected = []
    for text in texts:
        full = tok(text)["input_ids"]
        if route == "llm" and full[:1] != [tok.bos_token_id]:
            full = [tok.bos_token_id] + full
        expected.append(full)
    assert out["n_truncated"] == sum(len(full) > 48 for full in expected)
    for row, n, full in zip(ids, lengths.tolist(), expected):
        cut = full if len(full) <= 48 else full[:47] + full[-1:] if route == "encoder" else full[:48]
        assert row[:n].tolist() == cut
        assert (row[n:] == tok.pad_token_id).all()
    assert out["labels"].tolist() == [i % 7 for i in range(len(batch))]
    if route == "llm":
        assert (ids[:, 0] == model.llm_tokenizer.bos_token_id).all()
    with torch.no_grad():
        res = model(**{k: v for k, v in out.items() if k not in ("labels", "n_truncated")})
    assert torch.isfinite(res.pooled).all()
