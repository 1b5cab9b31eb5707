"""The bf16 policy: ``auto`` picks bfloat16 only where the device computes it faster than float32."""
from __future__ import annotations

import pytest
import torch

from mtllm import device as device_mod
from mtllm.settings import parse_dtype


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512f"}, torch.float32), ({"avx512_bf16"}, torch.bfloat16),
                                             ({"amx_bf16", "amx_tile"}, torch.bfloat16), (set(), torch.float32)])
def test_auto_dtype_on_the_cpu_follows_the_native_bf16_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: flags)
    assert device_mod.fast_bf16("cpu") == (expected == torch.bfloat16)
    assert parse_dtype("auto", "cpu") == expected
    assert parse_dtype("float32", "cpu") == torch.float32 and parse_dtype("bfloat16", "cpu") == torch.bfloat16


def test_cpu_flags_are_read_from_this_machine():
    flags = device_mod._cpu_flags()
    assert isinstance(flags, set)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert ("avx512_bf16" in text) == ("avx512_bf16" in flags)


def test_unknown_dtype_names_auto_among_the_choices():
    from mtllm.errors import ConfigError

    with pytest.raises(ConfigError, match="float32, bfloat16, float16 or auto"):
        parse_dtype("bf16")


@pytest.mark.parametrize("fast, expected", [(False, "no"), (True, "bf16")])
def test_mixed_precision_auto_resolves_before_accelerate_sees_it(monkeypatch, tmp_path, fast, expected, capsys):
    import accelerate

    from mtllm.training.loop import TrainingArgs, make_accelerator

    seen = {}

    class FakeAccelerator:  # Accelerate keeps one process-wide state: record what it would be given instead
        device = torch.device("cpu")

        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.setattr(device_mod, "fast_bf16", lambda device=None: fast)
    make_accelerator(TrainingArgs(output_dir=str(tmp_path), mixed_precision="auto", report_to="none"))
    assert seen["mixed_precision"] == expected
    assert f"mixed_precision auto -> {expected!r}" in capsys.readouterr().out
