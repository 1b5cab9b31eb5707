"""The stacked model: its config, the graph (encoder -> up-projection -> LLM -> pooling), pooling functions."""
from mtllm.modeling.config import LoraSettings, MTLLMConfig
from mtllm.modeling.model import MTLLMModel, MTLLMOutput
from mtllm.modeling.pooling import cls_pool, eos_pool, mean_pool, span_mean_pool

__all__ = ["MTLLMModel", "MTLLMConfig", "MTLLMOutput", "LoraSettings", "mean_pool", "eos_pool", "cls_pool",
           "span_mean_pool"]
