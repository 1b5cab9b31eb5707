"""Predictions with a trained model: ``MTLLMModel.predict`` (labels equal the head's argmax computed by hand,
input order kept through length-sorted batches, pairs, multiple choice, clear errors) and ``mtllm predict`` on
files (every input and output format, streamed in constant memory, bad rows, ``--lang auto``, resumable after
an exception, after ``kill -9`` at a torn write and of a real ``python -m mtllm predict``, refusing a changed
input or other settings)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.cli import main
from mtllm.data.collate import collate_examples, model_inputs
from mtllm.errors import ConfigError, DataError, UnknownLanguageError
from mtllm.inference import PROGRESS_SUFFIX, iter_rows, jobs
from mtllm.modeling.predict import softmax

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["neg", "neu", "pos"]
WORDS = ("the cat sleeps on warm mat a dog runs in park every morning le chat dort sur tapis paka analala kwenye "
         "mkeka die katze schläft").split()

#: the kill tests fork children that run with one thread: this process must too (see conftest.one_thread); the
#: files are compared with the float32 API, so dtype auto (the default) resolves to float32 (conftest.fp32_auto)
pytestmark = pytest.mark.usefixtures("one_thread", "fp32_auto")



def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 25)))) for _ in range(n)]


def _build(head: str = "classification") -> MTLLMModel:
    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                            max_seq_length=64)
    model.set_head(head, LABELS if head == "classification" else ())
    with torch.no_grad():  # a head whose classes differ clearly, so that argmax ties never happen
        model.head.weight.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "model"
    _build().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loaded(model_dir) -> MTLLMModel:
    """The model as ``mtllm predict`` loads it."""
    return MTLLMModel.from_pretrained(model_dir, merge_adapters=True)


def _by_hand(model: MTLLMModel, texts, lang="eng_Latn", pairs=None) -> np.ndarray:
    """Logits ``(N, C)``: one text per forward pass, no batching code of ours."""
    rows = []
    with torch.no_grad():
        for i, t in enumerate(texts):
            batch = model.tokenize([t], pairs=[pairs[i]] if pairs is not None else None, lang=lang)
            rows.append(model(**model_inputs(batch, "encoder")).logits[0].float().numpy())
    return np.stack(rows)


# ------------------------------------------------------------------------------------------- the API
def test_predict_equals_argmax_by_hand_in_input_order(loaded):
    texts = _texts(23)
    labels, probs = loaded.predict(texts, lang="eng_Latn", batch_size=4, return_probs=True)
    logits = _by_hand(loaded, texts)
    assert labels == [LABELS[k] for k in logits.argmax(-1)]
    assert len(set(labels)) > 1, "a test whose labels are all the same proves little"
    np.testing.assert_allclose(probs, softmax(logits), atol=2e-5)
    assert probs.shape == (23, 3)
    assert loaded.predict(texts[3], lang="eng_Latn") == labels[3]  # one string, one label
    # lengths sorted within batches, yet every text keeps its place: reversed input, reversed output
    assert loaded.predict(texts[::-1], lang="eng_Latn", batch_size=4) == labels[::-1]


def test_predict_pairs_and_languages(loaded):
    premises, hypotheses = _texts(9, seed=1), _texts(9, seed=2)
    got = loaded.predict(premises, pairs=hypotheses, lang="fra_Latn", batch_size=3)
    assert got == [LABELS[k] for k in _by_hand(loaded, premises, lang="fra_Latn", pairs=hypotheses).argmax(-1)]
    langs = ["eng_Latn", "swh_Latn", "fra_Latn"] * 3
    mixed = loaded.predict(premises, lang=langs, batch_size=2)
    assert mixed == [LABELS[_by_hand(loaded, [t], lang=c)[0].argmax()] for t, c in zip(premises, langs)]


def test_predict_multiple_choice_returns_option_index():
    model = _build("multiple_choice")
    model.eval()
    passages = [" ".join(WORDS[i:i + 2 + i % 3]) for i in range(6)]
    questions = [" ".join(WORDS[-i - 2:-i or None]) for i in range(6)]
    options = [[WORDS[(i * 4 + k) % len(WORDS)] for k in range(4)] for i in range(6)]
    picks, probs = model.predict(passages, pairs=questions, options=options, lang="eng_Latn", batch_size=4,
                                 return_probs=True)
    expected = []
    for p, q, o in zip(passages, questions, options):
        ex = types.SimpleNamespace(id="x", texts=(p, q), label=0, options=tuple(o))
        with torch.no_grad():
            batch = collate_examples(model, [ex], route="encoder", lang="eng_Latn")
            logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "n_truncated")}).logits[0]
        expected.append(int(logits.argmax()))
    assert picks == expected and all(isinstance(k, int) for k in picks)
    assert probs.shape == (6, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ConfigError, match="multiple-choice head: pass options"):
        model.predict(passages, lang="eng_Latn")


def test_mtllm_predict_on_a_multiple_choice_file(tmp_path):
    model = _build("multiple_choice")
    model.save_pretrained(tmp_path / "mc")
    loaded = MTLLMModel.from_pretrained(tmp_path / "mc", merge_adapters=True)
    rows = [{"id": i, "passage": " ".join(WORDS[i:i + 3]), "question": WORDS[-i - 1],
             **{f"a{k}": WORDS[(i * 4 + k) % len(WORDS)] for k in range(4)}} for i in range(7)]
    rows[2]["a3"] = " "  # an empty option: skipped, counted
    src = _write(tmp_path / "mc.jsonl", rows, columns=("id", "passage", "question", "a0", "a1", "a2", "a3"))
    out = tmp_path / "p.jsonl"
    args = ["--model", tmp_path / "mc", "--input", src, "--text_column", "passage", "--pair_column", "question",
            "--lang", "eng_Latn", "--id_column", "id", "--output", out, "--return_probs", "--chunk_size", 3]
    assert _predict(*args, "--option_columns", "[a0, a1, a2, a3]") == 0
    got = _jsonl(out)
    keep = [r for r in rows if r["id"] != 2]
    picks, probs = loaded.predict([r["passage"] for r in keep], pairs=[r["question"] for r in keep],
                                  options=[[r[f"a{k}"] for k in range(4)] for r in keep], lang="eng_Latn",
                                  return_probs=True)
    assert [g["label"] for g in got if g["id"] != 2] == picks
    np.testing.assert_allclose([[g[f"prob_{k}"] for k in range(4)] for g in got if g["id"] != 2], probs, atol=2e-5)
    assert got[2]["skipped"] == "empty option" and got[2]["label"] is None
    assert _predict(*args[:-2], "--output", tmp_path / "q.jsonl") == 2  # no option_columns: named


def test_predict_errors_name_the_problem_and_the_fix(loaded, tiny_model):
    with pytest.raises(ConfigError, match="no task head.*finetune.*encode for embeddings"):
        tiny_model.predict(["a cat"], lang="eng_Latn")
    with pytest.raises(DataError, match="pairs has 1 items for 2 texts"):
        loaded.predict(["a cat", "a dog"], pairs=["x"], lang="eng_Latn")
    with pytest.raises(UnknownLanguageError, match="swh_Latn"):
        loaded.predict(["a cat"], lang="swh_latn_x")
    with pytest.raises(DataError, match=r"lang has 1 codes for 2 texts"):
        loaded.predict(["a cat", "a dog"], lang=["eng_Latn"])
    with pytest.raises(DataError, match=r"indices 1\b.*nothing was computed"):
        loaded.predict(["a cat", "  \u200b "], lang="eng_Latn")
    with pytest.raises(ConfigError, match="options are for multiple-choice models"):
        loaded.predict(["a cat"], lang="eng_Latn", options=[["a", "b"]])


# ------------------------------------------------------------------------------------------- files
def _write(path: Path, rows: list[dict], columns=("id", "text")) -> Path:
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t" if suffix == ".tsv" else ",")
            w.writerow(columns)
            w.writerows([[r.get(c, "") for c in columns] for r in rows])
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({c: r[c] for c in columns if c in r}) + "\n" for r in rows),
                        encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), path, row_group_size=7)
    elif suffix == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int, seed: int = 0) -> list[dict]:
    return [{"id": f"r{i:03d}", "text": t} for i, t in enumerate(_texts(n, seed))]


def _predict(*argv, capsys=None) -> int:
    rc = main(["predict", *map(str, argv), "--progress", "false"])
    return rc


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("fmt", [".csv", ".tsv", ".jsonl", ".parquet", ".txt"])
def test_every_input_format_gives_the_api_labels_with_ids_in_input_order(fmt, model_dir, loaded, tmp_path):
    rows = _rows(30)
    src = _write(tmp_path / f"in{fmt}", rows)
    out = tmp_path / "preds.jsonl"
    id_args = [] if fmt == ".txt" else ["--id_column", "id"]
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", *id_args, "--output", out,
                    "--batch_size", 4, "--chunk_size", 8, "--return_probs") == 0
    got = _jsonl(out)
    labels, probs = loaded.predict([r["text"] for r in rows], lang="eng_Latn", return_probs=True)
    assert [g["id"] for g in got] == ([r["id"] for r in rows] if fmt != ".txt" else list(range(1, 31)))
    assert [g["label"] for g in got] == labels
    np.testing.assert_allclose([[g[f"prob_{n}"] for n in LABELS] for g in got], probs, atol=2e-5)
    assert {g["lang"] for g in got} == {"eng_Latn"} and all(g["skipped"] is None for g in got)


@pytest.mark.parametrize("fmt", [".csv", ".tsv", ".parquet"])
def test_every_output_format_holds_the_same_rows(fmt, model_dir, tmp_path):
    src = _write(tmp_path / "in.csv", _rows(20))
    common = ["--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id", "--chunk_size", 6,
              "--return_probs"]
    assert _predict(*common, "--output", tmp_path / "ref.jsonl") == 0
    assert _predict(*common, "--output", tmp_path / f"p{fmt}") == 0
    ref = _jsonl(tmp_path / "ref.jsonl")
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        got = pq.read_table(tmp_path / f"p{fmt}").to_pylist()
        assert not (tmp_path / "p.parquet.parts").exists()
    else:
        with open(tmp_path / f"p{fmt}", newline="", encoding="utf-8") as fh:
            got = list(csv.DictReader(fh, delimiter="\t" if fmt == ".tsv" else ","))
    assert [g["id"] for g in got] == [r["id"] for r in ref]
    assert [g["label"] for g in got] == [r["label"] for r in ref]
    np.testing.assert_allclose([float(g["prob_pos"]) for g in got], [r["prob_pos"] for r in ref], rtol=1e-6)


def test_reading_is_streamed_in_constant_memory(tmp_path):
    """A 100k-row CSV (13 MB): the reader holds a row at a time (Parquet: one record batch), so the memory it
    allocates at once stays at a few rows' worth, whatever the file's size; JSON lines and Parquet likewise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "a short sentence about cats and dogs, " * 3
    big = tmp_path / "big.csv"
    with open(big, "w", encoding="utf-8") as fh:
        fh.write("id,text\n")
        fh.writelines(f"{i},{text}{i}\n" for i in range(100_000))
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i in range(20_000)), encoding="utf-8")
    parquet = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": list(range(20_000)), "text": [text] * 20_000}), parquet, row_group_size=5000)
    for path, expected, bound in ((big, 100_000, 100_000), (jsonl, 20_000, 100_000), (parquet, 20_000, 600_000)):
        tracemalloc.start()
        count = sum(1 for _ in iter_rows(path, text_column="text", id_column="id", batch_rows=1000))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == expected
        assert peak < bound, (path.name, peak)  # parquet: one batch of 1000 rows as Python objects
    assert big.stat().st_size > 12_000_000


def test_a_run_holds_at_most_one_chunk(model_dir, tmp_path, monkeypatch):
    sizes, real = [], jobs._Job._chunk

    def spy(self, model, chunk, *args):
        sizes.append(len(chunk))
        return real(self, model, chunk, *args)

    monkeypatch.setattr(jobs._Job, "_chunk", spy)
    src = _write(tmp_path / "in.jsonl", _rows(25))
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--output", tmp_path / "o.jsonl",
                    "--chunk_size", 7) == 0
    assert sizes == [7, 7, 7, 4]


# ------------------------------------------------------------------------------------------- bad rows
def test_bad_rows_are_written_with_their_reason_and_counted(model_dir, loaded, tmp_path, capsys):
    rows = [{"id": "a", "text": "the cat sleeps", "hyp": "a dog runs", "lang": "eng_Latn"},
            {"id": "b", "text": "", "hyp": "a dog runs", "lang": "eng_Latn"},       # one blank segment: kept
            {"id": "c", "text": "  ", "hyp": "", "lang": "eng_Latn"},              # no text at all
            {"id": "d", "text": "\u200b\u200d", "hyp": "\u2060", "lang": "eng_Latn"},  # nothing the tokenizer reads
            {"id": "e", "text": "le chat dort", "hyp": "sur le tapis", "lang": "fra_Latn"},
            {"id": "f", "text": "the cat", "hyp": "x", "lang": "eng_Latm"},        # unknown code
            {"id": "g", "text": "the cat", "hyp": "", "lang": ""}]                 # no language
    src = _write(tmp_path / "in.csv", rows, columns=("id", "text", "hyp", "lang"))
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--pair_column", "hyp", "--lang_column", "lang",
                    "--id_column", "id", "--output", out, "--chunk_size", 3) == 0
    got = {g["id"]: g for g in _jsonl(out)}
    assert list(got) == list("abcdefg")
    assert {k: g["skipped"] for k, g in got.items()} == {
        "a": None, "b": None, "c": "no text", "d": "no text", "e": None, "f": "unknown language", "g": "no language"}
    assert all(got[k]["label"] is None for k in "cdfg")
    sep = loaded.config.pair_separator
    assert got["b"]["label"] == loaded.predict(["" + sep + "a dog runs"], lang="eng_Latn")[0]
    assert got["e"]["label"] == loaded.predict(["le chat dort"], pairs=["sur le tapis"], lang="fra_Latn")[0]
    assert got["f"]["lang"] == "eng_Latm"
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == {"no language": 1, "no text": 2, "unknown language": 1}
    assert summary["done"] == 3 and summary["blank_segment"] == 1  # b (blank premise); g is skipped, a and e whole
    record = json.loads((tmp_path / ("p.jsonl" + PROGRESS_SUFFIX)).read_text())
    assert record["complete"] and record["counts"]["skipped"] == summary["skipped"]


def test_blank_segment_count_counts_kept_rows_only(model_dir, tmp_path, capsys):
    rows = [{"id": "a", "text": "the cat", "hyp": ""}, {"id": "b", "text": "", "hyp": "the dog"},
            {"id": "c", "text": "the cat", "hyp": "the dog"}]
    src = _write(tmp_path / "in.jsonl", rows, columns=("id", "text", "hyp"))
    assert _predict("--model", model_dir, "--input", src, "--pair_column", "hyp", "--lang", "eng_Latn",
                    "--id_column", "id", "--output", tmp_path / "p.csv") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["blank_segment"] == 2 and summary["done"] == 3 and summary["skipped"] == {}


def test_fail_policy_stops_before_any_model_work(model_dir, tmp_path, monkeypatch, capsys):
    rows = _rows(10)
    rows[6]["text"] = "   "
    src = _write(tmp_path / "in.csv", rows)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the bad row was reported")

    monkeypatch.setattr(MTLLMModel, "from_pretrained", no_model)
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id",
                    "--output", out, "--on_bad_row", "fail") == 2
    err = capsys.readouterr().err
    assert f"{src}: row 7 (id 'r006'), column 'text': no text" in err and "--on_bad_row skip" in err
    assert not out.exists()


def test_fail_policy_on_what_only_the_tokenizer_sees_stops_before_that_chunk(model_dir, tmp_path, capsys):
    rows = _rows(10)
    rows[7]["text"] = "\u200b\u200b"  # not blank to Python, nothing to the tokenizer
    src = _write(tmp_path / "in.csv", rows)
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id",
                    "--output", out, "--on_bad_row", "fail", "--chunk_size", 4) == 2
    assert "row 8 (id 'r007'), column 'text': no text" in capsys.readouterr().err
    assert [g["id"] for g in _jsonl(out)] == ["r000", "r001", "r002", "r003"]  # the chunk before it, not this one


# ------------------------------------------------------------------------------------------- --lang auto
def _fake_langid(monkeypatch, calls: list):
    fake = types.ModuleType("mtllm.langid")

    def identify(texts):
        calls.append(list(texts))
        return [("fra_Latn", 0.75) if " le " in f" {t} " else ("eng_Latn", 0.5) for t in texts]

    fake.identify = identify
    monkeypatch.setitem(sys.modules, "mtllm.langid", fake)


def test_lang_auto_writes_detected_language_and_confidence(model_dir, loaded, tmp_path, monkeypatch):
    calls: list = []
    _fake_langid(monkeypatch, calls)
    rows = _rows(12, seed=5)
    rows[4]["text"] = ""
    src = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "auto", "--id_column", "id", "--output", out,
                    "--chunk_size", 5) == 0
    got = _jsonl(out)
    texts = [r["text"] for r in rows]
    detected = ["fra_Latn" if " le " in f" {t} " else "eng_Latn" for t in texts]
    assert {"fra_Latn", "eng_Latn"} <= set(detected)
    assert sum(len(c) for c in calls) == 11  # the blank row is not identified
    for g, t, code in zip(got, texts, detected):
        if not t:
            assert g["skipped"] == "no text" and g["lang"] is None and g["lang_confidence"] is None
            continue
        assert g["lang"] == code and g["lang_confidence"] == (0.75 if code == "fra_Latn" else 0.5)
        assert g["label"] == loaded.predict([t], lang=code)[0]


def test_lang_auto_with_the_real_identifier(model_dir, tmp_path):
    langid = pytest.importorskip("mtllm.langid", reason="mtllm.langid is not available yet")
    try:
        langid.identify(["The cat sleeps on the warm mat."])
    except Exception as err:  # e.g. its model cannot be found here
        pytest.skip(f"mtllm.langid cannot identify here: {err}")
    src = _write(tmp_path / "in.txt", [{"text": "The cat sleeps on the warm mat every morning."},
                                       {"text": "Le chat dort sur le tapis chaud tous les matins."}])
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "auto", "--output", out) == 0
    got = _jsonl(out)
    assert [g["lang"] for g in got] == ["eng_Latn", "fra_Latn"]
    assert all(0 <= g["lang_confidence"] <= 1 for g in got)


# ------------------------------------------------------------------------------------------- resume
def _interrupt_after(monkeypatch, n_chunks: int):
    """Ctrl-C (KeyboardInterrupt) right after the n-th chunk's rows are recorded."""
    real = jobs._Job._chunk
    seen = []

    def chunk(self, *args):
        done = real(self, *args)
        seen.append(done)
        if len(seen) == n_chunks:
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(jobs._Job, "_chunk", chunk)


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
def test_interrupted_run_resumes_to_the_same_bytes(fmt, model_dir, tmp_path, monkeypatch, capsys):
    src = _write(tmp_path / "in.csv", _rows(40))
    args = ["--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id", "--chunk_size", 6,
            "--batch_size", 4, "--return_probs"]
    ref, out = tmp_path / f"ref{fmt}", tmp_path / f"p{fmt}"
    assert _predict(*args, "--output", ref) == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        assert _predict(*args, "--output", out) == 130
    assert "rerun the same command to continue" in capsys.readouterr().err
    record = json.loads((tmp_path / (out.name + PROGRESS_SUFFIX)).read_text())
    assert record["rows_done"] == 18 and not record["complete"]
    calls = []
    real = jobs._Job._chunk
    monkeypatch.setattr(jobs._Job, "_chunk", lambda self, model, chunk, *a: calls.append(chunk[0].number)
                        or real(self, model, chunk, *a))
    assert _predict(*args, "--output", out) == 0
    assert calls == [19, 25, 31, 37]  # only the rows not done
    assert out.read_bytes() == ref.read_bytes()
    assert _predict(*args, "--output", out) == 0  # finished: says so, leaves it alone
    assert "already complete" in capsys.readouterr().err
    assert out.read_bytes() == ref.read_bytes()


def _fork_killed(argv: list[str], plan) -> int:
    """Run ``mtllm ARGV`` in a forked child with ``plan`` (tests/fault_inject.py) installed, which SIGKILLs itself
    at the planned write; returns the signal that ended it."""
    import traceback

    from fault_inject import install

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("this process has initialised CUDA (an earlier test ran on the GPU), and PyTorch does not support "
                    "CUDA in a forked child: run this test in a process of its own")
    pid = os.fork()
    if pid == 0:  # the child: one thread (OpenMP is not fork-safe), the fault, the command
        code = 99
        try:
            torch.set_num_threads(1)
            install(plan)
            code = main(argv)
        except BaseException:
            traceback.print_exc()  # the test then fails on exit code 99 with this on its stderr
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


@pytest.mark.parametrize("where", ["torn output write", "right after a progress record"])
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(where, model_dir, tmp_path):
    from fault_inject import Plan

    src = _write(tmp_path / "in.jsonl", _rows(30))
    args = ["predict", "--model", str(model_dir), "--input", str(src), "--lang", "eng_Latn", "--id_column", "id",
            "--chunk_size", "5", "--return_probs", "--progress", "false"]
    ref, out = tmp_path / "ref.csv", tmp_path / "p.csv"
    assert main([*args, "--output", str(ref)]) == 0
    plan = (Plan("kill", str(out), skip=2, partial=40) if where == "torn output write"
            else Plan("kill", str(out) + PROGRESS_SUFFIX, skip=2, on="replace"))  # the start's record, 2 chunks
    assert _fork_killed([*args, "--output", str(out)], plan) == signal.SIGKILL
    record = json.loads((tmp_path / (out.name + PROGRESS_SUFFIX)).read_text())
    assert not record["complete"] and record["rows_done"] == 10
    if where == "torn output write":
        assert out.stat().st_size == record["state"]["bytes"] + 40  # a row cut in the middle
    assert main([*args, "--output", str(out)]) == 0
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.slow
def test_kill_9_of_a_real_mtllm_predict_process(model_dir, tmp_path):
    """``kill -9`` of ``python -m mtllm predict`` as soon as its first chunks are recorded (a new interpreter:
    about 20 s here)."""
    src = _write(tmp_path / "in.csv", _rows(3000))
    args = ["predict", "--model", str(model_dir), "--input", str(src), "--lang", "eng_Latn", "--id_column", "id",
            "--chunk_size", "50", "--progress", "false",
            "--dtype", "float32"]  # the child does not see fp32_auto: the same dtype as the reruns here, explicitly
    ref, out = tmp_path / "ref.jsonl", tmp_path / "p.jsonl"
    progress = tmp_path / (out.name + PROGRESS_SUFFIX)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mtllm", *args, "--output", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(progress.read_text())["rows_done"] >= 100:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not json.loads(progress.read_text())["complete"]
    assert main([*args, "--output", str(out)]) == 0
    assert main([*args, "--output", str(ref)]) == 0
    assert out.read_bytes() == ref.read_bytes()


# ------------------------------------------------------------------------------------------- refusals
def test_changed_input_other_settings_and_foreign_outputs_are_refused(model_dir, tmp_path, monkeypatch, capsys):
    rows = _rows(12)
    src = _write(tmp_path / "in.csv", rows)
    args = ["--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id", "--chunk_size", 4]
    out = tmp_path / "p.jsonl"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert _predict(*args, "--output", out) == 130
    capsys.readouterr()
    rows[10]["text"] = "changed"
    _write(src, rows)
    assert _predict(*args, "--output", out) == 2
    err = capsys.readouterr().err
    assert "was started by a run that differs (input.sha256: " in err and "--overwrite" in err
    assert [g["id"] for g in _jsonl(out)] == ["r000", "r001", "r002", "r003"]  # untouched
    rows[10]["text"] = _rows(12)[10]["text"]
    _write(src, rows)  # the same input again, other settings
    assert _predict(*args, "--output", out, "--return_probs") == 2
    assert "differs (settings.return_probs: False -> True)" in capsys.readouterr().err
    assert _predict(*args, "--output", out, "--overwrite") == 0
    assert [g["id"] for g in _jsonl(out)] == [r["id"] for r in rows]
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text("my own file\n")
    assert _predict(*args, "--output", foreign) == 2
    assert "no progress record" in capsys.readouterr().err and foreign.read_text() == "my own file\n"


def test_settings_are_checked_before_any_work(model_dir, tmp_path, capsys):
    src = _write(tmp_path / "in.csv", _rows(3))
    base = ["--model", model_dir, "--input", src, "--output", tmp_path / "p.jsonl"]
    cases = [
        ([], "give the texts' language"),
        (["--lang", "eng_Latn", "--lang_column", "lang"], "not both"),
        (["--lang", "eng_latn_"], "lang must be a FLORES-200 code"),
        (["--lang", "eng_Latn", "--on_bad_row", "drop"], "on_bad_row must be 'skip' or 'fail'"),
        (["--lang", "eng_Latn", "--text_column", "body"], "no column 'body'"),
    ]
    for extra, message in cases:
        assert _predict(*base, *extra) == 2, extra
        assert message in capsys.readouterr().err, (extra, message)
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--output", tmp_path / "p.xlsx") == 2
    assert "the output type is set by its suffix: .jsonl, .csv, .tsv, .parquet" in capsys.readouterr().err
    txt = _write(tmp_path / "in.txt", _rows(2))
    assert _predict("--model", model_dir, "--input", txt, "--lang", "eng_Latn", "--id_column", "id",
                    "--output", tmp_path / "q.jsonl") == 2
    assert "a .txt input has one text per line and no columns" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_runs_on_cuda_like_on_the_cpu(model_dir, loaded, tmp_path):
    """--device cuda: the model and every batch on the GPU, the same labels as on the CPU."""
    src = _write(tmp_path / "in.csv", _rows(20))
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--output", out,
                    "--device", "cuda") == 0
    on_gpu = MTLLMModel.from_pretrained(model_dir, merge_adapters=True, device="cuda")
    texts = [r["text"] for r in _rows(20)]
    assert on_gpu.predict(texts, lang="eng_Latn") == loaded.predict(texts, lang="eng_Latn")
    assert [g["label"] for g in _jsonl(out)] == loaded.predict(texts, lang="eng_Latn")
