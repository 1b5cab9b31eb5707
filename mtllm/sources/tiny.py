"""Tiny random-initialised models with tokenizers trained on the fly, for tests and the ``tiny`` preset.

They have the real architectures (XLM-R encoder, M2M100/NLLB-style seq2seq, Llama and Gemma 3
decoders) at toy sizes, so every code path that real models take is exercised in seconds on a CPU.
"""
from __future__ import annotations

import functools
import json

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

#: A small multilingual corpus (several scripts) to train the toy tokenizers on.
TINY_CORPUS = [
    "The cat sleeps on the warm mat.", "A dog runs in the park every morning.",
    "Le chat dort sur le tapis chaud.", "Un chien court dans le parc chaque matin.",
    "Die Katze schläft auf der warmen Matte.", "El gato duerme en la alfombra.",
    "Paka analala kwenye mkeka.", "Кошка спит на тёплом коврике.", "猫在温暖的垫子上睡觉。",
    "القطة تنام على السجادة الدافئة.", "बिल्ली गर्म चटाई पर सोती है।", "ድመቷ ሞቃት ምንጣፍ ላይ ትተኛለች።",
    "Η γάτα κοιμάται στο ζεστό χαλί.", "Ologbo naa sun lori akete.", "Misi turu ing klasa anget.",
    "Sports, politics, travel, health, science and geography are topics.",
    "The election results were announced by the government yesterday.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The football team won the championship after a long season.",
    "Tourists visit the old city to see its famous temples.",
] * 4

TINY_LANG_CODES = ("eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn", "zho_Hans", "arb_Arab")


def _canonical_vocab(vocab: list[list], n_special: int) -> list[list]:
    """The trained Unigram vocabulary in a form that is the same on every build.

    The trainer's EM runs in parallel threads: piece scores differ between builds in their last bits,
    and pieces that tie get scores a hair apart (1e-4 steps) in whatever order the threads met them,
    which also sets their ids. So: round the scores, cut the pieces (after the special tokens, which
    keep their ids) into runs of near-equal scores, and within a run give the run's scores, highest
    first, to its pieces in alphabetical order."""
    rest = [[piece, round(score, 6)] for piece, score in vocab[n_special:]]
    runs: list[list[list]] = []
    for entry in rest:
        if runs and abs(runs[-1][-1][1] - entry[1]) < 5e-4:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    out = [list(e) for e in vocab[:n_special]]
    for run in runs:
        scores = sorted((score for _, score in run), reverse=True)
        out += [[piece, score] for (piece, _), score in zip(sorted(run), scores)]
    return out


def _unigram_tokenizer(vocab_size: int, specials: list[str], template_single: str, template_pair: str,
                       bos: str, eos: str) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(TINY_CORPUS, trainer=trainer)
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = _canonical_vocab(spec["model"]["vocab"], len(specials))
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single=template_single, pair=template_pair,
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))])
    return tok


def tiny_encoder_tokenizer() -> PreTrainedTokenizerFast:
    """An XLM-R-style tokenizer (``<s> text </s>``; pad id 1) trained on :data:`TINY_CORPUS`."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = _unigram_tokenizer(400, specials, "<s> $A </s>", "<s> $A </s> </s> $B </s>", "<s>", "</s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=128)


def tiny_llm_tokenizer() -> PreTrainedTokenizerFast:
    """A Gemma/Llama-style tokenizer (``<bos> text``; pad id 0, bos id 2) trained on :data:`TINY_CORPUS`."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = _unigram_tokenizer(300, specials, "<bos> $A", "<bos> $A $B", "<bos>", "<eos>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=256)


def tiny_seq2seq_tokenizer():
    """An NLLB tokenizer (``NllbTokenizer``: ``src_lang`` code first, ``</s>`` last) whose BPE vocabulary
    is trained on :data:`TINY_CORPUS`; its language codes are :data:`TINY_LANG_CODES`."""
    from transformers import NllbTokenizer  # slow: a transformers model class, only when a tiny model is built

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    bpe.train_from_iterator(TINY_CORPUS, trainer=trainer)
    state = __import__("json").loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return NllbTokenizer(vocab=state["vocab"], merges=merges, additional_special_tokens=list(TINY_LANG_CODES),
                         src_lang="eng_Latn", model_max_length=128)


def _build_tiny_encoder(out_dir: str | Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a random 2-layer XLM-R encoder and its tokenizer to ``out_dir``; returns the path."""
    from transformers import XLMRobertaConfig, XLMRobertaModel  # slow: as above (~60 ms)

    torch.manual_seed(seed)
    tokenizer = tiny_encoder_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden_size, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _build_tiny_llm(out_dir: str | Path, *, arch: str = "gemma3", hidden_size: int = 48, seed: int = 0) -> Path:
    """Save a random 2-layer decoder LLM (``arch`` = ``gemma3`` or ``llama``) and its tokenizer."""
    torch.manual_seed(seed)
    tokenizer = tiny_llm_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, intermediate_size=2 * hidden_size,
                  max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig  # slow: as above

        config = Gemma3TextConfig(head_dim=hidden_size // 2, sliding_window=16, **common)
        model = Gemma3ForCausalLM(config)
    elif arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM  # slow: as above

        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"unknown tiny LLM architecture {arch!r}: use 'gemma3' or 'llama'")
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _build_tiny_seq2seq(out_dir: str | Path, *, d_model: int = 32, seed: int = 0) -> Path:
    """Save a random NLLB-shaped (M2M100) translation model whose tokenizer knows FLORES-style codes."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration  # slow: as above

    torch.manual_seed(seed)
    tokenizer = tiny_seq2seq_tokenizer()
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id)
    model = M2M100ForConditionalGeneration(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _rng_isolated(builder):
    """Run ``builder`` without touching the caller's global RNG state (building a model on first use
    must not change what a seeded run does next)."""
    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return builder(*args, **kwargs)

    return wrapper


build_tiny_encoder = _rng_isolated(_build_tiny_encoder)
build_tiny_llm = _rng_isolated(_build_tiny_llm)
build_tiny_seq2seq = _rng_isolated(_build_tiny_seq2seq)

TINY_BUILDERS = {"xlmr": build_tiny_encoder, "gemma3": build_tiny_llm,
                 "llama": lambda d, **kw: build_tiny_llm(d, arch="llama", **kw), "m2m100": build_tiny_seq2seq}
