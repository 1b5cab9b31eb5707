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

import contextlib
import functools
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from transformers import AutoConfig

from mtllm._io import atomic_path, atomic_write_json
from mtllm.data.spans import align_units
from mtllm.device import module_device, to_device
from mtllm.errors import ConfigError, DataError
from mtllm.modeling.batching import run_batched
from mtllm.modeling.pooling import unit_mean_pool
from mtllm.tasks.texts import load_stage1_texts
from mtllm.modeling.model import MTLLMModel, decoder_layers
from mtllm.sources import load_source
from mtllm.settings import EXISTING_DIR, NON_EMPTY, TEXT_SOURCE, ModelSettings, at_least, check_settings, each
from mtllm.fingerprints import cache_key
from mtllm.training.caches import ArrayCache
from mtllm.training.encoder_cache import EncoderCache
from mtllm.training.loop import TrainingArgs, make_accelerator, set_seed, start_run, total_steps, train
from mtllm.modeling.objectives import TargetStats, alignment_fvu, stage1_loss, target_stats

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
    student_layers: int | None = field(default=None, metadata={
        "help": "Layer-k target: teacher and student run only the LLM's first k decoder layers and the loss fits the "
                "student's states at layer k (before the final norm) to the teacher's there, so a step costs about "
                "k/L of a full-depth one. The LoRA of layers k+1..L stays untrained (an identity), so the trained "
                "student feeds the teacher's own upper layers. Default: all L layers (the paper).",
        "check": at_least(1)})
    full_depth_steps: int = field(default=0, metadata={
        "help": "With student_layers: the last N of max_steps train the whole depth against the teacher's last-layer "
                "targets (pooled and span), so the layer-k phase's student also fits the last layer. The teacher "
                "then runs at both depths once (targets cached). With max_minutes, the phase starts earlier when "
                "the budget would otherwise end the run before its N steps (priced at L/k layer-k steps each).",
        "check": at_least(0)})
    eval_data: list[str] = field(default_factory=list, metadata={
        "help": "Held-out English texts (same forms as data, e.g. task:sib200/eng_Latn/validation): every eval_steps "
                "steps and at the end, the full-depth student's pooled states on them are compared with the "
                "teacher's (FVU, lower is better); the best checkpoint is kept as final/ (HF's "
                "load_best_model_at_end) and written to best/. Texts that are also training texts are dropped. "
                "Default: none (final/ is the last step).", "check": each(TEXT_SOURCE)})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate on eval_data every N optimizer steps (0: only at "
                                                         "the end).", "check": at_least(0)})
    max_eval_texts: int = field(default=256, metadata={"help": "Use at most this many eval_data texts (the first "
                                                               "ones).", "check": at_least(2)})
    eval_patience: int | None = field(default=None, metadata={
        "help": "Stop after this many evaluations in a row without a better held-out FVU (default: never early).",
        "check": at_least(1)})

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
    depth = [f"depth={model._llm_depth}"] if model._llm_depth is not None else []  # full-depth keys as before
    device_type = module_device(model).type  # the compute precision: targets made under bf16 autocast are bf16's
    autocast = ([f"autocast={torch.get_autocast_dtype(device_type)}"]  # (devices without autocast: never on)
                if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type) else [])
    return cache_key([cfg.llm_name_or_path, cfg.llm_adapters_to_merge, cfg.bidirectional, cfg.pooling,
                      cfg.max_seq_length, str(model.base_llm.dtype), *depth, *autocast], texts)


@torch.no_grad()
def teacher_targets(model: MTLLMModel, texts: Sequence[str], *, batch_size: int = 32,
                    cache_dir: str | Path | None = None, show_progress: bool = True) -> torch.Tensor:
    """Pooled last hidden states ``(N, D)`` of the LLM, adapters disabled, on its own tokens (at the depth of
    :meth:`MTLLMModel.llm_depth` when one is open).

    Cached (float32, :class:`~mtllm.training.caches.ArrayCache` ``teacher-<key>``) under ``cache_dir``,
    keyed by a hash of the LLM and the texts, so reruns and further epochs never recompute them."""
    cache = ArrayCache(cache_dir, "teacher", _targets_key(model, texts)) if cache_dir is not None else None
    if cache is not None and (hit := cache.load(["targets"], mmap=False, rows=len(texts))) is not None:
        return torch.from_numpy(hit[0]["targets"])
    with model.adapters_disabled():
        targets = model.encode(texts, route="llm", batch_size=batch_size, show_progress=show_progress)
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
        llm = model.tokenize(chunk, route="llm", return_offsets=True)
        enc = model.tokenize(chunk, route="encoder", lang=lang, return_offsets=True)
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
        batch = model.tokenize([texts[i] for i in batch_idx], route="llm")
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


def llm_layers(source: str) -> int:
    """How many decoder layers the LLM ``source`` has, from its ``config.json`` alone (no weights load)."""
    config = load_source(source, "LLM", lambda path: AutoConfig.from_pretrained(path, trust_remote_code=False))
    text = getattr(config, "get_text_config", lambda: config)()
    return int(text.num_hidden_layers)


def check_student_layers(stage1: Stage1Settings, llm: str | MTLLMModel) -> None:
    """``student_layers`` within ``1..L`` for this LLM (a :class:`ConfigError` line; before any weights load
    when ``llm`` is a source)."""
    k = stage1.student_layers
    if stage1.full_depth_steps and k is None:
        raise ConfigError(f"full_depth_steps {stage1.full_depth_steps} needs student_layers (the layer-k phase before "
                          f"it): set student_layers, or full_depth_steps to 0")
    if k is None:
        return
    total = llm.llm_num_layers if isinstance(llm, MTLLMModel) else llm_layers(llm)
    if not 1 <= k <= total:
        raise ConfigError(f"student_layers must be between 1 and the LLM's {total} decoder layers, not {k}: set "
                          f"it to {max(1, total // 2)} (half the depth), for example, or leave it unset for all "
                          f"{total}")


def _freeze_upper_layers(model: MTLLMModel, k: int | None) -> int:
    """Freeze the LoRA tensors of the decoder layers after the first ``k``: a layer-k student never runs them
    (so they keep their identity initialisation, and no optimizer or process waits for their gradients).
    Returns how many tensors were frozen."""
    if k is None:
        return 0
    frozen = 0
    for layer in list(decoder_layers(model.base_llm))[k:]:
        for p in layer.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += 1
    return frozen


def full_depth_now(step: int, *, switch_at: int, history: Sequence[dict[str, Any]], seconds: float,
                   budget_s: float | None, full_depth_steps: int, cost_ratio: float) -> bool:
    """Whether step ``step`` (0-based) of a two-phase stage 1 (``student_layers`` then ``full_depth_steps``) trains
    the whole depth: from ``switch_at`` (max_steps - full_depth_steps) on; once a step did (the last history record
    has ``full_depth``: the phase never switches back), every later one; and earlier when a time budget would
    otherwise stop the run before the full-depth phase: when the ``seconds`` spent plus ``full_depth_steps``
    full-depth steps would reach ``budget_s``. A full-depth step is priced at the median layer-k step so far times
    ``cost_ratio`` (L/k: an over-estimate, as the encoder and optimizer do not scale with depth), so the phase gets
    at least its steps' time."""
    if step >= switch_at or (history and history[-1].get("full_depth")):
        return True
    if budget_s is None:
        return False
    step_s = np.diff([r["elapsed_s"] for r in history if "elapsed_s" in r])
    step_s = step_s[step_s > 0]  # elapsed_s restarts in a resumed run
    if not len(step_s):
        return seconds >= budget_s
    return seconds + full_depth_steps * float(np.median(step_s)) * cost_ratio >= budget_s


@torch.no_grad()
def calibrate_projection(model: MTLLMModel, texts: Sequence[str], *, lang: str | None = None,
                         batch_size: int = 16) -> dict:
    """Rescale ``model``'s up-projection so its outputs have the RMS of the LLM's own input embeddings
    (``projection_init: rms_match``; the first 256 texts).

    ``inputs_embeds`` bypasses whatever the LLM's embedding layer does (Gemma multiplies by
    sqrt(d)); a default-initialised projection then feeds the LLM vectors of the wrong scale,
    and nothing trains. Returns the RMS before and after and the target.
    """
    if model.projection is None:
        raise ValueError("this model has no encoder/projection to calibrate")
    emb = model.base_llm.get_input_embeddings()
    ids = to_device(model.tokenize(list(texts)[:256], route="llm"), module_device(emb))
    target = emb(ids["input_ids"])[ids["attention_mask"].bool()].float().pow(2).mean().sqrt().item()
    sq, count = 0.0, 0
    for start in range(0, min(len(texts), 256), batch_size):
        batch = to_device(model.tokenize(list(texts)[start:start + batch_size], lang=lang, route="encoder"),
                          module_device(model.encoder))
        enc = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out = model.projection(enc.to(model.projection.weight.dtype))[batch["attention_mask"].bool()]
        sq += out.float().pow(2).sum().item()
        count += out.numel()
    before = (sq / max(count, 1)) ** 0.5
    scale = target / max(before, 1e-12)
    model.projection.weight.mul_(scale)
    model.projection.bias.mul_(scale)
    return {"rms_before": before, "rms_after": before * scale, "target_rms": target}


def run_stage1(model_settings: ModelSettings, stage1: Stage1Settings, args: TrainingArgs, *,
               model: MTLLMModel | None = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Self-distil ``model`` (built from ``model_settings`` unless given) on ``stage1.data``.

    Saves the final model to ``args.output_dir/final`` (with ``eval_data``: the best checkpoint by held-out
    FVU, also in ``best/``) and returns a summary with the loss curve.
    """
    check_student_layers(stage1, model if model is not None else model_settings.llm)  # before anything is written
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
    dropped = set(model.contentless(texts, route="encoder")) | set(model.contentless(texts, route="llm"))
    if dropped:
        texts = [t for i, t in enumerate(texts) if i not in dropped]
        if not texts:
            raise DataError(f"no text in {stage1.data} has a content token (all are empty or made only of characters "
                            f"the tokenizers drop, such as zero-width or control characters)")
        if accelerator.is_main_process:
            logger.info(f"[stage1] skipped {len(dropped)} text chunk(s) with no content token (only characters the "
                  f"tokenizers drop, such as zero-width or control characters), as empty ones are")
    enc_lang = "eng_Latn" if model.config.encoder_lang_style == "nllb" else None
    out = Path(args.output_dir)
    if accelerator.is_main_process:
        logger.info(f"[stage1] {len(texts)} text chunks from {stage1.data}")
    held_out = _HeldOut(model, stage1, texts, out, enc_lang=enc_lang, fits=fits, resume=resume_from is not None,
                        main=accelerator.is_main_process, progress=accelerator.is_main_process and args.progress,
                        autocast=accelerator.autocast)
    def depth():  # teacher targets and student steps; held-out evaluations run at full depth
        return model.llm_depth(stage1.student_layers)

    two_phase = stage1.student_layers is not None and stage1.full_depth_steps > 0
    if stage1.student_layers is not None and accelerator.is_main_process:
        logger.info(f"[stage1] layer-k target: student and teacher run the first {stage1.student_layers} of the "
                    f"LLM's {model.llm_num_layers} layers"
                    + (f", the last {stage1.full_depth_steps} steps all of them" if two_phase else ""))
    if not two_phase:
        _freeze_upper_layers(model, stage1.student_layers)
    alignment = align_spans(model, texts, lang=enc_lang) if stage1.stage1_objective != "sequence" else None

    def targets_at(layers: int | None) -> dict[str, Any]:
        """The teacher's targets (pooled, and per word with the span term) with the LLM cut at ``layers``."""
        span = None
        with accelerator.main_process_first(), model.llm_depth(layers):
            if alignment is not None:  # first: the same teacher pass fills the pooled targets' cache
                spans_UD = teacher_span_targets(model, texts, alignment, batch_size=stage1.teacher_batch_size,
                                                cache_dir=out / "cache",
                                                show_progress=accelerator.is_main_process and args.progress)
                span = {"alignment": alignment, "targets": spans_UD, "first_row": alignment.first_rows(),
                        "stats": span_target_stats(spans_UD, standardize=stage1.target_norm == "standardize")}
                if accelerator.is_main_process:
                    logger.info(f"[stage1] span objective: {len(spans_UD)} words in {len(texts)} texts "
                                f"({len(spans_UD) / max(1, len(texts)):.1f} per text; teacher span targets "
                                f"{spans_UD.nbytes / 2**20:.1f} MiB float16, memory-mapped)")
            targets_ND = teacher_targets(model, texts, batch_size=stage1.teacher_batch_size, cache_dir=out / "cache",
                                         show_progress=accelerator.is_main_process and args.progress)
        return {"layers": layers, "targets": targets_ND, "span": span,
                "stats": target_stats(targets_ND, standardize=stage1.target_norm == "standardize")}

    # the phases: the layer-k target (or the whole depth), then optionally the whole depth for the last steps
    phases = [targets_at(stage1.student_layers)] + ([targets_at(None)] if two_phase else [])
    switch_at = total_steps(args, len(texts)) - stage1.full_depth_steps
    current = {"phase": phases[0]}
    budget_s = 60 * args.max_minutes if args.max_minutes is not None else None
    cost_ratio = model.llm_num_layers / stage1.student_layers if two_phase else 1.0

    def on_step_start(step: int, history: Sequence[dict[str, Any]], seconds: float) -> None:
        full = two_phase and full_depth_now(step, switch_at=switch_at, history=history, seconds=seconds,
                                            budget_s=budget_s, full_depth_steps=stage1.full_depth_steps,
                                            cost_ratio=cost_ratio)
        if full and current["phase"] is phases[0] and accelerator.is_main_process:
            logger.info(f"[stage1] step {step + 1}: the full-depth phase starts"
                        + ("" if step >= switch_at else f" early, at {seconds / 60:.1f} of max_minutes "
                           f"{args.max_minutes:g}, so its {stage1.full_depth_steps} steps fit the time budget"))
        current["phase"] = phases[-1] if full else phases[0]

    calibration = None
    calibration_file = out / CALIBRATION_FILE
    if stage1.projection_init == "rms_match" and resume_from is None:  # else the checkpoint holds the projection
        calibration = calibrate_projection(model, texts[:256])
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
        span = current["phase"]["span"]
        if span is None:
            return batch
        rows = [r for i in indices for r in range(span["first_row"][i], span["first_row"][i + 1])]
        batch["span_units"], _ = span["alignment"].batch_units(indices, "encoder", batch["attention_mask"].shape[1])
        batch["span_targets"] = torch.from_numpy(np.asarray(span["targets"][rows], dtype=np.float32))
        return batch

    def collate(indices: list[int]) -> dict[str, Any]:
        if enc_cache is not None:
            return with_spans({**enc_cache.collate(indices), "targets": current["phase"]["targets"][indices]}, indices)
        batch = model.tokenize([texts[i] for i in indices], lang=enc_lang)
        n_truncated["n"] += batch["n_truncated"]
        return with_spans({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                           "targets": current["phase"]["targets"][indices]}, indices)

    objective = functools.partial(stage1_loss, objective=stage1.stage1_objective, span_weight=stage1.span_weight)

    def loss_fn(m: MTLLMModel, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        phase = current["phase"]
        with accelerator.unwrap_model(m).llm_depth(phase["layers"]):
            loss, metrics = objective(m, batch, stats=phase["stats"],
                                      span_stats=phase["span"]["stats"] if phase["span"] is not None else None)
        if two_phase:  # in the history, so a resumed run stays in the phase it was in (full_depth_now)
            metrics = {**metrics, "full_depth": float(phase["layers"] is None)}
        return loss, metrics

    groups = [{"params": [p for n, p in model.named_parameters()
                          if p.requires_grad and not n.startswith("projection.")]},
              {"params": list(model.projection.parameters()), "lr": args.projection_lr or args.learning_rate}]
    groups = [g for g in groups if g["params"]]
    result = train(model=model, param_groups=groups, n_examples=len(texts), collate=collate, loss_fn=loss_fn,
                   args=args, stage="stage1", lengths=lengths, accelerator=accelerator, resume_from=resume_from,
                   on_epoch_end=held_out.evaluate if held_out.texts else None,
                   eval_steps=stage1.eval_steps or args.max_steps or 10**9,
                   stop_when=held_out.no_progress if stage1.eval_patience else None, on_step_start=on_step_start,
                   save_final=held_out.save_final,
                   config_to_save={"model": model_settings.__dict__, "stage1": stage1.__dict__,
                                   "training": args.__dict__})
    if n_truncated["n"] and accelerator.is_main_process:
        logger.info(f"[stage1] {n_truncated['n']} texts were longer than max_seq_length and truncated")
    summary = {"final_dir": str(result.final_dir), "steps": result.steps, "seconds": round(result.seconds, 2),
               "n_texts": len(texts), "calibration": calibration, "stopped_by": result.stopped_by,
               "student_layers": stage1.student_layers, "best": held_out.best if held_out.texts else None,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    if accelerator.is_main_process:
        atomic_write_json(out / "stage1_summary.json", summary, indent=1)
    return summary


class _HeldOut:
    """Stop on evidence: the full-depth student's pooled states on held-out English texts against the teacher's
    (:func:`~mtllm.modeling.objectives.alignment_fvu`), every ``eval_steps``; the best model so far is written to
    ``best/`` (its score to ``best_score.json``) and becomes ``final/``."""

    def __init__(self, model: MTLLMModel, stage1: Stage1Settings, train_texts: Sequence[str], out: Path, *,
                 enc_lang: str | None, fits, resume: bool, main: bool, progress: bool, autocast=contextlib.nullcontext):
        self.stage1, self.out, self.enc_lang, self.autocast = stage1, out, enc_lang, autocast
        self.best_dir, self.best_file = out / "best", out / "best_score.json"
        self.texts: list[str] = []
        # the best of the run this one continues (a fresh run's start_run removed best/ and best_score.json)
        self.best: dict[str, Any] = (json.loads(self.best_file.read_text()) if resume and self.best_file.exists()
                                     else {"fvu": None})
        if not stage1.eval_data:
            return
        seen = set(train_texts)
        texts = load_stage1_texts(stage1.eval_data, fits=fits, max_texts=stage1.max_eval_texts + len(seen),
                                  text_field=stage1.text_field, data_dir=stage1.data_dir)
        self.texts = [t for t in texts if t not in seen][:stage1.max_eval_texts]
        if len(self.texts) < 2:
            raise DataError(f"eval_data {stage1.eval_data} has {len(self.texts)} text(s) that are not training texts; "
                            f"held-out evaluation needs at least 2: give texts stage 1 does not train on")
        if main:
            logger.info(f"[stage1] held-out evaluation: {len(self.texts)} texts from {stage1.eval_data}"
                        + (f" ({len(texts) - len(self.texts)} training texts left out)" if len(texts) > len(self.texts)
                           else ""))
        with autocast():
            self.teacher_ND = teacher_targets(model, self.texts, batch_size=stage1.teacher_batch_size,
                                              cache_dir=out / "cache", show_progress=progress)

    def evaluate(self, model: MTLLMModel, epoch: int, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        with self.autocast():  # the training steps' precision (bf16 where it is fast): a fraction of the step budget
            student_ND = model.encode(self.texts, lang=self.enc_lang, route="encoder",
                                      batch_size=self.stage1.teacher_batch_size)
        model.train(was_training)
        fvu = alignment_fvu(torch.as_tensor(student_ND), self.teacher_ND)
        better = self.best["fvu"] is None or fvu < self.best["fvu"]
        logger.info(f"[stage1] step {step}: held-out FVU {fvu:.4f}" + (" (best so far)" if better else
                                                                       f" (best {self.best['fvu']:.4f})"))
        if better:
            self.best = {"fvu": fvu, "step": step}
            with atomic_path(self.best_dir) as tmp:
                model.save_pretrained(tmp)
            atomic_write_json(self.best_file, self.best)
        return {"heldout_fvu": fvu}

    def no_progress(self, history: Sequence[dict[str, Any]]) -> bool:
        """Whether the last ``eval_patience`` evaluations of ``history`` found nothing better than the one before."""
        return evaluations_without_progress(history, "heldout_fvu") >= (self.stage1.eval_patience or 10**9)

    def save_final(self, model: MTLLMModel, folder: Path) -> None:
        if self.texts and self.best_dir.exists():
            shutil.copytree(self.best_dir, folder, dirs_exist_ok=True)
        else:
            model.save_pretrained(folder)


def evaluations_without_progress(history: Sequence[dict[str, Any]], key: str) -> int:
    """How many evaluations (records with ``key``; lower is better) came after the best one."""
    values = [r[key] for r in history if key in r]
    if not values:
        return 0
    best = min(range(len(values)), key=lambda i: (values[i], i))
    return len(values) - 1 - best
