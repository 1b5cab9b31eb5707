"""Frozen-encoder outputs computed once, stored fp16 on disk and memory-mapped.

The encoder of an MT-LLM never trains, so every epoch that re-reads the same texts recomputes the
same last hidden states. :class:`EncoderCache` computes them once per text (length-sorted batches,
``torch.inference_mode``), stores all of them concatenated in one ``(total_tokens, E)`` fp16
``.npy`` with per-text offsets, and hands out padded batches ``(N, Le, E)`` + mask ``(N, Le)`` that
:meth:`mtllm.MTLLMModel.forward` takes as ``encoder_hidden_states=``.

Layout::

    <cache_dir>/encoder-<key>/hidden.npy    (total_tokens, E) float16, memory-mapped on use
    <cache_dir>/encoder-<key>/offsets.npy   (N + 1,) int64: text i is rows offsets[i]:offsets[i+1]
    <cache_dir>/encoder-<key>/meta.json     key, shapes, number of truncated texts

``key`` hashes the encoder's identity (config, tokenizer and a sample of its weights, the same
fingerprint the translation cache uses), how texts are marked for it (language style, prefix,
``lang``), ``max_seq_length`` and every text, so a different encoder, setting or data set gets
a new entry and a stale or broken one is rebuilt. Entries are written to a temporary folder and
renamed, so an interrupted build leaves nothing half-written behind.

Memory: the hidden states stay on disk; only the pages of the batches in use are read. The cached
states equal the uncached encoder's up to fp16 rounding (relative error ~1e-3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mtllm.data.multiple_choice import format_multiple_choice
from mtllm.device import module_device, to_device
from mtllm.fingerprints import cache_key, module_fingerprint
from mtllm.training.caches import ArrayCache
from mtllm.modeling.batching import run_batched

__all__ = ["EncoderCache", "encoder_input_texts"]

_FORMAT = 1


def encoder_input_texts(model: Any, examples: Sequence[Any]) -> list[str]:
    """The one string per task example that :func:`mtllm.data.collate.collate_examples` feeds the encoder
    path (text pairs joined with ``config.pair_separator``; multiple choice in its one-sequence
    layout), so an :class:`EncoderCache` over them matches that collate token for token."""
    out = []
    for e in examples:
        if e.options:
            text, _ = format_multiple_choice(e.texts[0], e.texts[1] if len(e.texts) > 1 else "", e.options)
        elif len(e.texts) > 1:
            text = e.texts[0] + model.config.pair_separator + e.texts[1]
        else:
            text = e.texts[0]
        out.append(text)
    return out


def _cache_key(model: Any, texts: Sequence[str], lang: str | None) -> str:

    cfg = model.config
    return cache_key([_FORMAT, module_fingerprint(model.encoder, model.encoder_tokenizer), cfg.encoder_lang_style,
                      cfg.encoder_text_prefix, lang, cfg.max_seq_length], texts)


class EncoderCache:
    """The frozen encoder's last hidden state of every text in ``texts``, computed once.

    ``texts`` are what :meth:`MTLLMModel.tokenize` takes (``lang`` as there); item ``i`` of every
    batch is ``texts[i]``. ``built`` says whether this instance computed the states (``False``: an
    existing entry was reused).
    """

    def __init__(self, model: Any, texts: Sequence[str], *, cache_dir: str | Path, lang: str | None = None,
                 batch_size: int = 32, show_progress: bool = False) -> None:
        if model.encoder is None:
            raise ValueError("EncoderCache needs a model with an encoder (this one is LLM only)")
        self.texts = list(texts)
        if not self.texts:
            raise ValueError("EncoderCache got no texts")
        self.lang = lang
        self.key = _cache_key(model, self.texts, lang)
        self._cache = ArrayCache(cache_dir, "encoder", self.key)
        self.root = self._cache.root
        self.built = False
        if not self._load():
            self._build(model, batch_size, show_progress)
            self.built = True
            if not self._load():  # pragma: no cover - the entry was just written
                raise RuntimeError(f"{self.root}: could not read back the encoder cache just written")

    # ------------------------------------------------------------------ storage
    def _load(self) -> bool:
        n = len(self.texts)

        def consistent(meta: Any, arrays: Any) -> bool:
            offsets = arrays["offsets"]
            return meta.get("n_texts") == n and len(offsets) == n + 1 and int(offsets[-1]) == arrays["hidden"].shape[0]

        hit = self._cache.load(["hidden", "offsets"], check=consistent)
        if hit is None:
            return False
        arrays, meta = hit
        self.hidden, self.offsets = arrays["hidden"], np.asarray(arrays["offsets"])
        self.lengths = np.diff(self.offsets)
        self.n_truncated = int(meta.get("n_truncated", 0))
        self.hidden_size = int(self.hidden.shape[1])
        return True

    @torch.inference_mode()
    def _build(self, model: Any, batch_size: int, show_progress: bool) -> None:
        device = module_device(model.encoder)
        # token counts first (cheap), so the array can be allocated on disk and filled batch by batch
        lengths = np.zeros(len(self.texts), dtype=np.int64)
        for start in range(0, len(self.texts), 256):
            mask = model.tokenize(self.texts[start:start + 256], lang=self.lang)["attention_mask"]
            lengths[start:start + len(mask)] = mask.sum(1).numpy()
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        hidden_size = model.config.encoder_hidden_size
        meta = {"format": _FORMAT, "n_texts": len(self.texts), "dtype": "float16", "lang": self.lang,
                "encoder": model.config.encoder_name_or_path, "max_seq_length": model.config.max_seq_length}
        with self._cache.writing(meta) as tmp:
            hidden = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=np.float16,
                                               shape=(int(offsets[-1]), hidden_size))

            n_truncated = 0

            def step(idx: list[int]) -> None:  # writes its batch's rows straight into the memory-mapped array
                nonlocal n_truncated
                batch = model.tokenize([self.texts[i] for i in idx], lang=self.lang)
                n_truncated += batch["n_truncated"]
                inputs = to_device(batch, device)
                out = model.encoder(input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"]).last_hidden_state
                out = out.float().cpu().numpy().astype(np.float16)
                for j, i in enumerate(idx):
                    hidden[offsets[i]:offsets[i + 1]] = out[j, :lengths[i]]

            run_batched(range(len(self.texts)), step, batch_size=batch_size, lengths=lengths,
                                    progress=show_progress, desc="encoder cache", unit="text")
            hidden.flush()
            np.save(tmp / "offsets.npy", offsets)
            meta["n_truncated"] = int(n_truncated)

    # ------------------------------------------------------------------ batches
    def __len__(self) -> int:
        return len(self.texts)

    @property
    def nbytes(self) -> int:
        """Size of the stored hidden states in bytes."""
        return int(self.hidden.shape[0] * self.hidden.shape[1] * 2)

    def hidden_states(self, indices: Sequence[int], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, L, E)`` fp16 hidden states of ``texts[indices]``, zero-padded on the right to the
        longest of them (or to ``length``), and their ``(N, L)`` attention mask."""
        indices = [int(i) for i in indices]
        lens = self.lengths[indices]
        L = int(lens.max()) if length is None else int(length)
        if lens.max() > L:
            raise ValueError(f"length {L} is shorter than cached texts of {int(lens.max())} tokens")
        out = np.zeros((len(indices), L, self.hidden_size), dtype=np.float16)
        mask = torch.zeros((len(indices), L), dtype=torch.long)
        for j, i in enumerate(indices):
            n = int(lens[j])
            out[j, :n] = self.hidden[self.offsets[i]:self.offsets[i + 1]]
            mask[j, :n] = 1
        return torch.from_numpy(out), mask

    def collate(self, indices: Sequence[int]) -> dict[str, Any]:
        """A batch for ``MTLLMModel.forward``: ``encoder_hidden_states`` ``(N, L, E)`` and
        ``attention_mask`` ``(N, L)`` (no tokenisation, no encoder)."""
        hidden, mask = self.hidden_states(indices)
        return {"encoder_hidden_states": hidden, "attention_mask": mask}

    def states_for(self, indices: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states matching an already tokenised batch (e.g. from ``collate_examples``): the
        cached token counts must equal the mask's, else the cache was built from other inputs."""
        lens = attention_mask.sum(1).tolist()
        cached = [int(self.lengths[int(i)]) for i in indices]
        if lens != cached:
            raise ValueError(f"encoder cache {self.root} does not match this batch (cached token counts {cached[:8]}, "
                             f"tokenised {lens[:8]}): was it built from other texts or settings?")
        hidden, _ = self.hidden_states(indices, length=attention_mask.shape[1])
        return hidden
