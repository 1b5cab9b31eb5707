"""The one batched forward loop: items sorted by length, cut into batches, each batch run by a
``step`` callable, results put back in input order, with an optional progress bar.

Every inference pass uses it: :meth:`mtllm.MTLLMModel.encode`, :func:`mtllm.inference.predict`,
:func:`mtllm.inference.predict_shared_encoder`, :func:`mtllm.training.distill.pre_embed`,
:class:`mtllm.training.encoder_cache.EncoderCache`, :meth:`mtllm.baselines.encoder_probe.EncoderClassifier.features`,
the retrieval probe and :meth:`mtllm.baselines.translate_test.Translator.translate`. The step tokenises
its batch, moves it to the model's device (:func:`mtllm.device.to_device`) and runs the model.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from mtllm.device import to_device

__all__ = ["length_order", "run_batched", "forward_inputs"]

T = TypeVar("T")


def length_order(lengths: Sequence[int] | None, n: int, *, longest_first: bool = False) -> np.ndarray:
    """The order in which ``n`` items are batched: stably sorted by ``lengths`` (shortest first, or
    longest first, ties in input order), or the input order when ``lengths`` is ``None``."""
    if lengths is None:
        return np.arange(n)
    if len(lengths) != n:
        raise ValueError(f"got {len(lengths)} lengths for {n} items")
    keys = np.asarray(lengths, dtype=np.int64)
    return np.argsort(-keys if longest_first else keys, kind="stable")


def run_batched(items: Sequence[T], step: Callable[[list[T]], Sequence[Any] | None], *, batch_size: int,
                lengths: Sequence[int] | None = None, longest_first: bool = False, progress: bool = False,
                desc: str = "batches", unit: str = "item", leave: bool = True) -> list[Any]:
    """Run ``step`` on batches of ``items`` and return its per-item results in input order.

    ``lengths`` (one number per item, e.g. characters or tokens) sorts the items before batching
    (:func:`length_order`), so a batch pads little; ``None`` keeps the input order. ``step(batch)``
    gets a list of at most ``batch_size`` items and returns one result per item (a list, or an array
    or tensor with the batch first), or ``None`` when it stores its results itself (then the list
    returned here holds ``None``). ``progress`` shows a ``tqdm`` bar counting items (``desc``, ``unit``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = length_order(lengths, len(items), longest_first=longest_first)
    results: list[Any] = [None] * len(items)
    bar = None
    if progress:
        bar = tqdm(total=len(items), desc=desc, unit=unit, leave=leave)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size].tolist()
            out = step([items[i] for i in idx])
            if out is not None:
                if len(out) != len(idx):
                    raise ValueError(f"step returned {len(out)} results for a batch of {len(idx)} items")
                for j, i in enumerate(idx):
                    results[i] = out[j]
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return results


def forward_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch (:func:`mtllm.data.collate.collate_examples`) that the model's
    ``forward`` takes, on ``device``: everything but ``labels`` and plain values such as ``n_truncated``."""
    return to_device({k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}, device)
