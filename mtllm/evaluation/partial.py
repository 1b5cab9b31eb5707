"""Per-language results kept while an evaluation runs, so that an interrupted evaluation continues where
it stopped instead of starting over.

A pocket evaluation of 60 languages takes hours on a laptop CPU; a crash, ``kill -9`` or the end of a
session at language 50 used to throw away all 50. After each language the evaluation now replaces
``<output_dir>/partial_results.json`` (atomically, fsynced) with everything measured so far, under a key
that holds every setting that changes the numbers and the saved models' own files
(:func:`mtllm.modeling.model.model_fingerprint`), each language with the digest of the examples it was
scored on. A rerun with the same key skips the languages it finds there whose data is unchanged (a language
whose file changed since is evaluated again); the file is removed once ``results.json`` is written. Settings that
only change *how* it is computed (``batch_size``, ``device``, ``output_dir``) are not in the key, so a run that ran
out of memory can continue with a smaller batch.

The file is a run record (:mod:`mtllm.records`), the key its identity: a partial file with another key (other
settings, or a model retrained since) is refused before any work, naming what differs; ``overwrite`` starts over
(with the same key too), and so does a file that cannot be read. Models passed in memory
(``run_evaluate(models=...)``) have no saved files to fingerprint, so such an evaluation keeps no partial results.
``mtllm run`` gets there only when a stage's inputs are unchanged (its stage folders are keyed by them), so it
always continues.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtllm.modeling.encoder_ft import encoder_ft_fingerprint
from mtllm.modeling.model import model_fingerprint
from mtllm.records import RunRecord
from mtllm.settings import dtype_name
from mtllm.tasks import train_file_digest

logger = logging.getLogger(__name__)

__all__ = ["PARTIAL_FILE", "PartialResults", "evaluation_key"]

PARTIAL_FILE = "partial_results.json"
#: settings that change how results are computed, not what they are
_NOT_IN_KEY = frozenset({"output_dir", "overwrite", "notes", "batch_size", "device"})
#: settings added later: in the key only when set, so partial results written before them still continue
_KEY_WHEN_SET = ("encoder_ft", "train_task", "train_file", "max_train_examples")


def _model_id(ref: str | None) -> str | None:
    """A saved MT-LLM folder's fingerprint, or the reference itself (a hub id, or nothing)."""
    if ref is None:
        return None
    return f"{ref}@{model_fingerprint(ref)}" if Path(ref).is_dir() else ref


def evaluation_key(settings: Any) -> dict[str, Any]:
    """What the numbers of an evaluation depend on: its settings (:class:`EvaluateSettings`) less
    :data:`_NOT_IN_KEY`, each model folder replaced by ``path@fingerprint`` and ``dtype`` by the weights' dtype
    (``auto`` resolved: bfloat16 or float32 on this device)."""
    values = {k: v for k, v in asdict(settings).items() if k not in _NOT_IN_KEY}
    if "dtype" in values:  # the weights' dtype, auto resolved on this device (bf16 and fp32 numbers never mix)
        values["dtype"] = dtype_name(values["dtype"], getattr(settings, "device", None))
    for name in ("model", "teacher"):
        values[name] = _model_id(values.get(name))
    values["compare"] = [f"{n}={_model_id(p)}" for n, _, p in (c.partition("=") for c in values.get("compare", []))]
    for name in _KEY_WHEN_SET:
        if values.get(name) is None:
            values.pop(name, None)
    if values.get("encoder_ft") is not None and Path(values["encoder_ft"]).is_dir():
        values["encoder_ft"] = f"{values['encoder_ft']}@{encoder_ft_fingerprint(values['encoder_ft'])}"
    if values.get("train_file") is not None:  # its bytes: a changed file is another evaluation
        values["train_file"] = f"{values['train_file']}@{train_file_digest(values['train_file'], settings.data_dir)}"
    return values


def _record(path: Path) -> RunRecord:
    """The partial results as a run record: ``{"key": key, "langs": {...}}``; a key written before ``dtype`` was
    resolved holds ``auto``, which continues with either."""
    return RunRecord(path, identity_field="key", state={"langs": dict}, legacy={"dtype": ("auto",)})


@dataclass
class PartialResults:
    """The languages an evaluation has finished, by code (each a plain JSON record the evaluation wrote)."""

    path: Path | None  # None: keeps nothing (models passed in memory)
    key: dict[str, Any]
    langs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the languages that came from an earlier, interrupted run
    resumed: tuple[str, ...] = ()

    @classmethod
    def open(cls, output_dir: str | Path, key: dict[str, Any], *, overwrite: bool = False) -> "PartialResults":
        """The partial results in ``output_dir`` for ``key`` (none yet: empty). Raises
        :class:`~mtllm.errors.ConfigError` when they were written with another key, unless ``overwrite``."""
        path = Path(output_dir) / PARTIAL_FILE
        partial = cls(path, key)
        found = _record(path).check(key, overwrite=overwrite, what=lambda record: (
            f"{path}, holding {len(record['langs'])} languages of an unfinished evaluation,"))
        if found.damaged:
            logger.info(f"[evaluate] {path} cannot be read ({found.damaged}); starting over")
        elif found.action == "fresh" and found.record is not None:
            logger.info(f"[evaluate] overwrite: discarding {len(found.record['langs'])} languages of partial results "
                        f"in {path}")
        elif found.action != "fresh":
            partial.langs, partial.resumed = found.record["langs"], tuple(found.record["langs"])
            if partial.langs:
                logger.info(f"[evaluate] continuing: {len(partial.langs)} languages already done ({path})")
        return partial

    @classmethod
    def off(cls) -> "PartialResults":
        """Partial results that keep nothing: for models passed in memory, which no key can identify."""
        return cls(None, {})

    def get(self, lang: str, data: str) -> dict[str, Any] | None:
        """The finished record of ``lang`` if it was computed from the same data (``data``: the digest of what the
        language's score is computed from, :func:`mtllm.fingerprints.examples_digest`), else ``None``: a language
        whose data file changed since (cut, edited, replaced) is evaluated again, never reported from old data."""
        record = self.langs.get(lang)
        if record is not None and record.get("data") != data:
            logger.info(f"[evaluate] {lang}: its data changed since the interrupted run ({PARTIAL_FILE}); evaluating "
                        "it "
                  f"again")
            self.resumed = tuple(code for code in self.resumed if code != lang)
            return None
        return record

    def add(self, lang: str, record: dict[str, Any], data: str) -> None:
        """Record one finished language, computed from ``data`` (see :meth:`get`); the file is replaced atomically
        and fsynced."""
        record = {**record, "data": data}
        self.langs[lang] = record
        if self.path is not None:
            _record(self.path).write(self.key, langs=self.langs)

    def notes(self) -> list[str]:
        """The results.md note saying that part of the results came from an interrupted run (none otherwise)."""
        if not self.resumed:
            return []
        return [f"continued after an interruption: {len(self.resumed)} languages came from {PARTIAL_FILE} (same "
                f"settings and models); seconds add up both runs"]

    def finish(self) -> None:
        """Remove the file once the complete results are written."""
        if self.path is not None:
            _record(self.path).remove()
