"""Settings and command line: YAML presets (with ``base:``) + ``--key value`` overrides typed against the
settings dataclasses, ``--help`` for every key, one-line user errors (exit 2) and tracebacks for bugs,
and a ``run`` config checked in full before its first stage starts."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from mtllm.cli import COMMANDS, command_values, main
from mtllm.cli.pipeline import _hash, _stage_inputs, plan_run
from mtllm.errors import ConfigError
from mtllm.evaluation.evaluate import EvaluateSettings
from mtllm.settings import ModelSettings, build_settings, load_yaml, parse_overrides
from mtllm.training.distill import DistillSettings
from mtllm.training.loop import TrainingArgs
from mtllm.training.stage1 import Stage1Settings

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
TINY_RUN = str(ROOT / "configs" / "tiny-sib200.yaml")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("encoder: tiny:xlmr\nllm: tiny:gemma3\nmax_steps: 30\nlearning_rate: 1.0e-3\n"
                                        "data: [a.txt]\nnum_epochs: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmax_steps: 20\npooling: eos\n")
    values = command_values("adapt", ["--config", str(tmp_path / "child.yaml"), "--learning-rate", "0.01",
                                      "--output_dir", "2024", "--data", "b.txt,c.txt", "--progress",
                                      "--max_texts=null"])
    model, stage1, args = build_settings(COMMANDS["adapt"].settings(), values)
    assert (model.encoder, model.llm, model.pooling) == ("tiny:xlmr", "tiny:gemma3", "eos")  # base, then child
    assert args.max_steps == 20 and args.learning_rate == 0.01  # child over base, command line over both
    assert args.num_epochs == 2.0 and isinstance(args.num_epochs, float)  # typed by the field
    assert args.output_dir == "2024" and args.progress is True  # a scalar for a string; a bare flag is true
    assert stage1.data == ["b.txt", "c.txt"] and stage1.max_texts is None


def test_overrides_are_yaml_values():
    assert parse_overrides(["--data", "[a, b]", "--max-steps=3", "--x", "null", "--flag"]) == {
        "data": ["a", "b"], "max_steps": 3, "x": None, "flag": True}


def test_a_shared_preset_serves_every_command(monkeypatch):
    """configs/pocket.yaml holds stage-1 keys: finetune and evaluate take what they know and leave the rest,
    while a key no command knows (or a key given on the command line to the wrong command) is an error."""
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        is_run_config = "task" in load_yaml(preset)
        for name, cmd in COMMANDS.items():
            if name == "run":
                plan_run(command_values(name, ["--config", str(preset)]))
            elif not is_run_config and name != "convert":
                build_settings(cmd.settings(), command_values(name, ["--config", str(preset)]))
    ft = command_values("finetune", ["--config", TINY])
    assert "target_norm" not in ft and "data" not in ft and ft["lora_r"] == 4
    with pytest.raises(ConfigError, match="target_norm"):
        build_settings(COMMANDS["finetune"].settings(), command_values("finetune", ["--target_norm", "none"]))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_lists_every_key(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    cmd = COMMANDS[name]
    for cls in cmd.settings():
        for f in dataclasses.fields(cls):
            assert f"--{f.name} " in out, f.name
    for section, classes in cmd.sections().items():
        for cls in classes:
            for f in dataclasses.fields(cls):
                assert f"--{section}.{f.name} " in out, f"{section}.{f.name}"
    if name == "adapt":  # with its default and meaning
        assert "--lora_r LORA_R       LoRA rank. (type: int, default: 16)" in out
        assert "--target_norm {standardize,none}" in out


def test_unknown_key_is_one_line_with_close_match(tmp_path, capsys):
    assert main(["adapt", "--config", TINY, "--max_stepz", "3", "--output_dir", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("mtllm adapt: error: unknown config key(s): 'max_stepz' (did you mean max_steps")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag, value, message", [
    ("--target_norm", "bad", "target_norm must be 'standardize' or 'none', not 'bad'"),
    ("--mixed_precision", "fp8", "mixed_precision must be 'no', 'bf16' or 'fp16', not 'fp8'"),
    ("--max_steps", "many", "max_steps must be an integer or null, not 'many'"),
    ("--dtype", "float64", "dtype must be 'float32', 'bfloat16' or 'float16', not 'float64'"),
])
def test_bad_value_fails_before_anything_loads(tmp_path, capsys, flag, value, message):
    assert main(["adapt", "--config", TINY, flag, value, "--output_dir", str(tmp_path)]) == 2
    assert _error_line(capsys) == f"mtllm adapt: error: {message}"
    assert not any(tmp_path.iterdir())


def test_choices_are_checked_when_settings_are_built():
    with pytest.raises(ConfigError, match="target_norm must be 'standardize' or 'none', not 'z'"):
        Stage1Settings(target_norm="z")
    with pytest.raises(ConfigError, match="projection_init"):
        Stage1Settings(projection_init="xavier")
    with pytest.raises(ConfigError, match="objective must be 'distill' or 'ce', not 'mse'"):
        DistillSettings(objective="mse")
    with pytest.raises(ConfigError, match="pooling"):
        ModelSettings(pooling="max")
    with pytest.raises(ConfigError, match="report_to"):
        TrainingArgs(report_to="tensorbord")
    with pytest.raises(ConfigError, match="systems must be a list of 'mtllm', 'llm', 'encoder' or 'translate_test'"):
        EvaluateSettings(systems=["mtllm", "gpt"])
    with pytest.raises(ConfigError, match="NAME=DIR"):
        EvaluateSettings(compare=["runs/x"])
    assert DistillSettings(objective="ce").objective == "ce"


@pytest.mark.parametrize("extra, message", [
    (["--evaluate.dtype", "float64"], "evaluate: dtype must be"),
    (["--evaluate.systems", "[mtllm, gpt]"], "evaluate: systems must be"),
    (["--retrieval.compare", "[before]"], "compare entries look like NAME=DIR"),
    (["--finetune.num_epochz", "2"], "finetune: unknown config key(s): 'num_epochz' (did you mean num_epochs?)"),
    (["--distill.objective", "mse"], "distill: objective must be 'distill' or 'ce'"),
    (["--stages", "[stage1, evall]"], "stages must be a list of"),
    (["--task", "sib2000"], "unknown task 'sib2000'"),
])
def test_run_checks_every_section_before_stage1(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["run", "--config", TINY_RUN, "--output_dir", str(out), *extra]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()  # no stage folder, no metrics: nothing ran


def test_run_config_section_typo_in_yaml(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"base: {TINY_RUN}\nevaluate: {{systems: [mtllm], langs: [all], batch_sise: 8}}\n")
    assert main(["run", "--config", str(config), "--output_dir", str(tmp_path / "run")]) == 2
    assert "evaluate: unknown config key(s): 'batch_sise' (did you mean batch_size?)" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_stage_hashes_are_stable(monkeypatch):
    """The hashes that decide whether a finished stage is redone: same config, same hashes as before."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MTLLM_DATA_DIR", "tests/fixtures/pipeline")
    plan = plan_run(command_values("run", ["--config", TINY_RUN, "--data_dir", "null", "--output_dir", "/x"]))
    hashes: dict[str, str] = {}
    for name in plan.stages:
        hashes[name] = _hash(_stage_inputs(plan, name, hashes))
    assert hashes == {"stage1": "b699d3f9d5205270", "retrieval": "c14d0e0fdff8a87b", "teacher": "24c3898da87ff591",
                      "distill": "fc0054383f1ef9e9", "eval": "c0ddd0683147862c"}


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors become one line: a ValueError from a bug propagates with its traceback."""
    from mtllm.training import stage1

    def bug(*args, **kwargs):
        raise ValueError("internal bug")

    monkeypatch.setattr(stage1, "run_stage1", bug)
    with pytest.raises(ValueError, match="internal bug"):
        main(["adapt", "--config", TINY])


def test_python_dash_m_mtllm():
    help_ = subprocess.run([sys.executable, "-m", "mtllm", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_.returncode == 0 and all(f"  {name} " in help_.stdout for name in COMMANDS)
