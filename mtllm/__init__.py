"""mtllm: stack a multilingual (machine-translation) encoder into an English-centric LLM and train the
pair by self-distillation (Schmidt et al., arXiv 2406.12739).

>>> from mtllm import MTLLMModel
>>> model = MTLLMModel.from_pretrained("runs/pocket/stage1/final")      # doctest: +SKIP
>>> model.encode(["Habari ya asubuhi"], lang="swh_Latn").shape          # doctest: +SKIP
"""
from transformers import AutoConfig, AutoModel

from mtllm.modeling.config import LoraSettings, MTLLMConfig
from mtllm.modeling.model import MTLLMModel, MTLLMOutput
from mtllm.modeling.pooling import cls_pool, eos_pool, mean_pool, span_mean_pool

__version__ = "0.1.0"


def _register_with_transformers() -> None:
    """Make ``AutoConfig``/``AutoModel.from_pretrained(folder)`` load a saved MT-LLM (model type ``mtllm``)
    through :meth:`MTLLMModel.from_pretrained`: the one loading path, whichever entry point is used."""
    AutoConfig.register(MTLLMConfig.model_type, MTLLMConfig, exist_ok=True)
    AutoModel.register(MTLLMConfig, MTLLMModel, exist_ok=True)


_register_with_transformers()

__all__ = ["MTLLMModel", "MTLLMConfig", "MTLLMOutput", "LoraSettings", "mean_pool", "eos_pool", "cls_pool",
           "span_mean_pool", "__version__"]
