"""Inference: batched, length-sorted forward passes on the model's device (:mod:`mtllm.inference.batching`,
the one loop every inference pass uses); predictions (:mod:`mtllm.inference.predict`, behind
``MTLLMModel.predict``), embeddings (:mod:`mtllm.inference.embed`, behind ``MTLLMModel.encode``), and both for a
user's file, streamed and resumable (:mod:`mtllm.inference.files`: ``mtllm predict`` / ``mtllm encode``)."""
from mtllm.inference.batching import run_batched
from mtllm.inference.predict import accuracy, predict, predict_shared_encoder, predict_texts

__all__ = ["predict", "predict_texts", "accuracy", "predict_shared_encoder", "run_batched"]
