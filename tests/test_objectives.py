"""The objectives are plain functions that the stages and the benchmark share: their values equal the
formulas written out by hand, and the benchmark's naive and optimized paths both call them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mtllm.modeling import objectives as O

ROOT = Path(__file__).resolve().parents[1]


def _targets(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale_D = torch.logspace(-2, 2, d)  # a few outlier dimensions, as in LLM hidden states
    return torch.randn(n, d, generator=g) * scale_D + 3.0, scale_D


def test_sequence_mse_is_mse_of_z_scores_with_the_targets_statistics():
    target_ND, _ = _targets()
    student_ND = target_ND + 0.1 * torch.randn(target_ND.shape, generator=torch.Generator().manual_seed(1))
    stats = O.target_stats(target_ND)
    mean_D, std_D = target_ND.mean(0), target_ND.std(0)  # sample std (N - 1)
    expected = (((student_ND - mean_D) / std_D - (target_ND - mean_D) / std_D) ** 2).mean()
    assert torch.allclose(O.sequence_mse(student_ND, target_ND, stats), expected, rtol=1e-6)
    # population std on request (distillation), raw MSE without standardisation (the paper)
    pop = O.target_stats(target_ND, unbiased=False)
    assert torch.allclose(pop.std_D, target_ND.std(0, unbiased=False))
    raw = O.target_stats(target_ND, standardize=False)
    assert torch.allclose(O.sequence_mse(student_ND, target_ND, raw), ((student_ND - target_ND) ** 2).mean(), rtol=1e-6)


def test_standardisation_weighs_every_dimension_equally():
    target_ND, _ = _targets()
    stats = O.target_stats(target_ND)
    # an error of half a standard deviation costs the same in the smallest and in the largest dimension
    small, big = target_ND.clone(), target_ND.clone()
    small[:, 0] += 0.5 * stats.std_D[0]
    big[:, -1] += 0.5 * stats.std_D[-1]
    a, b = O.sequence_mse(small, target_ND, stats), O.sequence_mse(big, target_ND, stats)
    d = target_ND.shape[1]
    assert a.item() == pytest.approx(0.25 / d, rel=1e-4) and b.item() == pytest.approx(0.25 / d, rel=1e-4)
    raw = O.target_stats(target_ND, standardize=False)
    assert O.sequence_mse(big, target_ND, raw) > 1e6 * O.sequence_mse(small, target_ND, raw)


def test_regression_metrics_fvu_is_one_for_the_mean_predictor_and_zero_for_a_perfect_one():
    target_ND, _ = _targets()
    stats = O.target_stats(target_ND)
    mean_ND = target_ND.mean(0).expand_as(target_ND)
    m = O.regression_metrics(mean_ND, target_ND, stats)
    n = target_ND.shape[0]
    assert m["fvu"] == pytest.approx((n - 1) / n, rel=1e-5)  # population vs sample variance
    assert O.regression_metrics(target_ND, target_ND, stats) == {"mse": 0.0, "fvu": 0.0}


def test_stats_follow_the_student_to_its_device():
    target_ND, _ = _targets()
    stats = O.target_stats(target_ND)
    meta = torch.empty(target_ND.shape, device="meta")
    assert O.standardize(meta, stats).device.type == "meta"  # no device-mismatch error


def test_stage1_loss_on_a_model_equals_the_formula(tiny_model, english_texts):
    model = tiny_model
    batch = model.tokenize(english_texts[:4], route="encoder")
    target_ND = torch.randn(4, model.config.llm_hidden_size, generator=torch.Generator().manual_seed(0))
    stats = O.target_stats(torch.cat([target_ND, target_ND + 1]))
    with torch.no_grad():
        loss, metrics = O.stage1_loss(model,
                                      {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                                              "targets": target_ND}, stats=stats)
        pooled_ND = model(batch["input_ids"], batch["attention_mask"]).pooled.float()
    z = lambda x: (x - stats.mean_D) / stats.std_D  # noqa: E731
    assert loss.item() == pytest.approx(((z(pooled_ND) - z(target_ND)) ** 2).mean().item(), rel=1e-5)
    assert metrics["mse"] == pytest.approx(((pooled_ND - target_ND) ** 2).mean().item(), rel=1e-5)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("mtllm_benchmark_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_paths_train_on_the_products_objectives(tmp_path, monkeypatch):
    """Both benchmark paths (naive and optimized) call mtllm.modeling.objectives, never a copy."""
    bench = _load_benchmark()
    calls = {"stage1_loss": 0, "distill_loss": 0}
    for name in calls:
        real = getattr(O, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(O, name, spy, raising=True)
    args = bench.parse_args(["--quick", "--max-texts", "8", "--batch-size", "4", "--epochs", "2",
                             "--max-seq-length", "32", "--threads", "1"])
    model = bench.build_model(args)
    texts, examples, labels, _ = bench.load_data(args, model)
    model.set_head("classification", labels)
    bench.set_distill_trainables(model)
    ctx = {"init": bench.snapshot(model)}
    steps = (8 // 4) * 2
    for opts in (bench.Opts.naive(), bench.Opts()):
        before = dict(calls)
        s1 = bench.stage1_run(model, texts, opts, args, tmp_path / f"s1-{opts.label()}", ctx)
        d = bench.distill_run(model, examples, opts, args, tmp_path / f"d-{opts.label()}", ctx)
        assert calls["stage1_loss"] - before["stage1_loss"] == steps == s1["steps"]
        assert calls["distill_loss"] - before["distill_loss"] == steps == d["steps"]
