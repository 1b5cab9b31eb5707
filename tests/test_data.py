"""Stage-1 text sources and bad input: formats, non-UTF-8 files, missing columns, chunking."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from mtllm.tasks.texts import DataError, chunk_text, iter_texts, load_stage1_texts


def test_formats_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text("id,text\n1,from csv\n", encoding="utf-8")
    (tmp_path / "d.tsv").write_text("id\ttext\n1\tfrom tsv\n", encoding="utf-8")
    texts = list(iter_texts([str(tmp_path)]))
    # every text of every file, nothing else (no header rows, no empty lines)
    assert sorted(texts) == sorted(["first line", "second line", "from jsonl", "from csv", "from tsv"])


def test_non_utf8_file_names_file_and_fix(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError,
                       match=r"latin1\.txt:1: not UTF-8 \(invalid byte 0xe9 at byte 4 of the line.*re-encode"):
        list(iter_texts([str(bad)]))


def test_missing_column_lists_found_columns(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("id,sentence\n1,hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'text'.*sentence"):
        list(iter_texts([str(f)]))
    assert list(iter_texts([str(f)], text_field="sentence")) == ["hello"]


def test_missing_source_and_empty_data(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_texts([str(tmp_path / "nope.txt")]))
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no non-empty text"):
        load_stage1_texts([str(tmp_path / "empty.txt")])


def test_task_source(tmp_path):
    from pathlib import Path

    import csv

    data = Path(__file__).resolve().parent / "fixtures" / "pipeline"
    texts = list(iter_texts(["task:sib200/eng_Latn/train"], data_dir=str(data)))
    with open(data / "sib200" / "eng_Latn" / "train.tsv", encoding="utf-8", newline="") as fh:
        column = [row["text"] for row in csv.DictReader(fh, delimiter="\t")]
    assert len(column) == 24 and texts == column  # the file's text column, in order
    with pytest.raises(DataError, match="task:NAME/LANG/SPLIT"):
        list(iter_texts(["task:sib200"]))


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1,
                              max_size=12), min_size=1, max_size=60),
       limit=st.integers(min_value=20, max_value=80))
def test_chunks_fit_and_keep_every_word(words, limit):
    text = " ".join(words)
    chunks = chunk_text(text, lambda t: len(t) <= limit)
    assert all(len(c) <= limit or " " not in c for c in chunks)  # a single over-long word stays whole
    assert " ".join(chunks).split() == text.split()  # nothing lost, order kept


def test_json_file_that_is_one_array(tmp_path):
    """A .json file holding one array of objects (or of strings) is read row by row, in order."""
    f = tmp_path / "texts.json"
    f.write_text(json.dumps([{"text": "first", "id": 1}, {"text": "second"}, {"text": None}, {"text": "third"}]),
                 encoding="utf-8")
    assert list(iter_texts([str(f)])) == ["first", "second", "third"]  # null counts as empty: skipped
    (tmp_path / "strings.json").write_text(json.dumps(["one", "two"]), encoding="utf-8")
    assert list(iter_texts([str(tmp_path / "strings.json")])) == ["one", "two"]
    (tmp_path / "lines.json").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")  # JSON lines still work
    assert list(iter_texts([str(tmp_path / "lines.json")])) == ["a", "b"]
    (tmp_path / "number.json").write_text("42", encoding="utf-8")
    with pytest.raises(DataError, match=r"number\.json holds one int; a \.json file holds an array of objects"):
        list(iter_texts([str(tmp_path / "number.json")]))


@pytest.mark.parametrize("name, content, message", [
    ("ints.jsonl", '{"text": "fine"}\n{"text": 42}\n', r"ints\.jsonl:2: 'text' holds int 42, not a string; set "
                                                       r"text_field"),
    ("nested.json", json.dumps([{"text": {"en": "x"}}]), r"nested\.json: item 0: 'text' holds dict \{'en': 'x'\}, not "
                                                         r"a string"),
    ("list.jsonl", '["not", "an object"]\n', r"list\.jsonl:1: a list \['not', 'an object'\], not a JSON object; write "
                                             r"one object per line"),
    ("broken.jsonl", '{"text": "a"}\n{"text": \n', r"broken\.jsonl:2: not valid JSON"),
    ("other.jsonl", '{"body": "a", "1": 2}\n', r"other\.jsonl:1: no field 'text' \(found \['1', 'body'\]\); set "
                                               r"text_field"),
])
def test_bad_json_rows_name_file_row_and_fix(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        list(iter_texts([str(f)]))


def test_parquet_rows_that_are_not_text_and_broken_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["ok", None, "fine"], "n": [1, 2, 3]}), tmp_path / "good.parquet")
    assert list(iter_texts([str(tmp_path / "good.parquet")])) == ["ok", "fine"]
    with pytest.raises(DataError, match=r"good\.parquet: row 1: 'n' holds int 1, not a string"):
        list(iter_texts([str(tmp_path / "good.parquet")], text_field="n"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        list(iter_texts([str(tmp_path / "bad.parquet")]))


def test_source_problems_are_known_before_reading(tmp_path):
    """What the settings check (before any model loads) is what reading would find."""
    from mtllm.tasks.texts import source_problem

    (tmp_path / "notes.md").write_text("hello", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").mkdir()  # a folder named like a text file is no text file
    (tmp_path / "empty" / "readme.md").write_text("x", encoding="utf-8")
    assert source_problem("fineweb") is None and source_problem("task:sib200/eng_Latn/train") is None
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "a.txt").write_text("a text", encoding="utf-8")
    assert source_problem(str(tmp_path / "good")) is None and list(iter_texts([str(tmp_path / "good")])) == ["a text"]
    cases = {str(tmp_path / "notes.md"): "unsupported file type '.md'", str(tmp_path / "empty"): "holds no",
             str(tmp_path / "nope.txt"): "no such file or folder", "task:sib200": "task:NAME/LANG/SPLIT"}
    for source, message in cases.items():
        assert message in source_problem(source)
        with pytest.raises(DataError, match=message.replace(".", r"\.").replace("(", r"\(")):
            list(iter_texts([source]))
