"""The NLI benchmarks for real (issue 21), on tiny models and small files in the real formats: a run trained on an
English pair file (``train_file``) and evaluated on two built-in pair tasks (``eval_tasks``) writes both result
folders; the parallel, balanced evaluation sample (``sample_method: parallel``); the ``encoder-ft`` baseline
(learns a toy task, its numbers recomputed from its own predictions); the bad inputs, each one line before any
model loads, with nothing written."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from mtllm.cli import main
from mtllm.errors import ConfigError, DataError
from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate, sample_examples, sample_parallel
from mtllm.modeling.encoder_ft import EncoderFT
from mtllm.modeling.model import MTLLMModel
from mtllm.settings import ModelSettings
from mtllm.tasks import check_train_file, load_examples, load_train_file
from mtllm.training.encoder_ft import EncoderFTSettings, run_encoder_ft
from mtllm.training.finetune import TaskSettings
from mtllm.training.loop import TrainingArgs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
LABELS = ("entailment", "neutral", "contradiction")
PREMISES = ["The cat sleeps on the warm mat.", "A dog runs in the park every morning.",
            "The football team won the championship after a long season.",
            "Tourists visit the old city to see its famous temples."]
HYPOTHESES = {"entailment": "An animal sleeps.", "neutral": "The team played in the morning.",
              "contradiction": "Nobody visits the city."}
#: the same sentence "in" another language: a marker word of that language before it (tiny models need no more)
MARK = {"en": "", "fr": "Le chat ", "sw": "Paka ", "az": "O ", "kk": "Мен ", "ug": "Мән "}


def _pair(i: int, label: str, iso: str = "en") -> tuple[str, str]:
    return MARK[iso] + PREMISES[i % len(PREMISES)], MARK[iso] + HYPOTHESES[label]


def _tsv(path: Path, rows: list[tuple], header: str = "id\tpremise\thypothesis\tlabel") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _nli_data(root: Path) -> Path:
    """A data directory in the real layouts: ``xnli/<iso>/{dev,test}.tsv`` (en, fr, sw; the same id = translations),
    ``kardes-nlu/<language>/xnli.test.<iso>.csv`` (azeri, kazakh, uyghur) and ``english-nli/train.tsv`` (24 pairs,
    one with a blank hypothesis)."""
    for iso in ("en", "fr", "sw"):
        rows = []
        for i in range(12):  # ids 0..11: 4 of each label in every language
            premise, hypothesis = _pair(i, LABELS[i % 3], iso)
            rows.append((i, premise, "" if (iso, i) == ("en", 3) else hypothesis, LABELS[i % 3]))
        rows.append((13, *_pair(13, "neutral", iso), "neutral" if iso != "sw" else "contradiction"))  # labels differ
        if iso == "en":
            rows.append((12, *_pair(12, "entailment"), "entailment"))  # only in English
        _tsv(root / "xnli" / iso / "test.tsv", rows)
    _tsv(root / "xnli" / "en" / "dev.tsv", [(100 + i, *_pair(i, LABELS[i % 3]), LABELS[i % 3]) for i in range(9)])
    for folder, iso in (("azeri", "az"), ("kazakh", "kk"), ("uyghur", "ug")):
        lines = [",gold_label,sentence1,sentence2,s1_translation,s2_translation"]
        for i in range(9):
            label = LABELS[i % 3]
            (p_en, h_en), (p, h) = _pair(i, label), _pair(i, label, iso)
            lines.append(f'{200 + i},{label},"{p_en}","{h_en}","{p}","{h}"')
        path = root / "kardes-nlu" / folder / f"xnli.test.{iso}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    train = [(f"snli-{i}", *_pair(i, LABELS[i % 3]), LABELS[i % 3]) for i in range(24)]
    train[5] = (train[5][0], train[5][1], "", train[5][3])  # a blank hypothesis: kept, counted
    _tsv(root / "english-nli" / "train.tsv", train)
    return root


def _config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "nli.yaml"
    path.write_text(f"""base: {TINY}
data: [{ROOT / 'tests' / 'fixtures' / 'english.txt'}]
task: xnli
train_file: data:english-nli/train.tsv
eval_tasks: [xnli, kardes-nlu]
max_steps: 4
stages: [stage1, teacher, distill, eval]
finetune: {{learning_rate: 3.0e-3, num_epochs: 1, batch_size: 4, eval_batch_size: 8}}
distill: {{learning_rate: 3.0e-3, num_epochs: 1, batch_size: 4, train_projection: true, eval_batch_size: 8}}
encoder_ft: {{learning_rate: 1.0e-3, head_lr: 1.0e-2, num_epochs: 1, batch_size: 4, eval_batch_size: 8}}
evaluate: {{systems: [mtllm, llm, encoder, encoder-ft], langs: [all], batch_size: 8, dtype: float32,
           max_examples: 6, sample_method: parallel, sample_seed: 3}}
retrieval: null
{text}""", encoding="utf-8")
    return path


def _run(config: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["run", "--config", str(config), "--data-dir", str(data), "--output-dir", str(out), "--progress",
                 "false", "--report_to", "none", *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


# ----------------------------------------------------------------------------- the parallel, balanced sample
def _examples(lang_rows: dict[str, list[tuple[str, int]]]) -> dict[str, list[SimpleNamespace]]:
    return {lang: [SimpleNamespace(id=i, label=label, lang=lang) for i, label in rows] for lang, rows in
            lang_rows.items()}


def test_parallel_sample_has_the_same_ids_in_every_language_and_equal_label_counts():
    rng = random.Random(0)
    base = [(f"x{i}", rng.choice([0, 0, 0, 1, 1, 2])) for i in range(300)]  # unbalanced labels
    langs = {"eng_Latn": list(base), "fra_Latn": [r for r in base if r[0] != "x7"],  # x7: French lacks it
             "swh_Latn": [(i, (label + 1) % 3 if i == "x8" else label) for i, label in base]}  # x8: another label
    rng.shuffle(langs["swh_Latn"])  # another file order
    sampled, info = sample_parallel(_examples(langs), 60, seed=5)
    ids = {lang: [e.id for e in ex] for lang, ex in sampled.items()}
    assert set(ids["eng_Latn"]) == set(ids["fra_Latn"]) == set(ids["swh_Latn"]) == set(info["ids"])
    assert len(info["ids"]) == 60 and info["per_label"] == 20 and "x7" not in info["ids"] and "x8" not in info["ids"]
    for lang, ex in sampled.items():
        assert Counter(e.label for e in ex) == {0: 20, 1: 20, 2: 20}, lang
        assert [e.id for e in ex] == [i for i, _ in langs[lang] if i in set(info["ids"])]  # each file's own order
    assert info["candidates"] == 298 and info["left_out"] == 2
    # the same seed: the same ids, whatever the order of the files; another seed: other ids
    again, _ = sample_parallel(_examples({k: v[::-1] for k, v in langs.items()}), 60, seed=5)
    assert {e.id for e in again["eng_Latn"]} == set(info["ids"])
    assert {e.id for e in sample_parallel(_examples(langs), 60, seed=6)[0]["eng_Latn"]} != set(info["ids"])
    # no max_examples: the largest balanced sample (the rarest label's count, in every language)
    rarest = min(Counter(label for i, label in base if i not in ("x7", "x8")).values())
    whole, info = sample_parallel(_examples(langs), None, seed=5)
    assert info["per_label"] == rarest and all(len(ex) == 3 * rarest for ex in whole.values())
    # more than the rarest label has: equal counts still (fewer than asked)
    _, info = sample_parallel(_examples(langs), 3 * rarest + 30, seed=5)
    assert info["per_label"] == rarest and info["wanted_per_label"] == rarest + 10
    # one language: sample_examples(method="parallel") is the same balanced draw
    one = sample_examples(_examples({"eng_Latn": base})["eng_Latn"], 30, seed=5, method="parallel")
    assert Counter(e.label for e in one) == {0: 10, 1: 10, 2: 10}


def test_parallel_sample_refuses_what_it_cannot_draw():
    with pytest.raises(ConfigError, match="max_examples 2 is fewer than the 3 labels"):
        sample_parallel(_examples({"a": [("1", 0), ("2", 1), ("3", 2)]}), 2)
    with pytest.raises(ConfigError, match="share no id with the same label: it needs parallel data"):
        sample_parallel(_examples({"eng_Latn": [("1", 0)], "fra_Latn": [("2", 0)]}), 2)


# ------------------------------------------------------------------ train on a file, evaluate on two tasks
@pytest.mark.usefixtures("fp32_auto")
def test_a_run_trained_on_a_pair_file_evaluates_two_pair_tasks(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    data, out = _nli_data(tmp_path / "data"), tmp_path / "run"
    assert _run(_config(tmp_path), data, out) == 0
    printed = capsys.readouterr().out
    # the training file, not MultiNLI: its bad row (a blank hypothesis) is kept and counted, for every stage
    assert "[run] teacher: xnli eng_Latn train data: 1 row kept with a blank segment" in printed
    assert "[run] encoder-ft: xnli eng_Latn train data: 1 row kept with a blank segment" in printed
    assert json.loads((out / "teacher-xnli" / "finetune_summary.json").read_text())["n_train"] == 24
    # encoder-ft ran before the evaluations although `stages` does not list it: a system needs it
    assert printed.index("encoder-ft: fine-tune the encoder") < printed.index("eval: zero-shot xnli")
    distilled = MTLLMModel.from_pretrained(out / "distill-xnli" / "final")
    tuned = EncoderFT.load(out / "encoder-ft-xnli" / "best", distilled)
    for task, folder, langs in (("xnli", "eval-xnli", ("eng_Latn", "fra_Latn", "swh_Latn")),
                                ("kardes-nlu", "eval-kardes-nlu", ("azj_Latn", "kaz_Cyrl", "uig_Cyrl"))):
        results = json.loads((out / folder / "results.json").read_text())
        assert results["task"] == task and set(results["systems"]) == {"mtllm", "llm", "encoder", "encoder-ft"}
        assert set(results["systems"]["mtllm"]) == set(langs)
        sample = results["sample"]
        assert sample["method"] == "parallel, balanced by label" and sample["per_label"] == 2
        ids = sample["ids"]
        assert len(ids) == 6 and all(results["n_examples"][lang] == 6 for lang in langs)
        for lang in langs:
            examples = [e for e in load_examples(task, lang, "test", data) if e.id in set(ids)]
            assert sorted(e.id for e in examples) == sorted(ids)  # the same ids in every language
            assert Counter(e.label for e in examples) == {0: 2, 1: 2, 2: 2}  # equal counts per label
            labels = np.array([e.label for e in examples])
            ft_acc = float((tuned.predict(examples, lang=distilled.encoder_lang(lang)) == labels).mean())
            assert results["systems"]["encoder-ft"][lang] == pytest.approx(ft_acc), (task, lang)
        if task == "xnli":
            assert "12" not in ids and "13" not in ids  # not in every language / not the same label everywhere
            assert results["bad_rows"]["eng_Latn"]["blank_segment_kept"] == 1  # counted, never a crash
        assert any(n.startswith("sample_method parallel: every language is evaluated on the same 6 ids")
                   for n in results["notes"])
        assert any("encoder-ft: the encoder and a linear head" in n for n in results["notes"])
        assert any("24 eng_Latn training examples" in n and "english-nli/train.tsv" in n for n in results["notes"])
    assert (out / "eval-kardes-nlu" / "results.md").is_file() and (out / "eval-kardes-nlu" / "results.png").is_file()
    # a rerun skips every stage; the stage hashes cover the training file's bytes
    assert _run(_config(tmp_path), data, out) == 0
    assert capsys.readouterr().out.count("skipping") == 6
    train = data / "english-nli" / "train.tsv"
    train.write_text(train.read_text().replace("snli-0\t", "snli-00\t"), encoding="utf-8")
    assert _run(_config(tmp_path), data, out, "--stages", "[teacher]") == 0
    assert "[run] teacher: inputs changed since the last run; redoing it" in capsys.readouterr().out


def test_train_file_and_eval_tasks_enter_stage_hashes_only_when_set(tmp_path, monkeypatch):
    from mtllm.cli import command_values
    from mtllm.cli.pipeline import _hash, _stage_inputs, plan_run

    monkeypatch.chdir(ROOT)
    data = _nli_data(tmp_path / "data")

    def hashes(*argv: str) -> dict[str, str]:
        plan = plan_run(command_values("run", ["--config", str(TINY), "--task", "xnli", "--data_dir", str(data),
                                               "--output_dir", "/x", "--retrieval", "null", *argv]))
        out: dict[str, str] = {}
        for name in plan.stages:
            out[name] = _hash(_stage_inputs(plan, name, out))
        return out

    base = hashes()
    assert set(base) == {"stage1", "teacher", "distill", "eval"}
    with_file = hashes("--train_file", "data:english-nli/train.tsv")
    assert with_file["stage1"] == base["stage1"]
    assert all(with_file[k] != base[k] for k in ("teacher", "distill", "eval"))
    two = hashes("--eval_tasks", "[xnli, kardes-nlu]")
    assert {k: v for k, v in two.items() if k != "eval-kardes-nlu"} == base  # the training task's eval unchanged
    assert two["eval-kardes-nlu"] != base["eval"]
    assert hashes("--eval_tasks", "[xnli]") == base
    ft = hashes("--evaluate.systems", "[mtllm, encoder-ft]")
    assert list(ft) == ["stage1", "teacher", "distill", "encoder-ft", "eval"]  # inserted before the evaluation


@pytest.mark.usefixtures("task_registry")
def test_a_task_file_trains_and_builtin_tasks_evaluate(tmp_path, capsys, monkeypatch):
    """The task-file route: `task: my-nli.yaml` (English pairs in columns of the user's) evaluated on xnli and
    kardes-nlu; its labels must be theirs, in their order."""
    from mtllm.cli import command_values
    from mtllm.cli.pipeline import plan_run

    monkeypatch.chdir(ROOT)
    data = _nli_data(tmp_path / "data")
    rows = [(i, *_pair(i, LABELS[i % 3]), LABELS[i % 3]) for i in range(12)]
    _tsv(tmp_path / "nli" / "train.tsv", rows, header="pid\ts1\ts2\tgold")
    task = tmp_path / "nli" / "my-nli.yaml"
    keys = ("name: my-nli\nkind: pair\ntext_column: s1\npair_column: s2\nlabel_column: gold\nid_column: pid\n"
            "train: {eng_Latn: train.tsv}\nvalidation: {eng_Latn: train.tsv}\ntest: {eng_Latn: train.tsv}\n")
    task.write_text(keys, encoding="utf-8")  # labels from the data, sorted: another order than xnli's
    argv = ["--config", str(TINY), "--task", str(task), "--eval_tasks", "[xnli, kardes-nlu]", "--data_dir",
            str(data), "--output_dir", str(tmp_path / "run"), "--retrieval", "null"]
    with pytest.raises(ConfigError, match=r"eval_tasks: my-nli's labels \['contradiction', 'entailment', 'neutral'\] "
                                          r"are xnli's \['entailment', 'neutral', 'contradiction'\] in another order"
                                          r".*labels: \[entailment, neutral, contradiction\] in .*my-nli.yaml"):
        plan_run(command_values("run", argv))
    task.write_text(keys + "labels: [entailment, neutral, contradiction]\n", encoding="utf-8")
    plan = plan_run(command_values("run", argv))
    assert plan.stages == ("stage1", "teacher", "distill", "eval-xnli", "eval-kardes-nlu")
    assert plan.dirs["teacher"].name == "teacher-my-nli" and plan.dirs["eval-xnli"].name == "eval-xnli"
    assert {ev.task: ev.train_task for ev in plan.evals.values()} == {"xnli": str(task), "kardes-nlu": str(task)}


# ------------------------------------------------------------------------------------------------ encoder-ft
def _toy_task(root: Path) -> Path:
    """A task a tiny encoder can learn: the animal in the text ('cat' or 'dog') is the label."""
    rng = random.Random(0)
    words = "the park morning warm mat runs sleeps every in on a team city old".split()

    def rows(n: int) -> str:
        out = ["id,text,label"]
        for i in range(n):
            text = rng.sample(words, 4)
            text.insert(rng.randrange(5), ("cat", "dog")[i % 2])
            out.append(f"{i},{' '.join(text)},{('feline', 'canine')[i % 2]}")
        return "\n".join(out) + "\n"

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 64), ("valid", 16), ("test", 40)):
        (root / f"{name}.csv").write_text(rows(n), encoding="utf-8")
    (root / "toy.yaml").write_text("name: toy-animal\nkind: single\nid_column: id\nlabels: [feline, canine]\n"
                                   "train: {eng_Latn: train.csv}\nvalidation: {eng_Latn: valid.csv}\n"
                                   "test: {eng_Latn: test.csv, fra_Latn: test.csv}\n", encoding="utf-8")
    return root / "toy.yaml"


@pytest.mark.usefixtures("task_registry")
def test_encoder_ft_learns_a_toy_task_and_its_numbers_are_its_predictions(tmp_path):
    task = str(_toy_task(tmp_path / "toy"))
    models = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                           max_seq_length=64)
    summary = run_encoder_ft(models, TaskSettings(task=task), EncoderFTSettings(), TrainingArgs(
        output_dir=str(tmp_path / "ft"), learning_rate=1e-3, head_lr=1e-2, num_epochs=4, batch_size=8,
        warmup_ratio=0.0, progress=False, report_to="none"))
    assert summary["best"]["accuracy"] >= 0.8 and summary["n_train"] == 64  # (0.94 when written)
    host = tmp_path / "host"
    models.build().save_pretrained(host)  # any MT-LLM on the same encoder: the system reads text through it
    results = run_evaluate(EvaluateSettings(model=str(host), task=task, systems=["encoder-ft"], dtype="float32",
                                            encoder_ft=str(tmp_path / "ft" / "best"), batch_size=8,
                                            output_dir=str(tmp_path / "eval")), progress=False)
    tuned = EncoderFT.load(tmp_path / "ft" / "best", MTLLMModel.from_pretrained(host))
    for lang in ("eng_Latn", "fra_Latn"):
        examples = load_examples(task, lang, "test")
        labels = np.array([e.label for e in examples])
        acc = float((tuned.predict(examples, lang=lang) == labels).mean())
        assert results.systems["encoder-ft"][lang] == pytest.approx(acc)
        assert acc >= 0.8  # chance is 0.5 (20 of each class; 0.925 when written)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["systems"]["encoder-ft"] == results.systems["encoder-ft"]
    assert "encoder-ft" in (tmp_path / "eval" / "results.md").read_text()
    # only the trained tensors are saved: the token embeddings are the base encoder's
    meta = json.loads((tmp_path / "ft" / "best" / "encoder_ft.json").read_text())
    assert meta["frozen_tensors"] == ["embeddings.word_embeddings.weight"]
    assert meta["label_names"] == ["feline", "canine"]


def test_encoder_ft_refuses_another_encoder(tmp_path, tiny_model):
    tuned = EncoderFT.from_host(tiny_model, "classification", ["a", "b"])
    tuned.save(tmp_path / "ft")
    other = SimpleNamespace(encoder=tiny_model.encoder, config=SimpleNamespace(
        encoder_name_or_path="other/encoder", encoder_model_type="xlm-roberta",
        encoder_hidden_size=tiny_model.config.encoder_hidden_size, encoder_vocab_size=7))
    with pytest.raises(ConfigError, match=r"was trained on the encoder 'tiny:xlmr'.*give an MT-LLM built on the same "
                                          r"encoder"):
        EncoderFT.load(tmp_path / "ft", other)
    with pytest.raises(ConfigError, match="is not an encoder-ft folder"):
        EncoderFT.load(tmp_path, tiny_model)


# ------------------------------------------------------------------------------------------------ bad inputs
def _bad_run(tmp_path, capsys, monkeypatch, *extra: str, config_text: str = "") -> str:
    monkeypatch.chdir(ROOT)
    data, out = _nli_data(tmp_path / "data"), tmp_path / "run"
    assert _run(_config(tmp_path, config_text), data, out, *extra) == 2
    assert not out.exists()  # nothing written: no stage folder, no run_config.json
    return _error_line(capsys)


def test_a_training_file_with_other_labels_names_both_sets(tmp_path, capsys, monkeypatch):
    bad = _tsv(tmp_path / "yes-no.tsv", [(i, *_pair(i, LABELS[i % 3]), ("yes", "no", "maybe")[i % 3])
                                         for i in range(6)])
    line = _bad_run(tmp_path, capsys, monkeypatch, "--train_file", str(bad))
    assert ("its labels ['maybe', 'no', 'yes'] are not xnli's label names ['entailment', 'neutral', "
            "'contradiction']") in line
    missing = _tsv(tmp_path / "two.tsv", [(i, *_pair(i, LABELS[i % 2]), LABELS[i % 2]) for i in range(6)])
    line = _bad_run(tmp_path, capsys, monkeypatch, "--train_file", str(missing))
    assert "it has no rows labelled ['contradiction'], so the head would never learn it" in line


def test_a_training_file_of_single_texts_for_a_pair_task(tmp_path, capsys, monkeypatch):
    single = _tsv(tmp_path / "single.tsv", [(i, PREMISES[i % 4], LABELS[i % 3]) for i in range(6)],
                  header="id\ttext\tlabel")
    line = _bad_run(tmp_path, capsys, monkeypatch, "--train_file", str(single))
    assert (f"train_file {single}: it holds single texts (columns ['id', 'text', 'label']), but xnli is a task of "
            f"text pairs; training data for xnli needs the columns ['premise', 'hypothesis', 'label']") in line
    line = _bad_run(tmp_path, capsys, monkeypatch, "--train_file", str(tmp_path / "nowhere.tsv"))
    assert "nowhere.tsv not found" in line


def test_a_data_training_file_without_a_data_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    out = tmp_path / "run"
    assert main(["run", "--config", str(_config(tmp_path)), "--output-dir", str(out)]) == 2
    assert ("train_file data:english-nli/train.tsv: a data: reference is a path inside the data directory; pass "
            "--data-dir DIR") in _error_line(capsys)
    assert not out.exists()


def test_an_evaluation_language_the_task_does_not_have_suggests_the_closest(tmp_path, capsys, monkeypatch):
    line = _bad_run(tmp_path, capsys, monkeypatch, "--eval_tasks", "[kardes-nlu]", "--evaluate.langs", "[uig_Arab]")
    assert ("kardes-nlu has no 'uig_Arab' data here; available: azj_Latn, kaz_Cyrl, uig_Cyrl; closest: uig_Cyrl"
            in line)
    line = _bad_run(tmp_path, capsys, monkeypatch, "--evaluate.langs", "[uig_Arab]")  # xnli and kardes-nlu
    assert "none of the evaluation tasks (xnli, kardes-nlu) has 'uig_Arab' data here; closest: uig_Cyrl" in line
    line = _bad_run(tmp_path, capsys, monkeypatch, "--evaluate.langs", "[kaz_Latn]")  # no such FLORES-200 code
    assert "unknown language code 'kaz_Latn'. Did you mean 'kaz_Cyrl'?" in line


def test_an_evaluation_task_with_other_labels_or_kind(tmp_path, capsys, monkeypatch):
    line = _bad_run(tmp_path, capsys, monkeypatch, "--eval_tasks", "[xnli, sib200]")
    assert "eval_tasks: sib200 is a classification task but the model is trained on xnli" in line
    line = _bad_run(tmp_path, capsys, monkeypatch, "--eval_tasks", "[xnli, kardes]", "--stages",
                    "[stage1, eval, encoder-ft]")
    assert "encoder-ft must come before eval" in line


def test_a_blank_hypothesis_in_a_training_file_is_a_counted_bad_row(tmp_path, monkeypatch):
    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    data = _nli_data(tmp_path / "data")
    examples = load_train_file("xnli", "data:english-nli/train.tsv", data)
    assert len(examples) == 24 and examples[5].texts[1] == "" and examples[5].label == 2
    assert examples.report.counts() == {"blank_segment_kept": 1, "no_text_dropped": 0}
    assert check_train_file("xnli", "data:english-nli/train.tsv", data) == data / "english-nli" / "train.tsv"
    with pytest.raises(ConfigError, match="pass --data-dir DIR"):
        check_train_file("xnli", "data:english-nli/train.tsv", None)
    with pytest.raises(DataError, match="needs the columns"):
        check_train_file("sib200", "data:english-nli/train.tsv", data)


# ------------------------------------------------- max_train_examples and max_eval_examples: stratified samples
def _sorted_train_file(root: Path) -> Path:
    """An English pair file sorted by label (8 entailment, then 8 neutral, then 8 contradiction): its first rows hold
    one class."""
    rows = [(f"s-{label}-{i}", *_pair(i, label), label) for label in LABELS for i in range(8)]
    return _tsv(root / "sorted" / "train.tsv", rows)


def test_max_train_examples_is_a_stratified_sample_not_the_first_rows(tmp_path):
    from mtllm.tasks import load_training_data

    path = _sorted_train_file(tmp_path)
    taken = load_training_data("xnli", train_file=str(path), limit=6)
    assert Counter(e.label for e in taken) == {0: 2, 1: 2, 2: 2}  # the first 6 rows are all entailment
    assert [e.id for e in taken] == [e.id for e in sample_examples(load_train_file("xnli", path), 6, seed=0)]
    ids = [e.id for e in taken]
    assert ids == sorted(ids, key=[e.id for e in load_train_file("xnli", path)].index)  # in file order
    assert [e.id for e in load_training_data("xnli", train_file=str(path), limit=6)] == ids  # fixed seed
    assert len(load_training_data("xnli", train_file=str(path), limit=100)) == 24  # more than there are: all
    assert taken.report.counts() == {"blank_segment_kept": 0, "no_text_dropped": 0}  # still an Examples


def test_every_training_stage_selects_on_a_capped_label_balanced_sample(tmp_path, monkeypatch):
    """max_eval_examples: the teacher, the distillation and encoder-ft each validate every epoch on the same fixed-seed
    sample of English validation, stratified by label, and say so in their summaries; max_train_examples trains on a
    stratified sample of the training file."""
    import mtllm.training.distill as distill_module
    import mtllm.training.finetune as finetune_module
    from mtllm.training.distill import DistillSettings, run_distill
    from mtllm.training.finetune import run_finetune

    monkeypatch.delenv("MTLLM_DATA_DIR", raising=False)
    data = _nli_data(tmp_path / "data")
    train = _sorted_train_file(tmp_path)
    validated: dict[str, list[list[str]]] = {"finetune": [], "distill": [], "encoder-ft": []}

    def spy(stage, real):
        def wrapped(model, examples, *args, **kwargs):
            validated[stage].append([e.id for e in examples])
            return real(model, examples, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(finetune_module, "accuracy", spy("finetune", finetune_module.accuracy))
    monkeypatch.setattr(distill_module, "accuracy", spy("distill", distill_module.accuracy))
    monkeypatch.setattr(EncoderFT, "predict", spy("encoder-ft", EncoderFT.predict))
    models = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                           max_seq_length=64)
    task = TaskSettings(task="xnli", data_dir=str(data), train_file=str(train), max_train_examples=12,
                        max_eval_examples=6, eval_batch_size=8)

    def args(name: str) -> TrainingArgs:
        return TrainingArgs(output_dir=str(tmp_path / name), learning_rate=3e-3, num_epochs=2, batch_size=4,
                            warmup_ratio=0.0, progress=False, report_to="none")

    summaries = {"finetune": run_finetune(models, task, args("teacher"))}
    summaries["distill"] = run_distill(models, task, DistillSettings(teacher_model=str(tmp_path / "teacher" / "best"),
                                                                     train_projection=True), args("distill"))
    summaries["encoder-ft"] = run_encoder_ft(models, task, EncoderFTSettings(), args("encoder-ft"))
    validation = load_examples("xnli", "eng_Latn", "validation", data)  # 9 pairs, 3 of each label
    expected = [e.id for e in sample_examples(validation, 6, seed=0)]
    assert Counter(e.label for e in validation if e.id in expected) == {0: 2, 1: 2, 2: 2}
    for stage, summary in summaries.items():
        assert validated[stage] == [expected, expected], stage  # two epochs, the same 6 pairs each time
        assert {k: summary[k] for k in ("n_val", "n_val_available", "max_eval_examples", "val_labels")} == {
            "n_val": 6, "n_val_available": 9, "max_eval_examples": 6, "val_labels": {"0": 2, "1": 2, "2": 2}}, stage
        assert summary["n_train"] == 12, stage
    saved = json.loads((tmp_path / "teacher" / "finetune_summary.json").read_text())
    assert saved["n_val"] == 6 and saved["val_sample"] == "stratified by label, seed 0"
    assert json.loads((tmp_path / "distill" / "distill_summary.json").read_text())["n_val"] == 6
    assert json.loads((tmp_path / "encoder-ft" / "encoder_ft_summary.json").read_text())["n_val"] == 6
    # default: the whole split, and the summary says so
    full = run_finetune(models, TaskSettings(task="xnli", data_dir=str(data), train_file=str(train),
                                             max_train_examples=6, eval_batch_size=8),
                        replace(args("teacher-all"), num_epochs=1))
    assert {k: full[k] for k in ("n_val", "n_val_available", "max_eval_examples")} == {
        "n_val": 9, "n_val_available": 9, "max_eval_examples": None} and "val_labels" not in full
    assert validated["finetune"][-1] == [e.id for e in validation]
