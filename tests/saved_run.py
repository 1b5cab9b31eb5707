"""What a training run saved, read back for comparisons in the tests (imported by several test files)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def saved_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a saved MT-LLM folder: ``model.safetensors`` (projection, head) and, when
    there is one, the LoRA adapter (keys prefixed ``adapter.``)."""
    model_dir = Path(model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    adapter = model_dir / "adapter" / "adapter_model.safetensors"
    if adapter.exists():
        weights.update({f"adapter.{k}": v for k, v in load_file(str(adapter)).items()})
    return weights


def max_weight_diff(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between the saved weights of two model folders (same tensors required)."""
    wa, wb = saved_weights(a), saved_weights(b)
    assert wa.keys() == wb.keys(), (sorted(wa.keys() ^ wb.keys())[:5], a, b)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def metrics_records(out: str | Path) -> list[dict]:
    """The records of ``out/metrics.jsonl``, one per logged step."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
