"""mtllm.data.languages: the code table, validation with suggestions, XLM-R coverage and encoder fallbacks."""
from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mtllm.data import languages as L
from mtllm.data.languages import (ENCODER_FALLBACKS, FLORES200, FLORES200_CODES, NLLB_CODES, SIB200_CODES,
                             XLMR_LANGUAGES, LanguageFallbackWarning, UnknownLanguageError,
                             UnsupportedLanguageError, resolve_encoder_lang, validate_lang)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------------------------------------ the table
def test_nllb_codes_match_the_nllb_tokenizer():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    assert len(NLLB_CODES) == 202
    assert NLLB_CODES == frozenset(FAIRSEQ_LANGUAGE_CODES)
    assert list(L._NLLB) == list(FAIRSEQ_LANGUAGE_CODES)  # literal copy, same order


def test_table_is_literal_data_without_transformers():
    """The table is data in the module: mtllm.data.languages imports only the standard library and the
    project's exceptions (which import only the standard library themselves)."""
    import mtllm.errors

    def imports(module):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert {m.split(".")[0] for m in imports(L) - {"mtllm.errors"}} <= stdlib, imports(L)
    assert {m.split(".")[0] for m in imports(mtllm.errors)} <= stdlib, imports(mtllm.errors)


def test_flores_and_sib_sets():
    assert len(FLORES200_CODES) == 204
    assert len(SIB200_CODES) == 205
    assert SIB200_CODES - FLORES200_CODES == {"nqo_Nkoo"}
    assert SIB200_CODES - NLLB_CODES == {"arb_Latn", "min_Arab", "sat_Olck", "nqo_Nkoo"}
    assert NLLB_CODES - SIB200_CODES == {"sat_Beng"}  # NLLB's label for the Ol Chiki Santali data
    assert SIB200_CODES | NLLB_CODES <= set(FLORES200)


def test_every_code_is_well_formed_and_named():
    for code, name in FLORES200.items():
        lang, script = code.split("_")
        assert len(lang) == 3 and lang.islower() and len(script) == 4 and script.istitle(), code
        assert name and name.strip() == name, code
    assert len({c.lower() for c in FLORES200}) == len(FLORES200)


def test_task_languages_outside_nllb_are_in_the_table():
    for code in ("nij_Latn", "bbc_Latn", "mad_Latn", "bzd_Latn", "cni_Latn", "hch_Latn", "nah_Latn",
                 "oto_Latn", "shp_Latn", "tar_Latn", "uig_Cyrl", "hin_Latn", "urd_Latn"):
        assert validate_lang(code) == code
        assert code not in NLLB_CODES


@pytest.mark.skipif(not (SHARED_DATA / "sib200").is_dir(), reason="no local SIB-200 data")
def test_every_local_sib200_folder_is_a_valid_code():
    folders = [p.name for p in (SHARED_DATA / "sib200").iterdir() if p.is_dir()]
    assert folders
    for name in folders:
        assert validate_lang(name) == name
        assert name in SIB200_CODES


# ------------------------------------------------------------------------------------------ validate_lang
def test_exact_and_normalised_codes():
    assert validate_lang("eng_Latn") == "eng_Latn"
    assert validate_lang("ENG_latn") == "eng_Latn"
    assert validate_lang("eng-Latn") == "eng_Latn"
    assert validate_lang(" zho_hant ") == "zho_Hant"
    assert validate_lang("SAT_OLCK") == "sat_Olck"


@pytest.mark.parametrize("query, expected", [
    ("swa", "swh_Latn"), ("greek", "ell_Grek"), ("ell_Latn", "ell_Grek"), ("Greek", "ell_Grek"),
    ("el", "ell_Grek"), ("sw", "swh_Latn"), ("french", "fra_Latn"), ("ngaju", "nij_Latn"), ("eng_Ltn", "eng_Latn"),
    ("uyghur", "uig_Arab"), ("uzb", "uzn_Latn"), ("fas", "pes_Arab"),
])
def test_unknown_codes_raise_with_close_matches(query, expected):
    with pytest.raises(UnknownLanguageError) as info:
        validate_lang(query)
    msg = str(info.value)
    assert repr(query) in msg
    assert expected in msg
    assert "mtllm.data.languages.FLORES200" in msg
    assert L.suggest_languages(query)[0] == expected
    assert len(L.suggest_languages(query)) <= 3


def test_unknown_language_error_is_a_value_error_and_nonsense_has_no_suggestions():
    assert issubclass(UnknownLanguageError, ValueError)
    with pytest.raises(ValueError, match="unknown language code 'qqq_Zzzz'") as info:
        validate_lang("qqq_Zzzz")
    assert "Did you mean" not in str(info.value)


def test_non_string_code_is_a_type_error():
    with pytest.raises(TypeError, match="string"):
        validate_lang(None)  # type: ignore[arg-type]


def test_language_name():
    assert L.language_name("ELL_grek") == "Greek"
    assert L.language_name("nij_Latn") == "Ngaju"


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(FLORES200)), st.sampled_from(["lower", "upper", "swapcase", "hyphen"]))
def test_case_and_separator_variants_normalise(code, how):
    variant = code.replace("_", "-") if how == "hyphen" else getattr(code, how)()
    assert validate_lang(variant) == code


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=12))
def test_arbitrary_strings_validate_or_raise_unknown(text):
    try:
        assert validate_lang(text) in FLORES200
    except UnknownLanguageError as err:
        assert "mtllm.data.languages.FLORES200" in str(err)


# ------------------------------------------------------------------------------------------ XLM-R coverage
def test_xlmr_languages():
    assert XLMR_LANGUAGES <= set(FLORES200)
    assert len(XLMR_LANGUAGES) == 94  # CC100's 100 minus br, fy, la, ta_rom, te_rom, my_zaw
    for code in ("eng_Latn", "ell_Grek", "swh_Latn", "uig_Arab", "zho_Hans", "zho_Hant", "hin_Latn", "urd_Latn",
                 "ben_Latn", "als_Latn", "plt_Latn", "khk_Cyrl", "gaz_Latn", "pbt_Arab", "ydd_Hebr", "kmr_Latn"):
        assert code in XLMR_LANGUAGES, code
    for code in ("ace_Latn", "nij_Latn", "bbc_Latn", "quy_Latn", "arz_Arab", "prs_Arab", "azb_Arab", "ckb_Arab",
                 "uig_Cyrl", "yue_Hant"):
        assert code not in XLMR_LANGUAGES, code


# ------------------------------------------------------------------------------------------ fallbacks
def test_covered_or_unrestricted_languages_pass_through_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_encoder_lang("nij_Latn", None) == "nij_Latn"
        assert resolve_encoder_lang("eng_Latn", NLLB_CODES) == "eng_Latn"
        assert resolve_encoder_lang("ENG_latn", ["eng_Latn"]) == "eng_Latn"


@pytest.mark.parametrize("code, target", [
    ("nij_Latn", "ind_Latn"), ("bbc_Latn", "ind_Latn"), ("mad_Latn", "ind_Latn"), ("bzd_Latn", "spa_Latn"),
    ("tar_Latn", "spa_Latn"), ("sat_Olck", "sat_Beng"), ("uig_Cyrl", "uig_Arab"),
])
def test_documented_fallbacks_warn(code, target):
    with pytest.warns(LanguageFallbackWarning, match=f"fed to the encoder as '{target}'") as rec:
        assert resolve_encoder_lang(code, NLLB_CODES) == target
    assert code in str(rec[0].message)
    assert issubclass(LanguageFallbackWarning, UserWarning)


def test_user_fallbacks_win_and_are_validated():
    with pytest.warns(LanguageFallbackWarning, match="'kaz_Cyrl'.*your explicit fallback"):
        assert resolve_encoder_lang("uig_Cyrl", NLLB_CODES, fallbacks={"uig_Cyrl": "kaz_Cyrl"}) == "kaz_Cyrl"
    with pytest.warns(LanguageFallbackWarning):
        assert resolve_encoder_lang("hin_Latn", NLLB_CODES, fallbacks={"HIN_latn": "hin_Deva"}) == "hin_Deva"
    with pytest.raises(UnknownLanguageError):
        resolve_encoder_lang("hin_Latn", NLLB_CODES, fallbacks={"hin_Latn": "hindi"})


def test_no_fallback_raises_naming_code_and_fix():
    with pytest.raises(UnsupportedLanguageError) as info:
        resolve_encoder_lang("nqo_Nkoo", NLLB_CODES)
    msg = str(info.value)
    assert "'nqo_Nkoo'" in msg and "not covered by the encoder" in msg and "fallbacks=" in msg
    assert issubclass(UnsupportedLanguageError, ValueError)


def test_fallback_that_is_itself_uncovered_raises():
    # XLM-R has no Santali at all: sat_Olck -> sat_Beng is not covered either
    with pytest.raises(UnsupportedLanguageError, match="neither is its fallback 'sat_Beng'"):
        resolve_encoder_lang("sat_Olck", XLMR_LANGUAGES)


def test_warn_false_logs_instead(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level("INFO", logger="mtllm.data.languages"):
            assert resolve_encoder_lang("nij_Latn", NLLB_CODES, warn=False) == "ind_Latn"
    assert "fed to the encoder as 'ind_Latn'" in caplog.text


def test_fallback_table_is_valid_and_documented():
    for src, dst in ENCODER_FALLBACKS.items():
        assert validate_lang(src) == src and validate_lang(dst) == dst
        assert dst in NLLB_CODES and dst != src
        assert src in L.FALLBACK_REASONS


def test_task_languages_reach_nllb_and_xlmr_encoders():
    from mtllm.tasks import get_task

    for task in ("nusax", "americasnli", "kardes-nlu"):
        for code in get_task(task).languages:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LanguageFallbackWarning)
                assert resolve_encoder_lang(code, NLLB_CODES) in NLLB_CODES
                assert resolve_encoder_lang(code, XLMR_LANGUAGES) in XLMR_LANGUAGES
