"""SIB-200 (Adelani et al., 2024): topic classification of FLORES-200 sentences, 7 topics, 205 languages.

Local layout (as in ``Davlan/sib200``'s ``data/``): ``DATA_DIR/sib200/<code>/{train,dev,test}.tsv`` with the
columns index_id, category, text, and ``labels.txt``; hub: ``Davlan/sib200``, config = code."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from mtllm.data.languages import SIB200_CODES
from mtllm.tasks.examples import Example, TaskDataError
from mtllm.tasks.readers import _hub_columns, _hub_rows, _must_exist, _read_lines, _read_rows, _require_columns, _single
from mtllm.tasks.spec import TaskSpec
from mtllm.tasks.registry import register_task

__all__ = ["SIB200_LABELS", "SIB200"]

SIB200_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
_COLUMNS = ("index_id", "category", "text")
_FILES = {"train": "train", "validation": "dev", "test": "test"}


class SIB200Task(TaskSpec):
    def read_local(self, root: Path, lang: str, split: str) -> Iterator[Example]:
        folder = self.local_root(root) / lang
        path = folder / f"{_FILES[split]}.tsv"
        _must_exist(self, [path], lang, split)
        labels_txt = folder / "labels.txt"
        if labels_txt.is_file():
            found = [ln.strip() for ln in _read_lines(labels_txt) if ln.strip()]
            if sorted(found) != sorted(self.label_names):
                raise TaskDataError(f"{labels_txt}: labels {found} differ from SIB-200's {list(self.label_names)}; "
                                    f"this is not SIB-200 data, or the file is damaged.")
        columns, rows = _read_rows(path)
        _require_columns(columns, _COLUMNS, str(path))
        return _single(self, rows, id_col="index_id", text_col="text", label_col="category")

    def read_hub(self, ds: Any, source: str) -> Iterator[Example]:
        _require_columns(_hub_columns(ds), _COLUMNS, source)
        return _single(self, _hub_rows(ds, source), id_col="index_id", text_col="text", label_col="category")


SIB200 = register_task(SIB200Task(
    name="sib200", kind="classification", label_names=SIB200_LABELS, hub_id="Davlan/sib200",
    languages=tuple(sorted(SIB200_CODES)),
    splits={"train": "train", "validation": "validation", "test": "test"},
    description="SIB-200: topic classification of FLORES-200 sentences, 7 topics, 205 languages.",
    local_dir="sib200", aliases=("sib-200",)))
