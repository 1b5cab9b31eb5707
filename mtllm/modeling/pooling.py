"""Pure pooling functions: ``(hidden_NLD, mask_NL) -> pooled_ND``.

``N`` is the batch, ``L`` the sequence length, ``D`` the hidden size. ``mask_NL`` holds 1 for the
positions that count and 0 for padding (or for positions excluded from pooling, such as a prepended
``<bos>``). Every function handles left and right padding and never divides by zero: a row whose mask
is all zero pools to a zero vector.
"""
from __future__ import annotations

from typing import Callable

import torch

Pooler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_pool(hidden_NLD: torch.Tensor, mask_NL: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states over the masked positions. Returns ``(N, D)``."""
    weights_NL1 = mask_NL.to(hidden_NLD.dtype).unsqueeze(-1)
    total_ND = (hidden_NLD * weights_NL1).sum(dim=1)
    count_N1 = weights_NL1.sum(dim=1).clamp_min(1.0)
    return total_ND / count_N1


def _gather_positions(hidden_NLD: torch.Tensor, index_N: torch.Tensor) -> torch.Tensor:
    index_N1D = index_N.view(-1, 1, 1).expand(-1, 1, hidden_NLD.shape[-1])
    return hidden_NLD.gather(1, index_N1D).squeeze(1)


def eos_pool(hidden_NLD: torch.Tensor, mask_NL: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last masked position of each row (the ``</s>`` of a causal LM). ``(N, D)``."""
    L = mask_NL.shape[1]
    positions_NL = torch.arange(L, device=mask_NL.device).expand_as(mask_NL)
    last_N = torch.where(mask_NL.bool(), positions_NL, -1).amax(dim=1)
    pooled_ND = _gather_positions(hidden_NLD, last_N.clamp_min(0))
    return pooled_ND * (last_N >= 0).unsqueeze(-1).to(hidden_NLD.dtype)


def cls_pool(hidden_NLD: torch.Tensor, mask_NL: torch.Tensor) -> torch.Tensor:
    """Hidden state at the first masked position of each row (BERT's ``[CLS]``). ``(N, D)``."""
    L = mask_NL.shape[1]
    positions_NL = torch.arange(L, device=mask_NL.device).expand_as(mask_NL)
    first_N = torch.where(mask_NL.bool(), positions_NL, L).amin(dim=1)
    pooled_ND = _gather_positions(hidden_NLD, first_N.clamp_max(L - 1))
    return pooled_ND * (first_N < L).unsqueeze(-1).to(hidden_NLD.dtype)


POOLERS: dict[str, Pooler] = {"mean": mean_pool, "eos": eos_pool, "cls": cls_pool}


def get_pooler(name: str) -> Pooler:
    """The pooling function called ``name`` (``mean``, ``eos`` or ``cls``)."""
    try:
        return POOLERS[name]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}: choose one of {sorted(POOLERS)}") from None


def span_mean_pool(hidden_NLD: torch.Tensor, spans_NK2: torch.Tensor) -> torch.Tensor:
    """Mean over token spans ``[start, end)``: one vector per span. Returns ``(N, K, D)``.

    Used for multiple choice, where each answer option is scored from the mean of its own tokens.
    A span with ``end <= start`` pools to zeros.
    """
    L = hidden_NLD.shape[1]
    positions_11L = torch.arange(L, device=hidden_NLD.device).view(1, 1, L)
    inside_NKL = (positions_11L >= spans_NK2[..., :1]) & (positions_11L < spans_NK2[..., 1:])
    weights_NKL = inside_NKL.to(hidden_NLD.dtype)
    total_NKD = torch.einsum("nkl,nld->nkd", weights_NKL, hidden_NLD)
    return total_NKD / weights_NKL.sum(-1, keepdim=True).clamp_min(1.0)


def unit_mean_pool(hidden_NLD: torch.Tensor, units_NL: torch.Tensor, n_units: int) -> torch.Tensor:
    """Mean of the hidden states of each unit: ``units_NL`` holds, per position, a unit index in
    ``0..n_units-1`` (numbered across the whole batch) or ``-1`` for positions that belong to none.
    Returns ``(n_units, D)``; a unit with no position pools to zeros. Used by the stage-1 span
    objective (:mod:`mtllm.data.spans`), where a unit is a word both tokenisers cover."""
    D = hidden_NLD.shape[-1]
    flat_PD = hidden_NLD.reshape(-1, D)
    units_P = units_NL.reshape(-1).to(flat_PD.device)
    keep_P = units_P >= 0
    total_UD = flat_PD.new_zeros(n_units, D).index_add(0, units_P[keep_P], flat_PD[keep_P])
    count_U = torch.zeros(n_units, dtype=flat_PD.dtype, device=flat_PD.device).index_add(
        0, units_P[keep_P], torch.ones_like(units_P[keep_P], dtype=flat_PD.dtype))
    return total_UD / count_U.clamp_min(1.0).unsqueeze(-1)
