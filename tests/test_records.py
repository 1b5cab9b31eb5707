"""Run records (mtllm.records, issue 22 item 3): one mechanism for predict/encode progress, an evaluation's partial
results and `mtllm run`'s stage records: written atomically, compared on rerun, differences named by dotted path,
refused unless --overwrite, a damaged record read one way; and the files written before it (each user's old format)
still continue."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtllm import _io
from mtllm.errors import ConfigError
from mtllm.fingerprints import json_digest
from mtllm.records import RunRecord, differences

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = {"version": 1, "settings": {"dtype": "bfloat16", "lang": "eng_Latn"},
            "input": {"size": 10, "sha256": "a" * 64}}


# --------------------------------------------------------------------------------------------- differences
def test_differences_are_named_by_dotted_path_one_line_each_sorted():
    old = {"settings": {"dtype": "bfloat16", "lang": "eng_Latn", "cols": ["a"]}, "model": {"sha256": "x"}}
    new = {"settings": {"dtype": "float32", "lang": "eng_Latn", "cols": ["a", "b"], "probs": True},
           "model": {"sha256": "x"}}
    assert differences(old, new) == ["settings.cols: ['a'] -> ['a', 'b']", "settings.dtype: 'bfloat16' -> 'float32'",
                                     "settings.probs: None -> True"]
    assert differences(new, new) == []
    assert differences({"a": {"b": 1}}, {"a": 2}) == ["a: {'b': 1} -> 2"]  # a mapping against a value: whole


def test_differences_compare_as_json_and_know_legacy_values():
    assert differences({"x": ("a", 1), "p": "/tmp/f"}, {"x": ["a", 1], "p": Path("/tmp/f")}) == []
    assert differences({"settings": {"dtype": "auto"}}, {"settings": {"dtype": "float32"}},
                       legacy={"settings.dtype": ("auto",)}) == []
    assert differences({"settings": {"dtype": "bfloat16"}}, {"settings": {"dtype": "float32"}},
                       legacy={"settings.dtype": ("auto",)}) == ["settings.dtype: 'bfloat16' -> 'float32'"]


def test_a_long_value_is_cut_in_the_middle_so_both_ends_show():
    model = "/runs/sib/distill/final@"
    (line,) = differences({"model": model + "0" * 64}, {"model": model + "0" * 63 + "1"})
    assert line.startswith("model: '/runs/sib/distill/final@") and "..." in line and line.endswith("01'")
    assert len(line) < 200


# --------------------------------------------------------------------------------------------- write / read
def test_write_then_read_in_both_layouts(tmp_path):
    top = RunRecord(tmp_path / "p.json")
    top.write(IDENTITY, rows_done=3, complete=False)
    assert json.loads((tmp_path / "p.json").read_text()) == {**IDENTITY, "rows_done": 3, "complete": False}
    nested = RunRecord(tmp_path / "n.json", identity_field="key")
    nested.write({"task": "sib200"}, langs={"eng_Latn": {"accuracy": 0.5}})
    assert nested.read() == {"key": {"task": "sib200"}, "langs": {"eng_Latn": {"accuracy": 0.5}}}
    assert RunRecord(tmp_path / "none.json").read() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json", "p.json"]  # no temporary left


def test_a_crash_mid_write_leaves_the_previous_record(tmp_path, monkeypatch):
    record = RunRecord(tmp_path / "p.json")
    record.write(IDENTITY, rows_done=3, complete=False)

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(_io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        record.write(IDENTITY, rows_done=9, complete=False)
    monkeypatch.undo()
    assert record.read()["rows_done"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_kill_9_mid_write_leaves_the_previous_record_and_the_next_read_drops_the_temporary(tmp_path):
    """A real kill: the writer process dies (SIGKILL, tests/fault_inject.py) 30 bytes into the new record."""
    path = tmp_path / "stage.json"
    RunRecord(path).write({"hash": "h1"}, status="running")
    script = (f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]\n"
              "from fault_inject import Plan, install\n"
              f"install(Plan('kill', {str(tmp_path / '.stage.json.tmp-*')!r}, partial=30))\n"
              "from mtllm.records import RunRecord\n"
              f"RunRecord({str(path)!r}).write({{'hash': 'h1'}}, status='done', summary={{'x': 'y' * 1000}})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    torn = [p for p in tmp_path.iterdir() if p.name.startswith(".stage.json.tmp-")]
    assert len(torn) == 1 and torn[0].stat().st_size == 30
    record = RunRecord(path, finished=("status", "done"))
    found = record.compare({"hash": "h1"})
    assert found.action == "continue" and found.record["status"] == "running"  # the previous record, whole
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]  # the dead writer's temporary is gone


# --------------------------------------------------------------------------------------------- compare / check
def test_compare_says_fresh_continue_complete_or_changed(tmp_path):
    record = RunRecord(tmp_path / "p.json")
    assert record.compare(IDENTITY).action == "fresh"
    record.write(IDENTITY, rows_done=3, complete=False)
    assert record.compare(IDENTITY).action == "continue"
    record.write(IDENTITY, rows_done=5, complete=True)
    found = record.compare(IDENTITY)
    assert found.action == "complete" and found.finished and found.record["rows_done"] == 5
    other = {**IDENTITY, "settings": {**IDENTITY["settings"], "dtype": "float32"}}
    found = record.compare(other)
    assert found.action == "changed" and found.changes == ("settings.dtype: 'bfloat16' -> 'float32'",)
    stage = RunRecord(tmp_path / "stage.json", finished=("status", "done"))
    stage.write({"hash": "h"}, status="running")
    assert stage.compare({"hash": "h"}).action == "continue"
    stage.write({"hash": "h"}, status="done")
    assert stage.compare({"hash": "h"}).action == "complete"


def test_another_identity_is_refused_in_one_line_naming_what_differs_and_overwrite(tmp_path):
    record = RunRecord(tmp_path / "p.json")
    record.write(IDENTITY, rows_done=3, complete=False)
    other = {**IDENTITY, "input": {"size": 11, "sha256": "b" * 64}}
    with pytest.raises(ConfigError) as err:
        record.check(other, overwrite=False, what="out.jsonl")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("out.jsonl was started by a run that differs (input.sha256: ")
    assert "; input.size: 10 -> 11)" in msg and msg.endswith("to continue it, or pass --overwrite to start over")
    record.write(IDENTITY, rows_done=5, complete=True)
    with pytest.raises(ConfigError, match=r"^out\.jsonl was written by a run that differs .*to keep it"):
        record.check(other, overwrite=False, what="out.jsonl")
    many = {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1}
    record.write(many)
    with pytest.raises(ConfigError, match=r"\(a: 1 -> 2; b: 1 -> 2; c: 1 -> 2; d: 1 -> 2; and 2 more\)"):
        record.check({k: 2 for k in many}, overwrite=False, what="x")
    nested = RunRecord(tmp_path / "n.json", identity_field="key", state={"langs": dict})
    nested.write({"max_examples": None}, langs={"eng_Latn": {}})
    with pytest.raises(ConfigError, match=r"^n\.json, holding 1 languages, was started .*\(max_examples: None -> 4\)"):
        nested.check({"max_examples": 4}, overwrite=False,
                     what=lambda r: f"n.json, holding {len(r['langs'])} languages,")
    assert nested.read()["langs"] == {"eng_Latn": {}}  # a refusal changes nothing


def test_overwrite_sets_any_record_aside(tmp_path):
    record = RunRecord(tmp_path / "p.json")
    record.write(IDENTITY, rows_done=3, complete=False)
    other = {**IDENTITY, "version": 2}
    for identity in (IDENTITY, other):  # the same work or other work: with overwrite both start over
        found = record.check(identity, overwrite=True, what="x")
        assert found.action == "fresh" and found.record["rows_done"] == 3
    assert record.check(other, overwrite=True, what="x").changes == ("version: 1 -> 2",)
    assert record.check(IDENTITY, overwrite=False, what="x").action == "continue"  # set aside, not removed
    record.remove()
    assert record.check(IDENTITY, overwrite=True, what="x").action == "fresh"


@pytest.mark.parametrize(("text", "why"), [
    ('{"version": 1, "settings": {"dty', "JSONDecodeError"),  # torn
    ("", "JSONDecodeError"),
    ("[1, 2]", "a JSON list, not an object"),
    (b"\xff\xfe{}", "UnicodeDecodeError"),
    ('{"version": 1, "complete": false}', "no int 'rows_done'"),  # without a field its kind needs
    ('{"version": 1, "rows_done": true}', "no int 'rows_done'"),
])
def test_a_damaged_record_is_no_record_and_says_why(tmp_path, text, why):
    path = tmp_path / "p.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    record = RunRecord(path, state={"rows_done": int})
    assert record.read() is None
    for overwrite in (False, True):  # never refused: what it means is the user's rule
        found = record.check(IDENTITY, overwrite=overwrite, what="x")
        assert found.action == "fresh" and found.record is None and why in found.damaged


def test_a_nested_identity_that_is_not_a_mapping_is_damaged(tmp_path):
    (tmp_path / "n.json").write_text('{"key": "sib200", "langs": {}}')
    found = RunRecord(tmp_path / "n.json", identity_field="key").compare({"task": "sib200"})
    assert found.action == "fresh" and found.damaged == "no dict 'key'"


# ---------------------------------------------------------------- the three users read their old files
def test_a_progress_record_of_the_old_code_continues(tmp_path):
    """``<output>.progress.json`` as the code before mtllm.records wrote it (identity at the top level, indent 1),
    also one from before the dtype was resolved (``auto``): the job continues it; another input is refused."""
    from mtllm.inference import jobs
    from mtllm.inference.jobs import PredictFileSettings

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,a cat\n2,a dog\n3,a bird\n")
    out = tmp_path / "p.jsonl"
    out.write_text('{"id": 1, "label": "a"}\n')
    settings = PredictFileSettings(model=str(model), input=str(src), output=str(out), lang="eng_Latn",
                                   id_column="id", progress=False, dtype="float32")
    job = jobs._Job(settings, "predict")
    identity = job._identity()
    old = {"version": 1,
           "settings": {"text_column": "text", "lang": "eng_Latn", "lang_column": None, "id_column": "id",
                        "on_bad_row": "skip", "dtype": "float32", "pair_column": None, "option_columns": [],
                        "return_probs": False, "command": "predict", "output_format": ".jsonl"},
           "input": {"size": src.stat().st_size, "sha256": _io.file_sha256(src)},
           "model": identity["model"],
           "rows_total": 3, "rows_done": 1, "state": {"offset": 24},
           "counts": {"rows": 3, "done": 1, "skipped": {}, "blank_segment": 0, "truncated": 0}, "complete": False}
    assert old["settings"] == identity["settings"]  # the old identity is this code's identity
    progress = tmp_path / "p.jsonl.progress.json"
    progress.write_text(json.dumps(old, indent=1))
    assert job.claim(identity) == old
    progress.write_text(json.dumps({**old, "settings": {**old["settings"], "dtype": "auto"}}, indent=1))
    assert job.claim(identity)["rows_done"] == 1  # recorded before the dtype was resolved: continues
    progress.write_text(json.dumps({**old, "complete": True}, indent=1))
    assert job.claim(identity)["complete"] is True
    progress.write_text(json.dumps({**old, "input": {"size": 1, "sha256": "0" * 64}}, indent=1))
    with pytest.raises(ConfigError, match=r"p\.jsonl was started by a run that differs \(input\.sha256: '0000"):
        job.claim(identity)
    progress.write_text('{"version": 1, "sett')
    with pytest.raises(ConfigError, match=r"p\.jsonl\.progress\.json cannot be read \(JSONDecodeError.*--overwrite"):
        job.claim(identity)
    job.s.overwrite = True
    assert job.claim(identity) is None


def test_partial_results_of_the_old_code_continue(tmp_path):
    """``partial_results.json`` as the code before mtllm.records wrote it (``{"key": ..., "langs": ...}``, no
    indent), also with a key from before the dtype was resolved."""
    from mtllm.evaluation.partial import PARTIAL_FILE, PartialResults

    key = {"task": "sib200", "dtype": "float32", "model": "/runs/m@abc", "compare": [], "max_examples": None}
    langs = {"eng_Latn": {"accuracy": {"mtllm": 0.5}, "data": "d1"}}
    (tmp_path / PARTIAL_FILE).write_text(json.dumps({"key": key, "langs": langs}, default=str))
    partial = PartialResults.open(tmp_path, key)
    assert partial.langs == langs and partial.resumed == ("eng_Latn",) and partial.get("eng_Latn", "d1")
    (tmp_path / PARTIAL_FILE).write_text(json.dumps({"key": {**key, "dtype": "auto"}, "langs": langs}))
    assert PartialResults.open(tmp_path, key).langs == langs
    with pytest.raises(ConfigError, match=r"holding 1 languages of an unfinished evaluation, was started by a run "
                                          r"that differs \(max_examples: None -> 8\).*--overwrite"):
        PartialResults.open(tmp_path, {**key, "max_examples": 8})
    assert PartialResults.open(tmp_path, key, overwrite=True).langs == {}  # overwrite starts over
    (tmp_path / PARTIAL_FILE).write_text('{"key": {"task": "sib')  # torn: started over, never refused
    assert PartialResults.open(tmp_path, key).langs == {}
    partial = PartialResults.open(tmp_path, key)
    partial.add("fra_Latn", {"accuracy": {"mtllm": 0.25}}, data="d2")
    assert json.loads((tmp_path / PARTIAL_FILE).read_text()) == {
        "key": key, "langs": {"fra_Latn": {"accuracy": {"mtllm": 0.25}, "data": "d2"}}}
    partial.finish()
    assert not (tmp_path / PARTIAL_FILE).exists()


def _old_stage_json(folder: Path, hash_: str, status: str = "done", upstream: dict | None = None) -> dict:
    """A stage.json as the code before mtllm.records wrote it (no ``inputs``)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"hash": hash_, "status": status}
    if status == "done":
        info.update({"artefacts": {"best": str(folder / "best")}, "seconds": 1.5, "summary": {"accuracy": 0.5},
                     "data": {}, "upstream": upstream or {}})
    (folder / "stage.json").write_text(json.dumps(info, indent=1, default=str))
    return info


def test_stage_records_of_the_old_code_are_skipped_resumed_or_redone(tmp_path, capsys):
    from mtllm.cli.pipeline import _Stage

    teacher = _Stage(tmp_path / "teacher", "teacher", "h-teacher", inputs={"finetune": {"learning_rate": 1e-4}})
    old_teacher = _old_stage_json(tmp_path / "teacher", "h-teacher")
    # the old code's digest of an upstream record: a finished downstream stage still reads it as unchanged
    digest = json_digest({k: old_teacher.get(k) for k in ("hash", "data", "upstream")})
    _old_stage_json(tmp_path / "distill", "h-distill", upstream={"teacher": digest})
    distill = _Stage(tmp_path / "distill", "distill", "h-distill", upstream=(teacher,), inputs={"teacher": "h-teacher"})
    assert teacher.check() == "skip" and teacher.done() == old_teacher
    assert distill.check() == "skip" and distill.done() is not None
    _old_stage_json(tmp_path / "teacher", "h-teacher", status="running")
    assert teacher.check() == "resume"
    _old_stage_json(tmp_path / "teacher", "h-before")
    assert teacher.check() == "redo" and teacher.changes == []  # an old record kept no inputs to name
    assert teacher.begin("redo") is False
    assert "[run] teacher: inputs changed since the last run; redoing it\n" in capsys.readouterr().out
    record = json.loads((tmp_path / "teacher" / "stage.json").read_text())
    assert record == {"hash": "h-teacher", "status": "running", "inputs": {"finetune": {"learning_rate": 1e-4}}}


def test_a_redone_stage_names_what_changed_in_its_inputs(tmp_path, capsys):
    from mtllm.cli.pipeline import _Stage

    before = _Stage(tmp_path / "teacher", "teacher", "h1", inputs={"finetune": {"learning_rate": 1e-4}, "seed": 0})
    before.begin("fresh")
    before.finish({"best": "b"}, 1.0)
    assert before.check() == "skip"
    after = _Stage(tmp_path / "teacher", "teacher", "h2", inputs={"finetune": {"learning_rate": 2e-4}, "seed": 0})
    assert after.check() == "redo"
    capsys.readouterr()
    after.begin("redo")
    assert capsys.readouterr().out.splitlines() == ["[run] teacher: inputs changed since the last run; redoing it",
                                                    "[run]   finetune.learning_rate: 0.0001 -> 0.0002"]


def test_a_damaged_stage_record_is_no_record(tmp_path, capsys):
    """A stage.json that cannot be read proves nothing: the folder falls under the output-folder rule, a finished
    run in it is refused (naming the damaged record) unless --overwrite; leftovers alone are cleared."""
    from mtllm.cli.pipeline import _Stage

    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "best").mkdir()
    (folder / "stage.json").write_text('{"hash": "h1", "sta')
    with pytest.raises(ConfigError, match=r"^teacher: output_dir .* holds a finished run \(best/\).*--overwrite.*"
                                          r"\(its stage\.json cannot be read: JSONDecodeError"):
        _Stage(folder, "teacher", "h1").check()
    stage = _Stage(folder, "teacher", "h1", overwrite=True)
    assert stage.check() == "fresh"
    stage.begin("fresh")
    assert "left by a run whose stage.json cannot be read (JSONDecodeError" in capsys.readouterr().out
    assert not (folder / "best").exists() and json.loads((folder / "stage.json").read_text())["status"] == "running"
