"""Issue 20 on tiny models: the layer-k student is the first k layers of the full model, stop-on-evidence keeps
the best checkpoint and resumes exactly, ``max_minutes`` stops cleanly with a checkpoint, and bad values are one
line before any model loads."""
from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtllm.errors import ConfigError
from mtllm.settings import ModelSettings
from mtllm.training import loop
from mtllm.training.checkpoint import latest_valid_checkpoint
from mtllm.training.loop import TrainingArgs
from mtllm.training.stage1 import (Stage1Settings, _targets_key, evaluations_without_progress, full_depth_now,
                                   run_stage1)
from saved_run import max_weight_diff

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "english.txt")
HELD_OUT = ["The river runs past the old mill.", "She bought three apples at the market.",
            "Rain is expected tomorrow in the north.", "The committee approved the new budget.",
            "My brother plays the violin every evening.", "A small dog barked at the passing car."]


def _settings(out: Path, stage1: dict | None = None, **overrides):
    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          max_seq_length=64)
    args = dict(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=12, warmup_ratio=0.1,
                log_steps=10, save_steps=0, seed=0, progress=False, report_to="none")
    args.update(overrides)
    return model, Stage1Settings(data=[DATA], **(stage1 or {})), TrainingArgs(**args)


@pytest.fixture
def held_out(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "held-out.txt"
    path.write_text("\n".join(HELD_OUT) + "\n")
    return str(path)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _interrupted_then_resumed(out: Path, stage1: dict, monkeypatch, *, crash_after: int, **args) -> None:
    """Run stage 1 into ``out``, pre-empted right after its step-``crash_after`` checkpoint, then resume it."""
    real_save = loop._save_checkpoint

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        if a[5] == crash_after:  # the step
            raise KeyboardInterrupt(f"simulated pre-emption after the step-{crash_after} checkpoint")

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(*_settings(out, stage1, **args))
    monkeypatch.setattr(loop, "_save_checkpoint", real_save)
    run_stage1(*_settings(out, stage1, resume=True, **args))


# ------------------------------------------------------------------------------------------ the layer-k student
@pytest.mark.parametrize("route", ["encoder", "llm"])
def test_the_layer_k_student_is_the_first_k_layers_of_the_full_model(tiny_model, route):
    model = tiny_model.eval()
    texts = ["hello world, how are you", "a b c"]
    L = model.llm_num_layers
    with torch.no_grad():
        if route == "llm":
            batch = model.tokenize(texts, route="llm")
            full = model.base_llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True)
            inputs = {"llm_input_ids": batch["input_ids"], "llm_attention_mask": batch["attention_mask"]}
        else:
            batch = model.tokenize(texts)
            embeds, mask = model.project(batch["input_ids"], batch["attention_mask"])
            full = model.base_llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        for k in range(1, L + 1):
            with model.llm_depth(k):
                got = model(**inputs).last_hidden_state
            # layer k's output before the final norm (hidden_states[k]); k = L is the whole model, norm included
            want = full.hidden_states[k] if k < L else full.last_hidden_state
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        full_again = model(**inputs).last_hidden_state  # the context restored the whole LLM
    torch.testing.assert_close(full_again, full.last_hidden_state)
    assert len(list(model.base_llm.layers)) == L and not isinstance(model.base_llm.norm, torch.nn.Identity)


def test_layer_k_stage1_trains_only_the_first_k_layers_and_saves_the_whole_model(tmp_path):
    summary = run_stage1(*_settings(tmp_path, {"student_layers": 1}, max_steps=6))
    assert summary["student_layers"] == 1
    weights = load_file(str(tmp_path / "final" / "adapter" / "adapter_model.safetensors"))
    upper = [k for k in weights if ".layers.1." in k and "lora_B" in k]
    lower = [k for k in weights if ".layers.0." in k and "lora_B" in k]
    assert upper and lower  # the whole LLM's adapter is saved, layers after k included
    assert all(weights[k].abs().max() == 0 for k in upper)  # never trained: still the identity
    assert any(weights[k].abs().max() > 0 for k in lower)
    # the teacher's layer-k targets have their own cache entry (a full-depth run never reads them)
    assert any("teacher-" in p.name for p in (tmp_path / "cache").iterdir())


# ------------------------------------------------------------------------------------------ stop on evidence
def test_evaluations_without_progress_counts_after_the_best():
    hist = [{"step": 1}, {"step": 2, "f": 0.9}, {"step": 3, "f": 0.5}, {"step": 4}, {"step": 5, "f": 0.6},
            {"step": 6, "f": 0.5}]
    assert evaluations_without_progress(hist, "f") == 2  # a tie is no progress
    assert evaluations_without_progress(hist[:3], "f") == 0
    assert evaluations_without_progress([{"step": 1}], "f") == 0


def test_stop_on_evidence_keeps_the_best_checkpoint_as_final(tmp_path, held_out):
    summary = run_stage1(*_settings(tmp_path, {"eval_data": [held_out], "eval_steps": 3}, max_steps=12))
    evals = [(r["step"], r["heldout_fvu"]) for r in _history(tmp_path) if "heldout_fvu" in r]
    assert [s for s, _ in evals] == [3, 6, 9, 12]
    best_step, best_fvu = min(evals, key=lambda e: (e[1], e[0]))
    assert summary["best"] == {"fvu": pytest.approx(best_fvu), "step": best_step}
    assert json.loads((tmp_path / "best_score.json").read_text())["step"] == best_step
    assert max_weight_diff(tmp_path / "best", tmp_path / "final") == 0.0  # final/ is the best (HF convention)


def test_patience_stops_early_and_says_so(tmp_path, held_out, monkeypatch):
    from mtllm.training import stage1 as stage1_module

    fvus = iter([0.5, 0.6, 0.7, 0.4, 0.3])  # the held-out FVU each evaluation sees: best at the first

    monkeypatch.setattr(stage1_module, "alignment_fvu", lambda student, teacher: next(fvus))
    summary = run_stage1(*_settings(tmp_path, {"eval_data": [held_out], "eval_steps": 2, "eval_patience": 2},
                                    max_steps=12))
    assert summary["stopped_by"] == "patience" and summary["steps"] == 6
    assert summary["best"]["step"] == 2
    assert latest_valid_checkpoint(tmp_path).name == "step-0000006"  # a clean stop: checkpoint at the last step
    assert (tmp_path / "final" / "config.json").exists()


def test_stop_on_evidence_resumes_exactly(tmp_path, held_out, monkeypatch):
    stage1 = {"eval_data": [held_out], "eval_steps": 3, "eval_patience": 3}
    run_stage1(*_settings(tmp_path / "full", stage1, max_steps=12, save_steps=3))
    _interrupted_then_resumed(tmp_path / "cut", stage1, monkeypatch, crash_after=6, max_steps=12, save_steps=3)
    full, cut = _history(tmp_path / "full"), _history(tmp_path / "cut")
    assert [r.get("heldout_fvu") for r in cut] == pytest.approx([r.get("heldout_fvu") for r in full], abs=1e-6)
    assert (json.loads((tmp_path / "cut" / "best_score.json").read_text())["step"]
            == json.loads((tmp_path / "full" / "best_score.json").read_text())["step"])
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut" / "final") <= 1e-6


def test_held_out_texts_that_are_training_texts_are_refused(tmp_path):
    with pytest.raises(Exception, match="not training texts"):
        run_stage1(*_settings(tmp_path, {"eval_data": [DATA]}))


# ------------------------------------------------------------------------------------------ max_minutes
def test_max_minutes_stops_cleanly_with_a_checkpoint_and_a_final_model(tmp_path):
    summary = run_stage1(*_settings(tmp_path, max_steps=30, max_minutes=1e-9))
    assert summary["stopped_by"] == "max_minutes" and summary["steps"] == 1
    assert latest_valid_checkpoint(tmp_path).name == "step-0000001"
    state = json.loads((latest_valid_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert state["train_seconds"] > 0
    assert (tmp_path / "final" / "config.json").exists()
    assert _history(tmp_path)[-1]["stopped_by"] == "max_minutes"


def test_a_resumed_run_counts_the_minutes_already_spent(tmp_path, monkeypatch):
    real_save = loop._save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated pre-emption after the first checkpoint")

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(*_settings(tmp_path, max_steps=12, save_steps=2))
    monkeypatch.setattr(loop, "_save_checkpoint", real_save)
    assert latest_valid_checkpoint(tmp_path).name == "step-0000002"
    real_load = loop.load_checkpoint

    def as_if_an_hour_had_passed(*args, **kwargs):
        state = real_load(*args, **kwargs)
        assert state["train_seconds"] > 0  # the checkpoint records the loop's time so far
        return {**state, "train_seconds": 3600.0}

    monkeypatch.setattr(loop, "load_checkpoint", as_if_an_hour_had_passed)
    summary = run_stage1(*_settings(tmp_path, max_steps=12, save_steps=2, max_minutes=30, resume=True))
    assert summary["stopped_by"] == "max_minutes" and summary["steps"] == 3


# ------------------------------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("kind, after_warmup", [
    ("linear", lambda p: 1 - p), ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
    ("constant_with_warmup", lambda p: 1.0)])
def test_the_learning_rate_follows_lr_scheduler_type(tmp_path, kind, after_warmup):
    """Two warmup steps of ten, then the named schedule: each step's logged rate is the one it trained with next."""
    run_stage1(*_settings(tmp_path, max_steps=10, warmup_ratio=0.2, log_steps=1, lr_scheduler_type=kind))
    lrs = {r["step"]: r["lr"] for r in _history(tmp_path) if "lr" in r}
    assert sorted(lrs) == list(range(1, 11))
    assert lrs[1] == pytest.approx(3e-3 / 2)
    for step in range(2, 11):
        assert lrs[step] == pytest.approx(3e-3 * after_warmup((step - 2) / 8), abs=1e-12), (kind, step)


def test_a_flat_schedule_resumes_exactly(tmp_path, monkeypatch):
    args = dict(max_steps=9, save_steps=3, warmup_ratio=0.2, log_steps=1, lr_scheduler_type="constant_with_warmup")
    run_stage1(*_settings(tmp_path / "full", **args))
    _interrupted_then_resumed(tmp_path / "cut", {}, monkeypatch, crash_after=6, **args)
    assert [r["lr"] for r in _history(tmp_path / "cut") if "lr" in r] == \
        [r["lr"] for r in _history(tmp_path / "full") if "lr" in r]
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut" / "final") <= 1e-6


def test_the_default_schedule_leaves_earlier_runs_hashes_as_they_were():
    from mtllm.cli.pipeline import _args_key

    assert "lr_scheduler_type" not in _args_key(TrainingArgs())
    assert "lr_scheduler_type" not in _args_key({"learning_rate": 2e-4})  # a section as written
    assert _args_key(TrainingArgs(lr_scheduler_type="cosine"))["lr_scheduler_type"] == "cosine"


# ------------------------------------------------------------------------------------------ bad values
def test_student_layers_beyond_the_llm_is_one_line_before_any_model_loads(tmp_path, monkeypatch):
    def refuse(self):
        raise AssertionError("a model was built")

    monkeypatch.setattr(ModelSettings, "build", refuse)
    with pytest.raises(ConfigError, match="between 1 and the LLM's 2 decoder layers, not 3") as err:
        run_stage1(*_settings(tmp_path / "run", {"student_layers": 3}))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make", [lambda: Stage1Settings(student_layers=0), lambda: TrainingArgs(max_minutes=-5),
                                  lambda: TrainingArgs(max_minutes=0), lambda: Stage1Settings(eval_patience=0),
                                  lambda: TrainingArgs(lr_scheduler_type="cosine_with_restarts")])
def test_bad_values_are_one_line_errors(make):
    with pytest.raises(ConfigError) as err:
        make()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ layer k, then full depth
def test_a_full_depth_phase_trains_every_layer_and_resumes_exactly(tmp_path, monkeypatch):
    stage1 = {"student_layers": 1, "full_depth_steps": 4}
    run_stage1(*_settings(tmp_path / "full", stage1, max_steps=10, save_steps=3))
    weights = load_file(str(tmp_path / "full" / "final" / "adapter" / "adapter_model.safetensors"))
    assert any(weights[k].abs().max() > 0 for k in weights if ".layers.1." in k and "lora_B" in k)
    # pre-empted after a checkpoint of the layer-k phase: the resumed run switches at step 7 as the full run did
    _interrupted_then_resumed(tmp_path / "cut", stage1, monkeypatch, crash_after=6, max_steps=10, save_steps=3)
    full, cut = _history(tmp_path / "full"), _history(tmp_path / "cut")
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in full], rel=1e-5)
    assert max_weight_diff(tmp_path / "full" / "final", tmp_path / "cut" / "final") <= 1e-6
    # the switch shows in the curve: the full-depth targets are another quantity than layer 1's
    assert full[6]["fvu"] != pytest.approx(full[5]["fvu"], rel=1e-3)


def _records(*seconds: float, full: int = 0) -> list[dict]:
    """A stage-1 history whose steps ended at ``seconds`` (elapsed_s), the last ``full`` of them at full depth."""
    return [{"step": i + 1, "elapsed_s": t, **({"full_depth": 1.0} if i >= len(seconds) - full else {})}
            for i, t in enumerate(seconds)]


def test_full_depth_now_switches_at_its_step_stays_switched_and_reserves_the_time_budget():
    rule = functools.partial(full_depth_now, switch_at=90, full_depth_steps=10, cost_ratio=3.0)
    steps = _records(1.0, 2.0, 3.0, 4.0)  # 1 s per layer-k step: a full-depth step priced at 3 s
    assert not rule(4, history=steps, seconds=4.0, budget_s=None)
    assert rule(90, history=steps, seconds=4.0, budget_s=None)
    assert rule(5, history=_records(1.0, 2.0, full=1), seconds=2.0, budget_s=None)  # once switched, always
    # the budget: 10 full-depth steps cost ~30 s, so the phase starts when 30 s are left, not later
    assert not rule(4, history=steps, seconds=69.0, budget_s=100.0)
    assert rule(4, history=steps, seconds=70.0, budget_s=100.0)
    # a resumed run: elapsed_s restarts at its first step; the step times are still read from the differences
    assert rule(4, history=_records(1.0, 2.0, 0.5, 1.5), seconds=70.0, budget_s=100.0)
    assert not rule(0, history=[], seconds=0.0, budget_s=100.0)


def test_a_time_budget_starts_the_full_depth_phase_early_enough_to_run_it(tmp_path, monkeypatch):
    """max_minutes would stop the run long before max_steps - full_depth_steps: the full-depth phase starts early,
    so it still trains its steps before the budget ends the run (a fake clock: every reading is 10 s later)."""
    clock = itertools.count(0.0, 10.0)
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    summary = run_stage1(*_settings(tmp_path, {"student_layers": 1, "full_depth_steps": 3}, max_steps=60,
                                    max_minutes=10))
    history = _history(tmp_path)
    assert summary["stopped_by"] == "max_minutes" and summary["steps"] < 60 - 3
    full = [r["step"] for r in history if r.get("full_depth")]
    assert len(full) >= 3 and full == list(range(full[0], history[-1]["step"] + 1))  # one phase, then the other
    assert full[0] > 1


def test_full_depth_steps_without_student_layers_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="needs student_layers"):
        run_stage1(*_settings(tmp_path / "run", {"full_depth_steps": 3}))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ teacher-target cache
def test_teacher_target_cache_keys_name_the_compute_precision(tiny_model):
    """Targets computed under bf16 autocast (the held-out ones, where bf16 is fast) must not be served to a later
    fp32 run from the same cache folder: the key records the autocast precision, and the depth."""
    texts = HELD_OUT[:2]
    fp32 = _targets_key(tiny_model, texts)
    assert _targets_key(tiny_model, texts) == fp32  # deterministic
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _targets_key(tiny_model, texts)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert _targets_key(tiny_model, texts) == fp32  # autocast off is fp32
    with tiny_model.llm_depth(1):
        cut = _targets_key(tiny_model, texts)
    assert len({fp32, bf16, cut}) == 3
