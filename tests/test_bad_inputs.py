"""Bad input, round 2 (issue 13, items 5-7): broken model folders and offline hubs give one clear line
before anything loads; ``max_examples`` is a fixed-seed stratified sample and a one-class sample is
flagged; texts with no content token are refused like empty texts."""
from __future__ import annotations

import csv
import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from mtllm import LoraSettings, MTLLMModel
from mtllm.errors import ConfigError, DataError
from mtllm.tasks import Example

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "pipeline"


# ------------------------------------------------------------------------------------------ item 5: model folders
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny MT-LLM saved twice: referencing its base models (``good``) and with them inside (``full``)."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4),
                                            max_seq_length=32)
    model.save_pretrained(root / "good")
    model.save_pretrained(root / "full", full=True)
    return root


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks the Hugging Face hub."""
    import mtllm.modeling.serialization as serialization
    import mtllm.sources as sources

    def refuse(*args, **kwargs):
        raise AssertionError(f"the hub was asked: {args}")

    monkeypatch.setattr(sources, "from_hub", refuse)
    monkeypatch.setattr(serialization, "from_hub", refuse)
    monkeypatch.setattr(sources, "_probe_hub", refuse)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _copy(saved: Path, which: str, dest: Path) -> Path:
    shutil.copytree(saved / which, dest)
    return dest


# (name, which saved folder, how to break it, error class, words the one line must hold)
BROKEN = [
    ("no config.json", "good", lambda d: (d / "config.json").unlink(), ConfigError, ["config.json", "save"]),
    ("truncated config.json", "good", lambda d: _truncate(d / "config.json"), DataError,
     ["config.json", "not valid JSON"]),
    ("config of a plain model", "good",
     lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text"})), ConfigError,
     ["'gemma3_text'", "not of an MT-LLM", "llm setting"]),
    ("truncated model.safetensors", "good", lambda d: _truncate(d / "model.safetensors"), DataError,
     ["model.safetensors", "truncated", "rerun that stage"]),
    ("empty model.safetensors", "good", lambda d: (d / "model.safetensors").write_bytes(b""), DataError,
     ["model.safetensors", "shorter than a safetensors header"]),
    ("missing model.safetensors", "good", lambda d: (d / "model.safetensors").unlink(), ConfigError,
     ["model.safetensors is missing"]),
    ("truncated adapter", "good", lambda d: _truncate(d / "adapter" / "adapter_model.safetensors", 0.9), DataError,
     ["adapter_model.safetensors", "truncated"]),
    ("missing adapter weights", "good", lambda d: (d / "adapter" / "adapter_model.safetensors").unlink(), ConfigError,
     ["adapter", "adapter_model.safetensors is missing"]),
    ("missing adapter config", "good", lambda d: (d / "adapter" / "adapter_config.json").unlink(), ConfigError,
     ["adapter", "no adapter_config.json"]),
    ("truncated saved LLM", "full", lambda d: _truncate(d / "llm" / "model.safetensors"), DataError,
     ["refers to the LLM './llm'", "llm/model.safetensors", "truncated"]),
    ("truncated saved encoder", "full", lambda d: _truncate(d / "encoder" / "model.safetensors", 0.99), DataError,
     ["refers to the encoder './encoder'", "encoder/model.safetensors", "truncated"]),
    ("missing saved LLM folder", "full", lambda d: shutil.rmtree(d / "llm"), ConfigError,
     ["refers to the LLM './llm'", "no such folder", "copy the whole folder again"]),
    ("saved LLM without config.json", "full", lambda d: (d / "llm" / "config.json").unlink(), ConfigError,
     ["llm has no config.json"]),
]


@pytest.mark.parametrize("name,which,breakit,error,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_model_folder_is_one_line_naming_the_file(saved, tmp_path, no_hub, name, which, breakit, error,
                                                           words, monkeypatch):
    import mtllm.modeling.model as model_module

    built = []
    real_init = MTLLMModel.__init__
    monkeypatch.setattr(model_module.MTLLMModel, "__init__",
                        lambda self, *a, **k: (built.append(1), real_init(self, *a, **k))[1])
    folder = _copy(saved, which, tmp_path / "m")
    breakit(folder)
    with pytest.raises(error) as info:
        MTLLMModel.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    assert not built  # refused before any model was built


def test_a_folder_that_is_a_file_and_a_run_folder_are_explained(saved, tmp_path, no_hub):
    file = tmp_path / "model"
    file.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a model folder"):
        MTLLMModel.from_pretrained(file)
    run = tmp_path / "run"
    _copy(saved, "good", run / "final")
    with pytest.raises(ConfigError, match=r"has no config.json; its subfolder\(s\) final hold one"):
        MTLLMModel.from_pretrained(run)
    assert MTLLMModel.from_pretrained(run / "final").projection is not None  # the intact copy loads


def test_source_loaders_check_local_paths_and_never_ask_the_hub(saved, tmp_path, no_hub):
    from mtllm.sources import load_encoder, load_llm, load_tokenizer

    file = tmp_path / "weights.bin"
    file.write_text("x")
    with pytest.raises(ConfigError, match="no such folder"):
        load_llm(tmp_path / "models" / "gemma")
    with pytest.raises(ConfigError, match="is a file"):
        load_encoder(str(file))
    with pytest.raises(ConfigError, match="no such folder"):
        load_tokenizer("./no/such/tokenizer")
    with pytest.raises(ConfigError, match="adapter to merge .* no adapter_config.json"):
        load_llm("tiny:gemma3", adapters_to_merge=[str(tmp_path)])
    broken = _copy(saved, "full", tmp_path / "full")
    _truncate(broken / "llm" / "model.safetensors")
    with pytest.raises(DataError, match="llm/model.safetensors is truncated"):
        MTLLMModel.from_encoder_and_llm("tiny:xlmr", str(broken / "llm"))
    with pytest.raises(ConfigError, match="no such folder"):
        MTLLMModel.from_encoder_and_llm(str(tmp_path / "enc"), "tiny:gemma3")


def test_a_model_folder_error_is_one_line_and_exit_2_in_the_cli(saved, tmp_path, capsys, no_hub):
    from mtllm.cli import main

    folder = _copy(saved, "good", tmp_path / "final")
    _truncate(folder / "model.safetensors")
    code = main(["evaluate", "--model", str(folder), "--data-dir", str(DATA), "--systems", "[mtllm]",
                 "--output-dir", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "model.safetensors is truncated" in err and "Traceback" not in err


def test_offline_a_hub_id_fails_fast_with_one_line(monkeypatch, tmp_path):
    from mtllm.sources import load_llm, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # nothing cached
    for load in (load_llm, load_tokenizer):
        t0 = time.perf_counter()
        with pytest.raises(ConfigError) as info:
            load("someone/not-cached-model")
        assert time.perf_counter() - t0 < 5
        message = str(info.value)
        assert "'someone/not-cached-model' was not found locally" in message and "hub is unreachable" in message
        assert "HF_HUB_OFFLINE" in message and "\n" not in message
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="MT-LLM 'someone/mtllm-model' was not found locally"):
        MTLLMModel.from_pretrained("someone/mtllm-model")
    assert time.perf_counter() - t0 < 5


def test_the_hub_probe_reports_no_connection_quickly(monkeypatch):
    import mtllm.sources as sources

    sources._probe_hub.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    t0 = time.perf_counter()
    reason = sources.hub_unreachable(timeout=2)
    assert reason is not None and reason.startswith("no connection to http://127.0.0.1:9")
    assert time.perf_counter() - t0 < 5
    sources._probe_hub.cache_clear()


def test_a_reachable_hub_without_the_repo_is_a_config_error(monkeypatch):
    import mtllm.sources as sources
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setattr(sources, "hub_unreachable", lambda timeout=5.0: None)

    def load(ref):
        try:
            raise RepositoryNotFoundError("404 Client Error", response=SimpleNamespace(headers={}, request=None))
        except RepositoryNotFoundError as err:
            raise OSError(f"{ref} is not a valid model identifier") from err  # what transformers does

    with pytest.raises(ConfigError, match="'owner/typo' is neither a local folder nor a model on the Hugging Face hub"):
        sources.from_hub("owner/typo", "LLM", load)
    with pytest.raises(RuntimeError, match="disk full"):  # any other failure keeps its own error
        sources.from_hub("owner/x", "LLM", lambda ref: (_ for _ in ()).throw(RuntimeError("disk full")))


# ------------------------------------------------------------------------------------------ item 6: evaluation sample
def _examples(labels, prefix="x"):
    return [Example(id=f"{prefix}{i}", texts=(f"text {i}",), label=lab) for i, lab in enumerate(labels)]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=1, max_size=7), n=st.integers(1, 60),
       seed=st.integers(0, 3), shuffle_seed=st.integers(0, 1000))
def test_sample_is_stratified_fixed_seed_and_independent_of_file_order(counts, n, seed, shuffle_seed):
    from mtllm.evaluation.evaluate import sample_examples

    labels = [lab for lab, c in enumerate(counts) for _ in range(c)]  # sorted by label, as files often are
    examples = _examples(labels)
    sample = sample_examples(examples, n, seed=seed)
    total = len(examples)
    assert len(sample) == min(n, total)
    assert [e.id for e in sample] == [e.id for e in examples if e in set(sample)]  # original order kept
    if n < total:
        got = Counter(e.label for e in sample)
        for lab, c in enumerate(counts):  # proportional: each class within one of its share
            assert abs(got[lab] - n * c / total) < 1
    shuffled = examples[:]
    random.Random(shuffle_seed).shuffle(shuffled)
    assert {e.id for e in sample_examples(shuffled, n, seed=seed)} == {e.id for e in sample}
    assert sample_examples(examples, n, seed=seed) == sample  # same seed, same sample


def test_sample_method_first_takes_the_first_rows():
    from mtllm.evaluation.evaluate import sample_examples

    examples = _examples([i % 3 for i in range(30)])
    assert sample_examples(examples, 7, method="first") == examples[:7]
    assert sample_examples(examples, 40, method="first") == examples
    with pytest.raises(ConfigError, match="sample_method must be 'stratified', 'first' or 'parallel'"):
        sample_examples(examples, 7, method="random")


def test_other_seeds_draw_other_samples_and_parallel_files_share_ids():
    from mtllm.evaluation.evaluate import sample_examples

    labels = [i % 4 for i in range(200)]
    eng, fra = _examples(labels), [Example(id=f"x{i}", texts=(f"texte {i}",), label=lab)
                                   for i, lab in enumerate(labels)]
    samples = {seed: {e.id for e in sample_examples(eng, 20, seed=seed)} for seed in range(5)}
    assert len({frozenset(s) for s in samples.values()}) == 5
    assert {e.id for e in sample_examples(fra[::-1], 20, seed=3)} == samples[3]
    with pytest.raises(ConfigError, match="max_examples must be a positive integer"):
        sample_examples(eng, 0)


def _sorted_data(tmp_path: Path, langs=("eng_Latn", "fra_Latn"), one_class: str | None = None) -> Path:
    """A SIB-200 data dir whose test files are sorted by label (8 rows per class)."""
    cats = ["science/technology", "travel", "politics", "sports"]
    root = tmp_path / "data"
    for lang in langs:
        d = root / "sib200" / lang
        d.mkdir(parents=True)
        shutil.copy(DATA / "sib200" / "eng_Latn" / "train.tsv", d / "train.tsv")
        with open(d / "test.tsv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(["index_id", "category", "text"])
            for k, cat in enumerate(cats):
                for j in range(8):
                    i = 8 * k + j
                    w.writerow([i, one_class if one_class and lang == langs[-1] else cat, f"sentence {i} about {cat}"])
    return root


@pytest.fixture(scope="module")
def eval_models():
    from mtllm.tasks import get_task

    torch.manual_seed(0)
    labels = get_task("sib200").label_names
    mtllm = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=32)
    mtllm.set_head("classification", labels)
    teacher = MTLLMModel.llm_only("tiny:gemma3", lora=None, max_seq_length=32)
    teacher.set_head("classification", labels)
    return {"mtllm": mtllm, "teacher": teacher}


def test_max_examples_on_a_label_sorted_file_is_a_stratified_sample_said_in_results(tmp_path, eval_models,
                                                                                   monkeypatch):
    import mtllm.modeling.predict
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate

    seen: dict[str, list] = {}
    real = mtllm.modeling.predict.predict

    def spy(model, examples, **kw):
        seen.setdefault(kw["route"], []).append([e.id for e in examples])
        return real(model, examples, **kw)

    monkeypatch.setattr("mtllm.modeling.predict.predict", spy)
    data = _sorted_data(tmp_path)
    out = tmp_path / "eval"
    results = run_evaluate(EvaluateSettings(task="sib200", data_dir=str(data), output_dir=str(out), batch_size=8,
                                            systems=["mtllm", "llm"], max_examples=8, sample_seed=1),
                           models=eval_models, progress=False)
    assert results.n_examples == {"eng_Latn": 8, "fra_Latn": 8}
    # two of each of the four classes (the first 8 rows would all be science/technology), the same ids for both
    # systems and both languages
    assert seen["encoder"] == seen["llm"] and seen["encoder"][0] == seen["encoder"][1]
    labels = [int(i) // 8 for i in seen["encoder"][0]]
    assert Counter(labels) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert results.meta["sample"] == {"max_examples": 8, "seed": 1, "method": "stratified by label"}
    assert results.meta["majority_baseline"] == 0.25
    assert "single_class" not in results.meta
    md = (out / "results.md").read_text()
    assert "max_examples 8: 2 of 2 languages have more examples; each of those is evaluated on a random sample of 8, " \
           "stratified by label (seed 1" in md
    again = run_evaluate(EvaluateSettings(task="sib200", data_dir=str(data), output_dir=str(tmp_path / "again"),
                                          batch_size=8, systems=["mtllm"], max_examples=8, sample_seed=1),
                         models=eval_models, progress=False)
    assert again.systems["mtllm"] == results.systems["mtllm"]  # same seed: same sample, same scores
    assert seen["encoder"][-1] == seen["encoder"][0]


def test_a_one_class_language_is_flagged_next_to_its_score(tmp_path, eval_models, caplog):
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate
    from mtllm.evaluation.report import SINGLE_CLASS_MARK

    data = _sorted_data(tmp_path, one_class="travel")
    out = tmp_path / "eval"
    caplog.set_level("INFO", logger="mtllm")  # the summary lines are logged (the CLI shows them)
    results = run_evaluate(EvaluateSettings(task="sib200", data_dir=str(data), output_dir=str(out), batch_size=16,
                                            systems=["mtllm", "llm"]), models=eval_models, progress=False)
    assert results.meta["single_class"] == {"fra_Latn": "travel"}
    assert json.loads((out / "results.json").read_text())["single_class"] == {"fra_Latn": "travel"}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")}
    assert all(cell.endswith(SINGLE_CLASS_MARK) and "**" not in cell for cell in rows["fra_Latn"][1:])
    assert not any(cell.endswith(SINGLE_CLASS_MARK) for cell in rows["eng_Latn"])
    md = (out / "results.md").read_text()
    assert f"{SINGLE_CLASS_MARK} every example of fra_Latn (travel) has the same class" in md
    assert f"{SINGLE_CLASS_MARK} one class only in the examples of fra_Latn" in caplog.text


# ------------------------------------------------------------------------------------------ item 7: no content token
# characters tokenizers drop or that carry nothing: zero-width, joiners, BOM, NUL and other C0/C1 controls,
# format characters, and whitespace
DROPPED = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9f",
           "\u00ad", "\u180e", "\u200e", "\u200f", "\u202a", "\u202e", "\u2061", "\u2063"]
BLANK = [" ", "\t", "\n", "\u00a0", "\u3000", "\u2028"]
contentless_text = st.lists(st.sampled_from(DROPPED + BLANK), min_size=1, max_size=12).map("".join)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=32)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=contentless_text, route=st.sampled_from(["encoder", "llm"]))
def test_text_of_dropped_characters_has_no_content_on_either_path(model, text, route):
    assert model.contentless([text, "ok " + text], route=route) == [0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=contentless_text, word=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=5),
       route=st.sampled_from(["encoder", "llm"]))
def test_a_letter_or_digit_among_them_is_content(model, noise, word, route):
    assert model.contentless([noise + word + noise], route=route) == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(contentless_text, min_size=1, max_size=4), route=st.sampled_from(["encoder", "llm"]))
def test_encode_refuses_them_before_any_work(model, texts, route):
    calls = []
    hook = model.llm.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"made only of characters the .* tokenizer drops") as info:
            model.encode(["fine", *texts], route=route)
    finally:
        hook.remove()
    assert f"indices {list(range(1, len(texts) + 1))[:10]}" in str(info.value)
    assert not calls


def test_punctuation_and_unknown_characters_are_content(model):
    # only blank pieces are dropped: '?!' tokenises to pieces, an unknown character to <unk> (something was there)
    for route in ("encoder", "llm"):
        assert model.contentless(["?!", "\U0001F600", "\u200b.\u200b"], route=route) == []


def test_collation_names_the_examples_and_fields(model):
    from mtllm.data.collate import collate_examples

    examples = [Example(id="r1", texts=("fine",), label=0), Example(id="r2", texts=("\u200b\u200d",), label=1),
                Example(id="r3", texts=("\ufeff",), label=1)]
    for route in ("encoder", "llm"):
        with pytest.raises(DataError, match=r"2 text\(s\) .* example ids: 'r2' \(texts\[0\]\), 'r3' \(texts\[0\]\)"):
            collate_examples(model, examples, route=route, lang="eng_Latn")
    pair = [Example(id="p1", texts=("a premise", "\x00"), label=0)]
    with pytest.raises(DataError, match=r"'p1' \(texts\[1\]\)"):
        collate_examples(model, pair, route="encoder", lang="eng_Latn")
    mc = [Example(id="q1", texts=("passage", "question?"), label=0, options=("yes", "\u2060", "no", "maybe"))]
    with pytest.raises(DataError, match=r"'q1' \(options\[1\]\)"):
        collate_examples(model, mc, route="llm")
    assert collate_examples(model, examples[:1], route="encoder", lang="eng_Latn")["input_ids"].shape[0] == 1


def test_evaluation_refuses_a_contentless_row_before_any_model_runs(tmp_path, eval_models):
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate

    data = _sorted_data(tmp_path)
    test = data / "sib200" / "fra_Latn" / "test.tsv"
    test.write_text(test.read_text(encoding="utf-8").replace("sentence 5 about science/technology", "\u200b\u200b"),
                    encoding="utf-8")
    calls = []
    hooks = [m.llm.register_forward_hook(lambda *a: calls.append(1)) for m in eval_models.values()]
    try:
        with pytest.raises(DataError, match=r"example ids: '5' \(texts\[0\]\)"):
            run_evaluate(EvaluateSettings(task="sib200", data_dir=str(data), output_dir=str(tmp_path / "o"),
                                          systems=["mtllm", "llm", "encoder"]), models=eval_models, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert not calls and not (tmp_path / "o").exists()


def test_stage1_skips_contentless_texts_as_it_skips_empty_ones(tmp_path, capsys):
    from safetensors.torch import load_file

    from mtllm.settings import ModelSettings
    from mtllm.training.loop import TrainingArgs
    from mtllm.training.stage1 import Stage1Settings, run_stage1

    lines = [line for line in (ROOT / "tests" / "fixtures" / "english.txt").read_text().splitlines()
             if line.strip()][:12]
    clean, dirty = tmp_path / "clean.txt", tmp_path / "dirty.txt"
    clean.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dirty.write_text("\n".join(lines[:5] + ["\u200b\u200b"] + lines[5:] + ["\x00\u2060"]) + "\n", encoding="utf-8")
    weights = {}
    for name, data in (("clean", clean), ("dirty", dirty)):
        out = tmp_path / name
        run_stage1(ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                 max_seq_length=32),
                   Stage1Settings(data=[str(data)]),
                   TrainingArgs(output_dir=str(out), batch_size=4, max_steps=3, save_steps=0, seed=0, progress=False,
                                report_to="none"))
        weights[name] = load_file(str(out / "final" / "model.safetensors"))
    assert "skipped 2 text chunk(s) with no content token" in capsys.readouterr().out
    assert weights["clean"].keys() == weights["dirty"].keys()
    assert all(torch.equal(weights["clean"][k], weights["dirty"][k]) for k in weights["clean"])
