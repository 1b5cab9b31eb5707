import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.modeling import bidirectional_attention_mask

TEXTS = ["the cat sat on the mat", "a longer sentence about the weather in the mountains today", "hi"]


def _hidden_llm(model, ids):
    return model(llm_input_ids=ids, llm_attention_mask=torch.ones_like(ids)).last_hidden_state


@pytest.fixture(scope="module")
def causal_and_bidirectional():
    torch.manual_seed(0)
    causal = MTLLMModel.llm_only("tiny:gemma3", lora=None)
    bidir = MTLLMModel.llm_only("tiny:gemma3", lora=None, bidirectional=True)
    bidir.llm.load_state_dict(causal.llm.state_dict())
    return causal.eval(), bidir.eval()


def test_forward_shapes_and_pooling_mask(tiny_model):
    batch = tiny_model.tokenize(TEXTS)
    out = tiny_model(batch["input_ids"], batch["attention_mask"])
    N, Le = batch["input_ids"].shape
    D = tiny_model.config.llm_hidden_size
    assert out.last_hidden_state.shape == (N, Le + 1, D)  # + the LLM's <bos>
    assert out.pooled.shape == (N, D)
    assert out.pool_mask[:, 0].sum() == 0  # <bos> is not pooled
    assert torch.equal(out.pool_mask[:, 1:], batch["attention_mask"])


@pytest.mark.parametrize("which", ["causal", "bidirectional"])
def test_attention_direction(causal_and_bidirectional, which):
    causal, bidir = causal_and_bidirectional
    model = causal if which == "causal" else bidir
    ids = model.tokenize(["one two three four five"], path="llm")["input_ids"]
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 7) % model.config.llm_vocab_size
    with torch.no_grad():
        a, b = _hidden_llm(model, ids), _hidden_llm(model, changed)
    early_diff = (a[0, :-1] - b[0, :-1]).abs().max().item()
    if which == "causal":
        assert early_diff < 1e-6  # earlier positions cannot see a later token
    else:
        assert early_diff > 1e-4  # every position sees every other


def test_bidirectional_right_padding_does_not_change_outputs(causal_and_bidirectional):
    _, bidir = causal_and_bidirectional
    alone = bidir.encode(["hi there"], path="llm")
    padded = bidir.encode(["hi there", "a much longer sentence that forces padding of the short one"], path="llm",
                          batch_size=2)[0]
    assert torch.allclose(alone[0], padded, atol=1e-5)


def test_bidirectional_mask_is_padding_only():
    mask = torch.tensor([[1, 1, 0]])
    m = bidirectional_attention_mask(mask, torch.float32)
    assert m.shape == (1, 1, 3, 3)
    assert (m[0, 0, :, :2] == 0).all() and (m[0, 0, :, 2] < -1e30).all()


def test_encode_is_order_independent_and_batched(tiny_model):
    full = tiny_model.encode(TEXTS, batch_size=2)
    single = torch.stack([tiny_model.encode(t) for t in TEXTS])
    assert full.shape == (3, tiny_model.config.llm_hidden_size)
    assert torch.allclose(full, single, atol=1e-5)


def test_only_projection_and_lora_train(tiny_model):
    names = list(tiny_model.trainable_parameters())
    assert names and all(n.startswith("projection.") or "lora_" in n for n in names)
    assert not any(p.requires_grad for p in tiny_model.encoder.parameters())


def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.set_head("classification", ["a", "b", "c"])
    with torch.no_grad():
        tiny_model.llm.base_model.model.layers[0].self_attn.q_proj.lora_B.default.weight.normal_()
    before = tiny_model.encode(TEXTS)
    tiny_model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "adapter").exists()
    assert not (tmp_path / "m" / "llm").exists()  # base models referenced, not copied
    loaded = MTLLMModel.from_pretrained(tmp_path / "m")
    after = loaded.encode(TEXTS)
    assert (before - after).abs().max().item() < 1e-5
    assert loaded.config.label_names == ["a", "b", "c"]
    tiny_model.save_pretrained(tmp_path / "full", full=True)
    assert (tmp_path / "full" / "llm" / "config.json").exists()
    again = MTLLMModel.from_pretrained(tmp_path / "full")
    assert (again.encode(TEXTS) - before).abs().max().item() < 1e-5
    tiny_model.head = None
    tiny_model.config.head_kind = None


def test_merged_adapters_give_the_same_outputs_and_guard_what_merging_removes(tiny_model, tmp_path):
    with torch.no_grad():
        for name, p in tiny_model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    tiny_model.set_head("classification", ["a", "b"])
    tiny_model.save_pretrained(tmp_path / "m")
    unmerged = MTLLMModel.from_pretrained(tmp_path / "m")
    before = unmerged.encode(TEXTS)
    with unmerged.adapters_disabled():
        teacher = unmerged.encode(TEXTS)
    assert (before - teacher).abs().max().item() > 1e-3  # the adapter matters, so the comparison can fail
    merged = MTLLMModel.from_pretrained(tmp_path / "m", merge_adapters=True)
    assert merged.adapters_merged and not any("lora_" in n for n, _ in merged.named_parameters())
    assert (merged.encode(TEXTS) - before).abs().max().item() < 1e-4
    with pytest.raises(RuntimeError, match="merge"):
        with merged.adapters_disabled():
            pass
    with pytest.raises(ValueError, match="full=True"):
        merged.save_pretrained(tmp_path / "lost")
    assert not (tmp_path / "lost").exists()
    merged.save_pretrained(tmp_path / "merged", full=True)
    assert not (tmp_path / "merged" / "adapter").exists()
    reloaded = MTLLMModel.from_pretrained(tmp_path / "merged")
    assert reloaded.config.lora is None
    assert (reloaded.encode(TEXTS) - before).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="is_trainable"):
        MTLLMModel.from_pretrained(tmp_path / "m", merge_adapters=True, is_trainable=True)
    with torch.no_grad():
        for name, p in tiny_model.llm.named_parameters():
            if "lora_B" in name:
                p.zero_()
    tiny_model.head = None
    tiny_model.config.head_kind = None


def test_pickle_checkpoint_is_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    torch.save({"x": 1}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        MTLLMModel.from_pretrained(tmp_path / "m")


def test_mismatched_base_model_is_a_clear_error(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    other = MTLLMModel.llm_only("tiny:llama", lora=None)
    with pytest.raises(ValueError, match="mismatch"):
        MTLLMModel.from_pretrained(tmp_path / "m", llm=other.llm, llm_tokenizer=other.llm_tokenizer)


def test_llama_and_m2m100_encoder_stack():
    model = MTLLMModel.from_encoder_and_llm("tiny:m2m100", "tiny:llama", lora=LoraSettings(r=2, alpha=4))
    assert model.config.encoder_lang_style == "nllb"
    emb = model.encode(["hello world"], lang="eng_Latn")
    assert emb.shape == (1, model.config.llm_hidden_size) and torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="needs the input language"):
        model.encode(["hello"])


def test_unknown_language_code_names_close_matches(tiny_model):
    from mtllm.languages import UnknownLanguageError

    with pytest.raises(UnknownLanguageError, match="swh_Latn"):
        tiny_model.encode(["habari"], lang="swh_Ltn")


def test_4bit_on_cpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA"):
        MTLLMModel.llm_only("tiny:gemma3", load_in_4bit=True)


def test_truncation_is_counted(tiny_model):
    batch = tiny_model.tokenize(["word " * 200, "short"], max_length=16)
    assert batch["n_truncated"] == 1 and batch["input_ids"].shape[1] == 16


def test_calibration_matches_embedding_rms(tiny_model):
    stats = tiny_model.calibrate_projection(TEXTS)
    assert stats["rms_after"] == pytest.approx(stats["target_rms"], rel=1e-4)


def test_empty_texts_are_rejected_before_any_work(tiny_model):
    with pytest.raises(ValueError, match=r"indices \[1, 2\]"):
        tiny_model.encode(["fine", "", "   "])


def test_truncation_is_reported_once(tiny_model):
    with pytest.warns(UserWarning, match="1 of 2 texts were longer"):
        tiny_model.encode(["word " * 300, "short"])


def test_push_to_hub_uploads_what_save_pretrained_writes(tiny_model, monkeypatch, tmp_path):
    """The standard PushToHubMixin path (hub calls replaced by fakes: no network here)."""
    import shutil

    import transformers.utils.hub as hub

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

    uploaded = {}

    def fake_upload(self, folder, repo_id, **kwargs):
        shutil.copytree(folder, tmp_path / "uploaded")
        uploaded["repo"] = repo_id

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi(), raising=False)
    monkeypatch.setattr(hub, "create_and_tag_model_card",
                        lambda *a, **k: type("Card", (), {"save": lambda self, p: open(p, "w").write("card")})())
    monkeypatch.setattr(type(tiny_model), "_upload_modified_files", fake_upload)
    tiny_model.push_to_hub("me/tiny-mtllm")
    assert uploaded["repo"] == "me/tiny-mtllm"
    loaded = MTLLMModel.from_pretrained(tmp_path / "uploaded")
    assert (loaded.encode(TEXTS) - tiny_model.encode(TEXTS)).abs().max().item() < 1e-5
