"""One training loop for every stage, on HF Accelerate.

What it does for all stages: global batches in a seeded order (optionally grouped by length),
gradient accumulation and multi-process data parallelism (``accelerate launch`` / ``torchrun``) at
a fixed *global* batch size, mixed precision, warmup then the ``lr_scheduler_type`` schedule (linear decay by
default), crash-safe checkpoints
(:mod:`mtllm.training.checkpoint`: trainable tensors, optimizer, scheduler, every process's random states,
data position), exact resume (also with another number of processes, then not bit-exact), NaN/inf
detection, and logs to stdout, ``metrics.jsonl`` and TensorBoard/W&B when installed.

Ctrl-C (SIGINT) while training finishes the current step, writes a checkpoint at it and raises
:class:`~mtllm.errors.TrainingInterrupted` (a :class:`KeyboardInterrupt`): ``--resume`` then continues exactly
as if nothing had happened; a second Ctrl-C stops at once, keeping the checkpoints written so far.
:func:`start_run` claims ``output_dir`` first (:mod:`mtllm.outputs`) and says whether the run resumes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import accelerate
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import LoggerType
from torch import nn
from tqdm.auto import tqdm

from mtllm import device as device_policy  # fast_bf16 looked up at each call (tests patch mtllm.device.fast_bf16)
from mtllm._io import atomic_path, atomic_write_json, atomic_write_text
from mtllm.device import resolve_device
from mtllm.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from mtllm.outputs import check_writable, claim_output_dir, clear_outputs
from mtllm.settings import FRACTION, OUTPUT_DIR, SEED, above, at_least, check_settings, divides
from mtllm.training.checkpoint import (CHECKPOINT_DIR, checkpoint_path, latest_valid_checkpoint, load_checkpoint,
                                       prune_checkpoints, save_checkpoint)

logger = logging.getLogger(__name__)


@dataclass
class TrainingArgs:
    """Optimisation and bookkeeping shared by all stages."""

    output_dir: str = field(default="runs/mtllm",
                            metadata={"help": "Where checkpoints, logs and the final model go.", "check": OUTPUT_DIR})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (LoRA).", "check": above(0)})
    projection_lr: float | None = field(default=None, metadata={"help": "Learning rate of the up-projection (default: "
                                                                        "learning_rate).", "check": above(0)})
    head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the task head (default: "
                                                                  "learning_rate).", "check": above(0)})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay.", "check": at_least(0)})
    warmup_ratio: float = field(default=0.01,
                                metadata={"help": "Fraction of steps of linear warmup.", "check": FRACTION})
    lr_scheduler_type: Literal["linear", "cosine", "constant_with_warmup"] = field(
        default="linear", metadata={"help": "The learning rate after warmup, over max_steps (transformers' "
                                            "schedules of these names): 'linear' decays to 0, 'cosine' decays along "
                                            "a half cosine to 0, 'constant_with_warmup' stays at the peak (e.g. for a "
                                            "run that max_minutes stops, or whose best checkpoint is kept)."})
    max_steps: int | None = field(default=None,
                                  metadata={"help": "Optimizer steps; default: num_epochs over the data.",
                                            "check": at_least(1)})
    num_epochs: float = field(default=1.0,
                              metadata={"help": "Passes over the data when max_steps is not set.", "check": above(0)})
    batch_size: int = field(default=16, metadata={"help": "Global batch: examples per optimizer step, all processes "
                                                          "together.", "check": at_least(1)})
    micro_batch_size: int | None = field(default=None, metadata={"help": "Examples per forward pass per process "
                                                                         "(default: batch_size / processes).",
                                                                 "check": (at_least(1), divides("batch_size"))})
    max_grad_norm: float = field(default=1.0,
                                 metadata={"help": "Gradient clipping norm (0 = off).", "check": at_least(0)})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, data order and dropout.", "check": SEED})
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = field(
        default="no", metadata={"help": "'no', 'bf16' or 'fp16' (Accelerate autocast), or 'auto': bf16 where the "
                                        "device computes it faster than fp32 (a GPU with bf16, a CPU with "
                                        "avx512_bf16/AMX), else 'no' (the choice is printed)."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch texts of similar length together (less "
                                                                  "padding)."})
    log_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps.", "check": at_least(1)})
    max_minutes: float | None = field(default=None, metadata={
        "help": "Time budget of the training loop in minutes (evaluations included; the work before the first step, "
                "such as teacher targets, not): the run stops after the step that reaches it, writes a checkpoint "
                "and its final model, and counts as finished. A resumed run counts the minutes already spent. "
                "The learning-rate schedule still runs over max_steps, so set max_steps to what the budget "
                "affords, or keep the rate flat (lr_scheduler_type constant_with_warmup).", "check": above(0)})
    save_steps: int = field(default=0,
                            metadata={"help": "Checkpoint every N steps (0 = only at the end).", "check": at_least(0)})
    keep_checkpoints: int = field(default=2,
                                  metadata={"help": "How many recent checkpoints to keep.", "check": at_least(1)})
    resume: bool = field(default=False, metadata={"help": "Resume from the newest valid checkpoint in output_dir."})
    overwrite: bool = field(default=False, metadata={"help": "Write into an output_dir that holds a finished or "
                                                             "unfinished run, or files mtllm did not write (the "
                                                             "earlier run's outputs are removed; other files are "
                                                             "kept)."})
    report_to: str = field(default="auto", metadata={"help": "'auto' (TensorBoard/W&B if installed), 'none', or a "
                                                             "tracker name."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self) -> None:
        check_settings(self)
        trackers = ["auto", "none", *(t.value for t in LoggerType)]
        if self.report_to not in trackers:
            raise ConfigError(f"report_to must be one of {', '.join(trackers)}, not {self.report_to!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingArgs":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


def _is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (or a single process), before any Accelerator exists."""
    return int(os.environ.get("RANK", "0")) == 0


def start_run(args: TrainingArgs, stage: str) -> Path | None:
    """Claim ``args.output_dir`` for a run and return the checkpoint it resumes from (None: a fresh run).

    With ``resume`` and a valid checkpoint, the run continues it (:func:`train` loads the same one). Otherwise
    it is a fresh run, exactly as without ``resume``: the folder must pass :func:`mtllm.outputs.claim_output_dir`
    (no finished run, no unfinished one, no foreign files, unless ``overwrite``) and what an earlier run wrote
    there is removed, so that no stale checkpoint, ``initial/`` or ``best/`` is taken for this run's. Call it
    before any work, on every process."""
    out = Path(args.output_dir)
    ckpt = latest_valid_checkpoint(out) if args.resume and out.is_dir() else None
    if ckpt is not None:
        check_writable(out)  # a resumed run writes checkpoints and final/ there too
    else:
        claim_output_dir(out, overwrite=args.overwrite, resume=args.resume)
        if _is_main_process():
            removed = clear_outputs(out)
            if removed and args.overwrite:
                logger.info(f"[{stage}] --overwrite: removed the earlier run's {', '.join(removed)} from {out}")
    return ckpt


class _StopRequest:
    """While open, the first Ctrl-C (SIGINT) only sets :attr:`requested`: the loop finishes its step, writes a
    checkpoint and stops. The handler is then taken down, so a second Ctrl-C interrupts at once. Only in the
    main thread, and not where SIGINT is ignored (e.g. ``nohup``)."""

    def __init__(self, stage: str):
        self.stage, self.requested, self._previous = stage, False, None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        # os.write: a print could re-enter a stream the interrupted code was writing to
        os.write(2, f"\n[{self.stage}] Ctrl-C: finishing this step, then writing a checkpoint (Ctrl-C again to stop "
                    f"at once, without one)\n".encode())

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) not in (
                signal.SIG_IGN, None):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ---------------------------------------------------------------------- batching
def batch_order(n_examples: int, batch_size: int, *, epoch: int, seed: int,
                lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Global batches of example indices for one epoch, the same on every process.

    With ``lengths``, examples are shuffled, cut into windows of 64 batches, sorted by length
    inside each window and the batches shuffled again: padding drops while the order stays random.
    The last, incomplete batch is dropped so that every step has exactly ``batch_size`` examples.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_examples, generator=gen).tolist()
    if lengths is not None:
        window = batch_size * 64
        perm = [i for s in range(0, len(perm), window)
                for i in sorted(perm[s:s + window], key=lambda j: lengths[j])]
    batches = [perm[s:s + batch_size] for s in range(0, len(perm) - batch_size + 1, batch_size)]
    if lengths is not None:
        order = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in order]
    return batches


# ---------------------------------------------------------------------- the loop
@dataclass
class StageResult:
    final_dir: Path
    steps: int
    history: list[dict[str, float]]
    seconds: float
    #: Why the loop ended before max_steps: "max_minutes" (the time budget), "patience" (``stop_when``), or None.
    stopped_by: str | None = None


def total_steps(args: TrainingArgs, n_examples: int) -> int:
    """The optimizer steps of a run: ``max_steps``, else ``num_epochs`` over ``n_examples`` in full batches."""
    return args.max_steps or max(1, math.ceil(args.num_epochs * (n_examples // args.batch_size)))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trackers(report_to: str) -> list[str]:
    if report_to == "none":
        return []
    if report_to != "auto":
        return [report_to]
    found = []
    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        try:
            __import__(module)
            if name == "wandb" and not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
                continue
            found.append(name)
        except ImportError:
            pass
    return found


def make_accelerator(args: TrainingArgs):
    """An :class:`accelerate.Accelerator` for ``args`` on the device of the one device policy,
    :func:`mtllm.device.resolve_device` (``$MTLLM_DEVICE``, else cuda, else mps, else cpu): Accelerate
    is asked for the CPU exactly when the policy says CPU, picks the GPU itself otherwise (``cuda:LOCAL_RANK``
    per process under ``torchrun``/``accelerate launch``), and a disagreement is a ConfigError. On the
    CPU, several processes use DDP over gloo."""
    device = resolve_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # a single process's "cuda" in Accelerate is the current device
    mixed_precision = args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if device_policy.fast_bf16(device) else "no"
        logger.info(f"[train] mixed_precision auto -> {mixed_precision!r} on {device}")
    accelerator = accelerate.Accelerator(mixed_precision=mixed_precision, log_with=_trackers(args.report_to) or None,
                              project_dir=str(args.output_dir), cpu=device.type == "cpu")
    if resolve_device(accelerator.device) != device:
        raise ConfigError(f"the device policy says {device} ($MTLLM_DEVICE={os.environ.get('MTLLM_DEVICE')!r}), "
                          f"but Accelerate runs on {accelerator.device}: training can only run where Accelerate "
                          f"puts it; set MTLLM_DEVICE to cpu, cuda[:N] or mps, or unset it")
    return accelerator


def train(
    *,
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    n_examples: int,
    collate: Callable[[list[int]], dict[str, Any]],
    loss_fn: Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]],
    args: TrainingArgs,
    stage: str,
    lengths: Sequence[int] | None = None,
    save_final: Callable[[nn.Module, Path], None] | None = None,
    config_to_save: dict[str, Any] | None = None,
    accelerator=None,
    on_epoch_end: Callable[[nn.Module, int, int], dict[str, float]] | None = None,
    eval_steps: int | None = None,
    stop_when: Callable[[Sequence[dict[str, Any]]], bool] | None = None,
    on_step_start: Callable[[int, Sequence[dict[str, Any]], float], None] | None = None,
    resume_from: Path | None | Literal["find"] = "find",
) -> StageResult:
    """Train ``param_groups`` of ``model`` on ``n_examples`` examples.

    ``collate(indices)`` builds a micro-batch (tensors on CPU); ``loss_fn(model, batch)`` returns the
    mean loss over the micro-batch and metrics to log (averaged over the step). Checkpoints hold only
    the trainable tensors (``requires_grad``), so they stay small for LoRA. ``on_epoch_end(model,
    epoch, step)`` runs on the main process after every epoch (and the last step), e.g. to evaluate
    and keep the best model; what it returns is logged with that step; with ``eval_steps`` it runs every
    ``eval_steps`` steps instead (and at the last one). ``stop_when(history)``, asked after each of those
    evaluations on every process, ends the run early (``stopped_by="patience"``): a pure function of the history, so
    a resumed run stops where an uninterrupted one would. ``args.max_minutes`` ends it after the step that
    reaches the budget (``stopped_by="max_minutes"``), with a checkpoint there. ``on_step_start(step, history,
    seconds)`` is told the 0-based index of every step before its batches are built, the records of the steps before
    it and the loop's seconds so far (resumed runs included), e.g. to switch a schedule of objectives; a resumed run
    tells it the same indices and history an uninterrupted one would. With ``args.resume``, the run continues
    from ``resume_from`` (what :func:`start_run` returned; by default the newest valid checkpoint).
    """
    from transformers import get_scheduler  # slow: transformers.optimization, only when training

    out = Path(args.output_dir)
    accelerator = accelerator or make_accelerator(args)
    world = accelerator.num_processes
    micro = args.micro_batch_size or max(1, args.batch_size // world)
    if args.batch_size % (micro * world):
        raise ConfigError(f"batch_size {args.batch_size} is not a multiple of micro_batch_size {micro} x "
                         f"{world} processes; change batch_size or micro_batch_size")
    accum = args.batch_size // (micro * world)
    if n_examples < args.batch_size:
        raise ConfigError(f"{stage}: only {n_examples} examples for a batch of {args.batch_size}; "
                         f"lower batch_size or add data")
    steps_per_epoch = n_examples // args.batch_size
    max_steps = total_steps(args, n_examples)

    set_seed(args.seed)
    optimizer = torch.optim.AdamW(param_groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=int(args.warmup_ratio * max_steps),
                              num_training_steps=max_steps)

    model, optimizer = accelerator.prepare(model, optimizer)
    step, history, spent_before = 0, [], 0.0
    if args.resume:
        ckpt = latest_valid_checkpoint(out) if resume_from == "find" else resume_from
        if ckpt is not None:
            state = load_checkpoint(accelerator, model, scheduler, ckpt)
            step, history = state["step"], state.get("history", [])
            spent_before = float(state.get("train_seconds", 0.0))
            if accelerator.is_main_process:
                logger.info(f"[{stage}] resumed from {ckpt} at step {step}")
                if state.get("num_processes", world) != world:
                    logger.info(f"[{stage}] the checkpoint was written by {state['num_processes']} processes, this run "
                          f"has {world}: same global batches, but not bit-identical to an uninterrupted run")
        elif accelerator.is_main_process:
            logger.info(f"[{stage}] --resume: no valid checkpoint in {out / CHECKPOINT_DIR}; starting fresh")
    trackers = bool(accelerator.log_with)
    if trackers:
        accelerator.init_trackers(stage, config={k: v for k, v in asdict(args).items() if v is not None})
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if config_to_save is not None:
            atomic_write_json(out / f"{stage}_config.json", config_to_save, indent=1, default=str)
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        _truncate_metrics(metrics_path, step)

    bar = None
    if args.progress and accelerator.is_main_process:
        bar = tqdm(total=max_steps, initial=step, desc=stage, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    model.train()
    rank, device = accelerator.process_index, accelerator.device
    epoch_batches: dict[int, list[list[int]]] = {}
    saved_at = step if step else None  # the step of the newest checkpoint of this run
    stopping, stopped_by = False, None

    def spent() -> float:
        return spent_before + time.perf_counter() - t0

    def checkpoint() -> None:
        _save_checkpoint(accelerator, model, optimizer, scheduler, out, step, history, args.keep_checkpoints,
                         train_seconds=spent())
    with _StopRequest(stage) as stop:
        try:
            while step < max_steps:
                epoch, pos = divmod(step, steps_per_epoch)
                if epoch not in epoch_batches:
                    epoch_batches = {epoch: batch_order(n_examples, args.batch_size, epoch=epoch, seed=args.seed,
                                                        lengths=lengths if args.group_by_length else None)}
                global_batch = epoch_batches[epoch][pos]
                if on_step_start is not None:
                    on_step_start(step, history, _max_over_processes(accelerator, spent()))
                mine = global_batch[rank * micro * accum:(rank + 1) * micro * accum]
                sums: dict[str, float] = {}
                for k in range(accum):
                    batch = collate(mine[k * micro:(k + 1) * micro])
                    batch = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
                    sync = k == accum - 1
                    ctx = accelerator.no_sync(model) if not sync and world > 1 else _null()
                    with ctx, accelerator.autocast():
                        loss, metrics = loss_fn(model, batch)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"{stage}: loss is {loss.item()} at step {step + 1} (epoch {epoch}, batch {pos}, "
                            "micro-batch "
                            f"{k}, examples {mine[k * micro:(k + 1) * micro][:8]}...). Nothing was saved from this "
                            "step; "
                            f"the last good checkpoint is {latest_valid_checkpoint(out)}. Lower the learning rate or "
                            f"check these examples, then rerun with --resume.")
                    accelerator.backward(loss / accum)
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + float(value) / accum
                if args.max_grad_norm:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if world > 1:
                    reduced = accelerator.reduce(torch.tensor(list(sums.values()), device=device), reduction="mean")
                    sums = dict(zip(sums, reduced.tolist()))
                record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **sums,
                          "elapsed_s": round(time.perf_counter() - t0, 3)}
                out_of_time = args.max_minutes is not None and _any_process(accelerator,
                                                                            spent() >= 60 * args.max_minutes)
                last = step == max_steps or out_of_time
                due = step % eval_steps == 0 if eval_steps else step % steps_per_epoch == 0
                evaluated = on_epoch_end is not None and (due or last)
                if evaluated:
                    if accelerator.is_main_process:
                        record.update(on_epoch_end(accelerator.unwrap_model(model), math.ceil(step / steps_per_epoch),
                                                   step))
                        model.train()
                    accelerator.wait_for_everyone()
                if evaluated and stop_when is not None and step < max_steps and _any_process(
                        accelerator, stop_when([*history, record]) if accelerator.is_main_process else False):
                    stopped_by = record["stopped_by"] = "patience"
                elif out_of_time and step < max_steps:
                    stopped_by = record["stopped_by"] = "max_minutes"
                history.append(record)
                if accelerator.is_main_process:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    if trackers:
                        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.4g}" for k, v in sums.items()})
                    if step % args.log_steps == 0 or step == max_steps:
                        text = " ".join(f"{k}={v:.4g}" for k, v in sums.items())
                        logger.info(f"[{stage}] step {step}/{max_steps} {text} lr={record['lr']:.3g}")
                if stopped_by is not None:
                    checkpoint()
                    saved_at = step
                    if accelerator.is_main_process:
                        logger.info(f"[{stage}] stopping at step {step}/{max_steps}: " + (
                            f"the time budget of {args.max_minutes:g} min is spent" if stopped_by == "max_minutes"
                            else "no improvement in the last evaluations"))
                    break
                if args.save_steps and step % args.save_steps == 0 and step < max_steps:
                    checkpoint()
                    saved_at = step
                if _any_process(accelerator, stop.requested):
                    stopping = True
                    break
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        final_dir = out / "final"
        unwrapped = accelerator.unwrap_model(model)
        accelerator.wait_for_everyone()
        if not stopping and accelerator.is_main_process and save_final is not None:
            with atomic_path(final_dir) as tmp:  # final/ appears complete or not at all
                save_final(unwrapped, tmp)
            logger.info(f"[{stage}] saved {final_dir}")
        if stopping or _any_process(accelerator, stop.requested):  # also a Ctrl-C during the last step's end
            if saved_at != step:
                checkpoint()
            if trackers:
                accelerator.end_training()
            raise TrainingInterrupted(f"{stage} stopped by Ctrl-C after step {step}/{max_steps}; checkpoint "
                                      f"{checkpoint_path(out, step)}", step=step,
                                      checkpoint=str(checkpoint_path(out, step)))
    if trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return StageResult(final_dir=final_dir, steps=step, history=history, seconds=seconds, stopped_by=stopped_by)


def _save_checkpoint(accelerator, model, optimizer, scheduler, out: Path, step: int, history, keep: int, *,
                     train_seconds: float = 0.0) -> None:
    """Checkpoint ``step`` under ``out`` (every process calls this) and keep the ``keep`` newest.

    ``model`` and ``optimizer`` are the ones ``accelerator.prepare`` returned: Accelerate saves the optimizers
    it prepared, so an optimizer it does not know would silently be left out."""
    if not isinstance(optimizer, AcceleratedOptimizer):
        raise TypeError("pass the optimizer returned by accelerator.prepare: only that one is checkpointed")
    accelerator.wait_for_everyone()
    save_checkpoint(accelerator, model, scheduler, checkpoint_path(out, step),
                    {"step": step, "history": history, "train_seconds": round(train_seconds, 3)})
    if accelerator.is_main_process:
        prune_checkpoints(out, keep)
    accelerator.wait_for_everyone()


def epoch_evals(history: Sequence[dict[str, Any]], key: str = "val_accuracy") -> list[dict[str, Any]]:
    """The end-of-epoch evaluations (``on_epoch_end``'s ``key``) of a run's history, resumed parts included:
    ``[{"epoch": .., "step": .., key: ..}]``, each step once."""
    # a record's epoch is that of the step's batches (0-based); on_epoch_end got ceil(step / steps_per_epoch)
    return [{"epoch": r["epoch"] + 1, "step": r["step"], key: r[key]} for r in history if key in r]


def _any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` is set on any process (every process must call this at the same point)."""
    if accelerator.num_processes == 1:
        return flag
    return accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item() > 0


def _max_over_processes(accelerator, value: float) -> float:
    """The largest ``value`` of all processes, so a decision on it is the same everywhere (every process must call
    this at the same point)."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(torch.tensor([float(value)], device=accelerator.device), reduction="max").item()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (those a resumed run does not redo); drop the
    rest, and a line cut short by a crash. Step 0 removes the file."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if kept:
        atomic_write_text(path, "\n".join(kept) + "\n")
    else:
        path.unlink()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
