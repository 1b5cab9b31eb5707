"""Stage 2 (arXiv 2406.12739, section 3): task fine-tuning of the teacher, pre-embedding, distillation.

1. :func:`run_finetune` -- the LLM alone (its own tokens) with a fresh LoRA and a head on the pooled
   output, trained with cross-entropy on English task data; the checkpoint with the best English
   validation accuracy is kept (``best/``), chosen automatically.
2. :func:`pre_embed` -- the teacher's pooled (or per-option) embeddings of the training set, stored
   fp16 and memory-mapped, keyed by a hash of teacher weights + data + settings, reused when valid.
3. :func:`run_distill` -- the MT-LLM from a stage-1 checkpoint learns to match those embeddings
   (MSE); the head is copied from the teacher. Which parts train is explicit (:class:`DistillSettings`).
   ``objective="ce"`` fine-tunes the MT-LLM directly with cross-entropy instead, and
   ``stage1_model: null`` distils into a freshly stacked model (no stage 1): the paper's ablations.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..collate import collate_examples, example_lengths
from ..modeling import MTLLMModel
from .loop import TrainingArgs, set_seed, train
from .stage1 import ModelSettings

__all__ = ["TaskSettings", "DistillSettings", "run_finetune", "pre_embed", "run_distill", "predict", "accuracy"]


@dataclass
class TaskSettings:
    """Which task and data a stage-2 command uses."""

    task: str = field(default="sib200", metadata={"help": "Task name (mtllm.tasks.list_tasks())."})
    data_dir: str | None = field(default=None, metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub)."})
    train_lang: str = field(default="eng_Latn", metadata={"help": "Language of the training data (FLORES-200)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split for model selection."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Use at most this many training examples."})
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size for evaluation and pre-embedding."})


@dataclass
class DistillSettings:
    """Task distillation into the MT-LLM (and the paper's variants)."""

    stage1_model: str | None = field(default=None, metadata={"help": "Stage-1 model dir (DIR/final); null = no stage 1 (fresh stack from the model keys)."})
    teacher_model: str | None = field(default=None, metadata={"help": "Fine-tuned teacher dir (finetune's DIR/best); needed for objective=distill."})
    objective: str = field(default="distill", metadata={"help": "'distill' (MSE to the teacher's embeddings, the paper) or 'ce' (cross-entropy on labels directly)."})
    train_lora: bool = field(default=True, metadata={"help": "Train the LLM's LoRA adapter."})
    train_projection: bool = field(default=False, metadata={"help": "Train the up-projection (the paper freezes it in stage 2)."})
    train_head: bool = field(default=False, metadata={"help": "Train the head (copied from the teacher; frozen in the paper)."})
    target_norm: str = field(default="standardize", metadata={"help": "'standardize' targets per dimension, or 'none' (raw MSE)."})
    cache_encoder_outputs: bool = field(default=False, metadata={"help": "Compute the frozen encoder's outputs once per training example and reuse them every epoch (fp16, memory-mapped under output_dir/cache)."})


# ---------------------------------------------------------------------------------------------
# data and prediction
# ---------------------------------------------------------------------------------------------
def _load(task: TaskSettings, split: str, lang: str | None = None, limit: int | None = None):
    from ..tasks import get_task, load_examples, load_train_examples

    spec = get_task(task.task)
    if split == "train" and lang is None and task.train_lang == "eng_Latn":
        examples = load_train_examples(spec, data_dir=task.data_dir, limit=limit)  # e.g. English XNLI for AmericasNLI
    else:
        examples = load_examples(spec, lang or task.train_lang, split, data_dir=task.data_dir, limit=limit)
    return spec, examples


def _head_kind(spec) -> str:
    return "multiple_choice" if spec.kind == "multiple_choice" else "classification"


@torch.no_grad()
def predict(model: MTLLMModel, examples: Sequence[Any], *, path: str, lang: str | None = None,
            batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
    """Predicted label indices for ``examples`` (length-sorted batches, input order restored)."""
    if model.head is None:
        raise ValueError("the model has no task head: fine-tune (mtllm finetune) or distil it first")
    was_training = model.training
    model.eval()
    order = np.argsort(example_lengths(examples), kind="stable")
    preds = np.empty(len(examples), dtype=np.int64)
    device = next(model.parameters()).device
    starts = range(0, len(order), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="predict", unit="batch", leave=False)
    for start in starts:
        idx = order[start:start + batch_size]
        batch = collate_examples(model, [examples[i] for i in idx], path=path, lang=lang)
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
        logits = model(**inputs).logits
        preds[idx] = logits.argmax(-1).cpu().numpy()
    model.train(was_training)
    return preds


def accuracy(model: MTLLMModel, examples: Sequence[Any], **kwargs: Any) -> float:
    """Fraction of ``examples`` whose label the model predicts."""
    labels = np.array([e.label for e in examples])
    return float((predict(model, examples, **kwargs) == labels).mean())


def _check_labels(examples: Sequence[Any], n_labels: int, where: str) -> None:
    bad = [e.id for e in examples if not 0 <= e.label < n_labels]
    if bad:
        raise ValueError(f"{where}: {len(bad)} examples have labels outside the head's {n_labels} classes "
                         f"(e.g. ids {bad[:5]}); the head never saw them. Check the task's label names.")


# ---------------------------------------------------------------------------------------------
# 1. teacher fine-tuning
# ---------------------------------------------------------------------------------------------
def run_finetune(model_settings: ModelSettings, task: TaskSettings, args: TrainingArgs, *,
                 model: MTLLMModel | None = None) -> dict[str, Any]:
    """Fine-tune the LLM alone (fresh LoRA + head) on ``task`` in ``task.train_lang``; keep the best
    checkpoint by validation accuracy in ``args.output_dir/best``. Returns a summary."""
    set_seed(args.seed)
    spec, train_ex = _load(task, task.train_split, limit=task.max_train_examples)
    _, val_ex = _load(task, task.eval_split)
    if model is None:
        model = MTLLMModel.llm_only(
            model_settings.llm, bidirectional=model_settings.bidirectional, lora=model_settings.lora(),
            pooling=model_settings.pooling, load_in_4bit=model_settings.load_in_4bit,
            dtype=model_settings.torch_dtype(), llm_adapters_to_merge=model_settings.llm_adapters_to_merge,
            max_seq_length=model_settings.max_seq_length, attn_implementation=model_settings.attn_implementation)
    model.set_head(_head_kind(spec), spec.label_names)
    _check_labels(train_ex, len(spec.label_names) if spec.kind != "multiple_choice" else len(train_ex[0].options), "train")
    out = Path(args.output_dir)
    best_path = out / "best"
    best_file = out / "best_score.json"
    best = json.loads(best_file.read_text()) if (args.resume and best_file.exists()) else {"accuracy": -1.0}
    evals: list[dict[str, Any]] = []

    def on_epoch_end(m: nn.Module, epoch: int, step: int) -> dict[str, float]:
        acc = accuracy(m, val_ex, path="llm", batch_size=task.eval_batch_size)
        evals.append({"epoch": epoch, "step": step, "val_accuracy": acc})
        print(f"[finetune] epoch {epoch} step {step}: {task.train_lang} {task.eval_split} accuracy {acc:.4f}"
              + (" (best so far)" if acc > best["accuracy"] else ""), flush=True)
        if acc > best["accuracy"]:
            best.update(accuracy=acc, epoch=epoch, step=step)
            tmp = out / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            m.save_pretrained(tmp)
            shutil.rmtree(best_path, ignore_errors=True)
            tmp.replace(best_path)
            best_file.write_text(json.dumps(best))
        return {"val_accuracy": acc}

    def collate(indices: list[int]) -> dict[str, Any]:
        return collate_examples(model, [train_ex[i] for i in indices], path="llm")

    def loss_fn(m: nn.Module, batch: dict[str, Any]):
        labels = batch.pop("labels")
        batch.pop("n_truncated", None)
        logits = m(**batch).logits.float()
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, {"loss": loss.item(), "train_accuracy": (logits.argmax(-1) == labels).float().mean().item()}

    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]},
              {"params": head_params, "lr": args.head_lr or args.learning_rate}]
    result = train(model=model, param_groups=[g for g in groups if g["params"]], n_examples=len(train_ex),
                   collate=collate, loss_fn=loss_fn, args=args, stage="finetune",
                   lengths=example_lengths(train_ex), on_epoch_end=on_epoch_end,
                   save_final=lambda m, d: m.save_pretrained(d),
                   config_to_save={"model": asdict(model_settings), "task": asdict(task), "training": asdict(args)})
    summary = {"best_dir": str(best_path), "best": best, "evals": evals, "steps": result.steps,
               "seconds": round(result.seconds, 2), "n_train": len(train_ex), "n_val": len(val_ex)}
    (out / "finetune_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------
# 2. pre-embedding
# ---------------------------------------------------------------------------------------------
def _dir_fingerprint(model_dir: str | Path) -> str:
    """Hash of a saved model's own weights and config (the base models are referenced by name in it)."""
    digest = hashlib.sha256()
    root = Path(model_dir)
    for rel in ("config.json", "model.safetensors", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        p = root / rel
        if p.exists():
            digest.update(rel.encode())
            digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def pre_embed(teacher: MTLLMModel, examples: Sequence[Any], *, cache_dir: str | Path, teacher_id: str,
              batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
    """The teacher's pooled embeddings of ``examples`` on its own tokens: ``(N, D)``, or ``(N, K, D)``
    per option for multiple choice. Stored fp16 as ``.npy`` (memory-mapped on reuse) under
    ``cache_dir/preembed-<key>``, where the key hashes ``teacher_id`` (e.g. :func:`_dir_fingerprint`),
    every example's id and text, and the tokenisation settings. A stale or broken entry is rebuilt."""
    digest = hashlib.sha256()
    cfg = teacher.config
    digest.update(json.dumps([teacher_id, cfg.pooling, cfg.bidirectional, cfg.max_seq_length, cfg.pair_separator]).encode())
    for e in examples:
        digest.update(json.dumps([e.id, list(e.texts), list(e.options)], ensure_ascii=False).encode())
    key = digest.hexdigest()[:20]
    root = Path(cache_dir) / f"preembed-{key}"
    meta_path, arr_path = root / "meta.json", root / "embeddings.npy"
    if meta_path.exists() and arr_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            arr = np.load(arr_path, mmap_mode="r")
            if meta.get("key") == key and list(arr.shape) == meta["shape"] and meta["ids"] == [e.id for e in examples]:
                return arr
        except (ValueError, OSError, KeyError):
            pass
    order = np.argsort(example_lengths(examples), kind="stable")
    device = next(teacher.parameters()).device
    chunks: dict[int, np.ndarray] = {}
    was_training = teacher.training
    teacher.eval()
    starts = range(0, len(order), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="pre-embed", unit="batch")
    with torch.inference_mode():
        for start in starts:
            idx = order[start:start + batch_size]
            batch = collate_examples(teacher, [examples[i] for i in idx], path="llm")
            inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
            pooled = teacher(**inputs).pooled.float().cpu().numpy().astype(np.float16)
            for j, i in enumerate(idx):
                chunks[int(i)] = pooled[j]
    teacher.train(was_training)
    arr = np.stack([chunks[i] for i in range(len(examples))])
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "embeddings.npy", arr)
    (tmp / "meta.json").write_text(json.dumps({"key": key, "teacher": teacher_id, "shape": list(arr.shape),
                                               "dtype": "float16", "ids": [e.id for e in examples]}))
    shutil.rmtree(root, ignore_errors=True)
    tmp.replace(root)
    return np.load(arr_path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# 3. distillation
# ---------------------------------------------------------------------------------------------
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
    if distill.objective not in ("distill", "ce"):
        raise ValueError(f"objective must be 'distill' or 'ce', not {distill.objective!r}")
    if distill.target_norm not in ("standardize", "none"):
        raise ValueError(f"target_norm must be 'standardize' or 'none', not {distill.target_norm!r}")
    set_seed(args.seed)
    spec, train_ex = _load(task, task.train_split, limit=task.max_train_examples)
    _, val_ex = _load(task, task.eval_split)
    out = Path(args.output_dir)
    if student is None:
        if distill.stage1_model:
            student = MTLLMModel.from_pretrained(distill.stage1_model, is_trainable=True,
                                                 dtype=model_settings.torch_dtype())
        else:
            student = model_settings.build()
    targets = None
    if distill.objective == "distill":
        if not distill.teacher_model:
            raise ValueError("objective=distill needs teacher_model: the directory written by `mtllm finetune` "
                             "(its best/ folder)")
        teacher = MTLLMModel.from_pretrained(distill.teacher_model, dtype=model_settings.torch_dtype())
        if teacher.head is None:
            raise ValueError(f"{distill.teacher_model} has no task head: is it the output of `mtllm finetune`?")
        student.set_head(teacher.config.head_kind, teacher.config.label_names, init_from=teacher.head)
        targets = pre_embed(teacher, train_ex, cache_dir=out / "cache", teacher_id=_dir_fingerprint(distill.teacher_model),
                            batch_size=task.eval_batch_size)
        del teacher
    else:
        student.set_head(_head_kind(spec), spec.label_names)
    _check_labels(train_ex, len(student.config.label_names) if spec.kind != "multiple_choice" else len(train_ex[0].options), "train")

    # what trains
    wanted = {"encoder": False, "projection": distill.train_projection,
              "head": distill.train_head or distill.objective == "ce", "lora": distill.train_lora}
    for name, p in student.named_parameters():
        part = _part(name)
        if part is not None:
            p.requires_grad_(wanted[part])
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: set train_lora, train_projection or train_head to true")

    if targets is not None:
        flat = np.asarray(targets, dtype=np.float32).reshape(-1, targets.shape[-1])
        mean_D = torch.from_numpy(flat.mean(0))
        std_D = torch.from_numpy(flat.std(0)).clamp_min(1e-6) if distill.target_norm == "standardize" else torch.ones_like(mean_D)
    device = next(student.parameters()).device
    lang = task.train_lang
    enc_cache = None
    if distill.cache_encoder_outputs:
        from .encoder_cache import EncoderCache, encoder_input_texts

        enc_cache = EncoderCache(student, encoder_input_texts(student, train_ex), lang=lang, cache_dir=out / "cache",
                                 batch_size=task.eval_batch_size, show_progress=args.progress)

    def collate(indices: list[int]) -> dict[str, Any]:
        batch = collate_examples(student, [train_ex[i] for i in indices], path="encoder", lang=lang)
        if enc_cache is not None:
            batch["encoder_hidden_states"] = enc_cache.states_for(indices, batch["attention_mask"])
        if targets is not None:
            batch["targets"] = torch.from_numpy(np.asarray(targets[np.asarray(indices)], dtype=np.float32))
        return batch

    def loss_fn(m: nn.Module, batch: dict[str, Any]):
        labels = batch.pop("labels")
        target = batch.pop("targets", None)
        batch.pop("n_truncated", None)
        res = m(**batch)
        logits = res.logits.float()
        metrics = {"train_accuracy": (logits.argmax(-1) == labels).float().mean().item()}
        if target is None:
            loss = nn.functional.cross_entropy(logits, labels)
        else:
            mu, sd = mean_D.to(device), std_D.to(device)
            loss = nn.functional.mse_loss((res.pooled.float() - mu) / sd, (target - mu) / sd)
            metrics["mse"] = nn.functional.mse_loss(res.pooled.float(), target).item()
        metrics["loss"] = loss.item()
        return loss, metrics

    best = {"accuracy": -1.0}
    evals: list[dict[str, Any]] = []

    def on_epoch_end(m: nn.Module, epoch: int, step: int) -> dict[str, float]:
        acc = accuracy(m, val_ex, path="encoder", lang=lang, batch_size=task.eval_batch_size)
        evals.append({"epoch": epoch, "step": step, "val_accuracy": acc})
        print(f"[distill] epoch {epoch} step {step}: {lang} {task.eval_split} accuracy {acc:.4f}", flush=True)
        best.update(accuracy=max(best["accuracy"], acc))
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
                   on_epoch_end=on_epoch_end, save_final=lambda m, d: m.save_pretrained(d),
                   config_to_save={"model": asdict(model_settings), "task": asdict(task), "distill": asdict(distill),
                                   "training": asdict(args)})
    summary = {"final_dir": str(result.final_dir), "evals": evals, "steps": result.steps,
               "seconds": round(result.seconds, 2), "n_train": len(train_ex), "trainable": sorted({_part(n) for n in trainable}), "objective": distill.objective,
               "first": result.history[0] if result.history else None,
               "last": result.history[-1] if result.history else None}
    (out / "distill_summary.json").write_text(json.dumps(summary, indent=1))
    return summary

