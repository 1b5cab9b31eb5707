"""Translate-test: translate every text of a task to English with a seq2seq MT model, with a cache.

The translate-test baseline classifies machine translations with the English-only model. This
module does the translation part with any Hugging Face seq2seq model (NLLB, M2M100, MADLAD/T5-style
models with language tokens, fixed-direction Marian models) and caches every translation on disk,
so re-running an evaluation, or running it again after an interruption, only translates what is new.

Language codes are the model's own: FLORES-200 codes such as ``fra_Latn`` for NLLB, ``fr`` for
M2M100 (whose tokens are ``__fr__``). The source language is marked the way the tokenizer expects
(``tokenizer.src_lang`` where the tokenizer has it, otherwise the language token is prepended to
the input, as NLLB does) and the target language is forced as the first generated token.

Cache layout::

    <cache_dir>/<src_lang>-<target_lang>-<key>.jsonl

where ``key`` hashes the model identity (config, tokenizer and a sample of the weights) and the
generation settings. The first line describes the file; every further line is
``{"k": sha1(source text), "t": translation}``. Lines are appended (under a file lock) after
each batch, so an interrupted run keeps its finished batches; a torn last line is ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from filelock import FileLock

from mtllm.data.languages import validate_lang
from mtllm.device import module_device, place, to_device
from mtllm.errors import UnsupportedLanguageError  # noqa: F401 (raised here, re-exported)
from mtllm.fingerprints import json_digest, module_fingerprint
from mtllm.modeling.batching import run_batched
from mtllm.settings import MODEL, OUTPUT_DIR, at_least, check_settings
from mtllm.sources import MODEL_LOAD_KWARGS, load_source
from mtllm.sources.pocket import cache_dir

logger = logging.getLogger(__name__)

__all__ = ["TranslateSettings", "TranslateStats", "Translator", "translate_examples", "UnsupportedLanguageError"]

_CACHE_FORMAT = 1


@dataclass
class TranslateSettings:
    """How the translate-test baseline translates task texts into English."""

    mt_model: str = field(default="facebook/nllb-200-distilled-600M", metadata={
        "help": "Seq2seq MT model: hub id, local directory, 'pocket:NAME' or 'tiny:m2m100'.", "check": MODEL})
    target_lang: str | None = field(default="eng_Latn", metadata={
        "help": "Target language code as the model names it ('eng_Latn' for NLLB, 'en' for M2M100); "
                "None for fixed-direction models without language tokens (e.g. Marian opus-mt-*-en)."})
    batch_size: int = field(default=16,
                            metadata={"help": "Texts per generate() call (length-sorted batches).",
                                      "check": at_least(1)})
    num_beams: int = field(default=1, metadata={"help": "Beam size; 1 = greedy decoding.", "check": at_least(1)})
    max_new_tokens: int = field(default=256,
                                metadata={"help": "Maximum length of a translation in tokens.", "check": at_least(1)})
    max_source_length: int = field(default=512,
                                   metadata={"help": "Source texts are truncated to this many tokens.",
                                             "check": at_least(1)})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Directory of the translation cache (default: mtllm.sources.pocket.cache_dir()/translations).",
        "check": OUTPUT_DIR})

    def __post_init__(self) -> None:
        check_settings(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TranslateSettings":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return cache_dir() / "translations"


@dataclass
class TranslateStats:
    """What the last :meth:`Translator.translate` call did."""

    texts: int = 0          # texts asked for
    unique: int = 0         # distinct non-empty texts among them
    cache_hits: int = 0     # distinct texts found in the cache
    translated: int = 0     # distinct texts translated by the model
    batches: int = 0        # generate() calls
    cache_file: str | None = None


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _lang_token_id(tokenizer: Any, code: str) -> int | None:
    """Id of the token that names language ``code`` in ``tokenizer``, or ``None``.

    M2M100-style tokenizers (``get_lang_id``) map ``fr`` to ``__fr__``; everything else must
    have ``code`` itself as a special or added token, as NLLB's FLORES-200 codes are (an ordinary
    vocabulary piece that happens to spell ``en`` is not a language token)."""
    get_lang_id = getattr(tokenizer, "get_lang_id", None)
    if callable(get_lang_id):
        try:
            return int(get_lang_id(code))
        except (KeyError, ValueError, TypeError):
            pass
    try:
        tid = tokenizer.convert_tokens_to_ids(code)
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(tid, int) or tid < 0:
        return None
    unk = tokenizer.unk_token_id
    if unk is not None and tid == unk and code != tokenizer.unk_token:
        return None
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if code not in special:
        try:
            special.update(tokenizer.get_added_vocab())
        except (AttributeError, NotImplementedError):
            pass
    return tid if code in special else None


def _validate_lang_code(code: str) -> str:
    """``code`` checked (and canonicalised, e.g. ``FRA-latn`` -> ``fra_Latn``) by
    :func:`mtllm.data.languages.validate_lang`."""
    return validate_lang(code)


def _resolve_lang(tokenizer: Any, code: str, role: str, model_name: str) -> tuple[str, int | None]:
    """``(code, token id)`` of language ``code`` in ``tokenizer``.

    A code the tokenizer knows is used as is (``fr`` for M2M100, ``fra_Latn`` for NLLB). Otherwise
    the code is validated with :mod:`mtllm.data.languages` (typos raise its ``UnknownLanguageError``) and
    its canonical form tried; a valid language the model has no token for raises
    :class:`UnsupportedLanguageError`."""
    if callable(getattr(tokenizer, "get_lang_id", None)) and len(code) > 4 and code[:2] == code[-2:] == "__":
        code = code[2:-2]  # M2M100: the tokenizer wants "fr", its token is "__fr__"
    tid = _lang_token_id(tokenizer, code)
    if tid is not None:
        return code, tid
    canonical = _validate_lang_code(code)
    if canonical != code:
        tid = _lang_token_id(tokenizer, canonical)
        if tid is not None:
            return canonical, tid
    raise UnsupportedLanguageError(
        f"MT model {model_name!r} has no token for the {role} language {code!r}; {_lang_examples(tokenizer)}")


def _lang_examples(tokenizer: Any, limit: int = 8) -> str:
    codes = getattr(tokenizer, "lang_code_to_token", None) or getattr(tokenizer, "lang_code_to_id", None)
    if codes:
        names = list(codes)
    else:
        names = [t for t in getattr(tokenizer, "all_special_tokens", []) if not t.startswith("<")]
    if not names:
        return "it has no language tokens"
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "it knows " + ", ".join(names[:limit]) + more


class Translator:
    """Translates lists of texts into ``settings.target_lang`` with a seq2seq model, cached on disk.

    >>> tr = Translator.from_pretrained("facebook/nllb-200-distilled-600M")   # doctest: +SKIP
    >>> tr.translate(["Le chat dort."], "fra_Latn")                             # doctest: +SKIP
    ['The cat is sleeping.']
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, settings: TranslateSettings | None = None,
                 name: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or TranslateSettings()
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self._fingerprint: str | None = None
        self.last_stats = TranslateStats()
        self._target_id: int | None = None
        if self.settings.target_lang is not None:
            _, self._target_id = _resolve_lang(tokenizer, self.settings.target_lang, "target", self.name)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], settings: TranslateSettings | None = None, *,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Translator":
        """Load ``name_or_path`` (hub id, directory, ``pocket:``/``tiny:`` source) with its tokenizer, on
        ``device`` (:func:`mtllm.device.resolve_device`: ``$MTLLM_DEVICE``, else cuda, else mps, else cpu)."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # slow: transformers' auto classes

        settings = settings or TranslateSettings(mt_model=str(name_or_path))
        kwargs = {**MODEL_LOAD_KWARGS, **({"dtype": dtype} if dtype is not None else {})}
        tokenizer, model = load_source(name_or_path, "translation model", lambda path: (
            AutoTokenizer.from_pretrained(path, trust_remote_code=False),
            AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)))
        return cls(place(model, device), tokenizer, settings=settings, name=str(name_or_path))

    # ------------------------------------------------------------------ cache
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.model, self.tokenizer)
        return self._fingerprint

    def cache_path(self, src_lang: str) -> Path:
        """The cache file for translations from ``src_lang`` with this model and these settings."""
        s = self.settings
        key = {"format": _CACHE_FORMAT, "model": self.fingerprint, "src_lang": src_lang,
               "target_lang": s.target_lang, "num_beams": s.num_beams, "max_new_tokens": s.max_new_tokens,
               "max_source_length": s.max_source_length}
        digest = json_digest(key, length=16)
        safe = lambda code: "".join(c if c.isalnum() or c in "_-" else "_" for c in str(code))  # noqa: E731
        return s.resolved_cache_dir() / f"{safe(src_lang)}-{safe(s.target_lang)}-{digest}.jsonl"

    @staticmethod
    def _read_cache(path: Path) -> dict[str, str]:
        cached: dict[str, str] = {}
        try:
            with path.open("rb") as fh:
                for raw in fh:
                    try:
                        record = json.loads(raw.decode("utf-8"))
                    except ValueError:  # a torn line from an interrupted write, or bytes that are not UTF-8
                        continue
                    if (isinstance(record, dict) and isinstance(record.get("k"), str)
                            and isinstance(record.get("t"), str)):
                        cached[record["k"]] = record["t"]
        except FileNotFoundError:
            pass
        return cached

    def _append_cache(self, path: Path, records: Iterable[tuple[str, str]], src_lang: str) -> None:
        lines = "".join(json.dumps({"k": k, "t": t}, ensure_ascii=False) + "\n" for k, t in records)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            with path.open("a+b") as fh:
                fh.seek(0, os.SEEK_END)
                prefix = ""
                if fh.tell() == 0:
                    meta = {"mtllm_translations": _CACHE_FORMAT, "model": self.name, "fingerprint": self.fingerprint,
                            "src_lang": src_lang, **dataclasses.asdict(self.settings)}
                    prefix = json.dumps({"meta": meta}, ensure_ascii=False) + "\n"
                else:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # finish a torn line so that the new records parse
                        prefix = "\n"
                fh.write((prefix + lines).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())

    # ------------------------------------------------------------------ translation
    def _source_setup(self, src_lang: str) -> tuple[str, list[int]]:
        """Mark the source language; returns the code as the tokenizer names it and the token ids
        to prepend to every input (empty where the tokenizer adds the language token itself)."""
        tok = self.tokenizer
        if self.settings.target_lang is None:  # fixed-direction model: no language tokens at all
            return _validate_lang_code(src_lang), []
        src_lang, src_id = _resolve_lang(tok, src_lang, "source", self.name)
        if hasattr(tok, "src_lang"):  # NLLB / M2M100 / mBART-50 tokenizers add the token themselves
            tok.src_lang = src_lang
            return src_lang, []
        return src_lang, [src_id]  # NLLB-style "<lang> text </s>" for tokenizers that do not know src_lang

    def translate(self, texts: Sequence[str], src_lang: str, *, progress: bool = True) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` into ``settings.target_lang``, in input order.

        Identical texts are translated once, empty texts stay empty, cached translations are
        reused, and new ones are appended to the cache after every batch.
        """
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        src_lang, prefix = self._source_setup(src_lang)
        s = self.settings
        stats = TranslateStats(texts=len(texts))
        unique = list(dict.fromkeys(t for t in texts if t.strip()))
        stats.unique = len(unique)
        result: dict[str, str] = {}
        path = self.cache_path(src_lang) if unique else None
        stats.cache_file = str(path) if path else None
        if path is not None:
            cached = self._read_cache(path)
            todo = []
            for text in unique:
                hit = cached.get(_sha1(text))
                if hit is None:
                    todo.append(text)
                else:
                    result[text] = hit
            stats.cache_hits = len(unique) - len(todo)
        else:
            todo = []

        if todo:
            tok = self.tokenizer
            max_len = min(s.max_source_length, getattr(tok, "model_max_length", None) or s.max_source_length)
            enc = tok(todo, truncation=True, max_length=max_len - len(prefix), padding=False)
            ids = [prefix + list(x) for x in enc["input_ids"]]
            device = module_device(self.model)
            gen_kwargs: dict[str, Any] = {"num_beams": s.num_beams, "max_new_tokens": s.max_new_tokens,
                                          "do_sample": False}
            if self._target_id is not None:
                gen_kwargs["forced_bos_token_id"] = self._target_id

            def step(batch: list[int]) -> None:  # translations go to `result` and the cache, batch by batch
                padded = to_device(tok.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt"),
                                   device)
                with torch.inference_mode():
                    out = self.model.generate(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                                              **gen_kwargs)
                decoded = tok.batch_decode(out, skip_special_tokens=True)
                records = []
                for i, translation in zip(batch, decoded):
                    translation = translation.strip()
                    result[todo[i]] = translation
                    records.append((_sha1(todo[i]), translation))
                self._append_cache(path, records, src_lang)
                stats.batches += 1
                stats.translated += len(batch)

            try:  # longest first: an out-of-memory batch shows early
                run_batched(range(len(todo)), step, batch_size=s.batch_size, lengths=[len(x) for x in ids],
                            longest_first=True, progress=progress, desc=f"translate {src_lang}->{s.target_lang}",
                            unit="text")
            finally:
                self.last_stats = stats
        self.last_stats = stats
        if unique:
            logger.info("translate %s->%s: %d texts, %d distinct, %d cache hits, %d translated (%s)",
                        src_lang, s.target_lang, stats.texts, stats.unique, stats.cache_hits, stats.translated,
                        stats.cache_file)
        return [result[t] if t.strip() else t for t in texts]


def translate_examples(translator: Translator, examples: Sequence[Any], src_lang: str, *,
                       progress: bool = True) -> list[Any]:
    """Copies of ``examples`` (dataclasses with ``texts`` and optionally ``options`` tuples of strings,
    like ``Example(id, texts, label, options)``) with every text and option translated.

    All strings of all examples are translated in one call, so duplicates across examples are
    translated once and batches are length-sorted over the whole set."""
    fields = ("texts", "options")
    flat: list[str] = []
    for ex in examples:
        if not dataclasses.is_dataclass(ex) or isinstance(ex, type):
            raise TypeError(f"translate_examples needs dataclass instances, got {type(ex).__name__}")
        for name in fields:
            flat.extend(getattr(ex, name, None) or ())
    translated = iter(translator.translate(flat, src_lang, progress=progress))
    out = []
    for ex in examples:
        changes = {}
        for name in fields:
            value = getattr(ex, name, None)
            if value:
                changes[name] = tuple(next(translated) for _ in value)
        out.append(dataclasses.replace(ex, **changes))
    return out
