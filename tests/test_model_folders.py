"""Bad input, round 3 (issue 23, items 1 and 6): no code from a model folder, ever, and a saved MT-LLM that
does not fit its own config or base models is one line before any weights load."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.errors import ConfigError
from mtllm.sources import load_encoder, load_tokenizer, resolve_source

ROOT = Path(__file__).resolve().parents[1]

#: Custom "model code" that leaves a marker file when it is imported: it must never run.
EVIL_CODE = """
import os, pathlib
pathlib.Path(os.environ["MTLLM_TEST_MARKER"]).write_text("custom code ran")
from transformers import XLMRobertaConfig, XLMRobertaModel
class EvilConfig(XLMRobertaConfig):
    model_type = "evil-roberta"
class EvilModel(XLMRobertaModel):
    config_class = EvilConfig
"""


def _evil_folder(dest: Path, *, model_type: str = "evil-roberta") -> Path:
    """The tiny XLM-R encoder with ``auto_map`` pointing at code of its own (``modeling_evil.py``)."""
    shutil.copytree(resolve_source("tiny:xlmr"), dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                    "AutoModel": "modeling_evil.EvilModel"})
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "modeling_evil.py").write_text(EVIL_CODE)
    return dest


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "marker.txt"
    monkeypatch.setenv("MTLLM_TEST_MARKER", str(path))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny MT-LLM with a 3-label head, saved referencing its base models and saved whole (``full``)."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4, dropout=0.0),
                                            max_seq_length=32)
    model.set_head("classification", ["a", "b", "c"])
    model.save_pretrained(root / "good")
    model.save_pretrained(root / "full", full=True)
    return root


@pytest.fixture
def no_weights_load(monkeypatch):
    """Call it to fail the test if a base model's weights start loading from then on."""
    import mtllm.modeling.model as model_module

    def refuse(*args, **kwargs):
        raise AssertionError("base model weights were loaded before the folder was checked")

    def arm() -> None:
        monkeypatch.setattr(model_module, "load_encoder", refuse)
        monkeypatch.setattr(model_module, "load_llm", refuse)
    return arm


# ------------------------------------------------------------------------------------ item 1: no code from folders
@pytest.mark.parametrize("model_type", ["evil-roberta", "xlm-roberta"])
def test_a_folder_with_custom_code_is_refused_and_its_code_never_runs(tmp_path, marker, model_type):
    folder = _evil_folder(tmp_path / "evil", model_type=model_type)
    with pytest.raises(ConfigError, match="needs custom code .*auto_map.*never runs code") as info:
        load_encoder(str(folder))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="needs custom code"):
        load_tokenizer(str(folder))
    assert not marker.exists()


def test_an_unknown_model_type_is_refused_before_transformers_sees_it(tmp_path, marker):
    folder = _evil_folder(tmp_path / "evil")
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model_type 'evil-roberta', which this transformers does not know"):
        load_encoder(str(folder))
    assert not marker.exists()


def test_a_hub_model_with_custom_code_is_refused_without_a_prompt(tmp_path, marker, monkeypatch):
    """A hub snapshot is not checked like a local folder: transformers itself, told trust_remote_code=False,
    refuses (it never asks), and the refusal is one line."""
    import mtllm.sources as sources

    folder = _evil_folder(tmp_path / "snapshot")
    monkeypatch.setattr(sources, "resolve_source", lambda source, **kw: "someone/evil-model")
    monkeypatch.setattr(sources, "from_hub", lambda ref, what, load: load(str(folder)))
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # a prompt would read "" here, not hang
    with pytest.raises(ConfigError, match="encoder someone/evil-model needs custom code") as info:
        load_encoder("someone/evil-model")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_the_cli_refuses_it_even_with_yes_on_stdin(saved, tmp_path, marker):
    """The tester's case: a saved MT-LLM whose encoder folder has auto_map; `echo y | mtllm predict` ran it."""
    model = tmp_path / "model"
    shutil.copytree(saved / "full", model)
    shutil.rmtree(model / "encoder")
    _evil_folder(model / "encoder")
    (tmp_path / "in.txt").write_text("Hello there.\n")
    proc = subprocess.run([sys.executable, "-m", "mtllm", "predict", "--model", str(model), "--input",
                           str(tmp_path / "in.txt"), "--lang", "eng_Latn", "--output", str(tmp_path / "out.jsonl")],
                          input="y\ny\n", text=True, capture_output=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "MTLLM_TEST_MARKER": str(marker)})
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "needs custom code" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "out.jsonl").exists()


# ------------------------------------------------------------------- item 6: folders checked before heavy loading
def _copy(saved: Path, which: str, dest: Path) -> Path:
    shutil.copytree(saved / which, dest)
    return dest


def _other_model(tmp_path: Path, *, labels=("a", "b", "c", "d"), llm: str = "tiny:gemma3") -> Path:
    torch.manual_seed(1)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", llm, lora=LoraSettings(r=2, alpha=4, dropout=0.0),
                                            max_seq_length=32)
    model.set_head("classification", list(labels))
    model.save_pretrained(tmp_path / "other")
    return tmp_path / "other"


def _refused(folder: Path, *words: str, arm=lambda: None) -> str:
    arm()
    with pytest.raises(ConfigError) as info:
        MTLLMModel.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def test_hidden_sizes_in_config_json_are_checked_against_the_base_models(saved, tmp_path, no_weights_load):
    folder = _copy(saved, "good", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["llm_hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    _refused(folder, "LLM hidden size 64", "tiny:gemma3", "has 48", arm=no_weights_load)


def test_a_head_of_another_shape_is_refused(saved, tmp_path, no_weights_load):
    folder = _copy(saved, "good", tmp_path / "m")
    shutil.copy(_other_model(tmp_path) / "model.safetensors", folder / "model.safetensors")
    _refused(folder, "model.safetensors does not belong to", "head.weight is [4, 48], config.json says [3, 48]",
             arm=no_weights_load)


def test_a_weights_file_of_another_model_is_refused(saved, tmp_path, no_weights_load):
    folder = _copy(saved, "good", tmp_path / "m")
    from safetensors.torch import save_file

    save_file({"classifier.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    _refused(folder, "classifier.weight is not a tensor of an MT-LLM", "projection.weight is missing",
             arm=no_weights_load)


def test_an_adapter_trained_on_another_base_model_of_the_same_shapes_is_refused(saved, tmp_path):
    twin = tmp_path / "twin-gemma"
    shutil.copytree(resolve_source("tiny:gemma3"), twin)  # the same shapes, another model
    other = _other_model(tmp_path, labels=("a", "b", "c"), llm=str(twin))
    folder = _copy(saved, "good", tmp_path / "m")
    shutil.rmtree(folder / "adapter")
    shutil.copytree(other / "adapter", folder / "adapter")
    _refused(folder, "LoRA adapter trained on", str(twin), "names the LLM 'tiny:gemma3'")
    assert MTLLMModel.from_pretrained(saved / "good").head is not None  # its own adapter loads


def test_an_adapter_of_another_rank_is_refused(saved, tmp_path, no_weights_load):
    folder = _copy(saved, "good", tmp_path / "m")
    adapter_cfg = folder / "adapter" / "adapter_config.json"
    data = json.loads(adapter_cfg.read_text())
    data["r"] = 8
    adapter_cfg.write_text(json.dumps(data))
    _refused(folder, "has rank 2, adapter_config.json says r=8", arm=no_weights_load)


def test_a_saved_adapter_names_its_base_as_config_json_does(saved):
    data = json.loads((saved / "good" / "adapter" / "adapter_config.json").read_text())
    assert data["base_model_name_or_path"] == "tiny:gemma3"


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.bin", "adapter/adapter_model.bin"])
def test_pickle_files_are_one_line_in_the_cli(saved, tmp_path, capsys, name):
    from mtllm.cli import main

    folder = _copy(saved, "good", tmp_path / "m")
    torch.save({"x": torch.zeros(1)}, folder / name)
    (tmp_path / "in.txt").write_text("Hello.\n")
    code = main(["predict", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--lang", "eng_Latn",
                 "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is a pickle file" in err and "Traceback" not in err
