"""Inference: batched, length-sorted forward passes on the model's device (:mod:`mtllm.inference.batching`,
the one loop every inference pass uses); predictions."""
from mtllm.inference.batching import run_batched
from mtllm.inference.predict import accuracy, predict, predict_shared_encoder

__all__ = ["predict", "accuracy", "predict_shared_encoder", "run_batched"]
