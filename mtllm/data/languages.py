"""Language codes: one table of FLORES-200-style codes (``xxx_Xxxx``: ISO 639-3 + ISO 15924 script).

What is here
------------
``FLORES200``
    code -> English name for every code mtllm accepts (the table :func:`validate_lang` checks):

    * the 202 codes of NLLB-200 (``NLLB_CODES``; the language tokens of the NLLB tokenizer);
    * the codes of FLORES-200 / SIB-200 that NLLB's token list lacks: ``arb_Latn`` and ``min_Arab``
      (in FLORES-200 but not NLLB), ``sat_Olck`` (FLORES-200's Santali, Ol Chiki script: NLLB's
      token for the same data is labelled ``sat_Beng``) and ``nqo_Nkoo`` (N'Ko, added to SIB-200,
      which has 205 codes: ``SIB200_CODES``);
    * task languages outside FLORES-200 (``EXTRA_LANGUAGES``): the romanised Belebele variants,
      NusaX's Madurese, Ngaju and Toba Batak, the AmericasNLI languages and Kardeş-NLU's Uyghur,
      which is written in Cyrillic script (``uig_Cyrl``).

    ``FLORES200_CODES`` is the 204-code FLORES-200 set proper.
``XLMR_LANGUAGES``
    the CC100 languages XLM-R (and so multilingual-e5) was pretrained on, mapped to codes.
``resolve_encoder_lang``
    maps a language the encoder does not cover to an explicit, documented fallback
    (``ENCODER_FALLBACKS``), always with a :class:`LanguageFallbackWarning`; never silently.
"""
from __future__ import annotations

import difflib
import logging
import re
import warnings
from typing import Collection, Mapping

from mtllm.errors import UnknownLanguageError, UnsupportedLanguageError  # noqa: F401 (raised here, re-exported)

logger = logging.getLogger(__name__)

__all__ = [
    "FLORES200", "FLORES200_CODES", "NLLB_CODES", "SIB200_CODES", "EXTRA_LANGUAGES", "XLMR_LANGUAGES",
    "XLMR_ISO639_1", "ENCODER_FALLBACKS", "FALLBACK_REASONS", "UnknownLanguageError", "UnsupportedLanguageError",
    "LanguageFallbackWarning", "validate_lang", "language_name", "suggest_languages", "resolve_encoder_lang",
]

# ---------------------------------------------------------------------------------------------- tables
# The 202 language codes of NLLB-200, in the order of the NLLB tokenizer
# (transformers.models.nllb.tokenization_nllb.FAIRSEQ_LANGUAGE_CODES), with FLORES-200's English names.
_NLLB: dict[str, str] = {
    "ace_Arab": "Acehnese (Arabic script)", "ace_Latn": "Acehnese (Latin script)",
    "acm_Arab": "Mesopotamian Arabic", "acq_Arab": "Ta'izzi-Adeni Arabic", "aeb_Arab": "Tunisian Arabic",
    "afr_Latn": "Afrikaans", "ajp_Arab": "South Levantine Arabic", "aka_Latn": "Akan", "amh_Ethi": "Amharic",
    "apc_Arab": "North Levantine Arabic", "arb_Arab": "Modern Standard Arabic", "ars_Arab": "Najdi Arabic",
    "ary_Arab": "Moroccan Arabic", "arz_Arab": "Egyptian Arabic", "asm_Beng": "Assamese", "ast_Latn": "Asturian",
    "awa_Deva": "Awadhi", "ayr_Latn": "Central Aymara", "azb_Arab": "South Azerbaijani",
    "azj_Latn": "North Azerbaijani", "bak_Cyrl": "Bashkir", "bam_Latn": "Bambara", "ban_Latn": "Balinese",
    "bel_Cyrl": "Belarusian", "bem_Latn": "Bemba", "ben_Beng": "Bengali", "bho_Deva": "Bhojpuri",
    "bjn_Arab": "Banjar (Arabic script)", "bjn_Latn": "Banjar (Latin script)", "bod_Tibt": "Standard Tibetan",
    "bos_Latn": "Bosnian", "bug_Latn": "Buginese", "bul_Cyrl": "Bulgarian", "cat_Latn": "Catalan",
    "ceb_Latn": "Cebuano", "ces_Latn": "Czech", "cjk_Latn": "Chokwe", "ckb_Arab": "Central Kurdish",
    "crh_Latn": "Crimean Tatar", "cym_Latn": "Welsh", "dan_Latn": "Danish", "deu_Latn": "German",
    "dik_Latn": "Southwestern Dinka", "dyu_Latn": "Dyula", "dzo_Tibt": "Dzongkha", "ell_Grek": "Greek",
    "eng_Latn": "English", "epo_Latn": "Esperanto", "est_Latn": "Estonian", "eus_Latn": "Basque",
    "ewe_Latn": "Ewe", "fao_Latn": "Faroese", "pes_Arab": "Western Persian", "fij_Latn": "Fijian",
    "fin_Latn": "Finnish", "fon_Latn": "Fon", "fra_Latn": "French", "fur_Latn": "Friulian",
    "fuv_Latn": "Nigerian Fulfulde", "gla_Latn": "Scottish Gaelic", "gle_Latn": "Irish", "glg_Latn": "Galician",
    "grn_Latn": "Guarani", "guj_Gujr": "Gujarati", "hat_Latn": "Haitian Creole", "hau_Latn": "Hausa",
    "heb_Hebr": "Hebrew", "hin_Deva": "Hindi", "hne_Deva": "Chhattisgarhi", "hrv_Latn": "Croatian",
    "hun_Latn": "Hungarian", "hye_Armn": "Armenian", "ibo_Latn": "Igbo", "ilo_Latn": "Ilocano",
    "ind_Latn": "Indonesian", "isl_Latn": "Icelandic", "ita_Latn": "Italian", "jav_Latn": "Javanese",
    "jpn_Jpan": "Japanese", "kab_Latn": "Kabyle", "kac_Latn": "Jingpho", "kam_Latn": "Kamba",
    "kan_Knda": "Kannada", "kas_Arab": "Kashmiri (Arabic script)", "kas_Deva": "Kashmiri (Devanagari script)",
    "kat_Geor": "Georgian", "knc_Arab": "Central Kanuri (Arabic script)",
    "knc_Latn": "Central Kanuri (Latin script)", "kaz_Cyrl": "Kazakh", "kbp_Latn": "Kabiyè",
    "kea_Latn": "Kabuverdianu", "khm_Khmr": "Khmer", "kik_Latn": "Kikuyu", "kin_Latn": "Kinyarwanda",
    "kir_Cyrl": "Kyrgyz", "kmb_Latn": "Kimbundu", "kon_Latn": "Kikongo", "kor_Hang": "Korean",
    "kmr_Latn": "Northern Kurdish", "lao_Laoo": "Lao", "lvs_Latn": "Standard Latvian", "lij_Latn": "Ligurian",
    "lim_Latn": "Limburgish", "lin_Latn": "Lingala", "lit_Latn": "Lithuanian", "lmo_Latn": "Lombard",
    "ltg_Latn": "Latgalian", "ltz_Latn": "Luxembourgish", "lua_Latn": "Luba-Kasai", "lug_Latn": "Ganda",
    "luo_Latn": "Luo", "lus_Latn": "Mizo", "mag_Deva": "Magahi", "mai_Deva": "Maithili",
    "mal_Mlym": "Malayalam", "mar_Deva": "Marathi", "min_Latn": "Minangkabau (Latin script)",
    "mkd_Cyrl": "Macedonian", "plt_Latn": "Plateau Malagasy", "mlt_Latn": "Maltese",
    "mni_Beng": "Meitei (Bengali script)", "khk_Cyrl": "Halh Mongolian", "mos_Latn": "Mossi",
    "mri_Latn": "Maori", "zsm_Latn": "Standard Malay", "mya_Mymr": "Burmese", "nld_Latn": "Dutch",
    "nno_Latn": "Norwegian Nynorsk", "nob_Latn": "Norwegian Bokmål", "npi_Deva": "Nepali",
    "nso_Latn": "Northern Sotho", "nus_Latn": "Nuer", "nya_Latn": "Nyanja", "oci_Latn": "Occitan",
    "gaz_Latn": "West Central Oromo", "ory_Orya": "Odia", "pag_Latn": "Pangasinan", "pan_Guru": "Eastern Panjabi",
    "pap_Latn": "Papiamento", "pol_Latn": "Polish", "por_Latn": "Portuguese", "prs_Arab": "Dari",
    "pbt_Arab": "Southern Pashto", "quy_Latn": "Ayacucho Quechua", "ron_Latn": "Romanian", "run_Latn": "Rundi",
    "rus_Cyrl": "Russian", "sag_Latn": "Sango", "san_Deva": "Sanskrit",
    "sat_Beng": "Santali (NLLB's label; its FLORES-200 text is in Ol Chiki script, see sat_Olck)",
    "scn_Latn": "Sicilian", "shn_Mymr": "Shan", "sin_Sinh": "Sinhala", "slk_Latn": "Slovak",
    "slv_Latn": "Slovenian", "smo_Latn": "Samoan", "sna_Latn": "Shona", "snd_Arab": "Sindhi",
    "som_Latn": "Somali", "sot_Latn": "Southern Sotho", "spa_Latn": "Spanish", "als_Latn": "Tosk Albanian",
    "srd_Latn": "Sardinian", "srp_Cyrl": "Serbian", "ssw_Latn": "Swati", "sun_Latn": "Sundanese",
    "swe_Latn": "Swedish", "swh_Latn": "Swahili", "szl_Latn": "Silesian", "tam_Taml": "Tamil",
    "tat_Cyrl": "Tatar", "tel_Telu": "Telugu", "tgk_Cyrl": "Tajik", "tgl_Latn": "Tagalog", "tha_Thai": "Thai",
    "tir_Ethi": "Tigrinya", "taq_Latn": "Tamasheq (Latin script)", "taq_Tfng": "Tamasheq (Tifinagh script)",
    "tpi_Latn": "Tok Pisin", "tsn_Latn": "Tswana", "tso_Latn": "Tsonga", "tuk_Latn": "Turkmen",
    "tum_Latn": "Tumbuka", "tur_Latn": "Turkish", "twi_Latn": "Twi", "tzm_Tfng": "Central Atlas Tamazight",
    "uig_Arab": "Uyghur", "ukr_Cyrl": "Ukrainian", "umb_Latn": "Umbundu", "urd_Arab": "Urdu",
    "uzn_Latn": "Northern Uzbek", "vec_Latn": "Venetian", "vie_Latn": "Vietnamese", "war_Latn": "Waray",
    "wol_Latn": "Wolof", "xho_Latn": "Xhosa", "ydd_Hebr": "Eastern Yiddish", "yor_Latn": "Yoruba",
    "yue_Hant": "Yue Chinese", "zho_Hans": "Chinese (Simplified)", "zho_Hant": "Chinese (Traditional)",
    "zul_Latn": "Zulu",
}

# Codes of FLORES-200 / SIB-200 that are not NLLB language tokens.
_FLORES_NOT_NLLB: dict[str, str] = {
    "arb_Latn": "Modern Standard Arabic (Romanized)",
    "min_Arab": "Minangkabau (Arabic script)",
    "sat_Olck": "Santali (Ol Chiki script)",
    "nqo_Nkoo": "N'Ko",  # SIB-200 only (not in FLORES-200's 204)
}

# Task languages outside FLORES-200 (all non-NLLB): they validate, but an NLLB encoder has no token for them,
# so they must go through resolve_encoder_lang's explicit fallback.
EXTRA_LANGUAGES: dict[str, str] = {
    # Belebele's romanised variants
    "ben_Latn": "Bengali (Romanized)", "hin_Latn": "Hindi (Romanized)", "npi_Latn": "Nepali (Romanized)",
    "sin_Latn": "Sinhala (Romanized)", "urd_Latn": "Urdu (Romanized)",
    # NusaX
    "mad_Latn": "Madurese", "nij_Latn": "Ngaju", "bbc_Latn": "Toba Batak",
    # AmericasNLI ("nah" and "oto" are the collective codes AmericasNLI uses for Nahuatl and Otomi)
    "bzd_Latn": "Bribri", "cni_Latn": "Asháninka", "hch_Latn": "Wixárika (Huichol)", "nah_Latn": "Nahuatl",
    "oto_Latn": "Otomí", "shp_Latn": "Shipibo-Konibo", "tar_Latn": "Rarámuri (Tarahumara)",
    # Kardeş-NLU's Uyghur data is written in Cyrillic script (NLLB's Uyghur is uig_Arab)
    "uig_Cyrl": "Uyghur (Cyrillic script)",
}

FLORES200: dict[str, str] = {**_NLLB, **_FLORES_NOT_NLLB, **EXTRA_LANGUAGES}
"""Every code mtllm accepts -> English name (see the module docstring for what it holds)."""

NLLB_CODES: frozenset[str] = frozenset(_NLLB)
"""The 202 language codes of NLLB-200 (the NLLB tokenizer's language tokens)."""

SIB200_CODES: frozenset[str] = frozenset((NLLB_CODES - {"sat_Beng"}) | set(_FLORES_NOT_NLLB))
"""The 205 language codes of SIB-200 (``Davlan/sib200`` configs)."""

FLORES200_CODES: frozenset[str] = SIB200_CODES - {"nqo_Nkoo"}
"""The 204 language codes of FLORES-200 proper."""

# ISO 639-1 (and CC100's romanised variants) -> FLORES code, for the CC100 languages of XLM-R.
# Unmapped CC100 languages (no FLORES-200 code): br (Breton), fy (Western Frisian), la (Latin), ta_rom,
# te_rom (romanised Tamil/Telugu) and my_zaw (Burmese in Zawgyi encoding, the same language as mya_Mymr).
XLMR_ISO639_1: dict[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng", "az": "azj_Latn", "be": "bel_Cyrl",
    "bg": "bul_Cyrl", "bn": "ben_Beng", "bn_rom": "ben_Latn", "bs": "bos_Latn", "ca": "cat_Latn",
    "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn",
    "eo": "epo_Latn", "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab", "fi": "fin_Latn",
    "fr": "fra_Latn", "ga": "gle_Latn", "gd": "gla_Latn", "gl": "glg_Latn", "gu": "guj_Gujr", "ha": "hau_Latn",
    "he": "heb_Hebr", "hi": "hin_Deva", "hi_rom": "hin_Latn", "hr": "hrv_Latn", "hu": "hun_Latn",
    "hy": "hye_Armn", "id": "ind_Latn", "is": "isl_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn",
    "ka": "kat_Geor", "kk": "kaz_Cyrl", "km": "khm_Khmr", "kn": "kan_Knda", "ko": "kor_Hang", "ku": "kmr_Latn",
    "ky": "kir_Cyrl", "lo": "lao_Laoo", "lt": "lit_Latn", "lv": "lvs_Latn", "mg": "plt_Latn", "mk": "mkd_Cyrl",
    "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva", "ms": "zsm_Latn", "my": "mya_Mymr", "ne": "npi_Deva",
    "nl": "nld_Latn", "no": "nob_Latn", "om": "gaz_Latn", "or": "ory_Orya", "pa": "pan_Guru", "pl": "pol_Latn",
    "ps": "pbt_Arab", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "sa": "san_Deva", "sd": "snd_Arab",
    "si": "sin_Sinh", "sk": "slk_Latn", "sl": "slv_Latn", "so": "som_Latn", "sq": "als_Latn", "sr": "srp_Cyrl",
    "su": "sun_Latn", "sv": "swe_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai",
    "tl": "tgl_Latn", "tr": "tur_Latn", "ug": "uig_Arab", "uk": "ukr_Cyrl", "ur": "urd_Arab",
    "ur_rom": "urd_Latn", "uz": "uzn_Latn", "vi": "vie_Latn", "xh": "xho_Latn", "yi": "ydd_Hebr",
    "zh-Hans": "zho_Hans", "zh-Hant": "zho_Hant",
}

XLMR_LANGUAGES: frozenset[str] = frozenset(XLMR_ISO639_1.values())
"""FLORES codes of the CC100 languages XLM-R / multilingual-e5 were pretrained on (94 of CC100's 100;
the six without a FLORES code are listed above ``XLMR_ISO639_1``). Arabic is CC100's (mostly standard)
``ar`` -> ``arb_Arab`` only: the Arabic dialect codes are not counted as covered; likewise Persian is
``pes_Arab`` (not Dari), Norwegian ``nob_Latn`` and Kurdish Kurmanji ``kmr_Latn``."""

# ISO 639-3 macrolanguage / common codes whose FLORES code uses another (individual-language) prefix.
_MACRO: dict[str, str] = {
    "swa": "swh_Latn", "ara": "arb_Arab", "fas": "pes_Arab", "per": "pes_Arab", "msa": "zsm_Latn",
    "may": "zsm_Latn", "lav": "lvs_Latn", "aze": "azj_Latn", "uzb": "uzn_Latn", "mon": "khk_Cyrl",
    "nep": "npi_Deva", "orm": "gaz_Latn", "mlg": "plt_Latn", "sqi": "als_Latn", "alb": "als_Latn",
    "pus": "pbt_Arab", "kur": "kmr_Latn", "yid": "ydd_Hebr", "que": "quy_Latn", "aym": "ayr_Latn",
    "kau": "knc_Latn", "ful": "fuv_Latn", "nor": "nob_Latn", "grk": "ell_Grek", "gre": "ell_Grek",
    "chi": "zho_Hans", "cmn": "zho_Hans", "ger": "deu_Latn", "fre": "fra_Latn", "dut": "nld_Latn",
    "cze": "ces_Latn", "slo": "slk_Latn", "rum": "ron_Latn", "arm": "hye_Armn", "geo": "kat_Geor",
    "bur": "mya_Mymr", "ice": "isl_Latn", "wel": "cym_Latn", "baq": "eus_Latn", "mac": "mkd_Cyrl",
    "mao": "mri_Latn", "tib": "bod_Tibt", "gug": "grn_Latn",
}

# ------------------------------------------------------------------------------------------ fallbacks
# Encoder fallbacks for languages an encoder does not cover. Each one is a judgement call, documented in
# FALLBACK_REASONS and announced with a LanguageFallbackWarning every time it is used.
ENCODER_FALLBACKS: dict[str, str] = {
    # NusaX languages outside NLLB (and, for XLM-R-style encoders, the NusaX languages outside CC100)
    "nij_Latn": "ind_Latn", "bbc_Latn": "ind_Latn", "mad_Latn": "ind_Latn",
    "ace_Latn": "ind_Latn", "ban_Latn": "ind_Latn", "bjn_Latn": "ind_Latn", "bug_Latn": "ind_Latn",
    "min_Latn": "ind_Latn",
    # AmericasNLI
    "bzd_Latn": "spa_Latn", "cni_Latn": "spa_Latn", "hch_Latn": "spa_Latn", "nah_Latn": "spa_Latn",
    "oto_Latn": "spa_Latn", "shp_Latn": "spa_Latn", "tar_Latn": "spa_Latn",
    "ayr_Latn": "spa_Latn", "grn_Latn": "spa_Latn", "quy_Latn": "spa_Latn",
    # script labels
    "sat_Olck": "sat_Beng",
    "uig_Cyrl": "uig_Arab",
}

_INDONESIA = ("a language of Indonesia whose speakers are bilingual in Indonesian and whose written register "
              "borrows heavily from it; the encoder does not cover it, Indonesian is the closest covered "
              "high-resource contact language")
_AMERICAS = ("an indigenous language of the Americas written in a Spanish-based Latin orthography with many "
             "Spanish loans (AmericasNLI was translated from Spanish XNLI); the encoder covers no related "
             "language, Spanish is the contact language")
FALLBACK_REASONS: dict[str, str] = {
    **{c: _INDONESIA for c in ("nij_Latn", "bbc_Latn", "mad_Latn", "ace_Latn", "ban_Latn", "bjn_Latn",
                                "bug_Latn", "min_Latn")},
    **{c: _AMERICAS for c in ("bzd_Latn", "cni_Latn", "hch_Latn", "nah_Latn", "oto_Latn", "shp_Latn",
                               "tar_Latn", "ayr_Latn", "grn_Latn", "quy_Latn")},
    "sat_Olck": "NLLB's Santali token is labelled sat_Beng, but the FLORES-200 Santali text it was trained on "
                "is in Ol Chiki script (sat_Olck): the same language and data",
    "uig_Cyrl": "same language (Uyghur) in another script: the encoder's Uyghur is Arabic-script uig_Arab; the "
                "Cyrillic text itself is fed unchanged (pass fallbacks={'uig_Cyrl': 'kaz_Cyrl'} to prefer a "
                "related language in the same script)",
}


# ------------------------------------------------------------------------------------------ errors
class LanguageFallbackWarning(UserWarning):
    """A language is fed to the encoder as another (related) language."""


# ------------------------------------------------------------------------------------------ lookup
_LOWER: dict[str, str] = {c.lower(): c for c in FLORES200}


def language_name(code: str) -> str:
    """English name of a (valid) code."""
    return FLORES200[validate_lang(code)]


def suggest_languages(code: str, candidates: Collection[str] | None = None, n: int = 3) -> list[str]:
    """Up to ``n`` codes from ``candidates`` (default: all of :data:`FLORES200`) close to ``code``:
    same ISO 639-3 prefix (``ell_Latn`` -> ``ell_Grek``; ``swa`` -> ``swh_Latn`` via macrolanguages),
    ISO 639-1 (``el``), language names (``greek``) and spelling (difflib over codes and names)."""
    pool = list(FLORES200) if candidates is None else [c for c in candidates]
    pool_set = set(pool)
    lower_pool = {c.lower(): c for c in pool}
    q = str(code).strip()
    ql = q.lower().replace("-", "_")
    out: list[str] = []

    def add(c: str | None) -> None:
        if c and c in pool_set and c not in out:
            out.append(c)

    prefix = ql.split("_")[0]
    if len(prefix) == 3:
        for c in pool:
            if c.lower().startswith(prefix + "_"):
                add(c)
        add(_MACRO.get(prefix))
    add(XLMR_ISO639_1.get(ql) or XLMR_ISO639_1.get(prefix))
    # names: substring, then fuzzy
    names = {FLORES200.get(c, c).lower(): c for c in pool}
    if len(ql) >= 3:
        for name, c in names.items():
            if re.search(rf"\b{re.escape(ql)}", name):
                add(c)
    if out:  # strong matches only; spelling guesses would just add noise
        return out[:n]
    for name in difflib.get_close_matches(ql, list(names), n=n, cutoff=0.6):
        add(names[name])
    if "_" in ql:  # code-shaped: compare the language part (the script part matches everything)
        prefixes: dict[str, list[str]] = {}
        for c in pool:
            prefixes.setdefault(c.lower().split("_")[0], []).append(c)
        for p in difflib.get_close_matches(prefix, list(prefixes), n=n, cutoff=0.6):
            for c in prefixes[p]:
                add(c)
    else:
        for lc in difflib.get_close_matches(ql, list(lower_pool), n=n, cutoff=0.6):
            add(lower_pool[lc])
    return out[:n]


def validate_lang(code: str) -> str:
    """The canonical FLORES-200-style code for ``code``.

    Exact codes pass through; a wrong-case or hyphenated code (``ENG_latn``, ``eng-Latn``) is normalised.
    Anything else raises :class:`UnknownLanguageError` with up to three close matches.
    """
    if not isinstance(code, str):
        raise TypeError(f"a language code must be a string like 'eng_Latn', got {type(code).__name__} {code!r}")
    if code in FLORES200:
        return code
    key = code.strip().lower().replace("-", "_")
    if key in _LOWER:
        return _LOWER[key]
    matches = suggest_languages(code)
    hint = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    raise UnknownLanguageError(
        f"unknown language code {code!r}.{hint} Codes are FLORES-200 style, ISO 639-3 + script "
        f"(e.g. 'eng_Latn', 'ell_Grek'); the full list is mtllm.data.languages.FLORES200.")


def resolve_encoder_lang(code: str, supported: Collection[str] | None, *,
                         fallbacks: Mapping[str, str] | None = None, warn: bool = True) -> str:
    """The language code to give the encoder for text in ``code``.

    ``supported``: the encoder's languages (``None``: not restricted). A covered language is returned
    unchanged. Otherwise the explicit fallback from :data:`ENCODER_FALLBACKS`, updated with ``fallbacks``
    (yours win), is returned, with a :class:`LanguageFallbackWarning` saying what is fed as what and why
    (``warn=False`` logs it instead, for callers that report it themselves). Without a fallback (or when
    the fallback is not covered either) :class:`UnsupportedLanguageError` is raised: nothing falls back
    silently.
    """
    code = validate_lang(code)
    if supported is None:
        return code
    supported_set = set(supported)
    if code in supported_set:
        return code
    table = dict(ENCODER_FALLBACKS)
    if fallbacks:
        for src, dst in fallbacks.items():
            table[validate_lang(src)] = validate_lang(dst)
    target = table.get(code)
    fix = (f"pass an explicit fallback to a related language the encoder covers, e.g. "
           f"fallbacks={{'{code}': '<code>'}}")
    if target is None:
        raise UnsupportedLanguageError(
            f"{code!r} ({FLORES200[code]}) is not covered by the encoder (it covers {len(supported_set)} "
            f"languages) and has no fallback; {fix}.")
    target = validate_lang(target)
    if target not in supported_set:
        raise UnsupportedLanguageError(
            f"{code!r} ({FLORES200[code]}) is not covered by the encoder, and neither is its fallback "
            f"{target!r} ({FLORES200[target]}); {fix}.")
    user_given = bool(fallbacks) and code in {validate_lang(k) for k in fallbacks}
    why = "your explicit fallback" if user_given else FALLBACK_REASONS.get(code, "explicit fallback")
    msg = (f"{code!r} ({FLORES200[code]}) is not covered by the encoder; fed to the encoder as {target!r} "
           f"({FLORES200[target]}): {why}.")
    if warn:
        warnings.warn(msg, LanguageFallbackWarning, stacklevel=2)
    else:
        logger.info(msg)
    return target
