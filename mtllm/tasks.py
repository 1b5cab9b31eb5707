"""Evaluation tasks: one registry, every language a FLORES-200-style code (see :mod:`mtllm.languages`).

Each task loads from a local data directory (``data_dir`` argument, else ``$MTLLM_DATA_DIR``) laid out as
the dataset is distributed, or, with no data directory, from the Hugging Face hub (``datasets``, lazily):

=============  ====================================================================================
task           local layout under ``DATA_DIR`` (hub id)
=============  ====================================================================================
sib200         ``sib200/<code>/{train,dev,test}.tsv`` + ``labels.txt`` (``Davlan/sib200``, config = code)
nusax          ``nusax-senti/<language name>/{train,valid,test}.csv`` (``indonlp/NusaX-senti``, config =
               ISO 639-3 code, e.g. ``nij``)
xnli           ``xnli/xnli.{dev,test}.tsv`` (XNLI-1.0 release) or ``xnli/<iso or code>/<split>.{jsonl,tsv,
               csv}`` in the hub's columns premise/hypothesis/label (``facebook/xnli``, config = ISO 639-1)
americasnli    ``americasnli/{dev,test}/<config>.tsv`` (the AmericasNLI release) or
               ``americasnli/<config or code>/<split>.{jsonl,tsv,csv}`` (``nala-cub/americas_nli``)
kardes-nlu     ``kardes-nlu/[Data/]<language>/xnli.{dev,test}.<iso>.csv`` (the Kardeş-NLU GitHub release,
               https://github.com/lksenel/Kardes-NLU: it is not on the hub)
belebele       ``belebele/<code>.jsonl`` (test) and, for training data you supply yourself,
               ``belebele/{train,validation}/<code>.jsonl`` (``facebook/belebele``, config = code, test only)
=============  ====================================================================================

Split names are always ``train`` / ``validation`` / ``test`` (``TaskSpec.splits`` maps them to the dataset's).
AmericasNLI and Kardeş-NLU have no training split: they are trained on English XNLI (= MNLI),
``TaskSpec.train_task``; :func:`load_train_examples` follows that. Belebele has no training split either:
supply English multiple-choice data in Belebele's columns as ``belebele/train/eng_Latn.jsonl``.

Bad input fails loudly, naming the file (and line) and the fix: unknown task or language, missing file,
missing columns, non-UTF-8 text, a label outside ``TaskSpec.label_names``, an empty text.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .languages import FLORES200, SIB200_CODES, UnknownLanguageError, suggest_languages, validate_lang

__all__ = [
    "Example", "TaskSpec", "TASKS", "SPLITS", "DATA_DIR_ENV", "TaskDataError", "DataNotFoundError",
    "DataUnavailableError", "get_task", "list_tasks", "resolve_data_dir", "available_languages",
    "load_examples", "load_train_examples",
]

SPLITS = ("train", "validation", "test")
DATA_DIR_ENV = "MTLLM_DATA_DIR"
_SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation"}


# ---------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Example:
    id: str                 # stable id; the same id in two languages = translations of each other
    texts: tuple[str, ...]  # (text,) | (premise, hypothesis) | (passage, question)
    label: int              # index into TaskSpec.label_names (multiple choice: the correct option); -1 unknown
    options: tuple[str, ...] = ()   # multiple-choice answers


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                                   # classification | pair_classification | multiple_choice
    label_names: tuple[str, ...]
    hub_id: str | None
    languages: tuple[str, ...]                  # FLORES-200-style codes
    train_lang: str = "eng_Latn"
    splits: Mapping[str, str] = field(default_factory=dict, compare=False)  # ours -> the dataset's
    description: str = ""
    metric: str = "accuracy"
    hub_configs: Mapping[str, str] = field(default_factory=dict, compare=False)  # code -> hub config
    local_dir: str = ""                         # folder under the data directory
    local_names: Mapping[str, str] = field(default_factory=dict, compare=False)  # code -> local folder/file
    train_task: str | None = None               # task whose train split (in train_lang) trains this one
    hub_loadable: bool = True
    notes: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def hub_config(self, lang: str) -> str:
        return self.hub_configs.get(lang, lang)

    def local_name(self, lang: str) -> str:
        return self.local_names.get(lang, lang)


class TaskDataError(ValueError):
    """Task data that cannot be used as it is; the message names the file (and line) and the fix."""


class DataNotFoundError(TaskDataError, FileNotFoundError):
    """An expected local file or folder is missing."""


class DataUnavailableError(TaskDataError):
    """Neither a local data directory nor the hub could provide the data."""


# ------------------------------------------------------------------------------------------ registry
_NLI_LABELS = ("entailment", "neutral", "contradiction")

_NUSAX = {  # local folder name -> (FLORES code, hub config)
    "acehnese": ("ace_Latn", "ace"), "balinese": ("ban_Latn", "ban"), "banjarese": ("bjn_Latn", "bjn"),
    "buginese": ("bug_Latn", "bug"), "english": ("eng_Latn", "eng"), "indonesian": ("ind_Latn", "ind"),
    "javanese": ("jav_Latn", "jav"), "madurese": ("mad_Latn", "mad"), "minangkabau": ("min_Latn", "min"),
    "ngaju": ("nij_Latn", "nij"), "sundanese": ("sun_Latn", "sun"), "toba_batak": ("bbc_Latn", "bbc"),
}

_XNLI = {  # ISO 639-1 config -> FLORES code
    "ar": "arb_Arab", "bg": "bul_Cyrl", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn",
    "es": "spa_Latn", "fr": "fra_Latn", "hi": "hin_Deva", "ru": "rus_Cyrl", "sw": "swh_Latn",
    "th": "tha_Thai", "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans",
}

_AMERICASNLI = {  # AmericasNLI config -> code. aym/gn/quy are FLORES-200 languages; the other seven are not.
    "aym": "ayr_Latn", "bzd": "bzd_Latn", "cni": "cni_Latn", "gn": "grn_Latn", "hch": "hch_Latn",
    "nah": "nah_Latn", "oto": "oto_Latn", "quy": "quy_Latn", "shp": "shp_Latn", "tar": "tar_Latn",
}

_KARDES = {  # folder -> (ISO 639-1 used in the file names, code)
    "azeri": ("az", "azj_Latn"), "kazakh": ("kk", "kaz_Cyrl"), "kyrgyz": ("ky", "kir_Cyrl"),
    "uzbek": ("uz", "uzn_Latn"),
    # Kardeş-NLU's Uyghur is written in Cyrillic (e.g. "Мән уни баштин-ахир яхши чүшәндим."), so it is
    # uig_Cyrl, not NLLB's Arabic-script uig_Arab; encoders reach it through an explicit, warned fallback.
    "uyghur": ("ug", "uig_Cyrl"),
}

_BELEBELE = (
    "acm_Arab", "afr_Latn", "als_Latn", "amh_Ethi", "apc_Arab", "arb_Arab", "arb_Latn", "ars_Arab", "ary_Arab",
    "arz_Arab", "asm_Beng", "azj_Latn", "bam_Latn", "ben_Beng", "ben_Latn", "bod_Tibt", "bul_Cyrl", "cat_Latn",
    "ceb_Latn", "ces_Latn", "ckb_Arab", "dan_Latn", "deu_Latn", "ell_Grek", "eng_Latn", "est_Latn", "eus_Latn",
    "fin_Latn", "fra_Latn", "fuv_Latn", "gaz_Latn", "grn_Latn", "guj_Gujr", "hat_Latn", "hau_Latn", "heb_Hebr",
    "hin_Deva", "hin_Latn", "hrv_Latn", "hun_Latn", "hye_Armn", "ibo_Latn", "ilo_Latn", "ind_Latn", "isl_Latn",
    "ita_Latn", "jav_Latn", "jpn_Jpan", "kac_Latn", "kan_Knda", "kat_Geor", "kaz_Cyrl", "kea_Latn", "khk_Cyrl",
    "khm_Khmr", "kin_Latn", "kir_Cyrl", "kor_Hang", "lao_Laoo", "lin_Latn", "lit_Latn", "lug_Latn", "luo_Latn",
    "lvs_Latn", "mal_Mlym", "mar_Deva", "mkd_Cyrl", "mlt_Latn", "mri_Latn", "mya_Mymr", "nld_Latn", "nob_Latn",
    "npi_Deva", "npi_Latn", "nso_Latn", "nya_Latn", "ory_Orya", "pan_Guru", "pbt_Arab", "pes_Arab", "plt_Latn",
    "pol_Latn", "por_Latn", "ron_Latn", "rus_Cyrl", "shn_Mymr", "sin_Latn", "sin_Sinh", "slk_Latn", "slv_Latn",
    "sna_Latn", "snd_Arab", "som_Latn", "sot_Latn", "spa_Latn", "srp_Cyrl", "ssw_Latn", "sun_Latn", "swe_Latn",
    "swh_Latn", "tam_Taml", "tel_Telu", "tgk_Cyrl", "tgl_Latn", "tha_Thai", "tir_Ethi", "tsn_Latn", "tso_Latn",
    "tur_Latn", "ukr_Cyrl", "urd_Arab", "urd_Latn", "uzn_Latn", "vie_Latn", "war_Latn", "wol_Latn", "xho_Latn",
    "yor_Latn", "zho_Hans", "zho_Hant", "zsm_Latn", "zul_Latn",
)

SIB200_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")

TASKS: dict[str, TaskSpec] = {
    "sib200": TaskSpec(
        name="sib200", kind="classification", label_names=SIB200_LABELS, hub_id="Davlan/sib200",
        languages=tuple(sorted(SIB200_CODES)),
        splits={"train": "train", "validation": "validation", "test": "test"},
        description="SIB-200: topic classification of FLORES-200 sentences, 7 topics, 205 languages.",
        local_dir="sib200"),
    "nusax": TaskSpec(
        name="nusax", kind="classification", label_names=("negative", "neutral", "positive"),
        hub_id="indonlp/NusaX-senti", languages=tuple(sorted(c for c, _ in _NUSAX.values())),
        splits={"train": "train", "validation": "validation", "test": "test"},
        description="NusaX-senti: sentiment of parallel sentences in 10 Indonesian local languages, "
                    "Indonesian and English.",
        hub_configs={c: cfg for c, cfg in _NUSAX.values()}, local_dir="nusax-senti",
        local_names={c: folder for folder, (c, _) in _NUSAX.items()},
        notes="mad_Latn, nij_Latn and bbc_Latn are not NLLB languages: encoders need an explicit fallback "
              "(mtllm.languages.ENCODER_FALLBACKS)."),
    "xnli": TaskSpec(
        name="xnli", kind="pair_classification", label_names=_NLI_LABELS, hub_id="facebook/xnli",
        languages=tuple(sorted(_XNLI.values())),
        splits={"train": "train", "validation": "validation", "test": "test"},
        description="XNLI: natural language inference (premise, hypothesis), 15 languages; train = MNLI.",
        hub_configs={c: iso for iso, c in _XNLI.items()}, local_dir="xnli",
        local_names={c: iso for iso, c in _XNLI.items()}),
    "americasnli": TaskSpec(
        name="americasnli", kind="pair_classification", label_names=_NLI_LABELS,
        hub_id="nala-cub/americas_nli", languages=tuple(sorted(_AMERICASNLI.values())),
        splits={"validation": "validation", "test": "test"},
        description="AmericasNLI: XNLI extended to 10 indigenous languages of the Americas "
                    "(validation and test only; trained on English XNLI/MNLI).",
        hub_configs={c: cfg for cfg, c in _AMERICASNLI.items()}, local_dir="americasnli",
        local_names={c: cfg for cfg, c in _AMERICASNLI.items()}, train_task="xnli",
        notes="Only ayr_Latn, grn_Latn and quy_Latn are NLLB languages; the other seven reach the encoder "
              "through the explicit spa_Latn fallback (mtllm.languages.ENCODER_FALLBACKS)."),
    "kardes-nlu": TaskSpec(
        name="kardes-nlu", kind="pair_classification", label_names=_NLI_LABELS, hub_id="lksenel/Kardes-NLU",
        languages=tuple(sorted(c for _, c in _KARDES.values())),
        splits={"validation": "dev", "test": "test"},
        description="Kardeş-NLU (Senel et al., 2024): XNLI in 5 low-resource Turkic languages "
                    "(dev and test only; trained on English XNLI/MNLI).",
        local_dir="kardes-nlu", local_names={c: folder for folder, (_, c) in _KARDES.items()},
        train_task="xnli", hub_loadable=False,
        notes="Distributed on GitHub (https://github.com/lksenel/Kardes-NLU), not on the HF hub: clone it and "
              "point the data directory at it (DATA_DIR/kardes-nlu). Its Uyghur is in Cyrillic: uig_Cyrl."),
    "belebele": TaskSpec(
        name="belebele", kind="multiple_choice", label_names=("1", "2", "3", "4"), hub_id="facebook/belebele",
        languages=_BELEBELE, splits={"test": "test"},
        description="Belebele: multiple-choice reading comprehension on FLORES-200 passages, 4 options, "
                    "122 language variants (test only).",
        local_dir="belebele",
        notes="No training data: supply English multiple-choice examples in Belebele's columns "
              "(flores_passage, question, mc_answer1..4, correct_answer_num) as "
              "DATA_DIR/belebele/train/eng_Latn.jsonl (and validation/ likewise)."),
}


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"nusax-senti": "nusax", "sib-200": "sib200", "americas-nli": "americasnli", "kardes": "kardes-nlu",
               "kardesnlu": "kardes-nlu", "kardeş-nlu": "kardes-nlu"}
    key = aliases.get(key, key)
    if key in TASKS:
        return TASKS[key]
    close = difflib.get_close_matches(key, list(TASKS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(list_tasks())}.")


# ------------------------------------------------------------------------------------------ data dir
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory: ``data_dir``, else ``$MTLLM_DATA_DIR``, else ``None`` (= load from the hub)."""
    source = "data_dir"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        source = f"${DATA_DIR_ENV}"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(
            f"the data directory {str(path)!r} (from {source}) does not exist or is not a folder; pass "
            f"--data-dir DIR / set {DATA_DIR_ENV} to a folder holding e.g. sib200/ or nusax-senti/, or leave "
            f"both unset to load from the Hugging Face hub.")
    return path


# ------------------------------------------------------------------------------------------ helpers
def _check_lang(spec: TaskSpec, lang: str) -> str:
    code = validate_lang(lang)
    if code in spec.languages:
        return code
    if spec.name == "kardes-nlu" and code == "uig_Arab":
        raise UnknownLanguageError(
            "kardes-nlu has no 'uig_Arab': its Uyghur data is written in Cyrillic script, so it is 'uig_Cyrl' "
            "(encoders reach it through the explicit uig_Cyrl fallback in mtllm.languages.ENCODER_FALLBACKS).")
    close = suggest_languages(code, spec.languages)
    hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
    raise UnknownLanguageError(
        f"task {spec.name!r} has no language {code!r} ({FLORES200[code]}).{hint} Its {len(spec.languages)} "
        f"languages are mtllm.tasks.get_task({spec.name!r}).languages.")


def _check_split(spec: TaskSpec, split: str) -> str:
    s = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    if s not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if s in spec.splits or spec.name == "belebele":  # belebele: train/validation only from your own files
        return s
    if s == "train" and spec.train_task:
        raise ValueError(
            f"task {spec.name!r} has no 'train' split: train on {spec.train_task!r} in {spec.train_lang!r} "
            f"instead (load_examples({spec.train_task!r}, {spec.train_lang!r}, 'train'), or "
            f"load_train_examples({spec.name!r})).")
    raise ValueError(f"task {spec.name!r} has no {s!r} split; use one of {', '.join(spec.splits)}.")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TaskDataError(
            f"{path} is not UTF-8 (invalid byte 0x{raw[err.start]:02x} at offset {err.start}); re-encode it, e.g. "
            f"`iconv -f LATIN1 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`.") from None


Row = tuple[str, dict[str, Any]]  # (where, row)


def _read_rows(path: Path, *, quoting: int = csv.QUOTE_MINIMAL) -> tuple[list[str], Iterator[Row]]:
    """Columns and rows of a .tsv/.csv/.jsonl file; ``where`` is ``path:line`` for error messages."""
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows: list[Row] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(f"{path}:{n}: not valid JSON ({err.msg}); each line must be one JSON "
                                    f"object.") from None
            if not isinstance(obj, dict):
                raise TaskDataError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}.")
            rows.append((f"{path}:{n}", obj))
        return (list(rows[0][1]) if rows else []), iter(rows)
    if suffix in (".tsv", ".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",",
                                quoting=quoting)
        columns = list(reader.fieldnames or [])

        def gen() -> Iterator[Row]:
            for row in reader:
                if None in row:  # more fields than columns
                    raise TaskDataError(f"{path}:{reader.line_num}: {len(columns) + len(row[None])} fields but "
                                        f"the header has {len(columns)} ({columns}); check the delimiter/quoting.")
                yield f"{path}:{reader.line_num}", row
        return columns, gen()
    raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .tsv or .csv.")


def _require_columns(columns: Sequence[str], expected: Sequence[str], source: str, fix: str = "") -> None:
    missing = [c for c in expected if c not in columns]
    if not missing:
        return
    guesses = []
    for m in missing:
        close = difflib.get_close_matches(m, list(columns), n=1, cutoff=0.5)
        if close:
            guesses.append(f"{close[0]!r} -> {m!r}")
    rename = f" Rename {', '.join(guesses)}." if guesses else ""
    raise TaskDataError(f"{source}: missing column(s) {missing}; found {list(columns)}, expected "
                        f"{list(expected)}.{rename}{(' ' + fix) if fix else ''}")


def _text(value: Any, where: str, column: str) -> str:
    if value is None or not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else "empty"
        raise TaskDataError(f"{where}: {what} {column!r} (got {value!r}); every row needs text — fix or delete "
                            f"the row (nothing is dropped silently).")
    return value


def _label(spec: TaskSpec, value: Any, where: str, column: str, class_names: Sequence[str] | None = None) -> int:
    names = spec.label_names
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip())):
        idx = int(value)
        if idx == -1:
            return -1
        if class_names is not None:  # the hub's ClassLabel order: map by name
            if 0 <= idx < len(class_names) and class_names[idx] in names:
                return names.index(class_names[idx])
        elif 0 <= idx < len(names):
            return idx
    elif isinstance(value, str) and value.strip():
        v = value.strip()
        if v in names:
            return names.index(v)
        lowered = [n.lower() for n in names]
        if v.lower() in lowered:
            return lowered.index(v.lower())
    raise TaskDataError(f"{where}: label {value!r} in column {column!r} is not one of {spec.name}'s labels "
                        f"{list(names)} (or their indices 0..{len(names) - 1}); fix the row or the label names.")


def _limit_iter(examples: Iterable[Example], limit: int | None, source: str) -> list[Example]:
    out: list[Example] = []
    if limit == 0:
        return out
    for ex in examples:
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise TaskDataError(f"{source}: no examples (the file or split is empty); an empty evaluation set would "
                            f"give a meaningless score.")
    return out


# ------------------------------------------------------------------------------------------ row mappers
def _single(spec: TaskSpec, rows: Iterable[Row], *, id_col: str, text_col: str, label_col: str,
            class_names: Sequence[str] | None = None) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        rid = row.get(id_col)
        yield Example(id=str(rid) if rid not in (None, "") else str(n), texts=(_text(row.get(text_col), where,
                      text_col),), label=_label(spec, row.get(label_col), where, label_col, class_names))


def _pairs(spec: TaskSpec, rows: Iterable[Row], *, premise: str = "premise", hypothesis: str = "hypothesis",
           label_col: str = "label", id_cols: Sequence[str] = ("id",),
           class_names: Sequence[str] | None = None) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        rid = next((row[c] for c in id_cols if row.get(c) not in (None, "")), n)
        yield Example(id=str(rid), texts=(_text(row.get(premise), where, premise),
                                          _text(row.get(hypothesis), where, hypothesis)),
                      label=_label(spec, row.get(label_col), where, label_col, class_names))


_BELEBELE_COLUMNS = ("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
                     "correct_answer_num")


def _multiple_choice(spec: TaskSpec, rows: Iterable[Row]) -> Iterator[Example]:
    for n, (where, row) in enumerate(rows):
        options = tuple(_text(row.get(f"mc_answer{i}"), where, f"mc_answer{i}") for i in range(1, 5))
        raw = row.get("correct_answer_num")
        try:
            ans = int(str(raw).strip())
        except ValueError:
            ans = 0
        if not 1 <= ans <= 4:
            raise TaskDataError(f"{where}: correct_answer_num {raw!r} must be 1, 2, 3 or 4 (the 1-based number "
                                f"of the correct mc_answer).")
        if row.get("link") not in (None, "") and row.get("question_number") not in (None, ""):
            rid = f"{row['link']}#{row['question_number']}"
        else:
            rid = str(row.get("id", n))
        yield Example(id=rid, texts=(_text(row.get("flores_passage"), where, "flores_passage"),
                                     _text(row.get("question"), where, "question")),
                      label=ans - 1, options=options)


# ------------------------------------------------------------------------------------------ local
_GENERIC_SUFFIXES = (".jsonl", ".tsv", ".csv")
_SIB_FILES = {"train": "train", "validation": "dev", "test": "test"}      # Davlan/sib200 data/<code>/
_NUSAX_FILES = {"train": "train", "validation": "valid", "test": "test"}  # IndoNLP/nusax datasets/sentiment/


def _task_root(spec: TaskSpec, root: Path) -> Path:
    return root / spec.local_dir


def _local_sib200(spec: TaskSpec, root: Path, lang: str, split: str) -> Iterator[Example]:
    folder = _task_root(spec, root) / lang
    path = folder / f"{_SIB_FILES[split]}.tsv"
    _must_exist(spec, [path], lang, split)
    labels_txt = folder / "labels.txt"
    if labels_txt.is_file():
        found = [ln.strip() for ln in _decode(labels_txt).splitlines() if ln.strip()]
        if sorted(found) != sorted(spec.label_names):
            raise TaskDataError(f"{labels_txt}: labels {found} differ from SIB-200's {list(spec.label_names)}; "
                                f"this is not SIB-200 data, or the file is damaged.")
    columns, rows = _read_rows(path)
    _require_columns(columns, ("index_id", "category", "text"), str(path))
    return _single(spec, rows, id_col="index_id", text_col="text", label_col="category")


def _local_nusax(spec: TaskSpec, root: Path, lang: str, split: str) -> Iterator[Example]:
    path = _task_root(spec, root) / spec.local_name(lang) / f"{_NUSAX_FILES[split]}.csv"
    _must_exist(spec, [path], lang, split)
    columns, rows = _read_rows(path)
    _require_columns(columns, ("id", "text", "label"), str(path))
    return _single(spec, rows, id_col="id", text_col="text", label_col="label")


def _generic_pair_candidates(spec: TaskSpec, root: Path, lang: str, split: str) -> list[Path]:
    base = _task_root(spec, root)
    names = dict.fromkeys([spec.local_name(lang), spec.hub_config(lang), lang])
    split_names = dict.fromkeys([split, spec.splits.get(split, split), {"validation": "dev"}.get(split, split)])
    return [base / name / f"{s}{suf}" for name in names for s in split_names for suf in _GENERIC_SUFFIXES]


def _read_generic_pairs(spec: TaskSpec, path: Path) -> Iterator[Example]:
    columns, rows = _read_rows(path)
    _require_columns(columns, ("premise", "hypothesis", "label"), str(path),
                     "Local NLI files use the hub's columns premise, hypothesis, label.")
    return _pairs(spec, rows, id_cols=("id", "pairID"))


def _local_xnli(spec: TaskSpec, root: Path, lang: str, split: str) -> Iterator[Example]:
    candidates = _generic_pair_candidates(spec, root, lang, split)
    release = None
    if split in ("validation", "test"):
        release = _task_root(spec, root) / f"xnli.{'dev' if split == 'validation' else 'test'}.tsv"
        candidates.append(release)
    path = _must_exist(spec, candidates, lang, split)
    if path != release:
        return _read_generic_pairs(spec, path)
    # the XNLI-1.0 release: one file, all languages, tab-separated without quoting
    columns, rows = _read_rows(path, quoting=csv.QUOTE_NONE)
    _require_columns(columns, ("language", "gold_label", "sentence1", "sentence2"), str(path))
    iso = spec.hub_config(lang)
    mine = ((w, r) for w, r in rows if r.get("language") == iso)
    return _pairs(spec, mine, premise="sentence1", hypothesis="sentence2", label_col="gold_label",
                  id_cols=("pairID",))


def _local_americasnli(spec: TaskSpec, root: Path, lang: str, split: str) -> Iterator[Example]:
    cfg = spec.hub_config(lang)
    release = _task_root(spec, root) / ("dev" if split == "validation" else split) / f"{cfg}.tsv"
    path = _must_exist(spec, [release] + _generic_pair_candidates(spec, root, lang, split), lang, split)
    if path != release:
        return _read_generic_pairs(spec, path)
    columns, rows = _read_rows(path, quoting=csv.QUOTE_NONE)
    _require_columns(columns, ("premise", "hypothesis", "label"), str(path))
    return _pairs(spec, rows, id_cols=("id",))


def _local_kardes(spec: TaskSpec, root: Path, lang: str, split: str) -> Iterator[Example]:
    folder = spec.local_name(lang)
    iso = _KARDES[folder][0]
    fname = f"xnli.{spec.splits[split]}.{iso}.csv"
    base = _task_root(spec, root)
    path = _must_exist(spec, [base / folder / fname, base / "Data" / folder / fname], lang, split)
    columns, rows = _read_rows(path)
    _require_columns(columns, ("gold_label", "s1_translation", "s2_translation"), str(path),
                     "Kardeş-NLU files hold gold_label, sentence1, sentence2 (English) and s1_translation, "
                     "s2_translation (the target language).")
    id_col = columns[0] if columns and columns[0] in ("", "Unnamed: 0", "id") else "id"
    return _pairs(spec, rows, premise="s1_translation", hypothesis="s2_translation", label_col="gold_label",
                  id_cols=(id_col,))


def _local_belebele(spec: TaskSpec, root: Path, lang: str, split: str) -> Iterator[Example]:
    base = _task_root(spec, root)
    candidates = [base / split / f"{lang}.jsonl"]
    if split == "test":
        candidates.insert(0, base / f"{lang}.jsonl")
    path = _must_exist(spec, candidates, lang, split)
    columns, rows = _read_rows(path)
    _require_columns(columns, _BELEBELE_COLUMNS, str(path))
    return _multiple_choice(spec, rows)


def _must_exist(spec: TaskSpec, candidates: Sequence[Path], lang: str, split: str) -> Path:
    for p in candidates:
        if p.is_file():
            return p
    shown = "\n  ".join(str(p) for p in candidates[:6]) + ("\n  ..." if len(candidates) > 6 else "")
    hub = (f", or leave --data-dir / {DATA_DIR_ENV} unset to load {spec.hub_id!r} from the Hugging Face hub"
           if spec.hub_loadable and split in spec.splits else "")
    extra = f" {spec.notes}" if spec.notes and (not spec.hub_loadable or split not in spec.splits) else ""
    raise DataNotFoundError(f"no local {spec.name} data for {lang!r} split {split!r}; looked for:\n  {shown}\n"
                            f"Put the file there{hub}.{extra}")


_LOCAL: dict[str, Callable[[TaskSpec, Path, str, str], Iterator[Example]]] = {
    "sib200": _local_sib200, "nusax": _local_nusax, "xnli": _local_xnli, "americasnli": _local_americasnli,
    "kardes-nlu": _local_kardes, "belebele": _local_belebele,
}


# ------------------------------------------------------------------------------------------ hub
def _load_hub(spec: TaskSpec, lang: str, split: str):
    if not spec.hub_loadable:
        raise DataUnavailableError(
            f"{spec.name} is not on the Hugging Face hub and no data directory is set; {spec.notes} Then pass "
            f"--data-dir DIR or set {DATA_DIR_ENV}.")
    if split not in spec.splits:
        raise DataUnavailableError(
            f"{spec.hub_id!r} has no {split!r} split on the hub (it has {', '.join(spec.splits)}). {spec.notes} "
            f"Pass --data-dir DIR or set {DATA_DIR_ENV}.")
    config, hub_split = spec.hub_config(lang), spec.splits[split]
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise DataUnavailableError(f"loading {spec.hub_id!r} needs the `datasets` package ({err}); install it, or "
                                   f"use local files: --data-dir DIR / {DATA_DIR_ENV}.") from None
    try:
        return datasets.load_dataset(spec.hub_id, config, split=hub_split)
    except Exception as err:  # network, missing config, auth, ...
        raise DataUnavailableError(
            f"could not load {spec.name} {lang!r} split {split!r}: no local data directory is set (pass "
            f"--data-dir DIR or set {DATA_DIR_ENV}; expected layout: see mtllm.tasks), and loading "
            f"{spec.hub_id!r} config {config!r} split {hub_split!r} from the Hugging Face hub failed: "
            f"{type(err).__name__}: {err}. Either provide the files locally or give this machine hub access to "
            f"{spec.hub_id!r}.") from err


def _hub_examples(spec: TaskSpec, lang: str, split: str) -> Iterator[Example]:
    ds = _load_hub(spec, lang, split)
    source = f"hub dataset {spec.hub_id!r} config {spec.hub_config(lang)!r} split {spec.splits[split]!r}"
    columns = list(getattr(ds, "column_names", None) or [])

    def rows() -> Iterator[Row]:
        for i, row in enumerate(ds):
            yield f"{source} row {i}", row

    def class_names(col: str) -> Sequence[str] | None:
        feat = (getattr(ds, "features", None) or {}).get(col)
        names = getattr(feat, "names", None)
        if names is not None and sorted(names) != sorted(spec.label_names):
            raise TaskDataError(f"{source}: its labels {list(names)} are not {spec.name}'s {list(spec.label_names)}.")
        return names

    if spec.name == "sib200":
        _require_columns(columns, ("index_id", "category", "text"), source)
        return _single(spec, rows(), id_col="index_id", text_col="text", label_col="category")
    if spec.name == "nusax":
        _require_columns(columns, ("text", "label"), source)
        return _single(spec, rows(), id_col="id", text_col="text", label_col="label", class_names=class_names("label"))
    if spec.kind == "pair_classification":
        _require_columns(columns, ("premise", "hypothesis", "label"), source)
        return _pairs(spec, rows(), class_names=class_names("label"))
    if spec.kind == "multiple_choice":
        _require_columns(columns, _BELEBELE_COLUMNS, source)
        return _multiple_choice(spec, rows())
    raise AssertionError(spec.name)  # pragma: no cover


# ------------------------------------------------------------------------------------------ public
def load_examples(task: str | TaskSpec, lang: str, split: str, data_dir: str | os.PathLike | None = None, *,
                  limit: int | None = None) -> list[Example]:
    """Examples of ``task`` in ``lang`` (FLORES-200-style code) for ``split`` (train/validation/test).

    From ``data_dir`` / ``$MTLLM_DATA_DIR`` when set (local files only: a missing file is an error, there is
    no silent switch to the hub), else from the Hugging Face hub. ``limit``: at most this many (the first).
    """
    spec = get_task(task)
    code = _check_lang(spec, lang)
    s = _check_split(spec, split)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}.")
    root = resolve_data_dir(data_dir)
    if root is None:
        examples = _hub_examples(spec, code, s)
        source = f"{spec.name} {code} {s} (hub {spec.hub_id!r})"
    else:
        examples = _LOCAL[spec.name](spec, root, code, s)
        source = f"{spec.name} {code} {s} (under {root})"
    return _limit_iter(examples, limit, source)


def load_train_examples(task: str | TaskSpec, data_dir: str | os.PathLike | None = None, *,
                        limit: int | None = None) -> list[Example]:
    """Training examples for ``task``: its own train split in ``train_lang``, or, for tasks without one
    (AmericasNLI, Kardeş-NLU), the train split of ``train_task`` (English XNLI = MNLI), whose labels are the
    same."""
    spec = get_task(task)
    if "train" in spec.splits or spec.train_task is None:
        return load_examples(spec, spec.train_lang, "train", data_dir, limit=limit)
    source = get_task(spec.train_task)
    assert source.label_names == spec.label_names, (source.name, spec.name)
    return load_examples(source, spec.train_lang, "train", data_dir, limit=limit)


def available_languages(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Languages of ``task``: those present under the data directory when one is set, else all of
    ``TaskSpec.languages`` (the hub has them all)."""
    spec = get_task(task)
    root = resolve_data_dir(data_dir)
    if root is None:
        return list(spec.languages)
    base = _task_root(spec, root)
    if not base.is_dir():
        raise DataNotFoundError(f"no {spec.name} data under {root}: expected the folder {base} "
                                f"(layout: see mtllm.tasks).")
    found: set[str] = set()
    by_local = {spec.local_name(c): c for c in spec.languages}
    by_config = {spec.hub_config(c): c for c in spec.languages}
    if spec.name == "kardes-nlu":
        for folder in (base, base / "Data"):
            if folder.is_dir():
                found |= {by_local[d.name] for d in folder.iterdir() if d.is_dir() and d.name in by_local
                          and any(d.glob("xnli.*.csv"))}
    elif spec.name == "belebele":
        for folder in [base] + [base / s for s in SPLITS]:
            if folder.is_dir():
                found |= {p.stem for p in folder.glob("*.jsonl") if p.stem in spec.languages}
    else:
        if spec.name == "xnli":  # the XNLI-1.0 release files: languages in their first column
            for f in ("xnli.dev.tsv", "xnli.test.tsv"):
                if (base / f).is_file():
                    isos = {line.split("\t", 1)[0] for line in _decode(base / f).splitlines()[1:]}
                    found |= {by_config[i] for i in isos if i in by_config}
        if spec.name == "americasnli":
            for s in ("dev", "test"):
                if (base / s).is_dir():
                    found |= {by_config[p.stem] for p in (base / s).glob("*.tsv") if p.stem in by_config}
        for d in base.iterdir():
            if not d.is_dir() or not any(d.iterdir()):
                continue
            code = by_local.get(d.name) or by_config.get(d.name) or (d.name if d.name in spec.languages else None)
            if code:
                found.add(code)
    return sorted(found)
