"""What transformers' hub kernels (``use_kernels``, on by default from transformers 5.2x when the
``kernels`` package is installed) do to mtllm's models on this machine: which layers they swap, whether
outputs change, and what a training step (stage 1, distillation: forward + backward in train mode) and an
inference batch (evaluation, ``predict``, ``encode``: forward in eval mode) cost, with them on (the
library's default) and off (``mtllm.sources.MODEL_LOAD_KWARGS``, what mtllm loads with).

    python benchmarks/hub_kernels.py --models tiny:gemma3 tiny:xlmr                 # seconds
    python benchmarks/hub_kernels.py --models pocket:gemma3-270m pocket:e5-small    # a few minutes

Both arms load the same folder with ``AutoModel.from_pretrained``; the only difference is
``use_kernels``. Timings are medians of ``--repeats`` after one warm-up, fp32, on this CPU.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time

import torch
from transformers import AutoModel

from mtllm.sources import MODEL_LOAD_KWARGS, resolve_source


def swapped_layers(model: torch.nn.Module) -> list[str]:
    """Modules whose ``forward`` is no longer their class's own (what ``kernelize`` replaces)."""
    return [name for name, module in model.named_modules()
            if getattr(module.forward, "__func__", None) is not None
            and module.forward.__func__ is not type(module).forward]


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(source: str, *, use_kernels: bool, batch: int, length: int, repeats: int) -> dict:
    kwargs = {**MODEL_LOAD_KWARGS, "use_kernels": use_kernels}
    model = AutoModel.from_pretrained(resolve_source(source), dtype=torch.float32, **kwargs)
    torch.manual_seed(0)
    ids_NL = torch.randint(5, min(model.config.vocab_size, 30000), (batch, length))
    mask_NL = torch.ones_like(ids_NL)

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        model(input_ids=ids_NL, attention_mask=mask_NL).last_hidden_state.float().pow(2).mean().backward()

    def infer():
        model.eval()
        with torch.inference_mode():
            return model(input_ids=ids_NL, attention_mask=mask_NL).last_hidden_state

    model.train()  # kernelize runs again on a mode change: count what train mode swapped too
    swapped_train = swapped_layers(model)
    model.eval()
    return {"use_kernels": use_kernels, "model.use_kernels": bool(getattr(model, "use_kernels", False)),
            "swapped_train": swapped_train, "swapped_eval": swapped_layers(model),
            "train_step_s": timed(train_step, repeats), "inference_s": timed(infer, repeats),
            "hidden_eval": infer()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny:gemma3", "tiny:xlmr"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    versions = {name: _version(name) for name in ("torch", "transformers", "kernels")}
    print(f"versions: {versions}; threads {torch.get_num_threads()}; batch {args.batch} x {args.length} tokens")
    rows = []
    for source in args.models:
        on = measure(source, use_kernels=True, batch=args.batch, length=args.length, repeats=args.repeats)
        off = measure(source, use_kernels=False, batch=args.batch, length=args.length, repeats=args.repeats)
        diff = (on.pop("hidden_eval") - off.pop("hidden_eval")).abs().max().item()
        row = {"model": source, "max_abs_diff_eval_hidden": diff, "on": on, "off": off}
        rows.append(row)
        print(f"{source}: kernels on: model.use_kernels={on['model.use_kernels']}, swapped {len(on['swapped_train'])} "
              f"layers in train mode / {len(on['swapped_eval'])} in eval; outputs max |diff| {diff:.3g}; "
              f"train step {on['train_step_s']:.3f} s on vs {off['train_step_s']:.3f} s off; "
              f"inference {on['inference_s']:.3f} s on vs {off['inference_s']:.3f} s off")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "batch": args.batch, "length": args.length, "rows": rows}, f, indent=1)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
