"""Settings and command line: YAML presets (with ``base:``) + ``--key value`` overrides typed against the
settings dataclasses, ``--help`` for every key, one-line user errors (exit 2) and tracebacks for bugs,
and a ``run`` config checked in full before its first stage starts."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mtllm.baselines.translate_test import TranslateSettings
from mtllm.cli import COMMANDS, ConvertSettings, TranslateTestSettings, command_values, main
from mtllm.cli.pipeline import PipelineSettings, _hash, _stage_inputs, plan_run
from mtllm.errors import ConfigError
from mtllm.evaluation.evaluate import EvaluateSettings
from mtllm.inference import EncodeFileSettings, PredictFileSettings
from mtllm.settings import ModelSettings, build_settings, load_yaml, parse_overrides
from mtllm.training.distill import DistillSettings
from mtllm.training.encoder_ft import EncoderFTSettings
from mtllm.training.finetune import TaskSettings
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


def test_yaml_base_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b.txt", "c.txt"):
        (tmp_path / name).write_text("a text\n", encoding="utf-8")
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


def test_a_choice_yaml_reads_as_a_boolean_keeps_its_word(tmp_path):
    """YAML 1.1 reads ``no``/``off`` as False: ``--mixed_precision no`` (its help's own spelling) and
    ``mixed_precision: no`` in a config were refused as ``not False`` (seen on a GPU machine)."""
    (tmp_path / "c.yaml").write_text("encoder: tiny:xlmr\nllm: tiny:gemma3\nmixed_precision: no\n")
    for argv in (["--mixed_precision", "no"], ["--mixed_precision", "off"], ["--config", str(tmp_path / "c.yaml")]):
        values = command_values("adapt", [*argv, "--output_dir", str(tmp_path / "o")])
        *_, args = build_settings(COMMANDS["adapt"].settings(), values)
        assert args.mixed_precision == "no", argv
    assert TrainingArgs(output_dir=str(tmp_path), mixed_precision=False).mixed_precision == "no"
    # a boolean where no choice is such a word stays an error that names the choices
    with pytest.raises(ConfigError, match="pooling must be 'mean', 'eos' or 'cls', not True"):
        build_settings([ModelSettings], {"pooling": True})


def test_overrides_are_yaml_values():
    assert parse_overrides(["--data", "[a, b]", "--max-steps=3", "--x", "null", "--flag"]) == {
        "data": ["a", "b"], "max_steps": 3, "x": None, "flag": True}


def test_a_shared_preset_serves_every_command(monkeypatch, tmp_path):
    """Every preset parses for every command: configs/pocket.yaml holds the models and stage 1, which finetune
    and evaluate leave; a run config's sections are `run`'s (adapt takes its flat keys and leaves them), while
    a per-stage command given its own section of a run config, or a key that only another command uses, is
    an error (on the command line and in a preset)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    teacher = ["--teacher_model", str(tmp_path)]  # distill's objective needs one (an existing folder)
    own_section = {"finetune": "finetune", "distill": "distill", "encoder-ft": "encoder_ft", "evaluate": "evaluate"}
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        keys = load_yaml(preset)
        is_run_config = "task" in keys
        for name, cmd in COMMANDS.items():
            argv = ["--config", str(preset), *(teacher if name == "distill" else [])]
            if name == "run":
                plan_run(command_values(name, argv))
            elif is_run_config and own_section.get(name) in keys:
                with pytest.raises(ConfigError, match=f"is a `mtllm run` config: its {own_section[name]}: (section is|"
                                                      "and retrieval: sections are) read by "):
                    command_values(name, argv)
            elif name in ("predict", "encode"):  # they need a model and files of the user's; of a preset they take
                # only their own keys (e.g. batch_size, dtype) and leave the shared layer
                values = command_values(name, argv)
                assert set(values) <= {f.name for c in cmd.settings() for f in dataclasses.fields(c)}, (name, preset)
            elif name != "convert":
                build_settings(cmd.settings(), command_values(name, argv))
    ft = command_values("finetune", ["--config", TINY])
    assert "target_norm" not in ft and "data" not in ft and ft["lora_r"] == 4
    with pytest.raises(ConfigError, match=r"^finetune does not use --target_norm \(a key of adapt and distill\); give "
                                          r"it to the command that "):
        command_values("finetune", ["--target_norm", "none"])
    assert command_values("adapt", ["--config", TINY_RUN])["data"] == ["task:sib200/eng_Latn/train"]


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
    if name == "adapt":  # with its default, meaning and range
        assert "--lora_r LORA_R       LoRA rank. Must be >= 1. (type: int, default: 16)" in out
        assert "--target_norm {standardize,none}" in out


def test_unknown_key_is_one_line_with_close_match(tmp_path, capsys):
    assert main(["adapt", "--config", TINY, "--max_stepz", "3", "--output_dir", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("mtllm adapt: error: unknown config key(s): 'max_stepz' (did you mean max_steps")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag, value, message", [
    ("--target_norm", "bad", "target_norm must be 'standardize' or 'none', not 'bad'"),
    ("--mixed_precision", "fp8", "mixed_precision must be 'no', 'bf16', 'fp16' or 'auto', not 'fp8'"),
    ("--max_steps", "many", "max_steps must be an integer or null, not 'many'"),
    ("--dtype", "float64", "dtype must be 'float32', 'bfloat16' or 'float16', not 'float64'"),
    ("--batch_size", "0", "batch_size must be >= 1, not 0: the default is 16"),
    ("--max_steps", "0", "max_steps must be >= 1 or null, not 0: the default is null (Optimizer steps; default: "
                         "num_epochs over the data)"),
    ("--learning_rate", "0", "learning_rate must be > 0, not 0.0: the default is 0.0002"),
    ("--learning_rate", ".nan", "learning_rate must be > 0, not nan: not a finite number"),
    ("--warmup_ratio", "1", "warmup_ratio must be in [0, 1), not 1.0: the default is 0.01"),
    ("--micro_batch_size", "3", "micro_batch_size must be a divisor of batch_size or null, not 3: batch_size is 4, "
                                "not a multiple of it; choose batch_size / k for some k (or null: batch_size split "
                                "over the processes)"),
    ("--seed", "-1", "seed must be in [0, 4294967295], not -1: the default is 0"),
    ("--lora_dropout", "1", "lora_dropout must be in [0, 1), not 1.0: the default is 0.05"),
    ("--max_seq_length", "4", "max_seq_length must be >= 8, not 4: the default is 512"),
    ("--data", "[]", "data must be non-empty, not []: the default is ['fineweb']"),
    ("--data", "[nope.txt]", "data must be a list, each a text file or folder, data:PATH (inside the data directory), "
                             "'fineweb' or task:NAME/LANG/SPLIT, "
                             "not ['nope.txt']: 'nope.txt': no such file or folder."),
    ("--encoder", "./no/such/model", "encoder must be a hub id, pocket:NAME, tiny:NAME or an existing model folder, "
                                     "not './no/such/model': there is no folder no/such/model (a path like this "
                                     "is never looked up on the hub)"),
    ("--llm", "tiny:gemma", "llm must be a hub id, pocket:NAME, tiny:NAME or an existing model folder, not "
                            "'tiny:gemma': tiny: models are"),
    ("--objective", "banana", "adapt does not use --objective (a key of distill); give it to the command that uses "
                              "it (`mtllm adapt --help` lists adapt's keys)"),
])
def test_bad_value_fails_before_anything_loads(tmp_path, capsys, monkeypatch, flag, value, message):
    """One line naming the key, the value and the fix; nothing runs, nothing is written."""
    from mtllm.training import stage1

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(stage1, "run_stage1", lambda *a, **k: pytest.fail("stage 1 ran"))
    assert main(["adapt", "--config", TINY, flag, value, "--output_dir", str(tmp_path)]) == 2
    assert _error_line(capsys).startswith(f"mtllm adapt: error: {message}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cls, values, message", [
    (TrainingArgs, {"max_steps": -5}, "max_steps must be >= 1 or null, not -5"),
    (TrainingArgs, {"num_epochs": 0.0}, "num_epochs must be > 0, not 0.0: the default is 1.0"),
    (TrainingArgs, {"keep_checkpoints": 0}, "keep_checkpoints must be >= 1, not 0: the default is 2"),
    (TrainingArgs, {"log_steps": 0}, "log_steps must be >= 1, not 0: the default is 10"),
    (TrainingArgs, {"save_steps": -1}, "save_steps must be >= 0, not -1: the default is 0"),
    (TrainingArgs, {"projection_lr": -1e-3}, "projection_lr must be > 0 or null, not -0.001"),
    (TrainingArgs, {"max_grad_norm": -1.0}, "max_grad_norm must be >= 0, not -1.0"),
    (TrainingArgs, {"micro_batch_size": 0}, "micro_batch_size must be >= 1 or null, not 0"),
    (ModelSettings, {"lora_r": 0}, "lora_r must be >= 1, not 0: the default is 16"),
    (ModelSettings, {"lora_alpha": 0}, "lora_alpha must be > 0, not 0"),
    (ModelSettings, {"lora_target_modules": []}, "lora_target_modules must be non-empty, not []"),
    (Stage1Settings, {"max_texts": 0}, "max_texts must be >= 1 or null, not 0"),
    (Stage1Settings, {"teacher_batch_size": 0}, "teacher_batch_size must be >= 1, not 0"),
    (TaskSettings, {"eval_batch_size": 0}, "eval_batch_size must be >= 1, not 0"),
    (TaskSettings, {"max_train_examples": 0}, "max_train_examples must be >= 1 or null, not 0"),
    (TaskSettings, {"task": "sib2000"},
     "task must be a task name, not 'sib2000': unknown task 'sib2000'. Did you mean"),
    (DistillSettings, {}, "teacher_model must be given when objective is 'distill': give the folder written by "
                          "`mtllm finetune` (its DIR/best), or use objective: ce"),
    (EvaluateSettings, {"batch_size": 0}, "batch_size must be >= 1, not 0: the default is 32"),
    (EvaluateSettings, {"max_examples": 0}, "max_examples must be >= 1 or null, not 0"),
    (EvaluateSettings, {"langs": []}, "langs must be non-empty, not []: the default is ['all']"),
    (EvaluateSettings, {"systems": []}, "systems must be non-empty, not []"),
    (EvaluateSettings, {"compare": ["runs/x"]}, "compare must be a list of NAME=DIR, not ['runs/x']: 'runs/x': write "
                                                "NAME=DIR, e.g. before=runs/x/stage1/initial"),
    (TranslateSettings, {"num_beams": 0}, "num_beams must be >= 1, not 0: the default is 1"),
    (TranslateTestSettings, {"max_examples": 0}, "max_examples must be >= 1 or null, not 0"),
    (ConvertSettings, {"names": ["e5-smal"]}, "names must be a list, each a pocket model name, not ['e5-smal']: "
                                              "'e5-smal': pocket: models are e5-small, gemma3-270m (did you mean "
                                              "e5-small?)"),
    (PipelineSettings, {"stages": []}, "stages must be non-empty, not []"),
])
def test_ranges_are_checked_when_settings_are_built(cls, values, message):
    with pytest.raises(ConfigError) as err:
        cls(**values)
    assert str(err.value).startswith(message), str(err.value)


SETTINGS_CLASSES = (ModelSettings, Stage1Settings, TrainingArgs, TaskSettings, DistillSettings, EvaluateSettings,
                    TranslateSettings, TranslateTestSettings, ConvertSettings, PipelineSettings, PredictFileSettings,
                    EncodeFileSettings, EncoderFTSettings)


def test_every_settings_class_checks_itself_and_every_number_has_a_range(monkeypatch):
    """Each settings dataclass applies its rules when it is made (also by dataclasses.replace), and every
    numeric field declares its range, so a new field cannot forget one."""
    import mtllm.settings as settings_module

    for cmd in COMMANDS.values():  # every command's settings are among those checked here
        assert set(cmd.settings()) | {c for cs in cmd.sections().values() for c in cs} <= set(SETTINGS_CLASSES)
    free = {("EvaluateSettings", "sample_seed")}  # any integer: it is hashed
    numbers = 0
    for cls in SETTINGS_CLASSES:
        for name, hint in settings_module._field_types(cls).items():
            base = set(typing.get_args(hint) or (hint,)) - {type(None)}
            if base in ({int}, {float}) and (cls.__name__, name) not in free:
                numbers += 1
                assert cls.__dataclass_fields__[name].metadata.get("check"), f"{cls.__name__}.{name} has no range"
    assert numbers >= 25
    seen = []
    monkeypatch.setattr(settings_module, "_apply", lambda s, inputs: seen.append((type(s), inputs)))
    for cls in SETTINGS_CLASSES:
        required = {DistillSettings: {"objective": "ce"}, PredictFileSettings: {"lang": "eng_Latn"},
                    EncodeFileSettings: {"lang": "eng_Latn"}}.get(cls, {})
        dataclasses.replace(cls(**required))
        assert seen[-2:] == [(cls, False), (cls, False)], cls


def test_making_settings_does_no_io_and_build_settings_checks_the_file_system(tmp_path, monkeypatch):
    """A settings object's ``__post_init__`` applies only the rules that need the values (no stat, no file read);
    the ones that look at the file system or read a task file run in build_settings (check_io), before any work."""
    import builtins
    import io
    import os

    afile = tmp_path / "results.txt"
    afile.write_text("keep me", encoding="utf-8")
    task_file = tmp_path / "my-task.yaml"  # not there

    def no_io(*args, **kwargs):
        raise AssertionError("I/O while a settings object was made")

    made = {TrainingArgs: {"output_dir": str(afile)}, TaskSettings: {"task": str(task_file)},
            PipelineSettings: {"task": str(task_file), "eval_tasks": [str(task_file)], "output_dir": str(afile)},
            EvaluateSettings: {"task": str(task_file), "output_dir": str(afile)},
            PredictFileSettings: {"model": "m", "input": "x.csv", "lang": "eng_Latn", "output": str(afile / "p.jsonl")},
            EncodeFileSettings: {"model": "m", "input": "x.csv", "lang": "eng_Latn", "output": str(tmp_path / "e.npy")}}
    with monkeypatch.context() as m:
        for owner, name in ((os, "stat"), (os, "lstat"), (os, "pathconf"), (builtins, "open"), (io, "open")):
            m.setattr(owner, name, no_io)
        for cls in SETTINGS_CLASSES:
            cls(**made.get(cls, {DistillSettings: {"objective": "ce"}}.get(cls, {})))
    for cls, values, message in [
        (TrainingArgs, {"output_dir": str(afile)}, f"output_dir must be a folder path, not {str(afile)!r}: {afile} "
                                                   f"is a file, not a folder"),
        (TaskSettings, {"task": str(task_file)}, f"task must be a task name, not {str(task_file)!r}: task file "
                                                 f"{task_file} not found"),
        (PredictFileSettings, {"model": "m", "input": "x.csv", "lang": "eng_Latn", "output": str(afile / "p.jsonl")},
         f"output must be a .jsonl/.csv/.tsv/.parquet file path or null, not {str(afile / 'p.jsonl')!r}: {afile} "
         f"is a file, not a folder"),
    ]:
        with pytest.raises(ConfigError) as err:
            build_settings((cls,), values, inputs=False)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_output_dir_that_is_a_file_and_config_that_is_a_folder(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me", encoding="utf-8")
    for out in (afile, afile / "sub"):
        assert main(["adapt", "--config", TINY, "--output_dir", str(out)]) == 2
        assert _error_line(capsys) == (f"mtllm adapt: error: output_dir must be a folder path, not {str(out)!r}: "
                                       f"{afile} is a file, not a folder; choose a folder path (new or existing) for "
                                       "it")
    assert afile.read_text(encoding="utf-8") == "keep me"
    assert main(["evaluate", "--output_dir",
                 str(afile)]) == 2 and "output_dir must be a folder path" in _error_line(capsys)
    assert main(["adapt", "--config", str(ROOT / "configs")]) == 2
    assert _error_line(capsys) == (f"mtllm adapt: error: config file {ROOT / 'configs'} is a folder; give a YAML "
                                   f"file in it, e.g. {ROOT / 'configs' / 'paper-americasnli.yaml'}")
    assert main(["adapt", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml not found; give the path of a YAML file" in _error_line(capsys)


def test_a_key_of_another_command_in_a_preset(tmp_path, capsys):
    """A flat key that only a later stage uses, in a preset given to adapt, is an error (it belongs in that
    stage's section); the same key in its section is left to `run` by design."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {TINY}\nobjective: ce\neval_batch_size: 8\n", encoding="utf-8")
    assert main(["adapt", "--config", str(bad), "--output_dir", str(tmp_path / "out")]) == 2
    assert _error_line(capsys) == (
        f"mtllm adapt: error: {bad}: adapt does not use objective (a key of distill), eval_batch_size (a key of "
        f"finetune and distill and encoder-ft); a config shared by several commands keeps the keys of later stages "
        f"in their sections (e.g. distill: {{objective: ce}}, read by `mtllm run`): move them there, or give them to "
        f"the command that uses them")
    good = tmp_path / "good.yaml"
    good.write_text(f"base: {TINY}\ndistill: {{objective: ce, eval_batch_size: 8}}\n", encoding="utf-8")
    values = command_values("adapt", ["--config", str(good)])
    assert "distill" not in values and "objective" not in values and values["encoder"] == "tiny:xlmr"
    assert not (tmp_path / "out").exists()


def test_missing_inputs_are_named_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["--config", TINY, "--output_dir", str(tmp_path / "out")]
    cases = [
        (["finetune", *args, "--data_dir", "no/such/dir"],
         "data_dir must be an existing folder or null, not 'no/such/dir': there is no folder no/such/dir"),
        (["distill", *args, "--teacher_model", str(tmp_path / "teacher")],
         f"teacher_model must be a hub id, pocket:NAME, tiny:NAME or an existing model folder or null, not "
         f"'{tmp_path / 'teacher'}': there is no folder {tmp_path / 'teacher'}"),
        (["evaluate", "--model", str(tmp_path / "m"), "--output_dir", str(tmp_path / "out")],
         f"model must be a hub id, pocket:NAME, tiny:NAME or an existing model folder or null, not "
         f"'{tmp_path / 'm'}': there is no folder {tmp_path / 'm'}"),
        (["evaluate", "--compare", f"before={tmp_path / 'm'}", "--output_dir", str(tmp_path / "out")],
         f"compare must be a list of NAME=DIR, not ['before={tmp_path / 'm'}']: 'before={tmp_path / 'm'}': there is "
         f"no folder {tmp_path / 'm'}"),
        (["adapt", *args, "--data", str(ROOT / "README.md")],
         "data must be a list, each a text file or folder, data:PATH (inside the data directory), 'fineweb' or "
         "task:NAME/LANG/SPLIT, not"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert _error_line(capsys).startswith(f"mtllm {argv[0]}: error: {message}")
    assert not (tmp_path / "out").exists()


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
    with pytest.raises(ConfigError,
                       match="systems must be a list of 'mtllm', 'llm', 'encoder', 'encoder-ft' or 'translate_test'"):
        EvaluateSettings(systems=["mtllm", "gpt"])
    with pytest.raises(ConfigError, match="NAME=DIR"):
        EvaluateSettings(compare=["runs/x"])
    assert DistillSettings(objective="ce").objective == "ce"


@pytest.mark.parametrize("extra, message", [
    (["--evaluate.dtype", "float64"], "evaluate: dtype must be"),
    (["--evaluate.systems", "[mtllm, gpt]"], "evaluate: systems must be"),
    (["--retrieval.compare", "[before]"], "retrieval: compare must be a list of NAME=DIR, not ['before']"),
    (["--finetune.batch_size", "0"], "finetune: batch_size must be >= 1, not 0: the default is 16"),
    (["--distill.max_train_examples", "0"], "distill: max_train_examples must be >= 1 or null, not 0"),
    (["--evaluate.batch_size", "0"], "evaluate: batch_size must be >= 1, not 0"),
    (["--seed", "-1"], "seed must be in [0, 4294967295], not -1"),
    (["--data_dir", "no/such/dir"], "data_dir must be an existing folder or null, not 'no/such/dir'"),
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


def _stage_hashes(*argv: str, upstream: dict[str, str] | None = None) -> dict[str, str]:
    """Each stage's hash for configs/tiny-sib200.yaml with ``argv`` overrides, as ``mtllm run`` computes it
    before its first stage (nothing runs); ``upstream``: hashes that stand in for those stages' own."""
    plan = plan_run(command_values("run", ["--config", TINY_RUN, "--data_dir", "null", "--output_dir", "/x", *argv]))
    hashes: dict[str, str] = {}
    for name in plan.stages:
        hashes[name] = _hash(_stage_inputs(plan, name, {**hashes, **(upstream or {})}))
    return hashes


@pytest.fixture
def tiny_run(monkeypatch):
    """configs/tiny-sib200.yaml as the tests run it: from the repository, data in tests/fixtures/pipeline."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MTLLM_DATA_DIR", "tests/fixtures/pipeline")


ALL_STAGES = {"stage1", "retrieval", "teacher", "distill", "eval"}
STAGE1_ON = {"stage1", "retrieval", "distill", "eval"}  # stage 1 and the stages that read its model
#: (overrides, the stages whose hash they change): a setting redoes its stage and every stage after it that
#: reads what it made. Stage 1 reads its texts through ``data`` (the bytes it read are in its stage.json), so
#: ``data_dir`` is not in its hash.
HASH_INPUTS = [
    (["--learning_rate", "1e-3"], STAGE1_ON),
    (["--max_steps", "11"], STAGE1_ON),
    (["--data", "[task:sib200/fra_Latn/train]"], STAGE1_ON),
    (["--lora_r", "8"], ALL_STAGES),  # the model: stage 1 and the teacher are built on it
    (["--dtype", "bfloat16"], ALL_STAGES),
    (["--seed", "1"], ALL_STAGES),
    (["--data_dir", "tests/fixtures"], {"retrieval", "teacher", "distill", "eval"}),
    (["--retrieval.langs", "[fra_Latn]"], {"retrieval"}),
    (["--finetune.learning_rate", "1e-3"], {"teacher", "distill", "eval"}),
    (["--distill.num_epochs", "3"], {"distill", "eval"}),
    (["--evaluate.langs", "[eng_Latn]"], {"eval"}),
    (["--evaluate.systems", "[mtllm]"], {"eval"}),
]
#: Keys that change how a stage runs, logs or where it writes, never what it computes: no stage is redone.
BOOKKEEPING = [["--output_dir", "/y"], ["--log_steps", "1"], ["--save_steps", "3"], ["--keep_checkpoints", "1"],
               ["--micro_batch_size", "2"], ["--progress", "true"], ["--report_to", "tensorboard"],
               ["--resume", "true"], ["--overwrite", "true"], ["--notes", "[x]"], ["--finetune.save_steps", "1"],
               ["--finetune.eval_batch_size", "2"], ["--finetune.micro_batch_size", "2"],
               ["--finetune.report_to", "tensorboard"], ["--distill.micro_batch_size", "2"],
               ["--distill.log_steps", "1"], ["--distill.keep_checkpoints", "2"], ["--distill.eval_batch_size", "2"]]


@pytest.mark.parametrize("argv, redone", HASH_INPUTS, ids=[" ".join(a) for a, _ in HASH_INPUTS])
def test_a_setting_changes_the_hash_of_its_stage_and_of_the_stages_that_read_it(tiny_run, argv, redone):
    base, changed = _stage_hashes(), _stage_hashes(*argv)
    assert base.keys() == changed.keys() == ALL_STAGES
    assert {name for name in base if changed[name] != base[name]} == redone


@pytest.mark.parametrize("argv", BOOKKEEPING, ids=[" ".join(a) for a in BOOKKEEPING])
def test_bookkeeping_keys_change_no_stage_hash(tiny_run, argv):
    assert _stage_hashes(*argv) == _stage_hashes()


def test_a_stage_hash_covers_the_hashes_of_the_stages_it_reads(tiny_run):
    """A stage redone upstream (another hash) redoes the stages that read it, even where no setting of theirs
    changed: retrieval reads stage 1's model, distill stage 1's and the teacher's, eval distill's and the
    teacher's; no stage's hash covers one it does not read."""
    from mtllm.cli.pipeline import UPSTREAM

    reads = {"stage1": set(), "retrieval": {"stage1"}, "teacher": set(), "distill": {"stage1", "teacher"},
             "eval": {"distill", "teacher"}}
    assert {name: set(UPSTREAM.get(name, ())) for name in reads} == reads
    plan = plan_run(command_values("run", ["--config", TINY_RUN, "--data_dir", "null", "--output_dir", "/x"]))
    base = _stage_hashes()
    for name in ALL_STAGES:
        for upstream in ALL_STAGES - {name}:
            redone = _hash(_stage_inputs(plan, name, {**base, upstream: "0" * 16})) != base[name]
            assert redone == (upstream in reads[name]), (name, upstream)


@pytest.fixture
def task_registry():
    """Leave the registered tasks as they were (planning a run with a task file registers it)."""
    from mtllm.tasks import files, registry

    tasks, aliases = dict(registry.TASKS), dict(registry._ALIASES)
    yield files._LOADED.clear
    registry.TASKS.clear()
    registry.TASKS.update(tasks)
    registry._ALIASES.clear()
    registry._ALIASES.update(aliases)
    files._LOADED.clear()


def test_a_task_file_hashes_its_files_bytes_not_its_place(tiny_run, task_registry, tmp_path):
    """A task given as a YAML file: its data files' bytes are in the hashes of the stages that read the task
    (teacher, distill, eval); rewriting the same bytes, or moving the task's folder (seen by a new process),
    redoes nothing."""
    from mtllm.tasks import registry

    task = tmp_path / "task"
    (task / "en").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (task / "en" / f"{split}.csv").write_text("id,text,label\n1,good,positive\n2,bad,negative\n", encoding="utf-8")
    (task / "t.yaml").write_text("name: tiny-sentiment\nkind: single\ntrain: {eng_Latn: en/train.csv}\n"
                                 "validation: {eng_Latn: en/valid.csv}\ntest: {eng_Latn: en/test.csv}\n",
                                 encoding="utf-8")
    base_hashes = _stage_hashes("--task", str(task / "t.yaml"))
    assert base_hashes["teacher"] != _stage_hashes()["teacher"]  # the task itself is an input
    test_file = task / "en" / "test.csv"
    test_file.write_bytes(test_file.read_bytes())
    assert _stage_hashes("--task", str(task / "t.yaml")) == base_hashes
    moved = task.rename(tmp_path / "elsewhere")
    registry.TASKS.pop("tiny-sentiment")  # as in a new process: the name is free for the task file's new place
    task_registry()
    assert _stage_hashes("--task", str(moved / "t.yaml")) == base_hashes
    (moved / "en" / "test.csv").write_text("id,text,label\n1,good,positive\n2,awful,negative\n", encoding="utf-8")
    changed = _stage_hashes("--task", str(moved / "t.yaml"))
    assert {name for name in base_hashes if changed[name] != base_hashes[name]} == {"teacher", "distill", "eval"}


def test_stage_hashes_of_the_tiny_run_are_unchanged(tiny_run):
    """Regression: the hashes that decide whether a finished stage is redone, for one config, as they were
    (a refactoring that changes them would redo every finished run's stages)."""
    assert _stage_hashes() == {"stage1": "b699d3f9d5205270", "retrieval": "c14d0e0fdff8a87b",
                               "teacher": "24c3898da87ff591", "distill": "fc0054383f1ef9e9",
                               "eval": "c0ddd0683147862c"}


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


def test_config_file_mistakes_are_one_line(tmp_path, capsys):
    """A preset that cannot be read: a base: loop, YAML that does not parse, a non-UTF-8 file, a base: that
    is no path, a null or empty value where a string is needed."""
    (tmp_path / "a.yaml").write_text("base: b.yaml\nmax_steps: 3\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n", encoding="utf-8")
    (tmp_path / "broken.yaml").write_text("data: [a.txt,\n", encoding="utf-8")
    (tmp_path / "latin1.yaml").write_bytes("notes: [café]\n".encode("latin-1"))
    (tmp_path / "bases.yaml").write_text("base: [tiny.yaml, pocket.yaml]\n", encoding="utf-8")
    cases = [
        (["--config", str(tmp_path / "a.yaml")], f"{tmp_path / 'a.yaml'}: base: makes a loop (a.yaml -> b.yaml -> "
                                                 f"a.yaml); remove one of these base: keys"),
        (["--config", str(tmp_path / "broken.yaml")], f"{tmp_path / 'broken.yaml'} is not valid YAML: while parsing"),
        (["--config", str(tmp_path / "latin1.yaml")], f"{tmp_path / 'latin1.yaml'} is not UTF-8 (invalid byte 0xe9"),
        (["--config", str(tmp_path / "bases.yaml")], f"{tmp_path / 'bases.yaml'}: base must be the path of one YAML "
                                                     "file (relative to bases.yaml), not ['tiny.yaml', "
                                                     "'pocket.yaml']"),
        (["--config", TINY, "--encoder", "null"],
         "encoder must be a string, not null: the default is 'pocket:e5-small'"),
        (["--config", TINY, "--output_dir", "' '"], "output_dir must be a folder path, not ' ': give a folder path"),
    ]
    for argv, message in cases:
        assert main(["adapt", *argv]) == 2, argv
        assert _error_line(capsys).startswith(f"mtllm adapt: error: {message}")


#: Texts that YAML 1.1 reads as something else: 7, 1.1, a date, True, 1000.0, 31, null's neighbour
AS_TYPED = ["007", "1.10", "2024-06-01", "yes", "1.0e+3", "0x1F", "2024-06-01 12:00:00"]


@pytest.mark.parametrize("text", AS_TYPED)
def test_a_path_or_a_name_keeps_the_text_as_typed(tmp_path, monkeypatch, text):
    """A string-typed setting (``str``, ``str | None``, a choice, a list of them) keeps what the user typed, on
    the command line and in a config: ``--output_dir 007`` wrote to ./7, ``1.10`` to ./1.1, and ``2024-06-01``
    was refused as a date. Number, boolean and choice keys are still typed by YAML then by their field."""
    monkeypatch.chdir(ROOT)
    config = tmp_path / "c.yaml"
    config.write_text(f"base: {TINY}\noutput_dir: {text}\nllm_adapters_to_merge: [{text}]\nattn_implementation: "
                      f"{text}\nlora_dropout: .05\nlearning_rate: 2e-4\nmax_steps: 007\nmixed_precision: no\n"
                      f"bidirectional: yes\ndata_dir: null\n", encoding="utf-8")
    for argv in (["--config", str(config)],
                 ["--config", TINY, "--output_dir", text, "--llm_adapters_to_merge", f"[{text}]",
                  "--attn_implementation", text, "--lora_dropout", ".05", "--learning_rate", "2e-4", "--max_steps",
                  "007", "--mixed_precision", "no", "--bidirectional", "yes", "--data_dir=null"]):
        values = command_values("adapt", argv)
        assert (values["output_dir"], values["llm_adapters_to_merge"], values["attn_implementation"]) == (
            text, [text], text), argv
        model, stage1, args = build_settings(COMMANDS["adapt"].settings(), values, inputs=False)
        assert (args.output_dir, model.llm_adapters_to_merge, model.attn_implementation) == (text, [text], text)
        assert (model.lora_dropout, args.learning_rate, args.max_steps) == (0.05, 2e-4, 7)  # numbers stay numbers
        assert (args.mixed_precision, model.bidirectional, stage1.data_dir) == ("no", True, None)
    # every command: a list of names (evaluate's langs and notes), a run's sections and --section.key overrides
    values = command_values("evaluate", ["--langs", f"[{text}, eng_Latn]", "--notes", text, "--split", text])
    assert (values["langs"], values["notes"], values["split"]) == ([text, "eng_Latn"], text, text)
    (evaluate,) = build_settings(COMMANDS["evaluate"].settings(), values, inputs=False)
    assert (evaluate.langs, evaluate.notes, evaluate.split) == ([text, "eng_Latn"], [text], text)
    run = tmp_path / "run.yaml"
    run.write_text(f"base: {TINY_RUN}\noutput_dir: {text}\nevaluate: {{notes: [{text}], batch_size: 8}}\n",
                   encoding="utf-8")
    monkeypatch.setenv("MTLLM_DATA_DIR", "tests/fixtures/pipeline")
    plan = plan_run(command_values("run", ["--config", str(run), "--finetune.eval_split", text, "--data_dir", "null"]))
    assert (plan.root, plan.evaluate.notes, plan.evaluate.batch_size) == (Path(text), [text], 8)
    assert plan.teacher[0].eval_split == text and plan.dirs["stage1"] == Path(text) / "stage1"


def test_yaml_aliases_and_deep_nesting_are_refused_in_one_line(tmp_path, capsys):
    """A "billion laughs" config (aliases of aliases, 9**9 values) or one nested thousands of levels deep is
    refused at once, in one line that does not echo the value; configs take no aliases at all (``base:`` shares
    settings), while an anchor that nothing refers to is harmless. ``!!python/...`` tags stay refused."""
    laughs = tmp_path / "laughs.yaml"
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 9)]
    laughs.write_text("\n".join([*lines, "data: *lol8", ""]), encoding="utf-8")
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 50_000 + "]" * 50_000 + "\n", encoding="utf-8")
    few = tmp_path / "few.yaml"
    few.write_text(f"base: {TINY}\nfinetune: &train {{learning_rate: 1.0e-3}}\ndistill: *train\n", encoding="utf-8")
    for path, why in [(laughs, "uses the YAML alias *lol0 (line 2); mtllm configs take no aliases, which can expand "
                               "a few lines into billions of values: write the value out (a config shares another's "
                               "settings with base: other.yaml)"),
                      (deep, "nests deeper than 20 levels (line 1); a config is flat key: value pairs, with one level "
                             "of stage sections (finetune:, ...)"),
                      (few, "uses the YAML alias *train (line 3); mtllm configs take no aliases")]:
        with pytest.raises(ConfigError, match=re.escape(f"{path} {why}")):
            load_yaml(path)
        assert main(["adapt", "--config", str(path), "--output_dir", str(tmp_path / "out")]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"mtllm adapt: error: {path} {why}") and "lol, lol" not in line and "[[[" not in line
    for value, why in [("[&a [x, x], *a]", "--data uses the YAML alias *a (line 1); mtllm configs take no aliases"),
                       ("[" * 50_000 + "]" * 50_000, "--data nests deeper than 20 levels")]:
        assert main(["adapt", "--config", TINY, "--data", value, "--output_dir", str(tmp_path / "out")]) == 2
        assert _error_line(capsys).startswith(f"mtllm adapt: error: {why}")
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text("max_steps: &steps 3\nllm: &llm tiny:gemma3\n", encoding="utf-8")
    assert load_yaml(anchored, strings=frozenset({"llm"})) == {"max_steps": 3, "llm": "tiny:gemma3"}
    evil = tmp_path / "evil.yaml"
    evil.write_text("output_dir: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    assert main(["adapt", "--config", str(evil)]) == 2
    assert f"{evil} is not valid YAML: could not determine a constructor for the tag" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_config_equals_file_is_config_file(tmp_path, capsys, name):
    """``--config=FILE`` is ``--config FILE`` for every command (it was an unknown key ``config``)."""
    assert command_values(name, [f"--config={TINY}"]) == command_values(name, ["--config", TINY])
    assert main([name, f"--config={tmp_path / 'nope.yaml'}"]) == 2
    assert _error_line(capsys) == (f"mtllm {name}: error: config file {tmp_path / 'nope.yaml'} not found; give the "
                                   f"path of a YAML file, e.g. configs/tiny.yaml")
    for argv, message in [
            (["--config=", "--seed", "1"], "--config needs a file path, e.g. --config configs/tiny.yaml"),
            ([f"--config={TINY}", "--config", TINY], "--config is given more than once; give one config file (a "
                                                     "config extends another with base: other.yaml)")]:
        assert main([name, *argv]) == 2
        assert _error_line(capsys) == f"mtllm {name}: error: {message}"
