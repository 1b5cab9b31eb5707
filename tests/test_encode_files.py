"""Embeddings: ``MTLLMModel.encode`` with sentence-transformers' keywords (so it drops into retrieval and
MTEB-style code), and ``mtllm encode`` on files into ``.npy`` (+ ids) or ``.parquet``: equal to
``model.encode``, streamed, bad rows kept in place, resumable after an exception and after ``kill -9``."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm import MTLLMModel
from mtllm.cli import main
from mtllm.inference import PROGRESS_SUFFIX
from test_predict import _fork_killed, _interrupt_after, _rows, _write


#: the kill tests fork children that run with one thread: this process must too (see conftest.one_thread); the
#: files are compared with the float32 API, so dtype auto (the default) resolves to float32 (conftest.fp32_auto)
pytestmark = pytest.mark.usefixtures("one_thread", "fp32_auto")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from mtllm import LoraSettings

    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                            max_seq_length=64)
    out = tmp_path_factory.mktemp("enc") / "model"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loaded(model_dir) -> MTLLMModel:
    """The model as ``mtllm encode`` loads it."""
    return MTLLMModel.from_pretrained(model_dir, merge_adapters=True)


def _encode(*argv) -> int:
    return main(["encode", *map(str, argv), "--progress", "false"])


# ------------------------------------------------------------------------------------------- the API
def test_encode_takes_sentence_transformers_keywords(tiny_model):
    texts = ["The cat sleeps on the warm mat.", "Un chien court.", "Paka analala kwenye mkeka."]
    base = tiny_model.encode(texts, lang="eng_Latn")
    assert isinstance(base, torch.Tensor) and base.shape == (3, tiny_model.config.llm_hidden_size)
    arr = tiny_model.encode(texts, lang="eng_Latn", batch_size=2, convert_to_numpy=True, show_progress_bar=False)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, base.numpy(), atol=1e-5)
    unit = tiny_model.encode(texts, lang="eng_Latn", normalize_embeddings=True, convert_to_tensor=True,
                             convert_to_numpy=True)  # convert_to_tensor wins, as in sentence-transformers
    assert isinstance(unit, torch.Tensor)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(base, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(unit, tiny_model.encode(texts, lang="eng_Latn", normalize=True), atol=1e-6, rtol=0)
    one = tiny_model.encode(texts[1], lang="eng_Latn", convert_to_numpy=True)
    assert one.shape == (tiny_model.config.llm_hidden_size,)
    # what MTEB passes along is accepted and changes nothing
    mteb = tiny_model.encode(texts, lang="eng_Latn", task_name="SIB200Classification", prompt_type=None,
                             prompt_name=None, batch_size=32, device="cpu")
    torch.testing.assert_close(mteb, base, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tiny_model.encode(texts, lang="eng_Latn", normalise=True)
    with pytest.raises(ValueError, match="precision"):
        tiny_model.encode(texts, lang="eng_Latn", precision="int8")


def test_encode_drops_into_retrieval_code(tiny_model):
    """The usual sentence-transformers retrieval idiom: the corpus ``encode(..., convert_to_tensor=True,
    normalize_embeddings=True)``, the queries (other texts: each a near copy of one corpus text) ``encode(...,
    convert_to_numpy=True, normalize_embeddings=True)``, then a dot product. The scores are the cosine
    similarities computed by hand from each text's own (unnormalised) embedding, and each query's best match is
    its corpus text, by a margin."""
    corpus = ["The cat sleeps on the warm mat.", "A dog runs in the park every morning.",
              "Le chat dort sur le tapis chaud.", "Scientists discovered a new species of frog.",
              "The train to Nairobi leaves at noon.", "Paka analala kwenye mkeka."]
    queries = {"A dog runs in the park every evening.": 1, "Scientists discovered a new species of frog in Peru.": 3,
               "the cat sleeps on the warm mat": 0, "The train to Mombasa leaves at noon.": 4,
               "Le chat dort sur le tapis.": 2}
    emb = tiny_model.encode(corpus, lang="eng_Latn", convert_to_tensor=True, normalize_embeddings=True,
                            batch_size=4, show_progress_bar=False)
    q = tiny_model.encode(list(queries), lang="eng_Latn", convert_to_numpy=True, normalize_embeddings=True,
                          batch_size=2)
    assert isinstance(emb, torch.Tensor) and isinstance(q, np.ndarray)
    scores = torch.from_numpy(q) @ emb.T

    def own(text: str) -> np.ndarray:  # one text at a time: no batching, no normalisation
        return tiny_model.encode(text, lang="eng_Latn").numpy().astype(np.float64)

    docs, asked = np.stack([own(t) for t in corpus]), np.stack([own(t) for t in queries])
    by_hand = (asked @ docs.T) / np.outer(np.linalg.norm(asked, axis=1), np.linalg.norm(docs, axis=1))
    np.testing.assert_allclose(scores.numpy(), by_hand, atol=1e-5, rtol=0)
    assert scores.argmax(1).tolist() == list(queries.values())
    top2 = scores.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1] > 1e-3).all()  # found, not tied


# ------------------------------------------------------------------------------------------- files
def test_npy_output_equals_model_encode_with_ids_and_nan_for_skipped_rows(model_dir, loaded, tmp_path, capsys):
    rows = _rows(25)
    rows[7]["text"] = " "
    rows[11]["lang"] = "fra_Latn"
    for r in rows:
        r.setdefault("lang", "eng_Latn")
    src = _write(tmp_path / "in.tsv", rows, columns=("id", "text", "lang"))
    out = tmp_path / "emb.npy"
    assert _encode("--model", model_dir, "--input", src, "--lang_column", "lang", "--id_column", "id",
                   "--output", out, "--chunk_size", 6, "--batch_size", 4) == 0
    emb = np.load(out)
    assert emb.shape == (25, loaded.config.llm_hidden_size) and emb.dtype == np.float32
    assert (tmp_path / "emb.ids.txt").read_text().splitlines() == [r["id"] for r in rows]
    assert np.isnan(emb[7]).all() and not np.isnan(np.delete(emb, 7, axis=0)).any()
    for i, r in enumerate(rows):
        if i != 7:
            np.testing.assert_allclose(emb[i], loaded.encode(r["text"], lang=r["lang"]).numpy(), atol=1e-5)
    assert not (tmp_path / "emb.npy.partial").exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == {"no text": 1} and summary["done"] == 24


def test_parquet_output_equals_model_encode_and_normalize(model_dir, loaded, tmp_path):
    import pyarrow.parquet as pq

    rows = _rows(14)
    src = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "emb.parquet"
    assert _encode("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id",
                   "--output", out, "--normalize", "--chunk_size", 5) == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding", "lang", "skipped"]
    got = table.to_pylist()
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    expected = loaded.encode([r["text"] for r in rows], lang="eng_Latn", normalize_embeddings=True).numpy()
    np.testing.assert_allclose(np.array([g["embedding"] for g in got]), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("fmt", [".npy", ".parquet"])
def test_interrupted_encode_resumes_to_the_same_output(fmt, model_dir, tmp_path, monkeypatch):
    src = _write(tmp_path / "in.csv", _rows(30))
    args = ["--model", model_dir, "--input", src, "--lang", "eng_Latn", "--chunk_size", 7, "--batch_size", 3]
    ref, out = tmp_path / f"ref{fmt}", tmp_path / f"emb{fmt}"
    assert _encode(*args, "--output", ref) == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        assert _encode(*args, "--output", out) == 130
    assert not out.exists()  # not there until complete: nobody reads a half-filled array
    record = json.loads((tmp_path / (out.name + PROGRESS_SUFFIX)).read_text())
    assert record["rows_done"] == 14 and not record["complete"]
    assert _encode(*args, "--output", out) == 0
    if fmt == ".npy":
        np.testing.assert_array_equal(np.load(out), np.load(ref))
        assert (tmp_path / "emb.ids.txt").read_bytes() == (tmp_path / "ref.ids.txt").read_bytes()
        assert (tmp_path / "emb.ids.txt").read_text().splitlines() == [str(i) for i in range(1, 31)]
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(out).equals(pq.read_table(ref))
        assert pq.read_table(out).schema.field("id").type == "int64"  # row numbers


def test_kill_9_mid_write_then_rerun_gives_the_same_array(model_dir, tmp_path):
    from fault_inject import Plan

    src = _write(tmp_path / "in.jsonl", _rows(24))
    args = ["encode", "--model", str(model_dir), "--input", str(src), "--lang", "eng_Latn", "--id_column", "id",
            "--chunk_size", "5", "--progress", "false"]
    ref, out = tmp_path / "ref.npy", tmp_path / "emb.npy"
    assert main([*args, "--output", str(ref)]) == 0
    assert _fork_killed([*args, "--output", str(out)], Plan("kill", str(tmp_path / "emb.ids.txt"), skip=3,
                                                            partial=7)) == signal.SIGKILL
    record = json.loads((tmp_path / ("emb.npy" + PROGRESS_SUFFIX)).read_text())
    assert record["rows_done"] == 15 and not record["complete"]
    assert main([*args, "--output", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(ref))
    assert (tmp_path / "emb.ids.txt").read_bytes() == (tmp_path / "ref.ids.txt").read_bytes()


def test_encode_refuses_other_settings_and_ids_it_cannot_write(model_dir, tmp_path, monkeypatch, capsys):
    src = _write(tmp_path / "in.csv", _rows(12))
    args = ["--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id", "--chunk_size", 4]
    out = tmp_path / "emb.npy"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert _encode(*args, "--output", out) == 130
    capsys.readouterr()
    assert _encode(*args, "--output", out, "--normalize") == 2
    assert "settings.normalize: False -> True" in capsys.readouterr().err
    rows = _rows(3)
    rows[1]["id"] = "two\nlines"
    bad = _write(tmp_path / "bad.jsonl", rows)
    assert _encode("--model", model_dir, "--input", bad, "--lang", "eng_Latn", "--id_column", "id",
                   "--output", tmp_path / "b.npy") == 2
    assert "holds a line break" in capsys.readouterr().err


def test_kill_9_after_the_final_rename_then_rerun_completes(model_dir, tmp_path, capsys):
    """Killed between renaming the finished array into place and recording it: the rerun sees the array there,
    records it complete, and changes nothing."""
    from fault_inject import Plan

    src = _write(tmp_path / "in.jsonl", _rows(9))
    args = ["encode", "--model", str(model_dir), "--input", str(src), "--lang", "eng_Latn", "--chunk_size", "4",
            "--progress", "false"]
    ref, out = tmp_path / "ref.npy", tmp_path / "emb.npy"
    assert main([*args, "--output", str(ref)]) == 0
    assert _fork_killed([*args, "--output", str(out)], Plan("kill", str(out), on="replace")) == signal.SIGKILL
    assert out.is_file() and not json.loads((tmp_path / ("emb.npy" + PROGRESS_SUFFIX)).read_text())["complete"]
    assert main([*args, "--output", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(ref))
    assert json.loads((tmp_path / ("emb.npy" + PROGRESS_SUFFIX)).read_text())["complete"]


@pytest.mark.parametrize("fmt", [".npy", ".parquet"])
def test_an_input_without_rows_gives_an_empty_output(fmt, model_dir, loaded, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n")
    out = tmp_path / f"emb{fmt}"
    assert _encode("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--output", out) == 0
    if fmt == ".npy":
        assert np.load(out).shape == (0, loaded.config.llm_hidden_size)
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(out).num_rows == 0
