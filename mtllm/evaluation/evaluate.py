"""Zero-shot cross-lingual evaluation: every system on every language, models loaded once.

Systems (``systems`` setting):

* ``mtllm`` -- the distilled MT-LLM (``model``): target-language text through the encoder.
* ``llm`` -- the fine-tuned teacher (``teacher``): the LLM alone on the raw target-language text.
* ``encoder`` -- the MT-LLM's frozen encoder alone, mean-pooled, with a logistic-regression head
  fitted on the English training set (:class:`mtllm.baselines.encoder_probe.EncoderClassifier`).
* ``encoder-ft`` -- the encoder and a linear head fine-tuned on the English training set (``encoder_ft``: the
  folder :mod:`mtllm.training.encoder_ft` wrote, :class:`mtllm.modeling.encoder_ft.EncoderFT`), reading text
  through ``model``'s tokenisation.
* ``translate_test`` -- every text translated to English with ``translate_model`` (cached), then
  classified by the teacher.

``task: retrieval`` is the stage-1 alignment probe: English<->X parallel-sentence retrieval on the
SIB-200 sentences (same ``index_id`` = translations), top-1 accuracy averaged over both directions,
for the MT-LLM (``model``, plus any ``compare`` models such as the one before stage 1), the LLM alone
and the encoder alone.

The training data of the systems that learn from it here (the ``encoder`` probe's head) is that of
``train_task`` (default: the evaluated task) in ``train_lang``, or ``train_file``
(:func:`mtllm.tasks.load_training_data`); a ``train_task`` other than ``task`` must have its kind and label
names (:func:`mtllm.tasks.check_transfer`). ``sample_method: parallel`` evaluates every language on the same
ids, balanced by label (:func:`sample_parallel`); results.json records them.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mtllm.baselines.encoder_probe import EncoderClassifier
from mtllm.baselines.translate_test import TranslateSettings, Translator, translate_examples
from mtllm.data.collate import check_content
from mtllm.data.languages import XLMR_LANGUAGES, suggest_languages, validate_lang
from mtllm.device import module_device, to_device
from mtllm.errors import ConfigError
from mtllm.evaluation.partial import PartialResults, evaluation_key
from mtllm.evaluation.report import EvalResults, format_summary_lines, write_results
from mtllm.fingerprints import examples_digest, json_digest
# predict is looked up on its module at each call, so that a patch of mtllm.modeling.predict.predict reaches it
from mtllm.modeling import predict as predict_module
from mtllm.modeling.batching import run_batched
from mtllm.modeling.encoder_ft import EncoderFT
from mtllm.modeling.model import MTLLMModel
from mtllm.modeling.objectives import alignment_fvu
from mtllm.modeling.pooling import mean_pool
from mtllm.modeling.predict import predict_shared_encoder
from mtllm.settings import (EXISTING_DIR, MODEL, NAMED_MODELS, NON_EMPTY, OUTPUT_DIR, TASK, TASK_OR_RETRIEVAL,
                            InferenceDtype, at_least, check_settings, inference_device_field, inference_dtype_field,
                            parse_dtype)
from mtllm.tasks import available_languages, check_transfer, get_task, load_examples, load_training_data
from mtllm.tasks.sampling import sample_examples, sample_parallel  # (re-exported: they live with the tasks)
from mtllm.training.finetune import TRAIN_FILE, TRAIN_FILE_HELP

__all__ = ["EvaluateSettings", "run_evaluate", "retrieval_accuracy", "sample_examples", "sample_parallel",
           "evaluation_languages", "SYSTEMS"]

logger = logging.getLogger(__name__)

Predictor = Callable[[Sequence[Any], str], np.ndarray]

#: The systems of a task evaluation, in the order results list them.
SYSTEMS = ("mtllm", "llm", "encoder", "encoder-ft", "translate_test")


@dataclass
class EvaluateSettings:
    """What to evaluate, on which languages, with which systems."""

    model: str | None = field(default=None, metadata={"help": "MT-LLM dir (distill's DIR/final; for retrieval: any "
                                                              "MT-LLM dir).", "check": MODEL})
    teacher: str | None = field(default=None, metadata={"help": "Fine-tuned teacher dir (finetune's DIR/best), for the "
                                                                "llm and translate_test systems.", "check": MODEL})
    task: str = field(default="sib200", metadata={"help": "Task name, or 'retrieval' (parallel-sentence retrieval on "
                                                          "SIB-200).", "check": TASK_OR_RETRIEVAL})
    langs: list[str] = field(default_factory=lambda: ["all"],
                             metadata={"help": "'all' or FLORES-200 codes.", "check": NON_EMPTY})
    systems: list[Literal["mtllm", "llm", "encoder", "encoder-ft", "translate_test"]] = field(
        default_factory=lambda: ["mtllm", "llm", "encoder"],
        metadata={"help": "Among mtllm, llm, encoder, encoder-ft, translate_test.", "check": NON_EMPTY})
    encoder_ft: str | None = field(default=None, metadata={"help": "The encoder-ft system's folder (`mtllm "
                                                                   "encoder-ft`'s DIR/best, or mtllm run's "
                                                                   "encoder-ft-TASK/best); it runs on model's "
                                                                   "tokenisation.", "check": EXISTING_DIR})
    split: str = field(default="test", metadata={"help": "Split to evaluate.", "check": NON_EMPTY})
    data_dir: str | None = field(default=None,
                                 metadata={"help": "Local data root (else $MTLLM_DATA_DIR, else the hub).",
                                           "check": EXISTING_DIR})
    output_dir: str = field(default="runs/eval",
                            metadata={"help": "Where results.json, results.md and the plot go.", "check": OUTPUT_DIR})
    overwrite: bool = field(default=False, metadata={"help": "Write into an output_dir that holds results or files "
                                                             "mtllm did not write (`mtllm evaluate` refuses "
                                                             "otherwise)."})
    batch_size: int = field(default=32, metadata={"help": "Examples per forward pass.", "check": at_least(1)})
    max_examples: int | None = field(default=None, metadata={"help": "At most this many examples per language: a "
                                                                     "fixed-seed random sample, stratified by label "
                                                                     "(the same ids for every system), not the first "
                                                                     "rows; see sample_method.", "check": at_least(1)})
    sample_seed: int = field(default=0, metadata={"help": "Seed of the max_examples sample (same seed, same sample)."})
    sample_method: Literal["stratified", "first", "parallel"] = field(
        default="stratified", metadata={"help": "How max_examples picks: 'stratified' (a random sample stratified by "
                                                "label, seed sample_seed), 'first' (the first rows of the file; the "
                                                "protocol of RESULTS.md's earlier retrieval numbers) or 'parallel' "
                                                "(the same ids in every language, equal counts per label: "
                                                "max_examples / number of labels each, seed sample_seed, from the ids "
                                                "every evaluated language has with the same label; without "
                                                "max_examples the largest such sample; the ids go into "
                                                "results.json)."})
    train_lang: str = field(default="eng_Latn", metadata={"help": "Language the systems were trained on (the encoder "
                                                                  "head is fitted on its train split)."})
    train_task: str | None = field(default=None, metadata={"help": "Task the systems were trained on, when not task "
                                                                   "itself (e.g. an NLI task file, evaluated on "
                                                                   "xnli): the encoder probe's head is fitted on its "
                                                                   "training data; its kind and label names must be "
                                                                   "task's.", "check": TASK})
    train_file: str | None = field(default=None, metadata={"help": TRAIN_FILE_HELP + " Here: what the encoder "
                                                                                     "probe's head is fitted on.",
                                                           "check": TRAIN_FILE})
    max_train_examples: int | None = field(default=None, metadata={"help": "Fit the encoder probe's head on at most "
                                                                           "this many training examples: a fixed-seed "
                                                                           "sample stratified by label (seed 0, as the "
                                                                           "training stages take), not the first rows; "
                                                                           "default: all.", "check": at_least(1)})
    translate_model: str = field(default="facebook/nllb-200-distilled-600M",
                                 metadata={"help": "Seq2seq MT model for translate_test.", "check": MODEL})
    compare: list[str] = field(default_factory=list, metadata={"help": "Extra MT-LLMs as NAME=DIR (e.g. "
                                                                       "mtllm_before_stage1=runs/x/stage1/initial).",
                                                               "check": NAMED_MODELS})
    fallbacks: dict = field(default_factory=dict,
                            metadata={"help": "Explicit encoder-language fallbacks {code: code}."})
    dtype: InferenceDtype = inference_dtype_field()
    device: str | None = inference_device_field("the models run")
    notes: list[str] = field(default_factory=list, metadata={"help": "Free-text notes written into results.md."})

    def __post_init__(self) -> None:
        check_settings(self)


def _parallel_note(s: "EvaluateSettings", info: dict[str, Any], n_langs: int) -> str:
    short = (f"; fewer than max_examples {s.max_examples}: the rarest label has only {info['per_label']} such ids"
             if info["wanted_per_label"] is not None and info["per_label"] < info["wanted_per_label"] else "")
    left = (f" ({info['left_out']} ids left out: missing, repeated or labelled otherwise in some language)"
            if info["left_out"] else "")
    return (f"sample_method parallel: every language is evaluated on the same {len(info['ids'])} ids, "
            f"{info['per_label']} per label (seed {s.sample_seed}), drawn from the {info['candidates']} ids all "
            f"{n_langs} languages have with the same label{left}{short}; the ids are in results.json (sample.ids)")


def _sample_note(s: "EvaluateSettings", n_sampled: int, n_langs: int, what: str = "examples") -> list[str]:
    """The results.md note that says how ``max_examples`` chose the examples (none when it cut nothing)."""
    if not n_sampled or s.max_examples is None or s.sample_method == "parallel":  # parallel: _parallel_note
        return []
    if s.sample_method == "first":
        return [f"max_examples {s.max_examples}: {n_sampled} of {n_langs} languages have more {what}; each of those is "
                f"evaluated on the first {s.max_examples} rows of its file (sample_method first)"]
    return [f"max_examples {s.max_examples}: {n_sampled} of {n_langs} languages have more {what}; each of those is "
            f"evaluated on a random sample of {s.max_examples}, stratified by label (seed {s.sample_seed}; the same "
            f"ids for every system), not on the first rows of its file"]


def _single_class(spec: Any, examples: Sequence[Any]) -> str | None:
    """The one class all of ``examples`` have (its name; for multiple choice the correct option's number),
    or ``None`` when they have several."""
    labels = {e.label for e in examples}
    if len(labels) != 1:
        return None
    (label,) = labels
    if spec.kind == "multiple_choice":
        return f"option {label + 1}"
    return spec.label_names[label] if 0 <= label < len(spec.label_names) else str(label)


def retrieval_accuracy(src_ND: torch.Tensor, tgt_ND: torch.Tensor) -> tuple[float, float]:
    """Top-1 accuracy of cosine nearest-neighbour retrieval, ``src->tgt`` and ``tgt->src``; row ``i``
    of each is the translation of row ``i`` of the other."""
    a = torch.nn.functional.normalize(src_ND.float(), dim=-1)
    b = torch.nn.functional.normalize(tgt_ND.float(), dim=-1)
    sim = a @ b.T
    gold = torch.arange(len(a))
    return float((sim.argmax(1) == gold).float().mean()), float((sim.argmax(0) == gold).float().mean())


def evaluation_languages(task: Any, requested: Sequence[str], data_dir: str | None) -> list[str]:
    """``requested`` (``all``: every language the task has data for here; a task file: its test languages),
    each checked."""
    spec = get_task(task)
    langs = available_languages(spec, data_dir)
    if list(requested) in (["all"], []):
        return langs
    out = []
    for code in requested:
        code = validate_lang(code)
        if code not in langs:
            close = suggest_languages(code, langs)
            raise ConfigError(f"{spec.name} has no {code!r} data here; available: {', '.join(langs[:20])}"
                              + (" ..." if len(langs) > 20 else "")
                              + (f"; closest: {', '.join(close)}" if close else ""))
        out.append(code)
    return out


def run_evaluate(settings: EvaluateSettings, *, models: dict[str, Any] | None = None, progress: bool = True,
                 translate_settings: Any = None):
    """Evaluate and write ``results.json``, ``results.md`` and ``results.png`` into ``output_dir``.

    ``models`` may pass already-loaded models by role (``mtllm``, ``teacher``) to skip loading."""
    models = dict(models or {})
    # languages an interrupted run of the same evaluation finished are not redone (mtllm.evaluation.partial);
    # models passed in memory have no saved files to identify them by, so nothing is kept for them
    partial = (PartialResults.off() if models else
               PartialResults.open(settings.output_dir, evaluation_key(settings), overwrite=settings.overwrite))
    if settings.task == "retrieval":
        results = _run_retrieval(settings, models, progress, partial)
    else:
        results = _run_task(settings, models, progress, partial, translate_settings)
    results.notes.extend(settings.notes)
    paths = write_results(results, settings.output_dir)
    partial.finish()
    for line in format_summary_lines(results):
        logger.info(line)
    for kind, path in paths.items():
        logger.info(f"[evaluate] {kind}: {path}")
    return results


def _load_mtllm(path: str, dtype: torch.dtype, device: str | None):
    # inference only: LoRA folded into the weights (one matmul per linear layer instead of three)
    return MTLLMModel.from_pretrained(path, dtype=dtype, merge_adapters=True, device=device)




def _run_task(s: EvaluateSettings, models: dict[str, Any], progress: bool, partial: PartialResults,
              translate_settings: Any = None):
    spec = get_task(s.task)  # a name, or the path of a task file (mtllm.tasks.files)
    train_spec = get_task(s.train_task) if s.train_task else spec
    check_transfer(train_spec, spec, what="train_task: ")
    langs = evaluation_languages(spec, s.langs, s.data_dir)
    if "encoder-ft" in s.systems and not s.encoder_ft:
        raise ConfigError("the encoder-ft system needs encoder_ft: the folder of the encoder-ft stage "
                          "(encoder-ft-TASK/best)")
    dtype = parse_dtype(s.dtype, s.device)
    on_encoder = {"mtllm", "encoder", "encoder-ft"} & set(s.systems)  # the systems that read the MT-LLM's encoder
    mtllm = models.get("mtllm")
    if mtllm is None and on_encoder:
        if not s.model:
            raise ConfigError("systems mtllm/encoder/encoder-ft need model: the MT-LLM directory (distill's "
                              "DIR/final)")
        mtllm = _load_mtllm(s.model, dtype, s.device)
    teacher = models.get("teacher")
    if teacher is None and {"llm", "translate_test"} & set(s.systems):
        if not s.teacher:
            raise ConfigError("systems llm/translate_test need teacher: the fine-tuned LLM (finetune's DIR/best)")
        teacher = _load_mtllm(s.teacher, dtype, s.device)
    n_labels = len(spec.label_names)
    # the systems that score with a saved task head (encoder and encoder-ft bring their own)
    headed = next((m for k, m in (("mtllm", mtllm), ("llm", teacher), ("translate_test", teacher)) if k in s.systems),
                  None)
    head_labels = headed.config.label_names if headed is not None else list(spec.label_names)
    if spec.kind != "multiple_choice" and list(head_labels) != list(spec.label_names):
        raise ConfigError(f"the model's head was trained on labels {head_labels}, but {spec.name} has "
                         f"{list(spec.label_names)}: evaluate it on the task it was trained for")

    # every language's examples (sampled) are read and checked before any model runs
    everything_of: dict[str, list[Any]] = {}
    bad_rows: dict[str, dict[str, int]] = {}  # lang -> {"blank_segment_kept": n, "no_text_dropped": m}
    for lang in langs:
        everything_of[lang] = load_examples(spec, lang, s.split, data_dir=s.data_dir)
        bad_rows[lang] = everything_of[lang].report.counts()
    parallel = None
    if s.sample_method == "parallel":  # the same ids in every language, equal counts per label
        examples_of, parallel = sample_parallel(everything_of, s.max_examples, seed=s.sample_seed)
    else:
        examples_of = {lang: sample_examples(everything_of[lang], s.max_examples, seed=s.sample_seed,
                                             method=s.sample_method) for lang in langs}
    single_class: dict[str, str] = {}
    n_sampled = 0
    for lang in langs:
        n_sampled += len(examples_of[lang]) < len(everything_of[lang])
        if (only := _single_class(spec, examples_of[lang])) is not None:
            single_class[lang] = only
        if on_encoder:
            check_content(mtllm, examples_of[lang], route="encoder")
        if "llm" in s.systems:
            check_content(teacher, examples_of[lang], route="llm")

    predictors: dict[str, Predictor] = {}
    seconds: dict[str, float] = {}
    notes: list[str] = []
    # the mtllm and encoder systems share one encoder pass per batch (same encoder, same tokenisation)
    shared = "mtllm" in s.systems and "encoder" in s.systems
    if "mtllm" in s.systems and not shared:
        predictors["mtllm"] = lambda ex, lang: predict_module.predict(mtllm, ex, route="encoder",
                                                                      lang=mtllm.encoder_lang(lang, s.fallbacks),
                                                                      batch_size=s.batch_size)
    if "llm" in s.systems:
        predictors["llm"] = lambda ex, lang: predict_module.predict(teacher, ex, route="llm", batch_size=s.batch_size)
    if "encoder" in s.systems:
        t0 = time.perf_counter()
        probe = EncoderClassifier(mtllm)
        train_ex = load_training_data(train_spec, train_file=s.train_file, lang=s.train_lang, data_dir=s.data_dir,
                                      limit=s.max_train_examples)
        fit = probe.fit(train_ex, spec.label_names, lang=mtllm.encoder_lang(s.train_lang, s.fallbacks))
        seconds["encoder_fit"] = time.perf_counter() - t0
        source = f" of {train_spec.name}" if train_spec is not spec else ""
        source += f" from {s.train_file}" if s.train_file else ""
        notes.append(f"encoder: frozen encoder, mean pooling, logistic-regression head fitted on {len(train_ex)} "
                     f"{s.train_lang} training examples{source} (train accuracy {fit['train_accuracy']:.3f})")
        if not shared:
            predictors["encoder"] = lambda ex, lang: probe.predict(ex, lang=mtllm.encoder_lang(lang, s.fallbacks))
    if "encoder-ft" in s.systems:
        tuned = EncoderFT.load(s.encoder_ft, mtllm)
        if spec.kind != "multiple_choice" and tuned.label_names != list(spec.label_names):
            raise ConfigError(f"{s.encoder_ft} was fine-tuned on labels {tuned.label_names}, but {spec.name} has "
                              f"{list(spec.label_names)}: evaluate it on a task with the labels it was trained for")
        notes.append(_encoder_ft_note(tuned))
        predictors["encoder-ft"] = lambda ex, lang: tuned.predict(ex, lang=mtllm.encoder_lang(lang, s.fallbacks),
                                                                  batch_size=s.batch_size)
    if "translate_test" in s.systems:
        translator = Translator.from_pretrained(s.translate_model,
                                                translate_settings or TranslateSettings(mt_model=s.translate_model),
                                                device=s.device)

        def translate_test(ex, lang):
            if lang == s.train_lang:
                return predict_module.predict(teacher, ex, route="llm", batch_size=s.batch_size)
            return predict_module.predict(teacher, translate_examples(translator, ex, lang), route="llm",
                                          batch_size=s.batch_size)

        predictors["translate_test"] = translate_test
        notes.append(f"translate_test: {s.translate_model} to {s.train_lang}, then the teacher")

    accs: dict[str, dict[str, float]] = {k: {} for k in SYSTEMS if k in s.systems}
    n_examples: dict[str, int] = {}

    def one_language(lang: str, examples: list[Any]) -> dict[str, Any]:
        """Every system on one language: ``{"accs": {system: accuracy}, "seconds": {...}, "notes": [...]}``."""
        labels = np.array([e.label for e in examples])
        got: dict[str, float] = {}
        took: dict[str, float] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if shared:
                mt_preds, enc_preds, parts = predict_shared_encoder(
                    mtllm, probe, examples, lang=mtllm.encoder_lang(lang, s.fallbacks), batch_size=s.batch_size)
                got["mtllm"] = float((mt_preds == labels).mean())
                got["encoder"] = float((enc_preds == labels).mean())
                took.update({f"shared_{key}": dt for key, dt in parts.items()})
                took["mtllm"] = parts["tokenize"] + parts["encoder_forward"] + parts["mtllm_after_encoder"]
                took["encoder"] = parts["encoder_head"]
            for name, fn in predictors.items():
                t0 = time.perf_counter()
                got[name] = float((fn(examples, lang) == labels).mean())
                took[name] = time.perf_counter() - t0
        fallback = [f"fallback: {w.message}" for w in caught if "fed to the encoder as" in str(w.message)]
        return {"accs": got, "seconds": took, "notes": fallback}

    bar = langs
    if progress:
        bar = tqdm(langs, desc=f"evaluate {spec.name}", unit="lang")
    for lang in bar:
        n_examples[lang] = len(examples_of[lang])
        data = examples_digest(examples_of[lang])
        record = partial.get(lang, data)
        if record is None:
            record = one_language(lang, examples_of[lang])
            partial.add(lang, record, data)
        for name, acc in record["accs"].items():
            accs[name][lang] = acc
        for key, dt in record["seconds"].items():
            seconds[key] = seconds.get(key, 0.0) + dt
        notes.extend(record["notes"])
        if progress:
            bar.set_postfix({k: f"{v[lang]:.2f}" for k, v in accs.items()})
    if shared:
        notes.append("mtllm and encoder share one encoder pass per batch: seconds.mtllm includes tokenisation and "
                     "the encoder, seconds.encoder is only its head (parts: seconds.shared_*)")
    notes.extend(partial.notes())
    notes.extend(_coverage_notes(mtllm, langs))
    notes.extend(_sample_note(s, n_sampled, len(langs)))
    if parallel is not None:
        notes.append(_parallel_note(s, parallel, len(langs)))
    ref_labels = [e.label for e in examples_of[s.train_lang if s.train_lang in langs else langs[0]]]
    majority = float(np.bincount(ref_labels).max() / len(ref_labels)) if spec.kind != "multiple_choice" else None
    meta = {"seconds": {k: round(v, 2) for k, v in seconds.items()}, "split": s.split, "model": s.model,
            "teacher": s.teacher, "n_labels": n_labels, "majority_baseline": majority}
    if parallel is not None:
        meta["sample"] = {"max_examples": s.max_examples, "seed": s.sample_seed,
                          "method": "parallel, balanced by label", "per_label": parallel["per_label"],
                          "n": len(parallel["ids"]), "ids": parallel["ids"]}
    elif s.max_examples is not None:
        meta["sample"] = {"max_examples": s.max_examples, "seed": s.sample_seed,
                          "method": "first rows" if s.sample_method == "first" else "stratified by label"}
    if single_class:
        meta["single_class"] = single_class
    meta["bad_rows"] = bad_rows  # results.md notes the languages with any (mtllm.evaluation.report)
    return EvalResults(task=spec.name, metric="accuracy", systems=accs, n_examples=n_examples, train_lang=s.train_lang,
                       notes=sorted(set(notes), key=notes.index), meta=meta)


def _encoder_ft_note(tuned: EncoderFT) -> str:
    info = tuned.info
    data = f" from {info['train_file']}" if info.get("train_file") else ""
    frozen = "token embeddings frozen" if not info.get("train_embeddings") else "token embeddings trained too"
    best = ""
    if "val_accuracy" in info:
        best = (f"; best epoch {info['epoch']} by {info.get('train_lang', 'English')} "
                f"{info.get('val_split', 'validation')} accuracy {info['val_accuracy']:.3f}")
    return (f"encoder-ft: the encoder and a linear head on its mean-pooled states, fine-tuned together ({frozen}) on "
            f"{info.get('n_train', '?')} {info.get('train_lang', '')} training examples of {info.get('task', '?')}"
            f"{data}{best}")


def _coverage_notes(model: Any, langs: Sequence[str]) -> list[str]:
    if model is None or model.encoder is None:
        return []
    if getattr(model.encoder.config, "model_type", "") != "xlm-roberta":
        return []
    outside = [c for c in langs if c not in XLMR_LANGUAGES]
    return [f"the encoder ({model.config.encoder_name_or_path}) is an XLM-R-family model, not an MT encoder; "
            f"{len(outside)} of these {len(langs)} languages are outside its ~100 pretraining languages: "
            f"{', '.join(outside)}"] if outside else []


def _run_retrieval(s: EvaluateSettings, models: dict[str, Any], progress: bool, partial: PartialResults):
    dtype = parse_dtype(s.dtype, s.device)
    langs = [c for c in evaluation_languages("sib200", s.langs, s.data_dir) if c != s.train_lang]
    mtllms: dict[str, Any] = {}
    if "mtllm" in s.systems:
        mtllms["mtllm"] = models.get("mtllm") or _load_mtllm(s.model, dtype, s.device)
    for item in s.compare:
        name, _, path = item.partition("=")
        mtllms[name] = models.get(name) or _load_mtllm(path, dtype, s.device)
    any_model = next(iter(mtllms.values()), None)
    if any_model is None and s.model:
        any_model = _load_mtllm(s.model, dtype, s.device)
    embedders: dict[str, Callable[[list[str], str], torch.Tensor]] = {}
    for name, m in mtllms.items():
        embedders[name] = (lambda m: lambda texts, lang: m.encode(texts, lang=m.encoder_lang(lang, s.fallbacks),
                                                                    batch_size=s.batch_size))(m)
    if "llm" in s.systems:
        if any_model is None:
            raise ConfigError("the llm system needs model (its LLM is used without adapters)")
        llm = models.get("llm") or MTLLMModel.llm_only(any_model.config.llm_name_or_path if not str(
            any_model.config.llm_name_or_path).startswith("./")
                                                       else str(Path(s.model) / any_model.config.llm_name_or_path[2:]),
            lora=None, pooling=any_model.config.pooling, bidirectional=any_model.config.bidirectional,
            llm_adapters_to_merge=any_model.config.llm_adapters_to_merge, dtype=dtype, device=s.device)
        embedders["llm"] = lambda texts, lang: llm.encode(texts, route="llm", batch_size=s.batch_size)
    if "encoder" in s.systems:
        if any_model is None:
            raise ConfigError("the encoder system needs model (its encoder is used)")

        @torch.inference_mode()
        def enc(texts, lang, m=any_model):
            device, code = module_device(m.encoder), m.encoder_lang(lang, s.fallbacks)

            def step(batch_texts):
                batch = to_device(m.tokenize(batch_texts, lang=code), device)
                hidden = m.encoder(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).last_hidden_state
                return mean_pool(hidden, batch["attention_mask"]).float().cpu()

            # batches in input order (no length sort), as this probe has always been run
            return torch.stack(run_batched(texts, step, batch_size=s.batch_size))

        embedders["encoder"] = enc
    # the English sentences (a stratified sample when max_examples cuts them), then the same ids in every language
    all_english = load_examples("sib200", s.train_lang, s.split, data_dir=s.data_dir)
    english = {e.id: e.texts[0]
               for e in sample_examples(all_english, s.max_examples, seed=s.sample_seed, method=s.sample_method)}
    eng_cache: dict[str, torch.Tensor] = {}
    accs: dict[str, dict[str, float]] = {k: {} for k in embedders}
    n_examples: dict[str, int] = {}
    seconds: dict[str, float] = {}
    bar = langs
    if progress:
        bar = tqdm(langs, desc="retrieval", unit="lang")
    ids_all = list(english)
    pos = {i: k for k, i in enumerate(ids_all)}
    for name, embed in embedders.items():
        t0 = time.perf_counter()
        eng_cache[name] = embed([english[i] for i in ids_all], s.train_lang)
        seconds[name] = time.perf_counter() - t0
    # what stage 1 buys across languages: each system's X state against the teacher's (the LLM without
    # adapters) state of the parallel English sentence; the encoder has another space and no such measure
    fvu = None
    if "llm" in embedders and len(ids_all) > 1:
        fvu = {name: {} for name in embedders if name != "encoder"}
        for name in fvu:
            if name != "llm":  # the LLM's own English states are the teacher (FVU 0 by definition)
                fvu[name][s.train_lang] = alignment_fvu(eng_cache[name], eng_cache["llm"])
    for lang in bar:
        target = {e.id: e.texts[0] for e in load_examples("sib200", lang, s.split, data_dir=s.data_dir)}
        ids = [i for i in ids_all if i in target]
        n_examples[lang] = len(ids)
        data = json_digest([[i, target[i], english[i]] for i in ids])
        record = partial.get(lang, data)
        if record is None:
            rows = [pos[i] for i in ids]
            record = {"accs": {}, "fvu": {}, "seconds": {}}
            for name, embed in embedders.items():
                t0 = time.perf_counter()
                tgt = embed([target[i] for i in ids], lang)
                a, b = retrieval_accuracy(eng_cache[name][rows], tgt)
                record["accs"][name] = (a + b) / 2
                if fvu is not None and name in fvu and len(ids) > 1:
                    record["fvu"][name] = alignment_fvu(tgt, eng_cache["llm"][rows])
                record["seconds"][name] = time.perf_counter() - t0
            partial.add(lang, record, data)
        for name, acc in record["accs"].items():
            accs[name][lang] = acc
        for name, value in record["fvu"].items():
            fvu[name][lang] = value
        for name, dt in record["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + dt
        if progress:
            bar.set_postfix({k: f"{v[lang]:.2f}" for k, v in accs.items()})
    measures = {}
    if fvu is not None:
        measures["FVU against the teacher's English"] = {
            "description": ("FVU of each system's pooled state of the sentence in that language against the teacher "
                            "LLM's (no adapters) pooled state of the parallel English sentence (0 = identical, 1 = no "
                            "better than the teacher's mean; lower is better). Same sentences as the retrieval table; "
                            f"the `{s.train_lang}` row is each MT-LLM on the English sentences themselves."),
            "systems": fvu}
    notes = [f"retrieval: English<->X top-1 accuracy (mean of both directions) over {len(ids_all)} SIB-200 "
             f"{s.split} sentences; chance is 1/{len(ids_all)}"]
    if len(ids_all) < len(all_english) and s.sample_method == "first":
        notes.append(f"max_examples {s.max_examples}: the first {len(ids_all)} of the {len(all_english)} sentences "
                     f"(sample_method first)")
    elif len(ids_all) < len(all_english):
        how = "with equal counts per topic" if s.sample_method == "parallel" else "stratified by topic"
        notes.append(f"max_examples {s.max_examples}: the {len(ids_all)} sentences are a random sample of the "
                     f"{len(all_english)}, {how} (seed {s.sample_seed}; the same ids in every language "
                     f"and for every system), not the first rows of the file")
    notes.extend(_coverage_notes(any_model, langs))
    notes.extend(partial.notes())
    return EvalResults(task="retrieval", metric="accuracy", systems=accs, n_examples=n_examples,
                       train_lang=s.train_lang, notes=notes,
                       meta={"seconds": {k: round(v, 2) for k, v in seconds.items()}, "split": s.split,
                             "models": {k: getattr(v.config, "_name_or_path", None) for k, v in mtllms.items()},
                             "chance": 1.0 / max(1, len(ids_all)), "measures": measures,
                             **({"sample": {"max_examples": s.max_examples, "seed": s.sample_seed,
                                            "method": {"first": "first rows", "parallel": "balanced by topic"}.get(
                                                s.sample_method, "stratified by topic")}}
                                 if s.max_examples is not None else {})})
