"""Rows with blank fields, as official releases have them (a blank XNLI/AmericasNLI premise), for every task
loader: a row with one blank segment of a pair is kept (that segment "") and counted, a row with no text is
dropped and counted, a blank label stays an error; the counts travel with the examples into results.json,
results.md and the pipeline's output; the models take an empty segment and never see an all-blank example."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mtllm.tasks as T
from mtllm.data.collate import check_content, collate_examples
from mtllm.errors import DataError
from mtllm.tasks import Example, TaskDataError, get_task, load_examples, load_train_examples, task_from_dict

FIX = Path(__file__).resolve().parent / "fixtures" / "bad_rows"
NLI = ("entailment", "neutral", "contradiction")


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv(T.DATA_DIR_ENV, raising=False)


def _counts(kept: int, dropped: int) -> dict[str, int]:
    return {"blank_segment_kept": kept, "no_text_dropped": dropped}


# ------------------------------------------------------------------------------------------ the loaders
def test_xnli_release_keeps_a_blank_premise_and_drops_an_empty_pair():
    path = FIX / "xnli" / "xnli.test.tsv"
    en = load_examples("xnli", "eng_Latn", "test", FIX)
    assert en == [Example("1", ("The cat sat on the mat.", "A cat was sitting."), 0),
                  Example("2", ("", "He bought fresh bread."), 1)]
    assert en.report.counts() == _counts(1, 1)
    assert (en.report.kept_rows, en.report.dropped_rows) == ([f"{path}:3"], [f"{path}:4"])
    assert (en.report.task, en.report.lang, en.report.split) == ("xnli", "eng_Latn", "test")
    el = load_examples("xnli", "ell_Grek", "test", FIX)
    assert [e.id for e in el] == ["1", "2", "3"] and el[1].texts == ("Δεν υπάρχει γάτα.", "") and el[1].label == 2
    assert el.report.counts() == _counts(1, 0) and el.report.kept_rows == [f"{path}:6"]
    assert en.report.summary() == (f"1 row kept with a blank segment (as '') ({path}:3); 1 row without text dropped "
                                   f"({path}:4)")


def test_hub_columns_jsonl_null_premise_kept_blank_row_dropped():
    train = load_train_examples("americasnli", FIX)  # AmericasNLI trains on English XNLI
    assert [e.id for e in train] == ["0", "1", "2", "4", "5"]  # ids are row numbers: the dropped row 3 leaves a gap
    assert train[1] == Example("1", ("", "There is no cat."), 2)
    assert train.report.counts() == _counts(1, 1)
    assert train.report.dropped_rows == [f"{FIX / 'xnli' / 'en' / 'train.jsonl'}:4"]


def test_americasnli_release():
    ex = load_examples("americasnli", "ayr_Latn", "test", FIX)
    assert ex == [Example("201", ("Warmix t'ant'a alasi.", "Warmix machaq t'ant'a alasi."), 1),
                  Example("202", ("", "Jupax sarxi."), 0), Example("204", ("Jupax utaru sarxi.", ""), 2)]
    path = FIX / "americasnli" / "test" / "aym.tsv"
    assert ex.report.counts() == _counts(2, 1)
    assert (ex.report.kept_rows, ex.report.dropped_rows) == ([f"{path}:3", f"{path}:5"], [f"{path}:4"])


def test_single_text_tasks_drop_rows_without_text():
    labels = get_task("sib200").label_names
    sib = load_examples("sib200", "eng_Latn", "test", FIX)
    assert sib == [Example("1", ("Doctors recommend sleep.",), labels.index("health")),
                   Example("4", ("Rivers flow to the sea.",), labels.index("geography"))]
    path = FIX / "sib200" / "eng_Latn" / "test.tsv"
    assert sib.report.counts() == _counts(0, 2) and sib.report.dropped_rows == [f"{path}:3", f"{path}:4"]
    nusax = load_examples("nusax", "eng_Latn", "test", FIX)
    assert nusax == [Example("1", ("The food was great, really.",), 2), Example("3", ("Slow service.",), 0)]
    assert nusax.report.counts() == _counts(0, 1)


def test_hub_rows_follow_the_same_policy(monkeypatch):
    import datasets

    def fake(path, name=None, split=None, **kw):
        return datasets.Dataset.from_dict({"premise": ["p1", None, "", "p4"], "hypothesis": ["h1", "h2", " ", ""],
                                           "label": [0, 1, 2, 2]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ex = load_examples("xnli", "deu_Latn", "test")
    assert ex == [Example("0", ("p1", "h1"), 0), Example("1", ("", "h2"), 1), Example("3", ("p4", ""), 2)]
    assert ex.report.counts() == _counts(2, 1)
    assert ex.report.dropped_rows == ["hub dataset 'facebook/xnli' config 'de' split 'test' row 2"]


def test_belebele_blank_question_kept_blank_option_is_an_error(tmp_path):
    row = {"flores_passage": "P", "question": "", "mc_answer1": "a", "mc_answer2": "b", "mc_answer3": "c",
           "mc_answer4": "d", "correct_answer_num": "2", "link": "l", "question_number": 1}
    (tmp_path / "belebele").mkdir()
    path = tmp_path / "belebele" / "eng_Latn.jsonl"
    rows = [row, {**row, "flores_passage": " ", "question_number": 2}, {**row, "question": "Q?", "question_number": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = load_examples("belebele", "eng_Latn", "test", tmp_path)
    assert ex == [Example("l#1", ("P", ""), 1, ("a", "b", "c", "d")),
                  Example("l#3", ("P", "Q?"), 1, ("a", "b", "c", "d"))]
    assert ex.report.counts() == _counts(1, 1) and ex.report.dropped_rows == [f"{path}:2"]
    path.write_text(json.dumps({**row, "question": "Q?", "mc_answer3": ""}) + "\n")
    with pytest.raises(TaskDataError, match=r"eng_Latn\.jsonl:1: empty 'mc_answer3' \(got ''\); an answer option needs "
                                            r"text"):
        load_examples("belebele", "eng_Latn", "test", tmp_path)


def test_blank_or_unknown_label_stays_an_error_naming_the_row(tmp_path):
    folder = tmp_path / "americasnli" / "test"
    folder.mkdir(parents=True)
    (folder / "aym.tsv").write_text("id\tlanguage\tpremise\thypothesis\tlabel\n1\taym\tp\th\tneutral\n2\taym\tp\th\t\n")
    with pytest.raises(TaskDataError) as info:
        load_examples("americasnli", "ayr_Latn", "test", tmp_path)
    assert str(info.value) == (f"{folder / 'aym.tsv'}:3: blank label in column 'label' (got ''); every row with text "
                               f"needs a label (a row without one cannot be scored) — fix the row or delete it.")
    (folder / "aym.tsv").write_text("id\tlanguage\tpremise\thypothesis\tlabel\n1\taym\t\th\tmaybe\n")
    with pytest.raises(TaskDataError, match=r"aym\.tsv:2: label 'maybe' in column 'label' is not one of americasnli"):
        load_examples("americasnli", "ayr_Latn", "test", tmp_path)


def test_a_file_task_follows_the_policy_and_still_checks_labels(tmp_path):
    (tmp_path / "train.tsv").write_text("s1\ts2\ty\na\tb\tyes\nc\t\tno\n\t\tyes\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("s1\ts2\ty\n\td\tno\n\t\t\n", encoding="utf-8")  # the last: no text, no label
    spec = task_from_dict({"name": "yes-no", "kind": "pair", "text_column": "s1", "pair_column": "s2",
                           "label_column": "y", "train": {"eng_Latn": "train.tsv"}, "test": {"eng_Latn": "test.tsv"}},
                          base_dir=tmp_path)
    train = load_examples(spec, "eng_Latn", "train")
    assert train == [Example("0", ("a", "b"), 1), Example("1", ("c", ""), 0)]
    assert train.report.counts() == _counts(1, 1)
    test = load_examples(spec, "eng_Latn", "test")
    assert test == [Example("0", ("", "d"), 0)] and test.report.counts() == _counts(1, 1)


def test_a_language_with_no_text_left_says_so(tmp_path):
    folder = tmp_path / "sib200" / "eng_Latn"
    folder.mkdir(parents=True)
    (folder / "test.tsv").write_text("index_id\tcategory\ttext\n1\thealth\t\n2\ttravel\t \n")
    with pytest.raises(TaskDataError, match=r"sib200 eng_Latn test .*: no examples \(all 2 rows have no text \(2 rows "
                                            r"without text dropped"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)


# ------------------------------------------------------------------------------------------ the models
@pytest.fixture(scope="module")
def nli_models():
    from mtllm.modeling.model import MTLLMModel

    torch.manual_seed(0)
    mtllm = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=None, max_seq_length=32)
    mtllm.set_head("classification", NLI)
    teacher = MTLLMModel.llm_only("tiny:gemma3", lora=None, max_seq_length=32)
    teacher.set_head("classification", NLI)
    return {"mtllm": mtllm, "teacher": teacher}


def test_models_take_an_empty_segment_never_an_all_blank_example(nli_models):
    model = nli_models["mtllm"]
    sep = model.config.pair_separator
    kept = [Example("a", ("", "He bought fresh bread."), 1), Example("b", ("Δεν υπάρχει γάτα.", ""), 2)]
    for route, key in (("encoder", "input_ids"), ("llm", "llm_input_ids")):
        check_content(model, kept, route=route)  # accepted
        batch = collate_examples(model, kept, route=route, lang="eng_Latn")
        alone = model.tokenize(["" + sep + "He bought fresh bread.", "Δεν υπάρχει γάτα." + sep + ""],
                               lang="eng_Latn" if route == "encoder" else None, route=route)
        assert torch.equal(batch[key], alone["input_ids"])  # the empty side is just empty
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "n_truncated")}).logits
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        for bad in (Example("c", ("", ""), 0), Example("d", ("\u200b", ""), 0), Example("e", ("",), 0)):
            with pytest.raises(DataError, match=rf"example ids: '{bad.id}'"):
                check_content(model, [bad], route=route)


def test_evaluation_reports_bad_rows_in_json_and_markdown(tmp_path, nli_models, monkeypatch):
    import mtllm.modeling.predict
    from mtllm.evaluation.evaluate import EvaluateSettings, run_evaluate

    fed: list[tuple[str, ...]] = []
    real = mtllm.modeling.predict.predict

    def spy(model, examples, **kw):
        fed.extend(e.texts for e in examples)
        return real(model, examples, **kw)

    monkeypatch.setattr("mtllm.modeling.predict.predict", spy)
    out = tmp_path / "eval"
    results = run_evaluate(EvaluateSettings(task="xnli", data_dir=str(FIX), output_dir=str(out), batch_size=4,
                                            systems=["mtllm", "llm"], langs=["eng_Latn", "ell_Grek"]),
                           models=nli_models, progress=False)
    assert results.n_examples == {"eng_Latn": 2, "ell_Grek": 3}  # the dropped row is not scored
    assert ("", "He bought fresh bread.") in fed and ("Δεν υπάρχει γάτα.", "") in fed
    assert all(any(t.strip() for t in texts) for texts in fed) and len(fed) == 2 * (2 + 3)  # two systems
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == "xnli"
    assert saved["bad_rows"] == {"eng_Latn": _counts(1, 1), "ell_Grek": _counts(1, 0)}
    md = (out / "results.md").read_text()
    assert ("- bad rows in the data (bad_rows in results.json; a row with one blank segment of a pair is scored with "
            "that segment empty, a row with no text is not scored and not counted in n): ell_Grek: 1 kept with a "
            "blank segment, 0 dropped without text; eng_Latn: 1 kept with a blank segment, 1 dropped without text\n"
            ) in md


def test_pipeline_prints_the_training_data_bad_rows(capsys):
    from mtllm.cli.pipeline import _print_bad_rows
    from mtllm.training.finetune import TaskSettings

    _print_bad_rows("teacher", TaskSettings(task="americasnli", data_dir=str(FIX), eval_split="train"))
    assert capsys.readouterr().out == (
        f"[run] teacher: xnli eng_Latn train data: 1 row kept with a blank segment (as '') "
        f"({FIX / 'xnli' / 'en' / 'train.jsonl'}:2); 1 row without text dropped "
        f"({FIX / 'xnli' / 'en' / 'train.jsonl'}:4)\n")
    _print_bad_rows("teacher",
                    TaskSettings(task="sib200", data_dir=str(Path(__file__).parent / "fixtures" / "pipeline")))
    assert capsys.readouterr().out == ""  # nothing to say
