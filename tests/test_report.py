"""Evaluation report (mtllm.evaluation.report): results.json round trip, the markdown table, averages,
merging, the plot and validation."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from mtllm.evaluation import EvalResults, format_summary_lines, read_results, write_results
from mtllm.evaluation.report import (DPI, RESULTS_JSON, RESULTS_MD, RESULTS_PNG, plot_figure_size, plot_results,
                                     render_markdown, sort_languages)


def _results(**kw) -> EvalResults:
    base = dict(
        task="sib200", metric="accuracy",
        systems={"mtllm": {"eng_Latn": 0.9, "fra_Latn": 0.8, "swh_Latn": 0.6},
                 "llm": {"eng_Latn": 0.92, "fra_Latn": 0.7}},
        n_examples={"eng_Latn": 204, "fra_Latn": 204, "swh_Latn": 204},
        train_lang="eng_Latn",
        notes=["the pocket encoder is multilingual-e5-small, not an MT encoder"],
        meta={"seconds": {"mtllm": 3.25, "llm": 1.5}, "split": "test", "majority_baseline": 0.25})
    base.update(kw)
    return EvalResults(**base)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _table(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------- averages
def test_averages():
    r = _results()
    assert r.averages() == pytest.approx({"mtllm": (0.9 + 0.8 + 0.6) / 3, "llm": 0.81})
    assert r.common_languages() == ["eng_Latn", "fra_Latn"]
    assert r.averages_common() == pytest.approx({"mtllm": 0.85, "llm": 0.81})
    assert r.averages_non_english() == pytest.approx({"mtllm": 0.7, "llm": 0.7})
    assert r.languages == ["eng_Latn", "fra_Latn", "swh_Latn"]
    # another train language, none, and a system without languages
    r2 = _results(train_lang="fra_Latn", systems={**r.systems, "encoder": {}})
    assert r2.averages_non_english()["mtllm"] == pytest.approx(0.75)
    assert r2.averages()["encoder"] is None and r2.common_languages() == []
    assert r2.averages_common() == {"mtllm": None, "llm": None, "encoder": None}
    assert _results(train_lang=None).averages_non_english() == r.averages()
    assert EvalResults(task="t").averages() == {} and EvalResults(task="t").common_languages() == []


def test_chance_level():
    assert _results().chance_level() == (0.25, "majority class")
    assert _results(meta={"majority_baseline": None, "chance": 0.1}).chance_level() == (0.1, "chance")
    assert _results(meta={}).chance_level() is None


# ----------------------------------------------------------------------------- files
def test_write_read_round_trip(tmp_path):
    r = _results()
    paths = write_results(r, tmp_path / "out")
    assert set(paths) == {"json", "markdown", "plot"}
    assert paths["json"] == tmp_path / "out" / RESULTS_JSON and paths["markdown"].name == RESULTS_MD
    assert paths["plot"].name == RESULTS_PNG and all(p.exists() for p in paths.values())
    assert not list((tmp_path / "out").glob("*.tmp"))
    data = json.loads(paths["json"].read_text())
    assert data["task"] == "sib200" and data["metric"] == "accuracy"
    assert data["systems"] == r.systems and data["n_examples"] == r.n_examples
    assert data["averages"] == pytest.approx({"mtllm": 0.7666666, "llm": 0.81})
    assert data["averages_common"] == pytest.approx({"mtllm": 0.85, "llm": 0.81})
    assert data["averages_non_english"] == pytest.approx({"mtllm": 0.7, "llm": 0.7})
    assert data["languages_common"] == ["eng_Latn", "fra_Latn"]
    assert data["notes"] == r.notes and data["train_lang"] == "eng_Latn"
    assert data["seconds"] == {"mtllm": 3.25, "llm": 1.5} and data["split"] == "test"    # meta at the top level
    back = read_results(tmp_path / "out")
    assert back == r
    assert read_results(paths["json"]) == r
    assert EvalResults.from_dict(r.to_dict()) == r
    # writing again replaces the files
    r.systems["mtllm"]["deu_Latn"] = 0.5
    write_results(EvalResults.from_dict(r.to_dict()), tmp_path / "out", plot=False)
    assert read_results(tmp_path / "out").systems["mtllm"]["deu_Latn"] == 0.5


def test_numpy_values_and_json_safe_meta(tmp_path):
    import torch

    r = _results(systems={"mtllm": {"eng_Latn": np.float32(0.5), "fra_Latn": np.float64(1.0),
                                    "deu_Latn": torch.tensor(0.25), "swh_Latn": np.array(0.75)}},
                 n_examples={"eng_Latn": np.int64(10), "fra_Latn": torch.tensor(3)},
                 meta={"array": np.array([1, 2]), "scalar": np.float64(0.5), "path": tmp_path, "tags": {"b", "a"}})
    assert all(type(v) is float for v in r.systems["mtllm"].values())
    assert r.systems["mtllm"]["deu_Latn"] == 0.25 and r.systems["mtllm"]["swh_Latn"] == 0.75
    assert r.n_examples == {"eng_Latn": 10, "fra_Latn": 3} and type(r.n_examples["fra_Latn"]) is int
    paths = write_results(r, tmp_path, plot=False)
    assert "plot" not in paths and not (tmp_path / RESULTS_PNG).exists()
    data = json.loads(paths["json"].read_text())
    assert data["array"] == [1, 2] and data["scalar"] == 0.5 and data["path"] == str(tmp_path)
    assert data["tags"] == ["a", "b"]
    with pytest.raises(ValueError, match="JSON"):
        write_results(_results(meta={"bad": float("nan")}), tmp_path / "nan", plot=False)
    with pytest.raises(TypeError, match="JSON cannot store"):
        write_results(_results(meta={"bad": object()}), tmp_path / "obj", plot=False)


def test_read_rejects_other_json(tmp_path):
    (tmp_path / "results.json").write_text('{"foo": 1}')
    with pytest.raises(ValueError, match="task"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"task": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_results(tmp_path)


# ----------------------------------------------------------------------------- markdown
def test_markdown_table():
    md = render_markdown(_results())
    lines = md.splitlines()
    assert lines[0] == "# sib200: accuracy by language"
    assert "the pocket encoder is multilingual-e5-small, not an MT encoder" in md
    assert "majority class level is 25.0%" in md
    rows = _table(md)
    assert rows["Language"] == ["n", "mtllm", "llm"]
    assert rows["eng_Latn"] == ["204", "90.0", "**92.0**"]
    assert rows["fra_Latn"] == ["204", "**80.0**", "70.0"]
    assert rows["swh_Latn"] == ["204", "60.0", "–"]                 # missing cell; a lone value is not bold
    assert rows["Languages evaluated"] == ["", "3", "2"]
    # averages last; over different language sets they are not compared (no bold), over common ones they are
    table_lines = [line for line in lines if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table_lines[-3:]] == [
        "| **Average (each system's languages)**", "| **Average (2 languages common to all)**",
        "| **Average (non-English, without `eng_Latn`)**"]
    assert rows["**Average (each system's languages)**"] == ["", "76.7", "81.0"]
    assert rows["**Average (2 languages common to all)**"] == ["", "**85.0**", "81.0"]
    assert rows["**Average (non-English, without `eng_Latn`)**"] == ["", "70.0", "70.0"]
    assert table_lines.index(next(line for line in table_lines if line.startswith("| swh_Latn"))) < len(table_lines) - 4


def test_markdown_ties_missing_n_and_escaping():
    r = EvalResults(task="belebele", systems={"a|b": {"x": 0.5004, "y": 0.3}, "c": {"x": 0.4996, "y": 0.3}},
                    n_examples={"x": 900}, train_lang="eng_Latn")
    rows = _table(render_markdown(r))
    assert rows["Language"] == ["n", "a\\|b", "c"]
    assert rows["x"] == ["900", "**50.0**", "**50.0**"]              # equal at the shown precision: both bold
    assert rows["y"] == ["–", "**30.0**", "**30.0**"]
    assert rows["**Average (each system's languages)**"] == ["", "**40.0**", "**40.0**"]   # same languages
    assert rows["**Average (non-English, without `eng_Latn`)**"] == ["", "**40.0**", "**40.0**"]
    assert "Notes" not in render_markdown(r)
    md = render_markdown(EvalResults(task="t", train_lang=None))
    assert "Average (0 languages" in md and "non-English" not in md


# ----------------------------------------------------------------------------- summary
def test_summary_lines():
    lines = format_summary_lines(_results(systems={**_results().systems, "translate_test": {}}))
    assert lines == ["mtllm           avg 0.767 over 3 langs (non-English 0.700)",
                     "llm             avg 0.810 over 2 langs (non-English 0.700)",
                     "translate_test  no languages evaluated"]
    assert format_summary_lines(_results(train_lang="fra_Latn"))[0] == \
        "mtllm  avg 0.767 over 3 langs (without fra_Latn 0.750)"
    assert format_summary_lines(_results(systems={"x": {"swh_Latn": 0.5}})) == ["x  avg 0.500 over 1 langs"]
    assert format_summary_lines(EvalResults(task="t")) == ["t: no system evaluated"]


# ----------------------------------------------------------------------------- merge
def test_merge_adds_systems_and_languages():
    a = _results(systems={"mtllm": {"eng_Latn": 0.9}}, n_examples={"eng_Latn": 204}, notes=["n1"],
                 meta={"seconds": {"mtllm": 1.0}, "split": "test"})
    b = _results(systems={"mtllm": {"fra_Latn": 0.8}, "llm": {"eng_Latn": 0.92}}, n_examples={"fra_Latn": 204},
                 notes=["n1", "n2"], meta={"seconds": {"llm": 2.0}, "model": "m"})
    m = a.merge(b)
    assert m.systems == {"mtllm": {"eng_Latn": 0.9, "fra_Latn": 0.8}, "llm": {"eng_Latn": 0.92}}
    assert m.n_examples == {"eng_Latn": 204, "fra_Latn": 204}
    assert m.notes == ["n1", "n2"]
    assert m.meta == {"seconds": {"mtllm": 1.0, "llm": 2.0}, "split": "test", "model": "m"}
    assert a.systems == {"mtllm": {"eng_Latn": 0.9}}                  # the inputs are untouched
    assert a.merge(a) == a


def test_merge_conflicts():
    a = _results(systems={"mtllm": {"eng_Latn": 0.9}})
    b = _results(systems={"mtllm": {"eng_Latn": 0.8}})
    with pytest.raises(ValueError, match="mtllm/eng_Latn differs"):
        a.merge(b)
    assert a.merge(b, overwrite=True).systems["mtllm"]["eng_Latn"] == 0.8
    with pytest.raises(ValueError, match="n_examples"):
        a.merge(_results(n_examples={"eng_Latn": 1}))
    with pytest.raises(ValueError, match="tasks"):
        a.merge(_results(task="belebele"))
    with pytest.raises(ValueError, match="metrics"):
        a.merge(_results(metric="f1"))
    with pytest.raises(ValueError, match="trained on"):
        a.merge(_results(train_lang="fra_Latn"))
    with pytest.raises(TypeError, match="can only merge EvalResults, not dict"):
        a.merge({"task": "sib200"})


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1.5, -0.01, "0.5", None, True, [0.5],
                                   np.array([0.5, 0.5]), np.float64("nan")])
def test_bad_accuracies_rejected(value):
    with pytest.raises(ValueError, match="mtllm/eng_Latn"):
        EvalResults(task="t", systems={"mtllm": {"eng_Latn": value}})


def test_percentages_get_a_hint_and_bounds_are_inclusive():
    with pytest.raises(ValueError, match="divide by 100"):
        EvalResults(task="t", systems={"mtllm": {"eng_Latn": 61.2}})
    assert EvalResults(task="t", systems={"m": {"a": 0, "b": 1}}).systems == {"m": {"a": 0.0, "b": 1.0}}


@pytest.mark.parametrize("kwargs, match", [
    (dict(systems={"mtllm": {3: 0.5}}), "language code"),
    (dict(systems={"mtllm": {"": 0.5}}), "language code"),
    (dict(systems={"": {"eng_Latn": 0.5}}), "system name"),
    (dict(systems={"mtllm": [0.5]}), "dict"),
    (dict(systems=[("mtllm", {})]), "dict"),
    (dict(n_examples={"eng_Latn": -1}), "non-negative integer"),
    (dict(n_examples={"eng_Latn": 2.5}), "non-negative integer"),
    (dict(n_examples={"eng_Latn": True}), "non-negative integer"),
    (dict(n_examples={5: 3}), "language code"),
    (dict(notes="a note"), "list of strings"),
    (dict(notes=[1]), "list of strings"),
    (dict(meta={"averages": {}}), "reserved"),
    (dict(meta={"task": "x"}), "reserved"),
    (dict(task=""), "task"),
    (dict(train_lang=5), "train_lang"),
])
def test_bad_fields_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _results(**kwargs)


# ----------------------------------------------------------------------------- plot
def _many(n_langs: int, n_systems: int = 3) -> EvalResults:
    rng = np.random.default_rng(n_langs)
    langs = [f"l{i:03d}_Latn" for i in range(n_langs)]
    systems = {f"sys{j}": {lang: float(rng.random()) for lang in langs if rng.random() < 0.9} for j in range(n_systems)}
    return EvalResults(task="belebele", systems=systems, n_examples={lang: 900 for lang in langs},
                       meta={"chance": 0.25})


def test_plot_is_a_png_whose_width_scales_with_the_languages(tmp_path):
    sizes = {}
    for n in (3, 60, 205):
        path = write_results(_many(n), tmp_path / str(n))["plot"]
        sizes[n] = _png_size(path)
        w_in, h_in = plot_figure_size(len(read_results(tmp_path / str(n)).languages))
        assert sizes[n] == (round(w_in * DPI), round(h_in * DPI))
    assert sizes[3][0] < sizes[60][0] < sizes[205][0]
    assert sizes[3][1] == sizes[60][1] == sizes[205][1]
    # at least 0.15 inch per language label once there are many languages
    assert sizes[205][0] - sizes[60][0] >= 0.15 * DPI * 145
    assert plot_figure_size(10_000)[0] == plot_figure_size(100_000)[0]      # capped


def test_plot_options_and_edge_cases(tmp_path):
    r = _results()
    plots = {"default.png": (r, {}),
             "by_lang.png": (r, dict(sort_by="lang", chance=0.5, chance_label="majority", title="T")),
             "key.png": (r, dict(sort_by=lambda lang: lang[::-1])),
             "empty.png": (EvalResults(task="empty"), {}),
             "nolang.png": (EvalResults(task="t", systems={"a": {}}, n_examples={"x": 1}), {})}
    for name, (res, kwargs) in plots.items():
        path = plot_results(res, tmp_path / name, **kwargs)
        assert path == tmp_path / name
        w_in, h_in = plot_figure_size(len(res.languages))  # a PNG of the documented size, whatever the options
        assert _png_size(path) == (round(w_in * DPI), round(h_in * DPI)), name
    # the options change what is drawn
    pixels = {name: (tmp_path / name).read_bytes() for name in plots}
    assert len({pixels["default.png"], pixels["by_lang.png"], pixels["key.png"]}) == 3
    with pytest.raises(ValueError, match="sort_by"):
        plot_results(r, tmp_path / "bad.png", sort_by="nope")
    assert not (tmp_path / "bad.png").exists()


def test_language_order():
    r = _results()
    assert sort_languages(r) == ["eng_Latn", "fra_Latn", "swh_Latn"]            # by mtllm, best first
    assert sort_languages(r, "llm") == ["eng_Latn", "fra_Latn", "swh_Latn"]     # swh_Latn missing: last
    r = _results(systems={"mtllm": {"a": 0.2, "b": 0.9}, "llm": {"c": 0.1, "d": 0.5, "a": 0.3}}, n_examples={})
    assert sort_languages(r) == ["b", "a", "d", "c"]
    assert sort_languages(r, "lang") == ["a", "b", "c", "d"]
    assert sort_languages(r, lambda lang: -ord(lang)) == ["d", "c", "b", "a"]
    assert math.isclose(r.averages()["llm"], 0.3)
