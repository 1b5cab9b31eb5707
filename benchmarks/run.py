#!/usr/bin/env python
"""Performance benchmark: the project's training/inference paths vs a naive baseline, in one process.

    python benchmarks/run.py                 # pocket models (e5-small + Gemma 3 270M) on CPU
    python benchmarks/run.py --quick         # tiny random models, under a minute
    python benchmarks/run.py --quick --repeats 3 --json out.json
    python benchmarks/run.py --quick --scaling   # time/memory vs #texts and sequence length -> scaling.png

Sections (``--sections``, all by default):

stage1     self-distillation over ``--epochs`` epochs. *optimized* = the math of ``run_stage1``: teacher
           targets computed once per text (``teacher_targets``), frozen-encoder outputs cached
           (``EncoderCache``), length-grouped batches; *naive* = teacher and encoder recomputed every step,
           random batches padded to the longest text of the batch. Same models, texts, batch size,
           steps, optimizer and seed; both see every text once per epoch. Loss: the product's own
           objective (``mtllm.modeling.objectives.stage1_loss``, standardised MSE); the naive path
           gets the target statistics from one uncached teacher pass in its setup.
distill    stage-2 distillation (MSE to the teacher's pooled states, head copied): *optimized* = teacher
           pre-embeddings (``pre_embed``, fp16 memmap) + ``EncoderCache`` + length grouping; *naive* =
           teacher and encoder every step, random batches. Reported per epoch; the headline ratio is
           epochs >= 2 (the caches are built before epoch 1, so it is the steady state).
inference  examples/s of MT-LLM classification vs translate-test (greedy decode of every text with
           ``Translator``, then classification of the translation by the LLM alone), with where the
           time goes (tokenise / encode / decode / classify).
roofline   analytic FLOPs of every run above vs this machine's measured matmul FLOP/s (MFU), with a
           ``FlopCounterMode`` cross-check of one training step and one decode batch.
precision  fp32 vs bf16 (autocast and bf16 weights) for inference and a training step; with ``--compile``
           also ``torch.compile``.
peak       only the matmul FLOP/s peak (part of ``roofline``): training MFU without the inference runs.

Toggles for the optimized path (each measurable on its own): ``--no-target-cache``,
``--no-length-grouping``, ``--no-encoder-cache``, ``--bf16`` (bf16 autocast training via Accelerate,
bf16 weights for inference), ``--compile``; ``--ablations`` runs each of the first three (and bf16 when
on) off in turn.

The last line printed is ``stage1_speedup=<x> distill_speedup=<y> mtllm_vs_translate_test=<z>``
(medians over ``--repeats``); ``--json`` writes every number, per repeat and aggregated.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

POCKET_DATA = ["task:sib200/eng_Latn/train", "task:nusax/eng_Latn/train"]
SECTIONS = ("stage1", "distill", "inference", "roofline", "precision", "peak")
LANG = "eng_Latn"


# =============================================================================================
# configuration
# =============================================================================================
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random models (tiny:xlmr + tiny:gemma3), generated "
                                                        "texts; < 1 min")
    p.add_argument("--encoder", default=None, help="encoder source (default pocket:e5-small; --quick: tiny:xlmr)")
    p.add_argument("--llm", default=None, help="LLM source (default pocket:gemma3-270m; --quick: tiny:gemma3)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                   help="local task data root (pocket data)")
    p.add_argument("--max-texts", type=int, default=None, help="training texts/examples (default 128 pocket, 128 "
                                                               "quick); rounded down to a multiple of the batch size")
    p.add_argument("--infer-texts", type=int, default=None, help="texts for the inference section (default 96 pocket, "
                                                                 "64 quick)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="epochs of stage 1 and distillation (>= 2)")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--repeats", type=int, default=1, help="repeat every section N times; min/median/max are reported")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores; 1 if the load average is already above half the cores)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--no-target-cache", action="store_true", help="optimized path: recompute the teacher every step")
    p.add_argument("--no-length-grouping", action="store_true", help="optimized path: random batches")
    p.add_argument("--no-encoder-cache", action="store_true", help="optimized path: run the frozen encoder every step")
    p.add_argument("--bf16", action="store_true",
                   help="optimized path: bf16 autocast training; inference: bf16 weights")
    p.add_argument("--compile", action="store_true", help="optimized path and precision section: torch.compile (slow "
                                                          "to compile)")
    p.add_argument("--ablations", nargs="?", const="all", default=None, metavar="NAMES",
                   help="also run the optimized path with each optimisation off in turn: all of them, or a comma list "
                        "among target_cache,length_grouping,encoder_cache,bf16")
    p.add_argument("--mt-decoder-layers", type=int, default=12,
                   help="decoder layers of the pocket-shaped random M2M100 (NLLB-600M has 12)")
    p.add_argument("--peak-size", type=int, default=None, help="matrix size for the matmul peak (default 2048; quick "
                                                               "1024)")
    p.add_argument("--scaling", action="store_true", help="time and peak memory vs #texts and vs sequence length (a "
                                                          "subprocess per point) -> PNG")
    p.add_argument("--scaling-png", default=str(ROOT / "benchmarks" / "scaling.png"))
    p.add_argument("--scaling-point", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.encoder = args.encoder or ("tiny:xlmr" if args.quick else "pocket:e5-small")
    args.llm = args.llm or ("tiny:gemma3" if args.quick else "pocket:gemma3-270m")
    args.max_texts = args.max_texts or 128
    args.infer_texts = args.infer_texts or (64 if args.quick else 96)
    args.peak_size = args.peak_size or (1024 if args.quick else 2048)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.ablations not in (None, "all"):
        unknown = sorted(set(n.strip() for n in args.ablations.split(",")) - set(ABLATABLE) - {""})
        if unknown:
            p.error(f"unknown --ablations {unknown}; choose from {','.join(ABLATABLE)} (or give no value for all)")
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (distillation is reported from epoch 2 on)")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


@dataclass
class Opts:
    """Which optimisations a training run uses."""

    target_cache: bool = True
    length_grouping: bool = True
    encoder_cache: bool = True
    bf16: bool = False
    compile: bool = False

    @classmethod
    def naive(cls) -> "Opts":
        return cls(False, False, False, False, False)

    def label(self) -> str:
        off = [n for n in ("target_cache", "length_grouping", "encoder_cache") if not getattr(self, n)]
        on = [n for n in ("bf16", "compile") if getattr(self, n)]
        return ("-" + ",-".join(off) if off else "all caches") + ("" if not on else " +" + ",+".join(on))


# =============================================================================================
# environment, data, models
# =============================================================================================
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
        bf16_isa = [f for f in ("avx512_bf16", "amx_bf16") if f in out]
    except (OSError, subprocess.SubprocessError):
        bf16_isa = []
    import transformers

    return {"nproc": os.cpu_count(), "cpu": cpu, "bf16_isa": bf16_isa, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def generated_texts(n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 40) -> list[str]:
    """``n`` distinct English-ish texts of ``min_words``..``max_words`` words (uniform), from the words
    of the tiny models' training corpus, so the tiny tokenizers know them."""
    from mtllm.sources.tiny import TINY_CORPUS

    words = sorted({w.strip(".,").lower() for s in TINY_CORPUS[:20] for w in s.split() if w.strip(".,").isascii()})
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        k = rng.randint(min_words, max_words)
        text = " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_model(args: argparse.Namespace, dtype: torch.dtype | None = None):
    """The MT-LLM as the presets build it (LoRA r 16, alpha 32, dropout 0.05, all linear layers)."""
    from mtllm.device import place
    from mtllm.modeling.model import MTLLMModel
    from mtllm.settings import ModelSettings

    settings = ModelSettings(encoder=args.encoder, llm=args.llm, max_seq_length=args.max_seq_length)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = MTLLMModel.from_encoder_and_llm(args.encoder, args.llm, lora=settings.lora(), dtype=dtype,
                                                max_seq_length=args.max_seq_length)
    # the whole model on the policy's device before any head is set or swapped (heads follow the LLM's
    # device), as the product's stages do; training then runs there too (fresh_accelerator)
    return place(model)


@dataclass
class Example:  # the fields mtllm.data.collate needs
    id: str
    texts: tuple[str, ...]
    label: int
    options: tuple[str, ...] = ()


def load_data(args: argparse.Namespace, model) -> tuple[list[str], list[Any], list[str], str]:
    """(stage-1 texts, distillation examples, label names, description) -- sizes rounded down to a
    multiple of the batch size so that every epoch visits every example."""
    n = (args.max_texts // args.batch_size) * args.batch_size
    if n < args.batch_size:
        raise SystemExit(f"--max-texts {args.max_texts} is smaller than one batch of {args.batch_size}")
    if args.quick:
        texts = generated_texts(n, max_words=30)
        labels = [f"topic{i}" for i in range(7)]
        rng = random.Random(1)
        examples = [Example(id=str(i), texts=(t,), label=rng.randrange(7))
                    for i, t in enumerate(generated_texts(n, seed=1, max_words=30))]
        return texts, examples, labels, f"{n} generated texts and {n} generated 7-class examples (3-30 words each)"
    from mtllm.tasks.texts import load_stage1_texts
    from mtllm.tasks import get_task, load_examples
    from mtllm.training.stage1 import _fits

    all_texts = load_stage1_texts(POCKET_DATA, data_dir=args.data_dir, fits=_fits(model, args.max_seq_length))
    rng = random.Random(0)
    texts = rng.sample(all_texts, min(n, len(all_texts)))
    n = (len(texts) // args.batch_size) * args.batch_size
    spec = get_task("sib200")
    exs = load_examples(spec, LANG, "train", data_dir=args.data_dir)
    examples = random.Random(0).sample(list(exs), min(n, len(exs)))
    n_ex = (len(examples) // args.batch_size) * args.batch_size
    return (texts[:n], examples[:n_ex], list(spec.label_names),
            f"{n} of {len(all_texts)} stage-1 texts ({' + '.join(POCKET_DATA)}), {n_ex} SIB-200 eng_Latn train "
            "examples")


def infer_texts(args: argparse.Namespace, texts: list[str]) -> list[str]:
    if args.quick:
        return generated_texts(args.infer_texts, seed=7, max_words=30)
    from mtllm.tasks import get_task, load_examples

    exs = load_examples(get_task("sib200"), LANG, "test", data_dir=args.data_dir)
    return [e.texts[0] for e in exs[:args.infer_texts]]


def build_mt_model(args: argparse.Namespace, model):
    """A seq2seq MT model whose encoder has the MT-LLM encoder's shape: ``tiny:m2m100`` for tiny models
    (d 32, 2+2 layers, like tiny:xlmr); for anything else a random M2M100 built here with the
    encoder's d_model / layers / heads / FFN, ``--mt-decoder-layers`` decoder layers and the encoder's
    tokenizer and vocabulary (e5-small: XLM-R's 250k pieces; NLLB's is 256k)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, M2M100Config, M2M100ForConditionalGeneration

    from mtllm.sources import resolve_source

    if args.encoder.startswith("tiny:"):
        path = resolve_source("tiny:m2m100")
        with contextlib.redirect_stdout(io.StringIO()):
            mt = AutoModelForSeq2SeqLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        return mt.eval(), tok, {"src_lang": "fra_Latn", "target_lang": LANG,
                                "what": "tiny:m2m100 (d 32, 2+2 layers, NLLB-style tokenizer)"}
    ec = model.encoder.config
    tok = model.encoder_tokenizer
    torch.manual_seed(0)
    cfg = M2M100Config(
        vocab_size=len(tok), d_model=ec.hidden_size, encoder_layers=ec.num_hidden_layers,
        decoder_layers=args.mt_decoder_layers, encoder_attention_heads=ec.num_attention_heads,
        decoder_attention_heads=ec.num_attention_heads, encoder_ffn_dim=ec.intermediate_size,
        decoder_ffn_dim=ec.intermediate_size, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
        dropout=0.0, attention_dropout=0.0, activation_function="gelu")
    mt = M2M100ForConditionalGeneration(cfg).eval()
    what = (f"random M2M100: d_model {cfg.d_model}, {cfg.encoder_layers} encoder + {cfg.decoder_layers} decoder "
            "layers, "
            f"{cfg.encoder_attention_heads} heads, FFN {cfg.encoder_ffn_dim}, vocabulary {cfg.vocab_size} "
            f"(the encoder's tokenizer), no language tokens")
    return mt, tok, {"src_lang": LANG, "target_lang": None, "what": what}


# =============================================================================================
# FLOP model (analytic)
# =============================================================================================
@dataclass
class Part:
    lin: int = 0        # sum of in*out over the frozen/base nn.Linear weights
    lora: int = 0       # sum of in*out over LoRA A and B
    attn: int = 0       # query heads * head_dim (width of QK^T and AV)
    layers: int = 0

    def fwd(self, n: int, length: int, lora: bool = True) -> float:
        """Matmul FLOPs of a forward pass over ``n`` sequences of ``length`` tokens (full L^2 attention)."""
        return (2.0 * (self.lin + (self.lora if lora else 0)) * n * length
                + 4.0 * self.attn * self.layers * n * length ** 2)

    def train(self, n: int, length: int) -> float:
        """Forward + backward with frozen base weights: activation grads through every linear (~1x the
        forward matmuls), LoRA weight grads, attention backward ~2x its forward."""
        lin = self.lin + self.lora
        return ((2.0 * lin * n * length) * 2 + 2.0 * self.lora * n * length
                + 12.0 * self.attn * self.layers * n * length ** 2)


def linear_sizes(module: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> tuple[int, int]:
    base = lora = 0
    for name, mod in module.named_modules():
        if isinstance(mod, nn.Linear) and not skip(name):
            if "lora_" in name:
                lora += mod.in_features * mod.out_features
            else:
                base += mod.in_features * mod.out_features
    return base, lora


def model_parts(model) -> dict[str, Part]:
    lc = model.base_llm.config
    heads = lc.num_attention_heads
    head_dim = getattr(lc, "head_dim", None) or lc.hidden_size // heads
    llm_lin, llm_lora = linear_sizes(model.llm)
    parts = {"llm": Part(llm_lin, llm_lora, heads * head_dim, lc.num_hidden_layers)}
    if model.encoder is not None:
        ec = model.encoder.config
        enc_lin, _ = linear_sizes(model.encoder)
        parts["encoder"] = Part(enc_lin, 0, getattr(ec, "hidden_size", None) or ec.d_model,
                                getattr(ec, "num_hidden_layers", None) or ec.encoder_layers)
        parts["projection"] = Part(model.config.encoder_hidden_size * model.config.llm_hidden_size, 0, 0, 0)
    return parts


def token_lengths(model, texts: Sequence[str], route: str) -> np.ndarray:
    out = np.zeros(len(texts), dtype=np.int64)
    for s in range(0, len(texts), 256):
        mask = model.tokenize(list(texts[s:s + 256]), lang=LANG if route == "encoder" else None,
                              route=route)["attention_mask"]
        out[s:s + len(mask)] = mask.sum(1).numpy()
    return out


def sorted_batches(n: int, key: Sequence[float], bs: int) -> list[list[int]]:
    order = sorted(range(n), key=lambda i: key[i])
    return [order[s:s + bs] for s in range(0, n, bs)]


def stage_flops(parts: dict[str, Part], batches: Sequence[Sequence[int]], enc_len: np.ndarray, llm_len: np.ndarray,
                opts: Opts, bos: int) -> dict[str, float]:
    """Executed (padded) and useful (real-token) matmul FLOPs of the training steps of one run."""
    llm, enc, proj = parts["llm"], parts["encoder"], parts["projection"]
    exe = useful = 0.0
    for b in batches:
        le, lt = enc_len[b], llm_len[b]
        n, Le, Lt = len(b), int(le.max()), int(lt.max())
        exe += llm.train(n, Le + bos) + 2 * 2.0 * proj.lin * n * Le
        useful += sum(llm.train(1, int(x) + bos) + 4.0 * proj.lin * int(x) for x in le)
        if not opts.encoder_cache:
            exe += enc.fwd(n, Le)
            useful += sum(enc.fwd(1, int(x)) for x in le)
        if not opts.target_cache:
            exe += llm.fwd(n, Lt, lora=False)
            useful += sum(llm.fwd(1, int(x), lora=False) for x in lt)
    return {"executed": exe, "useful": useful}


def setup_flops(parts: dict[str, Part], texts_chars: Sequence[int], enc_len: np.ndarray, llm_len: np.ndarray,
                opts: Opts, bs: int = 32) -> float:
    """FLOPs of the one-time precomputation (teacher targets by character length, encoder cache by
    token length, both in batches of 32 as the project does)."""
    total = 0.0
    n = len(enc_len)
    if opts.target_cache:
        for b in sorted_batches(n, texts_chars, bs):
            total += parts["llm"].fwd(len(b), int(llm_len[b].max()), lora=False)
    if opts.encoder_cache:
        for b in sorted_batches(n, enc_len, bs):
            total += parts["encoder"].fwd(len(b), int(enc_len[b].max()))
    return total


# =============================================================================================
# training runs (the project's Accelerate loop for both paths)
# =============================================================================================
def fresh_accelerator(targs) -> Any:
    """The product's Accelerator (``make_accelerator``: the device policy, ``$MTLLM_DEVICE``) for one run,
    after dropping Accelerate's process-wide state so that each run picks its own precision. A bare
    ``Accelerator()`` here took the GPU while the policy (and the model) said CPU, and its state then broke
    every later CPU run in the process (found on an H100)."""
    from accelerate.state import AcceleratorState, GradientState

    from mtllm.training.loop import make_accelerator

    AcceleratorState._reset_state(True)
    if hasattr(GradientState, "_reset_state"):
        GradientState._reset_state()
    return make_accelerator(targs)


def _undo_accelerate_wrapping(model: nn.Module) -> None:
    """``accelerator.prepare`` patches ``model.forward`` with autocast for bf16; undo it so the next
    run (e.g. the fp32 naive one) gets the plain forward."""
    for m in (model, getattr(model, "_orig_mod", None)):
        if m is not None and "_original_forward" in m.__dict__:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_original_forward", None)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in snap:
                p.copy_(snap[n])


def run_training(model, *, stage: str, n: int, collate, loss_fn, lengths, opts: Opts, args: argparse.Namespace,
                 workdir: Path) -> dict[str, Any]:
    from mtllm.training.loop import TrainingArgs, train

    targs = TrainingArgs(output_dir=str(workdir / stage), learning_rate=args.lr, projection_lr=1e-3,
                         batch_size=args.batch_size, num_epochs=args.epochs, warmup_ratio=0.05,
                         group_by_length=opts.length_grouping, mixed_precision="bf16" if opts.bf16 else "no",
                         log_steps=10 ** 9, save_steps=0, progress=False, report_to="none", seed=0)
    params = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("projection.")]
    proj = [p for name, p in model.named_parameters() if p.requires_grad and name.startswith("projection.")]
    groups = [g for g in ({"params": params}, {"params": proj, "lr": 1e-3}) if g["params"]]
    acc = fresh_accelerator(targs)
    run_model = torch.compile(model, dynamic=True) if opts.compile else model
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            res = train(model=run_model, param_groups=groups, n_examples=n, collate=collate, loss_fn=loss_fn,
                        args=targs, stage=stage, lengths=lengths, accelerator=acc)
    finally:
        _undo_accelerate_wrapping(model)
    spe = n // args.batch_size
    ends = [res.history[(e + 1) * spe - 1]["elapsed_s"] for e in range(args.epochs)]
    epochs = [ends[0]] + [b - a for a, b in zip(ends, ends[1:])]
    # each epoch visits every example once in both paths, so the epoch-mean loss is over the same examples
    epoch_loss = [sum(h["loss"] for h in res.history[e * spe:(e + 1) * spe]) / spe for e in range(args.epochs)]
    return {"train_s": res.seconds, "epoch_s": epochs, "steps": res.steps,
            "step_loss": [h["loss"] for h in res.history],
            "first_loss": res.history[0]["loss"], "epoch_loss": epoch_loss, "final_epoch_loss": epoch_loss[-1]}


def same_examples_per_epoch(n: int, bs: int, epochs: int, lengths: Sequence[int]) -> bool:
    from mtllm.training.loop import batch_order

    for e in range(epochs):
        for lens in (None, lengths):
            seen = sorted(i for b in batch_order(n, bs, epoch=e, seed=0, lengths=lens) for i in b)
            if seen != list(range(n)):
                return False
    return True


def stage1_run(model, texts: list[str], opts: Opts, args, workdir: Path, tok: dict[str, Any]) -> dict[str, Any]:
    """One stage-1 run: ``opts`` all on = the project's path (run_stage1 math), all off = naive."""
    from mtllm.training.encoder_cache import EncoderCache
    from mtllm.modeling.objectives import stage1_loss, target_stats
    from mtllm.training.stage1 import teacher_targets

    naive = opts == Opts.naive()
    seen: list[list[int]] = []
    head, model.head = model.head, None  # stage 1 has no head
    try:
        restore(model, tok["init"])
        t0 = time.perf_counter()
        targets = enc_cache = None
        # the objective's statistics need every target once, in both paths (as run_stage1 computes them)
        all_targets = teacher_targets(model, texts, batch_size=32, cache_dir=None, show_progress=False)
        stats = target_stats(all_targets)
        if opts.target_cache:
            targets = all_targets
        if opts.encoder_cache:
            enc_cache = EncoderCache(model, texts, cache_dir=workdir / "enc-cache", lang=LANG, batch_size=32)
        setup_s = time.perf_counter() - t0

        def collate(idx: list[int]) -> dict[str, Any]:
            seen.append(list(idx))
            batch: dict[str, Any] = {}
            if enc_cache is not None:
                batch.update(enc_cache.collate(idx))
            else:
                b = model.tokenize([texts[i] for i in idx], lang=LANG)
                batch.update(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            if targets is not None:
                batch["targets"] = targets[idx]
            else:
                b = model.tokenize([texts[i] for i in idx], route="llm")
                batch.update(llm_input_ids=b["input_ids"], llm_attention_mask=b["attention_mask"])
            return batch

        def loss_fn(m, batch):
            if "targets" not in batch:  # naive: the teacher runs on every step
                with torch.no_grad(), model.adapters_disabled():
                    target = m(llm_input_ids=batch.pop("llm_input_ids"),
                               llm_attention_mask=batch.pop("llm_attention_mask")).pooled.float()
                batch["targets"] = target.clone()
            return stage1_loss(m, batch, stats=stats)

        res = run_training(model, stage="stage1-" + ("naive" if naive else "opt"), n=len(texts), collate=collate,
                           loss_fn=loss_fn, lengths=[len(t) for t in texts], opts=opts, args=args, workdir=workdir)
    finally:
        model.head = head
    res.update(setup_s=setup_s, total_s=setup_s + res["train_s"], batches=seen, opts=opts.label())
    return res


def distill_run(model, examples: list[Any], opts: Opts, args, workdir: Path, tok: dict[str, Any]) -> dict[str, Any]:
    """One distillation run (student = the MT-LLM, teacher = the LLM on its own tokens, adapters off)."""
    from mtllm.data.collate import collate_examples, example_lengths
    from mtllm.training.encoder_cache import EncoderCache, encoder_input_texts
    from mtllm.training.distill import pre_embed
    from mtllm.modeling.objectives import distill_loss, target_stats

    naive = opts == Opts.naive()
    seen: list[list[int]] = []
    restore(model, tok["init"])
    t0 = time.perf_counter()
    targets = enc_cache = None
    # the objective's statistics need every target once, in both paths (as run_distill computes them)
    with model.adapters_disabled():
        all_targets = pre_embed(model, examples, cache_dir=workdir / ("preembed" if opts.target_cache else "stats"),
                                teacher_id="bench-teacher", batch_size=32, show_progress=False)
    stats = target_stats(torch.from_numpy(np.asarray(all_targets, dtype=np.float32)), unbiased=False)
    if opts.target_cache:
        targets = all_targets
    else:
        shutil.rmtree(workdir / "stats", ignore_errors=True)
    if opts.encoder_cache:
        enc_cache = EncoderCache(model, encoder_input_texts(model, examples), cache_dir=workdir / "enc-cache",
                                 lang=LANG, batch_size=32)
    setup_s = time.perf_counter() - t0

    def collate(idx: list[int]) -> dict[str, Any]:
        seen.append(list(idx))
        exs = [examples[i] for i in idx]
        batch = collate_examples(model, exs, route="encoder", lang=LANG)
        if enc_cache is not None:
            batch["encoder_hidden_states"] = enc_cache.states_for(idx, batch["attention_mask"])
        if targets is not None:
            batch["targets"] = torch.from_numpy(np.asarray(targets[np.asarray(idx)], dtype=np.float32))
        else:
            t = collate_examples(model, exs, route="llm")
            batch.update(llm_input_ids=t["llm_input_ids"], llm_attention_mask=t["llm_attention_mask"])
        return batch

    def loss_fn(m, batch):
        if "targets" not in batch:  # naive: the teacher runs on every step
            ids, mask = batch.pop("llm_input_ids"), batch.pop("llm_attention_mask")
            with torch.no_grad(), model.adapters_disabled():
                target = m(llm_input_ids=ids, llm_attention_mask=mask).pooled.float()
            batch["targets"] = target.clone()
        return distill_loss(m, batch, stats=stats)

    res = run_training(model, stage="distill-" + ("naive" if naive else "opt"), n=len(examples), collate=collate,
                       loss_fn=loss_fn, lengths=example_lengths(examples), opts=opts, args=args, workdir=workdir)
    res.update(setup_s=setup_s, total_s=setup_s + res["train_s"], batches=seen, opts=opts.label())
    return res


def set_distill_trainables(model) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(("lora_" in name) or name.startswith("projection."))


# =============================================================================================
# inference: MT-LLM classification vs translate-test
# =============================================================================================
def bench_inference(model, mt, mt_tok, mt_info: dict[str, Any], texts: list[str], workdir: Path,
                    bs: int = 32) -> dict[str, Any]:
    from mtllm.baselines.translate_test import TranslateSettings, Translator

    res: dict[str, Any] = {"n": len(texts)}
    model.eval()
    # --- MT-LLM: tokenise -> frozen encoder -> projection + LLM + head
    t_tok = t_enc = t_llm = 0.0
    shapes = []
    for b in sorted_batches(len(texts), [len(t) for t in texts], bs):
        t0 = time.perf_counter()
        batch = model.tokenize([texts[i] for i in b], lang=LANG)
        t1 = time.perf_counter()
        with torch.inference_mode():
            enc = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            t2 = time.perf_counter()
            model(attention_mask=batch["attention_mask"], encoder_hidden_states=enc).logits.argmax(-1)
        t3 = time.perf_counter()
        t_tok, t_enc, t_llm = t_tok + t1 - t0, t_enc + t2 - t1, t_llm + t3 - t2
        shapes.append(tuple(batch["input_ids"].shape))
    total = t_tok + t_enc + t_llm
    res["mtllm"] = {"total_s": total, "tokenize_s": t_tok, "encode_s": t_enc, "llm_classify_s": t_llm,
                    "examples_per_s": len(texts) / total, "shapes": shapes}

    # --- translate-test: Translator (greedy) -> LLM alone + head on the translation
    src_lens = [len(x) for x in mt_tok(texts, truncation=True, max_length=512)["input_ids"]]
    decode_len = max(1, round(sum(src_lens) / len(src_lens)))
    mt.generation_config.min_new_tokens = decode_len  # a random model rarely stops by itself: decode exactly this many
    settings = TranslateSettings(mt_model="bench", target_lang=mt_info["target_lang"], batch_size=16, num_beams=1,
                                 max_new_tokens=decode_len, cache_dir=str(workdir / "translations"))
    translator = Translator(mt, mt_tok, settings=settings, name="bench-mt")
    _ = translator.fingerprint  # one-time model identity (not per text): outside the timing
    t0 = time.perf_counter()
    translations = translator.translate(texts, mt_info["src_lang"], progress=False)
    t_translate = time.perf_counter() - t0
    # the MT encoder alone on the same batches, to split encode from decode
    prefix = translator._source_setup(mt_info["src_lang"])[1]
    ids = [prefix + list(x) for x in mt_tok(texts, truncation=True, max_length=512 - len(prefix))["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    mt_batches = [order[i:i + 16] for i in range(0, len(order), 16)]
    t_mt_enc = 0.0
    with torch.inference_mode():
        for b in mt_batches:
            padded = mt_tok.pad({"input_ids": [ids[i] for i in b]}, padding=True, return_tensors="pt")
            t1 = time.perf_counter()
            mt.get_encoder()(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
            t_mt_enc += time.perf_counter() - t1
    t_cls = 0.0
    cls_shapes = []
    for b in sorted_batches(len(translations), [len(t) for t in translations], bs):
        t1 = time.perf_counter()
        batch = model.tokenize([translations[i] for i in b], route="llm")
        with torch.inference_mode():
            model(llm_input_ids=batch["input_ids"], llm_attention_mask=batch["attention_mask"]).logits.argmax(-1)
        t_cls += time.perf_counter() - t1
        cls_shapes.append(tuple(batch["input_ids"].shape))
    total_tt = t_translate + t_cls
    res["translate_test"] = {
        "total_s": total_tt, "translate_s": t_translate, "mt_encode_s": t_mt_enc,
        "mt_decode_s": max(t_translate - t_mt_enc, 0.0), "llm_classify_s": t_cls,
        "examples_per_s": len(texts) / total_tt, "decode_tokens": decode_len,
    "mt_batches": [len(b) for b in mt_batches],
        "mt_src_max_len": [max(len(ids[i]) for i in b) for b in mt_batches], "cls_shapes": cls_shapes,
        "translations_cached": translator.last_stats.cache_hits}
    res["mtllm_vs_translate_test"] = res["mtllm"]["examples_per_s"] / res["translate_test"]["examples_per_s"]
    res["mt_model"] = mt_info["what"]
    return res


def mt_parts(mt) -> dict[str, Any]:
    enc_lin, _ = linear_sizes(mt.model.encoder)
    dec = mt.model.decoder
    tok_lin, _ = linear_sizes(dec,
                              skip=lambda n: n.endswith("encoder_attn.k_proj") or n.endswith("encoder_attn.v_proj"))
    all_lin, _ = linear_sizes(dec)
    c = mt.config
    return {"enc": Part(enc_lin, 0, c.d_model, c.encoder_layers), "dec_tok": tok_lin, "cross_kv": all_lin - tok_lin,
            "lm_head": c.d_model * c.vocab_size, "d": c.d_model, "dec_layers": c.decoder_layers}


def inference_flops(parts: dict[str, Part], mtp: dict[str, Any], inf: dict[str, Any]) -> dict[str, float]:
    llm, enc, proj = parts["llm"], parts["encoder"], parts["projection"]
    mtllm = sum(enc.fwd(n, L) + 2.0 * proj.lin * n * L + llm.fwd(n, L + 1) for n, L in inf["mtllm"]["shapes"])
    tt = inf["translate_test"]
    T = tt["decode_tokens"]
    mt = 0.0
    for n, Ls in zip(tt["mt_batches"], tt["mt_src_max_len"]):
        mt += mtp["enc"].fwd(n, Ls) + 2.0 * mtp["cross_kv"] * n * Ls
        for t in range(1, T + 1):
            mt += n * (2.0 * (mtp["dec_tok"] + mtp["lm_head"]) + mtp["dec_layers"] * 4.0 * mtp["d"] * (t + Ls))
    cls = sum(llm.fwd(n, L) for n, L in tt["cls_shapes"])
    return {"mtllm": mtllm, "translate": mt, "translate_test": mt + cls}


# =============================================================================================
# roofline helpers
# =============================================================================================
def matmul_peak(n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best-of-3 FLOP/s of an n x n matmul loop in ``dtype``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        iters, t0 = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            dt = time.perf_counter() - t0
            if dt >= seconds / 3:
                break
        best = max(best, 2.0 * n ** 3 * iters / dt)
    return best


def counted_train_step(model, texts: list[str], parts: dict[str, Part], bos: int) -> dict[str, float]:
    """FlopCounterMode on one student forward+backward (encoder run, i.e. no cache) vs the analytic model."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = model.tokenize(texts, lang=LANG)
    head, model.head = model.head, None
    model.train()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            pooled = model(batch["input_ids"], batch["attention_mask"]).pooled.float()
            pooled.pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.head = head
    n, L = batch["input_ids"].shape
    llm, enc = parts["llm"], parts["encoder"]
    no_attn = lambda p: Part(p.lin, p.lora, 0, p.layers)  # noqa: E731
    matmul = no_attn(llm).train(n, L + bos) + 4.0 * parts["projection"].lin * n * L + no_attn(enc).fwd(n, L)
    attention = llm.train(n, L + bos) - no_attn(llm).train(n, L + bos) + enc.fwd(n, L) - no_attn(enc).fwd(n, L)
    return _counted(counter, matmul, attention, f"{n} x {L} tokens")


def _counted(counter, matmul: float, attention: float, what: str) -> dict[str, Any]:
    ops = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"counted": float(counter.get_total_flops()), "analytic_matmul": matmul, "analytic_attention": attention,
            "counted_ops": ops, "what": what}


def counted_generate(mt, mt_tok, mtp: dict[str, Any], texts: list[str], T: int) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    enc = mt_tok(texts, padding=True, return_tensors="pt")
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        mt.generate(**enc, max_new_tokens=T, min_new_tokens=T, num_beams=1, do_sample=False)
    n, Ls = enc["input_ids"].shape
    e = mtp["enc"]
    matmul = Part(e.lin, 0, 0, e.layers).fwd(n,
                                             Ls) + 2.0 * mtp["cross_kv"] * n * Ls + T * n * 2.0 * (
                                                 mtp["dec_tok"] + mtp["lm_head"])
    attention = e.fwd(n, Ls) - Part(e.lin, 0, 0, e.layers).fwd(n, Ls) + sum(
        n * mtp["dec_layers"] * 4.0 * mtp["d"] * (t + Ls) for t in range(1, T + 1))
    return _counted(counter, matmul, attention, f"{n} texts x {Ls} source tokens, {T} new tokens")


# =============================================================================================
# precision / compile
# =============================================================================================
def _median_time(fn: Callable[[], Any], iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_precision(model, bf16_model, texts: list[str], args, compiled: dict[str, Any]) -> dict[str, Any]:
    iters = 5 if args.quick else 3
    batch = model.tokenize(texts, lang=LANG)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.inference_mode():
        enc = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    def infer(m, autocast=False):
        def run():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                m(ids, mask).pooled
        return run

    def step(m, autocast=False):
        def run():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                loss = m(attention_mask=mask, encoder_hidden_states=enc.clone()).pooled.float().pow(2).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    head, model.head = model.head, None
    bf16_head, bf16_model.head = bf16_model.head, None
    out: dict[str, Any] = {"batch": list(ids.shape)}
    try:
        model.eval()
        out["infer_fp32_s"] = _median_time(infer(model), iters)
        out["infer_bf16_autocast_s"] = _median_time(infer(model, True), iters)
        out["infer_bf16_weights_s"] = _median_time(infer(bf16_model), iters)
        model.train()
        out["train_step_fp32_s"] = _median_time(step(model), iters)
        out["train_step_bf16_autocast_s"] = _median_time(step(model, True), iters)
        if args.compile:
            if "model" not in compiled:
                compiled["model"] = torch.compile(model, dynamic=True)
            cm = compiled["model"]
            model.eval()
            t0 = time.perf_counter()
            infer(cm)()
            out["compile_infer_first_call_s"] = time.perf_counter() - t0
            out["infer_compiled_s"] = _median_time(infer(cm), iters)
            model.train()
            t0 = time.perf_counter()
            step(cm)()
            out["compile_train_first_call_s"] = time.perf_counter() - t0
            out["train_step_compiled_s"] = _median_time(step(cm), iters)
    finally:
        model.head, bf16_model.head = head, bf16_head
    return out


# =============================================================================================
# one repeat
# =============================================================================================
def one_repeat(r: int, args, ctx: dict[str, Any]) -> dict[str, Any]:
    model, texts, examples = ctx["model"], ctx["texts"], ctx["examples"]
    workdir = Path(tempfile.mkdtemp(prefix=f"mtllm-bench-{r}-"))
    opt = _opts_of(args, "opt")
    out: dict[str, Any] = {}
    flip = r % 2 == 1  # alternate which path runs first, so drift in machine load hits both
    try:
        for stage, run_fn, data, prefix in (("stage1", stage1_run, texts, "s1"),
                                            ("distill", distill_run, examples, "d")):
            if stage not in args.sections:
                continue
            set_distill_trainables(model)  # LoRA + projection train in both stages here
            runs = {}
            for name in (("opt", "naive") if flip else ("naive", "opt")):
                runs[name] = run_fn(model, data, opt if name == "opt" else Opts.naive(), args,
                                    workdir / f"{prefix}-{name}", ctx)
            for off in ablated(opt, args.ablations) if args.ablations else []:
                o = copy.copy(opt)
                setattr(o, off, False)
                runs[f"opt_no_{off}"] = run_fn(model, data, o, args, workdir / f"{prefix}-no-{off}", ctx)
            out[stage] = runs
        if "inference" in args.sections or "roofline" in args.sections:
            inf_model = ctx["bf16_model"] if args.bf16 else model
            out["inference"] = bench_inference(inf_model, ctx["mt"], ctx["mt_tok"], ctx["mt_info"], ctx["infer_texts"],
                                               workdir)
            out["inference"]["dtype"] = "bfloat16 weights" if args.bf16 else "float32"
        if "roofline" in args.sections or "peak" in args.sections:
            out["peak"] = {"fp32_flops": matmul_peak(args.peak_size, torch.float32),
                           "bf16_flops": matmul_peak(args.peak_size, torch.bfloat16), "n": args.peak_size}
        if "precision" in args.sections:
            mid = sorted(texts, key=len)
            k = len(mid) // 2
            sample = mid[max(0, k - args.batch_size // 2):][:args.batch_size]
            out["precision"] = bench_precision(model, ctx["bf16_model"], sample, args, ctx.setdefault("compiled", {}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


# =============================================================================================
# reporting
# =============================================================================================
def stats(values: Sequence[float]) -> dict[str, float]:
    v = sorted(values)
    return {"min": v[0], "median": statistics.median(v), "max": v[-1], "n": len(v)}


def fmt(s: dict[str, float], unit: str = "", digits: int = 3) -> str:
    if s["n"] == 1:
        return f"{s['median']:.{digits}g}{unit}"
    return f"{s['median']:.{digits}g}{unit} [{s['min']:.{digits}g}..{s['max']:.{digits}g}]"


def summarize(args, ctx: dict[str, Any], reps: list[dict[str, Any]]) -> dict[str, Any]:
    parts = ctx["parts"]
    bos = ctx["bos"]
    S: dict[str, Any] = {}
    lines: list[str] = []
    say = lines.append
    peak = None
    if reps and "peak" in reps[0]:
        S["peak_fp32_gflops"] = stats([r["peak"]["fp32_flops"] / 1e9 for r in reps])
        S["peak_bf16_gflops"] = stats([r["peak"]["bf16_flops"] / 1e9 for r in reps])
        peak = {"fp32": S["peak_fp32_gflops"]["median"] * 1e9, "bf16": S["peak_bf16_gflops"]["median"] * 1e9}

    def mfu(flops: float, seconds: float, bf16: bool) -> str:
        if peak is None or seconds <= 0:
            return ""
        ach = flops / seconds
        return f"{ach / 1e9:.3g} GFLOP/s = {100 * ach / peak['bf16' if bf16 else 'fp32']:.1f}% of peak"

    for stage in ("stage1", "distill"):
        if stage not in reps[0]:
            continue
        enc_len, llm_len, chars = ctx[f"{stage}_lens"]
        names = list(reps[0][stage])
        say(f"\n## {stage} ({ctx['n_' + stage]} {'texts' if stage == 'stage1' else 'examples'}, batch "
            f"{args.batch_size}, "
            f"{args.epochs} epochs, {reps[0][stage]['opt']['steps']} steps per run)")
        say(f"{'run':<24}{'setup s':>24}{'train s':>24}{'total s':>24}{'epochs>=2 s':>24}  final-epoch loss  (what is "
            "on)")
        sec: dict[str, Any] = {}
        for name in names:
            rs = [r[stage][name] for r in reps]
            d = {k: stats([x[k] for x in rs]) for k in ("setup_s", "train_s", "total_s", "final_epoch_loss")}
            d["steady_s"] = stats([sum(x["epoch_s"][1:]) for x in rs])
            d["epoch_s"] = [stats([x["epoch_s"][e] for x in rs]) for e in range(args.epochs)]
            d["opts"] = rs[0]["opts"]
            d["epoch_loss"] = [stats([x["epoch_loss"][e] for x in rs]) for e in range(args.epochs)]
            o = Opts.naive() if name == "naive" else _opts_of(args, name)
            fl = stage_flops(parts, rs[0]["batches"], enc_len, llm_len, o, bos)
            d["train_flops"] = fl
            d["setup_flops"] = setup_flops(parts, chars, enc_len, llm_len, o)
            d["padding_overhead"] = fl["executed"] / fl["useful"] - 1
            sec[name] = d
            setup = fmt(d["setup_s"]) if d["setup_s"]["max"] > 1e-3 else "-"
            say(f"{name:<24}{setup:>24}{fmt(d['train_s']):>24}{fmt(d['total_s']):>24}"
                f"{fmt(d['steady_s']):>24}  {d['final_epoch_loss']['median']:<16.4g}  "
                f"({'nothing' if name == 'naive' else d['opts']})")
        ratio_total = stats([r[stage]["naive"]["total_s"] / r[stage]["opt"]["total_s"] for r in reps])
        ratio_steady = stats([sum(r[stage]["naive"]["epoch_s"][1:]) / sum(r[stage]["opt"]["epoch_s"][1:])
                              for r in reps])
        sec["speedup_total"] = ratio_total
        sec["speedup_epochs_ge2"] = ratio_steady
        sec["same_examples_per_epoch"] = same_examples_per_epoch(ctx["n_" + stage], args.batch_size, args.epochs,
                                                                 ctx[f"{stage}_char_lengths"])
        for name in names:
            if name.startswith("opt_no_"):
                sec[name]["slowdown_vs_opt"] = stats(
                    [r[stage][name]["total_s"] / r[stage]["opt"]["total_s"] for r in reps])
        say(f"speedup naive/optimized: total (incl. one-time caches) {fmt(ratio_total, 'x')}, epochs >= 2 "
            f"{fmt(ratio_steady, 'x')}")
        say(f"every epoch visits every example in both paths: {sec['same_examples_per_epoch']}; final-epoch loss naive "
            f"{sec['naive']['final_epoch_loss']['median']:.4g} vs optimized "
            f"{sec['opt']['final_epoch_loss']['median']:.4g}")
        for name in ("naive", "opt"):
            say(f"loss curve (epoch means, median over repeats) {name}: "
                + " ".join(f"{e['median']:.4g}" for e in sec[name]["epoch_loss"]))
        for name in names:
            if name.startswith("opt_no_"):
                say(f"ablation {name}: {fmt(sec[name]['slowdown_vs_opt'], 'x')} the optimized total time")
        for name in ("naive", "opt"):
            d = sec[name]
            say(f"padding: {name} executes {100 * d['padding_overhead']:.0f}% more matmul FLOPs than its real tokens "
                "need")
            if peak:
                bf = name == "opt" and args.bf16
                say(f"roofline {name}: train {d['train_flops']['executed'] / 1e12:.3g} TFLOP in "
                    f"{d['train_s']['median']:.3g} s -> "
                    f"{mfu(d['train_flops']['executed'], d['train_s']['median'], bf)}"
                    + (f"; one-time caches {d['setup_flops'] / 1e12:.3g} TFLOP in {d['setup_s']['median']:.3g} s -> "
                       f"{mfu(d['setup_flops'], d['setup_s']['median'], False)}" if d['setup_flops'] else ""))
        S[stage] = sec

    if "inference" in reps[0]:
        inf = {k: stats([r["inference"][k] for r in reps]) for k in ("mtllm_vs_translate_test",)}
        sec = {"ratio": inf["mtllm_vs_translate_test"], "mt_model": reps[0]["inference"]["mt_model"],
               "dtype": reps[0]["inference"]["dtype"], "n": reps[0]["inference"]["n"],
               "decode_tokens": reps[0]["inference"]["translate_test"]["decode_tokens"]}
        for sysname, keys in (("mtllm", ("tokenize_s", "encode_s", "llm_classify_s", "total_s", "examples_per_s")),
                              ("translate_test",
                               ("mt_encode_s", "mt_decode_s", "llm_classify_s", "total_s", "examples_per_s"))):
            sec[sysname] = {k: stats([r["inference"][sysname][k] for r in reps]) for k in keys}
        say(f"\n## inference: MT-LLM classification vs translate-test ({sec['n']} texts, {sec['dtype']})")
        say(f"MT model: {sec['mt_model']}; greedy decode of exactly {sec['decode_tokens']} tokens per text "
            f"(the mean source length; a random model would not stop by itself)")
        m, t = sec["mtllm"], sec["translate_test"]
        say(f"MT-LLM        : {fmt(m['examples_per_s'])} ex/s  = tokenize {fmt(m['tokenize_s'])} s + encode "
            f"{fmt(m['encode_s'])} s "
            f"+ LLM/classify {fmt(m['llm_classify_s'])} s")
        say(f"translate-test: {fmt(t['examples_per_s'])} ex/s  = MT encode {fmt(t['mt_encode_s'])} s + MT decode "
            f"{fmt(t['mt_decode_s'])} s "
            f"+ LLM/classify {fmt(t['llm_classify_s'])} s")
        say(f"MT-LLM vs translate-test: {fmt(sec['ratio'], 'x')} the examples/s")
        if peak:
            fl = inference_flops(parts, ctx["mt_parts"], reps[0]["inference"])
            sec["flops"] = fl
            bf = args.bf16
            say(f"roofline inference: MT-LLM {fl['mtllm'] / 1e9:.3g} GFLOP -> "
                f"{mfu(fl['mtllm'], m['total_s']['median'], bf)}; "
                f"translate-test {fl['translate_test'] / 1e9:.3g} GFLOP -> "
                f"{mfu(fl['translate_test'], t['total_s']['median'], bf)} "
                "(MT decode alone: "
                f"{mfu(fl['translate'], t['mt_encode_s']['median'] + t['mt_decode_s']['median'], bf)})")
        S["inference"] = sec

    if peak:
        say(f"\n## roofline: measured {args.peak_size}x{args.peak_size} matmul peak fp32 "
            f"{fmt(S['peak_fp32_gflops'], ' GFLOP/s')}, "
            f"bf16 {fmt(S['peak_bf16_gflops'], ' GFLOP/s')}")
        chk = ctx.get("flop_check")
        if chk:
            S["flop_check"] = chk
            for k, v in chk.items():
                say(f"FlopCounterMode cross-check, {k} ({v['what']}): counted {v['counted'] / 1e9:.4g} GFLOP "
                    f"({', '.join(sorted(v['counted_ops']))}) vs analytic linear layers "
                    f"{v['analytic_matmul'] / 1e9:.4g} GFLOP "
                    f"(ratio {v['counted'] / v['analytic_matmul']:.3f}); attention (analytic only, "
                    f"{v['analytic_attention'] / 1e9:.4g} "
                    f"GFLOP) runs in SDPA kernels that FlopCounterMode does not count on CPU")

    if "precision" in reps[0]:
        keys = [k for k in reps[0]["precision"] if k.endswith("_s")]
        sec = {k: stats([r["precision"][k] for r in reps]) for k in keys}
        sec["batch"] = reps[0]["precision"]["batch"]
        say(f"\n## precision (batch {sec['batch'][0]} x {sec['batch'][1]} encoder tokens; median time per call)")
        base_i, base_t = sec["infer_fp32_s"]["median"], sec["train_step_fp32_s"]["median"]
        for k in keys:
            base = base_i if k.startswith("infer") else base_t if k.startswith("train") else None
            rel = f"  ({base / sec[k]['median']:.2f}x fp32 speed)" if base else ""
            say(f"{k:<30}{fmt(sec[k], ' s'):>28}{rel}")
        S["precision"] = sec
    return {"summary": S, "lines": lines}


ABLATABLE = ("target_cache", "length_grouping", "encoder_cache", "bf16")


def ablated(opt: Opts, which: str | None) -> list[str]:
    """The optimisations ``--ablations`` turns off one at a time (those of ``which`` that are on)."""
    names = ABLATABLE if which in (None, "all") else [n.strip() for n in which.split(",") if n.strip()]
    return [n for n in names if getattr(opt, n)]


def _opts_of(args, name: str) -> Opts:
    o = Opts(target_cache=not args.no_target_cache, length_grouping=not args.no_length_grouping,
             encoder_cache=not args.no_encoder_cache, bf16=args.bf16, compile=args.compile)
    if name.startswith("opt_no_"):
        setattr(o, name[len("opt_no_"):], False)
    return o


# =============================================================================================
# scaling
# =============================================================================================
def rss_anon_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def warm_up(model, texts: list[str]) -> None:
    """One untimed forward/backward, so that no measured path pays the first-call costs."""
    model.train()
    wb = model.tokenize(texts, lang=LANG)
    model(wb["input_ids"], wb["attention_mask"]).pooled.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)


def scaling_point(args) -> None:
    """One point in its own process: build, load texts, 2 epochs of the optimized stage 1; JSON on stdout."""
    point = json.loads(args.scaling_point)
    model = build_model(args)
    set_distill_trainables(model)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base_anon = rss_anon_mb()
    texts = generated_texts(point["n"], seed=3, min_words=point["min_words"], max_words=point["max_words"])
    args.epochs = 2
    warm_up(model, texts[:args.batch_size])
    ctx = {"init": snapshot(model)}
    workdir = Path(tempfile.mkdtemp(prefix="mtllm-scale-"))
    try:
        res = stage1_run(model, texts, Opts(), args, workdir, ctx)
        cache_bytes = sum(f.stat().st_size for f in workdir.rglob("hidden.npy"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    enc_len = token_lengths(model, texts, "encoder")
    print(json.dumps({**point, "mean_tokens": float(enc_len.mean()), "setup_s": res["setup_s"],
                      "train_s": res["train_s"],
                      "epoch_s": res["epoch_s"], "total_s": res["total_s"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_model_mb": base_rss, "anon_after_model_mb": base_anon, "anon_end_mb": rss_anon_mb(),
                      "encoder_cache_mb": cache_bytes / 2 ** 20}))


def run_scaling(args) -> dict[str, Any]:
    base = [sys.executable, str(Path(__file__).resolve()), "--encoder", args.encoder, "--llm", args.llm,
            "--batch-size", str(args.batch_size), "--max-seq-length", str(args.max_seq_length)]
    if args.threads:
        base += ["--threads", str(args.threads)]
    if args.quick:
        base.append("--quick")
    ns = [64, 128, 256, 512, 1024] if args.quick else [64, 128, 256, 512]
    words = [4, 8, 16, 32, 56] if args.quick else [8, 16, 32, 64, 96]
    fixed_words = 12
    fixed_n = 128
    points = [{"axis": "n", "n": n, "min_words": fixed_words, "max_words": fixed_words} for n in ns]
    points += [{"axis": "len", "n": fixed_n, "min_words": w, "max_words": w} for w in words]
    results = []
    for pt in points:
        t0 = time.perf_counter()
        proc = subprocess.run(base + ["--scaling-point", json.dumps(pt)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"scaling point {pt} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["process_s"] = time.perf_counter() - t0
        results.append(res)
        print(f"scaling {pt['axis']}: n={res['n']:>5} tokens~{res['mean_tokens']:6.1f}  setup {res['setup_s']:.2f} s  "
              f"train {res['train_s']:.2f} s  peak RSS {res['peak_rss_mb']:.0f} MB (after model load "
              f"{res['rss_after_model_mb']:.0f} MB)  anon {res['anon_end_mb']:.0f} MB  cache "
              f"{res['encoder_cache_mb']:.2f} MB",
              flush=True)
    plot_scaling(results, args.scaling_png, f"{args.encoder} + {args.llm}, batch {args.batch_size}, 2 epochs")
    print(f"wrote {args.scaling_png}")
    by_n = [r for r in results if r["axis"] == "n"]
    growth = (by_n[-1]["peak_rss_mb"] - by_n[0]["peak_rss_mb"]) / (by_n[-1]["n"] - by_n[0]["n"]) * 1024
    print(f"peak RSS growth over the #texts sweep: {growth:.1f} KB per text "
          f"({by_n[0]['peak_rss_mb']:.0f} MB at {by_n[0]['n']} -> {by_n[-1]['peak_rss_mb']:.0f} MB at {by_n[-1]['n']})")
    return {"points": results, "peak_rss_kb_per_text": growth}


def plot_scaling(results: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for row, axis, xkey, xlabel in ((0, "n", "n", "training texts"),
                                    (1, "len", "mean_tokens", "mean encoder tokens per text")):
        pts = [r for r in results if r["axis"] == axis]
        x = [r[xkey] for r in pts]
        a = ax[row][0]
        a.plot(x, [r["train_s"] for r in pts], "o-", label="train (2 epochs)")
        a.plot(x, [r["setup_s"] for r in pts], "s-", label="one-time caches")
        a.plot(x, [r["epoch_s"][1] for r in pts], "^-", label="epoch 2")
        a.set_xlabel(xlabel)
        a.set_ylabel("seconds")
        a.legend()
        a.grid(alpha=0.3)
        b = ax[row][1]
        b.plot(x, [r["peak_rss_mb"] for r in pts], "o-", label="peak RSS")
        b.plot(x, [r["rss_after_model_mb"] for r in pts], "--", label="RSS after model load")
        b.plot(x, [r["anon_end_mb"] for r in pts], "s-", label="anonymous RSS at end")
        b.set_xlabel(xlabel)
        b.set_ylabel("MB")
        b.set_ylim(bottom=0)
        b.legend()
        b.grid(alpha=0.3)
        if axis == "n":  # log-log: time linear in the number of texts is a slope-1 line
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            b.set_xscale("log", base=2)
    fig.suptitle(f"optimized stage 1: {title}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# =============================================================================================
# main
# =============================================================================================
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    busy = os.getloadavg()[0]
    auto_threads = None
    if args.threads is None and not args.scaling_point and busy > 0.5 * (os.cpu_count() or 1):
        args.threads = auto_threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scaling_point:
        scaling_point(args)
        return 0
    info = machine_info()
    print(f"# mtllm benchmark: {args.encoder} + {args.llm} | {info['nproc']} cores ({info['cpu']}), torch "
          f"{info['torch']}, "
          f"{info['torch_threads']} threads, load average {info['loadavg_start']}", flush=True)
    if busy > 0.5 * (info["nproc"] or 1):
        print(f"# WARNING: load average {busy:.2f} on {info['nproc']} cores before starting: other processes compete "
              f"for the CPU and timings will be noisy"
              + (" -- using 1 thread (several OpenMP threads can stall for seconds at barriers on a busy machine; "
                 "pass --threads to override)" if auto_threads else ""), flush=True)
    if args.scaling:
        res = run_scaling(args)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "scaling": res}, indent=1,
                                                  default=str))
        return 0

    t_start = time.perf_counter()
    model = build_model(args)
    texts, examples, label_names, data_desc = load_data(args, model)
    model.set_head("classification", label_names)
    from mtllm.training.stage1 import calibrate_projection

    # the projection starts as run_stage1 starts it (projection_init: rms_match), in both paths
    with torch.no_grad():
        calibrate_projection(model, texts[:256])
    set_distill_trainables(model)
    ctx: dict[str, Any] = {"model": model, "texts": texts, "examples": examples, "init": snapshot(model)}
    ctx["parts"] = model_parts(model)
    ctx["bos"] = 1 if (model.config.prepend_llm_bos and model.config.llm_bos_token_id is not None) else 0
    ctx["n_stage1"], ctx["n_distill"] = len(texts), len(examples)
    from mtllm.data.collate import example_lengths
    from mtllm.training.encoder_cache import encoder_input_texts

    ex_texts = encoder_input_texts(model, examples)
    ctx["stage1_lens"] = (token_lengths(model, texts, "encoder"), token_lengths(model, texts, "llm"),
                          [len(t) for t in texts])
    ctx["distill_lens"] = (token_lengths(model, ex_texts, "encoder"), token_lengths(model, ex_texts, "llm"),
                           [len(t) for t in ex_texts])
    ctx["stage1_char_lengths"] = [len(t) for t in texts]
    ctx["distill_char_lengths"] = example_lengths(examples)
    need_bf16 = "precision" in args.sections or (args.bf16
                                                 and ("inference" in args.sections or "roofline" in args.sections))
    if need_bf16:
        ctx["bf16_model"] = copy.deepcopy(model).to(torch.bfloat16).eval()
    if "inference" in args.sections or "roofline" in args.sections:
        ctx["mt"], ctx["mt_tok"], ctx["mt_info"] = build_mt_model(args, model)
        if args.bf16:
            ctx["mt"] = ctx["mt"].to(torch.bfloat16)
        ctx["mt_parts"] = mt_parts(ctx["mt"])
        ctx["infer_texts"] = infer_texts(args, texts)
    print(f"# data: {data_desc}; setup {time.perf_counter() - t_start:.1f} s", flush=True)

    warm_up(model, texts[:args.batch_size])

    reps = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        reps.append(one_repeat(r, args, ctx))
        print(f"# repeat {r + 1}/{args.repeats} done in {time.perf_counter() - t0:.1f} s", flush=True)
    if "roofline" in args.sections:
        sample = sorted(texts, key=len)[len(texts) // 2:][:args.batch_size]
        ctx["flop_check"] = {
            "stage-1 train step, encoder run": counted_train_step(model, sample, ctx["parts"], ctx["bos"])}
        mt_sample = ctx["infer_texts"][:4]
        T = reps[0]["inference"]["translate_test"]["decode_tokens"] if "inference" in reps[0] else 8
        ctx["flop_check"]["MT greedy generate, 4 texts"] = counted_generate(ctx["mt"], ctx["mt_tok"], ctx["mt_parts"],
                                                                             mt_sample, T)
    rep = summarize(args, ctx, reps)
    for line in rep["lines"]:
        print(line)
    S = rep["summary"]
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\n# load average at start {info['loadavg_start']}, at end {info['loadavg_end']} "
          f"({info['nproc']} cores); wall {time.perf_counter() - t_start:.1f} s", flush=True)
    if args.json:
        for r in reps:  # batches are long and only needed for the FLOP count
            for stage in ("stage1", "distill"):
                for run in r.get(stage, {}).values():
                    run.pop("batches", None)
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "data": data_desc, "summary": S,
                                               "repeats": reps}, indent=1, default=str))
    s1 = S.get("stage1", {}).get("speedup_total", {}).get("median", float("nan"))
    d2 = S.get("distill", {}).get("speedup_epochs_ge2", {}).get("median", float("nan"))
    mt = S.get("inference", {}).get("ratio", {}).get("median", float("nan"))
    print(f"stage1_speedup={s1:.3f} distill_speedup={d2:.3f} mtllm_vs_translate_test={mt:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
