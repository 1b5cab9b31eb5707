"""Inference for users' files: ``mtllm predict`` / ``mtllm encode`` on a file, streamed and resumable. The job and
its settings are in :mod:`mtllm.inference.jobs`, reading the input's rows in :mod:`mtllm.inference.rows`, the
output writers (one per format, resumable) in :mod:`mtllm.inference.writers`; their public names are re-exported
here. The batched forward passes they run are the model's own (:mod:`mtllm.modeling.batching`, the one loop every
inference pass uses; predictions in :mod:`mtllm.modeling.predict`, behind ``MTLLMModel.predict``; embeddings in
:mod:`mtllm.modeling.embed`, behind ``MTLLMModel.encode``), re-exported here for convenience.

No name here is also the name of a submodule of this package (``predict`` is the function of
:mod:`mtllm.modeling.predict`; this package has no ``predict`` module for it to hide)."""
from mtllm.inference.jobs import EncodeFileSettings, PredictFileSettings, encode_file, predict_file
from mtllm.inference.rows import CHUNK_ROWS, INPUT_SUFFIXES, Row, count_rows, iter_rows
from mtllm.inference.writers import ENCODE_SUFFIXES, PREDICT_SUFFIXES, PROGRESS_SUFFIX, output_paths
from mtllm.modeling.batching import run_batched
from mtllm.modeling.predict import accuracy, predict, predict_shared_encoder, predict_texts

__all__ = ["predict", "predict_texts", "accuracy", "predict_shared_encoder", "run_batched",
           "PredictFileSettings", "EncodeFileSettings", "predict_file", "encode_file",
           "INPUT_SUFFIXES", "CHUNK_ROWS", "Row", "iter_rows", "count_rows",
           "PREDICT_SUFFIXES", "ENCODE_SUFFIXES", "PROGRESS_SUFFIX", "output_paths"]
