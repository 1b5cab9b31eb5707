"""Is bfloat16 faster than float32 on this machine? The question behind ``dtype: auto`` and
``mixed_precision: auto`` (:func:`mtllm.device.fast_bf16`).

    python benchmarks/bf16_speed.py [--threads 1] [--size 1024] [--model DIR --texts 64]

Prints the CPU's native-bf16 flags, what :func:`~mtllm.device.fast_bf16` decides, the matmul FLOP/s in both
dtypes, and -- with ``--model`` (a saved MT-LLM, e.g. a stage-1 ``final``) -- sentences/s of
``MTLLMModel.encode`` on SIB-200 Swahili test sentences with float32 and with bfloat16 weights.
"""
from __future__ import annotations

import argparse
import time

import torch


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--model", default=None)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--data_dir", default="../shared/data")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from mtllm.device import CPU_BF16_FLAGS, _cpu_flags, fast_bf16

    flags = _cpu_flags()
    print(f"threads {torch.get_num_threads()}; native bf16 flags present: "
          f"{sorted(set(CPU_BF16_FLAGS) & flags) or 'none'}; fast_bf16('cpu') = {fast_bf16('cpu')}")
    fp32, bf16 = matmul_gflops(torch.float32, a.size), matmul_gflops(torch.bfloat16, a.size)
    print(f"matmul {a.size}^2: float32 {fp32:.1f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.2f}x)")
    if a.model:
        from mtllm.modeling.model import MTLLMModel
        from mtllm.tasks import load_examples

        texts = [e.texts[0] for e in load_examples("sib200", "swh_Latn", "test", data_dir=a.data_dir)][:a.texts]
        for dtype in (torch.float32, torch.bfloat16):
            model = MTLLMModel.from_pretrained(a.model, dtype=dtype, merge_adapters=True)
            model.encode(texts[:8], lang="swh_Latn")
            t = time.perf_counter()
            model.encode(texts, lang="swh_Latn", batch_size=32)
            print(f"encode {dtype}: {len(texts) / (time.perf_counter() - t):.2f} sentences/s")


if __name__ == "__main__":
    main()
