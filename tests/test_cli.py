from pathlib import Path

import pytest

from mtllm.cli import main
from mtllm.settings import ConfigError, load_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_adapt_runs_and_saves_final(tmp_path, capsys):
    code = main(["adapt", "--config", TINY, "--data", f"[{ROOT / 'tests/fixtures/english.txt'}]",
                 "--max_steps", "3", "--output-dir", str(tmp_path), "--progress", "false", "--report_to", "none"])
    assert code == 0
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert '"steps": 3' in capsys.readouterr().out


def test_misspelled_key_names_close_match(tmp_path, capsys):
    assert main(["adapt", "--config", TINY, "--max_stepz", "3", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "max_stepz" in err and "max_steps" in err
    assert not tmp_path.joinpath("final").exists()


def test_bad_value_type_is_explained(tmp_path, capsys):
    assert main(["adapt", "--config", TINY, "--max_steps", "many", "--output_dir", str(tmp_path)]) == 2
    assert "max_steps" in capsys.readouterr().err


def test_unknown_command_suggests(capsys):
    assert main(["adpat"]) == 2
    assert "adapt" in capsys.readouterr().err


def test_help_lists_keys(capsys):
    assert main(["adapt", "--help"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate" in out and "bidirectional" in out


def test_yaml_is_loaded_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_presets_parse():
    for name in ("tiny", "pocket", "paper"):
        values = load_yaml(ROOT / "configs" / f"{name}.yaml")
        assert values["encoder"] and values["llm"]
