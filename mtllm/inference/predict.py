"""Batched prediction with a task head: label indices, accuracy, and one shared encoder pass for
the MT-LLM and the encoder baseline."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from mtllm.data.collate import collate_examples, example_lengths
from mtllm.device import module_device
from mtllm.inference.batching import forward_inputs, run_batched
from mtllm.modeling.model import MTLLMModel

__all__ = ["predict", "accuracy", "predict_shared_encoder"]


@torch.no_grad()
def predict(model: MTLLMModel, examples: Sequence[Any], *, path: str, lang: str | None = None,
            batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
    """Predicted label indices for ``examples`` (length-sorted batches on the model's device, input
    order restored)."""
    if model.head is None:
        raise ValueError("the model has no task head: fine-tune (mtllm finetune) or distil it first")
    was_training = model.training
    model.eval()
    device = module_device(model)

    def step(batch_examples: list[Any]) -> np.ndarray:
        batch = collate_examples(model, batch_examples, path=path, lang=lang)
        inputs = forward_inputs(batch, device)
        return model(**inputs).logits.argmax(-1).cpu().numpy()

    preds = run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples),
                        progress=show_progress, desc="predict", unit="example", leave=False)
    model.train(was_training)
    return np.array(preds, dtype=np.int64)


def accuracy(model: MTLLMModel, examples: Sequence[Any], **kwargs: Any) -> float:
    """Fraction of ``examples`` whose label the model predicts."""
    labels = np.array([e.label for e in examples])
    return float((predict(model, examples, **kwargs) == labels).mean())


@torch.no_grad()
def predict_shared_encoder(model: Any, probe: Any, examples: Sequence[Any], *, lang: str | None,
                           batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The ``mtllm`` and ``encoder`` systems in one pass over ``examples``: per length-sorted batch the
    frozen encoder runs once, and its states ``(N, L, E)`` feed both the MT-LLM (projection, LLM, head)
    and the encoder baseline's head (``probe``, a fitted :class:`~mtllm.baselines.encoder_probe.EncoderClassifier`
    on the same encoder). Returns (MT-LLM predictions, encoder predictions, seconds per part:
    ``tokenize``, ``encoder_forward``, ``mtllm_after_encoder``, ``encoder_head``)."""
    if model.head is None:
        raise ValueError("the model has no task head: fine-tune (mtllm finetune) or distil it first")
    was_training = model.training
    model.eval()
    device = module_device(model)
    secs = dict.fromkeys(("tokenize", "encoder_forward", "mtllm_after_encoder", "encoder_head"), 0.0)

    def step(batch_examples: list[Any]) -> list[tuple[int, torch.Tensor]]:
        t0 = time.perf_counter()
        batch = collate_examples(model, batch_examples, path="encoder", lang=lang)
        inputs = forward_inputs(batch, device)
        t1 = time.perf_counter()
        hidden_NLE = model.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        t2 = time.perf_counter()
        logits = model(attention_mask=inputs["attention_mask"], encoder_hidden_states=hidden_NLE,
                       option_spans=inputs.get("option_spans")).logits
        preds = logits.argmax(-1).cpu().numpy()
        t3 = time.perf_counter()
        pooled = probe.pool(batch, hidden_NLE)
        t4 = time.perf_counter()
        for key, dt in zip(secs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            secs[key] += dt
        return list(zip(preds.tolist(), pooled))

    results = run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples))
    t0 = time.perf_counter()
    enc_preds = probe.predict_features(torch.stack([feat for _, feat in results]))
    secs["encoder_head"] += time.perf_counter() - t0
    model.train(was_training)
    return np.array([pred for pred, _ in results], dtype=np.int64), enc_preds, secs
