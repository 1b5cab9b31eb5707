"""mtllm.langid: the mapping of heliport's labels to FLORES-200 codes (no heliport needed), the error
without it, and identification of real SIB-200 sentences (skipped without heliport or the data)."""
from __future__ import annotations

import csv
import importlib.util
import sys

import pytest

from mtllm import langid
from mtllm.data.languages import FLORES200
from mtllm.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

SIB = SHARED_DATA / "sib200"


# ------------------------------------------------------------------------------------------- mapping
@pytest.mark.parametrize("label, text, code", [
    ("swa", "Habari ya asubuhi", "swh_Latn"),          # macrolanguage -> FLORES' individual language
    ("ara", "صباح الخير يا صديقي", "arb_Arab"),
    ("msa", "Selamat pagi, apa kabar?", "ind_Latn"),    # Indonesian and Malay share heliport's label
    ("amh", "እንደምን አደርክ", "amh_Ethi"),               # the one code with that prefix
    ("cmn", "我们今天去公园散步吧。", "zho_Hans"),         # simplified characters
    ("cmn", "我們今天去公園散步吧。", "zho_Hant"),         # traditional characters
    ("cmn", "佢哋今日去咗公園。", "yue_Hant"),             # written Cantonese
    ("jpn", "私は学校へ行きます。", "jpn_Jpan"),
    ("jpn", "我們今天去公園散步吧。", "zho_Hant"),         # kanji without kana is Chinese
    ("hbs", "Добро јутро, како си?", "srp_Cyrl"),
    ("hbs", "Dobro jutro, kako si?", "hrv_Latn"),
    ("aze", "Sabahınız xeyir", "azj_Latn"),
    ("aze", "سیز نئجه سیز", "azb_Arab"),
    ("sat", "ᱥᱟᱱᱛᱟᱲᱤ ᱯᱟᱹᱨᱥᱤ", "sat_Olck"),
    ("hin", "नमस्ते दोस्त", "hin_Deva"),
    ("uig", "ياخشىمۇسىز", "uig_Arab"),
    ("bre", "Demat deoc'h", "und"),                    # a language FLORES-200 lacks
    ("ilo", "ⵜⴰⵎⴰⵣⵉⵖⵜ ⵜⴰⵏⴰⵡⴰⵢⵜ", "und"),                 # no code of the label in the text's script
    ("zxx", "1234", "und"),
])
def test_heliport_labels_map_to_flores_codes_by_the_texts_script(label, text, code):
    assert langid.to_flores(label, text) == code
    assert code == "und" or code in FLORES200


@pytest.mark.parametrize("text, script", [
    ("Hello there", "Latn"), ("Привет всем", "Cyrl"), ("我们的国家", "Hans"), ("我們的國家", "Hant"),
    ("日本語のテキスト", "Jpan"), ("한국어 문장", "Hang"), ("ⵜⴰⵎⴰⵣⵉⵖⵜ", "Tfng"), ("ᱥᱟᱱᱛᱟᱲᱤ", "Olck"),
    ("1234 !?", None), ("", None), ("abc ДОБРОЕ УТРО ВСЕМ", "Cyrl"),
])
def test_dominant_script(text, script):
    assert langid.dominant_script(text) == script


def test_without_heliport_a_config_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "heliport", None)  # import heliport -> ImportError
    langid._identifier.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'mtllm\[langid\]'"):
            langid.identify(["Habari ya asubuhi"])
    finally:
        langid._identifier.cache_clear()


def test_limits_name_real_codes():
    assert set(langid.LANGID_LIMITS) <= set(FLORES200)
    assert {"hau_Latn", "yue_Hant", "zsm_Latn", "ace_Arab", "uzn_Latn", "dzo_Tibt"} <= set(langid.LANGID_LIMITS)


# ------------------------------------------------------------------------------------------- heliport
needs_heliport = pytest.mark.skipif(importlib.util.find_spec("heliport") is None,
                                    reason="heliport is not installed: pip install 'mtllm[langid]'")


def _sentences(code: str, n: int = 6) -> list[str]:
    path = SIB / code / "test.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    with open(path, encoding="utf-8", newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh, delimiter="\t")][:n]


@needs_heliport
@pytest.mark.parametrize("code", ["swh_Latn", "eng_Latn", "zho_Hans", "zho_Hant", "amh_Ethi", "rus_Cyrl", "sat_Olck",
                                  "yor_Latn", "ace_Latn", "ckb_Arab"])
def test_identifies_real_sentences(code):
    results = langid.identify(_sentences(code))
    assert [c for c, _ in results] == [code] * len(results)
    confidences = [p for _, p in results]
    assert all(0.3 < p <= 1.0 for p in confidences)  # short texts with loanwords score lower
    assert sum(confidences) / len(confidences) > 0.6  # close relatives (rus/bul/ukr) share the rest


@needs_heliport
def test_documented_confusions_hold():
    assert {c for c, _ in langid.identify(_sentences("yue_Hant"))} == {"zho_Hant"}  # standard written Chinese
    assert {c for c, _ in langid.identify(_sentences("dzo_Tibt"))} == {"bod_Tibt"}
    hausa = langid.identify(_sentences("hau_Latn"))                                   # not in heliport's labels
    assert all(c != "hau_Latn" for c, _ in hausa) and max(p for _, p in hausa) < 0.9


@needs_heliport
def test_top_k_single_text_and_empty_text():
    text = _sentences("swh_Latn", 1)[0]
    best = langid.identify(text)
    assert best[0] == "swh_Latn" and isinstance(best[1], float)
    top = langid.identify([text, "   "], k=3)
    assert len(top[0]) == 3 and top[0][0] == best
    assert [p for _, p in top[0]] == sorted((p for _, p in top[0]), reverse=True)
    assert sum(p for _, p in top[0]) <= 1.0 + 1e-9 and len({c for c, _ in top[0]}) == 3
    assert top[1] == [("und", 0.0)]
    with pytest.raises(ValueError, match="k must be"):
        langid.identify([text], k=0)
    with pytest.raises(TypeError, match="takes strings"):
        langid.identify([text, None])


@needs_heliport
def test_supported_languages():
    codes = langid.supported_languages()
    assert {"swh_Latn", "zho_Hans", "zho_Hant", "yue_Hant", "sat_Olck", "ind_Latn"} <= codes
    assert not {"hau_Latn", "zsm_Latn", "bos_Latn", "wol_Latn"} & codes
    assert codes <= set(FLORES200)


@needs_heliport
def test_evaluate_reads_tsv_files_with_the_one_table_reader(tmp_path):
    """langid.evaluate (docs/langid.md's report) on DATA/<code>/<split>.tsv: accuracy per language, and a
    malformed file is the table reader's one-line error naming path:line, not a csv traceback."""
    for code, texts in {"eng_Latn": ["The weather is lovely today.", "I will call my sister tomorrow."],
                        "fra_Latn": ["Il fait très beau aujourd'hui.", "J'appellerai ma sœur demain."]}.items():
        (tmp_path / code).mkdir()
        (tmp_path / code / "test.tsv").write_text("index_id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in
                                                                              enumerate(texts)), encoding="utf-8")
    report = langid.evaluate(str(tmp_path))
    assert {code: (r["n"], r["accuracy"]) for code, r in report.items()} == {"eng_Latn": (2, 1.0),
                                                                            "fra_Latn": (2, 1.0)}
    with pytest.raises(DataError, match="no column 'sentence'"):
        langid.evaluate(str(tmp_path), column="sentence")
    (tmp_path / "eng_Latn" / "test.tsv").write_text('index_id\ttext\n0\t"unclosed quote\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.tsv:2"):
        langid.evaluate(str(tmp_path), languages=["eng_Latn"])
