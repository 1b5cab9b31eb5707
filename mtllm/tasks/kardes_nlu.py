"""Kardeş-NLU (Senel et al., 2024): XNLI in 5 low-resource Turkic languages, dev and test only; trained on
English XNLI (= MNLI).

Local layout (the GitHub release, https://github.com/lksenel/Kardes-NLU; it is not on the hub):
``DATA_DIR/kardes-nlu/[Data/]<language>/xnli.{dev,test}.<iso>.csv`` with the columns gold_label,
s1_translation, s2_translation."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mtllm.data.languages import UnknownLanguageError, validate_lang
from mtllm.tasks.examples import Example
from mtllm.tasks.readers import _must_exist, _pairs, _read_rows, _require_columns
from mtllm.tasks.spec import TaskSpec
from mtllm.tasks.registry import register_task
from mtllm.tasks.xnli import NLI_LABELS

__all__ = ["KARDES_NLU"]

_LANGS = {  # folder -> (ISO 639-1 used in the file names, code)
    "azeri": ("az", "azj_Latn"), "kazakh": ("kk", "kaz_Cyrl"), "kyrgyz": ("ky", "kir_Cyrl"),
    "uzbek": ("uz", "uzn_Latn"),
    # Kardeş-NLU's Uyghur is written in Cyrillic (e.g. "Мән уни баштин-ахир яхши чүшәндим."), so it is
    # uig_Cyrl, not NLLB's Arabic-script uig_Arab; encoders reach it through an explicit, warned fallback.
    "uyghur": ("ug", "uig_Cyrl"),
}


class KardesNLUTask(TaskSpec):
    def check_lang(self, lang: str) -> str:
        if validate_lang(lang) == "uig_Arab":
            raise UnknownLanguageError(
                "kardes-nlu has no 'uig_Arab': its Uyghur data is written in Cyrillic script, so it is 'uig_Cyrl' "
                "(encoders reach it through the explicit uig_Cyrl fallback in "
                "mtllm.data.languages.ENCODER_FALLBACKS).")
        return super().check_lang(lang)

    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        folder = self.local_name(lang)
        fname = f"xnli.{self.splits[split]}.{_LANGS[folder][0]}.csv"
        base = self.local_root(root)
        path = _must_exist(self, [base / folder / fname, base / "Data" / folder / fname], lang, split)
        columns, rows = _read_rows(path)
        _require_columns(columns, ("gold_label", "s1_translation", "s2_translation"), str(path),
                         "Kardeş-NLU files hold gold_label, sentence1, sentence2 (English) and s1_translation, "
                         "s2_translation (the target language).")
        id_col = columns[0] if columns and columns[0] in ("", "Unnamed: 0", "id") else "id"
        return _pairs(self, rows, premise="s1_translation", hypothesis="s2_translation", label_col="gold_label",
                      id_cols=(id_col,))

    def local_languages(self, base: Path) -> set[str]:
        by_local = {self.local_name(c): c for c in self.languages}
        found: set[str] = set()
        for folder in (base, base / "Data"):
            if folder.is_dir():
                found |= {by_local[d.name] for d in folder.iterdir() if d.is_dir() and d.name in by_local
                          and any(d.glob("xnli.*.csv"))}
        return found


KARDES_NLU = register_task(KardesNLUTask(
    name="kardes-nlu", kind="pair_classification", label_names=NLI_LABELS, hub_id="lksenel/Kardes-NLU",
    languages=tuple(sorted(c for _, c in _LANGS.values())),
    splits={"validation": "dev", "test": "test"},
    description="Kardeş-NLU (Senel et al., 2024): XNLI in 5 low-resource Turkic languages "
                "(dev and test only; trained on English XNLI/MNLI).",
    local_dir="kardes-nlu", local_names={c: folder for folder, (_, c) in _LANGS.items()},
    train_task="xnli", hub_loadable=False,
    notes="Distributed on GitHub (https://github.com/lksenel/Kardes-NLU), not on the HF hub: clone it and "
          "point the data directory at it (DATA_DIR/kardes-nlu). Its Uyghur is in Cyrillic: uig_Cyrl.",
    aliases=("kardes", "kardesnlu", "kardeş-nlu")))
