"""Fixed-seed samples of labelled examples, the one rule every part of mtllm draws by: the evaluation's
``max_examples`` (:mod:`mtllm.evaluation.evaluate`), and the training stages' ``max_train_examples`` and
``max_eval_examples`` (:mod:`mtllm.training.finetune`, :func:`mtllm.tasks.load_training_data`).

* :func:`sample_examples` -- at most ``n`` examples, a random sample stratified by label (or the first ``n``, or
  equal counts per label); the same seed gives the same sample whatever the file's order.
* :func:`sample_parallel` -- the same ids in every language, equal counts per label.

Pure functions of the examples' ``id`` and ``label`` (no model, no I/O), so both the training layer and the
evaluation import them from here.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Sequence

from mtllm.errors import ConfigError

__all__ = ["sample_examples", "sample_parallel"]


def _rank(seed: int, example_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{example_id}".encode("utf-8")).digest()


def sample_examples(examples: Sequence[Any], n: int | None, *, seed: int = 0, method: str = "stratified") -> list[Any]:
    """At most ``n`` of ``examples`` (objects with ``id`` and ``label``), in their original order: all of
    them when there are no more than ``n``, else a random sample stratified by label.

    Each label gets its share of ``n`` in proportion to its count (largest remainders, ties to the smaller
    label), and within a label the examples whose ``sha256(seed, id)`` ranks first are taken. So the same
    seed gives the same sample; it does not depend on the file's order (a file sorted by label gives the
    same sample as a shuffled one); and parallel files (same ids and labels in every language) give the
    same ids in every language. ``method="first"``: the first ``n`` instead; ``method="parallel"``: equal
    counts per label (:func:`sample_parallel` of this one list: ``n // labels`` each, at most the rarest label's
    count; ``n=None``: the largest balanced sample)."""
    examples = list(examples)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"max_examples must be a positive integer or null (all), got {n!r}")
    if method == "parallel":
        return sample_parallel({"": examples}, n, seed=seed)[0][""]
    if n is None or len(examples) <= n:
        return examples
    if method == "first":
        return examples[:n]
    if method != "stratified":
        raise ConfigError(f"sample_method must be 'stratified', 'first' or 'parallel', not {method!r}")
    by_label: dict[Any, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    share = {label: n * len(idx) / len(examples) for label, idx in by_label.items()}
    take = {label: int(q) for label, q in share.items()}
    for label in sorted(by_label, key=lambda lab: (take[lab] - share[lab], lab))[:n - sum(take.values())]:
        take[label] += 1
    chosen = []
    for label, idx in by_label.items():
        chosen += sorted(idx, key=lambda i: (_rank(seed, str(examples[i].id)), i))[:take[label]]
    return [examples[i] for i in sorted(chosen)]


def sample_parallel(examples_of: dict[str, Sequence[Any]], n: int | None, *,
                    seed: int = 0) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The same ids in every language of ``examples_of`` (``{lang: examples}``, objects with ``id`` and ``label``;
    the same id in two languages = translations), equal counts per label: a parallel, balanced evaluation sample.

    The candidates are the ids every language has, once, with the same label in each (an id whose label differs
    between languages, or that a language lacks or repeats, is left out and counted). Each label present among
    them gets ``n // labels`` (``n=None``: as many as possible), at most as many as the rarest label has, so the
    counts are equal; within a label the ids whose ``sha256(seed, id)`` ranks first are taken, so the same seed
    gives the same ids whatever the files' order. Returns ``({lang: its examples of those ids, in file order},
    info)``: ``info`` holds ``ids`` (in the first language's order), ``per_label``, ``wanted_per_label``,
    ``candidates`` and ``left_out`` (ids some language lacks, repeats or labels otherwise). A ``ConfigError``
    when the languages share no id or ``n`` is below the number of labels."""
    langs = list(examples_of)
    if not langs:
        raise ValueError("sample_parallel needs at least one language")
    label_of: dict[str, Any] = {}  # id -> its label in every language so far; None: unusable
    once_in: dict[str, int] = {}   # id -> how many languages have it exactly once
    for lang in langs:
        counts = Counter(str(e.id) for e in examples_of[lang])
        for e in examples_of[lang]:
            key = str(e.id)
            if counts[key] != 1:  # repeated in a language: which row is the translation is unknown
                label_of[key] = None
                continue
            once_in[key] = once_in.get(key, 0) + 1
            if key not in label_of:
                label_of[key] = e.label
            elif label_of[key] != e.label:
                label_of[key] = None
    first_order = list(dict.fromkeys(str(e.id) for e in examples_of[langs[0]]))
    candidates = [i for i in first_order if once_in.get(i) == len(langs) and label_of.get(i) is not None]
    left_out = len(set(label_of)) - len(candidates)
    if not candidates:
        raise ConfigError(f"sample_method parallel: the {len(langs)} languages ({', '.join(langs[:5])}"
                          f"{' ...' if len(langs) > 5 else ''}) share no id with the same label: it needs parallel "
                          f"data (the same id = translations of each other); use sample_method stratified")
    by_label: dict[Any, list[str]] = {}
    for i in candidates:
        by_label.setdefault(label_of[i], []).append(i)
    if n is not None and n < len(by_label):
        raise ConfigError(f"max_examples {n} is fewer than the {len(by_label)} labels: sample_method parallel takes "
                          f"max_examples / {len(by_label)} examples of each label; raise max_examples")
    wanted = n // len(by_label) if n is not None else None
    per_label = min([len(ids) for ids in by_label.values()] + ([wanted] if wanted is not None else []))
    chosen: set[str] = set()
    for ids in by_label.values():
        chosen.update(sorted(ids, key=lambda i: _rank(seed, i))[:per_label])
    sampled = {lang: [e for e in examples_of[lang] if str(e.id) in chosen] for lang in langs}
    info = {"ids": [i for i in first_order if i in chosen], "per_label": per_label, "wanted_per_label": wanted,
            "candidates": len(candidates), "left_out": left_out}
    return sampled, info
