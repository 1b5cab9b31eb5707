"""XNLI (Conneau et al., 2018): natural language inference (premise, hypothesis), 15 languages; train = MNLI.

Local layout: ``DATA_DIR/xnli/xnli.{dev,test}.tsv`` (the XNLI-1.0 release: all languages in one unquoted
TSV) or ``DATA_DIR/xnli/<iso or code>/<split>.{jsonl,tsv,csv}`` in the hub's columns premise, hypothesis,
label; hub: ``facebook/xnli``, config = ISO 639-1."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from mtllm.tasks.examples import Example
from mtllm.tasks.readers import _must_exist, _pairs, _read_rows, _require_columns
from mtllm.tasks.spec import TaskSpec
from mtllm.tasks.registry import register_task

__all__ = ["NLI_LABELS", "XNLI"]

NLI_LABELS = ("entailment", "neutral", "contradiction")

_LANGS = {  # ISO 639-1 config -> FLORES code
    "ar": "arb_Arab", "bg": "bul_Cyrl", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn",
    "es": "spa_Latn", "fr": "fra_Latn", "hi": "hin_Deva", "ru": "rus_Cyrl", "sw": "swh_Latn",
    "th": "tha_Thai", "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans",
}
_RELEASE = {"validation": "xnli.dev.tsv", "test": "xnli.test.tsv"}


class XNLITask(TaskSpec):
    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        candidates = self.local_candidates(root, lang, split)
        release = self.local_root(root) / _RELEASE[split] if split in _RELEASE else None
        if release is not None:
            candidates.append(release)
        path = _must_exist(self, candidates, lang, split)
        if path != release:
            return self.read_file(path)
        # the XNLI-1.0 release: one file, all languages, tab-separated without quoting
        columns, rows = _read_rows(path, quoting=csv.QUOTE_NONE)
        _require_columns(columns, ("language", "gold_label", "sentence1", "sentence2"), str(path))
        iso = self.hub_config(lang)
        mine = ((w, r) for w, r in rows if r.get("language") == iso)
        return _pairs(self, mine, premise="sentence1", hypothesis="sentence2", label_col="gold_label",
                      id_cols=("pairID",))

    def local_languages(self, base: Path) -> set[str]:
        found = super().local_languages(base)
        for f in _RELEASE.values():  # the release files: languages in their "language" column
            if (base / f).is_file():
                _, rows = _read_rows(base / f, quoting=csv.QUOTE_NONE)
                isos = {row.get("language") for _, row in rows}
                found |= {_LANGS[i] for i in isos if i in _LANGS}
        return found


XNLI = register_task(XNLITask(
    name="xnli", kind="pair_classification", label_names=NLI_LABELS, hub_id="facebook/xnli",
    languages=tuple(sorted(_LANGS.values())),
    splits={"train": "train", "validation": "validation", "test": "test"},
    description="XNLI: natural language inference (premise, hypothesis), 15 languages; train = MNLI.",
    hub_configs={c: iso for iso, c in _LANGS.items()}, local_dir="xnli",
    local_names={c: iso for iso, c in _LANGS.items()}))
