"""Stage 1: self-distillation on unlabelled English text (arXiv 2406.12739, section 3).

Teacher: the LLM with its adapters disabled, on its own tokens, no gradient. Student: encoder ->
up-projection -> LLM + LoRA on the encoder's tokens. Loss: MSE between the two mean-pooled last
hidden states. The teacher is frozen, so its targets are computed once per text and reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import LoraSettings
from ..data import load_stage1_texts
from ..modeling import MTLLMModel
from .loop import TrainingArgs, train

logger = logging.getLogger(__name__)


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` -> the torch dtype (a clear error otherwise)."""
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, not {name!r}") from None


@dataclass
class ModelSettings:
    """Which models to stack and how (shared by every stage)."""

    encoder: str = field(default="pocket:e5-small", metadata={"help": "Encoder: hub id, local dir, pocket:NAME or tiny:NAME."})
    llm: str = field(default="pocket:gemma3-270m", metadata={"help": "Decoder LLM: hub id, local dir, pocket:NAME or tiny:NAME."})
    llm_adapters_to_merge: list[str] = field(default_factory=list, metadata={"help": "PEFT adapters merged into the LLM first (LLM2Vec)."})
    bidirectional: bool = field(default=False, metadata={"help": "Non-causal LLM attention (LLM2Vec)."})
    pooling: str = field(default="mean", metadata={"help": "mean, eos or cls."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: Any = field(default="all-linear", metadata={"help": "LoRA target modules."})
    load_in_4bit: bool = field(default=False, metadata={"help": "NF4 LLM weights (CUDA + bitsandbytes only)."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    max_seq_length: int = field(default=512, metadata={"help": "Truncation length of both tokenisations."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager or sdpa (default: transformers' choice)."})

    def lora(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target_modules=self.lora_target_modules)

    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    def build(self) -> MTLLMModel:
        return MTLLMModel.from_encoder_and_llm(
            self.encoder, self.llm, bidirectional=self.bidirectional, lora=self.lora(), pooling=self.pooling,
            load_in_4bit=self.load_in_4bit, dtype=self.torch_dtype(), llm_adapters_to_merge=self.llm_adapters_to_merge,
            max_seq_length=self.max_seq_length, attn_implementation=self.attn_implementation)


@dataclass
class Stage1Settings:
    """Stage-1 data and loss."""

    data: list[str] = field(default_factory=lambda: ["fineweb"], metadata={"help": "Text files/folders, 'fineweb' (hub, streamed), or task:NAME/LANG/SPLIT."})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root for task:NAME/LANG/SPLIT sources (else $MTLLM_DATA_DIR, else the hub)."})
    text_field: str = field(default="text", metadata={"help": "Column/field with the text in csv/tsv/jsonl/parquet."})
    max_texts: int | None = field(default=None, metadata={"help": "Use at most this many text chunks."})
    target_norm: str = field(default="standardize", metadata={"help": "'standardize' (per-dimension z-score of teacher targets, so a few outlier dimensions do not dominate the MSE) or 'none' (the paper's raw MSE)."})
    projection_init: str = field(default="rms_match", metadata={"help": "'rms_match' (scale the up-projection so its outputs have the RMS of the LLM's own input embeddings) or 'default'."})
    teacher_batch_size: int = field(default=32, metadata={"help": "Batch size for computing teacher targets."})
    save_initial: bool = field(default=False, metadata={"help": "Also save the model before training (after projection init) to output_dir/initial, e.g. for a before/after retrieval probe."})
    cache_encoder_outputs: bool = field(default=False, metadata={"help": "Compute the frozen encoder's outputs once per text and reuse them every epoch (fp16, memory-mapped under output_dir/cache); worth it with more than one epoch."})


def _fits(model: MTLLMModel, max_length: int):
    enc_tok, llm_tok = model.encoder_tokenizer, model.llm_tokenizer
    prefix = model.config.encoder_text_prefix if model.config.encoder_lang_style == "prefix" else ""

    def fits(text: str) -> bool:
        n_enc = len(enc_tok(prefix + text, add_special_tokens=True)["input_ids"])
        n_llm = len(llm_tok(text, add_special_tokens=True)["input_ids"]) + 1
        return n_enc <= max_length and n_llm <= max_length

    return fits


def _targets_key(model: MTLLMModel, texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    cfg = model.config
    digest.update(json.dumps([cfg.llm_name_or_path, cfg.llm_adapters_to_merge, cfg.bidirectional, cfg.pooling,
                              cfg.max_seq_length, str(model.base_llm.dtype)]).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@torch.no_grad()
def teacher_targets(model: MTLLMModel, texts: Sequence[str], *, batch_size: int = 32,
                    cache_dir: str | Path | None = None, show_progress: bool = True) -> torch.Tensor:
    """Pooled last hidden states ``(N, D)`` of the LLM, adapters disabled, on its own tokens.

    Cached as safetensors under ``cache_dir`` keyed by a hash of the LLM and the texts, so reruns
    and further epochs never recompute them."""
    from safetensors.torch import load_file, save_file

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"teacher-{_targets_key(model, texts)}.safetensors"
        if path.exists():
            return load_file(str(path))["targets"]
    with model.adapters_disabled():
        targets = model.encode(texts, path="llm", batch_size=batch_size, show_progress=show_progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"targets": targets.contiguous()}, str(tmp))
        tmp.replace(path)
    return targets


def run_stage1(model_settings: ModelSettings, stage1: Stage1Settings, args: TrainingArgs, *,
               model: MTLLMModel | None = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Self-distil ``model`` (built from ``model_settings`` unless given) on ``stage1.data``.

    Saves the final model to ``args.output_dir/final`` and returns a summary with the loss curve.
    """
    from .loop import make_accelerator, set_seed

    accelerator = make_accelerator(args)
    set_seed(args.seed)
    model = model or model_settings.build()
    model.to(accelerator.device)
    fits = _fits(model, model.config.max_seq_length)
    if texts is None:
        texts = load_stage1_texts(stage1.data, fits=fits, max_texts=stage1.max_texts, text_field=stage1.text_field,
                                  data_dir=stage1.data_dir)
    texts = list(texts)
    out = Path(args.output_dir)
    if accelerator.is_main_process:
        print(f"[stage1] {len(texts)} text chunks from {stage1.data}", flush=True)
    with accelerator.main_process_first():
        targets_ND = teacher_targets(model, texts, batch_size=stage1.teacher_batch_size, cache_dir=out / "cache",
                                     show_progress=accelerator.is_main_process and args.progress)
    mean_D = targets_ND.mean(0)
    std_D = targets_ND.std(0).clamp_min(1e-6) if stage1.target_norm == "standardize" else torch.ones_like(mean_D)
    if stage1.target_norm not in ("standardize", "none"):
        raise ValueError(f"target_norm must be 'standardize' or 'none', not {stage1.target_norm!r}")
    total_var = targets_ND.var(0).sum().clamp_min(1e-12)

    calibration = None
    if stage1.projection_init == "rms_match" and not args.resume:
        calibration = model.calibrate_projection(texts[:256])
        if accelerator.is_main_process:
            print(f"[stage1] projection RMS {calibration['rms_before']:.3g} -> {calibration['rms_after']:.3g} "
                  f"(LLM input embeddings: {calibration['target_rms']:.3g})", flush=True)
    elif stage1.projection_init not in ("rms_match", "default"):
        raise ValueError(f"projection_init must be 'rms_match' or 'default', not {stage1.projection_init!r}")

    if stage1.save_initial and accelerator.is_main_process and not (out / "initial").exists():
        model.save_pretrained(out / "initial")
    lengths = [len(t) for t in texts]
    n_truncated = {"n": 0}
    enc_lang = "eng_Latn" if model.config.encoder_lang_style == "nllb" else None
    enc_cache = None
    if stage1.cache_encoder_outputs:
        from .encoder_cache import EncoderCache

        with accelerator.main_process_first():
            enc_cache = EncoderCache(model, texts, lang=enc_lang, cache_dir=out / "cache",
                                     batch_size=stage1.teacher_batch_size,
                                     show_progress=accelerator.is_main_process and args.progress)
        n_truncated["n"] += enc_cache.n_truncated

    def collate(indices: list[int]) -> dict[str, Any]:
        if enc_cache is not None:
            return {**enc_cache.collate(indices), "targets": targets_ND[indices]}
        batch = model.tokenize([texts[i] for i in indices], lang=enc_lang)
        n_truncated["n"] += batch["n_truncated"]
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "targets": targets_ND[indices]}

    mean_dev, std_dev = mean_D.to(accelerator.device), std_D.to(accelerator.device)

    def loss_fn(m: nn.Module, batch: dict[str, Any]):
        pooled_ND = m(batch.get("input_ids"), batch["attention_mask"],
                      encoder_hidden_states=batch.get("encoder_hidden_states")).pooled.float()
        target_ND = batch["targets"].float()
        z_student = (pooled_ND - mean_dev) / std_dev
        z_target = (target_ND - mean_dev) / std_dev
        loss = nn.functional.mse_loss(z_student, z_target)
        with torch.no_grad():
            sq = (pooled_ND - target_ND).pow(2).sum(-1).mean()
            metrics = {"loss": loss.item(), "mse": (sq / pooled_ND.shape[-1]).item(),
                       "fvu": (sq / total_var.to(sq.device)).item()}
        return loss, metrics

    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projection.")]},
              {"params": list(model.projection.parameters()), "lr": args.projection_lr or args.learning_rate}]
    groups = [g for g in groups if g["params"]]
    result = train(model=model, param_groups=groups, n_examples=len(texts), collate=collate, loss_fn=loss_fn,
                   args=args, stage="stage1", lengths=lengths, accelerator=accelerator,
                   save_final=lambda m, d: m.save_pretrained(d),
                   config_to_save={"model": model_settings.__dict__, "stage1": stage1.__dict__, "training": args.__dict__})
    if n_truncated["n"] and accelerator.is_main_process:
        print(f"[stage1] {n_truncated['n']} texts were longer than max_seq_length and truncated", flush=True)
    summary = {"final_dir": str(result.final_dir), "steps": result.steps, "seconds": round(result.seconds, 2),
               "n_texts": len(texts), "calibration": calibration,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    if accelerator.is_main_process:
        (out / "stage1_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
