"""transformers-native use of a saved MT-LLM: AutoConfig/AutoModel registration, id2label/label2id, the
hub upload (never sent: the upload call is replaced), and base models saved without tokenizer files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtllm import MTLLMConfig, MTLLMModel
from mtllm.device import module_device, resolve_device
from mtllm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]


def _ids(model: MTLLMModel, texts=("a short text", "another, longer text here")) -> dict:
    batch = model.tokenize(list(texts), route="encoder")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@pytest.fixture
def saved(tiny_model, tmp_path):
    tiny_model.set_head("classification", LABELS)
    with torch.no_grad():  # a head that is not all zeros, so logits differ between inputs
        tiny_model.head.weight.normal_()
    tiny_model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


# ------------------------------------------------------------------------------------------- Auto*
def test_registration_happens_on_import_mtllm_in_a_fresh_process():
    code = ("from transformers import AutoConfig, AutoModel\n"
            "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
            "assert 'mtllm' not in CONFIG_MAPPING\n"
            "import mtllm\n"
            "from transformers.models.auto.modeling_auto import MODEL_MAPPING\n"
            "assert AutoConfig.for_model('mtllm').__class__ is mtllm.MTLLMConfig\n"
            "assert MODEL_MAPPING[mtllm.MTLLMConfig] is mtllm.MTLLMModel\n"
            "print('registered')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "registered"


def test_automodel_loads_a_saved_mtllm_through_from_pretrained(saved):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(saved)
    assert isinstance(config, MTLLMConfig)
    assert config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    auto = AutoModel.from_pretrained(saved)
    direct = MTLLMModel.from_pretrained(saved)
    assert type(auto) is MTLLMModel and not auto.training
    assert module_device(auto) == resolve_device(None)
    assert auto.config.label_names == LABELS and auto.config.id2label == direct.config.id2label
    inputs = _ids(direct)
    with torch.no_grad():
        a, b = auto(**inputs), direct(**inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pooled, b.pooled)
    assert not torch.equal(a.logits[0], a.logits[1])  # a real comparison, not of two constants
    assert {**auto.config.to_dict(), "_name_or_path": None} == {**direct.config.to_dict(), "_name_or_path": None}


def test_automodel_honours_a_given_config_and_rejects_a_foreign_one(saved):
    from transformers import AutoModel, BertConfig

    config = MTLLMConfig.from_pretrained(saved)
    config.pooling = "eos"
    assert AutoModel.from_pretrained(saved, config=config).config.pooling == "eos"
    with pytest.raises(ConfigError, match="must be an MTLLMConfig"):
        MTLLMModel.from_pretrained(saved, config=BertConfig())


def test_id2label_follows_label_names_and_old_configs_still_load(saved, tiny_model):
    data = json.loads((saved / "config.json").read_text())
    assert data["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    for key in ("id2label", "label2id"):  # a config saved before they were recorded
        data.pop(key)
    (saved / "config.json").write_text(json.dumps(data))
    old = MTLLMModel.from_pretrained(saved)
    assert old.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert old.config.label2id == {"negative": 0, "neutral": 1, "positive": 2} and old.config.num_labels == 3
    tiny_model.set_head("classification", ["no", "yes"])
    assert tiny_model.config.id2label == {0: "no", 1: "yes"} and tiny_model.config.label2id == {"no": 0, "yes": 1}
    tiny_model.set_head("multiple_choice")
    assert tiny_model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # no labels: transformers' default


# ------------------------------------------------------------------------------------------- hub
@pytest.fixture
def uploads(monkeypatch):
    """Replace the hub calls push_to_hub makes (create the repo, load its model card, upload the folder) with
    fakes that record what would be sent; anything else that reaches for the hub fails the test."""
    import huggingface_hub
    import transformers.utils.hub as hub
    from huggingface_hub import ModelCard

    sent = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            sent.append({"created": repo_id, **kwargs})
            return type("Repo", (), {"repo_id": repo_id})()

    def fake_card(repo_id, tags=None, token=None, **kwargs):
        return ModelCard("---\nlibrary_name: transformers\ntags: " + json.dumps(tags or []) + "\n---\n\n# card\n")

    def fake_upload(self, folder, repo_id, **kwargs):
        folder = Path(folder)
        sent.append({"repo_id": repo_id, "config": json.loads((folder / "config.json").read_text()),
                     "card": (folder / "README.md").read_text(), "files": sorted(p.name for p in folder.iterdir()),
                     **kwargs})
        return "commit-info"

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was called")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", fake_card)
    monkeypatch.setattr(MTLLMModel, "_upload_modified_files", fake_upload)
    for name in ("create_repo", "upload_folder", "upload_file", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_network)
    return sent


@pytest.fixture
def local_model():
    """A model whose base models are local folders (as after training on a machine's own copies)."""
    from mtllm.sources import tiny_path

    torch.manual_seed(0)
    return MTLLMModel.from_encoder_and_llm(str(tiny_path("xlmr")), str(tiny_path("gemma3")), lora=None,
                                           max_seq_length=64)


def test_push_to_hub_refuses_local_base_model_paths(local_model, uploads, tmp_path):
    enc, llm = local_model.config.encoder_name_or_path, local_model.config.llm_name_or_path
    with pytest.raises(ConfigError) as info:
        local_model.push_to_hub("me/my-mtllm")
    message = str(info.value)
    assert enc in message and llm in message and "base_model_ids=" in message and "full=True" in message
    assert uploads == []
    with pytest.raises(ConfigError, match="base_model_ids="):
        local_model.save_pretrained(tmp_path / "for-hub", for_hub=True)
    local_model.save_pretrained(tmp_path / "local")  # for this machine a local path is fine
    assert json.loads((tmp_path / "local" / "config.json").read_text())["llm_name_or_path"] == llm
    with pytest.raises(ConfigError, match="not a hub id"):
        local_model.push_to_hub("me/my-mtllm", base_model_ids={"llm": "./my/llm", "encoder": "a/b"})
    with pytest.raises(ConfigError, match="neither 'encoder', 'llm'"):
        local_model.push_to_hub("me/my-mtllm", base_model_ids={"decoder": "a/b"})
    assert uploads == []


def test_push_to_hub_records_the_mapped_hub_ids(local_model, uploads):
    ids = {"llm": "google/gemma-3-270m", "encoder": "intfloat/multilingual-e5-small"}
    assert local_model.push_to_hub("me/my-mtllm", base_model_ids=ids, private=True, tags=["nli"]) == "commit-info"
    created, sent = uploads
    assert created == {"created": "me/my-mtllm", "private": True, "token": None, "exist_ok": True}
    assert sent["repo_id"] == "me/my-mtllm" and sent["commit_message"] == "Upload MT-LLM"
    assert sent["config"]["llm_name_or_path"] == "google/gemma-3-270m"
    assert sent["config"]["encoder_name_or_path"] == "intfloat/multilingual-e5-small"
    assert sent["files"] == ["README.md", "config.json", "model.safetensors"]
    assert "base_model:\n- google/gemma-3-270m\n- intfloat/multilingual-e5-small" in sent["card"]
    assert "- mtllm" in sent["card"] and "- nli" in sent["card"]
    assert local_model.config.llm_name_or_path != "google/gemma-3-270m"  # the model itself is unchanged


def test_push_to_hub_full_uploads_the_base_models_inside(local_model, uploads):
    local_model.push_to_hub("me/full", full=True, base_model_ids={"llm": "google/gemma-3-270m"})
    sent = uploads[-1]
    assert sent["config"]["llm_name_or_path"] == "./llm" and sent["config"]["encoder_name_or_path"] == "./encoder"
    assert {"llm", "encoder"} <= set(sent["files"])
    assert "base_model:\n- google/gemma-3-270m\n" in sent["card"]  # the card names what ./llm is


# ------------------------------------------------------------------------------------------- no tokenizer files
@pytest.fixture
def bare_folders(tmp_path):
    """The tiny encoder and LLM saved with save_pretrained alone: config.json and weights, no tokenizer files."""
    from transformers import AutoModel

    from mtllm.sources import tiny_path

    folders = {}
    for name in ("xlmr", "gemma3"):
        AutoModel.from_pretrained(tiny_path(name)).save_pretrained(tmp_path / name)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["config.json", "model.safetensors"]
        folders[name] = tmp_path / name
    return folders


def test_a_model_without_tokenizer_files_loads_and_runs_on_ids(bare_folders, tmp_path):
    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm(str(bare_folders["xlmr"]), str(bare_folders["gemma3"]), lora=None)
    assert model.encoder_tokenizer is None and model.llm_tokenizer is None
    assert model.config.llm_bos_token_id == 2  # from the LLM's config (the tiny Gemma's <bos>)
    ids = torch.tensor([[0, 17, 42, 2], [0, 99, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    out = model(input_ids=ids, attention_mask=mask)
    assert out.pooled.shape == (2, model.config.llm_hidden_size) and torch.isfinite(out.pooled).all()
    with torch.no_grad():
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(model(encoder_hidden_states=states, attention_mask=mask).pooled, out.pooled, atol=1e-6)
    assert model(llm_input_ids=ids, llm_attention_mask=mask).pooled.shape == (2, model.config.llm_hidden_size)
    model.save_pretrained(tmp_path / "saved")
    again = MTLLMModel.from_pretrained(tmp_path / "saved")
    assert again.encoder_tokenizer is None and again.llm_tokenizer is None
    assert torch.equal(again(input_ids=ids, attention_mask=mask).pooled, out.pooled.detach())


def test_text_input_without_a_tokenizer_names_the_keyword(bare_folders, tmp_path):
    from transformers import AutoTokenizer

    from mtllm.sources import load_tokenizer, tiny_path

    model = MTLLMModel.from_encoder_and_llm(str(bare_folders["xlmr"]), str(bare_folders["gemma3"]), lora=None)
    with pytest.raises(ConfigError, match=r"no encoder tokenizer .* pass encoder_tokenizer=") as info:
        model.encode(["Habari ya asubuhi"])
    assert str(bare_folders["xlmr"]) in str(info.value)
    with pytest.raises(ConfigError, match=r"no LLM tokenizer .* pass llm_tokenizer="):
        model.tokenize(["hello"], route="llm")
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        load_tokenizer(bare_folders["xlmr"])  # asked for on its own, a missing tokenizer is an error
    assert load_tokenizer(bare_folders["xlmr"], optional=True) is None
    model.save_pretrained(tmp_path / "saved")
    given = MTLLMModel.from_pretrained(tmp_path / "saved",
                                       encoder_tokenizer=AutoTokenizer.from_pretrained(tiny_path("xlmr")),
                                       llm_tokenizer=AutoTokenizer.from_pretrained(tiny_path("gemma3")))
    assert given.encode(["Habari ya asubuhi", "hello"]).shape == (2, model.config.llm_hidden_size)
    assert given.encode(["hello"], route="llm").shape == (1, model.config.llm_hidden_size)


def test_an_nllb_style_encoder_without_tokenizer_files_keeps_its_language_style(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from mtllm.sources import tiny_path

    AutoModelForSeq2SeqLM.from_pretrained(tiny_path("m2m100")).save_pretrained(tmp_path / "m2m")
    model = MTLLMModel.from_encoder_and_llm(str(tmp_path / "m2m"), "tiny:gemma3", lora=None)
    assert model.encoder_tokenizer is None and model.llm_tokenizer is not None
    assert model.config.encoder_lang_style == "nllb"  # as with its tokenizer: src_lang once one is given
    assert MTLLMModel.from_encoder_and_llm("tiny:m2m100", "tiny:gemma3", lora=None).config.encoder_lang_style == "nllb"
