"""Predictions and embeddings for a user's file, streamed and resumable: ``mtllm predict`` and ``mtllm encode``
(:func:`predict_file`, :func:`encode_file`, their settings :class:`PredictFileSettings`,
:class:`EncodeFileSettings`, and the job that runs them).

**Input**: the rows of the file (:mod:`mtllm.inference.rows`: ``.txt``, ``.csv``, ``.tsv``, ``.jsonl`` or
``.parquet``, streamed by the one table reader), never whole: memory stays that of one chunk of ``chunk_size`` rows
(4096) whatever the file's size. A cheap first pass counts the rows (for the progress bar's ETA and the size of a
``.npy`` output) and checks every row that can be checked without the model (so ``--on_bad_row fail`` stops before
any model work). Rows are numbered from 1 (the first data row); a row's id is its ``id_column`` value, or its row
number when there is no id column.

**Per chunk**, rows are grouped by language and length-sorted into batches
(:func:`mtllm.modeling.predict.score_texts`, :func:`mtllm.modeling.embed.embed_texts`); output rows come out
in input order, one per input row.

**Bad rows** never vanish. A row with no text at all (blank, missing, only characters the tokenizer drops), an
empty answer option, or no / an unknown / an uncovered language is, with ``on_bad_row="skip"`` (the default),
written with an empty label (embedding: NaN in ``.npy``, null in Parquet) and its reason in the ``skipped``
column, and counted; with ``on_bad_row="fail"`` it is a :class:`~mtllm.errors.DataError` naming the file, the
row and the column (before any model work for what the first pass sees, else before that chunk is written). A
pair row with one blank segment is kept, that segment empty, and counted (``blank_segment``). A malformed row
(:mod:`mtllm.tables`: more or fewer fields than the header, bad quoting, a lone ``\\r``, a JSON line that is not
an object or not valid JSON, a lone surrogate) is such a bad row too, its reason the reader's (``too many
fields``, ``not a JSON object``, ...; ``fail`` names its line); a file that cannot be read at all (not UTF-8, no
header, a quote that never closes) is an error in either mode.

**Resumable.** Output is written chunk by chunk, flushed and fsynced (:mod:`mtllm.inference.writers`, which has the
formats), and after each chunk a small sidecar ``<output>.progress.json``
(:data:`~mtllm.inference.writers.PROGRESS_SUFFIX`) is replaced atomically: rows done, the output's byte offset (or
part count), the input's size and sha256, the model's fingerprint and the settings that change the output
(``dtype`` as the weights' dtype: ``auto`` resolved to bfloat16 or float32 on this device): a run record
(:mod:`mtllm.records`). Rerunning the same command after Ctrl-C or ``kill -9`` truncates the output to the recorded
offset and continues with the next row: no row lost or written twice (the output equals an uninterrupted run's, byte
for byte). A rerun with other settings, another model or a changed input is refused, naming what differs, unless
``--overwrite``; a finished run (sidecar ``"complete": true``, kept with the counts) says it is done.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from mtllm._io import file_sha256, remove_path
from mtllm.data.languages import validate_lang
from mtllm.errors import ConfigError, DataError, UnknownLanguageError, UnsupportedLanguageError
from mtllm.inference.rows import CHUNK_ROWS, INPUT_SUFFIXES, Row, _blank, _suffix, iter_rows
from mtllm.inference.writers import (ENCODE_SUFFIXES, PREDICT_SUFFIXES, PROGRESS_SUFFIX, _ids_path, _NpySink,
                                     _ParquetSink, _TextSink, output_paths, output_problem)
from mtllm.locks import exclusive_output
from mtllm.modeling.embed import embed_texts
from mtllm.modeling.model import MTLLMModel
from mtllm.modeling.predict import check_head, encoder_code, model_route, score_texts, softmax
from mtllm.modeling.serialization import model_fingerprint
from mtllm.records import RunRecord
from mtllm.settings import (MODEL, InferenceDtype, Rule, at_least, check_settings, dtype_name, inference_device_field,
                            inference_dtype_field, parse_dtype)

logger = logging.getLogger(__name__)

__all__ = ["PredictFileSettings", "EncodeFileSettings", "predict_file", "encode_file"]

_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------ settings
def _required(example: str) -> Rule:
    return Rule("given", lambda v, _: f"give it, e.g. {example}" if v is None else None, on_null=True)


def _input_file(value: Any, _: Any) -> str | None:
    path = Path(str(value)).expanduser()
    if _suffix(path) not in INPUT_SUFFIXES:
        return f"use a {', '.join(INPUT_SUFFIXES)} file"
    if path.is_dir():
        return f"{path} is a folder; give a file"
    return None if path.is_file() else f"there is no file {path}"


def _output_file(suffixes: Sequence[str]) -> tuple[Rule, Rule]:
    """The rules of an output file: its suffix, then (``io``) what the file system has there."""
    def suffix(value: Any, _: Any) -> str | None:
        if _suffix(Path(str(value)).expanduser()) not in suffixes:
            return f"the output type is set by its suffix: {', '.join(suffixes)}"
        return None

    def problem(value: Any, settings: Any) -> str | None:
        path = Path(str(value)).expanduser()
        if path.is_dir():
            return f"{path} is a folder; give a file path"
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"{parent} is a file, not a folder"
        if getattr(settings, "input", None) and path.resolve() == Path(settings.input).expanduser().resolve():
            return "it is the input file; write the output elsewhere"
        given = getattr(settings, "input", None)
        return output_problem(path, Path(str(given)).expanduser() if given else None)

    text = f"a {'/'.join(suffixes)} file path"
    return Rule(text, suffix), Rule(text, problem, io=True)


def _lang_code(value: Any, _: Any) -> str | None:
    if value == "auto":
        return None
    try:
        validate_lang(str(value))
    except UnknownLanguageError as err:
        return str(err)
    return None


INPUT_FILE = Rule(f"a {'/'.join(INPUT_SUFFIXES)} file", _input_file, inputs=True)
LANG_OR_AUTO = Rule("a FLORES-200 code (e.g. swh_Latn) or 'auto'", _lang_code)


@dataclass
class _FileSettings:
    """A model and a file of texts."""

    model: str | None = field(default=None, metadata={"help": "The MT-LLM folder (distill's DIR/final, finetune's "
                                                              "DIR/best; for encode any MT-LLM).",
                                                      "check": (_required("--model runs/pocket/distill-sib200/final"),
                                                                MODEL)})
    input: str | None = field(default=None, metadata={"help": "Input file: .txt (one text per line), .csv, .tsv, "
                                                              ".jsonl or .parquet; streamed.",
                                                      "check": (_required("--input texts.csv"), INPUT_FILE)})
    text_column: str = field(default="text", metadata={"help": "Column (JSON field) holding the text (not used for "
                                                               ".txt)."})
    lang: str | None = field(default=None, metadata={"help": "Language of every text (FLORES-200 code), or 'auto' to "
                                                             "detect each text's (mtllm.langid); or give lang_column.",
                                                     "check": LANG_OR_AUTO})
    lang_column: str | None = field(default=None, metadata={"help": "Column holding each row's FLORES-200 code "
                                                                    "(instead of lang)."})
    id_column: str | None = field(default=None, metadata={"help": "Column holding each row's id, copied to the output "
                                                                  "(default: the row number, from 1)."})
    batch_size: int = field(default=32, metadata={"help": "Texts per forward pass.", "check": at_least(1)})
    chunk_size: int = field(default=CHUNK_ROWS, metadata={"help": "Rows read, computed and written (then recorded for "
                                                                  "resuming) at a time.", "check": at_least(1)})
    on_bad_row: Literal["skip", "fail"] = field(default="skip",
                                                metadata={"help": "A row with no text or no/unknown language: skip "
                                                                  "(written with an empty label and the reason in "
                                                                  "`skipped`, counted) or fail (an error naming the "
                                                                  "row)."})
    overwrite: bool = field(default=False, metadata={"help": "Start again, replacing an output (and its progress "
                                                             "record) written before, also a finished one or one with "
                                                             "other settings."})
    dtype: InferenceDtype = inference_dtype_field()
    device: str | None = inference_device_field("the model runs")
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with ETA (on stderr)."})

    def __post_init__(self) -> None:
        check_settings(self)
        if (self.lang is None) == (self.lang_column is None):
            raise ConfigError("give the texts' language: either lang (one FLORES-200 code, e.g. --lang swh_Latn, or "
                              "--lang auto to detect it) or lang_column (the column holding each row's code), "
                              + ("not both" if self.lang is not None else "not neither"))
        if self.input is not None and _suffix(self.input) == ".txt":
            used = [k for k in ("lang_column", "id_column", *self._extra_columns()) if getattr(self, k)]
            if used:
                raise ConfigError(f"{used[0]} is {getattr(self, used[0])!r}, but a .txt input has one text per line "
                                  f"and no columns: use a .csv/.tsv/.jsonl/.parquet input, or drop {used[0]}")

    def _extra_columns(self) -> tuple[str, ...]:
        return ()


@dataclass
class PredictFileSettings(_FileSettings):
    """Predict a label for every row of a file (resumable)."""

    output: str | None = field(default=None, metadata={"help": "Predictions file: .jsonl, .csv, .tsv or .parquet (rows "
                                                               "in input order).",
                                                       "check": (_required("--output preds.jsonl"),
                                                                 *_output_file(PREDICT_SUFFIXES))})
    pair_column: str | None = field(default=None, metadata={"help": "Column holding the second text of a pair (an NLI "
                                                                    "hypothesis; a multiple-choice question)."})
    option_columns: list[str] = field(default_factory=list, metadata={"help": "Multiple-choice models: the columns "
                                                                              "holding the answer options (the label "
                                                                              "is the chosen option's index, from 0)."})
    return_probs: bool = field(default=False, metadata={"help": "Also write each class's (option's) probability, as "
                                                                "prob_<label> columns."})

    def _extra_columns(self) -> tuple[str, ...]:
        return ("pair_column", "option_columns")


@dataclass
class EncodeFileSettings(_FileSettings):
    """Embed every row of a file (resumable)."""

    output: str | None = field(default=None, metadata={"help": "Embeddings file: .npy (float32 (N, D), ids in "
                                                               "<stem>.ids.txt) or .parquet (id + embedding columns).",
                                                       "check": (_required("--output emb.npy"),
                                                                 *_output_file(ENCODE_SUFFIXES))})
    normalize: bool = field(default=False, metadata={"help": "Unit-length embeddings."})


# ------------------------------------------------------------------------------------------------ the run
def _model_fingerprint(ref: str) -> dict:
    """What identifies the model's weights: a local folder's :func:`mtllm.modeling.serialization.model_fingerprint`."""
    path = Path(ref).expanduser()
    return {"sha256": model_fingerprint(path)} if path.is_dir() else {"ref": ref}


@dataclass
class _Counts:
    rows: int = 0
    done: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)
    blank_segment: int = 0
    truncated: int = 0

    def to_dict(self) -> dict:
        return {"rows": self.rows, "done": self.done, "skipped": dict(sorted(self.skipped.items())),
                "blank_segment": self.blank_segment, "truncated": self.truncated}


def _bad(path: Path, row: Row, column: str, reason: str, detail: str = "") -> DataError:
    return DataError(f"{path}: row {row.number} (id {row.id!r})" + (f", column {column!r}" if column else "")
                     + f": {reason}" + (f" ({detail})" if detail else "")
                     + "; fix the row, or rerun with --on_bad_row skip (it writes "
                     f"the row with an empty label and skipped: {reason!r}, and counts it)")


class _Job:
    """One ``predict_file`` / ``encode_file`` run."""

    def __init__(self, s: _FileSettings, kind: str) -> None:
        self.s, self.kind = s, kind
        self.input = Path(s.input).expanduser()
        self.output = Path(s.output).expanduser()
        self.progress_path = self.output.with_name(self.output.name + PROGRESS_SUFFIX)
        # the progress record (mtllm.records): identity at the top level; records from before the dtype was
        # resolved hold "auto", which continues with either
        self.record = RunRecord(self.progress_path, state={"rows_total": int, "rows_done": int},
                                legacy={"settings.dtype": ("auto",)})
        self.pair_column = getattr(s, "pair_column", None)
        self.option_columns = list(getattr(s, "option_columns", []) or [])
        self.is_txt = _suffix(self.input) == ".txt"
        self.text_column = "text" if self.is_txt else s.text_column
        self.auto = s.lang == "auto"
        self.enc_langs: dict = {}  # FLORES code -> the code the encoder gets (mtllm.modeling.predict.encoder_code)
        self.uncovered: dict = {}  # FLORES code -> why the encoder cannot take it (None: it can)

    # ------------------------------------------------------------------ identity
    def _settings_record(self) -> dict:
        keep = {"text_column", "pair_column", "option_columns", "lang", "lang_column", "id_column", "return_probs",
                "on_bad_row", "dtype", "normalize"}
        record = {k: v for k, v in dataclasses.asdict(self.s).items() if k in keep}
        # the weights' dtype itself, auto resolved: a rerun continues only with weights of the same dtype (auto may
        # pick bf16 on one device and float32 on another), and a run with float32 chosen either way continues
        record["dtype"] = dtype_name(self.s.dtype, self.s.device)
        record["command"] = self.kind
        record["output_format"] = _suffix(self.output)
        return record

    def _identity(self) -> dict:
        return {"version": _FORMAT_VERSION, "settings": self._settings_record(),
                "input": {"size": self.input.stat().st_size, "sha256": file_sha256(self.input)},
                "model": _model_fingerprint(self.s.model)}

    def _columns(self) -> dict:
        return dict(text_column=self.text_column, pair_column=self.pair_column, lang_column=self.s.lang_column,
                    id_column=self.s.id_column, option_columns=self.option_columns, batch_rows=self.s.chunk_size)

    # ------------------------------------------------------------------ rows
    def _row_problem(self, row: Row) -> tuple[str, str, str] | None:
        """(reason, column, detail) of a row that cannot be used, from the row alone (no model)."""
        if row.problem is not None:  # malformed: the reader's reason (column ""), e.g. "too many fields"
            return row.problem
        if _blank(row.text) and (self.pair_column is None or _blank(row.pair)):
            cols = self.text_column + (f" / {self.pair_column}" if self.pair_column else "")
            return "no text", cols, "blank or missing"
        for col, opt in zip(self.option_columns, row.options):
            if _blank(opt):
                return "empty option", col, "blank or missing"
        if self.s.lang_column is not None:
            if _blank(row.lang):
                return "no language", self.s.lang_column, "blank or missing"
            try:
                validate_lang(row.lang.strip())
            except UnknownLanguageError as err:
                return "unknown language", self.s.lang_column, str(err)
        return None

    def first_pass(self) -> tuple[int, str]:
        """Count the rows and check what can be checked without the model; returns (rows, id kind: ``int``
        or ``str``)."""
        n, all_int = 0, True
        first_of_kind: dict[str, int] = {}  # id type -> the first row with it (a parquet id column has one type)
        for row in iter_rows(self.input, **self._columns()):
            n += 1
            if self.s.id_column is not None and not (isinstance(row.id, int) and not isinstance(row.id, bool)):
                all_int = False
            if self.s.id_column is not None and _suffix(self.output) == ".parquet":
                kind = "integer" if isinstance(row.id, int) and not isinstance(row.id, bool) else \
                    "string" if isinstance(row.id, str) else type(row.id).__name__
                first_of_kind.setdefault(kind, row.number)
                if len(first_of_kind) > 1 or kind not in ("integer", "string"):
                    seen = ", ".join(f"{k} (first at row {r})" for k, r in first_of_kind.items())
                    raise DataError(f"{self.input}: the ids in column {self.s.id_column!r} are of types {seen}: a "
                                    f"parquet id column holds integers or strings, one type; make the ids all "
                                    f"integers or all strings, or write a .jsonl / .csv output, which keeps each id "
                                    f"as it is")
            if self.s.on_bad_row == "fail" and (problem := self._row_problem(row)) is not None:
                raise _bad(self.input, row, problem[1], problem[0], problem[2])
            if self.kind == "encode" and _suffix(self.output) == ".npy" and any(c in str(row.id) for c in "\r\n"):
                raise DataError(f"{self.input}: row {row.number}: its id {row.id!r} holds a line break, which "
                                f"{_ids_path(self.output).name} (one id per line) cannot hold; use a .parquet output")
        return n, "int" if all_int else "str"

    # ------------------------------------------------------------------ the sidecar
    def _write_progress(self, n_rows: int, done: int, state: dict, counts: _Counts, complete: bool) -> None:
        self.record.write(self.identity, rows_total=n_rows, rows_done=done, state=state, counts=counts.to_dict(),
                          complete=complete)

    def claim(self, identity: dict) -> dict | None:
        """The progress record to resume from, ``None`` for a fresh run, or ``{"complete": True, ...}``; refuses
        a rerun with other settings/input/model, and an output it did not write, unless ``overwrite``."""
        found = self.record.check(identity, overwrite=self.s.overwrite, what=str(self.output))
        if found.action == "complete" and not self.output.exists():  # finished, then the output was removed
            self.record.remove()
            return None
        if found.action != "fresh":
            return found.record
        present = [p for p in output_paths(self.output) if p.exists()]
        if self.s.overwrite or not present:  # --overwrite: what is there goes once the input is read, the model loaded
            return None
        if found.damaged:
            raise ConfigError(f"{self.progress_path} cannot be read ({found.damaged}), so nothing says what "
                              f"{self.output} holds; rerun with --overwrite to start again")
        raise ConfigError(f"{present[0]} exists, with no progress record ({self.progress_path.name}) of an mtllm "
                          f"{self.kind} run that wrote it; choose another output, or add --overwrite to replace it")

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        """The whole job, holding the output's lock (one writer per output: :mod:`mtllm.locks`)."""
        with exclusive_output(self.output, what="output"):
            return self._run()

    def _check_input_unchanged(self) -> None:
        """Refuse to mark the output complete when the input changed while the job read it: its rows may come
        from both versions. The progress record keeps the start's input hash, so a rerun asks for --overwrite."""
        now = {"size": self.input.stat().st_size, "sha256": file_sha256(self.input)}
        if now != self.identity["input"]:
            raise DataError(f"{self.input} changed while {self.kind} ran (sha256 "
                            f"{self.identity['input']['sha256'][:12]} "
                            f"at the start, {now['sha256'][:12]} now): {self.output} may mix rows of both versions and "
                            f"is not marked complete; rerun with --overwrite once the input stays put")

    def _run(self) -> dict:
        t0 = time.perf_counter()
        self.identity = self._identity()
        record = self.claim(self.identity)
        if record is not None and record.get("complete"):
            counts = record.get("counts", {})
            logger.info(f"[{self.kind}] {self.output} is already complete ({counts.get('rows', '?')} rows); rerun with "
                  f"--overwrite to compute it again")
            return {"output": str(self.output), "already_complete": True, **counts}
        n_rows, id_kind = self.first_pass()
        if record is not None and record.get("rows_total") != n_rows:
            raise ConfigError(f"{self.progress_path} records {record.get('rows_total')} input rows, the input has "
                              f"{n_rows}; rerun with --overwrite to start again")
        model = self._load_model()
        if self.s.lang not in (None, "auto"):
            self.s.lang = validate_lang(self.s.lang)
            encoder_code(model, self.s.lang, model_route(model), self.enc_langs)  # uncovered: an error before any work
        identify = self._identify() if self.auto else None
        sink = self._sink(model, n_rows, id_kind)
        counts = _Counts(rows=n_rows)
        done = 0
        if record is not None:
            done = int(record["rows_done"])
            c = record.get("counts", {})
            counts.done, counts.skipped = c.get("done", 0), dict(c.get("skipped", {}))
            counts.blank_segment, counts.truncated = c.get("blank_segment", 0), c.get("truncated", 0)
        else:
            for p in output_paths(self.output):  # --overwrite: the earlier run's files (and only those)
                remove_path(p)
            self._write_progress(n_rows, 0, {}, counts, complete=False)
        sink.open(record.get("state") if record is not None else None)
        bar = tqdm(total=n_rows, initial=done, unit="row", desc=f"{self.kind} {self.input.name}",
                   disable=not self.s.progress, dynamic_ncols=True)
        try:
            chunk: list[Row] = []
            rows = iter_rows(self.input, **self._columns())
            for row in rows:
                if row.number <= done:
                    continue
                chunk.append(row)
                if len(chunk) == self.s.chunk_size:
                    done = self._chunk(model, chunk, sink, counts, bar, identify, n_rows)
                    chunk = []
            if chunk:
                done = self._chunk(model, chunk, sink, counts, bar, identify, n_rows)
        finally:
            bar.close()
        self._check_input_unchanged()
        sink.finish()
        self._write_progress(n_rows, done, sink.state(), counts, complete=True)
        summary = {"output": str(self.output), **counts.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
        skipped = sum(counts.skipped.values())
        what = "predicted" if self.kind == "predict" else "embedded"
        line = (f"[{self.kind}] {self.output}: {n_rows} rows, {counts.done} {what}, {skipped} skipped"
                + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.skipped.items()))})" if skipped else "")
                + (f"; {counts.blank_segment} kept with one empty segment" if counts.blank_segment else "")
                + (f"; {counts.truncated} truncated at max_seq_length ({model.config.max_seq_length} tokens)"
                   if counts.truncated else ""))
        logger.info(line)
        return summary

    def _load_model(self):
        model = MTLLMModel.from_pretrained(self.s.model, dtype=parse_dtype(self.s.dtype, self.s.device),
                                           merge_adapters=True,
                                           device=self.s.device)
        if self.kind == "predict":
            check_head(model)
            mc = model.config.head_kind == "multiple_choice"
            if mc and not self.option_columns:
                raise ConfigError(f"{self.s.model} has a multiple-choice head: give option_columns (the columns "
                                  f"holding the answer options), e.g. --option_columns '[a1, a2, a3, a4]'")
            if not mc and self.option_columns:
                raise ConfigError(f"option_columns are for multiple-choice models; {self.s.model} classifies into "
                                  f"{model.config.label_names}: drop option_columns")
        return model

    def _identify(self):
        try:
            from mtllm.langid import identify  # (a) language identification is optional: a failed load is a ConfigError
        except ImportError as err:
            raise ConfigError(f"--lang auto needs language identification (mtllm.langid), which cannot be loaded "
                              f"({err}); give the language instead: --lang CODE or --lang_column COLUMN") from None
        return identify

    def _sink(self, model, n_rows: int, id_kind: str):
        suffix = _suffix(self.output)
        dim = model.config.llm_hidden_size
        if suffix == ".npy":
            return _NpySink(self.output, n_rows, dim, self.progress_path)
        if suffix == ".parquet":
            import pyarrow as pa  # slow: pyarrow (~50 ms), only for Parquet

            id_type = pa.int64() if (self.s.id_column is None or id_kind == "int") else pa.string()
            fields = [pa.field("id", id_type)]
            if self.kind == "predict":
                mc = model.config.head_kind == "multiple_choice"
                fields.append(pa.field("label", pa.int64() if mc else pa.string()))
                fields += [pa.field(c, pa.float64()) for c in self._prob_columns(model)]
            else:
                fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
            fields.append(pa.field("lang", pa.string()))
            if self.auto:
                fields.append(pa.field("lang_confidence", pa.float64()))
            fields.append(pa.field("skipped", pa.string()))
            return _ParquetSink(self.output, pa.schema(fields), self.progress_path)
        columns = ["id", "label", *self._prob_columns(model), "lang", *(["lang_confidence"] if self.auto else []),
                   "skipped"]
        return _TextSink(self.output, columns, self.progress_path)

    def _prob_columns(self, model) -> list[str]:
        if self.kind != "predict" or not self.s.return_probs:
            return []
        if model.config.head_kind == "multiple_choice":
            return [f"prob_{k}" for k in range(len(self.option_columns))]
        return [f"prob_{name}" for name in model.config.label_names]

    def _chunk(self, model, chunk: list[Row], sink, counts: _Counts, bar, identify, n_rows: int) -> int:
        """Score one chunk, write it, record it; returns the rows done."""
        route = model_route(model)
        fail = self.s.on_bad_row == "fail"
        problems: dict[int, tuple[str, str, str]] = {}
        for j, row in enumerate(chunk):
            if (p := self._row_problem(row)) is not None:
                problems[j] = p
        texts = ["" if r.text is None else r.text for r in chunk]
        pairs = ["" if r.pair is None else r.pair for r in chunk] if self.pair_column else None
        # what the tokenizer sees: a text of only dropped characters (zero-width, control) is no text
        empty_t = set(model.contentless(texts, route=route))
        empty_p = set(model.contentless(pairs, route=route)) if pairs is not None else set(range(len(chunk)))
        for j in sorted(empty_t & empty_p):
            problems.setdefault(j, ("no text", self.text_column + (f" / {self.pair_column}" if pairs else ""),
                                    "nothing the tokenizer reads"))
        if self.option_columns:
            flat = [o or "" for r in chunk for o in r.options]
            k = len(self.option_columns)
            for i in model.contentless(flat, route=route):
                problems.setdefault(i // k, ("empty option", self.option_columns[i % k], "nothing the tokenizer reads"))
        langs: list[str | None] = [None] * len(chunk)
        confidence: list[float | None] = [None] * len(chunk)
        ok = [j for j in range(len(chunk)) if j not in problems]
        if self.auto:
            sample = [texts[j] if j not in empty_t else pairs[j] for j in ok]
            found = identify(sample) if sample else []
            if len(found) != len(sample):
                raise RuntimeError(f"mtllm.langid.identify returned {len(found)} results for {len(sample)} texts")
            for j, (code, conf) in zip(ok, found):
                confidence[j] = float(conf)
                try:
                    langs[j] = validate_lang(code)
                except UnknownLanguageError:  # e.g. mtllm.langid.UNDETERMINED: no FLORES-200 language fits
                    problems[j] = ("language not identified", self.text_column,
                                   f"language identification answered {code!r}")
                    langs[j] = code
        elif self.s.lang_column is not None:
            for j, row in enumerate(chunk):  # a row whose code is unusable keeps it as written
                langs[j] = validate_lang(row.lang.strip()) if j in ok else row.lang
        else:
            langs = [self.s.lang] * len(chunk)
        for j in ok:
            code = langs[j]
            if j in problems or code is None:
                continue
            if code not in self.uncovered:
                try:
                    encoder_code(model, code, route, self.enc_langs)
                    self.uncovered[code] = None
                except UnsupportedLanguageError as err:
                    self.uncovered[code] = str(err)
            if self.uncovered[code] is not None:
                problems[j] = ("language not covered", self.s.lang_column or "lang", self.uncovered[code])
        if fail and problems:
            j = min(problems)
            reason, column, detail = problems[j]
            raise _bad(self.input, chunk[j], column, reason, detail)
        ok = [j for j in range(len(chunk)) if j not in problems]
        if pairs is not None:
            counts.blank_segment += sum(1 for j in ok if (j in empty_t) != (j in empty_p))
        stats: dict = {}
        results = self._compute(model, chunk, ok, texts, pairs, langs, bar, stats)
        counts.truncated += stats.get("truncated", 0)
        records = []
        for j, row in enumerate(chunk):
            rec: dict[str, Any] = {"id": row.id}
            res = results.get(j)
            if self.kind == "predict":
                label, probs = res if res is not None else (None, None)
                rec["label"] = label
                for k, c in enumerate(self._prob_columns(model)):
                    rec[c] = None if probs is None else float(probs[k])
            else:
                rec["embedding"] = res
            rec["lang"] = langs[j]
            if self.auto:
                rec["lang_confidence"] = confidence[j]
            rec["skipped"] = problems[j][0] if j in problems else None
            records.append(rec)
            if j in problems:
                counts.skipped[problems[j][0]] = counts.skipped.get(problems[j][0], 0) + 1
        counts.done += len(ok)
        bar.update(len(chunk) - len(ok))
        start = chunk[0].number - 1
        sink.write(records, start)
        done = chunk[-1].number
        self._write_progress(n_rows, done, sink.state(), counts, complete=False)
        return done

    def _compute(self, model, chunk: list[Row], ok: list[int], texts, pairs, langs, bar, stats: dict) -> dict[int, Any]:
        """Label (+ probabilities) or embedding of each usable row of the chunk, by position."""
        if not ok:
            return {}
        if self.kind == "predict":
            options = [[o for o in chunk[j].options] for j in ok] if self.option_columns else None
            logits = score_texts(model, [texts[j] for j in ok], langs=[langs[j] for j in ok],
                                 pairs=[pairs[j] for j in ok] if pairs is not None else None, options=options,
                                 batch_size=self.s.batch_size, on_batch=bar.update,
                                 encoder_langs=self.enc_langs, stats=stats)
            mc = model.config.head_kind == "multiple_choice"
            names = model.config.label_names
            out = {}
            for j, x in zip(ok, logits):
                k = int(np.argmax(x))
                out[j] = (k if mc else names[k], softmax(x) if self.s.return_probs else None)
            return out
        route = model_route(model)
        groups: dict[Any, list[int]] = {}
        for j in ok:
            groups.setdefault(encoder_code(model, langs[j], route, self.enc_langs), []).append(j)
        out = {}
        for lang, idx in groups.items():
            emb = embed_texts(model, [texts[j] for j in idx], lang=lang, route=route, batch_size=self.s.batch_size,
                              normalize=self.s.normalize, on_batch=bar.update, stats=stats).numpy()
            for j, e in zip(idx, emb):
                out[j] = e.tolist() if _suffix(self.output) == ".parquet" else e
        return out


def predict_file(settings: PredictFileSettings) -> dict:
    """``mtllm predict``: a label (and with ``return_probs`` the probabilities) for every row of ``settings.input``,
    written to ``settings.output`` in input order, streamed and resumable (see the module doc). Returns the
    summary (rows, done, skipped by reason, blank_segment, seconds)."""
    return _Job(settings, "predict").run()


def encode_file(settings: EncodeFileSettings) -> dict:
    """``mtllm encode``: the pooled embedding of every row of ``settings.input``, written to ``settings.output``
    (``.npy`` + ``<stem>.ids.txt``, or ``.parquet``), streamed and resumable (see the module doc)."""
    return _Job(settings, "encode").run()
