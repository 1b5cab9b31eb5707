"""Output folders: what mtllm writes into them, and the one rule that keeps a run from being written over.

The rule (the ``overwrite_output_dir`` convention of HF Transformers), :func:`claim_output_dir`: a command
writes into its ``output_dir`` only when the folder is missing or empty, or holds nothing but the leftovers of
a run killed before its first checkpoint. A folder holding

* a finished run (``final/``, ``best/``, ``results.json``),
* an unfinished run (a checkpoint under ``checkpoints/``: ``--resume`` continues it), or
* any file mtllm does not write (:func:`foreign_entries`)

is refused, before any model loads, with one line naming the folder, what is in it and the way out;
``--overwrite`` writes into it anyway. Files mtllm did not write are never deleted, not even then: a fresh
run removes only the outputs of the earlier one (:func:`clear_outputs`), so that none of them (a stale
checkpoint above all) can be mistaken for the new run's. ``mtllm run`` applies the same rule to its stage
folders (:mod:`mtllm.cli.pipeline`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from mtllm._io import remove_path
from mtllm.errors import ConfigError

__all__ = ["TRAINING_STAGES", "OWN_NAMES", "FINISHED", "KEPT", "foreign_entries", "check_writable", "claim_output_dir",
           "clear_outputs"]

#: The training stages (:func:`mtllm.training.loop.train`'s ``stage``): each writes ``<stage>_config.json``,
#: ``<stage>_summary.json`` and, with TensorBoard, a ``<stage>/`` folder of event files.
TRAINING_STAGES = ("stage1", "finetune", "distill")
#: Every name mtllm writes directly inside an output folder.
OWN_NAMES = frozenset({
    "checkpoints", "final", "initial", "best", "best_score.json", "metrics.jsonl", "cache",  # training
    "results.json", "results.md", "results.png", "partial_results.json",  # evaluation (mtllm.evaluation.partial)
    "stage.json",  # mtllm run's record of a stage
    "stage1_calibration.json",  # stage 1's projection initialisation (mtllm.training.stage1.CALIBRATION_FILE)
    *TRAINING_STAGES, *(f"{s}_config.json" for s in TRAINING_STAGES), *(f"{s}_summary.json" for s in TRAINING_STAGES),
})
#: What a finished run leaves (finetune writes best/ after its first epoch: a model worth keeping too).
FINISHED = ("final", "best", "results.json")
#: What a fresh run keeps of an earlier one: caches are keyed by their inputs, so never stale.
KEPT = frozenset({"cache", "stage.json"})
_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # mtllm._io.atomic_path's temporaries, left by a killed writer
#: Where a training run keeps its checkpoints (``<output_dir>/checkpoints/step-0000010``; written and verified
#: by :mod:`mtllm.training.checkpoint`).
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The finished checkpoint folders of a run, oldest first (unverified)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir()
                   if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                   and p.name[len(CHECKPOINT_PREFIX):].isdigit()),
                  key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _own(name: str) -> bool:
    return name in OWN_NAMES or bool(_TEMPORARY.match(name))


def foreign_entries(folder: str | Path) -> list[str]:
    """The names in ``folder`` that mtllm does not write (sorted; empty when the folder is missing)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if not _own(p.name)) if folder.is_dir() else []


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _checkpoints(folder: Path) -> list[str]:
    return [f"{CHECKPOINT_DIR}/{p.name}" for p in list_checkpoints(folder)]


def check_writable(folder: Path) -> None:
    """Write and remove a probe file in ``folder`` (or, while it does not exist yet, in the nearest folder
    above it that does), so that a read-only or full location is reported before any work, not when
    the first result is saved. Creates nothing."""
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    probe = where / f".mtllm-write-test-{os.getpid()}"
    try:
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"output_dir {folder} is not writable ({err.strerror or err}): choose another "
                          f"output_dir or fix its permissions / free space; nothing was written") from None


def claim_output_dir(folder: str | Path, *, overwrite: bool, resume: bool | None = None) -> None:
    """Raise :class:`~mtllm.errors.ConfigError` unless a new run may write into ``folder`` (see the module).

    ``resume``: None for a command that cannot resume (evaluation); otherwise whether ``--resume`` was given,
    for a run that found no valid checkpoint to resume from (then it starts fresh, under the same rule)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder} is a file, not a folder: choose another output_dir")
    check_writable(folder)
    if overwrite or not folder.is_dir():
        return
    foreign = foreign_entries(folder)
    if foreign:
        raise ConfigError(f"output_dir {folder} holds files mtllm did not write ({_listing(foreign)}): choose another "
                          f"output_dir, or pass --overwrite to write into it anyway (those files are kept)")
    finished = [f"{n}/" if (folder / n).is_dir() else n for n in FINISHED if (folder / n).exists()]
    checkpoints = _checkpoints(folder) if resume is not None else []
    if finished:
        why = " and no valid checkpoint to resume from" if resume else ""
        raise ConfigError(f"output_dir {folder} holds a finished run ({_listing(finished)}){why}: choose another "
                          f"output_dir, or pass --overwrite to replace it")
    if checkpoints and not resume:
        raise ConfigError(f"output_dir {folder} holds an unfinished run (last checkpoint {checkpoints[-1]}): pass "
                          f"--resume to continue it, or --overwrite to start over")


def clear_outputs(folder: str | Path, *, keep: frozenset[str] = KEPT) -> list[str]:
    """Remove what an earlier run of mtllm wrote into ``folder`` (all of :data:`OWN_NAMES` but ``keep``), never
    anything else; return the names removed."""
    folder = Path(folder)
    removed = sorted(p.name for p in folder.iterdir() if _own(p.name) and p.name not in keep) if folder.is_dir() else []
    for name in removed:
        remove_path(folder / name)
    return removed
