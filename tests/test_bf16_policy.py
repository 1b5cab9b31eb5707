"""The bf16 policy: ``auto`` picks bfloat16 only where the device computes it faster than float32."""
from __future__ import annotations

import platform
import re

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
    """The reader returns this machine's flags as /proc/cpuinfo lists them (read here on their own): not an
    empty set where there are flags, so the bf16 flags' presence or absence is this CPU's."""
    flags = device_mod._cpu_flags()
    assert isinstance(flags, set)
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    listed = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    if listed is None:  # e.g. ARM, whose "Features" lines list no x86 bf16 flag
        assert flags == set()
        return
    expected = set(listed.group(1).split())
    assert expected, "/proc/cpuinfo has an empty flags line"
    assert flags == expected
    if platform.machine() in ("x86_64", "AMD64"):
        assert {"sse2", "fpu"} <= flags  # every x86-64 CPU has them
    for flag in device_mod.CPU_BF16_FLAGS:
        assert (flag in flags) == (re.search(rf"^flags\s*:.*\b{flag}\b", text, re.MULTILINE) is not None)


def test_unknown_dtype_names_auto_among_the_choices():
    from mtllm.errors import ConfigError

    with pytest.raises(ConfigError, match="float32, bfloat16, float16 or auto"):
        parse_dtype("bf16")


@pytest.mark.parametrize("fast, expected", [(False, "no"), (True, "bf16")])
def test_mixed_precision_auto_resolves_before_accelerate_sees_it(monkeypatch, tmp_path, fast, expected, caplog):
    import accelerate

    from mtllm.training.loop import TrainingArgs, make_accelerator

    seen = {}

    class FakeAccelerator:  # Accelerate keeps one process-wide state: record what it would be given instead
        device = torch.device("cpu")

        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.setattr(device_mod, "fast_bf16", lambda device=None: fast)
    caplog.set_level("INFO", logger="mtllm")  # the library logs the choice (the CLI shows it)
    make_accelerator(TrainingArgs(output_dir=str(tmp_path), mixed_precision="auto", report_to="none"))
    assert seen["mixed_precision"] == expected
    assert f"mixed_precision auto -> {expected!r}" in caplog.text
