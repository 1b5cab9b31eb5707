"""Baselines users compare the MT-LLM against (the LLM alone and translate-test use the fine-tuned
teacher directly; see :mod:`mtllm.evaluation`). Here: the encoder alone with a linear head.

This probe keeps the encoder frozen. The paper's encoder baseline, the encoder *fine-tuned* with a head on the
English task (the ``encoder-ft`` system), is trained like the other models, by a stage of its own
(:mod:`mtllm.training.encoder_ft`, on the one training loop), and is a model of its own
(:class:`mtllm.modeling.encoder_ft.EncoderFT`, in the layer below training and the baselines, which may not import
each other); evaluation loads the folder that stage wrote.

:class:`EncoderClassifier` mean-pools the frozen encoder's last hidden states (the same encoder, the
same tokenisation and language handling as the MT-LLM, so encoder outputs are shared) and trains a
logistic-regression head on English training data; multiple choice scores each option's token span.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from mtllm.data.collate import collate_examples, example_lengths
from mtllm.device import module_device, to_device
from mtllm.modeling.batching import run_batched
from mtllm.modeling.pooling import mean_pool, span_mean_pool
from mtllm.modeling.objectives import TargetStats, standardize, target_stats

__all__ = ["EncoderClassifier"]


class EncoderClassifier:
    """Frozen encoder of ``model`` (an :class:`~mtllm.MTLLMModel` with an encoder) + a linear head."""

    def __init__(self, model: Any, *, weight_decay: float = 1e-3, max_iter: int = 200):
        if model.encoder is None:
            raise ValueError("the encoder baseline needs a model with an encoder")
        self.model = model
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.head: nn.Linear | None = None
        self.stats: TargetStats | None = None  # per-dimension standardisation of the features
        self.label_names: list[str] = []

    @torch.inference_mode()
    def features(self, examples: Sequence[Any], *, lang: str | None, batch_size: int = 64) -> torch.Tensor:
        """Mean-pooled encoder states ``(N, D_enc)`` (multiple choice: per option, ``(N, K, D_enc)``),
        from length-sorted batches on the encoder's device."""
        device = module_device(self.model.encoder)

        def step(batch_examples: list[Any]) -> torch.Tensor:
            batch = collate_examples(self.model, batch_examples, route="encoder", lang=lang)
            inputs = to_device(batch, device)
            hidden_NLE = self.model.encoder(input_ids=inputs["input_ids"],
                                            attention_mask=inputs["attention_mask"]).last_hidden_state
            return self.pool(batch, hidden_NLE)

        return torch.stack(run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples)))

    @staticmethod
    def pool(batch: dict[str, Any], hidden_NLE: torch.Tensor) -> torch.Tensor:
        """Features of one collated encoder-path ``batch`` from its encoder states ``hidden_NLE``
        ``(N, L, E)`` (computed here or shared with the MT-LLM): ``(N, E)``, or ``(N, K, E)`` per option."""
        if "option_spans" in batch:
            pooled = span_mean_pool(hidden_NLE, batch["option_spans"].to(hidden_NLE.device))
        else:
            pooled = mean_pool(hidden_NLE, batch["attention_mask"].to(hidden_NLE.device))
        return pooled.float().cpu()

    def fit(self, examples: Sequence[Any], label_names: Sequence[str], *, lang: str | None) -> dict[str, float]:
        """Train the head (full-batch L-BFGS on standardised features). Returns the training accuracy."""
        X = self.features(examples, lang=lang)
        y = torch.tensor([e.label for e in examples])
        self.stats = target_stats(X)
        Z = standardize(X, self.stats)
        is_mc = Z.dim() == 3
        self.label_names = list(label_names)
        torch.manual_seed(0)
        self.head = nn.Linear(Z.shape[-1], 1 if is_mc else len(label_names))
        opt = torch.optim.LBFGS(self.head.parameters(), max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = self._logits(Z)
            loss = nn.functional.cross_entropy(logits, y) + self.weight_decay * self.head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            acc = (self._logits(Z).argmax(-1) == y).float().mean().item()
        return {"train_accuracy": acc}

    def _logits(self, Z: torch.Tensor) -> torch.Tensor:
        logits = self.head(Z)
        return logits.squeeze(-1) if Z.dim() == 3 else logits

    @torch.no_grad()
    def predict(self, examples: Sequence[Any], *, lang: str | None) -> np.ndarray:
        if self.head is None:
            raise ValueError("call fit() (or load()) before predict()")
        return self.predict_features(self.features(examples, lang=lang))

    @torch.no_grad()
    def predict_features(self, X: torch.Tensor) -> np.ndarray:
        """Predicted label indices from features ``X`` of :meth:`features` / :meth:`pool`."""
        if self.head is None:
            raise ValueError("call fit() (or load()) before predict()")
        return self._logits(standardize(X, self.stats)).argmax(-1).numpy()

    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach().contiguous(),
                   "mean": self.stats.mean_D.contiguous(), "std": self.stats.std_D.contiguous()}
        safetensors.torch.save_file(tensors, str(out / "encoder_head.safetensors"))
        (out / "encoder_head.json").write_text(json.dumps({"label_names": self.label_names}))

    def load(self, directory: str | Path) -> "EncoderClassifier":
        state = safetensors.torch.load_file(str(Path(directory) / "encoder_head.safetensors"))
        self.label_names = json.loads((Path(directory) / "encoder_head.json").read_text())["label_names"]
        self.head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        self.head.load_state_dict({"weight": state["weight"], "bias": state["bias"]})
        self.stats = TargetStats(mean_D=state["mean"], std_D=state["std"], total_var=state["std"].pow(2).sum())
        return self
