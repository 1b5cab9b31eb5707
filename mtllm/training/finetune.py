"""Stage 2a (arXiv 2406.12739, section 3): fine-tune the LLM alone (its own tokens) with a fresh LoRA
and a head on the pooled output, cross-entropy on English task data; the checkpoint with the best
English validation accuracy is kept (``best/``), chosen automatically."""
from __future__ import annotations

import logging
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from mtllm._io import atomic_path, atomic_write_json
from mtllm.data.collate import check_content, collate_examples, example_lengths
from mtllm.modeling.predict import accuracy
from mtllm.modeling.model import MTLLMModel
from mtllm.errors import DataError
from mtllm.errors import UserError
from mtllm.settings import EXISTING_DIR, NON_EMPTY, TASK, ModelSettings, Rule, at_least, check_settings
from mtllm.tasks import (DATA_PREFIX, Examples, check_train_file, data_ref_problem, get_task, load_examples,
                         load_training_data, resolve_data_dir, sample_examples)
from mtllm.tasks.files import TRAIN_SAMPLE_SEED
from mtllm.training.loop import TrainingArgs, epoch_evals, set_seed, start_run, train
from mtllm.modeling.objectives import classification_loss

logger = logging.getLogger(__name__)

__all__ = ["TaskSettings", "run_finetune", "load_selection", "TRAIN_FILE", "TRAIN_FILE_HELP"]


def _train_file(value: str, settings: object) -> str | None:
    task = getattr(settings, "train_task", None) or getattr(settings, "task", None)
    if task is None or task == "retrieval":
        return None
    try:
        if str(value).startswith(DATA_PREFIX) and resolve_data_dir(getattr(settings, "data_dir", None)) is None:
            return data_ref_problem(value)  # without a data directory only its form, as for stage-1 data: sources
        check_train_file(task, value, getattr(settings, "data_dir", None))
    except UserError as err:
        return " ".join(str(err).split())
    return None


#: A training file for the setting's task (``train_task`` where the settings have one, else ``task``): its
#: columns and labels are read and checked (:func:`mtllm.tasks.check_train_file`), before any model loads; a
#: ``data:PATH`` one only by its form while no data directory is set (``mtllm run`` refuses it then, before
#: its first stage).
TRAIN_FILE = Rule("a training file of the task (columns of its kind, its label names)", _train_file, inputs=True)
#: The help of every ``train_file`` setting.
TRAIN_FILE_HELP = ("Training data instead of the task's own: a .csv/.tsv/.jsonl/.parquet file in the columns of the "
                   "task's kind (pair: premise, hypothesis, label; single: text, label; an id column optional), "
                   "labels by the task's label names; data:PATH names a file inside the data directory (e.g. "
                   "data:english-nli/train.tsv). Default: the task's training data (XNLI, AmericasNLI, Kardes-NLU: "
                   "MultiNLI from the hub).")


@dataclass
class TaskSettings:
    """Which task and data a stage-2 command uses."""

    task: str = field(default="sib200", metadata={"help": "Task name (mtllm.tasks.list_tasks()).", "check": TASK})
    data_dir: str | None = field(default=None,
                                 metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub).",
                                           "check": EXISTING_DIR})
    train_lang: str = field(default="eng_Latn", metadata={"help": "Language of the training data (FLORES-200)."})
    train_file: str | None = field(default=None, metadata={"help": TRAIN_FILE_HELP, "check": TRAIN_FILE})
    train_split: str = field(default="train", metadata={"help": "Split to train on.", "check": NON_EMPTY})
    eval_split: str = field(default="validation", metadata={"help": "Split for model selection.", "check": NON_EMPTY})
    max_train_examples: int | None = field(default=None, metadata={
        "help": "Train on at most this many training examples: a fixed-seed random sample stratified by label (seed "
                "0, the same examples in every stage and run), not the first rows. Default: all.",
        "check": at_least(1)})
    max_eval_examples: int | None = field(default=None, metadata={
        "help": "Select the model (best epoch) on at most this many examples of eval_split: a fixed-seed random "
                "sample stratified by label (seed 0, the same examples every epoch and in every stage). Default: "
                "all of them.", "check": at_least(1)})
    eval_batch_size: int = field(default=32,
                                 metadata={"help": "Batch size for evaluation and pre-embedding.",
                                           "check": at_least(1)})

    def __post_init__(self) -> None:
        check_settings(self)


def _load(task: TaskSettings, split: str, lang: str | None = None, limit: int | None = None):
    """``split`` of the task in ``lang`` (default: ``train_lang``); ``limit``: at most this many, a fixed-seed sample
    stratified by label (:func:`mtllm.tasks.sampling.sample_examples`), not the first rows."""
    spec = get_task(task.task)
    if split == "train" and lang is None:  # the train_file, else e.g. English XNLI for AmericasNLI
        examples = load_training_data(spec, train_file=task.train_file, lang=task.train_lang, data_dir=task.data_dir,
                                      limit=limit)
    else:
        examples = load_examples(spec, lang or task.train_lang, split, data_dir=task.data_dir)
        if limit is not None and len(examples) > limit:
            examples = Examples(sample_examples(examples, limit, seed=TRAIN_SAMPLE_SEED), report=examples.report)
    return spec, examples


def load_selection(task: TaskSettings) -> tuple[Any, list[Any], dict[str, Any]]:
    """The examples a stage selects its model on: ``eval_split`` in ``train_lang``, at most ``max_eval_examples``
    of them (a fixed-seed sample stratified by label, the same every epoch). Returns ``(spec, examples, record)``;
    ``record`` goes into the stage's summary: ``n_val`` (examples used), ``n_val_available`` (in the split),
    ``max_eval_examples``, and when it cut the split the ``val_labels`` counts and ``val_sample`` (how)."""
    spec, every = _load(task, task.eval_split)
    examples = every
    record: dict[str, Any] = {"n_val": len(every), "n_val_available": len(every),
                              "max_eval_examples": task.max_eval_examples}
    if task.max_eval_examples is not None and len(every) > task.max_eval_examples:
        examples = Examples(sample_examples(every, task.max_eval_examples, seed=TRAIN_SAMPLE_SEED),
                            report=every.report)
        counts = Counter(e.label for e in examples)
        record.update(n_val=len(examples), val_labels={str(k): counts[k] for k in sorted(counts)},
                      val_sample=f"stratified by label, seed {TRAIN_SAMPLE_SEED}")
        logger.info(f"model selection on {len(examples)} of the {len(every)} {task.train_lang} {task.eval_split} "
                    f"examples (max_eval_examples; stratified by label, seed {TRAIN_SAMPLE_SEED})")
    return spec, examples, record


def _head_kind(spec) -> str:
    return "multiple_choice" if spec.kind == "multiple_choice" else "classification"


def _check_labels(examples: Sequence[Any], n_labels: int, where: str) -> None:
    bad = [e.id for e in examples if not 0 <= e.label < n_labels]
    if bad:
        raise DataError(f"{where}: {len(bad)} examples have labels outside the head's {n_labels} classes "
                         f"(e.g. ids {bad[:5]}); the head never saw them. Check the task's label names.")


def run_finetune(model_settings: ModelSettings, task: TaskSettings, args: TrainingArgs, *,
                 model: MTLLMModel | None = None) -> dict[str, Any]:
    """Fine-tune the LLM alone (fresh LoRA + head) on ``task`` in ``task.train_lang``; keep the best
    checkpoint by validation accuracy in ``args.output_dir/best``. Returns a summary."""
    resume_from = start_run(args, "finetune")  # before any work: the output folder may be refused
    set_seed(args.seed)
    spec, train_ex = _load(task, task.train_split, limit=task.max_train_examples)
    _, val_ex, val_record = load_selection(task)
    if model is None:
        model = MTLLMModel.llm_only(
            model_settings.llm, bidirectional=model_settings.bidirectional, lora=model_settings.lora(),
            pooling=model_settings.pooling, load_in_4bit=model_settings.load_in_4bit,
            dtype=model_settings.torch_dtype(), llm_adapters_to_merge=model_settings.llm_adapters_to_merge,
            max_seq_length=model_settings.max_seq_length, attn_implementation=model_settings.attn_implementation)
    model.set_head(_head_kind(spec), spec.label_names)
    check_content(model, train_ex + val_ex, route="llm")  # before any work: every text has a content token
    _check_labels(train_ex, len(spec.label_names) if spec.kind != "multiple_choice" else len(train_ex[0].options),
                  "train")
    out = Path(args.output_dir)
    best_path = out / "best"
    best_file = out / "best_score.json"
    # the best so far of the run this one continues (a fresh run removed best/ and best_score.json)
    best = json.loads(best_file.read_text()) if resume_from is not None and best_file.exists() else {"accuracy": -1.0}

    def on_epoch_end(m: nn.Module, epoch: int, step: int) -> dict[str, float]:
        acc = accuracy(m, val_ex, route="llm", batch_size=task.eval_batch_size)
        logger.info(f"[finetune] epoch {epoch} step {step}: {task.train_lang} {task.eval_split} accuracy {acc:.4f}"
              + (" (best so far)" if acc > best["accuracy"] else ""))
        if acc > best["accuracy"]:
            best.update(accuracy=acc, epoch=epoch, step=step)
            with atomic_path(best_path) as tmp:
                m.save_pretrained(tmp)
            atomic_write_json(best_file, best)
        return {"val_accuracy": acc}

    def collate(indices: list[int]) -> dict[str, Any]:
        return collate_examples(model, [train_ex[i] for i in indices], route="llm")

    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]},
              {"params": head_params, "lr": args.head_lr or args.learning_rate}]
    result = train(model=model, param_groups=[g for g in groups if g["params"]], n_examples=len(train_ex),
                   collate=collate, loss_fn=classification_loss, args=args, stage="finetune",
                   lengths=example_lengths(train_ex), on_epoch_end=on_epoch_end, resume_from=resume_from,
                   save_final=lambda m, d: m.save_pretrained(d),
                   config_to_save={"model": asdict(model_settings), "task": asdict(task), "training": asdict(args)})
    summary = {"best_dir": str(best_path), "best": best, "evals": epoch_evals(result.history), "steps": result.steps,
               "seconds": round(result.seconds, 2), "n_train": len(train_ex), **val_record}
    atomic_write_json(out / "finetune_summary.json", summary, indent=1)
    return summary
