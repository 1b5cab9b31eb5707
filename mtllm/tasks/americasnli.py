"""AmericasNLI (Ebrahimi et al., 2022): XNLI extended to 10 indigenous languages of the Americas, validation
and test only; trained on English XNLI (= MNLI).

Local layout: ``DATA_DIR/americasnli/{dev,test}/<config>.tsv`` (the AmericasNLI release) or
``DATA_DIR/americasnli/<config or code>/<split>.{jsonl,tsv,csv}``; hub: ``nala-cub/americas_nli``."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from mtllm.tasks.examples import Example
from mtllm.tasks.readers import _must_exist, _pairs, _read_rows, _require_columns
from mtllm.tasks.spec import TaskSpec
from mtllm.tasks.registry import register_task
from mtllm.tasks.xnli import NLI_LABELS

__all__ = ["AMERICASNLI"]

_LANGS = {  # AmericasNLI config -> code. aym/gn/quy are FLORES-200 languages; the other seven are not.
    "aym": "ayr_Latn", "bzd": "bzd_Latn", "cni": "cni_Latn", "gn": "grn_Latn", "hch": "hch_Latn",
    "nah": "nah_Latn", "oto": "oto_Latn", "quy": "quy_Latn", "shp": "shp_Latn", "tar": "tar_Latn",
}
_RELEASE_SPLITS = ("dev", "test")  # the release's folder names


class AmericasNLITask(TaskSpec):
    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        cfg = self.hub_config(lang)
        release = self.local_root(root) / ("dev" if split == "validation" else split) / f"{cfg}.tsv"
        path = _must_exist(self, [release] + self.local_candidates(root, lang, split), lang, split)
        if path != release:
            return self.read_file(path)
        columns, rows = _read_rows(path, quoting=csv.QUOTE_NONE)
        _require_columns(columns, ("premise", "hypothesis", "label"), str(path))
        return _pairs(self, rows, id_cols=("id",))

    def local_languages(self, base: Path) -> set[str]:
        found = super().local_languages(base)
        by_config = {self.hub_config(c): c for c in self.languages}
        for s in _RELEASE_SPLITS:
            if (base / s).is_dir():
                found |= {by_config[p.stem] for p in (base / s).glob("*.tsv") if p.stem in by_config}
        return found


AMERICASNLI = register_task(AmericasNLITask(
    name="americasnli", kind="pair_classification", label_names=NLI_LABELS,
    hub_id="nala-cub/americas_nli", languages=tuple(sorted(_LANGS.values())),
    splits={"validation": "validation", "test": "test"},
    description="AmericasNLI: XNLI extended to 10 indigenous languages of the Americas "
                "(validation and test only; trained on English XNLI/MNLI).",
    hub_configs={c: cfg for cfg, c in _LANGS.items()}, local_dir="americasnli",
    local_names={c: cfg for cfg, c in _LANGS.items()}, train_task="xnli",
    notes="Only ayr_Latn, grn_Latn and quy_Latn are NLLB languages; the other seven reach the encoder "
          "through the explicit spa_Latn fallback (mtllm.data.languages.ENCODER_FALLBACKS).",
    aliases=("americas-nli",)))
