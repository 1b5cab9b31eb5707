"""The stage-1 span objective: aligning two tokenisations by character offsets (property tests over
many scripts, with synthetic and real tokenizers), span pooling, the span targets, and a span run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtllm.data.spans import align_units, atoms
from mtllm.modeling.pooling import unit_mean_pool
from mtllm.modeling.objectives import stage1_loss, target_stats

ROOT = Path(__file__).resolve().parents[1]

SAMPLES = {
    "eng": "The artery that branches from the aorta, and supplies blood.",
    "hin": "नमस्ते दुनिया, यह परीक्षण है।",
    "zho": "我们今天去北京的大学学习。",
    "tha": "สวัสดีครับ วันนี้อากาศดี",
    "jpn": "東京は日本の首都です。",
    "arb": "ذهب الولد إلى المدرسة.",
    "rus": "Мальчик пошёл в школу, а потом домой.",
    "amh": "ሰላም ለዓለም።",
    "mixed": "Price: 12.5% in 2024 — très bien!",
}


# ------------------------------------------------------------------------------------------- atoms
def test_atoms_words_punctuation_and_scripts_without_spaces():
    text = "Hi, you're 2nd."
    assert [text[s:e] for s, e in atoms(text)] == ["Hi", ",", "you", "'", "re", "2nd", "."]
    hin = SAMPLES["hin"]  # vowel signs and viramas (marks) stay inside their word
    assert [hin[s:e] for s, e in atoms(hin)] == ["नमस्ते", "दुनिया", ",", "यह", "परीक्षण", "है", "।"]
    zho = "北京大学。"  # no spaces: one atom per character (the fallback)
    assert [zho[s:e] for s, e in atoms(zho)] == ["北", "京", "大", "学", "。"]
    tha = "วันนี้"
    assert [tha[s:e] for s, e in atoms(tha)] == list(tha)


# ------------------------------------------------------------------------- alignment, synthetic tokens
def _tokenise(text: str, cuts: list[int], *, attach_space: bool, specials: int) -> list[tuple[int, int]]:
    """Contiguous token spans cut at ``cuts``; ``attach_space`` folds a space before a token into it (as
    SentencePiece does); ``specials`` tokens ``(0, 0)`` in front."""
    bounds = sorted({0, len(text), *[c for c in cuts if 0 < c < len(text)]})
    spans = [(a, b) for a, b in zip(bounds, bounds[1:])]
    if attach_space:
        spans = [(a - 1, b) if a > 0 and text[a - 1] == " " and (a - 1, a) not in spans else (a, b) for a, b in spans]
    return [(0, 0)] * specials + spans


def _extent(text, offsets, units, unit):
    cores = []
    for (s, e), u in zip(offsets, units):
        if u == unit:
            piece = text[s:e]
            s2 = s + (len(piece) - len(piece.lstrip()))
            e2 = e - (len(piece) - len(piece.rstrip()))
            cores.append((s2, e2))
    return min(c[0] for c in cores), max(c[1] for c in cores)


def _check_alignment(text, off_a, off_b, units_a, units_b, n):
    assert len(units_a) == len(off_a) and len(units_b) == len(off_b)
    assert set(units_a) - {-1} == set(range(n)) == set(units_b) - {-1}  # every unit on both sides
    extents = [_extent(text, off_a, units_a, u) for u in range(n)]
    # both sides' tokens of a unit cover the same characters (when both tokenisations cover the whole text)
    assert extents == [_extent(text, off_b, units_b, u) for u in range(n)]
    # units come in text order and do not overlap
    assert all(extents[k][1] <= extents[k + 1][0] for k in range(n - 1))
    # every character of every atom belongs to exactly one unit
    covered = {i for s, e in extents for i in range(s, e)}
    assert {i for s, e in atoms(text) for i in range(s, e)} <= covered
    # special tokens and whitespace-only tokens belong to no unit
    for offsets, units in ((off_a, units_a), (off_b, units_b)):
        for (s, e), u in zip(offsets, units):
            if not text[s:e].strip():
                assert u == -1


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_alignment_properties_on_random_tokenisations(key, data):
    text = SAMPLES[key]
    cuts = st.lists(st.integers(1, max(1, len(text) - 1)), max_size=len(text))
    off_a = _tokenise(text, data.draw(cuts), attach_space=data.draw(st.booleans()),
                      specials=data.draw(st.integers(0, 2)))
    off_b = _tokenise(text, data.draw(cuts), attach_space=data.draw(st.booleans()),
                      specials=data.draw(st.integers(0, 2)))
    units_a, units_b, n = align_units(text, off_a, off_b)
    _check_alignment(text, off_a, off_b, units_a, units_b, n)
    assert n >= 1


def test_word_tokenisations_give_one_unit_per_word():
    text = "He sold his house in January."
    words = [(0, 2), (3, 7), (8, 11), (12, 17), (18, 20), (21, 28), (28, 29)]
    sentencepiece = [(0, 0), (0, 2), (2, 7), (7, 9), (9, 11), (11, 17), (17, 20), (20, 28), (28, 29)]
    units_a, units_b, n = align_units(text, words, sentencepiece)
    assert n == 7 and units_a == list(range(7))
    assert units_b == [-1, 0, 1, 2, 2, 3, 4, 5, 6]


def test_a_token_across_two_words_merges_them_and_a_prefix_is_shifted_away():
    text = "of the year"
    a = [(0, 6), (6, 11)]  # "of the" is one token on this side
    b = [(0, 0), (0, 6), (7, 9), (9, 13), (13, 16), (16, 18)]  # "query: of the year", the prefix first
    units_a, units_b, n = align_units(text, a, b, shift_b=len("query: "))
    assert n == 2 and units_a == [0, 1]
    assert units_b == [-1, -1, 0, 0, 1, 1]  # the special token and the prefix get -1


def test_a_unit_truncated_away_on_one_side_is_dropped():
    text = "one two three"
    units_a, units_b, n = align_units(text, [(0, 3), (3, 7), (7, 13)], [(0, 3), (3, 7)])
    assert (units_a, units_b, n) == ([0, 1, -1], [0, 1], 2)


# ------------------------------------------------------------------------- real (tiny) tokenizers
def test_alignment_with_the_tiny_models_tokenizers_on_many_scripts(tiny_model):
    from mtllm.training.stage1 import align_spans

    texts = list(SAMPLES.values())
    alignment = align_spans(tiny_model, texts)
    llm = tiny_model.tokenize(texts, route="llm", return_offsets=True)
    enc = tiny_model.tokenize(texts, route="encoder", return_offsets=True)
    shift = len(tiny_model.encoder_prefix)
    for i, text in enumerate(texts):
        off_a = llm["offset_mapping"][i]
        off_b = [(s - shift, e - shift) if e > s else (0, 0) for s, e in enc["offset_mapping"][i]]
        units_a, units_b, n = alignment.llm_units[i], alignment.encoder_units[i], alignment.n_units[i]
        assert n >= 1 and len(units_a) == len(off_a) and len(units_b) == len(off_b)
        assert set(units_a) - {-1} == set(range(n)) == set(units_b) - {-1}


# ------------------------------------------------------------------------------------------- pooling
def test_unit_mean_pool_is_the_mean_of_each_units_positions():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    units = torch.tensor([[-1, 0, 0, 1], [2, 2, 2, -1]])
    pooled = unit_mean_pool(hidden, units, 4)
    assert torch.allclose(pooled[0], hidden[0, 1:3].mean(0))
    assert torch.allclose(pooled[1], hidden[0, 3])
    assert torch.allclose(pooled[2], hidden[1, :3].mean(0))
    assert torch.equal(pooled[3], torch.zeros(3))  # a unit with no position


# --------------------------------------------------------------------------------- targets and loss
def test_teacher_span_targets_are_the_llms_word_means(tiny_model, tmp_path):
    from mtllm.training.stage1 import align_spans, teacher_span_targets

    texts = [SAMPLES["eng"], SAMPLES["rus"], SAMPLES["zho"]]
    alignment = align_spans(tiny_model, texts)
    spans = teacher_span_targets(tiny_model, texts, alignment, cache_dir=tmp_path, show_progress=False)
    assert spans.shape == (sum(alignment.n_units), tiny_model.config.llm_hidden_size) and spans.dtype == np.float16
    # by hand for the second text: the LLM (adapters disabled) on its own tokens, mean over each word's tokens
    batch = tiny_model.tokenize(texts[1:2], route="llm")
    with torch.no_grad(), tiny_model.adapters_disabled():
        hidden = tiny_model(llm_input_ids=batch["input_ids"],
                            llm_attention_mask=batch["attention_mask"]).last_hidden_state[0]
    units = torch.tensor(alignment.llm_units[1])
    first = alignment.n_units[0]
    for u in range(alignment.n_units[1]):
        expected = hidden[units == u].mean(0)
        assert torch.allclose(torch.from_numpy(np.asarray(spans[first + u], dtype=np.float32)), expected, atol=2e-2,
                              rtol=1e-2)
    # cached: a second call reads the same array from disk without running the model
    again = teacher_span_targets(tiny_model, texts, alignment, cache_dir=tmp_path, show_progress=False)
    assert isinstance(again, np.memmap) and np.array_equal(np.asarray(again), np.asarray(spans))
    # the same teacher pass filled the pooled targets' cache with what teacher_targets computes itself
    from mtllm.training.stage1 import teacher_targets

    assert len(list(tmp_path.glob("teacher-*"))) == 1
    cached = teacher_targets(tiny_model, texts, cache_dir=tmp_path, show_progress=False)
    fresh = teacher_targets(tiny_model, texts, cache_dir=None, show_progress=False)
    assert torch.allclose(cached, fresh, atol=1e-5)


def test_span_loss_equals_the_standardised_mse_of_word_means(tiny_model):
    from mtllm.training.stage1 import align_spans

    texts = [SAMPLES["eng"], SAMPLES["mixed"]]
    alignment = align_spans(tiny_model, texts)
    batch = tiny_model.tokenize(texts)
    n = sum(alignment.n_units)
    torch.manual_seed(1)
    span_targets = torch.randn(n, tiny_model.config.llm_hidden_size)
    targets = torch.randn(2, tiny_model.config.llm_hidden_size)
    units, counts = alignment.batch_units([0, 1], "encoder", batch["input_ids"].shape[1])
    assert counts == alignment.n_units and units.max().item() == n - 1  # the second text's units follow the first's
    full = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "targets": targets,
            "span_units": units, "span_targets": span_targets}
    stats, span_stats = target_stats(targets), target_stats(span_targets)
    tiny_model.eval()
    seq, m_seq = stage1_loss(tiny_model, full, stats=stats)
    span, m_span = stage1_loss(tiny_model, full, stats=stats, span_stats=span_stats, objective="span")
    both, m_both = stage1_loss(tiny_model, full, stats=stats, span_stats=span_stats, objective="sequence+span",
                               span_weight=0.5)
    # by hand: the student's states over each word's encoder tokens (positions shifted by what the model prepends)
    out = tiny_model(batch["input_ids"], batch["attention_mask"])
    pad = out.last_hidden_state.shape[1] - units.shape[1]
    units_full = torch.nn.functional.pad(units, (pad, 0), value=-1)
    student = torch.stack([out.last_hidden_state[units_full == u].mean(0) for u in range(n)])
    z = lambda x: (x - span_stats.mean_D) / span_stats.std_D  # noqa: E731
    expected = ((z(student) - z(span_targets)) ** 2).mean()
    assert torch.allclose(span, expected, rtol=1e-4)
    assert torch.allclose(both, seq + 0.5 * span, rtol=1e-5)
    assert "span_loss" in m_both and "span_fvu" in m_both and "span_loss" not in m_seq
    assert m_span["fvu"] == pytest.approx(m_seq["fvu"])  # the pooled FVU is always reported
    span.backward()
    assert tiny_model.projection.weight.grad is not None and tiny_model.projection.weight.grad.abs().sum() > 0


def test_span_loss_needs_its_statistics(tiny_model):
    batch = tiny_model.tokenize(["a text"])
    with pytest.raises(ValueError, match="span_stats"):
        stage1_loss(tiny_model, {**batch, "targets": torch.zeros(1, tiny_model.config.llm_hidden_size)},
                    stats=target_stats(torch.randn(4, tiny_model.config.llm_hidden_size)), objective="span")


# ------------------------------------------------------------------------------------------ a run
@pytest.mark.parametrize("objective", ["span", "sequence+span"])
def test_stage1_run_with_the_span_objective_learns_and_records_it(tmp_path, objective):
    from mtllm.settings import ModelSettings
    from mtllm.training.loop import TrainingArgs
    from mtllm.training.stage1 import Stage1Settings, run_stage1

    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          max_seq_length=64)
    stage1 = Stage1Settings(data=[str(ROOT / "tests" / "fixtures" / "english.txt")], stage1_objective=objective,
                            span_weight=0.5)
    args = TrainingArgs(output_dir=str(tmp_path), learning_rate=3e-3, batch_size=4, max_steps=20, warmup_ratio=0.1,
                        log_steps=5, save_steps=0, seed=0, progress=False, report_to="none")
    run_stage1(model, stage1, args)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "mse", "fvu", "span_loss", "span_fvu"} <= history[0].keys()
    first = np.mean([h["span_loss"] for h in history[:4]])
    last = np.mean([h["span_loss"] for h in history[-4:]])
    assert last < 0.8 * first, (first, last)
    saved = json.loads((tmp_path / "stage1_config.json").read_text())
    assert saved["stage1"]["stage1_objective"] == objective and saved["stage1"]["span_weight"] == 0.5
    assert list((tmp_path / "cache").glob("teacher_spans-*/spans.npy"))


def test_data_source_inside_the_data_directory(tmp_path):
    from mtllm.tasks.texts import load_stage1_texts, source_problem
    from mtllm.errors import DataError

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "texts.txt").write_text("first text here\nsecond text here\n", encoding="utf-8")
    assert load_stage1_texts(["data:corpus/texts.txt"], data_dir=str(tmp_path)) == [
        "first text here", "second text here"]
    assert "no such file" in source_problem("data:corpus/missing.txt", str(tmp_path))
    assert "inside the data directory" in source_problem("data:../escape.txt")
    with pytest.raises(DataError, match="--data-dir"):
        load_stage1_texts(["data:corpus/texts.txt"], data_dir=None)


def test_the_stage1_objective_key_does_not_clash_with_distillations_objective(tmp_path):
    from mtllm.cli import command_values

    preset = tmp_path / "preset.yaml"
    preset.write_text("encoder: tiny:xlmr\nllm: tiny:gemma3\nstage1_objective: sequence+span\nspan_weight: 0.5\n")
    adapt = command_values("adapt", ["--config", str(preset)])
    assert adapt["stage1_objective"] == "sequence+span" and adapt["span_weight"] == 0.5
    distill = command_values("distill", ["--config", str(preset), "--objective", "ce"])
    assert distill["objective"] == "ce" and "stage1_objective" not in distill
