"""The ``encoder-ft`` baseline's model: an MT-LLM's encoder with a linear head on its mean-pooled last hidden
states, fine-tuned as one on the English task (the paper's encoder baseline: "the encoder fine-tuned on the
English task"). :mod:`mtllm.training.encoder_ft` trains it (``mtllm run``'s ``encoder-ft`` stage); evaluation
runs it as the ``encoder-ft`` system, beside the frozen-encoder probe (``encoder``).

:class:`EncoderFT` has no tokenizer of its own: it reads text through a *host*, an :class:`~mtllm.MTLLMModel`
built on the same encoder, whose tokenisation it uses (language codes, e5's text prefix, the pair separator,
truncation): the encoder gets exactly the input that the ``mtllm`` and ``encoder`` systems give it. The host
is a plain attribute, not a submodule, so the model's parameters, checkpoints and folder hold only the encoder
and the head.

A saved folder (:data:`FILES`) holds the encoder tensors it trained and the head (``encoder_ft.safetensors``)
and what it was built on (``encoder_ft.json``: the encoder's name, type and sizes, the labels). The tensors it
did not train (by default the token embeddings) are the base encoder's: :meth:`EncoderFT.load` copies the
host's encoder, refuses a host whose encoder is another one (name, type, sizes) and loads the trained tensors
into the copy, each checked by name and shape.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from mtllm.data.collate import collate_examples, example_lengths
from mtllm.device import module_device
from mtllm.errors import ConfigError
from mtllm.fingerprints import folder_fingerprint
from mtllm.modeling.batching import forward_inputs, run_batched
from mtllm.modeling.pooling import mean_pool, span_mean_pool

__all__ = ["EncoderFT", "EncoderFTOutput", "FILES", "encoder_ft_fingerprint"]

#: The files of a saved :class:`EncoderFT` folder.
FILES = ("encoder_ft.json", "encoder_ft.safetensors")
_FORMAT = 1


def encoder_ft_fingerprint(directory: str | Path) -> str:
    """sha256 over a saved encoder-ft folder's files: the same contents, the same fingerprint."""
    return folder_fingerprint(directory, FILES)


@dataclass
class EncoderFTOutput:
    logits: torch.Tensor  # (N, C), or (N, K) option scores for multiple choice
    pooled: torch.Tensor  # (N, E), or (N, K, E)


def _base_info(host: Any) -> dict[str, Any]:
    """What identifies the host's encoder: a saved model loads only onto the same one."""
    cfg = host.config
    return {"encoder": cfg.encoder_name_or_path, "encoder_model_type": cfg.encoder_model_type,
            "encoder_hidden_size": cfg.encoder_hidden_size, "encoder_vocab_size": cfg.encoder_vocab_size}


class EncoderFT(nn.Module):
    """An encoder + mean pooling + a linear head (one score per option for multiple choice), reading text
    through ``host`` (module docstring). Build one to train with :meth:`from_host`, reload one with :meth:`load`."""

    def __init__(self, encoder: nn.Module, host: Any, kind: str, label_names: Sequence[str]):
        super().__init__()
        if kind not in ("classification", "multiple_choice"):
            raise ValueError(f"unknown head kind {kind!r}: use 'classification' or 'multiple_choice'")
        if kind == "classification" and len(label_names) < 2:
            raise ValueError(f"a classification head needs at least 2 labels, got {list(label_names)}")
        self.encoder = encoder
        object.__setattr__(self, "host", host)  # tokenisation only: not a submodule (its LLM is no part of this model)
        self.head_kind = kind
        self.label_names = list(label_names)
        self.head = nn.Linear(host.config.encoder_hidden_size, 1 if kind == "multiple_choice" else len(label_names))
        self.info: dict[str, Any] = {}  # what training wrote into the folder (task, data, epoch, ...)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_host(cls, host: Any, kind: str, label_names: Sequence[str], *,
                  train_embeddings: bool = False) -> "EncoderFT":
        """A fresh model on ``host``'s encoder itself (not a copy: the host serves only to tokenise while it
        trains), every encoder weight trainable except the token embeddings (unless ``train_embeddings``), and a
        fresh head."""
        if getattr(host, "encoder", None) is None:
            raise ConfigError("encoder-ft needs a model with an encoder (an MT-LLM), not an LLM alone")
        model = cls(host.encoder, host, kind, label_names)
        model.head.to(dtype=torch.float32, device=module_device(host.encoder))
        host.encoder.requires_grad_(True)
        if not train_embeddings:
            host.encoder.get_input_embeddings().requires_grad_(False)
        return model

    @classmethod
    def load(cls, directory: str | Path, host: Any) -> "EncoderFT":
        """The model saved in ``directory`` (by :meth:`save`) on a copy of ``host``'s encoder, for inference
        (eval mode, no gradients). A host built on another encoder, or a folder whose tensors do not fit it, is a
        one-line :class:`~mtllm.errors.ConfigError`."""
        root = Path(directory)
        missing = [name for name in FILES if not (root / name).is_file()]
        if missing:
            raise ConfigError(f"{root} is not an encoder-ft folder: {', '.join(missing)} missing (it is written by "
                              f"`mtllm run`'s encoder-ft stage: its encoder-ft-TASK/best)")
        meta = json.loads((root / FILES[0]).read_text(encoding="utf-8"))
        if getattr(host, "encoder", None) is None:
            raise ConfigError("the encoder-ft system needs model: an MT-LLM built on the encoder it was trained on")
        base = _base_info(host)
        differ = [k for k in base if meta.get(k) != base[k]]
        if differ:
            raise ConfigError(f"{root} was trained on the encoder {meta.get('encoder')!r} "
                              f"({', '.join(f'{k} {meta.get(k)!r}' for k in differ)}), but the model it is to run on "
                              f"has {base['encoder']!r} ({', '.join(f'{k} {base[k]!r}' for k in differ)}); give an "
                              f"MT-LLM built on the same encoder")
        model = cls(copy.deepcopy(host.encoder), host, meta["head_kind"], meta["label_names"])
        model.info = dict(meta.get("info") or {})
        state = safetensors.torch.load_file(str(root / FILES[1]))
        params = dict(model.named_parameters())
        wrong = [k for k, v in state.items() if k not in params or tuple(params[k].shape) != tuple(v.shape)]
        if wrong or not {"head.weight", "head.bias"} <= set(state):
            raise ConfigError(f"{root / FILES[1]} does not fit this encoder: tensors {wrong[:3] or ['head.*']} are "
                              f"missing or of another shape; was it written for another model?")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)
        model.head.to(device=module_device(model.encoder))
        model.requires_grad_(False)
        return model.eval()

    def save(self, directory: str | Path, *, info: dict[str, Any] | None = None) -> None:
        """Write the trained encoder tensors (those with gradients on), the head and ``encoder_ft.json``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"encoder.{n}": p.detach().float().contiguous().cpu() for n, p in self.encoder.named_parameters()
                   if p.requires_grad}
        tensors.update({"head.weight": self.head.weight.detach().float().contiguous().cpu(),
                        "head.bias": self.head.bias.detach().float().contiguous().cpu()})
        safetensors.torch.save_file(tensors, str(out / FILES[1]))
        frozen = [n for n, p in self.encoder.named_parameters() if not p.requires_grad]
        meta = {"format": _FORMAT, **_base_info(self.host), "head_kind": self.head_kind,
                "label_names": self.label_names, "pooling": "mean",
                "trained_tensors": len(tensors) - 2, "frozen_tensors": frozen, "info": {**self.info, **(info or {})}}
        (out / FILES[0]).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ forward and inference
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                option_spans: torch.Tensor | None = None) -> EncoderFTOutput:
        hidden_NLE = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if option_spans is not None:
            pooled = span_mean_pool(hidden_NLE, option_spans.to(hidden_NLE.device))
        else:
            pooled = mean_pool(hidden_NLE, attention_mask.to(hidden_NLE.device))
        logits = self.head(pooled.to(self.head.weight.dtype))
        return EncoderFTOutput(logits=logits.squeeze(-1) if option_spans is not None else logits, pooled=pooled)

    def collate(self, examples: Sequence[Any], *, lang: str | None) -> dict[str, Any]:
        """A training or inference batch of ``examples`` (text in ``lang``, the encoder's code for it)."""
        return collate_examples(self.host, examples, route="encoder", lang=lang)

    @torch.no_grad()
    def logits(self, examples: Sequence[Any], *, lang: str | None, batch_size: int = 32) -> torch.Tensor:
        """``(N, C)`` scores of ``examples`` (length-sorted batches, results in input order)."""
        was_training = self.training
        self.eval()
        device = module_device(self.encoder)

        def step(batch_examples: list[Any]) -> torch.Tensor:
            return self(**forward_inputs(self.collate(batch_examples, lang=lang), device)).logits.float().cpu()

        try:
            return torch.stack(run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples)))
        finally:
            self.train(was_training)

    def predict(self, examples: Sequence[Any], *, lang: str | None, batch_size: int = 32) -> np.ndarray:
        """The label index (multiple choice: the option) predicted for each of ``examples``."""
        return self.logits(examples, lang=lang, batch_size=batch_size).argmax(-1).numpy()
