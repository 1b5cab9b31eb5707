"""Stage-1 text sources and bad input: formats, non-UTF-8 files, missing columns, chunking."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from mtllm.data.texts import DataError, chunk_text, iter_texts, load_stage1_texts


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
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8.*re-encode"):
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
