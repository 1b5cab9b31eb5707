"""Stage 1: self-distillation on unlabelled English text (arXiv 2406.12739, section 3).

Teacher: the LLM with its adapters disabled, on its own tokens, no gradient. Student: encoder ->
up-projection -> LLM + LoRA on the encoder's tokens. Loss (``stage1_objective``; not ``objective``, which is
distillation's key): the paper's MSE between the
two mean-pooled last hidden states (``sequence``), and/or the word-span MSE (``span``): both tokenisers
see the same text, so character offsets align their tokens into words (:mod:`mtllm.data.spans`), and
each word's mean student state is fitted to the teacher's mean state over its own tokens of that word --
about ten targets per sentence instead of one. The teacher is frozen, so its targets (pooled, and per
word) are computed once per text, in one pass, and cached.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from mtllm._io import atomic_path, atomic_write_json
from mtllm.data.spans import align_units
from mtllm.device import module_device, to_device
from mtllm.errors import DataError
from mtllm.modeling.batching import run_batched
from mtllm.modeling.pooling import unit_mean_pool
from mtllm.tasks.texts import load_stage1_texts
from mtllm.modeling.model import MTLLMModel
from mtllm.settings import EXISTING_DIR, NON_EMPTY, TEXT_SOURCE, ModelSettings, at_least, check_settings, each
from mtllm.training.caches import ArrayCache, cache_key
from mtllm.training.encoder_cache import EncoderCache
from mtllm.training.loop import TrainingArgs, make_accelerator, set_seed, start_run, train
from mtllm.modeling.objectives import TargetStats, stage1_loss, target_stats

logger = logging.getLogger(__name__)

#: What the projection's rms_match initialisation measured (written once, read back on resume).
CALIBRATION_FILE = "stage1_calibration.json"


@dataclass
class Stage1Settings:
    """Stage-1 data and loss."""

    data: list[str] = field(default_factory=lambda: ["fineweb"],
                            metadata={"help": "Text files/folders, data:PATH (inside data_dir, e.g. "
                                              "data:english-wordnet/texts.txt), 'fineweb' (hub, streamed), or "
                                              "task:NAME/LANG/SPLIT.", "check": (NON_EMPTY, each(TEXT_SOURCE))})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root for task:NAME/LANG/SPLIT sources "
                                                                 "(else $MTLLM_DATA_DIR, else the hub).",
                                                         "check": EXISTING_DIR})
    text_field: str = field(default="text", metadata={"help": "Column/field with the text in "
                                                              "csv/tsv/json/jsonl/parquet.", "check": NON_EMPTY})
    max_texts: int | None = field(default=None,
                                  metadata={"help": "Use at most this many text chunks.", "check": at_least(1)})
    target_norm: Literal["standardize", "none"] = field(
        default="standardize", metadata={"help": "'standardize' (per-dimension z-score of teacher targets, so a few "
                                                 "outlier dimensions do not dominate the MSE) or 'none' (the paper's "
                                                 "raw MSE)."})
    projection_init: Literal["rms_match", "default"] = field(
        default="rms_match", metadata={"help": "'rms_match' (scale the up-projection so its outputs have the RMS of "
                                               "the LLM's own input embeddings) or 'default'."})
    teacher_batch_size: int = field(default=32,
                                    metadata={"help": "Batch size for computing teacher targets.",
                                              "check": at_least(1)})
    save_initial: bool = field(default=False, metadata={"help": "Also save the model before training (after projection "
                                                                "init) to output_dir/initial, e.g. for a before/after "
                                                                "retrieval probe."})
    cache_encoder_outputs: bool = field(default=False, metadata={"help": "Compute the frozen encoder's outputs once "
                                                                         "per text and reuse them every epoch (fp16, "
                                                                         "memory-mapped under output_dir/cache); worth "
                                                                         "it with more than one epoch."})
    stage1_objective: Literal["sequence", "span", "sequence+span"] = field(
        default="sequence", metadata={"help": "'sequence' (the paper: MSE of the mean-pooled states), 'span' (MSE per "
                                              "word: the mean of the student's states over the encoder tokens of a "
                                              "word against the teacher's over its own tokens of the same word; ~10-20 "
                                              "targets per sentence instead of one) or 'sequence+span' (their sum, the "
                                              "span term weighted by span_weight)."})
    span_weight: float = field(default=1.0, metadata={"help": "Weight of the span term in stage1_objective "
                                                              "'sequence+span'.", "check": at_least(0.0)})

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


@dataclass(frozen=True)
class SpanAlignment:
    """Per text, the unit (word) of every LLM token and every encoder token (:func:`mtllm.data.spans.align_units`),
    as :meth:`MTLLMModel.tokenize` lays the tokens out (``<bos>``, prefixes and special tokens get -1)."""

    llm_units: list[list[int]]
    encoder_units: list[list[int]]
    n_units: list[int]

    def first_rows(self) -> np.ndarray:
        """``(N + 1,)``: where each text's units start in the flat ``(sum(n_units), D)`` span targets."""
        return np.concatenate([[0], np.cumsum(self.n_units)]).astype(np.int64)

    def batch_units(self, indices: Sequence[int], side: str, length: int) -> tuple[torch.Tensor, list[int]]:
        """The units of texts ``indices`` on ``side`` (``"llm"`` or ``"encoder"``) as ``(N, length)`` indices
        numbered across the batch (-1: padding, special tokens, no unit), and each text's number of units."""
        rows = self.llm_units if side == "llm" else self.encoder_units
        counts = [self.n_units[i] for i in indices]
        out = torch.full((len(indices), length), -1, dtype=torch.long)
        first = 0
        for k, i in enumerate(indices):
            units = torch.tensor(rows[i][:length], dtype=torch.long)
            out[k, :len(units)] = torch.where(units >= 0, units + first, units)
            first += counts[k]
        return out, counts


def align_spans(model: MTLLMModel, texts: Sequence[str], *, lang: str | None = None,
                batch_size: int = 256) -> SpanAlignment:
    """Character-offset alignment of the LLM's and the encoder's tokens of each text (fast tokenizers)."""
    shift = len(model.encoder_prefix)
    llm_units, enc_units, n_units = [], [], []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        llm = model.tokenize(chunk, path="llm", return_offsets=True)
        enc = model.tokenize(chunk, path="encoder", lang=lang, return_offsets=True)
        for text, off_l, off_e in zip(chunk, llm["offset_mapping"], enc["offset_mapping"]):
            units_l, units_e, n = align_units(text, off_l, off_e, shift_b=shift)
            llm_units.append(units_l)
            enc_units.append(units_e)
            n_units.append(n)
    return SpanAlignment(llm_units, enc_units, n_units)


@torch.no_grad()
def teacher_span_targets(model: MTLLMModel, texts: Sequence[str], alignment: SpanAlignment, *, batch_size: int = 32,
                         cache_dir: str | Path | None = None, show_progress: bool = True) -> np.ndarray:
    """Per text and word, the mean of the LLM's last hidden states (adapters disabled) over its own tokens of
    that word: ``(sum(n_units), D)`` float16, the rows of text ``i`` starting at ``cumsum(n_units)[i - 1]``.

    Computed once and cached (``teacher_spans-<key>``, memory-mapped float16 under ``cache_dir``): about
    ``2 * D`` bytes per word (1.3 kB for Gemma 3 270M). The same forward pass also gives the pooled targets of
    :func:`teacher_targets`; they are written to its cache when it has none, so stage 1 runs the teacher once."""
    total = int(sum(alignment.n_units))
    cache = ArrayCache(cache_dir, "teacher_spans", _targets_key(model, texts)) if cache_dir is not None else None
    if cache is not None and (hit := cache.load(["spans"], mmap=True, rows=total)) is not None:
        return hit[0]["spans"]
    device = module_device(model)
    index = list(range(len(texts)))
    pooled_cache = ArrayCache(cache_dir, "teacher", _targets_key(model, texts)) if cache_dir is not None else None

    def step(batch_idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = model.tokenize([texts[i] for i in batch_idx], path="llm")
        units_NL, counts = alignment.batch_units(batch_idx, "llm", batch["input_ids"].shape[1])
        inputs = to_device({"llm_input_ids": batch["input_ids"], "llm_attention_mask": batch["attention_mask"]}, device)
        out = model(**inputs)
        spans_UD = unit_mean_pool(out.last_hidden_state, units_NL, sum(counts)).to(torch.float16).cpu()
        return list(zip(out.pooled.float().cpu(), torch.split(spans_UD, counts)))

    model_was_training = model.training
    model.eval()
    with model.adapters_disabled():
        parts = run_batched(index, step, batch_size=batch_size, lengths=[len(t) for t in texts],
                            progress=show_progress, desc="teacher spans", unit="text")
    model.train(model_was_training)
    spans = (torch.cat([p[1] for p in parts]) if parts
             else torch.empty(0, model.config.llm_hidden_size, dtype=torch.float16)).numpy()
    if pooled_cache is not None and parts and pooled_cache.load(["targets"], mmap=False, rows=len(texts)) is None:
        pooled_cache.save({"targets": torch.stack([p[0] for p in parts]).numpy()},
                          {"n_texts": len(texts), "llm": model.config.llm_name_or_path})
    if cache is not None:
        cache.save({"spans": spans}, {"n_texts": len(texts), "llm": model.config.llm_name_or_path})
        hit = cache.load(["spans"], mmap=True, rows=total)
        if hit is not None:
            return hit[0]["spans"]
    return spans


def span_target_stats(spans_UD: np.ndarray, *, standardize: bool = True, max_rows: int = 200_000) -> TargetStats:
    """:func:`~mtllm.modeling.objectives.target_stats` of the span targets, on an evenly strided sample of
    at most ``max_rows`` rows (the full set can be millions of words; the statistics settle long before)."""
    step = max(1, -(-spans_UD.shape[0] // max_rows))
    return target_stats(torch.from_numpy(np.asarray(spans_UD[::step], dtype=np.float32)), standardize=standardize)


def run_stage1(model_settings: ModelSettings, stage1: Stage1Settings, args: TrainingArgs, *,
               model: MTLLMModel | None = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Self-distil ``model`` (built from ``model_settings`` unless given) on ``stage1.data``.

    Saves the final model to ``args.output_dir/final`` and returns a summary with the loss curve.
    """
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
            raise DataError(f"no text in {stage1.data} has a content token (all are empty or made only of characters "
                            f"the tokenizers drop, such as zero-width or control characters)")
        if accelerator.is_main_process:
            logger.info(f"[stage1] skipped {len(dropped)} text chunk(s) with no content token (only characters the "
                  f"tokenizers drop, such as zero-width or control characters), as empty ones are")
    out = Path(args.output_dir)
    if accelerator.is_main_process:
        logger.info(f"[stage1] {len(texts)} text chunks from {stage1.data}")
    enc_lang = "eng_Latn" if model.config.encoder_lang_style == "nllb" else None
    span = None
    if stage1.stage1_objective != "sequence":  # first: the same teacher pass fills the pooled targets' cache
        alignment = align_spans(model, texts, lang=enc_lang)
        with accelerator.main_process_first():
            spans_UD = teacher_span_targets(model, texts, alignment, batch_size=stage1.teacher_batch_size,
                                            cache_dir=out / "cache",
                                            show_progress=accelerator.is_main_process and args.progress)
        span = {"alignment": alignment, "targets": spans_UD, "first_row": alignment.first_rows(),
                "stats": span_target_stats(spans_UD, standardize=stage1.target_norm == "standardize")}
        if accelerator.is_main_process:
            logger.info(f"[stage1] span objective: {len(spans_UD)} words in {len(texts)} texts "
                  f"({len(spans_UD) / max(1, len(texts)):.1f} per text; teacher span targets "
                  f"{spans_UD.nbytes / 2**20:.1f} MiB float16, memory-mapped)")

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
            logger.info(f"[stage1] projection RMS {calibration['rms_before']:.3g} -> {calibration['rms_after']:.3g} "
                  f"(LLM input embeddings: {calibration['target_rms']:.3g})")

    elif stage1.projection_init == "rms_match" and calibration_file.exists():
        calibration = json.loads(calibration_file.read_text())
    if stage1.save_initial and accelerator.is_main_process and not (out / "initial").exists():
        with atomic_path(out / "initial") as tmp:
            model.save_pretrained(tmp)
    lengths = [len(t) for t in texts]
    n_truncated = {"n": 0}
    enc_cache = None
    if stage1.cache_encoder_outputs:
        with accelerator.main_process_first():
            enc_cache = EncoderCache(model, texts, lang=enc_lang, cache_dir=out / "cache",
                                     batch_size=stage1.teacher_batch_size,
                                     show_progress=accelerator.is_main_process and args.progress)
        n_truncated["n"] += enc_cache.n_truncated

    def with_spans(batch: dict[str, Any], indices: list[int]) -> dict[str, Any]:
        if span is None:
            return batch
        rows = [r for i in indices for r in range(span["first_row"][i], span["first_row"][i + 1])]
        batch["span_units"], _ = span["alignment"].batch_units(indices, "encoder", batch["attention_mask"].shape[1])
        batch["span_targets"] = torch.from_numpy(np.asarray(span["targets"][rows], dtype=np.float32))
        return batch

    def collate(indices: list[int]) -> dict[str, Any]:
        if enc_cache is not None:
            return with_spans({**enc_cache.collate(indices), "targets": targets_ND[indices]}, indices)
        batch = model.tokenize([texts[i] for i in indices], lang=enc_lang)
        n_truncated["n"] += batch["n_truncated"]
        return with_spans({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                           "targets": targets_ND[indices]}, indices)

    loss_fn = functools.partial(stage1_loss, stats=stats, objective=stage1.stage1_objective,
                                span_weight=stage1.span_weight,
                                span_stats=span["stats"] if span is not None else None)
    groups = [{"params": [p for n, p in model.named_parameters()
                          if p.requires_grad and not n.startswith("projection.")]},
              {"params": list(model.projection.parameters()), "lr": args.projection_lr or args.learning_rate}]
    groups = [g for g in groups if g["params"]]
    result = train(model=model, param_groups=groups, n_examples=len(texts), collate=collate, loss_fn=loss_fn,
                   args=args, stage="stage1", lengths=lengths, accelerator=accelerator, resume_from=resume_from,
                   save_final=lambda m, d: m.save_pretrained(d),
                   config_to_save={"model": model_settings.__dict__, "stage1": stage1.__dict__,
                                   "training": args.__dict__})
    if n_truncated["n"] and accelerator.is_main_process:
        logger.info(f"[stage1] {n_truncated['n']} texts were longer than max_seq_length and truncated")
    summary = {"final_dir": str(result.final_dir), "steps": result.steps, "seconds": round(result.seconds, 2),
               "n_texts": len(texts), "calibration": calibration,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    if accelerator.is_main_process:
        atomic_write_json(out / "stage1_summary.json", summary, indent=1)
    return summary
