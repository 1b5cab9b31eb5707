"""NusaX-senti (Winata et al., 2023): sentiment of parallel sentences in 10 Indonesian local languages,
Indonesian and English.

Local layout (as in IndoNLP/nusax ``datasets/sentiment/``): ``DATA_DIR/nusax-senti/<language name>/
{train,valid,test}.csv`` with the columns id, text, label; hub: ``indonlp/NusaX-senti``, config = ISO 639-3."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mtllm.tasks.examples import Example
from mtllm.tasks.readers import _must_exist, _read_rows, _require_columns, _single
from mtllm.tasks.spec import TaskSpec
from mtllm.tasks.registry import register_task

__all__ = ["NUSAX"]

_LANGS = {  # local folder name -> (FLORES code, hub config)
    "acehnese": ("ace_Latn", "ace"), "balinese": ("ban_Latn", "ban"), "banjarese": ("bjn_Latn", "bjn"),
    "buginese": ("bug_Latn", "bug"), "english": ("eng_Latn", "eng"), "indonesian": ("ind_Latn", "ind"),
    "javanese": ("jav_Latn", "jav"), "madurese": ("mad_Latn", "mad"), "minangkabau": ("min_Latn", "min"),
    "ngaju": ("nij_Latn", "nij"), "sundanese": ("sun_Latn", "sun"), "toba_batak": ("bbc_Latn", "bbc"),
}
_FILES = {"train": "train", "validation": "valid", "test": "test"}


class NusaXTask(TaskSpec):
    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        path = self.local_root(root) / self.local_name(lang) / f"{_FILES[split]}.csv"
        _must_exist(self, [path], lang, split)
        columns, rows = _read_rows(path)
        _require_columns(columns, ("id", "text", "label"), str(path))
        return _single(self, rows, id_col="id", text_col="text", label_col="label")


NUSAX = register_task(NusaXTask(
    name="nusax", kind="classification", label_names=("negative", "neutral", "positive"),
    hub_id="indonlp/NusaX-senti", languages=tuple(sorted(c for c, _ in _LANGS.values())),
    splits={"train": "train", "validation": "validation", "test": "test"},
    description="NusaX-senti: sentiment of parallel sentences in 10 Indonesian local languages, "
                "Indonesian and English.",
    hub_configs={c: cfg for c, cfg in _LANGS.values()}, local_dir="nusax-senti",
    local_names={c: folder for folder, (c, _) in _LANGS.items()},
    notes="mad_Latn, nij_Latn and bbc_Latn are not NLLB languages: encoders need an explicit fallback "
          "(mtllm.data.languages.ENCODER_FALLBACKS).",
    aliases=("nusax-senti",)))
