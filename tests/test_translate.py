"""Translate-test support (mtllm.baselines.translate_test) on the tiny random M2M100/NLLB-shaped model."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from mtllm.tasks import Example
from mtllm.sources.tiny import TINY_LANG_CODES, build_tiny_seq2seq
from mtllm.baselines.translate_test import (
    TranslateSettings,
    Translator,
    UnsupportedLanguageError,
    _lang_token_id,
    translate_examples,
)

TEXTS = [
    "Le chat dort sur le tapis chaud.",
    "Un chien court.",
    "Le chat dort sur le tapis chaud.",  # duplicate
    "",  # empty stays empty
    "Un chien court dans le parc chaque matin, et le chat dort sur le tapis chaud.",
    "Chat.",
    "Le parc.",
]


@pytest.fixture(scope="module")
def tiny_mt(tmp_path_factory):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = build_tiny_seq2seq(tmp_path_factory.mktemp("tiny-m2m100"))
    return AutoModelForSeq2SeqLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def make(tiny_mt, tmp_path, **kw) -> Translator:
    model, tokenizer = tiny_mt
    settings = TranslateSettings(mt_model="tiny", cache_dir=str(tmp_path / "cache"), max_new_tokens=6, **kw)
    return Translator(model, tokenizer, settings=settings)


class GenerateSpy:
    """Wraps ``model.generate``: counts calls and records inputs, kwargs and outputs.

    With ``echo=True`` it does not run the model but returns ``[start, forced_bos, *source tokens]``,
    so every translation is (the detokenised) source text and order mix-ups become visible."""

    def __init__(self, model, *, echo=False, fail_on_call=None):
        self.model, self.echo, self.fail_on_call = model, echo, fail_on_call
        self.real = model.generate
        self.calls = []

    def __call__(self, input_ids, attention_mask, **kwargs):
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        if self.echo:
            rows = []
            for ids, mask in zip(input_ids, attention_mask):
                rows.append([2, kwargs["forced_bos_token_id"], *ids[mask.bool()].tolist()])
            width = max(map(len, rows))
            out = torch.tensor([r + [1] * (width - len(r)) for r in rows])
        else:
            out = self.real(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "kwargs": kwargs, "out": out})
        return out


@pytest.fixture
def spy(tiny_mt, monkeypatch):
    def install(**kw):
        model = tiny_mt[0]
        s = GenerateSpy(model, **kw)
        monkeypatch.setattr(model, "generate", s)
        return s
    return install


def test_settings_help_and_validation():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(TranslateSettings))
    assert TranslateSettings().num_beams == 1  # greedy by default
    assert TranslateSettings.from_dict({"batch_size": 4, "unrelated": 1}).batch_size == 4
    with pytest.raises(ValueError, match="batch_size"):
        TranslateSettings(batch_size=0)


def test_translate_runs_and_keeps_count_and_order(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path, batch_size=2)
    out = tr.translate(TEXTS, "fra_Latn", progress=False)
    assert len(out) == len(TEXTS) and all(isinstance(t, str) for t in out)
    assert out[3] == "" and out[0] == out[2]
    stats = tr.last_stats
    assert (stats.texts, stats.unique, stats.translated, stats.cache_hits) == (7, 5, 5, 0)

    # An echoing generate maps each source to itself: the order must survive the length sort.
    tr2 = make(tiny_mt, tmp_path / "echo", batch_size=2)
    s = spy(echo=True)
    echoed = tr2.translate(TEXTS, "fra_Latn", progress=False)
    expected = [tr2.tokenizer.decode(tr2.tokenizer(t).input_ids, skip_special_tokens=True).strip() if t else ""
                for t in TEXTS]
    assert echoed == expected
    assert len(s.calls) == 3  # 5 distinct non-empty texts, batches of 2
    lengths = [int(c["attention_mask"].sum(1).max()) for c in s.calls]
    assert lengths == sorted(lengths, reverse=True)  # batches go by length


def test_long_texts_are_truncated(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path, max_source_length=10)
    s = spy()
    out = tr.translate(["Le chat dort sur le tapis chaud. " * 40, "Chat."], "fra_Latn", progress=False)
    assert len(out) == 2 and s.calls[0]["input_ids"].shape[1] == 10
    # and never beyond what the tokenizer (model) takes
    tr = make(tiny_mt, tmp_path / "b")
    tr.translate(["Le chat dort sur le tapis chaud. " * 40], "fra_Latn", progress=False)
    assert s.calls[1]["input_ids"].shape[1] == tr.tokenizer.model_max_length


def test_source_and_forced_target_tokens(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path)
    tok = tr.tokenizer
    s = spy()
    tr.translate(["Le chat dort.", "Un chien court dans le parc."], "fra_Latn", progress=False)
    (call,) = s.calls
    eng, fra = tok.convert_tokens_to_ids("eng_Latn"), tok.convert_tokens_to_ids("fra_Latn")
    assert call["kwargs"]["forced_bos_token_id"] == eng
    assert call["kwargs"]["num_beams"] == 1 and call["kwargs"]["do_sample"] is False
    assert (call["input_ids"][:, 0] == fra).all()  # NLLB-style "<src_lang> text </s>"
    ends = call["attention_mask"].sum(1) - 1
    assert (call["input_ids"][torch.arange(2), ends] == tok.eos_token_id).all()
    # the target language really is the first generated token (after the decoder start token)
    assert (call["out"][:, 1] == eng).all()


def test_target_language_setting(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path, target_lang="deu_Latn")
    s = spy()
    tr.translate(["Le chat dort."], "fra_Latn", progress=False)
    assert s.calls[0]["kwargs"]["forced_bos_token_id"] == tr.tokenizer.convert_tokens_to_ids("deu_Latn")


def test_cache_hit_on_second_call(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path, batch_size=3)
    s = spy()
    first = tr.translate(TEXTS, "fra_Latn", progress=False)
    n_calls = len(s.calls)
    assert n_calls == 2
    # a new translator (new run) with the same model and settings reuses the cache file
    tr2 = make(tiny_mt, tmp_path, batch_size=3)
    assert tr2.cache_path("fra_Latn") == tr.cache_path("fra_Latn")
    again = tr2.translate(list(reversed(TEXTS)), "fra_Latn", progress=False)
    assert again == list(reversed(first))
    assert len(s.calls) == n_calls  # no generate call at all
    assert (tr2.last_stats.cache_hits, tr2.last_stats.translated) == (5, 0)
    # only the new text is translated
    tr2.translate(TEXTS + ["Paka analala."], "fra_Latn", progress=False)
    assert len(s.calls) == n_calls + 1
    assert (tr2.last_stats.cache_hits, tr2.last_stats.translated) == (5, 1)


def test_cache_key_depends_on_languages_settings_and_weights(tiny_mt, tmp_path):
    model, tok = tiny_mt
    tr = make(tiny_mt, tmp_path)
    base = tr.cache_path("fra_Latn")
    assert tr.cache_path("deu_Latn") != base
    assert make(tiny_mt, tmp_path, num_beams=2).cache_path("fra_Latn") != base
    assert make(tiny_mt, tmp_path, target_lang="deu_Latn").cache_path("fra_Latn") != base
    assert make(tiny_mt, tmp_path, batch_size=3).cache_path("fra_Latn") == base  # batching is not identity
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    tr_other = Translator(other, tok, settings=tr.settings)
    assert tr_other.cache_path("fra_Latn") != base


def test_interrupted_run_resumes_from_cache(tiny_mt, tmp_path, spy):
    texts = [f"Le chat {i} dort." for i in range(5)]
    tr = make(tiny_mt, tmp_path, batch_size=2)
    s = spy(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        tr.translate(texts, "fra_Latn", progress=False)
    assert len(s.calls) == 1  # one batch finished before the interruption
    path = tr.cache_path("fra_Latn")
    assert len(Translator._read_cache(path)) == 2
    with path.open("a") as fh:  # a torn line, as from a crash in the middle of a write
        fh.write('{"k": "abc", "t": "half')
    s.fail_on_call = None
    out = tr.translate(texts, "fra_Latn", progress=False)
    assert len(out) == 5 and all(out)
    assert (tr.last_stats.cache_hits, tr.last_stats.translated) == (2, 3)
    assert len(s.calls) == 1 + 2
    # the cache file is still readable and complete after appending past the torn line
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["meta"]["src_lang"] == "fra_Latn"
    assert len(Translator._read_cache(path)) == 5
    tr.translate(texts, "fra_Latn", progress=False)
    assert tr.last_stats.cache_hits == 5 and len(s.calls) == 3


def test_unknown_language_errors(tiny_mt, tmp_path):
    tr = make(tiny_mt, tmp_path)
    assert "hin_Deva" not in TINY_LANG_CODES
    with pytest.raises(UnsupportedLanguageError, match="hin_Deva") as err:
        tr.translate(["Le chat."], "hin_Deva", progress=False)
    assert "fra_Latn" in str(err.value)  # the message lists languages the model does know
    with pytest.raises(ValueError, match="not-a-language"):  # a typo: mtllm.data.languages' error
        tr.translate(["Le chat."], "not-a-language", progress=False)
    with pytest.raises(UnsupportedLanguageError, match="target language 'hin_Deva'"):
        make(tiny_mt, tmp_path, target_lang="hin_Deva")
    assert not tr.settings.resolved_cache_dir().exists() or not any(tr.settings.resolved_cache_dir().glob("*.jsonl"))
    # a wrongly spelled but unambiguous code is canonicalised (mtllm.data.languages)
    assert tr._source_setup("FRA-latn")[0] == "fra_Latn" and tr.tokenizer.src_lang == "fra_Latn"


def plain_tokenizer(nllb_tok):
    """The same vocabulary behind a generic fast tokenizer that knows nothing of ``src_lang``:
    ``text </s>``, language codes only as special tokens."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(nllb_tok.backend_tokenizer.to_str())
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", nllb_tok.eos_token_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=list(TINY_LANG_CODES))
    assert not hasattr(tok, "src_lang")
    return tok


def test_generic_tokenizer_gets_language_token_prepended(tiny_mt, tmp_path, spy):
    model, nllb_tok = tiny_mt
    tok = plain_tokenizer(nllb_tok)
    tr = Translator(model, tok, settings=TranslateSettings(cache_dir=str(tmp_path / "plain"), max_new_tokens=6))
    s = spy()
    texts = ["Le chat dort.", "Un chien court dans le parc."]
    out = tr.translate(texts, "fra_Latn", progress=False)
    fra = tok.convert_tokens_to_ids("fra_Latn")
    ids = s.calls[0]["input_ids"]
    assert (ids[:, 0] == fra).all()
    assert s.calls[0]["kwargs"]["forced_bos_token_id"] == tok.convert_tokens_to_ids("eng_Latn")
    # exactly the inputs the NLLB tokenizer builds ("fra_Latn text </s>"), so the same translations
    assert out == make(tiny_mt, tmp_path).translate(texts, "fra_Latn", progress=False)
    assert torch.equal(s.calls[1]["input_ids"], ids)


def test_lang_token_id_m2m100_style():
    class M2MLike:
        unk_token, unk_token_id = "<unk>", 3
        all_special_tokens = ["<unk>", "__en__", "__fr__"]

        def get_lang_id(self, code):
            return {"en": 128022, "fr": 128028}[code]

        def convert_tokens_to_ids(self, token):
            return {"__en__": 128022, "__fr__": 128028}.get(token, 3)

    tok = M2MLike()
    assert _lang_token_id(tok, "en") == 128022
    assert _lang_token_id(tok, "__fr__") == 128028
    assert _lang_token_id(tok, "xx") is None


def test_nllb_tokenizer_sets_src_lang(tiny_mt, tmp_path):
    from transformers import NllbTokenizer

    tok = NllbTokenizer()  # the real NLLB tokenizer class (toy vocabulary, FLORES-200 codes)
    model = tiny_mt[0]
    tr = Translator(model, tok, settings=TranslateSettings(cache_dir=str(tmp_path)))
    assert tr._target_id == tok.convert_tokens_to_ids("eng_Latn")
    assert tr._source_setup("fra_Latn") == ("fra_Latn", [])  # the tokenizer adds the token itself
    assert tok.src_lang == "fra_Latn" and tok("a").input_ids[0] == tok.convert_tokens_to_ids("fra_Latn")
    with pytest.raises(ValueError, match="fra_Latm"):
        tr._source_setup("fra_Latm")
    tiny_tok = tiny_mt[1]
    piece = tiny_tok.convert_ids_to_tokens(40)  # an ordinary vocabulary piece is not a language token
    assert tiny_tok.convert_tokens_to_ids(piece) == 40 and _lang_token_id(tiny_tok, piece) is None


def test_no_language_tokens_for_fixed_direction_models(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path, target_lang=None)
    s = spy()
    tr.translate(["Le chat dort."], "fra_Latn", progress=False)
    assert "forced_bos_token_id" not in s.calls[0]["kwargs"]


def test_translate_examples(tiny_mt, tmp_path, spy):
    tr = make(tiny_mt, tmp_path, batch_size=4)
    s = spy(echo=True)
    examples = [
        Example("a", ("Le chat dort.", "Un chien court."), 1),
        Example("b", ("Le parc.",), 0, options=("Chat.", "Le chat dort.")),
    ]
    out = translate_examples(tr, examples, "fra_Latn", progress=False)
    assert [e.id for e in out] == ["a", "b"] and [e.label for e in out] == [1, 0]
    assert len(out[0].texts) == 2 and out[0].options == () and len(out[1].options) == 2
    assert out[1].options[1] == out[0].texts[0]
    assert out[0].texts[1] == "Un chien court."  # echo model: translation == detokenised source
    assert examples[0].texts[0] == "Le chat dort."  # inputs untouched
    assert len(s.calls) == 1  # everything in one deduplicated call (4 distinct texts)
    with pytest.raises(TypeError, match="needs dataclass instances, got dict"):
        translate_examples(tr, [{"texts": ("x",)}], "fra_Latn", progress=False)


def test_from_pretrained_tiny_source(tiny_mt, tmp_path, monkeypatch):
    monkeypatch.setenv("MTLLM_CACHE", str(tmp_path))
    settings = TranslateSettings(mt_model="tiny:m2m100", max_new_tokens=4)
    tr = Translator.from_pretrained("tiny:m2m100", settings)
    # "tiny:m2m100" resolves to the same seeded model the fixture builds: same weights, same translations
    same = Translator(*tiny_mt, settings=TranslateSettings(mt_model="tiny:m2m100", max_new_tokens=4,
                                                            cache_dir=str(tmp_path / "other")))
    assert tr.fingerprint == same.fingerprint
    out = tr.translate(["Le chat dort."], "fra_Latn", progress=False)
    assert out == same.translate(["Le chat dort."], "fra_Latn", progress=False)
    assert tr.last_stats.cache_file.startswith(str(tmp_path / "translations"))  # the default cache: $MTLLM_CACHE


def test_fingerprint_of_a_parameter_larger_than_float32_precision():
    """Sampling positions must stay in range for tensors with more than 2**24 elements (e.g. e5's
    250k x 384 embedding), where a float linspace rounds past the last index."""
    import torch

    from mtllm.fingerprints import module_fingerprint as model_fingerprint

    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2 ** 24 + 3), requires_grad=False)

    class Tok:
        def __len__(self):
            return 1

    a = model_fingerprint(Big(), Tok())
    b = Big()
    with torch.no_grad():
        b.w[-1] = 1.0  # the last element is one of the sampled ones
    assert model_fingerprint(b, Tok()) != a
