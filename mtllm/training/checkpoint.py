"""Training checkpoints: crash-safe, verified, small, and exact to resume.

A checkpoint is a folder ``<output_dir>/checkpoints/step-NNNNNNN`` holding

- ``trainables.safetensors``: only the tensors that train (LoRA, projection, head), never the frozen base model
  (under FSDP/DeepSpeed, Accelerate saves the sharded model its own way instead);
- what :meth:`accelerate.Accelerator.save_state` writes besides the model: the optimizer (``optimizer.bin``),
  the fp16 gradient scaler (``scaler.pt``) and, from *every* process, its random states for Python, NumPy,
  the CPU and every accelerator device (``random_states_<rank>.pkl``);
- ``scheduler.pt`` (the schedule is not handed to ``accelerator.prepare``, which would change how it steps);
- ``trainer_state.json``: step, the logged history and the number of processes;
- ``manifest.json`` (written last): size and sha256 of every other file.

The folder is written under a temporary name and renamed when complete (:func:`mtllm._io.atomic_path`), so a
crash leaves the previous checkpoints as they were; a file truncated or altered later fails the manifest and
the previous checkpoint is used instead. Every file is read with ``torch.load(weights_only=True)`` or
safetensors: Accelerate loads its ``.pkl``/``.bin`` files with ``weights_only=True`` (plus NumPy's array
reconstruction, which the NumPy random state needs), so no pickle can run code. (Under FSDP/DeepSpeed the
model and optimizer files are those libraries' own formats.)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import safetensors.torch
import torch
from accelerate.utils import RNG_STATE_NAME, DistributedType, broadcast_object_list
from torch import nn

from mtllm._io import atomic_path, file_sha256
from mtllm.errors import CheckpointError
from mtllm.outputs import CHECKPOINT_DIR, CHECKPOINT_PREFIX, checkpoint_path, list_checkpoints  # noqa: F401 (re-exported)

__all__ = ["CHECKPOINT_DIR", "checkpoint_path", "list_checkpoints", "verify_checkpoint", "latest_valid_checkpoint",
           "save_checkpoint", "load_checkpoint", "prune_checkpoints"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRAINABLES = "trainables.safetensors"
SCHEDULER = "scheduler.pt"
TRAINER_STATE = "trainer_state.json"


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` unless every file listed in the manifest is intact (also when the
    manifest itself is unreadable, or a file vanishes while it is read)."""
    manifest = path / MANIFEST
    if not manifest.exists():
        raise CheckpointError(f"{path}: no {MANIFEST} (the checkpoint was not finished)")
    try:
        entries = json.loads(manifest.read_text())["files"]
        for name, meta in entries.items():
            file = path / name
            if not file.exists() or file.stat().st_size != meta["size"] or file_sha256(file) != meta["sha256"]:
                raise CheckpointError(f"{path}: {name} is missing, truncated or altered (size/sha256 mismatch)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} or file ({type(err).__name__}: {err})") from None


def latest_valid_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; broken ones are reported and skipped."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as err:
            logger.warning("skipping a broken checkpoint: %s; falling back to the previous one", err)
    return None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints (all if ``keep <= 0``) and drop temporaries of killed writers."""
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(output_dir) / CHECKPOINT_DIR).glob(f".{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _trainables_only(accelerator, model: nn.Module) -> Iterator[None]:
    """While open, ``accelerator.save_state``/``load_state`` write and read only ``model``'s trainable
    tensors (``trainables.safetensors``) in place of the full state dicts of the prepared models.

    Under FSDP, DeepSpeed or Megatron-LM, Accelerate saves and loads the (sharded) models itself, before
    these hooks run; they then do nothing."""
    unwrapped = accelerator.unwrap_model(model)
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                               DistributedType.MEGATRON_LM)

    def save_hook(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        if sharded:
            return
        weights.clear()
        if accelerator.is_main_process:
            safetensors.torch.save_file(_trainable_tensors(unwrapped), str(Path(output_dir) / TRAINABLES))

    def load_hook(models: list[nn.Module], input_dir: str) -> None:
        if sharded:
            return
        models.clear()
        saved = safetensors.torch.load_file(str(Path(input_dir) / TRAINABLES))
        params = {name: p for name, p in unwrapped.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(saved))
        if missing:
            raise CheckpointError(f"{input_dir} does not match this model: {len(missing)} trainable tensors "
                                  f"missing (e.g. {missing[:3]}); was it written by another config?")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])

    handles = [accelerator.register_save_state_pre_hook(save_hook),
               accelerator.register_load_state_pre_hook(load_hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _write_into(folder: Path, accelerator, model: nn.Module, scheduler, state: dict[str, Any]) -> None:
    """Every process writes its part into ``folder``; then the main process adds the manifest."""
    with _trainables_only(accelerator, model):
        accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()  # every process has written its random states
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), folder / SCHEDULER)
        (folder / TRAINER_STATE).write_text(json.dumps(dict(state, num_processes=accelerator.num_processes),
                                                       indent=1))
        files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
        with open(folder / MANIFEST) as fh:
            os.fsync(fh.fileno())


def save_checkpoint(accelerator, model: nn.Module, scheduler, path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint of ``model`` (the prepared one), the optimizers and random states of ``accelerator``,
    ``scheduler`` and the JSON ``state`` (``step``, ``history``) to ``path``. Every process must call it.

    Raises :class:`CheckpointError` when it cannot be written (e.g. a full disk); earlier checkpoints are
    untouched and no temporary is left behind."""
    path = Path(path)
    try:
        if accelerator.is_main_process:
            with atomic_path(path) as tmp:
                tmp.mkdir()
                broadcast_object_list([str(tmp)])
                _write_into(tmp, accelerator, model, scheduler, state)
        else:
            tmp = Path(broadcast_object_list([None])[0])
            _write_into(tmp, accelerator, model, scheduler, state)
    except Exception as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"could not write checkpoint {path} ({reason}); the previous checkpoints are untouched — free disk "
            f"space (or point output_dir elsewhere) and rerun with --resume") from err


def load_checkpoint(accelerator, model: nn.Module, scheduler, path: Path) -> dict[str, Any]:
    """Restore ``model``'s trainable tensors, the optimizers, gradient scaler and this process's random
    states (``accelerator.load_state``) and ``scheduler`` from ``path``; return its ``trainer_state``.

    Call it after ``accelerator.prepare``. A checkpoint from another number of processes loads too; processes
    with no saved random states keep theirs (the run continues, but not bit-identical to an uninterrupted one)."""
    path = Path(path)
    verify_checkpoint(path)
    with _trainables_only(accelerator, model):
        accelerator.load_state(str(path))
    scheduler.load_state_dict(torch.load(path / SCHEDULER, map_location="cpu", weights_only=True))
    state = json.loads((path / TRAINER_STATE).read_text())
    if not (path / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl").exists():
        logger.warning("%s holds no random states for process %d (it was written by %s processes): dropout "
                       "continues from fresh draws", path, accelerator.process_index, state.get("num_processes", "?"))
    return state
