"""Belebele (Bandarkar et al., 2024): multiple-choice reading comprehension on FLORES-200 passages, 4
options, 122 language variants, test only.

Local layout: ``DATA_DIR/belebele/<code>.jsonl`` (test) and, for training data you supply yourself,
``DATA_DIR/belebele/{train,validation}/<code>.jsonl``; hub: ``facebook/belebele``, config = code, test only."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mtllm.tasks.examples import SPLITS, Example, _normalise_split
from mtllm.tasks.readers import _must_exist, _read_rows, _require_columns
from mtllm.tasks.spec import TaskSpec
from mtllm.tasks.registry import register_task

__all__ = ["BELEBELE"]

_LANGS = (
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


class BelebeleTask(TaskSpec):
    def check_split(self, split: str) -> str:
        return _normalise_split(split)  # the hub has test only; train/validation come from your own files

    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        base = self.local_root(root)
        candidates = [base / split / f"{lang}.jsonl"]
        if split == "test":
            candidates.insert(0, base / f"{lang}.jsonl")
        path = _must_exist(self, candidates, lang, split)
        columns, rows = _read_rows(path)
        _require_columns(columns, self.columns, str(path))
        return self.map_rows(rows)

    def local_languages(self, base: Path) -> set[str]:
        found: set[str] = set()
        for folder in [base] + [base / s for s in SPLITS]:
            if folder.is_dir():
                found |= {p.stem for p in folder.glob("*.jsonl") if p.stem in self.languages}
        return found


BELEBELE = register_task(BelebeleTask(
    name="belebele", kind="multiple_choice", label_names=("1", "2", "3", "4"), hub_id="facebook/belebele",
    languages=_LANGS, splits={"test": "test"},
    description="Belebele: multiple-choice reading comprehension on FLORES-200 passages, 4 options, "
                "122 language variants (test only).",
    local_dir="belebele",
    notes="No training data: supply English multiple-choice examples in Belebele's columns "
          "(flores_passage, question, mc_answer1..4, correct_answer_num) as "
          "DATA_DIR/belebele/train/eng_Latn.jsonl (and validation/ likewise)."))
