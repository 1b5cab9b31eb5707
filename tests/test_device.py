"""One device policy for every entry point (:mod:`mtllm.device`), proven without a GPU.

With ``MTLLM_DEVICE=meta`` every entry point must load its model onto the meta device and send every
batch there. Meta tensors hold no values, so nothing can run to the end there; instead a recorder wraps
every top-level model call (``nn.Module.__call__`` of a transformers model, and ``generate``) and stops
the run at the first one, keeping the devices of the model's parameters and buffers and of its inputs.
A model left on the CPU, or a batch not moved to the model's device, shows up there: before the policy
that was the case for evaluation, pre-embedding, the encoder cache, retrieval, ``encode`` after
``from_pretrained``, the encoder probe and translate-test.

On a machine with CUDA, ``test_entry_points_on_cuda_match_the_cpu`` runs the same entry points to the
end on ``cuda`` and on the CPU, checks that every model call ran where the policy says, and compares
the outputs.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pytest
import torch
from transformers import GenerationMixin, PreTrainedModel

from mtllm import LoraSettings, MTLLMModel
from mtllm.device import ENV_VAR, module_device, place, resolve_device, to_device
from mtllm.errors import ConfigError
from mtllm.modeling.batching import length_order, run_batched
from mtllm.settings import ModelSettings
from mtllm.training.loop import TrainingArgs, make_accelerator

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests" / "fixtures" / "pipeline")
MODEL = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=2, lora_alpha=4, lora_dropout=0.0,
                      max_seq_length=64)
TEXTS = ["Le chat dort sur le tapis chaud.", "Un chien court.", "Paka analala kwenye mkeka.",
         "Die Katze schläft auf der warmen Matte, und der Hund läuft im Park.", "Chat."]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------------- the recorder
@dataclass
class Call:
    """One top-level model call: the model's class and the devices of its weights and of its inputs."""

    model: str
    weight_devices: set[str]
    input_devices: set[str]


class Reached(BaseException):
    """Stops a run at its first model call (a BaseException, so no ``except Exception`` swallows it)."""

    def __init__(self, call: Call):
        super().__init__(call)
        self.call = call


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


class DeviceRecorder:
    """Records every top-level call of a transformers model (``MTLLMModel``, an encoder, a seq2seq
    model's ``generate``); with ``stop`` it raises :class:`Reached` at the first one."""

    def __init__(self, monkeypatch, *, stop: bool):
        self.calls: list[Call] = []
        self.stop = stop
        self.depth = 0
        real_call, real_generate = torch.nn.Module.__call__, GenerationMixin.generate

        def watched(real):
            def call(model, *args, **kwargs):
                if self.depth == 0 and isinstance(model, PreTrainedModel):
                    self._record(model, args, kwargs)
                self.depth += 1
                try:
                    return real(model, *args, **kwargs)
                finally:
                    self.depth -= 1
            return call

        monkeypatch.setattr(torch.nn.Module, "__call__", watched(real_call))
        monkeypatch.setattr(GenerationMixin, "generate", watched(real_generate))

    def _record(self, model, args, kwargs) -> None:
        call = Call(type(model).__name__,
                    {str(t.device) for t in itertools.chain(model.parameters(), model.buffers())},
                    {str(t.device) for t in _tensors((args, kwargs))})
        self.calls.append(call)
        if self.stop:
            raise Reached(call)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps its device in a process-wide singleton; each test here picks its own."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ---------------------------------------------------------------------- models and entry points
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny MT-LLM with a head (as distill leaves it, also a stage-1 model) and a tiny teacher, saved."""
    from mtllm.tasks import get_task

    root = tmp_path_factory.mktemp("device-models")
    labels = get_task("sib200").label_names
    torch.manual_seed(0)
    mtllm = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4),
                                            max_seq_length=64, device="cpu")
    mtllm.set_head("classification", labels)
    mtllm.save_pretrained(root / "mtllm")
    teacher = MTLLMModel.llm_only("tiny:gemma3", lora=LoraSettings(r=2, alpha=4), max_seq_length=64, device="cpu")
    teacher.set_head("classification", labels)
    teacher.save_pretrained(root / "teacher")
    return {"mtllm": str(root / "mtllm"), "teacher": str(root / "teacher")}


def _args(out: Path, **kw) -> TrainingArgs:
    base = dict(output_dir=str(out), learning_rate=3e-3, batch_size=4, max_steps=4, warmup_ratio=0.1, seed=0,
                progress=False, report_to="none", log_steps=100)
    base.update(kw)
    return TrainingArgs(**base)


def _evaluate(tmp: Path, **kw):
    from mtllm.baselines.translate_test import TranslateSettings
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate

    settings = EvaluateSettings(data_dir=DATA, output_dir=str(tmp / "eval"), batch_size=4, **kw)
    translate = TranslateSettings(mt_model="tiny:m2m100", cache_dir=str(tmp / "translations"), max_new_tokens=6)
    return run_evaluate(settings, progress=False, translate_settings=translate)


def _translator(tmp: Path):
    from mtllm.baselines.translate_test import TranslateSettings, Translator

    return Translator.from_pretrained("tiny:m2m100", TranslateSettings(mt_model="tiny:m2m100", max_new_tokens=6,
                                                                       batch_size=2, cache_dir=str(tmp / "tr")))


def _entry_point(name: str, saved: dict[str, str], tmp: Path) -> Callable[[], Any]:
    """Each entry point, as a command or the Python API runs it, on the tiny models."""
    from mtllm.baselines.encoder_probe import EncoderClassifier
    from mtllm.tasks import get_task, load_examples
    from mtllm.training.distill import DistillSettings, run_distill
    from mtllm.training.finetune import TaskSettings
    from mtllm.training.stage1 import Stage1Settings, run_stage1

    task = TaskSettings(task="sib200", data_dir=DATA, eval_batch_size=4)
    examples = load_examples(get_task("sib200"), "fra_Latn", "test", data_dir=DATA)
    return {
        "stage1": lambda: run_stage1(MODEL, Stage1Settings(data=["task:sib200/eng_Latn/train"], data_dir=DATA),
                                     _args(tmp / "stage1")),
        "pre_embed": lambda: run_distill(MODEL, task, DistillSettings(stage1_model=saved["mtllm"],
                                                                      teacher_model=saved["teacher"]),
                                         _args(tmp / "distill")),
        "encoder_cache": lambda: run_distill(MODEL, task, DistillSettings(stage1_model=saved["mtllm"], objective="ce",
                                                                          cache_encoder_outputs=True),
                                             _args(tmp / "distill-ce")),
        "evaluate_mtllm": lambda: _evaluate(tmp, model=saved["mtllm"], systems=["mtllm"], langs=["fra_Latn"]),
        "evaluate_llm": lambda: _evaluate(tmp, teacher=saved["teacher"], systems=["llm"], langs=["fra_Latn"]),
        "evaluate_encoder_probe": lambda: _evaluate(tmp, model=saved["mtllm"], systems=["encoder"], langs=["fra_Latn"]),
        "evaluate_translate_test": lambda: _evaluate(tmp, teacher=saved["teacher"], systems=["translate_test"],
                                                     langs=["fra_Latn"], translate_model="tiny:m2m100"),
        "retrieval_mtllm": lambda: _evaluate(tmp, task="retrieval", model=saved["mtllm"], systems=["mtllm"]),
        "retrieval_llm": lambda: _evaluate(tmp, task="retrieval", model=saved["mtllm"], systems=["llm"]),
        "retrieval_encoder": lambda: _evaluate(tmp, task="retrieval", model=saved["mtllm"], systems=["encoder"]),
        "encode": lambda: MTLLMModel.from_pretrained(saved["mtllm"]).encode(TEXTS, lang="fra_Latn"),
        "encoder_probe": lambda: EncoderClassifier(MTLLMModel.from_pretrained(saved["mtllm"])).features(
            examples, lang="fra_Latn"),
        "translate": lambda: _translator(tmp).translate(TEXTS, "fra_Latn", progress=False),
    }[name]


# the model each entry point calls first
FIRST_MODEL = {
    "stage1": "MTLLMModel",  # the teacher targets (the LLM on its own tokens)
    "pre_embed": "MTLLMModel",  # the fine-tuned teacher
    "encoder_cache": "XLMRobertaModel",  # the student's frozen encoder
    "evaluate_mtllm": "MTLLMModel",
    "evaluate_llm": "MTLLMModel",
    "evaluate_encoder_probe": "XLMRobertaModel",
    "evaluate_translate_test": "M2M100ForConditionalGeneration",
    "retrieval_mtllm": "MTLLMModel",
    "retrieval_llm": "MTLLMModel",
    "retrieval_encoder": "XLMRobertaModel",
    "encode": "MTLLMModel",
    "encoder_probe": "XLMRobertaModel",
    "translate": "M2M100ForConditionalGeneration",
}


# ---------------------------------------------------------------------- without a GPU: the meta device
@pytest.mark.parametrize("name", list(FIRST_MODEL))
def test_entry_point_puts_model_and_batches_on_the_resolved_device(name, saved, tmp_path, monkeypatch):
    from accelerate import Accelerator

    monkeypatch.setenv(ENV_VAR, "meta")
    # meta weights hold no values to fingerprint for the translation / encoder-cache keys
    for user in ("mtllm.baselines.translate_test", "mtllm.training.encoder_cache"):
        monkeypatch.setattr(f"{user}.module_fingerprint", lambda model, tokenizer: "meta-weights")
    # Accelerate cannot run on meta: the training loop is made to report it, so that make_accelerator's
    # check against the policy passes and the model follows accelerator.device as it would follow a GPU
    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))
    recorder = DeviceRecorder(monkeypatch, stop=True)
    run = _entry_point(name, saved, tmp_path)
    with pytest.raises(Reached) as stopped:
        run()
    call = stopped.value.call
    assert recorder.calls == [call]
    assert call.model == FIRST_MODEL[name]
    assert call.weight_devices == {"meta"}, f"{name}: {call.model} ran with its weights on {call.weight_devices}"
    assert call.input_devices == {"meta"}, f"{name}: {call.model} got inputs on {call.input_devices}"


def test_loaded_models_never_kernelize(monkeypatch):
    """Every base model mtllm loads has transformers' hub kernels off (``MODEL_LOAD_KWARGS``): nothing
    swaps layers at load or on ``train()`` / ``eval()``, whichever transformers and ``kernels`` are
    installed (transformers 5.25 kernelizes by default, and ``kernels`` refuses the meta device above).
    Each kernelize is recorded instead of run: with ``from_pretrained``'s own default, 5.25 calls it at load."""
    import transformers.modeling_utils as modeling_utils

    from mtllm.sources import load_encoder, load_llm

    calls: list[str] = []
    monkeypatch.setattr(modeling_utils, "kernelize", lambda model, **kw: calls.append(type(model).__name__),
                        raising=False)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4, dropout=0.0))
    for module in (model, load_llm("tiny:gemma3"), load_encoder("tiny:xlmr")):
        module.train()
        module.eval()
    assert calls == [], f"kernelized: {calls}"
    assert not any(getattr(m, "use_kernels", False) for m in model.modules())


# ---------------------------------------------------------------------- the policy itself
def test_resolve_device_order(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    auto = resolve_device()
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert auto.type == expected
    assert resolve_device("auto") == auto and resolve_device("") == auto
    monkeypatch.setenv(ENV_VAR, "meta")
    assert resolve_device() == torch.device("meta")  # the environment over the automatic choice
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit setting over the environment
    assert resolve_device("cpu:0") == torch.device("cpu")  # as Accelerate names it under DDP
    monkeypatch.setenv(ENV_VAR, "gpu-please")
    with pytest.raises(ConfigError, match=ENV_VAR):
        resolve_device()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())


def test_place_and_batches(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "meta")
    model = place(torch.nn.Linear(2, 3))
    assert module_device(model) == torch.device("meta") and model.bias.device == torch.device("meta")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no weights: the CPU
    moved = to_device({"input_ids": torch.ones(2, 3), "n_truncated": 1}, torch.device("meta"))
    assert moved["input_ids"].device == torch.device("meta") and moved["n_truncated"] == 1


def test_training_runs_where_the_policy_says(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    accelerator = make_accelerator(_args(tmp_path))
    assert resolve_device(accelerator.device) == resolve_device()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv(ENV_VAR, "meta")  # a device Accelerate does not run on: an error, not a silent split
    with pytest.raises(ConfigError, match="Accelerate runs on"):
        make_accelerator(_args(tmp_path))


# ---------------------------------------------------------------------- the one batched loop
def test_run_batched_sorts_batches_and_restores_the_input_order():
    items = ["ccc", "a", "bb", "dddd", "e", "ff"]
    seen: list[list[str]] = []

    def step(batch):
        seen.append(batch)
        return [s.upper() for s in batch]

    out = run_batched(items, step, batch_size=4, lengths=[len(s) for s in items])
    assert out == [s.upper() for s in items]
    assert seen == [["a", "e", "bb", "ff"], ["ccc", "dddd"]]  # shortest first, ties in input order
    seen.clear()
    run_batched(items, step, batch_size=4, lengths=[len(s) for s in items], longest_first=True)
    assert seen == [["dddd", "ccc", "bb", "ff"], ["a", "e"]]
    seen.clear()
    run_batched(items, step, batch_size=4)  # no lengths: the input order
    assert seen == [items[:4], items[4:]]
    assert run_batched(items, lambda b: None, batch_size=5) == [None] * len(items)
    assert list(length_order([3, 1, 2, 1], 4)) == [1, 3, 2, 0]
    with pytest.raises(ValueError, match="2 results for a batch of 3"):
        run_batched(items, lambda b: b[:2], batch_size=3)


# ---------------------------------------------------------------------- with a GPU: cuda against the CPU
def _run_to_the_end(saved: dict[str, str], tmp: Path) -> dict[str, Any]:
    """Every entry point, run to the end; their outputs."""
    def run(name):
        return _entry_point(name, saved, tmp)()

    out: dict[str, Any] = {}
    run("stage1")
    out["stage1_loss"] = [json.loads(line)["loss"]
                          for line in (tmp / "stage1" / "metrics.jsonl").read_text().splitlines()]
    run("pre_embed")
    out["distill_loss"] = [json.loads(line)["loss"]
                           for line in (tmp / "distill" / "metrics.jsonl").read_text().splitlines()]
    out["pre_embed"] = np.asarray(np.load(next((tmp / "distill" / "cache").glob("preembed-*/embeddings.npy"))),
                                  np.float32)
    run("encoder_cache")
    out["encoder_cache"] = np.asarray(np.load(next((tmp / "distill-ce" / "cache").glob("encoder-*/hidden.npy"))),
                                      np.float32)
    evaluated = _evaluate(tmp, model=saved["mtllm"], teacher=saved["teacher"], translate_model="tiny:m2m100",
                          systems=["mtllm", "llm", "encoder", "translate_test"])
    retrieved = [run(f"retrieval_{system}") for system in ("mtllm", "llm", "encoder")]
    out["evaluate"], out["evaluate_n"] = evaluated.systems, evaluated.n_examples
    out["retrieval"] = {k: v for r in retrieved for k, v in r.systems.items()}
    out["retrieval_n"] = retrieved[0].n_examples
    out["encode"] = run("encode").numpy()
    out["encoder_probe"] = run("encoder_probe").numpy()
    out["translate"] = run("translate")
    return out


@needs_cuda
def test_entry_points_on_cuda_match_the_cpu(saved, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    recorder = DeviceRecorder(monkeypatch, stop=False)
    runs = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setenv(ENV_VAR, device)
        recorder.calls.clear()
        runs[device] = _run_to_the_end(saved, tmp_path / device)
        where = str(resolve_device())
        assert recorder.calls, "no model ran"
        wrong = [c for c in recorder.calls if c.weight_devices != {where} or not c.input_devices <= {where}]
        assert not wrong, f"{len(wrong)} of {len(recorder.calls)} model calls did not run on {where}: {wrong[:3]}"
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    cpu, gpu = runs["cpu"], runs["cuda"]
    np.testing.assert_allclose(gpu["stage1_loss"], cpu["stage1_loss"], rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(gpu["distill_loss"], cpu["distill_loss"], rtol=1e-2, atol=1e-3)
    for key in ("pre_embed", "encoder_cache"):  # stored in fp16
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-2, atol=5e-3, err_msg=key)
    for key in ("encode", "encoder_probe"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-3, atol=1e-4, err_msg=key)
    for key in ("evaluate", "retrieval"):  # accuracies: at most one example per language may flip on a near tie
        assert gpu[key].keys() == cpu[key].keys()
        for system, per_lang in cpu[key].items():
            for lang, acc in per_lang.items():
                assert abs(gpu[key][system][lang] - acc) <= 1 / cpu[f"{key}_n"][lang] + 1e-9, (key, system, lang)
    assert sum(a != b for a, b in zip(gpu["translate"], cpu["translate"])) <= 1, (gpu["translate"], cpu["translate"])
