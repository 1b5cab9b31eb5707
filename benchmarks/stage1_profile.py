#!/usr/bin/env python
"""Where a stage-1 step's time goes, and its FLOP rate against this machine's matmul peak (issue 20).

    python benchmarks/stage1_profile.py --data-dir ../shared/data              # pocket preset, both depths
    python benchmarks/stage1_profile.py --tiny --steps 3                       # tiny models, seconds

One step = the preset's global batch (``batch_size`` texts, ``micro_batch_size`` per forward) of the preset's
English texts in length-grouped order (:func:`mtllm.training.loop.batch_order`), timed phase by phase with the
product's own code: tokenise (``MTLLMModel.tokenize``), the frozen encoder, the up-projection + LLM forward and
the loss (``stage1_loss`` on precomputed encoder states), backward, optimizer (AdamW, the stage's param
groups). Autocast as ``mixed_precision: auto`` picks. Each configuration (``--layers`` x ``--micro``) runs
``--warmup`` untimed steps, then ``--steps`` timed ones; the table shows medians.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one whole timed step (matmuls: linear layers, LoRA,
projection, and attention where the kernel reports them; elementwise ops not counted). Peak: the best-of-3 n x n
matmul FLOP/s of ``benchmarks/run.py`` in the step's dtype and thread count. The span term of the preset's
objective adds a per-word mean pooling (no matmul); the profile times the pooled term only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import machine_info, matmul_peak  # noqa: E402  (benchmarks/run.py: one peak for every benchmark)

from mtllm import device as device_policy  # noqa: E402
from mtllm.modeling.objectives import stage1_loss, target_stats  # noqa: E402
from mtllm.settings import ModelSettings  # noqa: E402
from mtllm.tasks.texts import load_stage1_texts  # noqa: E402
from mtllm.training.loop import batch_order  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models and the test fixture texts")
    p.add_argument("--data-dir", default="../shared/data", help="local data root (pocket: the preset's texts)")
    p.add_argument("--layers", default="all", help="comma list of student depths k ('all' = L)")
    p.add_argument("--micro", default="4", help="comma list of micro-batch sizes (the preset: 4 of 16)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def build(args):
    if args.tiny:
        settings = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                 max_seq_length=64)
        texts = [t for t in (ROOT / "tests" / "fixtures" / "english.txt").read_text().splitlines() if t.strip()]
        texts = (texts * (1 + 4 * args.batch_size // len(texts)))[:4 * args.batch_size]
    else:
        settings = ModelSettings(encoder="pocket:e5-small", llm="pocket:gemma3-270m", lora_r=16, lora_alpha=32,
                                 lora_dropout=0.05, max_seq_length=128)
        texts = load_stage1_texts(["task:sib200/eng_Latn/train", "task:nusax/eng_Latn/train"],
                                  data_dir=args.data_dir)
    return settings.build(), texts


def one_step(model, texts, batch, micro, targets_ND, stats, optimizer, autocast) -> dict[str, float]:
    t = {"tokenize": 0.0, "encoder": 0.0, "llm_forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    tokens = padded = 0
    for s in range(0, len(batch), micro):
        idx = batch[s:s + micro]
        t0 = time.perf_counter()
        enc = model.tokenize([texts[i] for i in idx])
        tokens += int(enc["attention_mask"].sum())
        padded += enc["attention_mask"].numel()
        t1 = time.perf_counter()
        with torch.no_grad(), autocast():
            states = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        t2 = time.perf_counter()
        with autocast():
            loss, _ = stage1_loss(model, {"input_ids": None, "attention_mask": enc["attention_mask"],
                                          "encoder_hidden_states": states, "targets": targets_ND[idx]},
                                  stats=stats, objective="sequence")
        t3 = time.perf_counter()
        (loss / (len(batch) // micro)).backward()
        t4 = time.perf_counter()
        for key, a, b in (("tokenize", t0, t1), ("encoder", t1, t2), ("llm_forward", t2, t3), ("backward", t3, t4)):
            t[key] += b - a
    t0 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t["optimizer"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["padding"] = 1 - tokens / padded
    return t


def profile(model, texts, *, layers, micro, args, bf16: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from mtllm.training.stage1 import _freeze_upper_layers

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    model.train()
    for p in model.parameters():  # LoRA and projection trainable, as in stage 1
        p.requires_grad_(False)
    for n, p in model.named_parameters():
        if "lora_" in n or n.startswith("projection."):
            p.requires_grad_(True)
    _freeze_upper_layers(model, layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    D = model.config.llm_hidden_size
    targets_ND = torch.randn(len(texts), D)
    stats = target_stats(targets_ND)
    order = batch_order(len(texts), args.batch_size, epoch=0, seed=0, lengths=[len(t) for t in texts])
    rows = []
    with model.llm_depth(layers):
        for i in range(args.warmup + args.steps):
            batch = order[i % len(order)]
            if i == args.warmup:  # count FLOPs over the first timed step's batch, untimed
                with FlopCounterMode(display=False) as counter:
                    one_step(model, texts, batch, micro, targets_ND, stats, optimizer, autocast)
                flops = counter.get_total_flops()
            r = one_step(model, texts, batch, micro, targets_ND, stats, optimizer, autocast)
            if i >= args.warmup:
                rows.append(r)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"layers": layers or model.llm_num_layers, "micro": micro, "seconds": med, "flops_step": flops,
            "flops_per_s": flops / med["total"], "steps_timed": len(rows)}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    model, texts = build(args)
    L = model.llm_num_layers
    bf16 = args.mixed_precision == "bf16" or (args.mixed_precision == "auto"
                                              and device_policy.fast_bf16(torch.device("cpu")))
    peak = matmul_peak(512 if args.tiny else 2048, torch.bfloat16 if bf16 else torch.float32)
    results = []
    for k in [L if x == "all" else int(x) for x in args.layers.split(",")]:
        for micro in [int(x) for x in args.micro.split(",")]:
            r = profile(model, texts, layers=None if k == L else k, micro=micro, args=args, bf16=bf16)
            r["pct_of_peak"] = 100 * r["flops_per_s"] / peak
            results.append(r)
            s = r["seconds"]
            print(f"k={r['layers']:>2}/{L} micro={micro:>2}: step {s['total']:.3f} s (tokenize {s['tokenize']:.3f}, "
                  f"encoder {s['encoder']:.3f}, LLM fwd+loss {s['llm_forward']:.3f}, backward {s['backward']:.3f}, "
                  f"optimizer {s['optimizer']:.3f}); padding {100 * s['padding']:.1f} %; "
                  f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s = {r['pct_of_peak']:.1f} % of the "
                  f"{'bf16' if bf16 else 'fp32'} matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    out = {"machine": machine_info(), "threads": torch.get_num_threads(), "bf16": bf16, "peak_flops": peak,
           "batch_size": args.batch_size, "n_texts": len(texts), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
