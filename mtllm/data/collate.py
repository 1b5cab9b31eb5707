"""Task examples -> model inputs, for either route through an :class:`~mtllm.MTLLMModel`.

``route="encoder"`` feeds the MT-LLM (text in language ``lang`` through the encoder), ``route="llm"``
feeds the LLM its own tokens (the teacher, and the "LLM alone" baseline). Single texts, text pairs
(joined with ``config.pair_separator``) and multiple choice (one sequence per example, one token span
per option, see :mod:`mtllm.data.multiple_choice`) all come out as one dict the model's ``forward`` takes.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from mtllm.errors import DataError, renamed_keyword
from mtllm.data.multiple_choice import format_multiple_choice, option_token_spans

__all__ = ["collate_examples", "check_content", "example_lengths", "model_inputs"]


def _text_of(example: Any) -> str:
    if example.options:
        text, _ = format_multiple_choice(example.texts[0], example.texts[1] if len(example.texts) > 1 else "",
                                         example.options)
        return text
    return " ".join(example.texts)


def example_lengths(examples: Sequence[Any]) -> list[int]:
    """A cheap length proxy (characters) per example, for length-grouped batching."""
    return [len(_text_of(e)) for e in examples]


def collate_examples(model: Any, examples: Sequence[Any], *, route: str | None = None, lang: str | None = None,
                     max_length: int | None = None, path: str | None = None) -> dict[str, Any]:
    """Tokenise ``examples`` (objects with ``texts``, ``label``, ``options``) for ``route`` (``"encoder"`` or
    ``"llm"``, required; ``path=`` is its old name, deprecated).

    Returns ``input_ids``/``attention_mask`` (encoder path) or ``llm_input_ids``/``llm_attention_mask``
    (LLM path), ``(N, L)``; ``labels`` ``(N,)``; ``option_spans`` ``(N, K, 2)`` for multiple choice; and
    ``n_truncated``.
    """
    route = renamed_keyword(route, path, where="collate_examples", name="route", old_name="path")
    if route is None:
        raise TypeError("collate_examples() missing keyword argument route ('encoder' or 'llm')")
    if not examples:
        raise ValueError("collate_examples got no examples")
    check_content(model, examples, route=route)
    lang = lang if route == "encoder" else None
    is_mc = bool(examples[0].options)
    labels = torch.tensor([int(e.label) for e in examples], dtype=torch.long)
    if is_mc:
        texts, spans = [], []
        for e in examples:
            text, char_spans = format_multiple_choice(e.texts[0], e.texts[1] if len(e.texts) > 1 else "", e.options)
            texts.append(text)
            spans.append(char_spans)
        batch = model.tokenize(texts, lang=lang, route=route, max_length=max_length, return_offsets=True)
        prefix = len(model.encoder_prefix) if route == "encoder" else 0
        option_spans = option_token_spans(batch["offset_mapping"], spans, attention_mask=batch["attention_mask"],
                                          char_offset=prefix, allow_truncated=False)
    else:
        firsts = [e.texts[0] for e in examples]
        seconds = [e.texts[1] for e in examples] if len(examples[0].texts) > 1 else None
        batch = model.tokenize(firsts, pairs=seconds, lang=lang, route=route, max_length=max_length)
        option_spans = None
    out = model_inputs(batch, route)
    out["labels"] = labels
    out["n_truncated"] = batch["n_truncated"]
    if option_spans is not None:
        out["option_spans"] = option_spans
    return out


def _fields(example: Any) -> list[tuple[str, Any]]:
    """``(name, text)`` of every text an example feeds the model that must have content: ``texts[i]`` and
    ``options[j]``, except a segment that is exactly ``""`` while another segment has text (a pair with one
    blank side, which the task loaders keep: :mod:`mtllm.tasks.readers`)."""
    texts = list(example.texts)
    keep_blank = len(texts) > 1 and any(isinstance(t, str) and t != "" for t in texts)
    return ([(f"texts[{i}]", t) for i, t in enumerate(texts) if not (keep_blank and t == "")]
            + [(f"options[{j}]", o) for j, o in enumerate(example.options)])


def check_content(model: Any, examples: Sequence[Any], *, route: str) -> None:
    """A :class:`~mtllm.errors.DataError` naming the examples (ids and fields) of which a text has no content
    token for ``route``'s tokenizer (:meth:`MTLLMModel.contentless`: empty, or only characters the tokenizer
    drops, such as zero-width or control characters): every such text would get the same embedding, so it
    is refused like an empty text, before any work. One segment of a pair may be exactly ``""`` (the task
    loaders keep such rows); an example with no text at all is always refused."""
    where = [(e.id, name) for e in examples for name, _ in _fields(e)]
    bad = model.contentless([text for e in examples for _, text in _fields(e)], route=route)
    if bad:
        shown = ", ".join(f"{where[i][0]!r} ({where[i][1]})" for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"{len(bad)} text(s) have nothing for the {route} tokenizer to read (empty, whitespace-only, "
                        f"not strings, or made only of characters it drops: zero-width, control or format "
                        f"characters), so each would be the same input; example ids: {shown}. Fix or delete those "
                        f"rows (nothing is dropped silently).")


def model_inputs(batch: Any, route: str) -> dict[str, Any]:
    """Name a tokenised batch's tensors for ``MTLLMModel.forward`` on ``route``."""
    if route == "encoder":
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return {"llm_input_ids": batch["input_ids"], "llm_attention_mask": batch["attention_mask"]}
