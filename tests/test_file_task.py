"""A task defined by files (mtllm.tasks.files): a YAML or a dict naming one file per split and language,
loaded like a built-in task by every loader and command; its mistakes fail in one line before any model
loads; on the real NusaX files it gives exactly the built-in nusax task's examples, and `mtllm run` with it
the same accuracies as with `task: nusax`."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

import mtllm.tasks as T
from mtllm.cli import main
from mtllm.errors import ConfigError, DataError, UnknownLanguageError
from mtllm.tasks import (DataNotFoundError, Example, FileTask, TaskDataError, available_languages, get_task,
                         list_tasks, load_examples, load_task_file, load_train_examples, task_from_dict)

ROOT = Path(__file__).resolve().parents[1]
SHARED_NUSAX = ROOT.parent / "shared" / "data" / "nusax-senti"
TINY = str(ROOT / "configs" / "tiny.yaml")
ENGLISH_TXT = str(ROOT / "tests" / "fixtures" / "english.txt")
needs_nusax = pytest.mark.skipif(not SHARED_NUSAX.is_dir(), reason="../shared/data/nusax-senti is not here")


@pytest.fixture(autouse=True)
def registry(monkeypatch, task_registry):
    """Each test starts from the built-in tasks and leaves them so (get_task(path) registers file tasks)."""
    monkeypatch.delenv(T.DATA_DIR_ENV, raising=False)


def _yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _nli_files(root: Path) -> Path:
    """A small NLI task in four formats (csv, tsv, jsonl, parquet); returns its YAML."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "en").mkdir(parents=True)
    (root / "en" / "train.csv").write_text(
        "pid,premise,hypothesis,gold\n"
        "t1,A man sleeps.,A person rests.,entailment\n"
        "t2,A man sleeps.,A man runs.,contradiction\n"
        "t3,A man sleeps.,A man dreams.,neutral\n"
        "t4,Kids play.,Children play.,entailment\n", encoding="utf-8")
    (root / "en" / "dev.tsv").write_text("pid\tpremise\thypothesis\tgold\nv1\tIt rains.\tIt is wet.\tentailment\n"
                                         "v2\tIt rains.\tIt is dry.\tcontradiction\n", encoding="utf-8")
    (root / "de").mkdir()
    rows = [{"pid": "x1", "premise": "Es regnet.", "hypothesis": "Es ist nass.", "gold": "entailment"},
            {"pid": "x2", "premise": "Es regnet.", "hypothesis": "Es ist trocken.", "gold": "contradiction"}]
    (root / "de" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"pid": "y1", "premise": "Il pleut.", "hypothesis": "Il fait beau.",
                                          "gold": "neutral"}]), root / "fr.parquet")
    return _yaml(root / "toy-nli.yaml", """\
name: toy-nli
kind: pair
text_column: premise
pair_column: hypothesis
label_column: gold
id_column: pid
train: {eng_Latn: en/train.csv}
validation: {eng_Latn: en/dev.tsv}
test: {deu_Latn: de/test.jsonl, fra_Latn: fr.parquet, eng_Latn: en/dev.tsv}
""")


# ------------------------------------------------------------------------------------------ the task
def test_yaml_task_reads_its_files_in_every_format(tmp_path):
    path = _nli_files(tmp_path / "task")
    spec = load_task_file(path)
    assert isinstance(spec, FileTask) and isinstance(spec, T.TaskSpec)
    assert (spec.name, spec.kind, spec.train_lang, spec.hub_id) == ("toy-nli", "pair_classification", "eng_Latn", None)
    assert spec.label_names == ("contradiction", "entailment", "neutral")  # from the English train data, sorted
    assert spec.languages == ("eng_Latn", "deu_Latn", "fra_Latn")
    assert "toy-nli" not in list_tasks()  # load_task_file does not register
    assert load_train_examples(spec) == [
        Example("t1", ("A man sleeps.", "A person rests."), 1), Example("t2", ("A man sleeps.", "A man runs."), 0),
        Example("t3", ("A man sleeps.", "A man dreams."), 2), Example("t4", ("Kids play.", "Children play."), 1)]
    assert load_examples(spec, "eng_Latn", "dev") == [Example("v1", ("It rains.", "It is wet."), 1),
                                                     Example("v2", ("It rains.", "It is dry."), 0)]
    assert load_examples(spec, "deu_Latn", "test") == [Example("x1", ("Es regnet.", "Es ist nass."), 1),
                                                      Example("x2", ("Es regnet.", "Es ist trocken."), 0)]
    assert load_examples(spec, "fra_Latn", "test") == [Example("y1", ("Il pleut.", "Il fait beau."), 2)]
    # "all" = the test languages; a data directory is not used
    assert available_languages(spec) == available_languages(spec, tmp_path / "elsewhere") == \
        ["deu_Latn", "eng_Latn", "fra_Latn"]
    with pytest.raises(DataNotFoundError, match=r"has no validation file for 'deu_Latn' \(its validation languages: "
                                                r"eng_Latn\); add deu_Latn: path/to/file under validation:"):
        load_examples(spec, "deu_Latn", "validation")
    with pytest.raises(UnknownLanguageError, match="task 'toy-nli' has no language 'swh_Latn'"):
        load_examples(spec, "swh_Latn", "test")
    # the path works wherever a name does, and registers the task under its name
    assert get_task(str(path)) == spec and get_task("toy-nli") is get_task(path)
    assert load_examples(str(path), "fra_Latn", "test") == load_examples("toy-nli", "fra_Latn", "test")


def test_the_same_task_from_a_dict(tmp_path):
    path = _nli_files(tmp_path / "task")
    import yaml

    config = yaml.safe_load(path.read_text())
    from_dict = task_from_dict(config, base_dir=path.parent)
    assert from_dict == load_task_file(path) and from_dict.source == "task dict"
    T.register_task(from_dict)
    assert load_examples("toy-nli", "deu_Latn", "test") == load_examples(load_task_file(path), "deu_Latn", "test")
    # absolute paths need no base_dir
    absolute = {**config, "train": {"eng_Latn": str(path.parent / "en" / "train.csv")}}
    assert task_from_dict(absolute, base_dir=path.parent).files["train"] == from_dict.files["train"]
    with pytest.raises(ConfigError, match="must be a mapping of key: value"):
        task_from_dict(["name"])


def test_given_labels_fix_the_order_and_take_integer_indices(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": 2}\n{"text": "bad", "label": "negative"}\n'
                                          '{"text": "meh", "label": 1}\n', encoding="utf-8")
    (tmp_path / "test.csv").write_text("text,label\nfine,positive\n", encoding="utf-8")
    spec = task_from_dict({"name": "senti", "kind": "single", "labels": ["negative", "neutral", "positive"],
                           "train": {"eng_Latn": "train.jsonl"}, "test": {"ind_Latn": "test.csv"}}, base_dir=tmp_path)
    assert spec.label_names == ("negative", "neutral", "positive")
    assert load_examples(spec, "eng_Latn", "train") == [Example("0", ("good",), 2), Example("1", ("bad",), 0),
                                                       Example("2", ("meh",), 1)]  # no id_column: the row number
    assert load_examples(spec, "ind_Latn", "test") == [Example("0", ("fine",), 2)]


def test_multiple_choice_task(tmp_path):
    (tmp_path / "mc.csv").write_text("passage,q,a1,a2,a3,ans\nThe sky is blue.,Colour of the sky?,red,blue,green,2\n"
                                     "Cats purr.,What purrs?,cats,fish,rocks,1\n", encoding="utf-8")
    spec = task_from_dict({"name": "toy-mc", "kind": "multiple_choice", "text_column": "passage", "pair_column": "q",
                           "option_columns": ["a1", "a2", "a3"], "label_column": "ans",
                           "train": {"eng_Latn": "mc.csv"}, "test": {"eng_Latn": "mc.csv"}}, base_dir=tmp_path)
    assert spec.label_names == ("1", "2", "3") and spec.kind == "multiple_choice"
    assert load_examples(spec, "eng_Latn", "test") == [
        Example("0", ("The sky is blue.", "Colour of the sky?"), 1, ("red", "blue", "green")),
        Example("1", ("Cats purr.", "What purrs?"), 0, ("cats", "fish", "rocks"))]
    (tmp_path / "mc.csv").write_text("passage,q,a1,a2,a3,ans\nP,Q,a,b,c,4\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"answer\(s\) \['4'\] in column 'ans' .* are not option numbers 1\.\.3"):
        task_from_dict({"name": "toy-mc", "kind": "multiple_choice", "text_column": "passage", "pair_column": "q",
                        "option_columns": ["a1", "a2", "a3"], "label_column": "ans",
                        "train": {"eng_Latn": "mc.csv"}, "test": {"eng_Latn": "mc.csv"}}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------------ mistakes
GOOD = """\
name: my-sentiment
kind: single
text_column: text
label_column: label
id_column: id
train: {eng_Latn: en/train.csv}
validation: {eng_Latn: en/valid.csv}
test: {eng_Latn: en/test.csv, swh_Latn: sw/test.csv}
"""


def _sentiment(root: Path, yaml_text: str = GOOD, sw_test: str = "id,text,label\n1,nzuri,positive\n") -> Path:
    for rel, body in {"en/train.csv": "id,text,label\n1,good,positive\n2,bad,negative\n3,ok,neutral\n",
                      "en/valid.csv": "id,text,label\n1,great,positive\n2,awful,negative\n",
                      "en/test.csv": "id,text,label\n1,fine,positive\n", "sw/test.csv": sw_test}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body, encoding="utf-8")
    return _yaml(root / "my-task.yaml", yaml_text)


BAD_FILES = [  # (change to GOOD, error type, the exact message after "<yaml>: ")
    (("kind: single\n", ""), ConfigError, "missing key(s) kind. Task file keys: name, kind (single | pair | "
                                          "multiple_choice), train, test; optional: validation, text_column, "
                                          "pair_column, option_columns, label_column, id_column, labels, description."),
    (("id_column: id\n", "id_colum: id\n"), ConfigError, "unknown key(s) 'id_colum' (did you mean id_column?). Task "
                                                         "file keys: name, kind (single | pair | multiple_choice), "
                                                         "train, test; optional: validation, text_column, pair_column, "
                                                         "option_columns, label_column, id_column, labels, "
                                                         "description."),
    (("validation:", "dev:"), ConfigError, "unknown key(s) 'dev' (did you mean validation?). Task file keys: name, "
                                          "kind (single | pair | multiple_choice), train, test; optional: validation, "
                                          "text_column, pair_column, option_columns, label_column, id_column, labels, "
                                          "description."),
    (("kind: single", "kind: regression"), ConfigError, "kind must be single, pair or multiple_choice, not "
                                                       "'regression'."),
    (("kind: single", "kind: pair"), ConfigError, "kind pair needs pair_column: the column of the second text of "
                                                 "each pair."),
    (("name: my-sentiment", "name: My_Sentiment"), ConfigError, "name must be lower case with '-' (e.g. "
                                                               "'my-sentiment'), not 'My_Sentiment'."),
    (("swh_Latn", "swh_Ltn"), ConfigError, "test: unknown language code 'swh_Ltn'. Did you mean 'swh_Latn'? Codes are "
                                          "FLORES-200 style, ISO 639-3 + script (e.g. 'eng_Latn', 'ell_Grek'); the "
                                          "full list is mtllm.data.languages.FLORES200."),
    (("sw/test.csv", "sw/tset.csv"), DataNotFoundError, "test: swh_Latn: file {root}/sw/tset.csv not found (paths are "
                                                       "relative to {root}); fix the path or add the file."),
    (("sw/test.csv", "sw/test.xlsx"), ConfigError, "test: swh_Latn: {root}/sw/test.xlsx is not a .csv, .tsv, .jsonl, "
                                                  ".parquet file; convert it, or name the right file."),
    (("text_column: text", "text_column: sentence"), TaskDataError, None),
]


@pytest.mark.parametrize("change, error, message", BAD_FILES,
                         ids=[c[0][1].strip() or c[0][0].strip() for c in BAD_FILES])
def test_bad_task_file_is_one_line_naming_the_key_and_fix(tmp_path, change, error, message):
    root = tmp_path / "t"
    path = _sentiment(root, GOOD.replace(*change))
    with pytest.raises(error) as info:
        load_task_file(path)
    text = str(info.value)
    assert "\n" not in text
    if message is None:  # a column the files lack: each file named, with what it has
        assert text == (f"{root / 'en' / 'train.csv'}: missing column(s) ['sentence']; found ['id', 'text', 'label'], "
                        f"expected ['sentence', 'label', 'id']. Name the file's columns in {path} (text_column, "
                        f"pair_column, option_columns, label_column, id_column).")
    else:
        assert text == f"{path}: " + message.format(root=root.resolve())


def test_unseen_label_names_both_sets_and_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    root = tmp_path / "t"
    path = _sentiment(root, sw_test="id,text,label\n1,nzuri,positive\n2,hmm,mixed\n3,eh,unsure\n4,x,mixed\n")
    with pytest.raises(DataError) as info:
        load_task_file(path)
    assert str(info.value) == (
        f"{(root / 'sw' / 'test.csv').resolve()}: label(s) ['mixed', 'unsure'] in column 'label' (first at "
        f"{(root / 'sw' / 'test.csv').resolve()}:3) are not among my-sentiment's training labels ['negative', "
        f"'neutral', 'positive'] (from the eng_Latn training file {(root / 'en' / 'train.csv').resolve()}); fix "
        f"those rows, or list every label under labels: in {path}.")
    # the same through `mtllm run`: exit 2, one line, before any model is built or folder written
    from mtllm.modeling.model import MTLLMModel

    def no_models(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(MTLLMModel, "from_encoder_and_llm", no_models)
    monkeypatch.setattr(MTLLMModel, "llm_only", no_models)
    out = tmp_path / "run"
    assert main(["run", "--config", TINY, "--task", str(path), "--output-dir", str(out), "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtllm run: error: task must be a task name, not ") and "\n" not in err
    assert "label(s) ['mixed', 'unsure']" in err and "['negative', 'neutral', 'positive']" in err
    assert not out.exists()


def test_name_of_another_task_is_refused(tmp_path):
    path = _sentiment(tmp_path / "t", GOOD.replace("name: my-sentiment", "name: nusax-senti"))
    with pytest.raises(ConfigError, match=r"name: 'nusax-senti' is already a built-in or registered task \('nusax'\); "
                                          r"choose another name\."):
        get_task(str(path))
    assert load_task_file(path).name == "nusax-senti"  # fine unregistered


def test_pipeline_plan_names_folders_checks_splits_and_hashes_file_bytes(tmp_path):
    from mtllm.cli.pipeline import _hash, _stage_inputs, plan_run
    from mtllm.settings import load_yaml

    path = _sentiment(tmp_path / "t")
    values = {**load_yaml(TINY), "task": str(path), "output_dir": str(tmp_path / "run")}

    def hashes() -> dict[str, str]:
        plan = plan_run(values)
        out: dict[str, str] = {}
        for name in ("stage1", "teacher", "distill", "eval"):
            out[name] = _hash(_stage_inputs(plan, name, out))
        return out

    plan = plan_run(values)
    assert plan.task_name == "my-sentiment" and plan.dirs["eval"] == tmp_path / "run" / "eval-my-sentiment"
    assert plan.evaluate.task == str(path)
    first = hashes()
    test_file = tmp_path / "t" / "sw" / "test.csv"
    test_file.write_bytes(test_file.read_bytes())  # rewritten, same bytes: same hashes
    assert hashes() == first
    test_file.write_text("id,text,label\n1,nzuri sana,positive\n", encoding="utf-8")  # new contents
    second = hashes()
    assert second["stage1"] == first["stage1"] and all(second[k] != first[k] for k in ("teacher", "distill", "eval"))
    # a split the stages use but the file lacks, and a language it does not have: refused in the plan
    _yaml(path, GOOD.replace("validation: {eng_Latn: en/valid.csv}\n", ""))
    with pytest.raises(ConfigError, match=r"task 'my-sentiment' \(.*my-task\.yaml\) has no 'validation' split: add "
                                          r"validation: \{eng_Latn: path/to/validation\.csv\} to it"):
        plan_run(values)
    _yaml(path, GOOD)
    with pytest.raises(ConfigError, match=r"my-sentiment has no 'deu_Latn' data here; available: eng_Latn, swh_Latn"):
        plan_run({**values, "evaluate": {"langs": ["deu_Latn"]}})


# ------------------------------------------------------------------------------------------ real NusaX
LANGS = {"english": "eng_Latn", "javanese": "jav_Latn", "sundanese": "sun_Latn"}


def _nusax_yaml(where: Path, data: Path, name: str = "nusax-files") -> Path:
    """A task file for ``data``'s NusaX layout (english + javanese + sundanese), paths relative to the YAML."""
    def rel(folder: str, split: str) -> str:
        return os.path.relpath(data / folder / f"{split}.csv", where)

    tests = ", ".join(f"{code}: {rel(folder, 'test')}" for folder, code in LANGS.items())
    return _yaml(where / f"{name}.yaml", f"""\
name: {name}
kind: single
text_column: text
label_column: label
id_column: id
train: {{eng_Latn: {rel('english', 'train')}}}
validation: {{eng_Latn: {rel('english', 'valid')}}}
test: {{{tests}}}
""")


@needs_nusax
def test_file_task_on_the_real_nusax_files_equals_the_built_in_task(tmp_path):
    spec = load_task_file(_nusax_yaml(tmp_path / "task", SHARED_NUSAX))
    built_in = get_task("nusax")
    assert spec.label_names == built_in.label_names == ("negative", "neutral", "positive")
    data = SHARED_NUSAX.parent
    for code in LANGS.values():
        mine, theirs = load_examples(spec, code, "test"), load_examples("nusax", code, "test", data)
        assert len(mine) == 400 and mine == theirs  # ids, texts and labels, in order
        assert mine.report.counts() == theirs.report.counts()
    for split, n in (("train", 500), ("validation", 100)):
        mine, theirs = load_examples(spec, "eng_Latn", split), load_examples("nusax", "eng_Latn", split, data)
        assert len(mine) == n and mine == theirs


def _tiny_nusax(data: Path, n: dict[str, int]) -> None:
    """The first rows of the real NusaX files of LANGS, in the same layout (csv read and written with csv)."""
    for folder in LANGS:
        (data / "nusax-senti" / folder).mkdir(parents=True)
        for split, count in n.items():
            with open(SHARED_NUSAX / folder / f"{split}.csv", encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            with open(data / "nusax-senti" / folder / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:
                csv.writer(fh).writerows(rows[:count + 1])


@needs_nusax
def test_run_with_the_file_task_gives_the_accuracies_of_task_nusax(tmp_path, capsys):
    data = tmp_path / "data"
    _tiny_nusax(data, {"train": 12, "valid": 6, "test": 10})
    path = _nusax_yaml(tmp_path / "task", data / "nusax-senti", name="my-nusax")
    out = tmp_path / "run"  # one folder: stage 1 is done once and reused by the second run

    def run(task: str) -> int:
        return main(["run", "--config", TINY, "--task", task, "--data-dir", str(data), "--output-dir", str(out),
                     "--data", f"[{ENGLISH_TXT}]", "--max_steps", "2", "--retrieval", "null", "--progress", "false",
                     "--report_to", "none",
                     "--finetune", "{learning_rate: 3.0e-3, num_epochs: 1, batch_size: 4, eval_batch_size: 8}",
                     "--distill", "{learning_rate: 3.0e-3, num_epochs: 1, batch_size: 4, eval_batch_size: 8}",
                     "--evaluate", "{systems: [mtllm, llm, encoder], langs: [all], batch_size: 8}"])

    assert run("nusax") == 0
    assert run(str(path)) == 0
    assert "[run] stage1: already done with the same inputs" in capsys.readouterr().out
    builtin = json.loads((out / "eval-nusax" / "results.json").read_text())
    mine = json.loads((out / "eval-my-nusax" / "results.json").read_text())
    assert (builtin["task"], mine["task"]) == ("nusax", "my-nusax")
    assert mine["n_examples"] == builtin["n_examples"] == {code: 10 for code in LANGS.values()}
    assert mine["systems"] == builtin["systems"]  # every system, every language: the same accuracies
    assert set(mine["systems"]["mtllm"]) == {"eng_Latn", "jav_Latn", "sun_Latn"}  # langs: [all] = its test languages
    assert mine["bad_rows"] == {code: {"blank_segment_kept": 0, "no_text_dropped": 0} for code in LANGS.values()}


def test_a_task_file_with_yaml_aliases_is_refused_in_one_line(tmp_path):
    """Task files are read with the rules of every YAML mtllm reads (mtllm._yaml): no aliases, bounded nesting."""
    from mtllm.errors import ConfigError
    from mtllm.tasks.files import load_task_file

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nname: bomb\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml uses the YAML alias \*a \(line 2\)") as info:
        load_task_file(bomb)
    assert "\n" not in str(info.value)
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests deeper than 20 levels"):
        load_task_file(deep)
