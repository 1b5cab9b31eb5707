"""Tokenisation helpers of the stacked model that need no model instance: which texts give a tokenizer nothing
to read (:func:`no_content_texts`, behind :meth:`mtllm.MTLLMModel.contentless`), the LLM's ``<bos>`` id, and how an
encoder is told the input language (NLLB's ``src_lang`` or e5's ``"query: "`` prefix). The model's own
tokenisation (:meth:`mtllm.MTLLMModel.tokenize`) is a method of :class:`mtllm.MTLLMModel`."""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

from torch import nn

__all__ = ["no_content_texts"]

_HAS_ALNUM = re.compile(r"[^\W_]")  # a letter or digit: always at least one content token (a piece or <unk>)
_NOTHING = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # control, format (zero-width, BOM, ...) and space characters


def _is_nothing(text: str) -> bool:
    """Whether ``text`` holds only control, format and whitespace characters (or nothing)."""
    return all(c.isspace() or unicodedata.category(c) in _NOTHING for c in text)


def no_content_texts(tokenizer: Any, texts: Sequence[Any]) -> list[int]:
    """Indices of ``texts`` that give ``tokenizer`` no content token, so that they would all be the same
    input: not a string, empty or whitespace-only, or tokenised (without special tokens) into nothing but

    * special tokens and pieces that decode to blank (``▁``): what is left of characters the tokenizer's
      normaliser drops (zero-width space, NUL, BOM, ZWJ, other control or format characters), and
    * ``<unk>`` standing only for such characters (a tokenizer without them in its vocabulary).

    An ``<unk>`` that stands for a letter, digit, symbol or emoji is content (the text held something
    the tokenizer does not know, e.g. a script outside an encoder's languages), and so is any piece the
    tokenizer keeps (a byte-level tokenizer encodes a zero-width space as its bytes: not dropped). Texts
    with a letter or digit are not tokenised here: they always have content."""
    bad, candidates = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            bad.append(i)
        elif not _HAS_ALNUM.search(text):
            candidates.append(i)
    if not candidates:
        return bad
    batch = [texts[i] for i in candidates]
    try:
        enc = tokenizer(batch, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):  # a tokenizer without offsets: <unk> counts as content
        enc, offsets = tokenizer(batch, add_special_tokens=False), [None] * len(batch)
    specials = set(tokenizer.all_special_ids)
    unk = tokenizer.unk_token_id
    blank: dict[int, bool] = {}
    for i, text, ids, spans in zip(candidates, batch, enc["input_ids"], offsets):
        def content(k: int, t: int) -> bool:
            if t == unk:
                return spans is None or not _is_nothing(text[spans[k][0]:spans[k][1]])
            if t not in blank:
                blank[t] = t in specials or not tokenizer.decode([t]).strip()
            return not blank[t]

        if not any(content(k, t) for k, t in enumerate(ids)):
            bad.append(i)
    return sorted(bad)


def _bos_token_id(tokenizer: Any, llm: nn.Module) -> int | None:
    """The LLM's ``<bos>`` id: its tokenizer's, else (an LLM loaded without tokenizer files) its config's."""
    if tokenizer is not None:
        return tokenizer.bos_token_id
    cfg = llm.config
    text = getattr(cfg, "get_text_config", lambda: cfg)()
    bos = getattr(cfg, "bos_token_id", None)
    return bos if bos is not None else getattr(text, "bos_token_id", None)


def _detect_lang_style(encoder_tokenizer: Any, encoder_source: str | None,
                       encoder_type: str | None = None) -> tuple[str, str]:
    """(style, prefix): NLLB-style tokenizers take ``src_lang`` (an M2M100/NLLB encoder loaded without its
    tokenizer files is known by its model type); e5 models want ``"query: "``."""
    if encoder_tokenizer is not None and hasattr(encoder_tokenizer, "src_lang"):
        return "nllb", ""
    if encoder_tokenizer is None and encoder_type in ("m2m_100", "nllb_moe"):
        return "nllb", ""
    name = (encoder_source or "").lower()
    if "e5" in name:
        return "prefix", "query: "
    return "none", ""
