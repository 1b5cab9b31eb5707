"""The stacked MT-LLM: frozen (MT) encoder -> trainable up-projection -> LLM (+LoRA) -> pooling.

The same class also runs the LLM on its own tokens (``llm_input_ids``): that is the stage-1 teacher
(with the adapters disabled), the stage-2 task teacher and the "LLM alone" baseline. A model built
without an encoder (``MTLLMModel.llm_only``) has only that route (``route="llm"``).

The saved folder's layout, its fingerprint and the checks a folder passes before it loads are in
:mod:`mtllm.modeling.serialization` (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` call into it); the
tokenisation helpers that need no model (texts with nothing to read, the LLM's ``<bos>``, the encoder's language
style) in :mod:`mtllm.modeling.tokenization`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import safetensors.torch
import torch
from torch import nn
from transformers import AutoModel, BatchEncoding, PreTrainedModel
from transformers.utils import ModelOutput, hub

from mtllm.data.languages import resolve_encoder_lang, validate_lang
from mtllm.device import module_device, place, resolve_device
from mtllm.errors import ConfigError, renamed_keyword
from mtllm.modeling.config import LoraSettings, MTLLMConfig
from mtllm.modeling.pooling import get_pooler, span_mean_pool
from mtllm.modeling.serialization import (ADAPTER_DIR, WEIGHTS_NAME, _base_model_hub_ids, _check_base_refs,
                                          _check_saved_folder, _check_size, _check_type, _config_hidden_size,
                                          _is_loadable_ref, _mtllm_folder, _record_hub_ids)
from mtllm.modeling.serialization import model_fingerprint  # noqa: F401 (re-exported)
from mtllm.modeling.tokenization import _bos_token_id, _detect_lang_style, no_content_texts
from mtllm.sources import load_encoder, load_llm, load_tokenizer, read_json_file

logger = logging.getLogger(__name__)


@dataclass
class MTLLMOutput(ModelOutput):
    """``last_hidden_state``: ``(N, L, D)``; ``pooled``: ``(N, D)`` (or ``(N, K, D)`` per option);
    ``attention_mask``/``pool_mask``: ``(N, L)``; ``logits``: ``(N, C)`` or ``(N, K)`` if a head is set."""

    last_hidden_state: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    pool_mask: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def bidirectional_attention_mask(attention_mask_NL: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4D additive mask ``(N, 1, L, L)`` that lets every token attend to every non-padding token.

    transformers 5.x passes a 4D mask through unchanged to the attention implementation (eager and
    SDPA both add it to the scores), so this turns any decoder non-causal without touching its code.
    Padding rows attend to the real tokens too, so no row is fully masked (no NaNs in SDPA).
    """
    keep_N11L = attention_mask_NL.bool()[:, None, None, :]
    L = attention_mask_NL.shape[1]
    keep_N1LL = keep_N11L.expand(-1, 1, L, L)
    mask = torch.zeros(keep_N1LL.shape, dtype=dtype, device=attention_mask_NL.device)
    return mask.masked_fill(~keep_N1LL, torch.finfo(dtype).min)


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel  # slow: peft (~0.2 s), only for a model with an adapter
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


class MTLLMModel(PreTrainedModel):
    """Frozen encoder -> ``Linear(d_enc, d_llm)`` -> LLM via ``inputs_embeds`` -> pooled vector.

    Build one with :meth:`from_encoder_and_llm` (or :meth:`llm_only`), reload one with
    :meth:`from_pretrained`. Components are passed in; the class never builds them itself.
    """

    config_class = MTLLMConfig
    base_model_prefix = "mtllm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MTLLMConfig, *, llm: nn.Module, encoder: nn.Module | None = None,
                 llm_tokenizer: Any = None, encoder_tokenizer: Any = None):
        super().__init__(config)
        self.encoder = encoder
        self.llm = llm
        self.encoder_tokenizer = encoder_tokenizer
        self.llm_tokenizer = llm_tokenizer
        if encoder is not None:
            self.projection = nn.Linear(config.encoder_hidden_size, config.llm_hidden_size)
        else:
            self.projection = None
        self.head: nn.Linear | None = None
        if config.head_kind is not None:
            self._make_head(config.head_kind, config.label_names)
        self._pooler = get_pooler(config.pooling)
        self._llm_adds_bos: bool | None = None
        self._llm_depth: int | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder_and_llm(
        cls,
        encoder: str | Path | nn.Module,
        llm: str | Path | nn.Module,
        *,
        encoder_tokenizer: Any = None,
        llm_tokenizer: Any = None,
        bidirectional: bool = False,
        lora: LoraSettings | dict | None = LoraSettings(),
        pooling: str = "mean",
        load_in_4bit: bool = False,
        dtype: torch.dtype | None = None,
        llm_adapters_to_merge: Sequence[str] = (),
        encoder_lang_style: str | None = None,
        encoder_text_prefix: str | None = None,
        encoder_languages: Sequence[str] | None = None,
        max_seq_length: int = 512,
        prepend_llm_bos: bool = True,
        attn_implementation: str | None = None,
        device: str | torch.device | None = None,
    ) -> "MTLLMModel":
        """Stack ``encoder`` into ``llm``. Each may be a hub id, a local directory, ``pocket:NAME``,
        ``tiny:NAME`` or a model instance (then pass its tokenizer too). The encoder is frozen, the
        up-projection freshly initialised, and a fresh LoRA (``lora``; ``None`` for none) added. The
        model is put on ``device`` (:func:`mtllm.device.resolve_device`: ``$MTLLM_DEVICE``, else cuda,
        else mps, else cpu)."""
        encoder_source = _source_name(encoder)
        enc = load_encoder(encoder, dtype=dtype)
        if encoder_tokenizer is None:
            encoder_tokenizer = load_tokenizer(_require_source(encoder, "encoder_tokenizer"), optional=True,
                                               what="encoder")
        style, prefix = _detect_lang_style(encoder_tokenizer, encoder_source, getattr(enc.config, "model_type", None))
        return cls._build(
            encoder=enc, encoder_source=encoder_source, encoder_tokenizer=encoder_tokenizer, llm=llm,
            llm_tokenizer=llm_tokenizer, bidirectional=bidirectional, lora=lora, pooling=pooling,
            load_in_4bit=load_in_4bit, dtype=dtype, llm_adapters_to_merge=llm_adapters_to_merge,
            encoder_lang_style=encoder_lang_style or style,
            encoder_text_prefix=prefix if encoder_text_prefix is None else encoder_text_prefix,
            encoder_languages=encoder_languages, max_seq_length=max_seq_length,
            prepend_llm_bos=prepend_llm_bos, attn_implementation=attn_implementation, device=device)

    @classmethod
    def llm_only(cls, llm: str | Path | nn.Module, *, llm_tokenizer: Any = None, bidirectional: bool = False,
                 lora: LoraSettings | dict | None = LoraSettings(), pooling: str = "mean",
                 load_in_4bit: bool = False, dtype: torch.dtype | None = None,
                 llm_adapters_to_merge: Sequence[str] = (), max_seq_length: int = 512,
                 attn_implementation: str | None = None, device: str | torch.device | None = None) -> "MTLLMModel":
        """The LLM on its own tokens, pooled: a stage-2 teacher or the "LLM alone" baseline (on
        ``device``, as :meth:`from_encoder_and_llm`)."""
        return cls._build(
            encoder=None, encoder_source=None, encoder_tokenizer=None, llm=llm, llm_tokenizer=llm_tokenizer,
            bidirectional=bidirectional, lora=lora, pooling=pooling, load_in_4bit=load_in_4bit, dtype=dtype,
            llm_adapters_to_merge=llm_adapters_to_merge, encoder_lang_style="none", encoder_text_prefix="",
            encoder_languages=None, max_seq_length=max_seq_length, prepend_llm_bos=True,
            attn_implementation=attn_implementation, device=device)

    @classmethod
    def _build(cls, *, encoder, encoder_source, encoder_tokenizer, llm, llm_tokenizer, bidirectional, lora,
               pooling, load_in_4bit, dtype, llm_adapters_to_merge, encoder_lang_style, encoder_text_prefix,
               encoder_languages, max_seq_length, prepend_llm_bos, attn_implementation, device) -> "MTLLMModel":
        llm_source = _source_name(llm)
        base_llm = load_llm(llm, dtype=dtype, load_in_4bit=load_in_4bit, adapters_to_merge=llm_adapters_to_merge,
                            attn_implementation=attn_implementation)
        if llm_tokenizer is None:
            llm_tokenizer = load_tokenizer(_require_source(llm, "llm_tokenizer"), optional=True, what="LLM")
        if isinstance(lora, LoraSettings):
            lora = lora.to_dict()
        config = MTLLMConfig(
            encoder_name_or_path=encoder_source if encoder is not None else None,
            llm_name_or_path=llm_source, llm_adapters_to_merge=list(llm_adapters_to_merge),
            encoder_hidden_size=_hidden_size(encoder) if encoder is not None else None,
            llm_hidden_size=_hidden_size(base_llm), bidirectional=bidirectional, pooling=pooling,
            prepend_llm_bos=prepend_llm_bos, llm_bos_token_id=_bos_token_id(llm_tokenizer, base_llm),
            encoder_lang_style=encoder_lang_style, encoder_text_prefix=encoder_text_prefix,
            encoder_languages=list(encoder_languages) if encoder_languages else None,
            max_seq_length=max_seq_length, lora=lora,
            encoder_vocab_size=len(encoder_tokenizer) if encoder_tokenizer is not None else None,
            llm_vocab_size=base_llm.get_input_embeddings().num_embeddings,
            encoder_model_type=getattr(encoder.config, "model_type", None) if encoder is not None else None,
            llm_model_type=getattr(base_llm.config, "model_type", None))
        if lora is not None:
            base_llm = _add_lora(base_llm, lora)
        model = cls(config, llm=base_llm, encoder=encoder, llm_tokenizer=llm_tokenizer,
                    encoder_tokenizer=encoder_tokenizer)
        if model.projection is not None:
            model.projection.to(device=module_device(base_llm), dtype=_float_dtype(base_llm))
        return place(model, device)

    def encoder_lang(self, lang: str, fallbacks: Mapping[str, str] | None = None) -> str:
        """The language code to give this model's encoder for text in ``lang``: unchanged when the encoder covers
        it, else an explicit, warned fallback (:func:`mtllm.data.languages.resolve_encoder_lang`)."""
        supported = self.config.encoder_languages
        if supported is None and self.config.encoder_lang_style == "nllb":
            tok = self.encoder_tokenizer
            supported = [t for t in getattr(tok, "extra_special_tokens", None) or tok.additional_special_tokens
                         if isinstance(t, str) and len(t) == 8 and t[3] == "_"]
        return resolve_encoder_lang(lang, supported, fallbacks=fallbacks)

    # ------------------------------------------------------------------ parts
    def _make_head(self, kind: str, label_names: Sequence[str]) -> None:
        if kind == "classification":
            out = len(label_names)
            if out < 2:
                raise ValueError(f"a classification head needs at least 2 labels, got {list(label_names)}")
        elif kind == "multiple_choice":
            out = 1
        else:
            raise ValueError(f"unknown head kind {kind!r}: use 'classification' or 'multiple_choice'")
        self.head = nn.Linear(self.config.llm_hidden_size, out)
        self.config.head_kind = kind
        self.config.label_names = list(label_names)

    def set_head(self, kind: str, label_names: Sequence[str] = (), *, init_from: nn.Linear | None = None) -> nn.Linear:
        """Add a fresh task head (``classification`` over ``label_names`` or ``multiple_choice``), or a
        copy of ``init_from`` (stage 2 copies the teacher's head into the MT-LLM)."""
        self._make_head(kind, label_names)
        self.head.to(device=module_device(self.llm), dtype=_float_dtype(self.llm))
        if init_from is not None:
            self.head.load_state_dict(init_from.state_dict())
        return self.head

    @property
    def base_llm(self) -> nn.Module:
        """The LLM without PEFT wrapping."""
        return self.llm.get_base_model() if _is_peft(self.llm) else self.llm

    @property
    def adapters_merged(self) -> bool:
        """True after :meth:`merge_adapters`: LoRA is folded into the LLM's weights (inference only)."""
        return bool(getattr(self, "_adapters_merged", False))

    def merge_adapters(self) -> "MTLLMModel":
        """Fold the LoRA adapter into the LLM's linear weights, for inference.

        The outputs are those of the adapted model, but each linear layer runs one matmul instead of
        three (base, LoRA A, LoRA B): bf16 inference on CPU measured 1.34x faster on pocket. Afterwards
        the adapter can no longer be disabled or trained, and only ``save_pretrained(full=True)`` can
        save the model (the merged weights become its LLM). Returns ``self``; no-op without LoRA."""
        if _is_peft(self.llm):
            self.llm = self.llm.merge_and_unload()
            self._adapters_merged = True
            self.llm.requires_grad_(False)
        return self

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the LLM as it was before LoRA: the stage-1 teacher."""
        if self.adapters_merged:
            raise RuntimeError("the LoRA adapter was merged into the LLM (merge_adapters), so the LLM without it "
                               "no longer exists in this instance: load the model again without merging")
        if _is_peft(self.llm):
            with self.llm.disable_adapter():
                yield
        else:
            yield

    @property
    def llm_num_layers(self) -> int:
        """How many decoder layers the LLM has (``L``)."""
        return len(decoder_layers(self.base_llm))

    @contextlib.contextmanager
    def llm_depth(self, layers: int | None) -> Iterator[None]:
        """While open, every LLM forward pass (both paths) runs only the first ``layers`` decoder layers and
        returns their output **before** the final norm (the residual stream at layer ``layers``), as
        ``last_hidden_state``; ``None`` or ``L`` is the whole LLM, final norm included, as always.

        Stage 1's layer-k target (:class:`~mtllm.training.stage1.Stage1Settings` ``student_layers``): teacher and
        student both stop at layer k, so a step costs about k/L of the LLM's. The module tree is cut only for the
        duration of each forward call, so parameters, checkpoints and ``save_pretrained`` always see the whole
        LLM."""
        total = self.llm_num_layers
        if layers is not None and not 1 <= layers <= total:
            raise ConfigError(f"student_layers must be between 1 and the LLM's {total} layers, not {layers}")
        previous, self._llm_depth = self._llm_depth, (None if layers == total else layers)
        try:
            yield
        finally:
            self._llm_depth = previous

    def train(self, mode: bool = True) -> "MTLLMModel":
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: no dropout
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ tokenisation
    def _encoder_texts(self, texts: Sequence[str], lang: str | None) -> list[str]:
        style = self.config.encoder_lang_style
        tok = self.encoder_tokenizer
        if lang is not None:
            lang = validate_lang(lang)
            allowed = self.config.encoder_languages
            if allowed and lang not in allowed:
                raise ValueError(
                    f"the encoder {self.config.encoder_name_or_path!r} was not trained on {lang!r}. Use one of its "
                    f"{len(allowed)} languages, or map {lang!r} to a related language it covers explicitly.")
        if style == "nllb":
            if lang is None:
                raise ValueError("this encoder (NLLB-style) needs the input language: pass lang='xxx_Xxxx' "
                                 "(a FLORES-200 code such as 'eng_Latn').")
            if tok.convert_tokens_to_ids(lang) in (None, tok.unk_token_id):
                raise ValueError(f"the encoder's tokenizer has no language token {lang!r}; map it to a covered "
                                 f"language explicitly (see mtllm.data.languages.resolve_encoder_lang).")
            tok.src_lang = lang
            if hasattr(tok, "set_src_lang_special_tokens"):
                tok.set_src_lang_special_tokens(lang)
        prefix = self.encoder_prefix
        return [prefix + t for t in texts]

    @property
    def encoder_prefix(self) -> str:
        """The text put before every encoder input (e5's ``"query: "``; empty unless
        ``encoder_lang_style == "prefix"``). The one place this rule lives: tokenisation, length
        checks and character offsets all read it here."""
        return self.config.encoder_text_prefix if self.config.encoder_lang_style == "prefix" else ""

    def contentless(self, texts: Sequence[Any], *, route: str | None = None, path: str | None = None) -> list[int]:
        """Indices of ``texts`` with nothing to embed on ``route`` (``"encoder"``, the default, or ``"llm"``;
        ``path=`` is its old name, deprecated): not a string, empty, whitespace-only, or no content token for that
        route's tokenizer (only characters it drops: zero-width, control or format characters, ...). See
        :func:`no_content_texts`."""
        route = renamed_keyword(route, path, where="contentless", name="route", old_name="path", default="encoder")
        if route not in ("encoder", "llm"):
            raise ValueError(f"route must be 'encoder' or 'llm', not {route!r}")
        if route == "encoder" and self.encoder is None:
            raise ValueError("this model has no encoder (LLM only): use route='llm'")
        return no_content_texts(self._text_tokenizer(route), texts)

    def _text_tokenizer(self, route: str) -> Any:
        """The tokenizer of ``route``, or a :class:`~mtllm.errors.ConfigError` when the model was loaded without
        one (its folder had no tokenizer files): text input needs it, token ids and hidden states do not."""
        tok = self.encoder_tokenizer if route == "encoder" else self.llm_tokenizer
        if tok is None:
            key = "encoder_tokenizer" if route == "encoder" else "llm_tokenizer"
            source = self.config.encoder_name_or_path if route == "encoder" else self.config.llm_name_or_path
            ids = "input_ids= or encoder_hidden_states=" if route == "encoder" else "llm_input_ids="
            role = "encoder" if route == "encoder" else "LLM"
            raise ConfigError(f"this model has no {role} tokenizer (its {role} {source!r} has no tokenizer files), so "
                              f"it cannot read text: pass {key}=AutoTokenizer.from_pretrained(...) to MTLLMModel."
                              f"from_pretrained (or from_encoder_and_llm), or call the model on token ids ({ids})")
        return tok

    def tokenize(self, texts: Sequence[str], *, lang: str | None = None, pairs: Sequence[str] | None = None,
                 route: str | None = None, max_length: int | None = None, return_offsets: bool = False,
                 path: str | None = None):
        """Tokenise ``texts`` for ``route="encoder"`` (the default: the MT-LLM input) or ``route="llm"`` (the
        LLM's own tokens, with its ``<bos>`` guaranteed); ``path=`` is the old name of ``route=``, deprecated.
        ``pairs`` are joined to ``texts`` with ``config.pair_separator``. Returns a ``BatchEncoding`` with
        ``input_ids``/``attention_mask`` ``(N, L)``, right-padded, and ``n_truncated`` (how many texts were cut
        at ``max_length``)."""
        route = renamed_keyword(route, path, where="tokenize", name="route", old_name="path", default="encoder")
        texts = list(texts)
        if pairs is not None:
            texts = [a + self.config.pair_separator + b for a, b in zip(texts, pairs, strict=True)]
        max_length = min(max_length or self.config.max_seq_length, self._max_tokens(route))
        if route == "encoder":
            if self.encoder is None:
                raise ValueError("this model has no encoder (LLM only): tokenize with route='llm'")
            tok = self._text_tokenizer(route)
            texts = self._encoder_texts(texts, lang)
        elif route == "llm":
            tok = self._text_tokenizer(route)
        else:
            raise ValueError(f"route must be 'encoder' or 'llm', not {route!r}")
        prev_side = tok.padding_side
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            full = tok(texts, add_special_tokens=True, truncation=False, return_offsets_mapping=return_offsets,
                       verbose=False)
        finally:
            tok.padding_side = prev_side
        prepend_bos = route == "llm" and self._needs_bos(tok)
        limit = max_length - (1 if prepend_bos else 0)
        ids, offsets, n_truncated = [], [], 0
        for i, seq in enumerate(full["input_ids"]):
            if len(seq) > limit:
                n_truncated += 1
                seq = seq[:limit - 1] + seq[-1:] if route == "encoder" else seq[:limit]
            ids.append(([tok.bos_token_id] if prepend_bos else []) + list(seq))
            if return_offsets:
                off = list(full["offset_mapping"][i])[:len(seq)]
                if route == "encoder" and len(full["input_ids"][i]) > limit:
                    off[-1] = (0, 0)  # the kept end-of-sequence token covers no text
                offsets.append(([(0, 0)] if prepend_bos else []) + off)
        L = max(len(s) for s in ids) if ids else 0
        pad = tok.pad_token_id
        input_ids = torch.full((len(ids), L), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), L), dtype=torch.long)
        for i, seq in enumerate(ids):
            input_ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[i, :len(seq)] = 1
        out = BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask})
        out["n_truncated"] = n_truncated
        if return_offsets:
            out["offset_mapping"] = offsets
        return out

    def _max_tokens(self, route: str) -> int:
        """The most tokens the model on ``route`` can take (position embeddings, tokenizer limit)."""
        model = self.encoder if route == "encoder" else self.base_llm
        tok = self.encoder_tokenizer if route == "encoder" else self.llm_tokenizer
        limits = [10 ** 9]
        n_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(n_pos, int):
            if getattr(model.config, "model_type", "") in ("xlm-roberta", "roberta", "camembert"):
                n_pos -= (model.config.pad_token_id or 0) + 1  # positions start after the padding index
            limits.append(n_pos)
        if (tok is not None and isinstance(getattr(tok, "model_max_length", None), int)
                and tok.model_max_length < 10 ** 6):
            limits.append(tok.model_max_length)
        return min(limits)

    def _needs_bos(self, tok: Any) -> bool:
        """Whether ``<bos>`` must be prepended by hand (some tokenizers, e.g. Gemma's from GGUF, omit it)."""
        if tok.bos_token_id is None:
            return False
        if self._llm_adds_bos is None:
            self._llm_adds_bos = tok("a", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]
        return not self._llm_adds_bos

    # ------------------------------------------------------------------ forward
    def project(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, *,
                encoder_hidden_states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens ``(N, Le)`` -> the LLM's ``inputs_embeds`` ``(N, L, D)`` and mask ``(N, L)``;
        ``L = Le + 1`` when the LLM's ``<bos>`` is prepended. ``encoder_hidden_states`` ``(N, Le, E)``:
        the frozen encoder's last hidden states computed beforehand (e.g. by
        :class:`mtllm.training.encoder_cache.EncoderCache`), used instead of running the encoder;
        ``input_ids`` may then be ``None``."""
        if self.encoder is None:
            raise ValueError("this model has no encoder (LLM only): call it with llm_input_ids")
        if encoder_hidden_states is not None:
            enc_NLE = encoder_hidden_states
        else:
            with torch.no_grad():
                enc_NLE = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        proj = self.projection
        embeds_NLD = proj(enc_NLE.detach().to(proj.weight.dtype))
        if self.config.prepend_llm_bos and self.config.llm_bos_token_id is not None:
            bos = torch.full((enc_NLE.shape[0], 1), self.config.llm_bos_token_id, device=embeds_NLD.device)
            bos_N1D = self.base_llm.get_input_embeddings()(bos).to(embeds_NLD.dtype)
            embeds_NLD = torch.cat([bos_N1D, embeds_NLD], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask], dim=1)
        return embeds_NLD, attention_mask

    def _run_llm(self, *, inputs_embeds=None, input_ids=None, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.bidirectional:
            dtype = inputs_embeds.dtype if inputs_embeds is not None else _float_dtype(self.base_llm)
            llm_mask = bidirectional_attention_mask(attention_mask, dtype)
        else:
            llm_mask = attention_mask
        with _first_layers(self.base_llm, self._llm_depth):
            out = self.llm(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=llm_mask,
                           use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                llm_input_ids: torch.Tensor | None = None, llm_attention_mask: torch.Tensor | None = None,
                option_spans: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                **_: Any) -> MTLLMOutput:
        """Encoder path (``input_ids``, ``attention_mask``: ``(N, Le)``, encoder tokens) or LLM path
        (``llm_input_ids``, ``llm_attention_mask``: ``(N, L)``, the LLM's own tokens).

        ``encoder_hidden_states`` ``(N, Le, E)``: precomputed frozen-encoder outputs for the encoder
        path (see :meth:`project`); everything after the encoder is unchanged.

        ``option_spans`` ``(N, K, 2)``: token spans ``[start, end)`` of K answer options in the input
        tokens, for multiple choice; then ``pooled`` is ``(N, K, D)`` and ``logits`` ``(N, K)``.
        """
        if llm_input_ids is not None:
            mask_NL = llm_attention_mask if llm_attention_mask is not None else torch.ones_like(llm_input_ids)
            hidden_NLD = self._run_llm(input_ids=llm_input_ids, attention_mask=mask_NL)
            pool_mask_NL = mask_NL.clone()
            bos = self.config.llm_bos_token_id
            if bos is not None:
                pool_mask_NL[:, 0] = pool_mask_NL[:, 0] * (llm_input_ids[:, 0] != bos)
            offset = 0
        else:
            if input_ids is None and encoder_hidden_states is None:
                raise ValueError("pass input_ids (encoder tokens) or llm_input_ids (the LLM's own tokens)")
            if attention_mask is not None:
                mask_in = attention_mask
            elif input_ids is not None:
                mask_in = torch.ones_like(input_ids)
            else:
                mask_in = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long,
                                     device=encoder_hidden_states.device)
            embeds_NLD, mask_NL = self.project(input_ids, mask_in, encoder_hidden_states=encoder_hidden_states)
            hidden_NLD = self._run_llm(inputs_embeds=embeds_NLD, attention_mask=mask_NL)
            pool_mask_NL = mask_NL.clone()
            offset = mask_NL.shape[1] - mask_in.shape[1]
            pool_mask_NL[:, :offset] = 0
        if option_spans is not None:
            pooled = span_mean_pool(hidden_NLD, option_spans + offset)
        else:
            pooled = self._pooler(hidden_NLD, pool_mask_NL)
        logits = None
        if self.head is not None:
            logits = self.head(pooled.to(self.head.weight.dtype))
            if option_spans is not None:
                logits = logits.squeeze(-1)
        return MTLLMOutput(last_hidden_state=hidden_NLD, pooled=pooled, attention_mask=mask_NL,
                           pool_mask=pool_mask_NL, logits=logits)

    #: What :meth:`encode` takes from sentence-transformers' ``encode`` (and MTEB's calls of it) beyond its own
    #: keywords, and ignores: none of them changes the embedding of this model.
    _ENCODE_IGNORED = ("prompt_name", "prompt", "task_name", "prompt_type", "task_metadata", "hf_split",
                       "hf_subset")

    def encode(self, texts: Sequence[str] | str, *, lang: str | None = None, batch_size: int = 32,
               route: str | None = None, normalize: bool = False, show_progress: bool = False,
               normalize_embeddings: bool | None = None, show_progress_bar: bool | None = None,
               convert_to_numpy: bool | None = None, convert_to_tensor: bool = False, device: Any = None,
               precision: str = "float32", output_value: str = "sentence_embedding", path: str | None = None,
               **kwargs: Any):
        """Pooled embeddings ``(N, D)`` of ``texts`` (in language ``lang``, a FLORES-200 code), a float32
        tensor on the CPU (one text: ``(D,)``).

        ``route`` defaults to ``encoder`` (the MT-LLM) when the model has an encoder, else ``llm`` (``path=`` is its
        old name, deprecated).
        Batches are formed from length-sorted texts and returned in the input order.

        It also takes sentence-transformers' keywords, so that the model drops into retrieval and MTEB-style
        code: ``normalize_embeddings`` (= ``normalize``), ``show_progress_bar`` (= ``show_progress``),
        ``convert_to_numpy=True`` (a NumPy array), ``convert_to_tensor=True`` (a tensor; wins over
        ``convert_to_numpy``), ``device`` (where the model runs: the model's device, or ``None``),
        ``precision="float32"`` and ``output_value="sentence_embedding"`` (the only ones there are here);
        ``prompt_name``, ``prompt``, ``task_name``, ``prompt_type`` (and MTEB's ``task_metadata``, ``hf_split``,
        ``hf_subset``) are accepted and ignored. Any other keyword is a ``TypeError``."""
        from mtllm.modeling.embed import embed_texts  # (c) cycle: mtllm.modeling.embed imports this module

        route = renamed_keyword(route, path, where="encode", name="route", old_name="path")
        unknown = sorted(set(kwargs) - set(self._ENCODE_IGNORED))
        if unknown:
            raise TypeError(f"encode() got unexpected keyword argument(s) {unknown}")
        if precision != "float32":
            raise ValueError(f"precision={precision!r}: this model's embeddings are float32 only")
        if output_value != "sentence_embedding":
            raise ValueError(f"output_value={output_value!r}: only 'sentence_embedding' (pooled vectors) is available")
        if device is not None and resolve_device(device) != module_device(self):
            raise ValueError(f"encode(device={device!r}) but the model is on {module_device(self)}: move the model "
                             f"(model.to(...)) or set MTLLM_DEVICE before loading it")
        single = isinstance(texts, str)
        result = embed_texts(self, [texts] if single else texts, lang=lang, route=route, batch_size=batch_size,
                             normalize=normalize if normalize_embeddings is None else normalize_embeddings,
                             show_progress=show_progress if show_progress_bar is None else show_progress_bar)
        if single:
            result = result[0]
        if convert_to_numpy and not convert_to_tensor:
            return result.numpy()
        return result

    def predict(self, texts: Sequence[str] | str, *, lang: str | Sequence[str] | None = None,
                pairs: Sequence[str] | str | None = None, options: Sequence[Sequence[str]] | None = None,
                batch_size: int = 32, return_probs: bool = False, show_progress: bool = False):
        """The task head's prediction for each of ``texts`` (in language ``lang``: one FLORES-200 code, or one
        per text), in input order: a label name (``config.label_names``) per text, or, for a multiple-choice
        head, the index of the chosen option among ``options`` (one list of answer options per text; ``texts``
        are then the passages and ``pairs`` the questions). ``pairs``: a second text per text (an NLI
        hypothesis), joined as :meth:`tokenize` joins pairs. With ``return_probs``, ``(labels, probs)``: probs
        ``(N, C)`` (``(N, K)`` over the options; a list of arrays when the number of options varies). One text
        (a string) gives one label (and one row of probabilities).

        Batches are length-sorted within each language (:func:`mtllm.modeling.predict.predict_texts`) and run
        on the model's device. No head, a ``pairs``/``options``/``lang`` list of the wrong length, an unknown
        language code and a text with nothing to read are clear errors before any model work."""
        from mtllm.modeling.predict import predict_texts  # (c) cycle: mtllm.modeling.predict imports MTLLMModel

        return predict_texts(self, texts, lang=lang, pairs=pairs, options=options, batch_size=batch_size,
                             return_probs=return_probs, show_progress=show_progress)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike, *, full: bool = False,
                        base_model_ids: Mapping[str, str] | None = None, for_hub: bool = False, **kwargs: Any) -> None:
        """Save config + up-projection (+ head) as safetensors and the LoRA adapter in PEFT's format;
        the base models are referenced by their source. ``full=True`` (or base models built from
        instances with no source) also saves the encoder and LLM (adapters not merged) and their
        tokenizers (when the model has them), so the directory loads with no other files.

        ``base_model_ids`` records hub ids instead of local paths: ``{"llm": "google/gemma-3-270m",
        "encoder": "intfloat/multilingual-e5-small"}`` (a key may also be a recorded path itself, e.g. an
        adapter of ``llm_adapters_to_merge``). ``for_hub=True`` prepares the folder for the hub (what
        :meth:`push_to_hub` uploads): a base model still recorded as a local path is a
        :class:`~mtllm.errors.ConfigError` naming it, since no one else could load it."""
        if self.adapters_merged and not full:
            raise ValueError("this model's LoRA adapter was merged into the LLM (merge_adapters), so saving only the "
                             "adapter would lose it: call save_pretrained(..., full=True) to save the merged LLM, or "
                             "save a copy loaded without merging")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = MTLLMConfig.from_dict(self.config.to_dict())
        needs_full = full or not _is_loadable_ref(config.llm_name_or_path) or (
            self.encoder is not None and not _is_loadable_ref(config.encoder_name_or_path))
        if needs_full:
            self.base_llm_unwrapped_save(out / "llm")
            if self.llm_tokenizer is not None:
                self.llm_tokenizer.save_pretrained(out / "llm")
            config.llm_name_or_path = "./llm"
            config.llm_adapters_to_merge = []
            if self.adapters_merged:
                config.lora = None  # the saved LLM already contains it
            if self.encoder is not None:
                self.encoder.save_pretrained(out / "encoder")
                if self.encoder_tokenizer is not None:
                    self.encoder_tokenizer.save_pretrained(out / "encoder")
                config.encoder_name_or_path = "./encoder"
        _record_hub_ids(config, base_model_ids or {}, for_hub=for_hub)
        config.save_pretrained(out)
        tensors = {}
        if self.projection is not None:
            tensors.update({f"projection.{k}": v for k, v in self.projection.state_dict().items()})
        if self.head is not None:
            tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        safetensors.torch.save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                                    str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        if _is_peft(self.llm):
            self.llm.save_pretrained(str(out / ADAPTER_DIR))
            # the adapter names its base as config.json does (PEFT writes the loaded folder's path), so a load
            # can tell an adapter of another base model from this one (_check_saved_folder)
            adapter_cfg = out / ADAPTER_DIR / "adapter_config.json"
            data = json.loads(adapter_cfg.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = config.llm_name_or_path
            adapter_cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def base_llm_unwrapped_save(self, path: Path) -> None:
        """Save the LLM's base weights (without the trainable LoRA) to ``path``."""
        if _is_peft(self.llm):
            with self.llm.disable_adapter():
                state = {k: v for k, v in self.base_llm.state_dict().items() if "lora_" not in k}
            state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
            fresh_cfg = self.base_llm.config
            clean = AutoModel.from_config(fresh_cfg)
            clean.load_state_dict(state, strict=True)
            clean.save_pretrained(path)
        else:
            self.base_llm.save_pretrained(path)

    def push_to_hub(self, repo_id: str, *, base_model_ids: Mapping[str, str] | None = None, full: bool = False,
                    commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, tags: list[str] | None = None, **_: Any) -> Any:
        """Upload the model to the hub repository ``repo_id``: what ``save_pretrained(..., for_hub=True)``
        writes (config, projection/head, LoRA adapter; with ``full=True`` the base models too), with the
        repository's model card (``tags`` plus ``mtllm``; ``base_model`` = the base models' hub ids).

        A base model recorded as a local path must be mapped to the hub id of the same weights,
        ``base_model_ids={"llm": "google/gemma-3-270m", "encoder": "intfloat/multilingual-e5-small"}``
        (or uploaded with ``full=True``); otherwise a :class:`~mtllm.errors.ConfigError` names it. The
        folder is written and checked before anything is sent. transformers' ``PushToHubMixin`` steps
        otherwise; returns the hub's commit info."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, full=full, base_model_ids=base_model_ids, for_hub=True)
            saved = read_json_file(Path(tmp) / "config.json", fix="save the model again")
            repo_id = hub.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
            card = hub.create_and_tag_model_card(repo_id, sorted({*(tags or []), "mtllm"}), token=token)
            base_models = _base_model_hub_ids(saved, base_model_ids or {})
            if base_models and getattr(card, "data", None) is not None:
                card.data.base_model = base_models
            card.save(os.path.join(tmp, "README.md"))
            return self._upload_modified_files(tmp, repo_id, files_timestamps={},
                                               commit_message=commit_message or "Upload MT-LLM", token=token,
                                               create_pr=create_pr, revision=revision,
                                               commit_description=commit_description)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, is_trainable: bool = False,
                        dtype: torch.dtype | None = None, load_in_4bit: bool = False,
                        encoder: nn.Module | None = None, llm: nn.Module | None = None,
                        encoder_tokenizer: Any = None, llm_tokenizer: Any = None,
                        attn_implementation: str | None = None, merge_adapters: bool = False,
                        device: str | torch.device | None = None, config: MTLLMConfig | None = None,
                        **_: Any) -> "MTLLMModel":
        """Load a model saved by :meth:`save_pretrained` (a local directory or a hub id). The saved base
        model references are used unless ``encoder``/``llm`` instances are passed; a mismatch between
        them and the saved sizes is a clear error. ``merge_adapters=True`` folds LoRA into the weights
        for faster inference (:meth:`merge_adapters`; not with ``is_trainable``). The model is put on
        ``device`` (:func:`mtllm.device.resolve_device`: ``$MTLLM_DEVICE``, else cuda, else mps, else cpu).

        ``transformers.AutoModel.from_pretrained(folder)`` comes here too (``import mtllm`` registers the
        model type), with ``config`` the folder's own config. A base model folder without tokenizer files
        loads without a tokenizer: token ids and ``encoder_hidden_states`` work, text input asks for
        ``encoder_tokenizer=`` / ``llm_tokenizer=``."""
        if merge_adapters and is_trainable:
            raise ValueError("merge_adapters=True is for inference; a trainable model keeps its LoRA adapter "
                             "separate (drop one of is_trainable / merge_adapters)")
        root = _mtllm_folder(pretrained_model_name_or_path)
        if config is None:
            config = MTLLMConfig.from_pretrained(root)  # mtllm's own config class: no code from the folder
        elif not isinstance(config, MTLLMConfig):
            raise ConfigError(f"config= must be an MTLLMConfig (the config of a saved MT-LLM), not a "
                              f"{type(config).__name__}")

        def ref(name: str | None) -> str | None:
            if name is not None and name.startswith("./"):
                return str(root / name[2:])
            return name

        _check_base_refs(root, [("encoder", config.encoder_name_or_path, ref(config.encoder_name_or_path))
                                if config.has_encoder and encoder is None else None,
                                ("LLM", config.llm_name_or_path,
                                 ref(config.llm_name_or_path)) if llm is None else None])
        _check_saved_folder(root, config, encoder_ref=ref(config.encoder_name_or_path)
                            if config.has_encoder and encoder is None else None,
                            llm_ref=ref(config.llm_name_or_path) if llm is None else None)
        enc = None
        if config.has_encoder:
            enc = load_encoder(encoder if encoder is not None else ref(config.encoder_name_or_path), dtype=dtype)
            if encoder_tokenizer is None:  # optional: a folder without tokenizer files loads (text input then asks)
                encoder_tokenizer = load_tokenizer(ref(config.encoder_name_or_path), optional=True, what="encoder")
            _check_size("encoder hidden size", config.encoder_hidden_size, _hidden_size(enc),
                        config.encoder_name_or_path)
            _check_type("encoder", config.to_dict().get("encoder_model_type"), getattr(enc.config, "model_type", None),
                        config.encoder_name_or_path)
            if config.to_dict().get("encoder_vocab_size") is not None and encoder_tokenizer is not None:
                _check_size("encoder tokenizer vocabulary", config.encoder_vocab_size, len(encoder_tokenizer),
                            config.encoder_name_or_path)
        base = load_llm(llm if llm is not None else ref(config.llm_name_or_path), dtype=dtype,
                        load_in_4bit=load_in_4bit, adapters_to_merge=config.llm_adapters_to_merge,
                        attn_implementation=attn_implementation)
        if llm_tokenizer is None:
            llm_tokenizer = load_tokenizer(ref(config.llm_name_or_path), optional=True, what="LLM")
        _check_size("LLM hidden size", config.llm_hidden_size, _hidden_size(base), config.llm_name_or_path)
        _check_type("LLM", config.to_dict().get("llm_model_type"), getattr(base.config, "model_type", None),
                    config.llm_name_or_path)
        if config.to_dict().get("llm_vocab_size") is not None:
            _check_size("LLM vocabulary", config.llm_vocab_size, base.get_input_embeddings().num_embeddings,
                        config.llm_name_or_path)
        if (root / ADAPTER_DIR).exists():
            from peft import PeftModel  # slow: peft (~0.2 s), only for a saved adapter

            base = PeftModel.from_pretrained(base, str(root / ADAPTER_DIR), is_trainable=is_trainable)
        model = cls(config, llm=base, encoder=enc, llm_tokenizer=llm_tokenizer, encoder_tokenizer=encoder_tokenizer)
        state = safetensors.torch.load_file(str(root / WEIGHTS_NAME))  # checked complete by _mtllm_folder
        model.to(device=module_device(base))
        if model.projection is not None:
            model.projection.load_state_dict({k[len("projection."):]: v for k, v in state.items()
                                              if k.startswith("projection.")})
            model.projection.to(dtype=_float_dtype(base))
        if model.head is not None:
            model.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
            model.head.to(dtype=_float_dtype(base))
        if not is_trainable:
            model.requires_grad_(False)
            model.eval()
        if merge_adapters:
            model.merge_adapters()
        return place(model, device)


# ---------------------------------------------------------------------- helpers
def _decoder_stack(llm: nn.Module) -> nn.Module:
    """The module of ``llm`` that holds its decoder layers (``layers``, an ``nn.ModuleList``) and the final
    ``norm``, the layout of the transformers decoder models (Llama, Gemma, Mistral, Qwen, ...)."""
    for module in llm.modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList) and isinstance(getattr(module, "norm", None),
                                                                                    nn.Module):
            return module
    raise ConfigError(f"{type(llm).__name__} has no decoder stack with `layers` and a final `norm`, so it cannot run "
                      f"its first k layers only: leave student_layers unset for this LLM")


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder layers of ``llm``, in order."""
    return _decoder_stack(llm).layers


@contextlib.contextmanager
def _first_layers(llm: nn.Module, k: int | None) -> Iterator[None]:
    """Cut ``llm``'s decoder stack to its first ``k`` layers and skip its final norm while open (``None``: no
    change). Public attributes only: the models' forward loops run over ``self.layers`` and end with
    ``self.norm``."""
    if k is None:
        yield
        return
    stack = _decoder_stack(llm)
    layers, norm = stack.layers, stack.norm
    stack.layers, stack.norm = nn.ModuleList(list(layers)[:k]), nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = layers, norm


def _add_lora(llm: nn.Module, lora: dict) -> nn.Module:
    from peft import get_peft_model  # slow: peft (~0.2 s), only when LoRA is added

    settings = LoraSettings(**lora)
    return get_peft_model(llm, settings.to_peft())


def _hidden_size(model: nn.Module) -> int:
    return _config_hidden_size(model.config, type(model).__name__)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def _source_name(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name_or_path", None) or None


def _require_source(source: Any, what: str) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = getattr(source, "name_or_path", None)
    if name:
        return name
    raise ValueError(f"a model instance was passed without a source path: pass {what}= as well")

