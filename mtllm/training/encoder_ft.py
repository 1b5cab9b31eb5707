"""The ``encoder-ft`` baseline's training: the MT-LLM's encoder with a fresh linear head on its mean-pooled states
(:class:`mtllm.modeling.encoder_ft.EncoderFT`), fine-tuned with cross-entropy on the English task data that the
teacher learns from (the same task, ``train_file`` and ``max_train_examples``), best epoch by English validation
accuracy (on at most ``max_eval_examples`` of them), kept in ``output_dir/best``. It is the paper's encoder baseline
(the encoder fine-tuned on the English task), next to the frozen-encoder probe (``encoder``,
:mod:`mtllm.baselines.encoder_probe`), and is evaluated zero-shot like the other systems (``systems: [...,
encoder-ft]``). ``mtllm encoder-ft`` trains it alone; ``mtllm run`` as its ``encoder-ft`` stage.

What trains: full fine-tuning of the encoder's transformer layers and the head; the token embeddings stay frozen
(``train_embeddings: false``, the default). Frozen embeddings keep the words of the languages the English data
never shows where pretraining put them (fine-tuning them on English text moves only the English rows, which pulls
English away from the other languages), and they spare the optimizer most of an XLM-R encoder's parameters
(e5-small: 96 M of its 118 M are the embedding matrix). LoRA is not used: the encoders this baseline is for are
small (e5-small, NLLB-600M's encoder) and full fine-tuning is the paper's protocol.

The stage runs on the one training loop (:func:`mtllm.training.loop.train`: checkpoints, exact resume, Ctrl-C,
mixed precision). Its model reads text through a host MT-LLM built from the run's ``encoder`` and ``llm`` keys
(no LoRA; its LLM is loaded but never run), so its input is the encoder input of the ``mtllm`` system.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mtllm._io import atomic_path, atomic_write_json
from mtllm.data.collate import check_content, example_lengths
from mtllm.modeling.encoder_ft import EncoderFT
from mtllm.modeling.model import MTLLMModel
from mtllm.modeling.objectives import classification_loss
from mtllm.settings import ModelSettings, check_settings
from mtllm.training.finetune import TaskSettings, _check_labels, _head_kind, _load, load_selection
from mtllm.training.loop import TrainingArgs, epoch_evals, set_seed, start_run, train

logger = logging.getLogger(__name__)

__all__ = ["EncoderFTSettings", "run_encoder_ft", "host_model"]


@dataclass
class EncoderFTSettings:
    """The encoder-ft baseline (the encoder + a linear head, fine-tuned on the English task)."""

    train_embeddings: bool = field(default=False, metadata={"help": "Also train the encoder's token embeddings "
                                                                    "(default: frozen; every other encoder weight and "
                                                                    "the head train)."})

    def __post_init__(self) -> None:
        check_settings(self)


def host_model(model_settings: ModelSettings) -> MTLLMModel:
    """The MT-LLM whose tokenisation an :class:`EncoderFT` on ``model_settings``' encoder reads text through
    (built from the same keys as the run's models, without LoRA)."""
    return MTLLMModel.from_encoder_and_llm(
        model_settings.encoder, model_settings.llm, bidirectional=model_settings.bidirectional, lora=None,
        pooling=model_settings.pooling, dtype=model_settings.torch_dtype(),
        llm_adapters_to_merge=model_settings.llm_adapters_to_merge, max_seq_length=model_settings.max_seq_length,
        attn_implementation=model_settings.attn_implementation)


def run_encoder_ft(model_settings: ModelSettings, task: TaskSettings, ft: EncoderFTSettings, args: TrainingArgs, *,
                   host: MTLLMModel | None = None) -> dict[str, Any]:
    """Fine-tune the encoder + a fresh head on ``task`` in ``task.train_lang``; keep the best checkpoint by
    validation accuracy in ``args.output_dir/best`` (:meth:`EncoderFT.save`). ``host``: the MT-LLM to take the
    encoder and tokenisation from (default: built from ``model_settings``; its encoder is trained in place).
    Returns a summary."""
    resume_from = start_run(args, "encoder-ft")  # before any work: the output folder may be refused
    set_seed(args.seed)
    spec, train_ex = _load(task, task.train_split, limit=task.max_train_examples)
    _, val_ex, val_record = load_selection(task)
    if host is None:
        host = host_model(model_settings)
    check_content(host, train_ex + val_ex, route="encoder")  # before any work: every text has a content token
    model = EncoderFT.from_host(host, _head_kind(spec), spec.label_names, train_embeddings=ft.train_embeddings)
    _check_labels(train_ex, len(spec.label_names) if spec.kind != "multiple_choice" else len(train_ex[0].options),
                  "train")
    lang = host.encoder_lang(task.train_lang)
    model.info = {"task": spec.name, "train_lang": task.train_lang, "train_file": task.train_file,
                  "n_train": len(train_ex), "train_embeddings": ft.train_embeddings}
    out = Path(args.output_dir)
    best_path = out / "best"
    best_file = out / "best_score.json"
    best = json.loads(best_file.read_text()) if resume_from is not None and best_file.exists() else {"accuracy": -1.0}
    labels = np.array([e.label for e in val_ex])

    def on_epoch_end(m: nn.Module, epoch: int, step: int) -> dict[str, float]:
        acc = float((m.predict(val_ex, lang=lang, batch_size=task.eval_batch_size) == labels).mean())
        logger.info(f"[encoder-ft] epoch {epoch} step {step}: {task.train_lang} {task.eval_split} accuracy {acc:.4f}"
                    + (" (best so far)" if acc > best["accuracy"] else ""))
        if acc > best["accuracy"]:
            best.update(accuracy=acc, epoch=epoch, step=step)
            with atomic_path(best_path) as tmp:
                m.save(tmp, info={"epoch": epoch, "step": step, "val_accuracy": acc, "val_split": task.eval_split})
            atomic_write_json(best_file, best)
        return {"val_accuracy": acc}

    def collate(indices: list[int]) -> dict[str, Any]:
        return model.collate([train_ex[i] for i in indices], lang=lang)

    head_ids = {id(p) for p in model.head.parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]},
              {"params": list(model.head.parameters()), "lr": args.head_lr or args.learning_rate}]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = train(model=model, param_groups=[g for g in groups if g["params"]], n_examples=len(train_ex),
                   collate=collate, loss_fn=classification_loss, args=args, stage="encoder-ft",
                   lengths=example_lengths(train_ex), on_epoch_end=on_epoch_end, resume_from=resume_from,
                   save_final=lambda m, d: m.save(d),
                   config_to_save={"model": asdict(model_settings), "task": asdict(task), "encoder_ft": asdict(ft),
                                   "training": asdict(args)})
    summary = {"best_dir": str(best_path), "best": best, "evals": epoch_evals(result.history), "steps": result.steps,
               "seconds": round(result.seconds, 2), "n_train": len(train_ex), **val_record,
               "trainable_parameters": trainable}
    atomic_write_json(out / "encoder_ft_summary.json", summary, indent=1)
    return summary
