"""Bad input and faults, round 3 (issue 23, items 2, 3, 4 and 7): one writer per output (a lock, taken over from
a killed holder), outputs that never touch their input, results that follow their data, and output types and
limits that are one line before (or without) losing work."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.cli import main
from mtllm.locks import exclusive_output, lock_file

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4, dropout=0.0),
                                            max_seq_length=32)
    model.set_head("classification", ["a", "b", "c"])
    model.save_pretrained(root / "m")
    return root / "m"


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(f"{i},Sentence number {i} is here.\n" for i in range(1, 41)))
    return path


def _predict(model_dir, inp, out, *extra) -> list[str]:
    return ["predict", "--model", str(model_dir), "--input", str(inp), "--text_column", "text", "--id_column", "id",
            "--lang", "eng_Latn", "--output", str(out), "--chunk_size", "8", "--progress", "false", *extra]


def _one_line_error(capsys, code: int, *, after_work: bool = False) -> str:
    """The error line of a command that exited 2: its only stderr line, or (``after_work``: a fault met while
    working, after the model loaded and progress was printed) its last, with no traceback either way."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 or after_work, err
    assert lines[-1].startswith("mtllm "), err
    return lines[-1]


# --------------------------------------------------------------------------------------- item 2: one writer
HOLDER = """
import sys, time
from mtllm.locks import exclusive_output
with exclusive_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(path: Path) -> subprocess.Popen:
    """A second real process holding the lock of ``path`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "mtllm-test-holder"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_predict_on_one_output_is_refused_naming_the_holder(model_dir, texts, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    holder = _hold(out)
    try:
        err = _one_line_error(capsys, main(_predict(model_dir, texts, out)))
        assert f"is being written by process {holder.pid}" in err and "mtllm-test-holder" in err
        assert not out.exists() and not Path(f"{out}.progress.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the kernel dropped its lock, and the next run takes it over
    assert main(_predict(model_dir, texts, out)) == 0
    assert len(out.read_text().splitlines()) == 40


def test_two_real_predict_processes_on_one_output_never_both_write(model_dir, texts, tmp_path):
    out = tmp_path / "preds.jsonl"
    argv = [sys.executable, "-m", "mtllm", *_predict(model_dir, texts, out)]
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = lock_file(out)
    deadline = time.time() + 120
    while not Path(f"{lock}.json").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    first_out, first_err = first.communicate(timeout=300)
    codes = sorted([first.returncode, second.returncode])
    if codes == [0, 0]:  # the first had already finished: the second found the output complete
        assert "already complete" in second.stderr
    else:
        assert codes == [0, 2], (first_err, second.stderr)
        assert "is being written by process" in (second.stderr if second.returncode else first_err)
    assert len(out.read_text().splitlines()) == 40  # never 2 x 40 rows


def test_a_folder_output_is_locked_for_evaluate_and_training(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    holder = _hold(out)
    try:
        err = _one_line_error(capsys, main(["evaluate", "--model", str(model_dir), "--data-dir", DATA, "--systems",
                                            "[mtllm]", "--output-dir", str(out)]))
        assert f"output_dir {out} is being written by process {holder.pid}" in err
        err = _one_line_error(capsys, main(["adapt", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data-dir",
                                            DATA, "--output-dir", str(out), "--max_steps", "1"]))
        assert "is being written by process" in err
        assert not out.exists()  # nothing written: the lock lives beside the folder (.eval.lock)
        assert lock_file(out) == tmp_path / ".eval.lock"
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    out = tmp_path / "x.jsonl"
    with exclusive_output(out):
        with exclusive_output(out):  # a pipeline stage that calls a locking function
            pass
        proc = subprocess.run([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0 and "is being written by process" in proc.stderr  # still held after the inner
    assert not Path(f"{lock_file(out)}.json").exists()  # the holder record goes with the lock
    with exclusive_output(out):
        pass


def test_a_pipeline_stage_folder_is_locked(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = _hold(run_dir / "stage1")
    try:
        err = _one_line_error(capsys, main(["run", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data-dir", DATA,
                                            "--output-dir", str(run_dir), "--max_steps", "1"]))
        assert "the stage1 stage folder" in err and "is being written by process" in err
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- item 3: outputs never touch inputs
@pytest.mark.parametrize("command,input_name,output_name", [
    ("encode", "X.ids.txt", "X.npy"),                       # the tester's case: .npy's companion
    ("predict", "out.jsonl.progress.json", "out.jsonl"),   # the progress record (a .json input is refused by type,
    ("predict", "out.csv", "out.csv"),                      # ... so: the output itself
])
def test_an_output_whose_companion_files_are_the_input_is_refused(model_dir, tmp_path, capsys, command, input_name,
                                                                  output_name):
    inp = tmp_path / input_name
    inp.write_text("text\nHello there.\nBonjour.\n" if inp.suffix == ".csv" else "Hello there.\nBonjour.\n")
    before = inp.read_bytes()
    argv = [command, "--model", str(model_dir), "--input", str(inp), "--lang", "eng_Latn", "--output",
            str(tmp_path / output_name), "--overwrite", "true"]
    code = main(argv)
    if inp.suffix not in (".txt", ".csv"):  # a .json input is refused as an input type first
        assert code == 2
    else:
        err = _one_line_error(capsys, code)
        assert "input" in err
    assert inp.read_bytes() == before


def test_an_input_inside_the_parquet_part_folder_is_refused(model_dir, tmp_path, capsys):
    parts = tmp_path / "out.parquet.parts"
    parts.mkdir()
    inp = parts / "in.txt"
    inp.write_text("Hello there.\n")
    err = _one_line_error(capsys, main(["predict", "--model", str(model_dir), "--input", str(inp), "--lang",
                                        "eng_Latn", "--output", str(tmp_path / "out.parquet"), "--overwrite", "true"]))
    assert "out.parquet.parts" in err and inp.read_text() == "Hello there.\n"


def test_a_hard_link_to_the_input_is_the_input(model_dir, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("Hello there.\n")
    os.link(inp, tmp_path / "X.ids.txt")
    _one_line_error(capsys, main(["encode", "--model", str(model_dir), "--input", str(inp), "--lang", "eng_Latn",
                                  "--output", str(tmp_path / "X.npy"), "--overwrite", "true"]))
    assert inp.read_text() == "Hello there.\n"


# ------------------------------------------------------------------------ item 4: results follow their data
def test_an_input_changed_while_predict_runs_is_not_marked_complete(model_dir, texts, tmp_path, capsys, monkeypatch):
    import mtllm.inference.jobs as jobs

    out = tmp_path / "preds.jsonl"
    real_chunk = jobs._Job._chunk
    calls = []

    def chunk_then_edit(self, *args, **kwargs):
        done = real_chunk(self, *args, **kwargs)
        if not calls:
            texts.write_text(texts.read_text().replace("Sentence number 40", "A changed sentence"))
        calls.append(done)
        return done

    monkeypatch.setattr(jobs._Job, "_chunk", chunk_then_edit)
    err = _one_line_error(capsys, main(_predict(model_dir, texts, out)), after_work=True)
    assert "changed while predict ran" in err and "not marked complete" in err
    record = json.loads(Path(f"{out}.progress.json").read_text())
    assert record["complete"] is False
    monkeypatch.setattr(jobs._Job, "_chunk", real_chunk)
    err = _one_line_error(capsys, main(_predict(model_dir, texts, out)))  # the rerun sees the change
    assert "differs (input.sha256: " in err
    assert main(_predict(model_dir, texts, out, "--overwrite", "true")) == 0
    assert json.loads(Path(f"{out}.progress.json").read_text())["complete"] is True


# ----------------------------------------------------------------------------- item 7: output types and limits
def test_ids_of_mixed_types_to_parquet_are_one_line_before_any_work(model_dir, tmp_path, capsys, monkeypatch):
    import mtllm.inference.jobs as jobs

    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": i, "text": "Hello there."}) for i in (1, "x2", 3)) + "\n")
    monkeypatch.setattr(jobs._Job, "_load_model", lambda self: pytest.fail("the model loaded"))
    err = _one_line_error(capsys, main(["predict", "--model", str(model_dir), "--input", str(inp), "--id_column", "id",
                                        "--lang", "eng_Latn", "--output", str(tmp_path / "out.parquet")]))
    assert "integer (first at row 1), string (first at row 2)" in err
    inp.write_text("\n".join(json.dumps({"id": i, "text": "Hello there."}) for i in (1.5, 2.5)) + "\n")
    err = _one_line_error(capsys, main(["predict", "--model", str(model_dir), "--input", str(inp), "--id_column", "id",
                                        "--lang", "eng_Latn", "--output", str(tmp_path / "out2.parquet")]))
    assert "float (first at row 1)" in err


def test_an_output_name_whose_companions_are_too_long_is_refused(model_dir, texts, tmp_path, capsys):
    out = tmp_path / ("p" * 230 + ".npy")  # fits, but its .progress.json temporary would not
    err = _one_line_error(capsys, main(["encode", "--model", str(model_dir), "--input", str(texts), "--text_column",
                                        "text", "--lang", "eng_Latn", "--output", str(out)]))
    assert "output name is too long" in err
    assert list(tmp_path.iterdir()) == [texts]


def test_a_full_disk_is_one_line_and_the_rerun_continues_to_the_same_bytes(model_dir, texts, tmp_path, capsys,
                                                                         monkeypatch):
    import mtllm.inference.writers as writers

    clean = tmp_path / "clean.jsonl"
    assert main(_predict(model_dir, texts, clean)) == 0
    out = tmp_path / "preds.jsonl"
    real_append = writers._fsync_append
    calls = []

    def full_after_two(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_append(path, data)

    monkeypatch.setattr(writers, "_fsync_append", full_after_two)
    err = _one_line_error(capsys, main(_predict(model_dir, texts, out)), after_work=True)
    assert "no space left writing" in err and "rerun the same command: it continues with the next row" in err
    monkeypatch.setattr(writers, "_fsync_append", real_append)
    assert main(_predict(model_dir, texts, out)) == 0
    assert out.read_bytes() == clean.read_bytes()
