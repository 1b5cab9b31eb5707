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


# ------------------------------------------------------------------------------ inference commands' dtype
def _inference_settings() -> list[type]:
    """Every settings dataclass of the package with a field typed ``InferenceDtype``, found by importing each
    module (not ``__main__``, which would run the CLI)."""
    import dataclasses
    import importlib
    import pkgutil
    import typing

    import mtllm
    from mtllm.settings import InferenceDtype

    def typed(cls, f) -> bool:
        if f.type in ("InferenceDtype", InferenceDtype):
            return True
        try:
            return typing.get_type_hints(cls).get(f.name) == InferenceDtype
        except Exception:  # a hint this module cannot resolve: not written as InferenceDtype either
            return False

    found = []
    for info in pkgutil.walk_packages(mtllm.__path__, "mtllm."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                    and any(typed(obj, f) for f in dataclasses.fields(obj))):
                found.append(obj)
    return found


def test_every_inference_command_defaults_to_dtype_auto_with_one_help():
    """predict, encode and evaluate (and the pipeline's evaluate/retrieval stages, EvaluateSettings) share one
    ``dtype`` field: default ``auto``, the same help, which says what auto picks and how to force float32."""
    import dataclasses

    from mtllm.evaluation.evaluate import EvaluateSettings
    from mtllm.inference import EncodeFileSettings, PredictFileSettings
    from mtllm.settings import inference_dtype_field

    found = _inference_settings()
    assert {PredictFileSettings, EncodeFileSettings, EvaluateSettings} <= set(found)
    shared = inference_dtype_field()
    help_text = shared.metadata["help"]
    assert all(w in help_text for w in ("auto (the default)", "avx512_bf16", "AMX", "GPU", "--dtype float32"))
    for cls in found:
        (f,) = [f for f in dataclasses.fields(cls) if f.name == "dtype"]
        assert f.default == "auto" and dict(f.metadata) == dict(shared.metadata), cls


@pytest.mark.parametrize("command", ["predict", "encode", "evaluate"])
def test_help_states_the_auto_default(command, capsys):
    from mtllm.cli import main

    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("  --dtype "):]
    block = " ".join(block[:block.index("\n  --", 1)].split())  # the --dtype entry, its lines joined
    assert "auto (the default)" in block and "avx512_bf16" in block and block.endswith("default: auto)"), block


def _saved_classifier(path):
    from mtllm import LoraSettings, MTLLMModel

    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                            max_seq_length=64)
    model.set_head("classification", ["neg", "pos"])
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("command, suffix", [("predict", ".jsonl"), ("encode", ".npy")])
def test_predict_and_encode_load_bf16_weights_where_auto_picks_them(command, suffix, monkeypatch, tmp_path, capsys):
    """No --dtype: the job loads the model in bfloat16 where the device computes bf16 natively
    (``mtllm.device.fast_bf16``), else in float32; the progress record keeps the dtype auto resolved to, so a
    rerun continues only with weights of that dtype (--dtype bfloat16 or auto on such a device), and a record
    written with ``auto`` (before it was resolved) still continues."""
    import json

    from mtllm.cli import main
    from mtllm.inference import PROGRESS_SUFFIX
    from mtllm.modeling.model import MTLLMModel

    model_dir = _saved_classifier(tmp_path / "model")
    src = tmp_path / "in.txt"
    src.write_text("the cat sleeps\na dog runs in the park\n", encoding="utf-8")
    real = MTLLMModel.from_pretrained.__func__
    loaded: list[set] = []

    def spy(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        loaded.append({p.dtype for p in model.parameters() if p.is_floating_point()})
        return model

    monkeypatch.setattr(MTLLMModel, "from_pretrained", classmethod(spy))

    def run(out, fast, *extra):
        monkeypatch.setattr(device_mod, "fast_bf16", lambda device=None: fast)
        return main([command, "--model", str(model_dir), "--input", str(src), "--lang", "eng_Latn", "--output",
                     str(out), "--progress", "false", *extra])

    def recorded(out):
        return json.loads(out.with_name(out.name + PROGRESS_SUFFIX).read_text())["settings"]["dtype"]

    bf16_out, fp32_out = tmp_path / f"bf16{suffix}", tmp_path / f"fp32{suffix}"
    assert run(bf16_out, True) == 0 and loaded[-1] == {torch.bfloat16} and recorded(bf16_out) == "bfloat16"
    assert run(fp32_out, False) == 0 and loaded[-1] == {torch.float32} and recorded(fp32_out) == "float32"
    assert run(tmp_path / f"forced{suffix}", True, "--dtype", "float32") == 0 and loaded[-1] == {torch.float32}
    capsys.readouterr()
    n_loads = len(loaded)
    # a rerun whose auto resolves to another dtype: refused, naming the dtypes; the same dtype, however chosen: done
    assert run(bf16_out, False) == 2
    assert "dtype: 'bfloat16' -> 'float32'" in capsys.readouterr().err
    assert run(bf16_out, False, "--dtype", "bfloat16") == 0 and run(fp32_out, False, "--dtype", "float32") == 0
    assert "already complete" in capsys.readouterr().err and len(loaded) == n_loads  # nothing recomputed
    progress = fp32_out.with_name(fp32_out.name + PROGRESS_SUFFIX)
    record = json.loads(progress.read_text())
    record["settings"]["dtype"] = "auto"  # as the record of a run before the dtype was resolved
    progress.write_text(json.dumps(record))
    assert run(fp32_out, True) == 0 and len(loaded) == n_loads


def test_the_evaluation_key_holds_the_dtype_auto_resolves_to(monkeypatch, tmp_path):
    """An interrupted evaluation continues only with weights of the dtype it started with: the key of its partial
    results holds auto resolved (partial results keyed with ``auto`` before still continue)."""
    from mtllm.errors import ConfigError
    from mtllm.evaluation.evaluate import EvaluateSettings
    from mtllm.evaluation.partial import PartialResults, evaluation_key

    settings = EvaluateSettings(output_dir=str(tmp_path))
    assert settings.dtype == "auto"
    keys = {}
    for fast in (True, False):
        monkeypatch.setattr(device_mod, "fast_bf16", lambda device=None, fast=fast: fast)
        keys[fast] = evaluation_key(settings)
    assert keys[True]["dtype"] == "bfloat16" and keys[False]["dtype"] == "float32"
    assert {**keys[True], "dtype": None} == {**keys[False], "dtype": None}  # nothing else differs
    PartialResults.open(tmp_path, keys[True]).add("eng_Latn", {"accuracy": 0.5}, data="d")
    with pytest.raises(ConfigError, match=r"differs \(dtype: 'bfloat16' -> 'float32'\)"):
        PartialResults.open(tmp_path, keys[False])
    assert PartialResults.open(tmp_path, keys[True]).langs.keys() == {"eng_Latn"}
    PartialResults.open(tmp_path, {**keys[True], "dtype": "auto"}, overwrite=True).add("eng_Latn", {}, data="d")
    assert PartialResults.open(tmp_path, keys[False]).langs.keys() == {"eng_Latn"}  # an "auto" key: continues
