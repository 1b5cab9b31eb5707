"""Multiple-choice span finding (mtllm.data.multiple_choice) against real fast tokenizers of three families
(byte-level BPE, SentencePiece-like Unigram/Metaspace, BERT WordPiece) trained on the fly, plus the
tiny model tokenizers, over many scripts."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtllm.data.multiple_choice import (DEFAULT_TEMPLATE, MultipleChoiceTemplate, OptionTruncatedError,
                                   char_to_token_spans, format_multiple_choice, option_token_spans)
from mtllm.modeling.pooling import span_mean_pool


def _chars(first: int, last: int, step: int = 1) -> str:
    return "".join(chr(c) for c in range(first, last + 1, step))


#: Letters (and marks) per script; combining marks are also mixed into other scripts' words.
SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéèüößçñøåłİı",
    "cyrillic": _chars(0x0410, 0x044F) + "ёЁїєґ",
    "greek": _chars(0x0391, 0x03A1) + _chars(0x03A3, 0x03A9) + _chars(0x03B1, 0x03C9) + "άέήίόύώ",
    "arabic": _chars(0x0621, 0x063A) + _chars(0x0641, 0x064A) + "\u064b\u064e\u0650",
    "hebrew": _chars(0x05D0, 0x05EA) + "\u05b0\u05b7",
    "devanagari": _chars(0x0905, 0x0939) + _chars(0x093E, 0x094D) + "\u0902",
    "bengali": _chars(0x0985, 0x098C) + _chars(0x0995, 0x09A8) + _chars(0x09BE, 0x09C4) + "\u09cd",
    "thai": _chars(0x0E01, 0x0E2E) + _chars(0x0E31, 0x0E3A) + _chars(0x0E40, 0x0E4B),
    "ethiopic": _chars(0x1200, 0x1248) + _chars(0x12A0, 0x12D0),
    "tifinagh": _chars(0x2D30, 0x2D67),
    "tibetan": _chars(0x0F40, 0x0F47) + _chars(0x0F49, 0x0F6C) + _chars(0x0F71, 0x0F7D) + "\u0f0b",
    "cjk": _chars(0x4E00, 0x4E00 + 300) + _chars(0x3041, 0x3096) + _chars(0x30A1, 0x30FA),
    "hangul": _chars(0xAC00, 0xAC00 + 11000, 37),
    "emoji": _chars(0x1F600, 0x1F64F) + "👍🏽❤️🎉🚀🌍" + "👩\u200d💻",
    "combining": "aeiounAEIOU" + _chars(0x0300, 0x036F),
    "digits_punct": "0123456789.,;:!?()\"'-–«»¿¡%",
}
ALL_CHARS = "".join(SCRIPTS.values())


def _word(rng: random.Random, script: str) -> str:
    return "".join(rng.choice(SCRIPTS[script]) for _ in range(rng.randint(1, 7)))


def _training_corpus() -> list[str]:
    """A small multi-script corpus: random words per script, mixed sentences and formatted examples."""
    from mtllm.sources.tiny import TINY_CORPUS

    rng = random.Random(0)
    corpus = list(dict.fromkeys(TINY_CORPUS))
    for script in SCRIPTS:
        for _ in range(12):
            corpus.append(" ".join(_word(rng, script) for _ in range(rng.randint(3, 10))))
    for _ in range(20):
        scripts = list(SCRIPTS)
        options = [" ".join(_word(rng, rng.choice(scripts)) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        text, _ = format_multiple_choice(_word(rng, "latin") + " " + _word(rng, rng.choice(scripts)) + ".",
                                         _word(rng, rng.choice(scripts)) + "?", options)
        corpus.append(text)
    corpus.append(ALL_CHARS)
    return corpus


class _RawTokenizer:
    """A ``tokenizers.Tokenizer`` behind the same tiny interface as a transformers fast tokenizer."""

    def __init__(self, tok, *, decodes_exactly: bool):
        self.tok, self.decodes_exactly = tok, decodes_exactly

    def encode(self, text: str, max_length: int | None = None):
        if max_length is None:
            self.tok.no_truncation()
        else:
            self.tok.enable_truncation(max_length)
        enc = self.tok.encode(text)
        self.tok.no_truncation()
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


class _HFTokenizer:
    def __init__(self, tok):
        self.tok, self.decodes_exactly = tok, False

    def encode(self, text: str, max_length: int | None = None):
        enc = self.tok(text, return_offsets_mapping=True, truncation=max_length is not None, max_length=max_length)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids) -> str:
        return self.tok.decode(ids)


def _byte_level_bpe(corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)   # GPT-2 style: offsets keep the space
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


def _unigram_metaspace(corpus):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = corpus[:-1]            # not every character: the rest becomes <unk> (the trainer must keep each seen one)
    trainer = trainers.UnigramTrainer(vocab_size=len(set("".join(corpus))) + 500,
                                      special_tokens=["<pad>", "<bos>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return tok


def _wordpiece(corpus):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False, clean_text=True,
                                                handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=700, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
                                        show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
    special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


@pytest.fixture(scope="module")
def toks():
    from mtllm.sources.tiny import tiny_encoder_tokenizer, tiny_llm_tokenizer

    corpus = _training_corpus()
    return {
        "byte_bpe": _RawTokenizer(_byte_level_bpe(corpus), decodes_exactly=True),
        "unigram_metaspace": _RawTokenizer(_unigram_metaspace(corpus), decodes_exactly=False),
        "wordpiece": _RawTokenizer(_wordpiece(corpus), decodes_exactly=False),
        "tiny_llm": _HFTokenizer(tiny_llm_tokenizer()),
        "tiny_encoder": _HFTokenizer(tiny_encoder_tokenizer()),
    }


TOKENIZERS = ["byte_bpe", "unigram_metaspace", "wordpiece", "tiny_llm", "tiny_encoder"]

# ----------------------------------------------------------------------------- strategies
_script = st.sampled_from(sorted(SCRIPTS))


@st.composite
def words(draw, letters_only: bool = False):
    script = draw(_script)
    alphabet = SCRIPTS[script]
    word = draw(st.text(alphabet=alphabet, min_size=1, max_size=7))
    if letters_only or script in ("combining", "digits_punct", "emoji"):
        # make sure the word has a letter, so every option has characters no normaliser drops
        word = draw(st.sampled_from(SCRIPTS["latin"] + SCRIPTS["cjk"][:50] + SCRIPTS["thai"][:10])) + word
    return word


def phrases(min_words: int, max_words: int):
    return st.lists(words(), min_size=min_words, max_size=max_words).map(" ".join)


options_st = st.lists(
    st.tuples(st.lists(words(letters_only=True), min_size=1, max_size=4).map(" ".join),
              st.sampled_from(["", " ", "  ", "\t"]), st.sampled_from(["", " ", " \n"])).map(lambda t: t[1] + t[0]
                                                                                             + t[2]),
    min_size=2, max_size=5)


# ----------------------------------------------------------------------------- format
def test_format_default_layout():
    text, spans = format_multiple_choice(" The cat sleeps. ", "Where does it sleep?",
                                         ["on the mat", " in a box ", "猫", "🙂"])
    assert text == "The cat sleeps. Where does it sleep?\n1 on the mat\n2 in a box\n3 猫\n4 🙂"
    assert [text[s:e] for s, e in spans] == ["on the mat", "in a box", "猫", "🙂"]
    assert spans == sorted(spans)
    assert format_multiple_choice("The cat sleeps.", "Where?", ["a", "b"], template=DEFAULT_TEMPLATE) == \
        format_multiple_choice("The cat sleeps.", "Where?", ["a", "b"])


def test_format_custom_template_and_letters():
    tpl = MultipleChoiceTemplate(stem="Passage: {passage}\nQuestion: {question}", option="\n({letter}) {option}.")
    text, spans = format_multiple_choice("P", "Q?", ["x", "y"], template=tpl)
    assert text == "Passage: P\nQuestion: Q?\n(A) x.\n(B) y."
    assert [text[s:e] for s, e in spans] == ["x", "y"]
    # braces in the inputs are text, not format fields
    text, spans = format_multiple_choice("{passage}", "{x}?", ["{option}", "a}"])
    assert [text[s:e] for s, e in spans] == ["{option}", "a}"]


@pytest.mark.parametrize("bad", [["a", ""], ["a", "   "], ["\n\t", "b"]])
def test_format_rejects_empty_options(bad):
    with pytest.raises(ValueError, match="empty"):
        format_multiple_choice("p", "q", bad)


def test_format_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one option"):
        format_multiple_choice("p", "q", [])
    with pytest.raises(TypeError, match="not one string"):
        format_multiple_choice("p", "q", "abcd")
    with pytest.raises(TypeError, match="option 1"):
        format_multiple_choice("p", "q", ["a", 3])
    with pytest.raises(ValueError, match="exactly once"):
        MultipleChoiceTemplate(option="\n{number}")
    with pytest.raises(ValueError, match="unknown fields"):
        MultipleChoiceTemplate(option="\n{num} {option}")
    with pytest.raises(ValueError, match="unknown fields"):
        MultipleChoiceTemplate(stem="{context} {question}")


@settings(max_examples=60, deadline=None)
@given(passage=phrases(0, 8), question=phrases(0, 5), options=options_st)
def test_format_property(passage, question, options):
    text, spans = format_multiple_choice(passage, question, options)
    assert [text[s:e] for s, e in spans] == [o.strip() for o in options]
    for k, (s, e) in enumerate(spans):
        assert text[:s].endswith(f"\n{k + 1} ")
        assert s < e
        if k + 1 < len(spans):
            assert text[e:spans[k + 1][0]] == f"\n{k + 2} "
    assert spans[-1][1] == len(text)


# ----------------------------------------------------------------------------- char -> token spans (synthetic)
def test_spans_with_special_tokens_leading_space_and_shared_chars():
    text, chars = format_multiple_choice("P", "Q", ["ab cd", "🙂", "x"])
    assert text == "P Q\n1 ab cd\n2 🙂\n3 x"
    # <bos> (0,0); SentencePiece-style '▁ab' offsets include the space before the option; the emoji is three
    # byte-level tokens with the same offsets; '\n2' merged; </s> (0,0)
    offsets = [(0, 0), (0, 1), (1, 3), (3, 4), (4, 5), (5, 8), (8, 11), (11, 12), (12, 13), (13, 14),
               (14, 15), (14, 15), (14, 15), (15, 17), (17, 19), (0, 0)]
    text_pieces = [text[s:e] for s, e in offsets]
    assert text_pieces[5:8] == [" ab", " cd", "\n"] and text_pieces[13] == "\n3"
    assert char_to_token_spans(offsets, chars) == [(5, 7), (10, 13), (14, 15)]
    assert option_token_spans([offsets], [chars]).tolist() == [[[5, 7], [10, 13], [14, 15]]]


def test_spans_with_overlapping_offsets_and_one_token_for_several_chars():
    text, chars = format_multiple_choice("", "Q", ["abc", "de"])      # " Q\n1 abc\n2 de"
    assert chars == [(5, 8), (11, 13)]
    offsets = [(0, 0), (0, 2), (2, 5), (4, 6), (5, 7), (7, 9), (9, 11), (10, 13)]
    assert char_to_token_spans(offsets, chars) == [(3, 6), (7, 8)]
    # a token covering the end of an option and the next marker belongs to that option only
    assert char_to_token_spans([(0, 5), (5, 9), (9, 10), (10, 11), (11, 13)], chars) == [(1, 2), (4, 5)]


def test_n_tokens_char_offset_and_input_types():
    offsets = [(0, 0), (0, 7), (7, 8), (8, 10), (10, 12), (0, 0), (0, 0)]
    chars = [(1, 3), (3, 5)]
    assert char_to_token_spans(offsets, chars, char_offset=7) == [(3, 4), (4, 5)]
    assert char_to_token_spans(torch.tensor(offsets), torch.tensor(chars), char_offset=7) == [(3, 4), (4, 5)]
    with pytest.raises(OptionTruncatedError):
        char_to_token_spans(offsets, chars, char_offset=7, n_tokens=4)
    with pytest.raises(ValueError, match="n_tokens"):
        char_to_token_spans(offsets, chars, n_tokens=8)
    with pytest.raises(ValueError, match="empty"):
        char_to_token_spans(offsets, [(3, 3)])


def test_truncation_error_and_allow_truncated():
    chars = [(2, 4), (6, 8), (10, 12)]
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6), (6, 7)]          # the cut fell inside option 1
    with pytest.raises(OptionTruncatedError, match=r"option 2 \(number 3\).*max") as info:
        char_to_token_spans(offsets, chars)
    assert info.value.option_index == 2 and isinstance(info.value, ValueError)
    assert char_to_token_spans(offsets, chars, allow_truncated=True) == [(2, 3), (4, 5), (5, 5)]
    with pytest.raises(OptionTruncatedError, match="row 1, option 2") as info:
        option_token_spans([offsets + [(7, 8), (8, 10), (10, 12)], offsets], [chars, chars])
    assert info.value.row == 1 and info.value.option_index == 2
    spans = option_token_spans([offsets + [(7, 8), (8, 10), (10, 12)], offsets], [chars, chars],
                               allow_truncated=True)
    assert spans.tolist() == [[[2, 3], [4, 6], [7, 8]], [[2, 3], [4, 5], [5, 5]]]
    # an empty span pools to zeros
    pooled = span_mean_pool(torch.ones(2, 8, 3), spans)
    assert pooled[1, 2].abs().sum() == 0 and pooled[1, 0].eq(1).all() and pooled[0, 2].eq(1).all()


def test_batch_masks_and_errors():
    chars = [[(1, 2), (3, 4)], [(0, 1), (2, 3)]]
    left_padded = [[(0, 0), (0, 0), (1, 2), (3, 4)], [(0, 0), (0, 1), (2, 3), (0, 0)]]
    mask = [[0, 0, 1, 1], [1, 1, 1, 0]]
    spans = option_token_spans({"offset_mapping": torch.tensor(left_padded), "attention_mask": torch.tensor(mask)},
                               chars)
    assert spans.dtype == torch.long and spans.shape == (2, 2, 2)
    assert spans.tolist() == [[[2, 3], [3, 4]], [[1, 2], [2, 3]]]
    assert option_token_spans(left_padded, chars, n_tokens=[4, 3]).tolist() == spans.tolist()
    with pytest.raises(ValueError, match="same number of options"):
        option_token_spans(left_padded, [chars[0], chars[1][:1]])
    with pytest.raises(ValueError, match="rows"):
        option_token_spans(left_padded, chars[:1])
    with pytest.raises(ValueError, match="char_offset"):
        option_token_spans(left_padded, chars, char_offset=[1])
    with pytest.raises(ValueError, match="attention_mask"):
        option_token_spans(left_padded, chars, attention_mask=[[1, 1, 1, 1]])
    assert option_token_spans([], []).shape == (0, 0, 2)
    # per-row prefixes
    shifted = option_token_spans([[(0, 0), (5, 6), (7, 8)], [(0, 0), (0, 1), (2, 3)]], chars[1:] * 2,
                                 char_offset=[5, 0])
    assert shifted.tolist() == [[[1, 2], [2, 3]], [[1, 2], [2, 3]]]


# ----------------------------------------------------------------------------- real tokenizers, many scripts
def _check_spans(text, char_spans, ids, offsets, spans, tok):
    K = len(char_spans)
    assert len(spans) == K
    visible = set()                     # characters that some token covers (normalisers may drop a few)
    for s, e in offsets:
        visible.update(range(s, e))
    prev_end = 0
    for k, ((cs, ce), (ts, te)) in enumerate(zip(char_spans, spans)):
        assert ts < te, f"option {k} has an empty span"
        assert ts >= prev_end, "spans overlap or are out of order"
        prev_end = te
        # exactly the tokens that overlap the option, and the span is tight
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < ce and e > cs]
        assert inside and min(inside) == ts and max(inside) == te - 1
        # the characters the span's tokens cover hold the whole option, and nothing of the others
        cover_start = min(offsets[i][0] for i in range(ts, te) if offsets[i][1] > offsets[i][0])
        cover_end = max(offsets[i][1] for i in range(ts, te))
        seen = [c for c in range(cs, ce) if c in visible]
        assert seen, f"option {k} {text[cs:ce]!r} has no visible character"
        assert cover_start <= seen[0] and cover_end > seen[-1]
        lo = char_spans[k - 1][1] if k else 0
        hi = char_spans[k + 1][0] if k + 1 < K else len(text)
        assert lo <= cover_start and cover_end <= hi, "an option's tokens reach into another option"
        assert text[cs:ce] in text[min(cover_start, cs):max(cover_end, ce)]
        if tok.decodes_exactly:
            assert tok.decode(ids[ts:te]).strip() == text[cs:ce]


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(passage=phrases(0, 10), question=phrases(1, 5), options=options_st)
def test_real_tokenizers_many_scripts(toks, name, passage, question, options):
    tok = toks[name]
    text, char_spans = format_multiple_choice(passage, question, options)
    ids, offsets = tok.encode(text)
    spans = char_to_token_spans(offsets, char_spans, n_tokens=len(ids))
    _check_spans(text, char_spans, ids, offsets, spans, tok)
    # a prepended <bos> with offsets (0, 0), as MTLLMModel.tokenize adds it, shifts every span by one
    assert char_to_token_spans([(0, 0)] + offsets, char_spans) == [(s + 1, e + 1) for s, e in spans]
    # an encoder prefix ("query: "): shift the character spans
    ids_p, offsets_p = tok.encode("query: " + text)
    spans_p = char_to_token_spans(offsets_p, char_spans, char_offset=len("query: "))
    _check_spans("query: " + text, [(s + 7, e + 7) for s, e in char_spans], ids_p, offsets_p, spans_p, tok)


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(passage=phrases(0, 10), question=phrases(1, 5), options=options_st, data=st.data())
def test_real_tokenizers_truncation(toks, name, passage, question, options, data):
    tok = toks[name]
    text, char_spans = format_multiple_choice(passage, question, options)
    ids, offsets = tok.encode(text)
    full = char_to_token_spans(offsets, char_spans)
    # cut right before the last option's first token (keep a trailing special token if the tokenizer adds one)
    n_end_special = 1 if offsets[-1] == (0, 0) else 0
    start_last = full[-1][0]
    keep = start_last + n_end_special
    cut_ids, cut_offsets = tok.encode(text, max_length=keep)
    assert len(cut_ids) == keep
    with pytest.raises(OptionTruncatedError, match=f"option {len(options) - 1} ") as info:
        char_to_token_spans(cut_offsets, char_spans)
    assert info.value.option_index == len(options) - 1
    spans = char_to_token_spans(cut_offsets, char_spans, allow_truncated=True)
    assert spans[:-1] == full[:-1]
    assert spans[-1][0] == spans[-1][1]
    # a cut inside an option keeps the tokens that survive
    k = data.draw(st.integers(0, len(options) - 1))
    s, e = full[k]
    if e - s >= 2:
        cut = s + data.draw(st.integers(1, e - s - 1))
        cut_ids, cut_offsets = tok.encode(text, max_length=cut + n_end_special)
        spans = char_to_token_spans(cut_offsets, char_spans[:k + 1])
        assert spans[:k] == full[:k] and spans[k] == (s, cut)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_matches_rows_with_a_padded_hf_batch(toks, side):
    hf = toks["tiny_llm"].tok
    examples = [("Le chat dort.", "Où?", ["sur le tapis", "dans la boîte", "猫", "🙂 ok"]),
                ("", "Кто спит?", ["кошка", "собака", "никто", "все"]),
                ("القطة تنام على السجادة الدافئة.", "ماذا؟", ["القطة", "ድመቷ", "बिल्ली", "γάτα"])]
    formatted = [format_multiple_choice(*ex) for ex in examples]
    prev = hf.padding_side
    hf.padding_side = side
    try:
        batch = hf([t for t, _ in formatted], padding=True, return_offsets_mapping=True, return_tensors="pt")
    finally:
        hf.padding_side = prev
    spans = option_token_spans(batch, [c for _, c in formatted])
    assert spans.shape == (3, 4, 2) and spans.dtype == torch.long
    for i, (text, chars) in enumerate(formatted):
        row = hf(text, return_offsets_mapping=True)["offset_mapping"]
        shift = batch["attention_mask"].shape[1] - len(row) if side == "left" else 0
        assert spans[i].tolist() == [[s + shift, e + shift] for s, e in char_to_token_spans(row, chars)]
        for k, (s, e) in enumerate(spans[i].tolist()):
            assert examples[i][2][k].replace(" ", "") in hf.decode(batch["input_ids"][i, s:e]).replace(" ", "") \
                or "<unk>" in hf.decode(batch["input_ids"][i, s:e])


def test_with_mtllm_tokenize_and_forward():
    """The offsets MTLLMModel.tokenize returns (LLM path with <bos>, encoder path) feed the model's option_spans."""
    from mtllm import MTLLMModel

    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=64)
    model.eval()
    examples = [("The cat sleeps on the warm mat.", "Where?", ["on the mat", "in the park", "猫", "القطة"]),
                ("Die Katze schläft.", "Wer?", ["die Katze", "der Hund", "ድመቷ", "Кошка"])]
    formatted = [format_multiple_choice(*ex) for ex in examples]
    texts, chars = [t for t, _ in formatted], [c for _, c in formatted]
    for route in ("llm", "encoder"):
        enc = model.tokenize(texts, route=route, return_offsets=True)
        spans = option_token_spans(enc["offset_mapping"], chars, attention_mask=enc["attention_mask"])
        tok = model.llm_tokenizer if route == "llm" else model.encoder_tokenizer
        for i in range(len(texts)):
            for k, (s, e) in enumerate(spans[i].tolist()):
                piece = tok.decode(enc["input_ids"][i, s:e]).replace(" ", "")
                assert examples[i][2][k].replace(" ", "") in piece or "<unk>" in piece
        with torch.no_grad():
            if route == "llm":
                out = model(llm_input_ids=enc["input_ids"], llm_attention_mask=enc["attention_mask"],
                            option_spans=spans)
            else:
                out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], option_spans=spans)
        assert out.pooled.shape[:2] == (2, 4)
        # each option's vector is the mean of the LLM's states over its span (after the LLM's <bos> on the
        # encoder path, where the model prepends one)
        shift = out.last_hidden_state.shape[1] - enc["input_ids"].shape[1]
        assert shift == (1 if route == "encoder" else 0)
        for i in range(len(texts)):
            for k, (s, e) in enumerate(spans[i].tolist()):
                torch.testing.assert_close(out.pooled[i, k], out.last_hidden_state[i, s + shift:e + shift].mean(0))
    # truncation through the model's tokenizer
    enc = model.tokenize(texts, route="llm", return_offsets=True, max_length=12)
    assert enc["n_truncated"] == 2
    with pytest.raises(OptionTruncatedError):
        option_token_spans(enc["offset_mapping"], chars, attention_mask=enc["attention_mask"])
