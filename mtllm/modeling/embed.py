"""Pooled embeddings of texts: the batched loop behind :meth:`mtllm.MTLLMModel.encode` and ``mtllm encode``
(length-sorted batches through :func:`~mtllm.modeling.batching.run_batched`, on the model's device)."""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import nn

from mtllm.data.collate import model_inputs
from mtllm.device import module_device, to_device
from mtllm.errors import DataError
from mtllm.modeling.batching import run_batched

__all__ = ["embed_texts"]


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], *, lang: str | None = None, route: str | None = None,
                batch_size: int = 32, normalize: bool = False, show_progress: bool = False,
                on_batch: Callable[[int], None] | None = None, stats: dict | None = None) -> torch.Tensor:
    """Pooled embeddings ``(N, D)`` (float32, on the CPU) of ``texts`` in language ``lang`` (a FLORES-200 code,
    given to the encoder as it is), in input order. ``route``: ``encoder`` (the MT-LLM; the default when the model
    has an encoder) or ``llm``. ``normalize``: unit length. ``on_batch(n)`` runs after each batch of ``n`` texts.
    Texts longer than ``max_seq_length`` tokens are truncated: a warning says how many, or, given ``stats``, their
    number is added to ``stats["truncated"]`` for the caller to report.
    A text with nothing to embed (empty, whitespace-only, only characters the tokenizer drops) is a
    :class:`~mtllm.errors.DataError` before any work."""
    texts = list(texts)
    route = route or ("encoder" if model.encoder is not None else "llm")
    empty = model.contentless(texts, route=route)
    if empty:
        raise DataError(f"{len(empty)} of {len(texts)} texts have nothing to embed (indices {empty[:10]}"
                        f"{' ...' if len(empty) > 10 else ''}): empty, whitespace-only, not strings, or made only "
                        f"of characters the {route} tokenizer drops (zero-width, control or format characters), "
                        f"so each would get the same embedding. Drop them (or replace them) before calling "
                        f"encode; nothing was computed.")
    was_training = model.training
    model.eval()
    device = module_device(model)
    n_truncated = 0

    def step(batch_texts: list[str]) -> torch.Tensor:
        nonlocal n_truncated
        batch = model.tokenize(batch_texts, lang=lang if route == "encoder" else None, route=route)
        n_truncated += batch["n_truncated"]
        pooled = model(**to_device(model_inputs(batch, route), device)).pooled.float()
        if normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        if on_batch is not None:
            on_batch(len(batch_texts))
        return pooled.cpu()

    try:
        out = run_batched(texts, step, batch_size=batch_size, lengths=[len(t) for t in texts],
                          progress=show_progress, desc="encode", unit="text")
    finally:
        model.train(was_training)
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + n_truncated
    elif n_truncated:
        warnings.warn(f"{n_truncated} of {len(texts)} texts were longer than {model.config.max_seq_length} tokens "
                      f"({route} tokenizer) and were truncated; raise max_seq_length to keep them whole", stacklevel=3)
    return torch.stack(out) if out else torch.empty(0, model.config.llm_hidden_size)
