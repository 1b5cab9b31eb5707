import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtllm.cli import COMMANDS, command_values, main
from mtllm.modeling.model import MTLLMModel
from mtllm.settings import ConfigError, build_settings, load_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_adapt_runs_and_saves_final(tmp_path, capsys):
    code = main(["adapt", "--config", TINY, "--data", f"[{ROOT / 'tests/fixtures/english.txt'}]",
                 "--max_steps", "3", "--output-dir", str(tmp_path), "--progress", "false", "--report_to", "none"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the summary is the last line
    assert summary["final_dir"] == str(tmp_path / "final") and summary["steps"] == 3 and summary["n_texts"] > 0
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]  # exactly the steps asked for, each once
    model = MTLLMModel.from_pretrained(tmp_path / "final")
    assert (model.config.encoder_name_or_path, model.config.llm_name_or_path) == ("tiny:xlmr", "tiny:gemma3")
    assert model.config.lora["r"] == 4 and model.head is None  # the tiny preset's LoRA; stage 1 has no head
    loaded = dict(model.named_parameters())
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert set(saved) == {"projection.weight", "projection.bias"}
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    adapter = load_file(str(tmp_path / "final" / "adapter" / "adapter_model.safetensors"))
    lora_b = [k for k in adapter if ".lora_B." in k]
    assert lora_b and len(lora_b) == len([k for k in adapter if ".lora_A." in k])
    for name, tensor in adapter.items():  # the adapter loaded is the one trained and saved
        assert torch.equal(loaded["llm." + name.replace(".weight", ".default.weight")], tensor), name
    assert any(adapter[k].abs().max() > 0 for k in lora_b)  # LoRA B starts at zero: 3 steps moved it


def test_output_dir_007_is_the_folder_007(tmp_path, monkeypatch, capsys):
    """``--output_dir 007`` wrote to ./7: YAML read it as the number 7."""
    monkeypatch.chdir(tmp_path)
    code = main(["adapt", "--config", TINY, "--data", str(ROOT / "tests/fixtures/english.txt"), "--max_steps", "1",
                 "--output_dir", "007", "--progress", "false", "--report_to", "none"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_dir"] == str(Path("007") / "final")
    assert (tmp_path / "007" / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".007.lock", "007"]  # no ./7 (and 007's lock: mtllm.locks)


def test_misspelled_key_names_close_match(tmp_path, capsys):
    assert main(["adapt", "--config", TINY, "--max_stepz", "3", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s): 'max_stepz' (did you mean max_steps, " in err  # the suggestion, closest first
    assert not tmp_path.joinpath("final").exists()


def test_bad_value_type_is_explained(tmp_path, capsys):
    assert main(["adapt", "--config", TINY, "--max_steps", "many", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "max_steps must be an integer or null, not 'many'" in err  # expected type and the bad value
    assert not tmp_path.joinpath("final").exists()


def test_unknown_command_suggests(capsys):
    assert main(["adpat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtllm: unknown command 'adpat' (did you mean adapt?); commands: adapt, ")


def test_help_lists_keys(capsys):
    assert main(["adapt", "--help"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate" in out and "bidirectional" in out


def test_yaml_is_loaded_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


PRESETS = {  # preset -> (model settings, stage-1 settings, training arguments) it must give `mtllm adapt`
    "tiny": (dict(encoder="tiny:xlmr", llm="tiny:gemma3", llm_adapters_to_merge=[], bidirectional=False,
                  pooling="mean", lora_r=4, lora_alpha=8, lora_dropout=0.0, load_in_4bit=False, dtype="float32",
                  max_seq_length=64),
             dict(data=["tests/fixtures/english.txt"], target_norm="standardize", projection_init="rms_match"),
             dict(learning_rate=3e-3, batch_size=4, micro_batch_size=None, max_steps=30, warmup_ratio=0.1,
                  save_steps=10, mixed_precision="no", seed=0)),
    "pocket": (dict(encoder="pocket:e5-small", llm="pocket:gemma3-270m", llm_adapters_to_merge=[],
                    bidirectional=False, pooling="mean", lora_r=16, lora_alpha=32, lora_dropout=0.05,
                    lora_target_modules="all-linear", load_in_4bit=False, dtype="float32", max_seq_length=128),
               dict(data=["task:sib200/eng_Latn/train", "task:nusax/eng_Latn/train"], target_norm="standardize",
                    projection_init="rms_match", stage1_objective="sequence+span", span_weight=1.0,
                    cache_encoder_outputs=True, student_layers=6, full_depth_steps=0,
                    eval_data=["task:sib200/eng_Latn/validation", "task:nusax/eng_Latn/validation"], eval_steps=100),
               dict(learning_rate=4e-4, projection_lr=1e-3, batch_size=16, micro_batch_size=16, max_steps=900,
                    max_minutes=15, warmup_ratio=0.05, save_steps=60, mixed_precision="auto", seed=0)),
    "paper": (dict(encoder="facebook/nllb-200-distilled-600M", llm="meta-llama/Meta-Llama-3-8B-Instruct",
                   llm_adapters_to_merge=["McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp",
                                          "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp-unsup-simcse"],
                   bidirectional=True, pooling="mean", lora_r=16, lora_alpha=32, lora_dropout=0.05,
                   lora_target_modules="all-linear", load_in_4bit=True, dtype="bfloat16", max_seq_length=512),
              dict(data=["fineweb"], max_texts=2560000, target_norm="none", projection_init="default"),
              dict(learning_rate=2e-4, batch_size=256, micro_batch_size=8, max_steps=10000, warmup_ratio=0.01,
                   save_steps=500, mixed_precision="bf16", seed=42)),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_parse(name):
    path = str(ROOT / "configs" / f"{name}.yaml")
    built = build_settings(COMMANDS["adapt"].settings(), command_values("adapt", ["--config", path]))
    for settings, expected in zip(built, PRESETS[name]):
        assert {k: getattr(settings, k) for k in expected} == expected, type(settings).__name__


def test_encoder_ft_command_trains_the_baseline_that_evaluate_runs(tmp_path, capsys):
    """`mtllm encoder-ft` trains the encoder-ft baseline outside `mtllm run` (best epoch on a capped, label-stratified
    validation sample: --max_eval_examples) and `mtllm evaluate --systems '[encoder-ft]'` evaluates its folder."""
    from mtllm.settings import ModelSettings

    data, out = str(ROOT / "tests" / "fixtures" / "pipeline"), tmp_path / "ft"
    assert main(["encoder-ft", "--config", TINY, "--task", "sib200", "--data_dir", data, "--max_steps", "12",
                 "--batch_size", "4", "--learning_rate", "1e-3", "--head_lr", "1e-2", "--max_eval_examples", "4",
                 "--eval_batch_size", "8", "--output-dir", str(out), "--progress", "false", "--report_to", "none"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the summary is the last line
    assert summary["best_dir"] == str(out / "best") and summary["steps"] == 12
    assert summary["n_train"] == 24 and summary["n_val"] == 4  # 4 of the 8 validation sentences
    saved = json.loads((out / "encoder_ft_summary.json").read_text())
    assert saved["n_val_available"] == 8 and saved["max_eval_examples"] == 4 and sum(saved["val_labels"].values()) == 4
    assert len(saved["evals"]) == 2  # 12 steps of 4 over 24 sentences: 2 epochs, each validated
    host = tmp_path / "host"  # an MT-LLM on the same encoder: the system reads text through its tokenisation
    ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                  max_seq_length=64).build().save_pretrained(host)
    assert main(["evaluate", "--model", str(host), "--task", "sib200", "--data_dir", data, "--systems", "[encoder-ft]",
                 "--encoder_ft", summary["best_dir"], "--dtype", "float32",
                 "--output_dir", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["systems"]) == {"encoder-ft"}
    assert set(results["systems"]["encoder-ft"]) == {"eng_Latn", "fra_Latn", "swh_Latn"}
    # a run config's encoder_ft: section is `mtllm run`'s; a key of encoder-ft only is not finetune's
    assert main(["encoder-ft", "--config", str(ROOT / "configs" / "pocket-xnli.yaml")]) == 2
    assert "its encoder_ft: section is read by `mtllm run` only" in capsys.readouterr().err
    assert main(["finetune", "--config", TINY, "--train_embeddings", "true"]) == 2
    assert "finetune does not use --train_embeddings (a key of encoder-ft)" in capsys.readouterr().err


def test_help_names_the_encoder_ft_system_and_command(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert "  encoder-ft " in listing and "mtllm/llm/encoder/encoder-ft/translate_test" in listing
    assert main(["evaluate", "--help"]) == 0
    assert "encoder-ft" in capsys.readouterr().out.split("\n\n")[1]  # the description under the usage line
