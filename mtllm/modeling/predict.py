"""Batched prediction with a task head: label indices and probabilities for task examples or raw texts
(:meth:`mtllm.MTLLMModel.predict`, ``mtllm predict``), accuracy, and one shared encoder pass for the
MT-LLM and the encoder baseline.

Every prediction goes through :func:`example_logits`: length-sorted batches (:func:`run_batched`) of
collated examples on the model's device, logits back in input order. :func:`score_texts` turns raw texts
(with optional pair texts, multiple-choice options and one language per text) into such examples, one
group per (language, number of options), and :func:`predict_texts` is the checked entry point behind
:meth:`mtllm.MTLLMModel.predict`.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from mtllm.data.collate import collate_examples, example_lengths
from mtllm.data.languages import validate_lang
from mtllm.data.multiple_choice import OptionTruncatedError
from mtllm.device import module_device
from mtllm.errors import ConfigError, DataError, renamed_keyword
from mtllm.modeling.batching import forward_inputs, run_batched
from mtllm.modeling.model import MTLLMModel

__all__ = ["predict", "example_logits", "score_texts", "predict_texts", "softmax", "check_head", "model_route",
           "encoder_code", "accuracy", "predict_shared_encoder"]


def check_head(model: MTLLMModel) -> None:
    """A :class:`~mtllm.errors.ConfigError` when ``model`` has no task head to predict with."""
    if model.head is None:
        raise ConfigError("the model has no task head, so it has nothing to predict: load a model trained on a task "
                          "(finetune's DIR/best or distill's DIR/final), or use encode for embeddings")


def model_route(model: MTLLMModel) -> str:
    """The route texts take through ``model``: ``encoder`` (the MT-LLM) when it has an encoder, else ``llm``."""
    return "encoder" if model.encoder is not None else "llm"


@torch.no_grad()
def example_logits(model: MTLLMModel, examples: Sequence[Any], *, route: str, lang: str | None = None,
                   batch_size: int = 32, show_progress: bool = False,
                   on_batch: Callable[[int], None] | None = None, stats: dict | None = None) -> np.ndarray:
    """The head's logits ``(N, C)`` (``(N, K)`` for multiple choice) of ``examples`` (objects with ``id``,
    ``texts``, ``label`` and ``options``, all of one language ``lang`` and, for multiple choice, with the same
    number of options), float32: length-sorted batches on the model's device, input order restored.
    ``on_batch(n)`` is called after each batch of ``n`` examples (for a progress bar); the number of texts
    truncated at ``max_seq_length`` is added to ``stats["truncated"]`` when ``stats`` is given."""
    check_head(model)
    was_training = model.training
    model.eval()
    device = module_device(model)

    def step(batch_examples: list[Any]) -> np.ndarray:
        batch = collate_examples(model, batch_examples, route=route, lang=lang)
        if stats is not None:
            stats["truncated"] = stats.get("truncated", 0) + batch["n_truncated"]
        logits = model(**forward_inputs(batch, device)).logits.float().cpu().numpy()
        if on_batch is not None:
            on_batch(len(batch_examples))
        return logits

    try:
        logits = run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples),
                             progress=show_progress, desc="predict", unit="example", leave=False)
    finally:
        model.train(was_training)
    n_out = 0 if not logits else len(logits[0])
    return np.array(logits, dtype=np.float32).reshape(len(logits), n_out)


def predict(model: MTLLMModel, examples: Sequence[Any], *, route: str | None = None, lang: str | None = None,
            batch_size: int = 32, show_progress: bool = False, path: str | None = None) -> np.ndarray:
    """Predicted label indices for ``examples`` (the argmax of :func:`example_logits`) on ``route`` (``"encoder"``
    or ``"llm"``, required; ``path=`` is its old name, deprecated)."""
    route = renamed_keyword(route, path, where="predict", name="route", old_name="path")
    if route is None:
        raise TypeError("predict() missing keyword argument route ('encoder' or 'llm')")
    logits = example_logits(model, examples, route=route, lang=lang, batch_size=batch_size,
                            show_progress=show_progress)
    return logits.argmax(-1).astype(np.int64) if len(logits) else np.zeros(0, dtype=np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis (float32)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


class _Item(NamedTuple):
    """One text to score, in the form :func:`mtllm.data.collate.collate_examples` takes."""

    id: str
    texts: tuple[str, ...]
    label: int
    options: tuple[str, ...]


def encoder_code(model: MTLLMModel, lang: str | None, route: str, cache: dict) -> str | None:
    """The code the encoder gets for text in ``lang`` (its explicit, warned fallback where it does not cover
    ``lang``; see :meth:`mtllm.MTLLMModel.encoder_lang`), once per language; ``None`` on the LLM path."""
    if lang is None or route != "encoder":
        return lang
    if lang not in cache:
        cache[lang] = model.encoder_lang(lang)
    return cache[lang]


def score_texts(model: MTLLMModel, texts: Sequence[str], *, langs: Sequence[str | None],
                pairs: Sequence[str] | None = None, options: Sequence[Sequence[str]] | None = None,
                batch_size: int = 32, show_progress: bool = False,
                on_batch: Callable[[int], None] | None = None, encoder_langs: dict | None = None,
                stats: dict | None = None) -> list[np.ndarray]:
    """The head's logits for each of ``texts`` (one float32 array per text: ``(C,)``, or ``(K,)`` over its
    options for multiple choice), in input order.

    ``langs``: one FLORES-200 code (or ``None``) per text; texts are grouped by language (and by number of
    options) and each group runs through :func:`example_logits` (length-sorted batches). ``pairs``: a second
    text per text, joined to it with ``config.pair_separator`` as :meth:`MTLLMModel.tokenize` joins pairs (for
    multiple choice: the question, ``texts`` being the passages). A pair with one empty segment is scored
    with that segment empty. ``stats``: see :func:`example_logits`. Inputs are not checked here (see
    :func:`predict_texts`)."""
    n = len(texts)
    route = model_route(model)
    sep = model.config.pair_separator
    blank: set[int] = set()
    if options is not None:  # multiple choice: an empty passage or question is left out of the layout
        segments = list(texts) + (list(pairs) if pairs is not None else [])
        blank = set(model.contentless(segments, route=route))
    items = []
    for i in range(n):
        opts = tuple(options[i]) if options is not None else ()
        if opts:
            segments = [(i, texts[i])] + ([(n + i, pairs[i])] if pairs is not None else [])
            parts = tuple(seg for k, seg in segments if k not in blank) or (texts[i],)
        else:
            parts = (texts[i] + sep + pairs[i],) if pairs is not None else (texts[i],)
        items.append(_Item(str(i), parts, -1, opts))
    cache = {} if encoder_langs is None else encoder_langs
    groups: dict[tuple[str | None, int], list[int]] = {}
    for i in range(n):
        groups.setdefault((encoder_code(model, langs[i], route, cache), len(items[i].options)), []).append(i)
    out: list[Any] = [None] * n
    for (lang, _), idx in groups.items():
        try:
            logits = example_logits(model, [items[i] for i in idx], route=route, lang=lang, batch_size=batch_size,
                                    show_progress=show_progress, on_batch=on_batch, stats=stats)
        except OptionTruncatedError as err:
            raise DataError(f"an answer option was cut off: the passage, question and options are longer than "
                            f"max_seq_length ({model.config.max_seq_length} tokens) allows ({err}); shorten the "
                            f"passage") from None
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return out


def _listed(indices: Sequence[int], limit: int = 10) -> str:
    return ", ".join(map(str, indices[:limit])) + (" ..." if len(indices) > limit else "")


def predict_texts(model: MTLLMModel, texts: Sequence[str] | str, *, lang: str | Sequence[str] | None = None,
                  pairs: Sequence[str] | str | None = None, options: Sequence[Sequence[str]] | None = None,
                  batch_size: int = 32, return_probs: bool = False, show_progress: bool = False):
    """What :meth:`mtllm.MTLLMModel.predict` returns (see there); every input is checked before any model work."""
    check_head(model)
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if isinstance(pairs, str):
        pairs = [pairs]
    n = len(texts)
    if pairs is not None:
        pairs = list(pairs)
        if len(pairs) != n:
            raise DataError(f"pairs has {len(pairs)} items for {n} texts: give one pair text (e.g. the hypothesis) "
                            f"per text, in the same order, or pairs=None")
    mc = model.config.head_kind == "multiple_choice"
    if mc:
        if options is None:
            raise ConfigError("this model has a multiple-choice head: pass options=[[option, ...], ...] (one list of "
                              "answer options per text; texts are the passages, pairs the questions)")
        if single and options and isinstance(options[0], str):
            options = [options]
        options = [list(o) for o in options]
        if len(options) != n:
            raise DataError(f"options has {len(options)} lists for {n} texts: give one list of answer options per text")
        bad = [i for i, o in enumerate(options) if not o or any(not isinstance(x, str) or not x.strip() for x in o)]
        if bad:
            raise DataError(f"texts {_listed(bad)} have no options or an empty option; every answer option needs text")
    elif options is not None:
        raise ConfigError(f"options are for multiple-choice models; this model classifies into "
                          f"{model.config.label_names}: drop options")
    if lang is None or isinstance(lang, str):
        langs = [lang] * n
    else:
        langs = list(lang)
        if len(langs) != n:
            raise DataError(f"lang has {len(langs)} codes for {n} texts: give one FLORES-200 code for all texts or "
                            f"one per text")
    checked = {code: validate_lang(code) for code in set(langs) if code is not None}
    langs = [checked[c] if c is not None else None for c in langs]
    route = model_route(model)
    if route == "encoder" and model.config.encoder_lang_style == "nllb" and any(c is None for c in langs):
        raise ConfigError("this model's encoder (NLLB-style) needs the language of the texts: pass lang='xxx_Xxxx' "
                          "(a FLORES-200 code such as 'eng_Latn'), or one code per text")
    encoder_langs: dict = {}
    for code in checked.values():
        encoder_code(model, code, route, encoder_langs)  # an uncovered language fails here, before any work
    empty = set(model.contentless(texts, route=route))
    if pairs is not None:
        empty &= set(model.contentless(pairs, route=route))
    if empty:
        rows = sorted(empty)
        raise DataError(f"{len(rows)} of {n} texts have nothing to read (indices {_listed(rows)}): empty, "
                        f"whitespace-only, not strings, or only characters the tokenizer drops"
                        f"{' (in both segments of the pair)' if pairs is not None else ''}. Drop or fix them; "
                        f"nothing was computed")
    stats: dict = {}
    logits = score_texts(model, texts, langs=langs, pairs=pairs, options=options, batch_size=batch_size,
                         show_progress=show_progress, encoder_langs=encoder_langs, stats=stats)
    if stats.get("truncated"):
        warnings.warn(f"{stats['truncated']} of {n} texts were longer than {model.config.max_seq_length} tokens and "
                      f"were truncated; raise max_seq_length to keep them whole", stacklevel=3)
    if mc:
        labels: list[Any] = [int(np.argmax(x)) for x in logits]
        sizes = {len(x) for x in logits}
        probs: Any = (np.stack([softmax(x) for x in logits]) if len(sizes) == 1 else [softmax(x) for x in logits]) \
            if logits else np.zeros((0, 0), dtype=np.float32)
    else:
        names = model.config.label_names
        labels = [names[int(np.argmax(x))] for x in logits]
        probs = softmax(np.stack(logits)) if logits else np.zeros((0, len(names)), dtype=np.float32)
    if single:
        labels, probs = labels[0], probs[0]
    return (labels, probs) if return_probs else labels


def accuracy(model: MTLLMModel, examples: Sequence[Any], **kwargs: Any) -> float:
    """Fraction of ``examples`` whose label the model predicts."""
    labels = np.array([e.label for e in examples])
    return float((predict(model, examples, **kwargs) == labels).mean())


@torch.no_grad()
def predict_shared_encoder(model: Any, probe: Any, examples: Sequence[Any], *, lang: str | None,
                           batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The ``mtllm`` and ``encoder`` systems in one pass over ``examples``: per length-sorted batch the
    frozen encoder runs once, and its states ``(N, L, E)`` feed both the MT-LLM (projection, LLM, head)
    and the encoder baseline's head (``probe``, a fitted :class:`~mtllm.baselines.encoder_probe.EncoderClassifier`
    on the same encoder). Returns (MT-LLM predictions, encoder predictions, seconds per part:
    ``tokenize``, ``encoder_forward``, ``mtllm_after_encoder``, ``encoder_head``)."""
    check_head(model)
    was_training = model.training
    model.eval()
    device = module_device(model)
    secs = dict.fromkeys(("tokenize", "encoder_forward", "mtllm_after_encoder", "encoder_head"), 0.0)

    def step(batch_examples: list[Any]) -> list[tuple[int, torch.Tensor]]:
        t0 = time.perf_counter()
        batch = collate_examples(model, batch_examples, route="encoder", lang=lang)
        inputs = forward_inputs(batch, device)
        t1 = time.perf_counter()
        hidden_NLE = model.encoder(input_ids=inputs["input_ids"],
                                   attention_mask=inputs["attention_mask"]).last_hidden_state
        t2 = time.perf_counter()
        logits = model(attention_mask=inputs["attention_mask"], encoder_hidden_states=hidden_NLE,
                       option_spans=inputs.get("option_spans")).logits
        preds = logits.argmax(-1).cpu().numpy()
        t3 = time.perf_counter()
        pooled = probe.pool(batch, hidden_NLE)
        t4 = time.perf_counter()
        for key, dt in zip(secs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            secs[key] += dt
        return list(zip(preds.tolist(), pooled))

    results = run_batched(examples, step, batch_size=batch_size, lengths=example_lengths(examples))
    t0 = time.perf_counter()
    enc_preds = probe.predict_features(torch.stack([feat for _, feat in results]))
    secs["encoder_head"] += time.perf_counter() - t0
    model.train(was_training)
    return np.array([pred for pred, _ in results], dtype=np.int64), enc_preds, secs
