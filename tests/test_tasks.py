"""mtllm.tasks: the registry, every loader on local files in each dataset's real format, hub loading (with
``datasets.load_dataset`` replaced by an in-memory dataset), the reference code's language bugs, and the
errors for bad input."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import mtllm.tasks as T
from mtllm.data.languages import FLORES200, NLLB_CODES, UnknownLanguageError, validate_lang
from mtllm.tasks import (DataNotFoundError, DataUnavailableError, Example, TaskDataError, available_languages,
                         get_task, list_tasks, load_examples, load_train_examples, resolve_data_dir)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tasks"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NLI = ("entailment", "neutral", "contradiction")


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv(T.DATA_DIR_ENV, raising=False)


# ------------------------------------------------------------------------------------------ hub double
class FakeHub:
    """Stands in for ``datasets.load_dataset``: records calls, returns small in-memory datasets."""

    def __init__(self, make=None, error: Exception | None = None):
        self.calls: list[tuple] = []
        self.make = make
        self.error = error

    def __call__(self, path, name=None, split=None, **kwargs):
        self.calls.append((path, name, split))
        if self.error is not None:
            raise self.error
        return self.make(path, name, split)


def _ds(columns: dict, class_label: tuple[str, ...] | None = None):
    import datasets

    features = None
    if class_label is not None:
        features = datasets.Features({k: (datasets.ClassLabel(names=list(class_label)) if k == "label"
                                          else datasets.Value("string")) for k in columns})
    return datasets.Dataset.from_dict(columns, features=features)


@pytest.fixture
def hub(monkeypatch):
    import datasets

    def install(make=None, error=None) -> FakeHub:
        fake = FakeHub(make, error)
        monkeypatch.setattr(datasets, "load_dataset", fake)
        return fake
    return install


def _nli_ds(path, name, split):
    return _ds({"premise": [f"{name} premise {split}", f"{name} premise 2"],
                "hypothesis": [f"{name} hypothesis", f"{name} hypothesis 2"], "label": [0, 2]}, class_label=NLI)


# ------------------------------------------------------------------------------------------ registry
ALL_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
#: task -> (number of languages, kind, our split -> the dataset's split, train_task, hub id)
BUILT_IN = {
    "americasnli": (10, "pair_classification", {"validation": "validation", "test": "test"}, "xnli",
                    "nala-cub/americas_nli"),
    "belebele": (122, "multiple_choice", {"test": "test"}, None, "facebook/belebele"),
    "kardes-nlu": (5, "pair_classification", {"validation": "dev", "test": "test"}, "xnli", "lksenel/Kardes-NLU"),
    "nusax": (12, "classification", ALL_SPLITS, None, "indonlp/NusaX-senti"),
    "sib200": (205, "classification", ALL_SPLITS, None, "Davlan/sib200"),
    "xnli": (15, "pair_classification", ALL_SPLITS, None, "facebook/xnli"),
}


def test_registry():
    assert list_tasks() == sorted(BUILT_IN)
    for name, (n, kind, splits, train_task, hub_id) in BUILT_IN.items():
        spec = get_task(name)
        assert spec.name == name and len(spec.languages) == n == len(set(spec.languages))
        assert all(validate_lang(c) == c for c in spec.languages)
        assert (spec.kind, dict(spec.splits), spec.train_task, spec.hub_id) == (kind, splits, train_task, hub_id), name
        assert spec.train_lang == "eng_Latn" and spec.metric == "accuracy" and spec.description
        if train_task is not None:  # trained on another task's English train split: same labels
            assert get_task(train_task).label_names == spec.label_names
            assert spec.train_lang in get_task(train_task).languages
    assert get_task("sib200").label_names == ("science/technology", "travel", "politics", "sports", "health",
                                              "entertainment", "geography")
    assert get_task("nusax").label_names == ("negative", "neutral", "positive")
    assert get_task("xnli").label_names == NLI
    assert get_task("belebele").num_labels == 4 and get_task("belebele").label_names == ("1", "2", "3", "4")
    assert get_task("NusaX-senti") is get_task("nusax") and get_task("SIB-200") is get_task("sib200")
    spec = get_task("xnli")
    assert get_task(spec) is spec  # a spec is accepted wherever a name is
    copy = dataclasses.replace(spec)  # a spec is a value: equal specs hash alike (its dict fields are left out)
    assert copy is not spec and copy == spec and hash(copy) == hash(spec)


def test_unknown_task_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown task 'sib-20'.*'sib200'.*Known tasks"):
        get_task("sib-20")


# ------------------------------------------------------------------------------------------ the bug fixes
def test_greek_is_ell_Grek_and_uses_xnli_config_el(hub):
    spec = get_task("xnli")
    assert "ell_Grek" in spec.languages and spec.hub_config("ell_Grek") == "el"
    assert all(FLORES200[c] for c in spec.languages)
    fake = hub(_nli_ds)
    ex = load_examples("xnli", "ell_Grek", "test")
    assert fake.calls == [("facebook/xnli", "el", "test")]
    assert ex[0].texts[0] == "el premise test"
    local = load_examples("xnli", "ell_Grek", "validation", FIXTURES)
    assert local[0].texts == ("Η γάτα κάθισε στο χαλί.", "Μια γάτα καθόταν.")
    with pytest.raises(UnknownLanguageError, match="ell_Grek"):
        load_examples("xnli", "ell_Latn", "test", FIXTURES)


AMERICAS = {"ayr_Latn": "aym", "bzd_Latn": "bzd", "cni_Latn": "cni", "grn_Latn": "gn", "hch_Latn": "hch",
            "nah_Latn": "nah", "oto_Latn": "oto", "quy_Latn": "quy", "shp_Latn": "shp", "tar_Latn": "tar"}


def test_americasnli_every_language_and_split_uses_its_own_config(hub):
    spec = get_task("americasnli")
    assert dict(zip(spec.languages, map(spec.hub_config, spec.languages))) == AMERICAS
    assert "eng_Latn" not in spec.languages
    assert {c for c in spec.languages if c in NLLB_CODES} == {"ayr_Latn", "grn_Latn", "quy_Latn"}
    fake = hub(_nli_ds)
    for code, cfg in AMERICAS.items():
        for split in ("validation", "test"):
            ex = load_examples("americasnli", code, split)
            assert fake.calls[-1] == ("nala-cub/americas_nli", cfg, split)
            assert ex[0].texts[0] == f"{cfg} premise {split}"
    assert len(fake.calls) == 20


def test_americasnli_local_release_layout():
    assert available_languages("americasnli", FIXTURES) == ["ayr_Latn", "bzd_Latn", "tar_Latn"]
    dev = load_examples("americasnli", "bzd_Latn", "validation", FIXTURES)
    assert dev == [Example("101", ("Ie' tö̀ tso' ù a.", "Ie' tso' ù a."), 0)]
    test = load_examples("americasnli", "ayr_Latn", "test", FIXTURES)
    assert test[0].label == NLI.index("neutral") and test[0].id == "201"
    with pytest.raises(ValueError, match=r"no 'train' split: train on 'xnli' in 'eng_Latn'"):
        load_examples("americasnli", "ayr_Latn", "train", FIXTURES)
    # training data for AmericasNLI is English XNLI
    assert load_train_examples("americasnli", FIXTURES) == load_examples("xnli", "eng_Latn", "train", FIXTURES)


def test_ngaju_is_nij_Latn_on_every_split(hub):
    spec = get_task("nusax")
    assert spec.local_name("nij_Latn") == "ngaju" and spec.hub_config("nij_Latn") == "nij"
    negative, neutral, positive = range(3)
    expected = {  # tests/fixtures/tasks/nusax-senti/ngaju/{train,valid,test}.csv
        "train": [Example("1", ("Panginan te mangat tutu, rega ah murah.",), positive),
                  Example("2", ("Pelayanan te lambat, aku kecewa.",), negative),
                  Example("3", ("Toko te buka jam jalatien.",), neutral)],
        "validation": [Example("4", ("Kamar te bersih tutu, pemandangan bahalap.",), positive)],
        "test": [Example("5", ("Rega tiket, hayak pajak, aton hong internet.",), neutral),
                 Example("6", ("Dia ku handak haluli, pengalaman papa.",), negative)],
    }
    for split, examples in expected.items():
        assert load_examples("nusax", "nij_Latn", split, FIXTURES) == examples, split
    fake = hub(lambda p, n, s: _ds({"id": ["1"], "text": [f"{n} {s}"], "lang": [n], "label": [2]},
                                   class_label=("negative", "neutral", "positive")))
    for split in ("train", "validation", "test"):
        assert load_examples("nusax", "nij_Latn", split)[0] == Example("1", (f"nij {split}",), 2)
    assert fake.calls == [("indonlp/NusaX-senti", "nij", s) for s in ("train", "validation", "test")]


def test_kardes_uyghur_is_its_own_cyrillic_data_not_kazakh():
    spec = get_task("kardes-nlu")
    assert dict(zip(spec.languages, map(spec.local_name, spec.languages))) == {
        "azj_Latn": "azeri", "kaz_Cyrl": "kazakh", "kir_Cyrl": "kyrgyz", "uig_Cyrl": "uyghur", "uzn_Latn": "uzbek"}
    ug = load_examples("kardes-nlu", "uig_Cyrl", "validation", FIXTURES)
    kk = load_examples("kardes-nlu", "kaz_Cyrl", "validation", FIXTURES)
    assert ug[0].texts == ("Мән һәр күни кәчтә китаб оқуймән.", "Мән кәчтә китаб оқуймән.")
    assert ug[0].texts != kk[0].texts and [e.label for e in ug] == [0, 2]
    assert ug[0].id == "9"
    with pytest.raises(UnknownLanguageError, match="Cyrillic script, so it is 'uig_Cyrl'"):
        load_examples("kardes-nlu", "uig_Arab", "test", FIXTURES)
    assert available_languages("kardes-nlu", FIXTURES) == ["azj_Latn", "kaz_Cyrl", "uig_Cyrl"]
    assert load_examples("kardes-nlu", "azj_Latn", "test", FIXTURES)[0].texts[0] == "O evə getdi."


def test_kardes_is_not_on_the_hub_and_says_where_it_is(hub):
    fake = hub(_nli_ds)
    with pytest.raises(DataUnavailableError, match=r"github.com/lksenel/Kardes-NLU.*--data-dir DIR"):
        load_examples("kardes-nlu", "uig_Cyrl", "test")
    assert fake.calls == []


# ------------------------------------------------------------------------------------------ local loaders
def test_sib200_local():
    assert available_languages("sib200", FIXTURES) == ["ell_Grek", "eng_Latn", "sat_Olck"]
    train = load_examples("sib200", "eng_Latn", "train", FIXTURES)
    assert [e.id for e in train] == ["11", "12", "13"]
    assert train[2] == Example("13", ('"Fusion releases energy," the physicist said.',), 0)  # CSV-quoted cell
    assert [e.label for e in train] == [3, 1, 0]
    dev = load_examples("sib200", "ENG_latn", "dev", FIXTURES)  # split and code aliases
    assert [e.id for e in dev] == ["21", "22"]
    el = load_examples("sib200", "ell_Grek", "test", FIXTURES)
    en = load_examples("sib200", "eng_Latn", "test", FIXTURES)
    assert [e.id for e in el] == [e.id for e in en] and [e.label for e in el] == [e.label for e in en]
    assert load_examples("sib200", "sat_Olck", "test", FIXTURES, limit=1)[0].label == 6
    assert load_examples("sib200", "eng_Latn", "train", FIXTURES, limit=0) == []


def test_nusax_local():
    assert available_languages("nusax", FIXTURES) == ["bbc_Latn", "eng_Latn", "nij_Latn"]
    ex = load_examples("nusax", "eng_Latn", "train", FIXTURES)
    assert [e.label for e in ex] == [2, 0, 1] and ex[0].id == "1"
    assert load_examples("nusax", "bbc_Latn", "test", FIXTURES)[1].label == 0
    with pytest.raises(DataNotFoundError, match=r"toba_batak/train\.csv"):
        load_examples("nusax", "bbc_Latn", "train", FIXTURES)


def test_xnli_local_release_and_hub_columns():
    assert available_languages("xnli", FIXTURES) == ["ell_Grek", "eng_Latn"]
    el = load_examples("xnli", "ell_Grek", "validation", FIXTURES)
    assert [e.label for e in el] == [0, 2, 1] and [e.id for e in el] == ["1", "2", "3"]
    assert el[2].texts[1] == 'Η γάτα είναι "μαύρη".'  # the release is unquoted TSV: quotes are text
    assert load_examples("xnli", "eng_Latn", "test", FIXTURES)[0].texts == ("He bought bread.",
                                                                           "He bought fresh bread.")
    train = load_examples("xnli", "eng_Latn", "train", FIXTURES)
    assert [e.label for e in train] == [0, 2, 1] and train[0].id == "0"
    assert load_train_examples("xnli", FIXTURES, limit=2) == train[:2]


def test_belebele_local():
    assert available_languages("belebele", FIXTURES) == ["ell_Grek", "eng_Latn"]
    ex = load_examples("belebele", "eng_Latn", "test", FIXTURES)
    assert ex[0].options == ("1923", "1932", "1952", "1992") and ex[0].label == 1
    assert ex[1].label == 2 and ex[0].texts[1] == "When did the bridge open?"
    el = load_examples("belebele", "ell_Grek", "test", FIXTURES)
    assert el[0].id == ex[0].id  # parallel questions share ids
    train = load_train_examples("belebele", FIXTURES)
    assert train[0].label == 2 and train[0].options[2] == "August"
    with pytest.raises(DataNotFoundError, match=r"(?s)belebele/train/ell_Grek\.jsonl.*No training data"):
        load_examples("belebele", "ell_Grek", "train", FIXTURES)


@pytest.mark.skipif(not (SHARED_DATA / "sib200").is_dir(), reason="no local SIB-200 data")
def test_real_sib200():
    langs = available_languages("sib200", SHARED_DATA)
    on_disk = sorted(p.name for p in (SHARED_DATA / "sib200").iterdir() if p.is_dir())
    assert langs == on_disk
    labels = (SHARED_DATA / "sib200" / "eng_Latn" / "labels.txt").read_text().split("\n")
    assert tuple(x for x in labels if x) == get_task("sib200").label_names
    english = {split: load_examples("sib200", "eng_Latn", split, SHARED_DATA) for split in T.SPLITS}
    assert {s: len(v) for s, v in english.items()} == {"train": 701, "validation": 99, "test": 204}
    for code in langs:
        for split in T.SPLITS:
            ex = load_examples("sib200", code, split, SHARED_DATA)
            assert [(e.id, e.label) for e in ex] == [(e.id, e.label) for e in english[split]], (code, split)


@pytest.mark.skipif(not (SHARED_DATA / "nusax-senti").is_dir(), reason="no local NusaX data")
def test_real_nusax_all_languages_all_splits():
    langs = available_languages("nusax", SHARED_DATA)
    assert langs == sorted(get_task("nusax").languages)
    for split, n in (("train", 500), ("validation", 100), ("test", 400)):
        ids = None
        for code in langs:
            ex = load_examples("nusax", code, split, SHARED_DATA)
            assert len(ex) == n, (code, split)
            assert {e.label for e in ex} == {0, 1, 2}
            assert ids is None or [e.id for e in ex] == ids, (code, split)  # parallel
            ids = [e.id for e in ex]


# ------------------------------------------------------------------------------------------ hub loaders
def test_sib200_hub(hub):
    fake = hub(lambda p, n, s: _ds({"index_id": [7, 8], "category": ["health", "travel"], "text": ["a", "b"]}))
    assert load_examples("sib200", "nqo_Nkoo", "validation") == [Example("7", ("a",), 4), Example("8", ("b",), 1)]
    assert fake.calls == [("Davlan/sib200", "nqo_Nkoo", "validation")]


def test_pair_hub_maps_classlabels_by_name(hub):
    order = ("contradiction", "entailment", "neutral")  # a different ClassLabel order: mapped by name
    hub(lambda p, n, s: _ds({"premise": ["p"] * 3, "hypothesis": ["h"] * 3, "label": [0, 1, -1]}, order))
    assert [e.label for e in load_examples("xnli", "eng_Latn", "train")] == [2, 0, -1]


def test_belebele_hub(hub):
    row = {"link": ["https://x"], "question_number": [3], "flores_passage": ["P"], "question": ["Q?"],
           **{f"mc_answer{i}": [f"a{i}"] for i in range(1, 5)}, "correct_answer_num": ["4"],
           "dialect": ["hin_Latn"], "ds": ["2023"]}
    fake = hub(lambda p, n, s: _ds(row))
    assert load_examples("belebele", "hin_Latn", "test") == [
        Example("https://x#3", ("P", "Q?"), 3, ("a1", "a2", "a3", "a4"))]
    assert fake.calls == [("facebook/belebele", "hin_Latn", "test")]
    with pytest.raises(DataUnavailableError, match="no 'train' split on the hub.*belebele/train/eng_Latn.jsonl"):
        load_examples("belebele", "eng_Latn", "train")


def test_hub_and_local_both_unavailable_names_both_options(hub):
    hub(error=ConnectionError("no network"))
    with pytest.raises(DataUnavailableError) as info:
        load_examples("sib200", "eng_Latn", "test")
    msg = str(info.value)
    assert "--data-dir DIR" in msg and "MTLLM_DATA_DIR" in msg and "'Davlan/sib200'" in msg and "no network" in msg


def test_hub_columns_are_checked(hub):
    hub(lambda p, n, s: _ds({"sentence": ["x"], "label": [1]}))
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['text'\]; found \['sentence', 'label'\]"):
        load_examples("nusax", "eng_Latn", "test")


def test_hub_row_without_text_is_dropped_and_counted_naming_the_row(hub):
    # the bad-row policy (mtllm.tasks.readers; more in tests/test_bad_rows.py): no text -> dropped, counted
    hub(lambda p, n, s: _ds({"index_id": [1, 2], "category": ["health", "travel"], "text": ["ok", "  "]}))
    examples = load_examples("sib200", "eng_Latn", "test")
    assert examples == [Example("1", ("ok",), get_task("sib200").label_names.index("health"))]
    assert examples.report.counts() == {"blank_segment_kept": 0, "no_text_dropped": 1}
    assert examples.report.dropped_rows == ["hub dataset 'Davlan/sib200' config 'eng_Latn' split 'test' row 1"]


def test_available_languages_from_hub_is_the_task_list():
    assert available_languages("belebele") == list(get_task("belebele").languages)


# ------------------------------------------------------------------------------------------ data dir
def test_resolve_data_dir(monkeypatch, tmp_path):
    assert resolve_data_dir() is None
    monkeypatch.setenv(T.DATA_DIR_ENV, str(FIXTURES))
    assert resolve_data_dir() == FIXTURES
    assert resolve_data_dir(tmp_path) == tmp_path  # the argument wins
    assert load_examples("sib200", "eng_Latn", "test")[0].id == "31"  # the env var is used by loaders
    with pytest.raises(DataNotFoundError, match=r"from data_dir.*--data-dir DIR.*MTLLM_DATA_DIR"):
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv(T.DATA_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(DataNotFoundError, match=r"from \$MTLLM_DATA_DIR"):
        resolve_data_dir()


# ------------------------------------------------------------------------------------------ bad input
def _sib(tmp_path, content, *, split="test", code="eng_Latn", raw: bytes | None = None) -> Path:
    folder = tmp_path / "sib200" / code
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.tsv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_unknown_language_for_task_lists_close_matches():
    with pytest.raises(UnknownLanguageError, match=r"task 'nusax' has no language 'swh_Latn'"):
        load_examples("nusax", "swh_Latn", "test", FIXTURES)
    with pytest.raises(UnknownLanguageError, match=r"no language 'ace_Arab'.*Close matches: 'ace_Latn'"):
        load_examples("nusax", "ace_Arab", "test", FIXTURES)  # valid code, but NusaX's Acehnese is Latin
    with pytest.raises(UnknownLanguageError, match="Did you mean 'swh_Latn'"):
        load_examples("sib200", "swa", "test", FIXTURES)


def test_unknown_split_and_bad_limit():
    with pytest.raises(ValueError, match="unknown split 'training'"):
        load_examples("sib200", "eng_Latn", "training", FIXTURES)
    with pytest.raises(ValueError, match="limit must be a non-negative integer"):
        load_examples("sib200", "eng_Latn", "test", FIXTURES, limit=-1)
    with pytest.raises(ValueError, match="kardes-nlu' has no 'train' split"):
        load_examples("kardes-nlu", "kaz_Cyrl", "train", FIXTURES)


def test_missing_file_names_expected_path_and_hub_alternative(tmp_path):
    (tmp_path / "sib200" / "eng_Latn").mkdir(parents=True)
    with pytest.raises(DataNotFoundError) as info:
        load_examples("sib200", "eng_Latn", "validation", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "sib200" / "eng_Latn" / "dev.tsv") in msg and "'Davlan/sib200'" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_task_folder_for_available_languages(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"no belebele data under"):
        available_languages("belebele", tmp_path)


def test_misnamed_columns_name_found_and_expected(tmp_path):
    _sib(tmp_path, "index_id\tlabel\ttext\n1\thealth\tx\n")
    with pytest.raises(TaskDataError) as info:
        load_examples("sib200", "eng_Latn", "test", tmp_path)
    msg = str(info.value)
    assert "missing column(s) ['category']" in msg and "found ['index_id', 'label', 'text']" in msg
    assert "expected ['index_id', 'category', 'text']" in msg


def test_non_utf8_names_the_file(tmp_path):
    path = _sib(tmp_path, "", raw="index_id\tcategory\ttext\n1\thealth\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(TaskDataError, match=rf"{path}:2: not UTF-8 \(invalid byte 0xe9 at byte 13 of the line.*iconv"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)


def test_unknown_label_names_row_and_labels(tmp_path):
    path = _sib(tmp_path, "index_id\tcategory\ttext\n1\thealth\tok\n2\tweather\tbad\n")
    with pytest.raises(TaskDataError, match=rf"{path}:3: label 'weather'.*'science/technology'"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)
    assert len(load_examples("sib200", "eng_Latn", "test", tmp_path, limit=1)) == 1  # rows before are fine


def test_empty_text_is_dropped_and_counted_with_its_row(tmp_path):
    path = _sib(tmp_path, "index_id\tcategory\ttext\n1\thealth\tok\n2\thealth\t   \n")
    examples = load_examples("sib200", "eng_Latn", "test", tmp_path)
    assert [e.id for e in examples] == ["1"] and examples.report.dropped_rows == [f"{path}:3"]


def test_too_many_fields_and_bad_json(tmp_path):
    _sib(tmp_path, "index_id\tcategory\ttext\n1\thealth\tok\textra\n")
    with pytest.raises(TaskDataError, match=r":2: 4 fields but the header has 3"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)
    folder = tmp_path / "xnli" / "en"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": 0}\n{oops\n')
    with pytest.raises(TaskDataError, match=r"train\.jsonl:2: not valid JSON"):
        load_examples("xnli", "eng_Latn", "train", tmp_path)


def test_empty_file_and_missing_jsonl_field(tmp_path):
    _sib(tmp_path, "index_id\tcategory\ttext\n")
    with pytest.raises(TaskDataError, match=r"sib200 eng_Latn test .*no examples"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)
    folder = tmp_path / "xnli" / "en"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": 0}\n{"premise": "p", "label": '
                                       '0}\n')
    with pytest.raises(TaskDataError, match=r"test\.jsonl:2: missing 'hypothesis'"):
        load_examples("xnli", "eng_Latn", "test", tmp_path)


def test_label_index_out_of_range(tmp_path):
    folder = tmp_path / "xnli" / "el"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": 3}\n')
    with pytest.raises(TaskDataError, match=r"label 3 in column 'label'.*indices 0\.\.2"):
        load_examples("xnli", "ell_Grek", "test", tmp_path)


def test_wrong_labels_txt(tmp_path):
    _sib(tmp_path, "index_id\tcategory\ttext\n1\thealth\tok\n")
    (tmp_path / "sib200" / "eng_Latn" / "labels.txt").write_text("positive\nnegative\n")
    with pytest.raises(TaskDataError, match=r"labels\.txt: labels \['positive', 'negative'\] differ"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)


def test_labels_txt_in_another_order_still_maps_by_name(tmp_path):
    _sib(tmp_path, "index_id\tcategory\ttext\n1\tgeography\tok\n")
    names = get_task("sib200").label_names
    (tmp_path / "sib200" / "eng_Latn" / "labels.txt").write_text("\n".join(reversed(names)) + "\n")
    assert load_examples("sib200", "eng_Latn", "test", tmp_path)[0].label == names.index("geography")


def test_belebele_bad_answer_number_and_columns(tmp_path):
    folder = tmp_path / "belebele"
    folder.mkdir()
    row = ('{"flores_passage": "P", "question": "Q", "mc_answer1": "a", "mc_answer2": "b", "mc_answer3": "c", '
           '"mc_answer4": "d", "correct_answer_num": "%s"}\n')
    (folder / "eng_Latn.jsonl").write_text(row % "5")
    with pytest.raises(TaskDataError, match=r"eng_Latn\.jsonl:1: correct_answer_num '5' must be 1, 2, 3 or 4"):
        load_examples("belebele", "eng_Latn", "test", tmp_path)
    (folder / "eng_Latn.jsonl").write_text('{"passage": "P", "question": "Q"}\n')
    with pytest.raises(TaskDataError, match=r"missing column\(s\).*'flores_passage'.*found \['passage', 'question'\]"):
        load_examples("belebele", "eng_Latn", "test", tmp_path)


def test_kardes_columns_checked(tmp_path):
    folder = tmp_path / "kardes-nlu" / "uyghur"
    folder.mkdir(parents=True)
    (folder / "xnli.test.ug.csv").write_text(",gold_label,sentence1,sentence2\n1,neutral,a,b\n")
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['s1_translation', 's2_translation'\]"):
        load_examples("kardes-nlu", "uig_Cyrl", "test", tmp_path)


# ------------------------------------------------------------------------------------------ your own tasks
@pytest.fixture
def registry(task_registry):
    """Restores the registry after a test that registers tasks (conftest's ``task_registry``)."""


TOY_LABELS = ("negative", "positive")


def _toy_task(**kw) -> T.TaskSpec:
    base = dict(name="toy-sentiment", kind="classification", label_names=TOY_LABELS, hub_id=None,
                languages=("eng_Latn", "deu_Latn", "fra_Latn"), description="A toy sentiment task.")
    base.update(kw)
    return T.TaskSpec(**base)


def _write_toy(root: Path) -> Path:
    """DATA_DIR/toy-sentiment/<code>/<split>.{jsonl,csv,tsv} in the default columns (text, label, id)."""
    folder = root / "toy-sentiment"
    good = ["great film", "I loved it", "wonderful", "a joy", "so good", "fine work"]
    bad = ["awful", "I hated it", "boring", "a waste", "so bad", "dull work"]
    rows = [{"id": f"e{i}", "text": t, "label": "positive"} for i, t in enumerate(good)]
    rows += [{"id": f"e{i + 6}", "text": t, "label": 0} for i, t in enumerate(bad)]
    (folder / "eng_Latn").mkdir(parents=True)
    (folder / "eng_Latn" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "eng_Latn" / "dev.csv").write_text("id,text,label\nv1,really great,positive\nv2,really bad,negative\n")
    (folder / "deu_Latn").mkdir()
    (folder / "deu_Latn" / "test.tsv").write_text("text\tlabel\nsehr gut\t1\nsehr schlecht\tnegative\n")
    (folder / "fra_Latn").mkdir()  # empty: not available
    return folder


def test_register_task_loads_local_files_in_the_default_layout(tmp_path, registry):
    spec = T.register_task(_toy_task(aliases=("toy",)))
    _write_toy(tmp_path)
    assert "toy-sentiment" in list_tasks() and get_task("Toy_Sentiment") is spec and get_task("toy") is spec
    assert available_languages("toy-sentiment", tmp_path) == ["deu_Latn", "eng_Latn"]
    assert available_languages("toy-sentiment") == ["eng_Latn", "deu_Latn", "fra_Latn"]
    train = load_train_examples("toy", tmp_path)
    assert len(train) == 12 and train[0] == Example("e0", ("great film",), 1)
    assert train[6] == Example("e6", ("awful",), 0)
    assert load_examples("toy-sentiment", "eng_Latn", "dev", tmp_path) == [
        Example("v1", ("really great",), 1), Example("v2", ("really bad",), 0)]
    assert load_examples(spec, "deu_Latn", "test", tmp_path) == [  # no id column: the row index
        Example("0", ("sehr gut",), 1), Example("1", ("sehr schlecht",), 0)]
    with pytest.raises(DataNotFoundError, match=r"(?s)no local toy-sentiment data for 'fra_Latn'.*fra_Latn/test"
                                                r"\.jsonl") as info:
        load_examples("toy-sentiment", "fra_Latn", "test", tmp_path)
    assert "Hugging Face" not in str(info.value)  # hub_id=None: no hub to suggest
    with pytest.raises(DataUnavailableError, match="toy-sentiment is not on the Hugging Face hub"):
        load_examples("toy-sentiment", "eng_Latn", "test")
    with pytest.raises(UnknownLanguageError, match="task 'toy-sentiment' has no language 'ell_Grek'"):
        load_examples("toy-sentiment", "ell_Grek", "test", tmp_path)
    (tmp_path / "toy-sentiment" / "deu_Latn" / "train.jsonl").write_text('{"text": "x", "label": "neutral"}\n')
    with pytest.raises(TaskDataError, match=r"train\.jsonl:1: label 'neutral'.*\['negative', 'positive'\]"):
        load_examples("toy-sentiment", "deu_Latn", "train", tmp_path)


def test_register_task_subclass_with_its_own_layout(tmp_path, registry):
    class LinesTask(T.TaskSpec):
        """One file per language, ``<code>.txt``, lines ``label|premise|hypothesis``."""

        def read_local(self, root, lang, split):
            path = self.local_root(root) / f"{lang}.{split}.txt"
            return (Example(f"{lang}-{i}", tuple(parts[1:]), self.label_names.index(parts[0]))
                    for i, parts in enumerate(line.split("|") for line in path.read_text().splitlines()))

        def local_languages(self, base):
            return {p.name.split(".")[0] for p in base.glob("*.txt")}

    spec = T.register_task(LinesTask(name="toy-nli", kind="pair_classification", label_names=NLI,
                                     hub_id=None, languages=("eng_Latn", "kaz_Cyrl"), local_dir="lines"))
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "kaz_Cyrl.test.txt").write_text("neutral|a|b\ncontradiction|c|d\n")
    assert available_languages("toy-nli", tmp_path) == ["kaz_Cyrl"]
    assert load_examples("toy-nli", "kaz_Cyrl", "test", tmp_path, limit=1) == [Example("kaz_Cyrl-0", ("a", "b"), 1)]
    assert [e.label for e in load_examples(spec, "kaz_Cyrl", "test", tmp_path)] == [1, 2]


def test_register_task_twice_is_an_error_unless_overwrite(registry):
    first = T.register_task(_toy_task())
    with pytest.raises(ValueError,
                       match=r"'toy-sentiment' \(task 'toy-sentiment'\) already registered.*overwrite=True"):
        T.register_task(_toy_task(description="another"))
    with pytest.raises(ValueError, match=r"'sib-200' \(task 'sib200'\) already registered"):
        T.register_task(_toy_task(name="my-sib", aliases=("SIB_200",)))  # an alias taken by a built-in task
    assert get_task("toy-sentiment") is first and "my-sib" not in list_tasks()
    second = T.register_task(_toy_task(description="another", aliases=("toy2",)), overwrite=True)
    assert get_task("toy-sentiment") is second and get_task("toy2") is second
    T.register_task(_toy_task(), overwrite=True)  # replacing it drops its old aliases too
    with pytest.raises(ValueError, match="unknown task 'toy2'"):
        get_task("toy2")
    with pytest.raises(TypeError, match="needs a mtllm.tasks.TaskSpec"):
        T.register_task("toy-sentiment")


def test_task_spec_is_checked_when_made():
    with pytest.raises(ValueError, match=r"lower case and '-' \(e\.g\. 'my-task'\)"):
        _toy_task(name="My_Task")
    with pytest.raises(ValueError, match="kind 'regression' is not one of"):
        _toy_task(kind="regression")
    with pytest.raises(ValueError, match="write the language 'ENG_latn' as 'eng_Latn'"):
        _toy_task(languages=("ENG_latn",))
    with pytest.raises(UnknownLanguageError):
        _toy_task(languages=("english",))
    with pytest.raises(ValueError, match="at least two distinct names"):
        _toy_task(label_names=("yes", "yes"))
    with pytest.raises(ValueError, match=r"splits \['dev'\] are not among"):
        _toy_task(splits={"dev": "dev"})


def test_unknown_task_name_lists_close_matches_including_registered_ones(registry):
    T.register_task(_toy_task())
    with pytest.raises(ValueError, match=r"unknown task 'toy-sentimnt'\. Did you mean 'toy-sentiment'\?.*Known "
                                         r"tasks: americasnli, .*toy-sentiment, xnli\."):
        load_examples("toy-sentimnt", "eng_Latn", "test")
    with pytest.raises(ValueError, match=r"unknown task 'xnil'\. Did you mean 'xnli'"):
        get_task("xnil")


def test_registered_task_finetunes_on_tiny_models(tmp_path, registry):
    from mtllm.modeling.model import MTLLMModel
    from mtllm.settings import ModelSettings
    from mtllm.training.finetune import TaskSettings, run_finetune
    from mtllm.training.loop import TrainingArgs

    T.register_task(_toy_task())
    _write_toy(tmp_path / "data")
    model = ModelSettings(encoder="tiny:xlmr", llm="tiny:gemma3", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          max_seq_length=64)
    args = TrainingArgs(output_dir=str(tmp_path / "out"), learning_rate=3e-3, batch_size=4, max_steps=2, seed=0,
                        progress=False, report_to="none")
    summary = run_finetune(model, TaskSettings(task="toy-sentiment", data_dir=str(tmp_path / "data"),
                                               eval_batch_size=8), args)
    assert summary["steps"] == 2 and summary["n_train"] == 12 and summary["n_val"] == 2
    assert [e["step"] for e in summary["evals"]] == [2]
    best = MTLLMModel.from_pretrained(tmp_path / "out" / "best")
    assert best.config.label_names == list(TOY_LABELS) and best.head.out_features == 2
