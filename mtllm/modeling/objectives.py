"""Training objectives as plain functions: every stage and the benchmark call these, nothing else.

Two layers:

* tensor losses -- pure functions of tensors (:func:`sequence_mse`, :func:`classification_ce`,
  :func:`regression_metrics`), with the per-dimension target statistics in :class:`TargetStats`
  (:func:`target_stats` is the one place targets are standardised);
* batch losses -- ``loss_fn(model, batch) -> (loss, metrics)`` as the training loop takes them
  (:func:`stage1_loss`, :func:`distill_loss`, :func:`classification_loss`): one forward pass of the
  model on a collated batch, then a tensor loss. Use :func:`functools.partial` to bind ``stats``.

Standardised MSE: the paper's loss is the plain MSE between mean-pooled last hidden states. LLM hidden
states have a few outlier dimensions with a variance orders of magnitude above the rest, which then
dominate the plain MSE; z-scoring student and target with the *targets'* per-dimension mean and
standard deviation weighs every dimension equally (``target_norm: standardize``, the default). With
``standardize=False`` the statistics are mean 0 / std 1 and the loss is the paper's raw MSE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtllm.modeling.pooling import unit_mean_pool

__all__ = ["TargetStats", "target_stats", "standardize", "sequence_mse", "regression_metrics",
           "classification_ce", "stage1_loss", "distill_loss", "classification_loss", "STAGE1_OBJECTIVES"]

#: The stage-1 objectives: the paper's pooled-sequence MSE, the word-span MSE, or their sum.
STAGE1_OBJECTIVES = ("sequence", "span", "sequence+span")


@dataclass(frozen=True)
class TargetStats:
    """Per-dimension statistics of a set of teacher targets ``(N, D)``.

    ``mean_D``/``std_D``: what student and target are standardised with (0 and 1 for raw MSE);
    ``total_var``: the targets' total variance (sum over dimensions), the denominator of the FVU."""

    mean_D: torch.Tensor
    std_D: torch.Tensor
    total_var: torch.Tensor

    def to(self, device: torch.device | str) -> "TargetStats":
        return TargetStats(self.mean_D.to(device), self.std_D.to(device), self.total_var.to(device))


def target_stats(targets: torch.Tensor, *, standardize: bool = True, unbiased: bool = True,
                 min_std: float = 1e-6) -> TargetStats:
    """Statistics of ``targets`` ``(..., D)`` (all leading dimensions are pooled together, e.g. the
    ``(N, K, D)`` per-option targets of multiple choice). ``unbiased`` picks the sample (N - 1) or the
    population (N) standard deviation; ``min_std`` keeps constant dimensions from dividing by zero."""
    flat_MD = targets.reshape(-1, targets.shape[-1]).float()
    mean_D = flat_MD.mean(0)
    if standardize:
        std_D = flat_MD.std(0, unbiased=unbiased).clamp_min(min_std)
    else:
        std_D = torch.ones_like(mean_D)
    total_var = flat_MD.var(0).sum().clamp_min(1e-12)
    return TargetStats(mean_D=mean_D, std_D=std_D, total_var=total_var)


def standardize(x_ND: torch.Tensor, stats: TargetStats) -> torch.Tensor:
    """``(x - mean) / std`` per dimension, with the targets' statistics (moved to ``x``'s device)."""
    return (x_ND - stats.mean_D.to(x_ND.device)) / stats.std_D.to(x_ND.device)


def sequence_mse(student_ND: torch.Tensor, target_ND: torch.Tensor, stats: TargetStats) -> torch.Tensor:
    """Mean squared error between standardised pooled states (scalar). Stage 1 and distillation."""
    return nn.functional.mse_loss(standardize(student_ND, stats), standardize(target_ND, stats))


@torch.no_grad()
def regression_metrics(student_ND: torch.Tensor, target_ND: torch.Tensor, stats: TargetStats) -> dict[str, float]:
    """Raw (unstandardised) ``mse`` per dimension and ``fvu``, the fraction of the targets' variance
    the student leaves unexplained (sum of squared errors / total variance, per example)."""
    sq = (student_ND - target_ND).pow(2).sum(-1).mean()
    return {"mse": (sq / student_ND.shape[-1]).item(), "fvu": (sq / stats.total_var.to(sq.device)).item()}


def alignment_fvu(student_ND: torch.Tensor, teacher_ND: torch.Tensor) -> float:
    """Fraction of the teacher's variance the student leaves unexplained: ``sum ||s_i - t_i||^2`` over the
    pairs divided by ``N`` times the teacher rows' total variance (the sum of the per-dimension variances).
    0 = the student reproduces the teacher; 1 = no better than predicting the teacher's mean."""
    teacher_ND = teacher_ND.float()
    return regression_metrics(student_ND.float(), teacher_ND, target_stats(teacher_ND, standardize=False))["fvu"]


def classification_ce(logits_NC: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(N, C)`` logits (classes, or ``(N, K)`` option scores) against labels ``(N,)``."""
    return nn.functional.cross_entropy(logits_NC, labels_N)


def _accuracy(logits_NC: torch.Tensor, labels_N: torch.Tensor) -> float:
    return (logits_NC.argmax(-1) == labels_N).float().mean().item()


# ---------------------------------------------------------------------------------- batch losses
def stage1_loss(model: nn.Module, batch: dict[str, Any], *, stats: TargetStats, span_stats: TargetStats | None = None,
                objective: str = "sequence", span_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1: the MT-LLM on the encoder tokens (``input_ids``/``attention_mask``, or cached
    ``encoder_hidden_states``) against the teacher LLM on its own tokens of the same text.

    * ``sequence`` (the paper): pooled state ``(N, D)`` against the teacher's pooled state ``targets``;
    * ``span``: per word (unit, :mod:`mtllm.data.spans`), the mean of the student's states over the
      encoder tokens of that word (``span_units`` ``(N, Le)``: a unit index numbered across the batch, or
      -1) against the mean of the teacher's states over its own tokens of the same word
      (``span_targets`` ``(U, D)``), standardised with ``span_stats``;
    * ``sequence+span``: the sequence loss plus ``span_weight`` times the span loss.

    Metrics: ``loss``; ``mse``/``fvu`` of the pooled states (always: the quantity stage 1 is judged by);
    ``span_loss``/``span_fvu`` when the span term is on."""
    if objective not in STAGE1_OBJECTIVES:
        raise ValueError(f"objective must be one of {STAGE1_OBJECTIVES}, not {objective!r}")
    res = model(batch.get("input_ids"), batch["attention_mask"],
                encoder_hidden_states=batch.get("encoder_hidden_states"))
    pooled_ND = res.pooled.float()
    target_ND = batch["targets"].float()
    seq = sequence_mse(pooled_ND, target_ND, stats)
    metrics = regression_metrics(pooled_ND, target_ND, stats)
    if objective == "sequence":
        return seq, {"loss": seq.item(), **metrics}
    if span_stats is None:
        raise ValueError(f"objective {objective!r} needs span_stats (the span targets' statistics)")
    hidden_NLD = res.last_hidden_state
    units_NL = batch["span_units"]
    pad = hidden_NLD.shape[1] - units_NL.shape[1]  # positions the model put before the encoder tokens
    if pad:
        units_NL = nn.functional.pad(units_NL, (pad, 0), value=-1)
    span_target_UD = batch["span_targets"].float()
    if span_target_UD.shape[0]:
        span_UD = unit_mean_pool(hidden_NLD, units_NL, span_target_UD.shape[0]).float()
        span = sequence_mse(span_UD, span_target_UD, span_stats)
        span_fvu = regression_metrics(span_UD, span_target_UD, span_stats)["fvu"]
    else:  # no word both tokenisers cover in this batch
        span, span_fvu = hidden_NLD.sum() * 0.0, float("nan")
    loss = span if objective == "span" else seq + span_weight * span
    return loss, {"loss": loss.item(), **metrics, "span_loss": span.item(), "span_fvu": span_fvu}


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in ("labels", "targets", "n_truncated")}


def distill_loss(model: nn.Module, batch: dict[str, Any], *,
                 stats: TargetStats) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2 distillation: the MT-LLM's pooled state (``(N, D)``, or ``(N, K, D)`` per option) of a
    collated task batch against the teacher's pre-computed embeddings ``targets``."""
    res = model(**_model_inputs(batch))
    pooled, target = res.pooled.float(), batch["targets"]
    loss = sequence_mse(pooled, target, stats)
    return loss, {"train_accuracy": _accuracy(res.logits.float(), batch["labels"]),
                  "mse": nn.functional.mse_loss(pooled, target).item(), "loss": loss.item()}


def classification_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the model's head on a collated task batch (teacher fine-tuning, ``objective: ce``)."""
    logits = model(**_model_inputs(batch)).logits.float()
    labels = batch["labels"]
    loss = classification_ce(logits, labels)
    return loss, {"loss": loss.item(), "train_accuracy": _accuracy(logits, labels)}
