"""Automatic language identification: a FLORES-200 code (and a confidence) for each text, for when the
input language is not given.

>>> from mtllm.langid import identify                                   # doctest: +SKIP
>>> identify(["Habari ya asubuhi, rafiki yangu.", "我們今天去公園散步吧。"])   # doctest: +SKIP
[('swh_Latn', 0.99...), ('zho_Hant', 0.99...)]

The identifier is `heliport <https://pypi.org/project/heliport/>`_ (HPLT's Rust port of HeLI-OTS,
220 languages), installed with ``pip install 'mtllm[langid]'`` (Python 3.11+). Its model files are
inside the wheel: nothing is downloaded when it runs, so it works offline. It is licensed GPLv3 (mtllm
itself is Apache-2.0 and does not ship it: it is an optional extra). Loading it takes about 2 s and
0.9 GB of memory, once per process; it runs on the CPU, one text at a time (~1 ms a sentence).

heliport answers ISO 639-3 codes without a script; :func:`identify` maps them to FLORES-200 codes
(:func:`to_flores`): macrolanguages to FLORES' individual language (``swa`` -> ``swh_Latn``, ``ara`` ->
``arb_Arab``, ``msa`` -> ``ind_Latn``), and the script from the text's dominant Unicode script
(:func:`dominant_script`): ``azj_Latn``/``azb_Arab``, ``srp_Cyrl``/``hrv_Latn``, ``sat_Olck``/``sat_Beng``,
``zho_Hans``/``zho_Hant`` (simplified or traditional characters: those only GB2312 has, against those
only Big5 has). A text whose best guess has no FLORES-200 code (a language heliport knows that FLORES
lacks, such as Breton, or a text with no letters) gets :data:`UNDETERMINED` (``"und"``).

What it cannot do (measured on SIB-200, see ``docs/langid.md`` and :data:`LANGID_LIMITS`): it does not
know Hausa, Javanese, Sundanese, Wolof, Balinese, Buginese, Minangkabau, Kashmiri, Meitei, Tamasheq,
Dzongkha or Acehnese in Arabic script (their texts come out as a related or neighbouring language,
usually with a low confidence); it cannot tell Indonesian from Malay (both ``ind_Latn``), Dzongkha from
Tibetan, Cantonese written in standard Chinese (FLORES' ``yue_Hant``) from ``zho_Hant``, nor the Arabic
dialects from Modern Standard Arabic (all ``arb_Arab``); and its Uzbek is not the Latin-script Uzbek of
FLORES (``uzn_Latn`` texts come out as Azerbaijani or Turkish).

The confidence is heliport's score turned into a share among its ten best candidates (HeLI scores are
mean negative log10 probabilities per word: confidence = 10^-score / sum over the candidates). It is not
a calibrated probability: on SIB-200 the languages it knows average 0.7 to 1.0 (lowest where close
relatives share the rest: Spanish 0.70, Portuguese 0.78, German 0.77, Russian 0.85), the languages it
does not know 0.2 to 0.6, except Dzongkha and FLORES' Cantonese (about 1.0, as Tibetan and zho_Hant);
a short sentence with loanwords scores lower, a single word often very high.
"""
from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence, overload

from mtllm.data.languages import FLORES200
from mtllm.errors import ConfigError
from mtllm.tables import Table

__all__ = ["identify", "to_flores", "dominant_script", "supported_languages", "UNDETERMINED", "LANGID_LIMITS",
           "evaluate"]

#: The code for "no FLORES-200 language" (ISO 639-2 ``und``): heliport's best guess has no FLORES-200 code,
#: or the text has no letters.
UNDETERMINED = "und"

#: How many of heliport's candidates the confidence is shared among.
_CANDIDATES = 10

_INSTALL = ("automatic language identification needs heliport, which is not installed: pip install "
            "'mtllm[langid]' (Python 3.11 or newer), or give the language (a FLORES-200 code) yourself")

# heliport labels whose FLORES-200 code has another ISO 639-3 code (macrolanguages, FLORES' varieties) or
# that stand for several FLORES codes; the first code of each is taken when the text's script decides
# nothing. Every other label maps to the FLORES codes with its prefix (``amh`` -> ``amh_Ethi``).
_LABELS: dict[str, tuple[str, ...]] = {
    "swa": ("swh_Latn",), "ara": ("arb_Arab", "arb_Latn"), "cmn": ("zho_Hans", "zho_Hant"),
    "msa": ("ind_Latn", "zsm_Latn"),  # Indonesian and Malay are one label: Latin script cannot tell them apart
    "aze": ("azj_Latn", "azb_Arab"), "que": ("quy_Latn",), "nep": ("npi_Deva",), "ori": ("ory_Orya",),
    "mon": ("khk_Cyrl",), "lav": ("lvs_Latn",), "sqi": ("als_Latn",), "mlg": ("plt_Latn",),
    "yid": ("ydd_Hebr",), "hbs": ("srp_Cyrl", "hrv_Latn", "bos_Latn"), "sat": ("sat_Olck", "sat_Beng"),
    "zxx": (),  # heliport's "no linguistic content"
}
# Written Cantonese: characters standard written Chinese does not use (FLORES' yue_Hant is mostly standard
# written Chinese and has almost none of them, so it comes out as zho_Hant).
_CANTONESE = frozenset("佢哋咗嘅唔喺冇嘢啲嚟睇嗰咩")

# Unicode script (first word of a character's name) -> ISO 15924.
_SCRIPTS = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "ARABIC": "Arab", "GREEK": "Grek", "HEBREW": "Hebr", "ARMENIAN": "Armn",
    "GEORGIAN": "Geor", "DEVANAGARI": "Deva", "BENGALI": "Beng", "GURMUKHI": "Guru", "GUJARATI": "Gujr",
    "ORIYA": "Orya", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda", "MALAYALAM": "Mlym", "SINHALA": "Sinh",
    "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt", "MYANMAR": "Mymr", "KHMER": "Khmr", "ETHIOPIC": "Ethi",
    "HANGUL": "Hang", "HIRAGANA": "Kana", "KATAKANA": "Kana", "CJK": "Hani", "TIFINAGH": "Tfng", "OL": "Olck",
    "NKO": "Nkoo", "THAANA": "Thaa", "SYRIAC": "Syrc", "MEETEI": "Mtei", "CHEROKEE": "Cher",
}

#: Measured limits, FLORES-200 code -> what happens to its texts (SIB-200 test sets, 204 sentences each;
#: ``docs/langid.md`` has the whole table and the command). Codes heliport has no label for at all are
#: ``set(FLORES200) - supported_languages()``.
LANGID_LIMITS: dict[str, str] = {
    # no heliport label (measured: 0 of 204 right; the most frequent answers)
    "ace_Arab": "no label for Acehnese in Arabic script: comes out as arb_Arab, snd_Arab or pbt_Arab",
    "ban_Latn": "no label (Balinese): comes out as ind_Latn or ace_Latn",
    "bug_Latn": "no label (Buginese): comes out as ace_Latn, ind_Latn or und",
    "dzo_Tibt": "no label (Dzongkha): comes out as bod_Tibt (Tibetan), with a confidence of about 1",
    "hau_Latn": "no label (Hausa): comes out as knc_Latn (Kanuri), und or kac_Latn, with a low confidence",
    "jav_Latn": "no label (Javanese): comes out as ind_Latn or ace_Latn",
    "kas_Deva": "no label (Kashmiri): comes out as hin_Deva or npi_Deva",
    "min_Latn": "no label (Minangkabau): comes out as ind_Latn",
    "mni_Beng": "no label (Meitei): comes out as ben_Beng",
    "sun_Latn": "no label (Sundanese): comes out as ind_Latn or ace_Latn",
    "taq_Tfng": "no label (Tamasheq): comes out as und",
    "wol_Latn": "no label (Wolof): comes out as dik_Latn, azj_Latn or und, with a low confidence",
    # a label, but not FLORES' text (measured)
    "uzn_Latn": "heliport's Uzbek does not fit FLORES' Latin-script Uzbek: comes out as azj_Latn, und or tur_Latn",
    "yue_Hant": "FLORES' Cantonese is standard written Chinese: comes out as zho_Hant, with a confidence of about 1 "
                "(text with written-Cantonese characters such as 佢哋咗嘅 comes out as yue_Hant)",
    # by construction: one heliport label for several FLORES codes (not measured on SIB-200)
    "zsm_Latn": "one label with Indonesian: Malay comes out as ind_Latn",
    "bos_Latn": "one label for Serbo-Croatian: Latin-script text comes out as hrv_Latn, Cyrillic as srp_Cyrl",
    "acm_Arab": "one label for Arabic: the dialects come out as arb_Arab (also acq, aeb, ajp, apc, ars, ary, arz)",
}
for _dialect in ("acq_Arab", "aeb_Arab", "ajp_Arab", "apc_Arab", "ars_Arab", "ary_Arab", "arz_Arab"):
    LANGID_LIMITS[_dialect] = LANGID_LIMITS["acm_Arab"]


@functools.lru_cache(maxsize=1)
def _identifier() -> Any:
    try:
        import heliport  # optional: heliport (mtllm[langid])
    except ImportError:
        raise ConfigError(_INSTALL) from None
    return heliport.Identifier()


@functools.lru_cache(maxsize=None)
def _candidates(label: str) -> tuple[str, ...]:
    if label in _LABELS:
        return _LABELS[label]
    return tuple(code for code in FLORES200 if code.split("_")[0] == label)


def dominant_script(text: str) -> str | None:
    """The ISO 15924 code of the script most of ``text``'s letters are in (``Latn``, ``Cyrl``, ``Arab``, ...):
    Chinese characters are ``Hans`` or ``Hant`` (more characters only in GB2312, or only in Big5; ``Hani``
    when neither wins), Japanese (kana, with or without kanji) is ``Jpan``. ``None`` without letters of
    a script it knows (every FLORES-200 script, and a few more)."""
    counts: Counter[str] = Counter()
    simplified = traditional = 0
    for ch in text[:2000]:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        script = _SCRIPTS.get(name.split(" ", 1)[0])
        if script is None:
            continue
        counts[script] += 1
        if script == "Hani":
            gb, big5 = _encodes(ch, "gb2312"), _encodes(ch, "big5")
            simplified += gb and not big5
            traditional += big5 and not gb
    if not counts:
        return None
    if counts["Kana"] and counts["Kana"] + counts["Hani"] >= max(counts.values()):
        return "Jpan"
    script = counts.most_common(1)[0][0]
    if script == "Hani":
        return "Hans" if simplified > traditional else "Hant" if traditional > simplified else "Hani"
    return script


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _script_fits(code_script: str, text_script: str | None) -> bool:
    if text_script is None:
        return False
    if code_script == text_script:
        return True
    return (code_script == "Jpan" and text_script in ("Kana", "Hani", "Hans", "Hant")
            or code_script in ("Hans", "Hant", "Hang") and text_script == "Hani")


def to_flores(label: str, text: str = "", *, script: str | None = None) -> str:
    """The FLORES-200 code for heliport's ``label`` (ISO 639-3) on ``text``: the label's code in the text's
    script (``script``, else :func:`dominant_script` of ``text``; the label's first code when neither tells
    a script). :data:`UNDETERMINED` when the label has no FLORES-200 code, or none in the text's script (a
    Tifinagh text heliport takes for Ilocano is not ``ilo_Latn``)."""
    if script is None:
        script = dominant_script(text)
    if label == "jpn" and script in ("Hans", "Hant", "Hani"):  # kanji without kana: Chinese heliport took for Japanese
        label = "cmn"
    codes = _candidates(label)
    if not codes:
        return UNDETERMINED
    if script is None:
        code = codes[0]
    else:
        code = next((c for c in codes if _script_fits(c.split("_")[1], script)), UNDETERMINED)
    if code in ("zho_Hans", "zho_Hant") and sum(ch in _CANTONESE for ch in text) >= 2:
        code = "yue_Hant"
    return code


@overload
def identify(texts: str, *, k: int = 1) -> Any: ...
@overload
def identify(texts: Sequence[str], *, k: int = 1) -> list[Any]: ...


def identify(texts, *, k: int = 1):
    """The language of each of ``texts``: ``(FLORES-200 code, confidence in [0, 1])`` per text, or with
    ``k > 1`` a list of the (up to) ``k`` likeliest ``(code, confidence)`` per text, best first (heliport's candidates
    that map to the same code are merged). One string gives one result. A text without letters, or whose
    best guess has no FLORES-200 code, gets :data:`UNDETERMINED`. Needs ``pip install 'mtllm[langid]'``
    (a :class:`~mtllm.errors.ConfigError` otherwise); see the module docstring for what it cannot tell."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    bad = [i for i, t in enumerate(batch) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"identify() takes strings; text {bad[0]} is a {type(batch[bad[0]]).__name__}")
    model = _identifier()
    out = [_ranked(model, text)[:k] for text in batch]
    if k == 1:
        out = [ranked[0] for ranked in out]
    return out[0] if single else out


def _ranked(model: Any, text: str) -> list[tuple[str, float]]:
    script = dominant_script(text)
    if script is None:
        return [(UNDETERMINED, 0.0)]
    scored = model.identify_topk_with_score(" ".join(text.split()), _CANDIDATES)
    best = min(score for _, score in scored)
    weights = [(label, 10.0 ** (best - score)) for label, score in scored]
    total = sum(w for _, w in weights)
    merged: dict[str, float] = {}
    for label, w in weights:
        code = to_flores(label, text, script=script)
        if code == UNDETERMINED:  # different languages without a FLORES code: the likeliest one, not their sum
            merged[code] = max(merged.get(code, 0.0), w / total)
        else:
            merged[code] = merged.get(code, 0.0) + w / total
    return sorted(merged.items(), key=lambda item: -item[1])


def supported_languages() -> frozenset[str]:
    """The FLORES-200 codes :func:`identify` can answer: for each heliport label, its first code in each
    script (so not ``zsm_Latn`` nor ``bos_Latn``, which share a label with ``ind_Latn`` / ``hrv_Latn``),
    and ``yue_Hant`` (written Cantonese)."""
    codes = {"yue_Hant"}
    for label in _identifier().get_confidence_all():
        scripts: set[str] = set()
        for code in _candidates(label):
            if code.split("_")[1] not in scripts:
                scripts.add(code.split("_")[1])
                codes.add(code)
    return frozenset(codes)


def evaluate(data_dir: str, *, split: str = "test", column: str = "text",
             languages: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy of :func:`identify` on ``DATA_DIR/<FLORES code>/<split>.tsv`` (the ``column`` of each file):
    code -> ``{"n", "accuracy", "mean_confidence", "predicted"}`` (``predicted``: the three most frequent
    answers with their counts). What ``docs/langid.md`` reports, for SIB-200."""
    root = Path(data_dir)
    codes = sorted(languages) if languages is not None else sorted(
        p.name for p in root.iterdir() if (p / f"{split}.tsv").is_file())
    report: dict[str, dict[str, Any]] = {}
    for code in codes:
        table = Table(root / code / f"{split}.tsv", formats=(".tsv",))  # the one table reader: errors name path:line
        table.require([column], f"pass column= one of {table.columns}")
        texts = [values[column] for _, values in table.records()]
        results = identify(texts)
        answers = Counter(c for c, _ in results)
        report[code] = {"n": len(texts), "accuracy": answers[code] / max(len(texts), 1),
                        "mean_confidence": sum(p for _, p in results) / max(len(results), 1),
                        "predicted": answers.most_common(3)}
    return report


def markdown_report(report: dict[str, dict[str, Any]]) -> str:
    """The per-language table of :func:`evaluate`'s report, in Markdown (docs/langid.md)."""
    lines = ["| language | n | accuracy | mean confidence | most frequent answers |", "|---|---|---|---|---|"]
    for code, r in report.items():
        answers = ", ".join(f"{c} {n}" for c, n in r["predicted"])
        lines.append(f"| {code} | {r['n']} | {r['accuracy']:.3f} | {r['mean_confidence']:.2f} | {answers} |")
    mean = sum(r["accuracy"] for r in report.values()) / max(len(report), 1)
    lines.append(f"\nMean accuracy over {len(report)} languages: {mean:.3f}")
    return "\n".join(lines)
