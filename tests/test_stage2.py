"""Stage 2 on tiny models and a small slice of real SIB-200: teacher fine-tuning with model selection,
pre-embedding cache, distillation (and its variants), multiple choice, label checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtllm import LoraSettings, MTLLMModel
from mtllm.tasks import Example
from mtllm.training.loop import TrainingArgs
from mtllm.settings import ModelSettings
from mtllm.training.stage1 import Stage1Settings, run_stage1
from mtllm.inference import predict
from mtllm.training.distill import DistillSettings, pre_embed, run_distill
from mtllm.training.finetune import TaskSettings, run_finetune

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")
MODEL = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                      max_seq_length=64)
TASK = TaskSettings(task="sib200", data_dir=DATA, eval_batch_size=8)


def _args(out: Path, **kw) -> TrainingArgs:
    base = dict(output_dir=str(out), learning_rate=3e-3, batch_size=4, num_epochs=2, warmup_ratio=0.1, seed=0,
                progress=False, report_to="none", log_steps=100)
    base.update(kw)
    return TrainingArgs(**base)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    # a faster head: the validation accuracy then differs between epochs (on this data, not monotonically),
    # so keeping the wrong checkpoint would show in test_finetune_keeps_the_best_validation_checkpoint
    summary = run_finetune(MODEL, TASK, _args(out, num_epochs=3, head_lr=3e-2))
    return out, summary


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    run_stage1(MODEL, Stage1Settings(data=["task:sib200/eng_Latn/train"], data_dir=DATA),
               _args(out, max_steps=10, num_epochs=1.0))
    return out / "final"


def _val_accuracy(model_dir: Path) -> float:
    """English validation accuracy of a saved teacher, re-evaluated from disk: predictions vs labels."""
    from mtllm.tasks import load_examples

    examples = load_examples("sib200", "eng_Latn", "validation", data_dir=DATA)
    labels = np.array([e.label for e in examples])
    preds = predict(MTLLMModel.from_pretrained(model_dir), examples, route="llm", batch_size=8)
    return float((preds == labels).mean())


def test_finetune_keeps_the_best_validation_checkpoint(teacher_dir):
    from mtllm.tasks import get_task

    out, summary = teacher_dir
    assert [e["epoch"] for e in summary["evals"]] == [1, 2, 3]  # one evaluation per epoch
    accs = [e["val_accuracy"] for e in summary["evals"]]
    assert len(set(accs)) > 1  # epochs differ, so a wrong choice of checkpoint changes the numbers below
    # the recorded accuracies are the models' real ones: the last epoch's is that of the saved final model
    assert _val_accuracy(out / "final") == accs[-1]
    # and the saved best checkpoint, re-evaluated from disk, has the best of them
    assert _val_accuracy(out / "best") == max(accs)
    assert summary["best"]["accuracy"] == max(accs) and summary["best"]["epoch"] == accs.index(max(accs)) + 1
    assert json.loads((out / "best_score.json").read_text())["accuracy"] == max(accs)
    assert MTLLMModel.from_pretrained(out / "best").config.label_names == list(get_task("sib200").label_names)


def test_pre_embedding_is_cached_and_invalidated(teacher_dir, tmp_path, monkeypatch):
    out, _ = teacher_dir
    teacher = MTLLMModel.from_pretrained(out / "best")
    examples = [Example(id=str(i), texts=(t,), label=0) for i, t in enumerate(["one text", "another text here", "x"])]
    expected = teacher.encode([e.texts[0] for e in examples], route="llm").numpy()  # the teacher's pooled vectors
    calls = {"n": 0}
    real = MTLLMModel.forward

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(MTLLMModel, "forward", counting)
    first = pre_embed(teacher, examples, cache_dir=tmp_path, teacher_id="t1", show_progress=False)
    assert first.dtype == np.float16
    np.testing.assert_allclose(np.asarray(first, dtype=np.float32), expected, rtol=2e-3, atol=1e-3)  # fp16 storage
    n = calls["n"]
    again = pre_embed(teacher, examples, cache_dir=tmp_path, teacher_id="t1", show_progress=False)
    assert calls["n"] == n and isinstance(again, np.memmap)  # reused, memory-mapped
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    pre_embed(teacher, examples, cache_dir=tmp_path, teacher_id="t2", show_progress=False)
    assert calls["n"] > n  # another teacher: recomputed
    n = calls["n"]
    changed = examples[:2] + [Example(id="2", texts=("changed",), label=0)]
    pre_embed(teacher, changed, cache_dir=tmp_path, teacher_id="t1", show_progress=False)
    assert calls["n"] > n  # other data: recomputed
    n = calls["n"]
    for meta in tmp_path.glob("preembed-*/meta.json"):
        meta.write_text("{broken")
    pre_embed(teacher, examples, cache_dir=tmp_path, teacher_id="t1", show_progress=False)
    assert calls["n"] > n  # a broken entry is rebuilt


def test_distillation_loss_falls_and_head_is_the_teachers(teacher_dir, stage1_dir, tmp_path):
    out, _ = teacher_dir
    dist = DistillSettings(stage1_model=str(stage1_dir), teacher_model=str(out / "best"))
    summary = run_distill(MODEL, TASK, dist, _args(tmp_path, num_epochs=4))
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = np.mean([h["mse"] for h in history[:3]])
    last = np.mean([h["mse"] for h in history[-3:]])
    assert last < 0.7 * first, (first, last)
    assert summary["trainable"] == ["lora"]  # the paper's default: projection and head frozen
    student = MTLLMModel.from_pretrained(tmp_path / "final")
    teacher = MTLLMModel.from_pretrained(out / "best")
    start = MTLLMModel.from_pretrained(stage1_dir)
    # what the summary claims, checked on the saved weights: the head is the teacher's, the projection
    # is stage 1's, and only the LoRA adapter moved
    assert torch.equal(student.head.weight, teacher.head.weight) and torch.equal(student.head.bias, teacher.head.bias)
    assert torch.equal(student.projection.weight, start.projection.weight)
    lora = {n: p for n, p in student.llm.named_parameters() if "lora_" in n}
    lora_start = {n: p for n, p in start.llm.named_parameters() if "lora_" in n}
    assert lora.keys() == lora_start.keys() and lora
    assert max((lora[n] - lora_start[n]).abs().max().item() for n in lora) > 1e-4


def test_distill_variants_ce_and_no_stage1(teacher_dir, tmp_path):
    ce = run_distill(MODEL, TASK, DistillSettings(stage1_model=None, objective="ce", train_projection=True),
                     _args(tmp_path / "ce", num_epochs=1))
    assert set(ce["trainable"]) == {"lora", "projection", "head"} and ce["objective"] == "ce"
    with pytest.raises(ValueError, match="teacher_model"):
        run_distill(MODEL, TASK, DistillSettings(objective="distill"), _args(tmp_path / "x", num_epochs=1))
    with pytest.raises(ValueError, match="nothing to train"):
        run_distill(MODEL, TASK, DistillSettings(teacher_model=str(teacher_dir[0] / "best"), train_lora=False,
                                                 train_head=False, train_projection=False),
                    _args(tmp_path / "y", num_epochs=1))


def _hand_option_scores(model: MTLLMModel, example: Example, route: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per option, by hand: the tokens whose character offsets overlap the option's text, the mean of the
    LLM's states over them ``(K, D)``, and the head applied to that mean ``(K,)``."""
    from mtllm.data.multiple_choice import format_multiple_choice

    assert model.config.encoder_text_prefix == ""  # tiny:xlmr: encoder offsets are offsets into the text
    text, char_spans = format_multiple_choice(example.texts[0], example.texts[1], example.options)
    enc = model.tokenize([text], route=route, lang="eng_Latn" if route == "encoder" else None, return_offsets=True)
    offsets = enc["offset_mapping"][0]
    with torch.no_grad():
        if route == "encoder":  # the LLM's states after its <bos>, one per encoder token
            hidden_LD = model(enc["input_ids"], enc["attention_mask"]).last_hidden_state[0, 1:]
        else:
            hidden_LD = model(llm_input_ids=enc["input_ids"],
                              llm_attention_mask=enc["attention_mask"]).last_hidden_state[0]
        pooled = []
        for cs, ce in char_spans:
            tokens = [i for i, (s, e) in enumerate(offsets) if e > s and s < ce and e > cs]
            assert tokens, (text[cs:ce], offsets)
            pooled.append(hidden_LD[tokens].mean(0))
        pooled_KD = torch.stack(pooled)
        logits_K = pooled_KD @ model.head.weight[0] + model.head.bias[0]
    return pooled_KD, logits_K


def test_multiple_choice_scores_each_option_span(tmp_path):
    from mtllm.data.collate import collate_examples

    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4),
                                            max_seq_length=128)
    model.set_head("multiple_choice")
    model.eval()
    examples = [Example(id="1", texts=("The bridge opened in 1932.", "When did it open?"), label=1,
                        options=("1923", "1932", "1952", "1992")),
                Example(id="2", texts=("Η γέφυρα άνοιξε το 1932.", "Πότε άνοιξε;"), label=1,
                        options=("1923", "1932", "πλοία", "τρένα"))]
    for route in ("encoder", "llm"):
        hand = [_hand_option_scores(model, e, route) for e in examples]
        batch = collate_examples(model, examples, route=route, lang="eng_Latn")
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "n_truncated")}).logits
        torch.testing.assert_close(logits, torch.stack([h[1] for h in hand]), atol=1e-4, rtol=1e-4)
        preds = predict(model, examples, route=route, lang="eng_Latn")
        assert preds.tolist() == [int(h[1].argmax()) for h in hand]  # the best-scoring option, per example
    emb = pre_embed(model, examples, cache_dir=tmp_path, teacher_id="mc", show_progress=False)
    expected = np.stack([_hand_option_scores(model, e, "llm")[0].numpy() for e in examples])
    np.testing.assert_allclose(np.asarray(emb, dtype=np.float32), expected, rtol=2e-3, atol=1e-3)  # fp16 storage
    # evaluation's shared encoder pass scores options exactly as the separate systems do
    from mtllm.baselines.encoder_probe import EncoderClassifier
    from mtllm.evaluation.evaluate import predict_shared_encoder

    with torch.no_grad():
        model.head.weight.normal_()
    probe = EncoderClassifier(model)
    probe.fit(examples, [], lang="eng_Latn")
    mt, enc, _ = predict_shared_encoder(model, probe, examples, lang="eng_Latn", batch_size=1)
    assert mt.tolist() == predict(model, examples, route="encoder", lang="eng_Latn", batch_size=1).tolist()
    assert enc.tolist() == probe.predict(examples, lang="eng_Latn").tolist()


def test_labels_the_head_never_saw_are_an_error(teacher_dir, tmp_path):
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate

    out, _ = teacher_dir
    with pytest.raises(ValueError, match="labels"):
        run_evaluate(EvaluateSettings(teacher=str(out / "best"), task="nusax",
                                      data_dir=str(ROOT / "tests/fixtures/tasks"),
                                      systems=["llm"], output_dir=str(tmp_path)), progress=False)


def test_distillation_resume_equals_uninterrupted(teacher_dir, stage1_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from mtllm.training import loop

    out, _ = teacher_dir
    dist = DistillSettings(stage1_model=str(stage1_dir), teacher_model=str(out / "best"), train_projection=True)
    run_distill(MODEL, TASK, dist, _args(tmp_path / "full", num_epochs=2, save_steps=4))
    real = loop._save_checkpoint

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        if args[5] == 8:
            raise KeyboardInterrupt("simulated pre-emption")

    monkeypatch.setattr(loop, "_save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        run_distill(MODEL, TASK, dist, _args(tmp_path / "cut", num_epochs=2, save_steps=4))
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    run_distill(MODEL, TASK, dist, _args(tmp_path / "cut", num_epochs=2, save_steps=4, resume=True))

    def weights(d):
        w = load_file(str(d / "final" / "model.safetensors"))
        w.update(load_file(str(d / "final" / "adapter" / "adapter_model.safetensors")))
        return w

    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
