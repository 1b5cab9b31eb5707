"""Inference for users' files: ``mtllm predict`` / ``mtllm encode`` on a file, streamed and resumable
(:mod:`mtllm.inference.files`). The batched forward passes they run are the model's own
(:mod:`mtllm.modeling.batching`, the one loop every inference pass uses; predictions in
:mod:`mtllm.modeling.predict`, behind ``MTLLMModel.predict``; embeddings in :mod:`mtllm.modeling.embed`, behind
``MTLLMModel.encode``), re-exported here for convenience."""
from mtllm.modeling.batching import run_batched
from mtllm.modeling.predict import accuracy, predict, predict_shared_encoder, predict_texts

__all__ = ["predict", "predict_texts", "accuracy", "predict_shared_encoder", "run_batched"]
