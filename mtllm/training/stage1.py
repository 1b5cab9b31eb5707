"""Stage 1: self-distillation on unlabelled English text (arXiv 2406.12739, section 3).

Teacher: the LLM with its adapters disabled, on its own tokens, no gradient. Student: encoder ->
up-projection -> LLM + LoRA on the encoder's tokens. Loss: MSE between the two mean-pooled last
hidden states. The teacher is frozen, so its targets are computed once per text and reused.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from mtllm.data.texts import load_stage1_texts
from mtllm.modeling.model import MTLLMModel
from mtllm.settings import EXISTING_DIR, NON_EMPTY, TEXT_SOURCE, ModelSettings, at_least, check_settings, each
from mtllm.training.caches import ArrayCache, cache_key
from mtllm.training.loop import TrainingArgs, train
from mtllm.training.objectives import stage1_loss, target_stats

logger = logging.getLogger(__name__)

#: What the projection's rms_match initialisation measured (written once, read back on resume).
CALIBRATION_FILE = "stage1_calibration.json"


@dataclass
class Stage1Settings:
    """Stage-1 data and loss."""

    data: list[str] = field(default_factory=lambda: ["fineweb"], metadata={"help": "Text files/folders, 'fineweb' (hub, streamed), or task:NAME/LANG/SPLIT.", "check": (NON_EMPTY, each(TEXT_SOURCE))})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root for task:NAME/LANG/SPLIT sources (else $MTLLM_DATA_DIR, else the hub).", "check": EXISTING_DIR})
    text_field: str = field(default="text", metadata={"help": "Column/field with the text in csv/tsv/json/jsonl/parquet.", "check": NON_EMPTY})
    max_texts: int | None = field(default=None, metadata={"help": "Use at most this many text chunks.", "check": at_least(1)})
    target_norm: Literal["standardize", "none"] = field(default="standardize", metadata={"help": "'standardize' (per-dimension z-score of teacher targets, so a few outlier dimensions do not dominate the MSE) or 'none' (the paper's raw MSE)."})
    projection_init: Literal["rms_match", "default"] = field(default="rms_match", metadata={"help": "'rms_match' (scale the up-projection so its outputs have the RMS of the LLM's own input embeddings) or 'default'."})
    teacher_batch_size: int = field(default=32, metadata={"help": "Batch size for computing teacher targets.", "check": at_least(1)})
    save_initial: bool = field(default=False, metadata={"help": "Also save the model before training (after projection init) to output_dir/initial, e.g. for a before/after retrieval probe."})
    cache_encoder_outputs: bool = field(default=False, metadata={"help": "Compute the frozen encoder's outputs once per text and reuse them every epoch (fp16, memory-mapped under output_dir/cache); worth it with more than one epoch."})

    def __post_init__(self) -> None:
        check_settings(self)


def _fits(model: MTLLMModel, max_length: int):
    enc_tok, llm_tok = model.encoder_tokenizer, model.llm_tokenizer
    prefix = model.encoder_prefix

    def fits(text: str) -> bool:
        n_enc = len(enc_tok(prefix + text, add_special_tokens=True)["input_ids"])
        n_llm = len(llm_tok(text, add_special_tokens=True)["input_ids"]) + 1
        return n_enc <= max_length and n_llm <= max_length

    return fits


def _targets_key(model: MTLLMModel, texts: Sequence[str]) -> str:
    cfg = model.config
    return cache_key([cfg.llm_name_or_path, cfg.llm_adapters_to_merge, cfg.bidirectional, cfg.pooling,
                      cfg.max_seq_length, str(model.base_llm.dtype)], texts)


@torch.no_grad()
def teacher_targets(model: MTLLMModel, texts: Sequence[str], *, batch_size: int = 32,
                    cache_dir: str | Path | None = None, show_progress: bool = True) -> torch.Tensor:
    """Pooled last hidden states ``(N, D)`` of the LLM, adapters disabled, on its own tokens.

    Cached (float32, :class:`~mtllm.training.caches.ArrayCache` ``teacher-<key>``) under ``cache_dir``,
    keyed by a hash of the LLM and the texts, so reruns and further epochs never recompute them."""
    cache = ArrayCache(cache_dir, "teacher", _targets_key(model, texts)) if cache_dir is not None else None
    if cache is not None and (hit := cache.load(["targets"], mmap=False, rows=len(texts))) is not None:
        return torch.from_numpy(hit[0]["targets"])
    with model.adapters_disabled():
        targets = model.encode(texts, path="llm", batch_size=batch_size, show_progress=show_progress)
    if cache is not None:
        cache.save({"targets": targets.float().numpy()}, {"n_texts": len(texts), "llm": model.config.llm_name_or_path})
    return targets


def run_stage1(model_settings: ModelSettings, stage1: Stage1Settings, args: TrainingArgs, *,
               model: MTLLMModel | None = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Self-distil ``model`` (built from ``model_settings`` unless given) on ``stage1.data``.

    Saves the final model to ``args.output_dir/final`` and returns a summary with the loss curve.
    """
    from mtllm._io import atomic_path, atomic_write_json
    from mtllm.training.loop import make_accelerator, set_seed, start_run

    resume_from = start_run(args, "stage1")  # before any work: the output folder may be refused
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    model = model or model_settings.build()
    model.to(accelerator.device)
    fits = _fits(model, model.config.max_seq_length)
    if texts is None:
        texts = load_stage1_texts(stage1.data, fits=fits, max_texts=stage1.max_texts, text_field=stage1.text_field,
                                  data_dir=stage1.data_dir)
    texts = list(texts)
    # texts with no content token (only characters the tokenizers drop: zero-width, control, ...) are skipped
    # like empty ones: each would be the same input on both paths
    dropped = set(model.contentless(texts, path="encoder")) | set(model.contentless(texts, path="llm"))
    if dropped:
        texts = [t for i, t in enumerate(texts) if i not in dropped]
        if not texts:
            from mtllm.errors import DataError

            raise DataError(f"no text in {stage1.data} has a content token (all are empty or made only of characters "
                            f"the tokenizers drop, such as zero-width or control characters)")
        if accelerator.is_main_process:
            print(f"[stage1] skipped {len(dropped)} text chunk(s) with no content token (only characters the "
                  f"tokenizers drop, such as zero-width or control characters), as empty ones are", flush=True)
    out = Path(args.output_dir)
    if accelerator.is_main_process:
        print(f"[stage1] {len(texts)} text chunks from {stage1.data}", flush=True)
    with accelerator.main_process_first():
        targets_ND = teacher_targets(model, texts, batch_size=stage1.teacher_batch_size, cache_dir=out / "cache",
                                     show_progress=accelerator.is_main_process and args.progress)
    stats = target_stats(targets_ND, standardize=stage1.target_norm == "standardize")

    calibration = None
    calibration_file = out / CALIBRATION_FILE
    if stage1.projection_init == "rms_match" and resume_from is None:  # else the checkpoint holds the projection
        calibration = model.calibrate_projection(texts[:256])
        if accelerator.is_main_process:
            atomic_write_json(calibration_file, calibration)  # so a resumed run reports it too
            print(f"[stage1] projection RMS {calibration['rms_before']:.3g} -> {calibration['rms_after']:.3g} "
                  f"(LLM input embeddings: {calibration['target_rms']:.3g})", flush=True)

    elif stage1.projection_init == "rms_match" and calibration_file.exists():
        calibration = json.loads(calibration_file.read_text())
    if stage1.save_initial and accelerator.is_main_process and not (out / "initial").exists():
        with atomic_path(out / "initial") as tmp:
            model.save_pretrained(tmp)
    lengths = [len(t) for t in texts]
    n_truncated = {"n": 0}
    enc_lang = "eng_Latn" if model.config.encoder_lang_style == "nllb" else None
    enc_cache = None
    if stage1.cache_encoder_outputs:
        from mtllm.training.encoder_cache import EncoderCache

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

    loss_fn = functools.partial(stage1_loss, stats=stats)
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projection.")]},
              {"params": list(model.projection.parameters()), "lr": args.projection_lr or args.learning_rate}]
    groups = [g for g in groups if g["params"]]
    result = train(model=model, param_groups=groups, n_examples=len(texts), collate=collate, loss_fn=loss_fn,
                   args=args, stage="stage1", lengths=lengths, accelerator=accelerator, resume_from=resume_from,
                   save_final=lambda m, d: m.save_pretrained(d),
                   config_to_save={"model": model_settings.__dict__, "stage1": stage1.__dict__, "training": args.__dict__})
    if n_truncated["n"] and accelerator.is_main_process:
        print(f"[stage1] {n_truncated['n']} texts were longer than max_seq_length and truncated", flush=True)
    summary = {"final_dir": str(result.final_dir), "steps": result.steps, "seconds": round(result.seconds, 2),
               "n_texts": len(texts), "calibration": calibration,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    if accelerator.is_main_process:
        atomic_write_json(out / "stage1_summary.json", summary, indent=1)
    return summary
