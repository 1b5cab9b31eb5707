"""Stage 2b (arXiv 2406.12739, section 3): pre-embed the English training set with the fine-tuned
teacher, then distil it into the MT-LLM.

* :func:`pre_embed` -- the teacher's pooled (or per-option) embeddings of the training set, stored
  fp16 and memory-mapped, keyed by a hash of teacher weights + data + settings, reused when valid.
* :func:`run_distill` -- the MT-LLM from a stage-1 checkpoint learns to match those embeddings
  (MSE); the head is copied from the teacher. Which parts train is explicit (:class:`DistillSettings`).
  ``objective="ce"`` fine-tunes the MT-LLM directly with cross-entropy instead, and
  ``stage1_model: null`` distils into a freshly stacked model (no stage 1): the paper's ablations.
"""
from __future__ import annotations

import logging
import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from mtllm._io import atomic_write_json
from mtllm.data.collate import check_content, collate_examples, example_lengths
from mtllm.device import module_device
from mtllm.modeling.predict import accuracy
from mtllm.modeling.batching import forward_inputs, run_batched
from mtllm.modeling.model import MTLLMModel, model_fingerprint
from mtllm.errors import ConfigError
from mtllm.settings import MODEL, ModelSettings, check_settings, required_if
from mtllm.training.finetune import TaskSettings, _check_labels, _head_kind, _load, load_selection
from mtllm.fingerprints import cache_key
from mtllm.training.caches import ArrayCache
from mtllm.training.encoder_cache import EncoderCache, encoder_input_texts
from mtllm.training.loop import TrainingArgs, epoch_evals, set_seed, start_run, train
from mtllm.modeling.objectives import classification_loss, distill_loss, target_stats

logger = logging.getLogger(__name__)

__all__ = ["DistillSettings", "pre_embed", "run_distill"]


@dataclass
class DistillSettings:
    """Task distillation into the MT-LLM (and the paper's variants)."""

    stage1_model: str | None = field(default=None, metadata={"help": "Stage-1 model dir (DIR/final); null = no stage 1 "
                                                                     "(fresh stack from the model keys).",
                                                             "check": MODEL})
    teacher_model: str | None = field(default=None, metadata={"help": "Fine-tuned teacher dir (finetune's DIR/best); "
                                                                      "needed for objective=distill.",
                                                              "check": (required_if("objective", "distill",
                                                                                    "the folder written by `mtllm "
                                                                                    "finetune` (its DIR/best), or use "
                                                                                    "objective: ce"), MODEL)})
    objective: Literal["distill", "ce"] = field(default="distill",
                                                metadata={"help": "'distill' (MSE to the teacher's embeddings, the "
                                                                  "paper) or 'ce' (cross-entropy on labels directly)."})
    train_lora: bool = field(default=True, metadata={"help": "Train the LLM's LoRA adapter."})
    train_projection: bool = field(default=False, metadata={"help": "Train the up-projection (the paper freezes it in "
                                                                    "stage 2)."})
    train_head: bool = field(default=False, metadata={"help": "Train the head (copied from the teacher; frozen in the "
                                                              "paper)."})
    target_norm: Literal["standardize", "none"] = field(
        default="standardize", metadata={"help": "'standardize' targets per dimension, or 'none' (raw MSE)."})
    cache_encoder_outputs: bool = field(default=False, metadata={"help": "Compute the frozen encoder's outputs once "
                                                                         "per training example and reuse them every "
                                                                         "epoch (fp16, memory-mapped under "
                                                                         "output_dir/cache)."})

    def __post_init__(self) -> None:
        check_settings(self)


def pre_embed(teacher: MTLLMModel, examples: Sequence[Any], *, cache_dir: str | Path, teacher_id: str,
              batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
    """The teacher's pooled embeddings of ``examples`` on its own tokens: ``(N, D)``, or ``(N, K, D)``
    per option for multiple choice. Stored fp16 as ``.npy`` (memory-mapped on reuse) under
    ``cache_dir/preembed-<key>``, where the key hashes ``teacher_id`` (e.g.
    :func:`mtllm.modeling.model.model_fingerprint`),
    every example's id and text, and the tokenisation settings. A stale or broken entry is rebuilt."""
    cfg = teacher.config
    ids = [e.id for e in examples]
    key = cache_key([teacher_id, cfg.pooling, cfg.bidirectional, cfg.max_seq_length, cfg.pair_separator],
                    (json.dumps([e.id, list(e.texts), list(e.options)], ensure_ascii=False) for e in examples))
    cache = ArrayCache(cache_dir, "preembed", key)
    if (hit := cache.load(["embeddings"], rows=len(examples),
                          check=lambda meta, _: meta.get("ids") == ids)) is not None:
        return hit[0]["embeddings"]
    device = module_device(teacher)
    was_training = teacher.training
    teacher.eval()

    def step(batch_examples: list[Any]) -> np.ndarray:
        batch = collate_examples(teacher, batch_examples, route="llm")
        return teacher(**forward_inputs(batch, device)).pooled.float().cpu().numpy().astype(np.float16)

    with torch.inference_mode():
        pooled = run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples),
                             progress=show_progress, desc="pre-embed", unit="example")
    teacher.train(was_training)
    cache.save({"embeddings": np.stack(pooled)}, {"teacher": teacher_id, "dtype": "float16", "ids": ids})
    return cache.load(["embeddings"])[0]["embeddings"]


def _part(name: str) -> str | None:
    """Which part of an MT-LLM a parameter belongs to: encoder, projection, head, lora, or None (the
    frozen base LLM)."""
    for prefix in ("encoder", "projection", "head"):
        if name.startswith(prefix + "."):
            return prefix
    return "lora" if "lora_" in name else None


def run_distill(model_settings: ModelSettings, task: TaskSettings, distill: DistillSettings, args: TrainingArgs, *,
                student: MTLLMModel | None = None) -> dict[str, Any]:
    """Distil the fine-tuned teacher into the MT-LLM on English task data (or, with
    ``objective="ce"``, fine-tune the MT-LLM on the labels). Saves ``args.output_dir/final`` and, when
    validation data exists, ``best`` by validation accuracy through the encoder path."""
    resume_from = start_run(args, "distill")  # before any work: the output folder may be refused
    set_seed(args.seed)
    spec, train_ex = _load(task, task.train_split, limit=task.max_train_examples)
    _, val_ex, val_record = load_selection(task)
    out = Path(args.output_dir)
    if student is None:
        if distill.stage1_model:
            student = MTLLMModel.from_pretrained(distill.stage1_model, is_trainable=True,
                                                 dtype=model_settings.torch_dtype())
        else:
            student = model_settings.build()
    check_content(student, train_ex + val_ex, route="encoder")  # before any work: every text has a content token
    targets = None
    if distill.objective == "distill":
        if not distill.teacher_model:
            raise ConfigError("objective=distill needs teacher_model: the directory written by `mtllm finetune` "
                             "(its best/ folder)")
        teacher = MTLLMModel.from_pretrained(distill.teacher_model, dtype=model_settings.torch_dtype())
        if teacher.head is None:
            raise ConfigError(f"{distill.teacher_model} has no task head: is it the output of `mtllm finetune`?")
        check_content(teacher, train_ex, route="llm")
        student.set_head(teacher.config.head_kind, teacher.config.label_names, init_from=teacher.head)
        targets = pre_embed(teacher, train_ex, cache_dir=out / "cache",
                            teacher_id=model_fingerprint(distill.teacher_model),
                            batch_size=task.eval_batch_size)
        del teacher
    else:
        student.set_head(_head_kind(spec), spec.label_names)
    _check_labels(train_ex,
                  len(student.config.label_names) if spec.kind != "multiple_choice" else len(train_ex[0].options),
                  "train")

    # what trains
    wanted = {"encoder": False, "projection": distill.train_projection,
              "head": distill.train_head or distill.objective == "ce", "lora": distill.train_lora}
    for name, p in student.named_parameters():
        part = _part(name)
        if part is not None:
            p.requires_grad_(wanted[part])
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("nothing to train: set train_lora, train_projection or train_head to true")

    if targets is not None:
        # population std (ddof 0), as distillation has always used: keeps its losses unchanged
        stats = target_stats(torch.from_numpy(np.asarray(targets, dtype=np.float32)),
                             standardize=distill.target_norm == "standardize", unbiased=False)
        loss_fn = functools.partial(distill_loss, stats=stats)
    else:
        loss_fn = classification_loss
    lang = task.train_lang
    enc_cache = None
    if distill.cache_encoder_outputs:
        enc_cache = EncoderCache(student, encoder_input_texts(student, train_ex), lang=lang, cache_dir=out / "cache",
                                 batch_size=task.eval_batch_size, show_progress=args.progress)

    def collate(indices: list[int]) -> dict[str, Any]:
        batch = collate_examples(student, [train_ex[i] for i in indices], route="encoder", lang=lang)
        if enc_cache is not None:
            batch["encoder_hidden_states"] = enc_cache.states_for(indices, batch["attention_mask"])
        if targets is not None:
            batch["targets"] = torch.from_numpy(np.asarray(targets[np.asarray(indices)], dtype=np.float32))
        return batch

    def on_epoch_end(m: nn.Module, epoch: int, step: int) -> dict[str, float]:
        acc = accuracy(m, val_ex, route="encoder", lang=lang, batch_size=task.eval_batch_size)
        logger.info(f"[distill] epoch {epoch} step {step}: {lang} {task.eval_split} accuracy {acc:.4f}")
        return {"val_accuracy": acc}

    groups: dict[str, list[nn.Parameter]] = {"lora": [], "projection": [], "head": []}
    for name, p in student.named_parameters():
        if p.requires_grad:
            groups[_part(name)].append(p)
    lrs = {"lora": args.learning_rate, "projection": args.projection_lr or args.learning_rate,
           "head": args.head_lr or args.learning_rate}
    param_groups = [{"params": ps, "lr": lrs[k]} for k, ps in groups.items() if ps]
    result = train(model=student, param_groups=param_groups, n_examples=len(train_ex), collate=collate,
                   loss_fn=loss_fn, args=args, stage="distill", lengths=example_lengths(train_ex),
                   on_epoch_end=on_epoch_end, save_final=lambda m, d: m.save_pretrained(d), resume_from=resume_from,
                   config_to_save={"model": asdict(model_settings), "task": asdict(task), "distill": asdict(distill),
                                   "training": asdict(args)})
    summary = {"final_dir": str(result.final_dir), "evals": epoch_evals(result.history), "steps": result.steps,
               "seconds": round(result.seconds, 2), "n_train": len(train_ex), **val_record,
               "trainable": sorted({_part(n) for n in trainable}), "objective": distill.objective,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    atomic_write_json(out / "distill_summary.json", summary, indent=1)
    return summary
