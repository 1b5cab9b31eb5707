"""Where models and batches run: the one device policy of every entry point.

:func:`resolve_device` decides: an explicit setting, else ``$MTLLM_DEVICE``, else CUDA when it is
available, else Apple's MPS, else the CPU. Whatever loads a model for a command or the Python API
(:meth:`mtllm.MTLLMModel.from_pretrained`, ``from_encoder_and_llm``, ``llm_only``,
:meth:`mtllm.baselines.translate_test.Translator.from_pretrained`) puts it there with :func:`place`,
and every forward pass moves its batch to the device of the model it runs (:func:`module_device`,
:func:`to_device`; the batched loop is :func:`mtllm.modeling.batching.run_batched`).

Training runs under Accelerate, which places the model itself; :func:`mtllm.training.loop.make_accelerator`
asks it for the CPU exactly when this policy says CPU and checks that both name the same device. Under
``torchrun`` / ``accelerate launch`` every process resolves ``cuda:LOCAL_RANK``, the GPU Accelerate
gives it; without a GPU, several processes still run DDP over gloo on the CPU.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from mtllm.errors import ConfigError

__all__ = ["ENV_VAR", "resolve_device", "module_device", "place", "to_device", "fast_bf16"]

#: Environment variable naming the device when no setting does (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
ENV_VAR = "MTLLM_DEVICE"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``preference`` (a setting) if given, else ``$MTLLM_DEVICE``, else ``cuda``
    if available, else ``mps`` if available, else ``cpu`` (``"auto"`` or empty means "not given").

    CUDA and MPS devices come back with their index (``cuda`` -> ``cuda:LOCAL_RANK`` under a
    multi-process launcher, else the current CUDA device) and the CPU without one, so they compare
    equal to a parameter's ``.device``. Asking for a device this machine does not have is a
    :class:`~mtllm.errors.ConfigError`."""
    source = "the device setting"
    choice: Any = preference
    if choice is None or str(choice) in ("", "auto"):
        source = f"${ENV_VAR}"
        choice = os.environ.get(ENV_VAR, "").strip() or "auto"
    if str(choice) == "auto":
        source = "auto"
        choice = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{source} names the device {choice!r}, which torch does not know: use cpu, cuda, "
                          f"cuda:N or mps (or leave it unset to pick cuda, then mps, then cpu)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{source} asks for {choice!r}, but CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        index = device.index
        if index is None:
            local_rank = os.environ.get("LOCAL_RANK")
            index = int(local_rank) % count if local_rank is not None else torch.cuda.current_device()
        if index >= count:
            raise ConfigError(f"{source} asks for {choice!r}, but this machine has {count} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise ConfigError(f"{source} asks for {choice!r}, but MPS is not available on this machine")
        return torch.device("mps", device.index or 0)
    if device.type == "cpu":
        return torch.device("cpu")  # tensors never carry a CPU index (Accelerate's DDP names cpu:RANK)
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); ``cpu`` if it has neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def place(model: nn.Module, device: str | torch.device | None = None) -> nn.Module:
    """Move ``model`` to :func:`resolve_device` of ``device`` (a no-op when it is all there already,
    e.g. a 4-bit model that its loader put on the GPU). Returns ``model``."""
    target = resolve_device(device)
    if any(t.device != target for t in model.parameters()) or any(t.device != target for t in model.buffers()):
        model.to(target)
    return model


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A copy of ``batch`` with every tensor moved to ``device`` (other values kept as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


#: CPU flags of native bfloat16 arithmetic (Linux ``/proc/cpuinfo``): AVX-512 BF16 (Cooper Lake, Zen 4 and
#: later) and AMX (Sapphire Rapids and later). Without one, torch emulates bf16 on the CPU.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def fast_bf16(device: str | torch.device | None = None) -> bool:
    """Whether bfloat16 is *faster* than float32 on ``device`` (default: :func:`resolve_device`), which
    decides ``mixed_precision: auto`` and ``dtype: auto``: on a CUDA GPU that supports it; on a CPU only with
    native bf16 arithmetic (:data:`CPU_BF16_FLAGS`). Measured on a 2-core AMD EPYC without them: bf16 autocast
    training 12x slower than fp32 and bf16-weight inference 6x slower (RESULTS.md); with ``avx512_bf16`` both
    were about 2x faster (BENCHMARKS.md). Elsewhere (MPS, CPUs without ``/proc/cpuinfo``): ``False``."""
    device = resolve_device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(_cpu_flags() & set(CPU_BF16_FLAGS))
    return False
