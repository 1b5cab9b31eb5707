import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.modeling.model import bidirectional_attention_mask

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
    # mean pooling: each row is the mean of the LLM states of its real encoder tokens (not <bos>, not padding)
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        torch.testing.assert_close(out.pooled[i], out.last_hidden_state[i, 1:1 + n].mean(0))


@pytest.mark.parametrize("which", ["causal", "bidirectional"])
def test_attention_direction(causal_and_bidirectional, which):
    causal, bidir = causal_and_bidirectional
    model = causal if which == "causal" else bidir
    ids = model.tokenize(["one two three four five"], route="llm")["input_ids"]
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
    alone = bidir.encode(["hi there"], route="llm")
    padded = bidir.encode(["hi there", "a much longer sentence that forces padding of the short one"], route="llm",
                          batch_size=2)[0]
    assert torch.allclose(alone[0], padded, atol=1e-5)


def test_path_is_the_deprecated_old_name_of_route(tiny_model):
    """``path=`` (the old name of ``route=``) still works on the public methods, with a FutureWarning naming
    ``route=`` shown at the caller's line; giving both is a TypeError."""
    with pytest.warns(FutureWarning, match=r"tokenize\(path=\.\.\.\) is deprecated: .*route='llm'") as caught:
        old = tiny_model.tokenize(TEXTS, path="llm")
    assert caught[0].filename == __file__
    assert torch.equal(old["input_ids"], tiny_model.tokenize(TEXTS, route="llm")["input_ids"])
    with pytest.warns(FutureWarning, match=r"encode\(path=\.\.\.\) is deprecated: .*route='encoder'"):
        old = tiny_model.encode(TEXTS, path="encoder", lang="eng_Latn")
    assert torch.equal(old, tiny_model.encode(TEXTS, route="encoder", lang="eng_Latn"))
    with pytest.raises(TypeError, match=r"encode\(\) got route= and path="):
        tiny_model.encode(TEXTS, route="llm", path="llm")


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
    assert torch.allclose(tiny_model.encode(TEXTS[::-1], batch_size=2), full.flip(0), atol=1e-5)  # input order kept


def test_only_projection_and_lora_train(tiny_model):
    names = set(tiny_model.trainable_parameters())
    expected = {n for n, _ in tiny_model.named_parameters() if n.startswith("projection.") or "lora_" in n}
    assert {"projection.weight", "projection.bias"} < expected and any("lora_A" in n for n in expected) \
        and any("lora_B" in n for n in expected)
    assert names == expected  # exactly these: every LoRA matrix and the projection, nothing else
    assert not any(p.requires_grad for p in tiny_model.encoder.parameters())
    assert not any(p.requires_grad for n, p in tiny_model.llm.named_parameters() if "lora_" not in n)


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
    assert torch.equal(loaded.head.weight, tiny_model.head.weight) and torch.equal(
        loaded.head.bias, tiny_model.head.bias)
    tiny_model.save_pretrained(tmp_path / "full", full=True)
    assert (tmp_path / "full" / "llm" / "config.json").exists()
    again = MTLLMModel.from_pretrained(tmp_path / "full")
    assert (again.encode(TEXTS) - before).abs().max().item() < 1e-5


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
    tok = model.encoder_tokenizer
    for lang in ("eng_Latn", "fra_Latn"):  # NLLB-style input: "<lang> text </s>"
        ids = model.tokenize(["hello world"], lang=lang)["input_ids"][0]
        assert ids[0] == tok.convert_tokens_to_ids(lang) and ids[-1] == tok.eos_token_id
    emb = model.encode(["hello world"], lang="eng_Latn")
    assert emb.shape == (1, model.config.llm_hidden_size) and torch.isfinite(emb).all()
    assert (model.encode(["hello world"], lang="fra_Latn") - emb).abs().max().item() > 1e-4  # the language token counts
    with pytest.raises(ValueError, match="needs the input language"):
        model.encode(["hello"])


def test_unknown_language_code_names_close_matches(tiny_model):
    from mtllm.data.languages import UnknownLanguageError

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
    full = tiny_model.encoder_tokenizer("word " * 200)["input_ids"]
    # the first 15 tokens, then the end-of-sequence token the encoder expects
    assert batch["input_ids"][0].tolist() == full[:15] + [tiny_model.encoder_tokenizer.eos_token_id]


def _rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


def test_calibration_matches_embedding_rms(tiny_model):
    """After calibration the projection's outputs on real encoder tokens have the RMS of the LLM's own
    input embeddings of the same texts, both measured here independently of the returned stats."""
    model = tiny_model
    llm = model.tokenize(TEXTS, route="llm")
    with torch.no_grad():
        target = _rms(model.base_llm.get_input_embeddings()(llm["input_ids"])[llm["attention_mask"].bool()])
        enc = model.tokenize(TEXTS)
        states = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        real = enc["attention_mask"].bool()
        before = _rms(model.projection(states)[real])
    assert abs(before - target) > 0.1 * target  # the default init is off: the calibration has work to do
    from mtllm.training.stage1 import calibrate_projection

    stats = calibrate_projection(model, TEXTS)
    with torch.no_grad():
        after = _rms(model.projection(states)[real])
    assert after == pytest.approx(target, rel=1e-4)
    assert stats["rms_before"] == pytest.approx(before, rel=1e-4) and stats["target_rms"] == pytest.approx(
        target, rel=1e-4)


def test_empty_texts_are_rejected_before_any_work(tiny_model):
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (tiny_model.encoder, tiny_model.llm)]
    try:
        with pytest.raises(ValueError, match=r"indices \[1, 2\]"):
            tiny_model.encode(["fine", "", "   "])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []  # not even the valid text was run


def test_truncation_is_reported_once(tiny_model):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model.encode(["word " * 300, "short", "word " * 300], batch_size=1)  # three batches, one warning
    messages = [str(w.message) for w in caught if "were longer" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("2 of 3 texts were longer than 64 tokens"), messages


def test_push_to_hub_uploads_what_save_pretrained_writes(tiny_model, monkeypatch, tmp_path):
    """The standard PushToHubMixin path (hub calls replaced by fakes: no network here)."""
    import shutil

    import transformers.utils.hub as hub

    created, uploaded = [], {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            created.append(repo_id)
            return type("Repo", (), {"repo_id": repo_id})()

    def fake_upload(self, folder, repo_id, **kwargs):
        shutil.copytree(folder, tmp_path / "uploaded")
        uploaded["repo"] = repo_id

    # the names PushToHubMixin.push_to_hub looks up (raising=True: a renamed one fails here, not silently)
    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card",
                        lambda *a, **k: type("Card", (), {"save": lambda self, p: open(p, "w").write("card")})())
    monkeypatch.setattr(type(tiny_model), "_upload_modified_files", fake_upload)
    tiny_model.push_to_hub("me/tiny-mtllm")
    assert created == ["me/tiny-mtllm"] and uploaded["repo"] == "me/tiny-mtllm"
    assert (tmp_path / "uploaded" / "README.md").read_text() == "card"
    loaded = MTLLMModel.from_pretrained(tmp_path / "uploaded")
    assert (loaded.encode(TEXTS) - tiny_model.encode(TEXTS)).abs().max().item() < 1e-5


def test_a_missing_local_model_folder_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    """A path that can only be local fails at once with one line naming it; the hub is not asked."""
    import huggingface_hub

    from mtllm.errors import ConfigError
    from mtllm.sources import looks_local

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked for a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub, raising=True)
    for path in (str(tmp_path / "missing" / "final"), "./runs/x/final", "runs/x/final", "~/m"):
        assert looks_local(path)
        with pytest.raises(ConfigError, match="no such model folder"):
            MTLLMModel.from_pretrained(path)
    assert not looks_local("facebook/nllb-200-distilled-600M")


def test_tiny_tokenizers_are_the_same_on_every_build():
    """The Unigram trainer orders tied pieces (and their 1e-4 score offsets) by thread timing, and its
    scores differ in the last bits: the canonical form maps any such variant to one vocabulary."""
    from mtllm.sources.tiny import _canonical_vocab

    specials = [["<pad>", 0.0], ["<unk>", 0.0]]
    build_a = specials + [["a", -1.0000000000000002], ["x", -9.4009], ["b", -9.4010], ["c", -9.4011], ["z", -12.5]]
    build_b = specials + [["a", -1.0], ["c", -9.4009], ["x", -9.4010], ["b", -9.4011], ["z", -12.500000000000002]]
    assert _canonical_vocab(build_a, 2) == _canonical_vocab(build_b, 2) == specials + [
        ["a", -1.0], ["b", -9.4009], ["c", -9.401], ["x", -9.4011], ["z", -12.5]]
