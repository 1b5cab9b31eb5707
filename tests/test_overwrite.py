"""Output folders: a folder holding a finished run, an unfinished one or files mtllm did not write is refused
(one line naming the folder and the way out) before any model loads, and left exactly as it was; ``--overwrite``
writes into it, removing only the earlier run's outputs. ``mtllm run`` never deletes a stage folder holding
files it did not write, and ``--overwrite`` changes no stage hash."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mtllm.cli import main
from mtllm.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "english.txt")
PIPELINE_DATA = str(ROOT / "tests" / "fixtures" / "pipeline")
TINY = str(ROOT / "configs" / "tiny.yaml")


def _adapt(out: Path, *extra: str) -> int:
    return main(["adapt", "--config", TINY, "--data", f"[{DATA}]", "--max_steps", "4", "--save_steps", "2",
                 "--keep_checkpoints", "5", "--output_dir", str(out), "--progress", "false", "--report_to", "none",
                 *extra])


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--config", str(ROOT / "configs" / "tiny-sib200.yaml"), "--data-dir", PIPELINE_DATA,
                 "--output-dir", str(out), "--stages", "[stage1]", "--progress", "false", "--report_to", "none",
                 *extra])


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_model_loads(monkeypatch) -> None:
    """Any model build fails the test: a refusal must come before the work."""
    from mtllm.modeling.model import MTLLMModel

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    for name in ("from_encoder_and_llm", "llm_only", "from_pretrained"):
        monkeypatch.setattr(MTLLMModel, name, forbidden)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mtllm ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished `mtllm adapt` run of 4 steps (a checkpoint at step 2; none is written at the last step)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _adapt(out) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_adapt_refuses_a_finished_run_and_leaves_it_as_it_was(finished, tmp_path, capsys, monkeypatch):
    out = _copy(finished, tmp_path / "run")
    before = _snapshot(out)
    _no_model_loads(monkeypatch)
    assert _adapt(out, "--learning_rate", "1e-3") == 2
    line = _error(capsys)
    assert line == (f"mtllm adapt: error: output_dir {out} holds a finished run (final/): choose another output_dir, "
                    f"or pass --overwrite to replace it")
    assert _snapshot(out) == before


def test_resume_of_a_finished_run_without_a_checkpoint_is_refused_too(finished, tmp_path, capsys, monkeypatch):
    """--resume with no checkpoint is a fresh run, so it may not replace a finished one either."""
    out = _copy(finished, tmp_path / "run")
    shutil.rmtree(out / "checkpoints")
    before = _snapshot(out)
    _no_model_loads(monkeypatch)
    assert _adapt(out, "--resume") == 2
    assert "holds a finished run (final/) and no valid checkpoint to resume from" in _error(capsys)
    assert _snapshot(out) == before


def test_adapt_refuses_an_unfinished_run_and_names_resume(finished, tmp_path, capsys, monkeypatch):
    out = _copy(finished, tmp_path / "run")
    shutil.rmtree(out / "final")  # as if killed after its step-2 checkpoint
    before = _snapshot(out)
    _no_model_loads(monkeypatch)
    assert _adapt(out) == 2
    assert _error(capsys) == (f"mtllm adapt: error: output_dir {out} holds an unfinished run (last checkpoint "
                              f"checkpoints/step-0000002): pass --resume to continue it, or --overwrite to start over")
    assert _snapshot(out) == before


@pytest.mark.parametrize("command", ["adapt", "finetune", "distill"])
def test_files_mtllm_did_not_write_are_refused(command, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("three years of work")
    (out / "figures").mkdir()
    _no_model_loads(monkeypatch)
    extra = {"adapt": ["--data", f"[{DATA}]"],
             "finetune": ["--task", "sib200", "--data_dir", PIPELINE_DATA],
             "distill": ["--task", "sib200", "--data_dir", PIPELINE_DATA, "--objective", "ce"]}[command]
    assert main([command, "--encoder", "tiny:xlmr", "--llm", "tiny:gemma3", *extra, "--output_dir", str(out),
                 "--report_to", "none"]) == 2
    assert _error(capsys) == (f"mtllm {command}: error: output_dir {out} holds files mtllm did not write (figures, "
                              f"thesis.tex): choose another output_dir, or pass --overwrite to write into it anyway "
                              f"(those files are kept)")
    assert sorted(p.name for p in out.iterdir()) == ["figures", "thesis.tex"]


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "run")
    (out / "notes.md").write_text("keep me")
    assert _adapt(out, "--overwrite", "--max_steps", "3", "--save_steps", "0") == 0
    assert "--overwrite: removed the earlier run's checkpoints, final" in capsys.readouterr().out
    assert (out / "notes.md").read_text() == "keep me"
    assert list_checkpoints(out) == []  # no stale step-2 checkpoint for a later --resume to pick up
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / "stage1_config.json").read_text())["training"]["max_steps"] == 3


def test_evaluate_refuses_results_before_loading_anything(finished, tmp_path, capsys, monkeypatch):
    import mtllm.evaluation.evaluate as evaluate

    calls = []
    monkeypatch.setattr(evaluate, "run_evaluate", lambda settings, **kw: calls.append(settings))
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    argv = ["evaluate", "--task", "retrieval", "--data_dir", PIPELINE_DATA, "--model", str(finished / "final"),
            "--systems", "[mtllm]", "--output_dir", str(out)]
    assert main(argv) == 2
    assert _error(capsys) == (f"mtllm evaluate: error: output_dir {out} holds a finished run (results.json): choose "
                              f"another output_dir, or pass --overwrite to replace it")
    assert calls == []
    assert main([*argv, "--overwrite"]) == 0 and len(calls) == 1


# ------------------------------------------------------------------------------------------ mtllm run
def test_run_never_deletes_files_it_did_not_write(tmp_path, capsys):
    assert _run(tmp_path) == 0
    stage = tmp_path / "stage1"
    (stage / "my-notes.txt").write_text("observations")
    capsys.readouterr()

    # inputs changed: the stage is to be redone, but it holds a file mtllm did not write
    before = _snapshot(stage)
    assert _run(tmp_path, "--learning_rate", "1e-3") == 2
    assert _error(capsys) == (f"mtllm run: error: stage1: its inputs changed, so {stage} is to be redone, but it holds "
                              f"files mtllm did not write (my-notes.txt): move them away, or pass --overwrite to redo "
                              f"it anyway (those files are kept)")
    assert _snapshot(stage) == before

    # --overwrite is bookkeeping: with the same inputs the finished stage is skipped (same hash)
    hash_before = json.loads((stage / "stage.json").read_text())["hash"]
    assert _run(tmp_path, "--overwrite") == 0
    assert "stage1: already done with the same inputs" in capsys.readouterr().out
    assert json.loads((stage / "stage.json").read_text())["hash"] == hash_before

    assert _run(tmp_path, "--learning_rate", "1e-3", "--overwrite") == 0
    out = capsys.readouterr().out
    assert "stage1: inputs changed since the last run; redoing it" in out
    assert "keeping the files mtllm did not write: my-notes.txt" in out
    assert (stage / "my-notes.txt").read_text() == "observations"
    assert json.loads((stage / "stage.json").read_text())["hash"] != hash_before


def test_run_refuses_a_stage_folder_it_did_not_start(finished, tmp_path, capsys):
    """A finished `mtllm adapt` run placed where `mtllm run` puts stage 1 (no stage.json): refused, untouched;
    the earlier code deleted it ("holds files from an unknown run; redoing it")."""
    stage = _copy(finished, tmp_path / "stage1")
    before = _snapshot(stage)
    assert _run(tmp_path) == 2
    assert _error(capsys) == (f"mtllm run: error: stage1: output_dir {stage} holds a finished run (final/): choose "
                              f"another output_dir, or pass --overwrite to replace it (it has no stage.json: not a "
                              f"stage of `mtllm run`)")
    assert _snapshot(stage) == before
    assert not (tmp_path / "run_config.json").exists()  # refused before anything was written


def test_run_checks_every_stage_folder_before_the_first_stage(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    (tmp_path / "eval-sib200").mkdir()
    (tmp_path / "eval-sib200" / "draft.md").write_text("x")
    assert main(["run", "--config", str(ROOT / "configs" / "tiny-sib200.yaml"), "--data-dir", PIPELINE_DATA,
                 "--output-dir", str(tmp_path), "--progress", "false", "--report_to", "none"]) == 2
    assert "eval: output_dir" in _error(capsys)
    # no stage started (the stage folders' locks, beside them, are all that was made: mtllm.locks)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["eval-sib200"]


def test_run_redoes_a_folder_of_its_own_leftovers(tmp_path, capsys):
    """Only mtllm's own names and no run in it (e.g. killed before its first checkpoint, stage.json lost):
    cleared and redone."""
    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (stage / ".final.tmp-12345").mkdir()  # a temporary of a killed writer
    assert _run(tmp_path) == 0
    assert "removed .final.tmp-12345, metrics.jsonl" in capsys.readouterr().out
    assert not (stage / ".final.tmp-12345").exists()
    assert json.loads((stage / "metrics.jsonl").read_text().splitlines()[0])["loss"] != 9.0
