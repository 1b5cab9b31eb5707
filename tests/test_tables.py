"""The one table reader (:mod:`mtllm.tables`): strict, streamed, the same rules and errors for every format and
every caller. One case per rule for each format it applies to, the exact line in every message:

* a CSV/TSV row with more or fewer fields than the header is a malformed row naming its line, never merged or
  shifted;
* a quoted field that never closes is an error of the file naming the line where its row starts;
* a lone ``\\r`` (outside quotes; in a text line) is a malformed row naming its line; ``\\r\\n`` is normal;
* valid input is read as it is: multi-MB fields, U+2028/U+2029/U+0085 in JSON strings and text, quoted fields
  with line breaks (the next rows' lines still exact), a byte-order mark;
* a file that is not UTF-8 is an error naming the line and the byte; a JSON lone surrogate is a malformed row;
* a JSON line that is not an object (or not JSON, or with a key twice) is a malformed row naming its line;
* blank lines: skipped in CSV/TSV/JSON lines, a row with empty text in ``.txt``;

and through the callers: task loading and stage-1 texts raise the reader's message; ``mtllm predict`` writes a
malformed row as skipped with its reason (``--on_bad_row skip``) or stops with a one-line error before any model
work (``--on_bad_row fail``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtllm.errors import DataError
from mtllm.tables import CSV_FIELD_LIMIT, Table

SEP = {".csv": ",", ".tsv": "\t"}


def _file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _rows(path: Path, **kw) -> list:
    return list(Table(path, **kw))


def _table(suffix: str, *lines: str, end: str = "\n") -> str:
    """CSV/TSV text from lines written with ',' (swapped for a tab in TSV)."""
    return "".join(line.replace(",", SEP[suffix]) + end for line in lines)


# ------------------------------------------------------------------------------------------ field counts
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_more_or_fewer_fields_than_the_header_is_a_malformed_row_naming_its_line(tmp_path, suffix):
    path = _file(tmp_path, f"a{suffix}", _table(suffix, "id,text", "1,ok", "2,one,two", "3,fine", "4", "5,last"))
    rows = _rows(path)
    assert [r.number for r in rows] == [1, 2, 3, 4, 5]
    assert [(r.line, r.reason) for r in rows if r.problem] == [(3, "too many fields"), (5, "too few fields")]
    assert rows[1].message.startswith(f"{path}:3: 3 fields but the header has 2 (['id', 'text']); check the delimiter")
    assert rows[3].message.startswith(f"{path}:5: 1 field but the header has 2")
    assert [r.values for r in rows if not r.problem] == [{"id": "1", "text": "ok"}, {"id": "3", "text": "fine"},
                                                          {"id": "5", "text": "last"}]  # nothing merged or shifted
    with pytest.raises(DataError, match=rf"^{path}:3: 3 fields but the header has 2"):
        list(Table(path).records())


# ------------------------------------------------------------------------------------------ quotes
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_quote_that_never_closes_names_the_line_where_its_row_starts(tmp_path, suffix):
    path = _file(tmp_path, f"a{suffix}", _table(suffix, "id,text", '1,"two', 'lines"', '2,"never closed', "3,c", "4,d"))
    rows = Table(path)
    it = iter(rows)
    first = next(it)
    assert (first.line, first.values) == (2, {"id": "1", "text": "two\nlines"})  # a quoted line break is data
    with pytest.raises(DataError, match=rf"^{path}:4: a quoted field in the row starting on this line never closes "
                                        r"\(the file ends inside it"):
        next(it)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_text_after_a_closing_quote_is_a_malformed_row(tmp_path, suffix):
    path = _file(tmp_path, f"a{suffix}", _table(suffix, "id,text", '1,"a"b', "2,ok"))
    rows = _rows(path)
    assert (rows[0].line, rows[0].reason) == (2, "bad quoting")
    assert rows[0].message.startswith(f"{path}:2: not valid {suffix[1:].upper()}: ")
    assert rows[1].values == {"id": "2", "text": "ok"}  # reading goes on at the next line


def test_a_field_past_the_limit_is_an_error_naming_its_row(tmp_path, monkeypatch):
    import mtllm.tables as tables

    monkeypatch.setattr(tables, "CSV_FIELD_LIMIT", 1000)
    import csv

    old = csv.field_size_limit(1000)
    try:
        path = _file(tmp_path, "a.csv", 'id,text\n1,ok\n2,"' + "x\n" * 2000)
        with pytest.raises(DataError, match=rf"^{path}:3: a quoted field .* never closes \(it grows past 1000"):
            list(Table(path))
    finally:
        csv.field_size_limit(old)


def test_quote_none_reads_quotes_as_text(tmp_path):
    import csv

    path = _file(tmp_path, "a.tsv", 'id\ttext\n1\t"quoted" word\n2\t"open\n')
    assert [r.values["text"] for r in Table(path, quoting=csv.QUOTE_NONE)] == ['"quoted" word', '"open']


# ------------------------------------------------------------------------------------------ line endings
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_crlf_is_normal_and_a_lone_cr_is_a_malformed_row(tmp_path, suffix):
    body = _table(suffix, "id,text", "1,a", "2,b\rc", '3,"quoted\rcr"', "4,d", end="\r\n")
    path = _file(tmp_path, f"a{suffix}", body)
    rows = _rows(path)
    assert [(r.line, r.reason) for r in rows] == [(2, None), (3, "carriage return in a field"), (4, None), (5, None)]
    assert rows[0].values == {"id": "1", "text": "a"}  # no \r left from the \r\n
    assert rows[2].values["text"] == "quoted\rcr"  # inside quotes it is data
    assert rows[1].message.startswith(f"{path}:3: a carriage return (\\r) that does not end the line")


def test_a_lone_cr_in_a_text_line_and_in_json_lines(tmp_path):
    txt = _file(tmp_path, "a.txt", "one\r\ntwo\rthree\nfour")
    rows = _rows(txt)
    assert [(r.line, r.values["text"], r.reason) for r in rows] == [
        (1, "one", None), (2, "two\rthree", "carriage return in a line"), (3, "four", None)]
    assert rows[1].message.startswith(f"{txt}:2: a carriage return (\\r) in the middle of the line")
    jsonl = _file(tmp_path, "a.jsonl", '{"text": "a"}\r\n{"text": "b"}\r{"text": "c"}\n{"text": "d"}\r\n')
    rows = _rows(jsonl)
    assert [(r.line, r.reason) for r in rows] == [(1, None), (2, "not valid JSON"), (3, None)]
    assert rows[1].message.startswith(f"{jsonl}:2: not valid JSON (Extra data at column 15)")


def test_old_mac_line_endings_in_the_header_are_an_error_of_the_file(tmp_path):
    path = _file(tmp_path, "mac.csv", "id,text\r1,a\r2,b\r")
    with pytest.raises(DataError, match=rf"^{path}:1: the header row is not valid CSV \(new-line character"):
        Table(path)


# ------------------------------------------------------------------------------------------ valid input
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
def test_multi_megabyte_fields_are_read_whole(tmp_path, suffix):
    big = "word " * 1_200_000  # 6 MB, far above csv's default field limit (131072)
    if suffix == ".jsonl":
        content = json.dumps({"id": 1, "text": big}) + "\n" + json.dumps({"id": 2, "text": "x"}) + "\n"
    elif suffix == ".txt":
        content = big + "\nx\n"
    else:
        content = f'id{SEP[suffix]}text\n1{SEP[suffix]}"{big}"\n2{SEP[suffix]}x\n'
    rows = _rows(_file(tmp_path, f"big{suffix}", content))
    assert [r.values["text"] for r in rows] == [big, "x"] and not any(r.problem for r in rows)
    assert CSV_FIELD_LIMIT > len(big)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt", ".csv", ".tsv"])
def test_unicode_line_separators_are_text_not_line_breaks(tmp_path, suffix):
    texts = ["a\u2028b", "c\u2029d", "e\u0085f", "g\x0bh\x0ci\x1cj"]
    if suffix == ".jsonl":  # raw and escaped (ensure_ascii) alike
        content = "".join(json.dumps({"text": t}, ensure_ascii=k % 2 == 0) + "\n" for k, t in enumerate(texts))
    elif suffix == ".txt":
        content = "".join(t + "\n" for t in texts)
    else:
        content = "text\n" + "".join(t + "\n" for t in texts)
    rows = _rows(_file(tmp_path, f"u{suffix}", content))
    assert [r.values["text"] for r in rows] == texts
    assert [r.line for r in rows] == ([1, 2, 3, 4] if suffix in (".jsonl", ".txt") else [2, 3, 4, 5])


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_lines_after_a_quoted_line_break_are_still_exact(tmp_path, suffix):
    path = _file(tmp_path, f"a{suffix}", _table(suffix, "id,text", '1,"a', "b", 'c"', "2,d,extra", '3,"e', 'f"'))
    rows = _rows(path)
    assert [(r.number, r.line) for r in rows] == [(1, 2), (2, 5), (3, 6)]
    assert rows[0].values["text"] == "a\nb\nc" and rows[2].values["text"] == "e\nf"
    assert rows[1].message.startswith(f"{path}:5: 3 fields but the header has 2")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_a_byte_order_mark_is_dropped(tmp_path, suffix):
    content = {".csv": "text\nhello\n", ".jsonl": '{"text": "hello"}\n', ".txt": "hello\n"}[suffix]
    path = _file(tmp_path, f"bom{suffix}", b"\xef\xbb\xbf" + content.encode())
    assert [r.values["text"] for r in Table(path)] == ["hello"]


# ------------------------------------------------------------------------------------------ invalid text
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt", ".json"])
def test_not_utf8_is_an_error_of_the_file_naming_line_and_byte(tmp_path, suffix):
    lines = {".csv": ["id,text", "1,ok", "2,caf\xe9"], ".tsv": ["id\ttext", "1\tok", "2\tcaf\xe9"],
             ".jsonl": ['{"text": "ok"}', "", '{"text": "caf\xe9"}'], ".txt": ["ok", "fine", "caf\xe9"],
             ".json": ['{"text": "ok"}', '{"text": "x"}', '{"text": "caf\xe9"}']}[suffix]
    path = _file(tmp_path, f"latin1{suffix}", "".join(line + "\n" for line in lines).encode("latin-1"))
    byte = lines[2].index("\xe9") + 1
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8 \(invalid byte 0xe9 at byte {byte} of the line, "
                                        rf"offset \d+ of the file\); re-encode the file as UTF-8, e.g. `iconv"):
        list(Table(path))


def test_a_lone_surrogate_escape_is_a_malformed_row(tmp_path):
    path = _file(tmp_path, "s.jsonl", '{"text": "ok"}\n{"text": "bad \\ud800 half"}\n{"text": "\\ud83d\\ude00"}\n'
                                      '{"\\udfff": "key"}\n')
    rows = _rows(path)
    assert [(r.line, r.reason) for r in rows] == [(1, None), (2, "not UTF-8 text"), (3, None), (4, "not UTF-8 text")]
    assert rows[2].values == {"text": "\U0001F600"}  # a whole pair is one character
    assert rows[1].values == {"text": "bad \ud800 half"}  # kept, to name the row (its id) only
    assert rows[1].message.startswith(f"{path}:2: a string with the lone surrogate \\ud800")
    array = _file(tmp_path, "s.json", '[{"text": "ok"}, {"text": "\\udc00"}]')
    rows = _rows(array)
    assert rows[1].reason == "not UTF-8 text" and rows[1].where == f"{array}: item 1"


# ------------------------------------------------------------------------------------------ JSON lines
def test_json_lines_that_are_not_objects_name_their_line(tmp_path):
    path = _file(tmp_path, "a.jsonl", '{"text": "a"}\n[1, 2]\n\n"str"\n{oops\n{"a": 1, "a": 2}\n42\n{"text": "z"}\n')
    rows = _rows(path)
    assert [(r.number, r.line, r.reason) for r in rows] == [
        (1, 1, None), (2, 2, "not a JSON object"), (3, 4, "not a JSON object"), (4, 5, "not valid JSON"),
        (5, 6, "duplicate key"), (6, 7, "not a JSON object"), (7, 8, None)]
    assert rows[1].message == (f'{path}:2: a list [1, 2], not a JSON object; write one object per line, e.g. '
                               f'{{"text": "..."}}')
    assert rows[5].message.startswith(f"{path}:7: an int 42, not a JSON object")
    assert rows[4].message == f"{path}:6: the key 'a' twice in one object; keep one"
    assert [r.values for r in Table(path, bare_strings="text") if r.line == 4] == [{"text": "str"}]


# ------------------------------------------------------------------------------------------ blank lines
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
def test_blank_lines(tmp_path, suffix):
    content = {".csv": "text\n\na\n\r\n\nb\n", ".tsv": "text\n\na\n\r\n\nb\n",
               ".jsonl": '\n{"text": "a"}\n  \t\r\n\n{"text": "b"}\n', ".txt": "\na\n  \n\nb\n"}[suffix]
    rows = _rows(_file(tmp_path, f"b{suffix}", content))
    if suffix == ".txt":  # every line is a row; a blank one has empty (or blank) text
        assert [(r.line, r.values["text"]) for r in rows] == [(1, ""), (2, "a"), (3, "  "), (4, ""), (5, "b")]
    else:  # no row, but counted as a line
        assert [(r.number, r.line, r.values["text"]) for r in rows] == [(1, 3 - (suffix == ".jsonl"), "a"),
                                                                         (2, 6 - (suffix == ".jsonl"), "b")]


# ------------------------------------------------------------------------------------------ headers, Parquet
@pytest.mark.parametrize("content, message", [
    ("", r":1: empty, no header row; a CSV file starts with a header row"),
    ("\n\n", r":1: empty, no header row"),
    ("id,text,id\n1,a,b\n", r":1: the header names the column 'id' twice"),
    ('"id,text\n1,a\n', r":1: a quoted field in the row starting on this line never closes"),
])
def test_header_problems_are_errors_of_the_file(tmp_path, content, message):
    path = _file(tmp_path, "h.csv", content)
    with pytest.raises(DataError, match=rf"^{path}{message}"):
        list(Table(path))


def test_missing_columns_name_the_header_line(tmp_path):
    path = _file(tmp_path, "h.csv", "\nid,sentence\n1,a\n")
    with pytest.raises(DataError, match=rf"^{path}:2: no column 'text' \(found \['id', 'sentence'\]\); set it"):
        Table(path).require(["id", "text"], "set it")
    jsonl = _file(tmp_path, "h.jsonl", '{"a": 1}\n')
    Table(jsonl).require(["text"], "set it")  # JSON has no header: a missing field is the caller's row by row


def test_parquet_is_streamed_by_batches_with_rows_numbered_from_1(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": list(range(10)), "text": [f"t{i}" for i in range(10)], "x": [1.0] * 10}), path,
                   row_group_size=4)
    table = Table(path, select=["text", "id"], batch_rows=3)
    assert table.columns == ["id", "text", "x"]
    rows = list(table)
    assert [r.number for r in rows] == list(range(1, 11)) and rows[0].values == {"id": 0, "text": "t0"}
    assert rows[9].where == f"{path}: row 10" and rows[9].line is None
    with pytest.raises(DataError, match=rf"^{path}: no column 'label' \(found \['id', 'text', 'x'\]\); fix"):
        table.require(["label"], "fix")
    bad = _file(tmp_path, "bad.parquet", b"PAR1 not parquet")
    with pytest.raises(DataError, match=rf"^{bad}: not a readable Parquet file"):
        Table(bad)


def test_unsupported_types_are_named(tmp_path):
    with pytest.raises(DataError, match=r"x\.xlsx: unsupported file type '\.xlsx'; use one of \.csv, \.tsv"):
        Table(tmp_path / "x.xlsx", formats=(".csv", ".tsv"))


# ------------------------------------------------------------------------------------------ the callers
def test_every_caller_gives_the_readers_message(tmp_path, monkeypatch):
    """Task files, built-in task data, stage-1 texts and predict/encode inputs read the same file the same way."""
    import mtllm.tasks as T
    from mtllm.tasks.texts import iter_texts
    from mtllm.inference import iter_rows
    from mtllm.tasks import TaskDataError, load_examples

    monkeypatch.delenv(T.DATA_DIR_ENV, raising=False)
    folder = tmp_path / "sib200" / "eng_Latn"
    folder.mkdir(parents=True)
    path = _file(folder, "test.tsv", "index_id\tcategory\ttext\n1\thealth\tok\n2\thealth\tsplit\there\n")
    expected = f"{path}:3: 4 fields but the header has 3"
    with pytest.raises(TaskDataError, match=f"^{expected}"):
        load_examples("sib200", "eng_Latn", "test", tmp_path)
    with pytest.raises(DataError, match=f"^{expected}"):
        list(iter_texts([str(path)]))
    rows = list(iter_rows(path, text_column="text", id_column="index_id"))
    assert rows[0].problem is None and rows[1].text is None and rows[1].id == "2"
    reason, column, detail = rows[1].problem
    assert (reason, column) == ("too many fields", "") and detail.startswith("line 3: 4 fields but the header has 3")


def test_stage1_text_paragraphs_and_lines(tmp_path):
    from mtllm.tasks.texts import iter_texts

    paragraphs = _file(tmp_path, "p.txt", "first line\nstill first\n\n  \nsecond\u2028same line\r\n")
    assert list(iter_texts([str(paragraphs)])) == ["first line\nstill first", "second\u2028same line"]
    lines = _file(tmp_path, "l.txt", "one\ntwo\u0085half\n")
    assert list(iter_texts([str(lines)])) == ["one", "two\u0085half"]
    broken = _file(tmp_path, "b.txt", "one\ntwo\rthree\n")
    with pytest.raises(DataError, match=rf"^{broken}:2: a carriage return"):
        list(iter_texts([str(broken)]))


# ------------------------------------------------------------------------------------------ mtllm predict
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    from mtllm import LoraSettings, MTLLMModel

    torch.manual_seed(0)
    model = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                            max_seq_length=64)
    model.set_head("classification", ["neg", "pos"])
    out = tmp_path_factory.mktemp("tables") / "model"
    model.save_pretrained(out)
    return out


def _predict(*argv) -> int:
    from mtllm.cli import main

    return main(["predict", *map(str, argv), "--progress", "false"])


def test_predict_skips_a_malformed_row_with_its_reason(model_dir, tmp_path, capsys):
    src = _file(tmp_path, "in.csv", "id,text\na,the cat sleeps\nb,too,many\nc,a dog runs\n")
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id",
                    "--output", out) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["id"] for g in got] == ["a", "b", "c"]  # one output row per input row, in order
    assert [g["skipped"] for g in got] == [None, "too many fields", None]
    assert got[1]["label"] is None and got[0]["label"] in ("neg", "pos") and got[2]["label"] in ("neg", "pos")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == {"too many fields": 1} and summary["done"] == 2


def test_predict_skips_a_lone_surrogate_before_any_model_work(model_dir, tmp_path, capsys):
    src = _file(tmp_path, "in.jsonl", '{"text": "the cat"}\n{"text": "half \\ud800"}\n[1]\n{"text": "a dog"}\n')
    out = tmp_path / "p.csv"
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--output", out) == 0
    import csv

    with open(out, newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert [(g["id"], g["skipped"]) for g in got] == [("1", ""), ("2", "not UTF-8 text"), ("3", "not a JSON object"),
                                                       ("4", "")]


def test_predict_fail_stops_at_a_malformed_row_in_one_line_before_any_model_work(model_dir, tmp_path, monkeypatch,
                                                                                 capsys):
    from mtllm import MTLLMModel

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the bad row was reported")

    monkeypatch.setattr(MTLLMModel, "from_pretrained", no_model)
    src = _file(tmp_path, "in.tsv", "id\ttext\na\tthe cat\n\nb\ttoo\tmany\nc\tdog\n")
    out = tmp_path / "p.jsonl"
    assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--id_column", "id",
                    "--output", out, "--on_bad_row", "fail") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (f"{src}: row 2 (id 'b'): too many fields (line 4: 3 fields but the header has 2 (['id', 'text']); check "
            f"the delimiter") in err
    assert "rerun with --on_bad_row skip" in err and not out.exists()


def test_predict_errors_of_the_whole_file_in_either_mode(model_dir, tmp_path, capsys):
    src = _file(tmp_path, "in.csv", 'id,text\na,the cat\nb,"never closed\nc,dog\n')
    for mode in ("skip", "fail"):
        assert _predict("--model", model_dir, "--input", src, "--lang", "eng_Latn", "--output",
                        tmp_path / f"{mode}.jsonl", "--on_bad_row", mode) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines()[-1].endswith(f"{src}:3: a quoted field in the row starting on this line never closes "
                                             f"(the file ends inside it: it would swallow the rest of the file into "
                                             f"one field); close the quote, or double a quote that is text (\"\")")
