"""Evaluation results: per-language accuracy of several systems, written as JSON, a markdown table and a
plot.

:func:`write_results` puts three files into an output directory:

``results.json``
    ``{"task": str, "metric": "accuracy", "systems": {SYSTEM: {LANG: float in [0, 1]}},
    "averages": {SYSTEM: float}, "averages_common": {SYSTEM: float}, "averages_non_english":
    {SYSTEM: float}, "languages_common": [LANG, ...], "n_examples": {LANG: int}, "train_lang": LANG,
    "notes": [str, ...], ...}`` plus every key of ``meta`` at the top level (e.g. ``"seconds"``,
    ``"split"``, ``"majority_baseline"``). Averages are macro averages (each language counts once):
    ``averages`` over the languages a system was evaluated on, ``averages_common`` over the languages
    every system was evaluated on, ``averages_non_english`` over a system's languages except
    ``train_lang`` (the English-excluded average when training was in English). An average with no
    language is ``null``.
``results.md``
    a header with the task, the notes, then a table: one row per language, one column per system,
    accuracy in % with one decimal, ``n`` per language, the averages last; a missing cell is ``–`` and
    the best system of a row is bold. A language in ``meta["single_class"]`` (``{LANG: class}``: every
    example it was scored on has that one class) has each score marked with :data:`SINGLE_CLASS_MARK`,
    no bold, and a note: its score only says whether a system predicts that class. ``meta["bad_rows"]``
    (``{LANG: {"blank_segment_kept": n, "no_text_dropped": m}}``, written by evaluation) adds a note naming
    the languages whose data had rows kept with a blank segment or dropped for having no text.
``results.png``
    per-language accuracy by system (one marker per system and language), languages sorted by the first
    system's accuracy, a dashed line at the chance / majority-class level when known, the figure wide
    enough for 200+ language labels.

:func:`read_results` reads ``results.json`` back; :meth:`EvalResults.merge` combines the results of
runs that evaluated different systems or languages (e.g. when an evaluation is resumed).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mtllm._io import atomic_path, atomic_write_text

__all__ = ["EvalResults", "write_results", "read_results", "format_summary_lines", "render_markdown",
           "plot_results", "plot_figure_size", "sort_languages", "RESULTS_JSON", "RESULTS_MD", "RESULTS_PNG",
           "SINGLE_CLASS_MARK"]

RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"
#: Marks, in results.md, the scores of a language whose examples all have one class.
SINGLE_CLASS_MARK = "⚠"

_FIELDS = ("task", "metric", "systems", "n_examples", "train_lang", "notes")
_DERIVED = ("averages", "averages_common", "averages_non_english", "languages_common")
#: ``meta`` keys read as the chance level for the plot, in order of preference, with their labels.
_CHANCE_KEYS = (("majority_baseline", "majority class"), ("chance", "chance"))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _scalar(value: Any) -> Any:
    """A 0-d numpy/torch value as a Python number; anything else unchanged."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def _check_accuracy(system: str, lang: str, value: Any) -> float:
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{system}/{lang}: accuracy must be a number in [0, 1], got {value!r} "
                         f"({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{system}/{lang}: accuracy must be finite and in [0, 1], got {value!r}"
                         + (" (a percentage? divide by 100)" if math.isfinite(value) and 1 < value <= 100 else ""))
    return value


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} must be a non-empty string, got {name!r}")
    return name


@dataclass
class EvalResults:
    """Per-language scores of several systems on one task.

    ``systems``: ``{system: {lang: score in [0, 1]}}`` (systems such as ``mtllm``, ``llm``,
    ``encoder``, ``translate_test``); ``n_examples``: ``{lang: number of test examples}``;
    ``train_lang``: the language the task head was trained on (left out of ``averages_non_english``);
    ``notes``: free text for the report; ``meta``: anything else JSON-serialisable (``seconds``,
    ``split``, ``majority_baseline`` or ``chance`` -- the latter two draw the plot's dashed line).
    Values are validated on construction.
    """

    task: str
    metric: str = "accuracy"
    systems: dict[str, dict[str, float]] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)
    train_lang: str | None = "eng_Latn"
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check_name("task", self.task)
        _check_name("metric", self.metric)
        if self.train_lang is not None:
            _check_name("train_lang", self.train_lang)
        if not isinstance(self.systems, Mapping):
            raise ValueError(f"systems must be a dict {{system: {{lang: score}}}}, got {type(self.systems).__name__}")
        systems = {}
        for system, scores in self.systems.items():
            _check_name("a system name", system)
            if not isinstance(scores, Mapping):
                raise ValueError(f"systems[{system!r}] must be a dict {{lang: score}}, got {type(scores).__name__}")
            systems[system] = {_check_name(f"a language code (system {system!r})", lang):
                               _check_accuracy(system, lang, value) for lang, value in scores.items()}
        self.systems = systems
        if not isinstance(self.n_examples, Mapping):
            raise ValueError(f"n_examples must be a dict {{lang: int}}, got {type(self.n_examples).__name__}")
        n_examples = {}
        for lang, n in self.n_examples.items():
            n = _scalar(n)
            _check_name("a language code (n_examples)", lang)
            if isinstance(n, bool) or not isinstance(n, numbers.Real) or not float(n).is_integer() or n < 0:
                raise ValueError(f"n_examples[{lang!r}] must be a non-negative integer, got {n!r}")
            n_examples[lang] = int(n)
        self.n_examples = n_examples
        if isinstance(self.notes, str) or not all(isinstance(x, str) for x in self.notes):
            raise ValueError(f"notes must be a list of strings, got {self.notes!r}")
        self.notes = list(self.notes)
        if not isinstance(self.meta, Mapping):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")
        clash = sorted(set(self.meta) & set(_FIELDS + _DERIVED))
        if clash:
            raise ValueError(f"meta keys {clash} are reserved for results.json's own fields")
        self.meta = dict(self.meta)

    # ------------------------------------------------------------------ views
    @property
    def languages(self) -> list[str]:
        """Every language some system was evaluated on (or with a count), sorted."""
        langs = set(self.n_examples)
        for scores in self.systems.values():
            langs.update(scores)
        return sorted(langs)

    def common_languages(self) -> list[str]:
        """The languages every system was evaluated on, sorted (none when there is no system)."""
        sets = [set(scores) for scores in self.systems.values()]
        return sorted(set.intersection(*sets)) if sets else []

    def averages(self) -> dict[str, float | None]:
        """Mean score of each system over the languages it was evaluated on (``None``: no language)."""
        return {s: _mean(list(scores.values())) for s, scores in self.systems.items()}

    def averages_common(self) -> dict[str, float | None]:
        """Mean score of each system over :meth:`common_languages`."""
        common = self.common_languages()
        return {s: _mean([scores[lang] for lang in common]) for s, scores in self.systems.items()}

    def averages_non_english(self) -> dict[str, float | None]:
        """Mean score of each system over its languages except ``train_lang``."""
        return {s: _mean([v for lang, v in scores.items() if lang != self.train_lang])
                for s, scores in self.systems.items()}

    def single_class(self) -> dict[str, str]:
        """``{lang: class}`` for the languages whose examples all have one class (``meta["single_class"]``):
        their scores are flagged, since they only say whether a system predicts that class."""
        flagged = self.meta.get("single_class")
        return {str(k): str(v) for k, v in flagged.items()} if isinstance(flagged, Mapping) else {}

    def chance_level(self) -> tuple[float, str] | None:
        """``(level, label)`` from ``meta["majority_baseline"]`` or ``meta["chance"]``, when given."""
        for key, label in _CHANCE_KEYS:
            value = self.meta.get(key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
                return float(value), label
        return None

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` object (derived averages included, ``meta`` keys at the top level)."""
        return {"task": self.task, "metric": self.metric,
                "systems": {s: dict(scores) for s, scores in self.systems.items()},
                "averages": self.averages(), "averages_common": self.averages_common(),
                "averages_non_english": self.averages_non_english(), "languages_common": self.common_languages(),
                "n_examples": dict(self.n_examples), "train_lang": self.train_lang, "notes": list(self.notes),
                **self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EvalResults":
        """Inverse of :meth:`to_dict`: derived averages are recomputed, unknown keys go to ``meta``."""
        if not isinstance(d, Mapping) or "task" not in d or "systems" not in d:
            raise ValueError("not an evaluation result: expected a JSON object with 'task' and 'systems'")
        meta = {k: v for k, v in d.items() if k not in _FIELDS + _DERIVED}
        return cls(task=d["task"], metric=d.get("metric", "accuracy"), systems=d["systems"],
                   n_examples=d.get("n_examples") or {}, train_lang=d.get("train_lang", "eng_Latn"),
                   notes=list(d.get("notes") or []), meta=meta)

    def merge(self, other: "EvalResults", *, overwrite: bool = False) -> "EvalResults":
        """A new result with the systems and languages of both (e.g. when an evaluation is resumed).

        Task, metric and train language must agree. A score (or ``n``) present in both with a different
        value raises ``ValueError`` unless ``overwrite=True``, when ``other`` wins. Notes are joined
        without duplicates; ``meta`` is merged one level deep (``other`` wins), so ``seconds`` of
        different systems add up to one dict.
        """
        if not isinstance(other, EvalResults):
            raise TypeError(f"can only merge EvalResults, not {type(other).__name__}")
        for name in ("task", "metric"):
            if getattr(self, name) != getattr(other, name):
                raise ValueError(f"cannot merge results of different {name}s: {getattr(self, name)!r} and "
                                 f"{getattr(other, name)!r}")
        if self.train_lang and other.train_lang and self.train_lang != other.train_lang:
            raise ValueError(f"cannot merge results trained on {self.train_lang!r} and {other.train_lang!r}")
        systems = {s: dict(scores) for s, scores in self.systems.items()}
        for s, scores in other.systems.items():
            mine = systems.setdefault(s, {})
            for lang, value in scores.items():
                if lang in mine and mine[lang] != value and not overwrite:
                    raise ValueError(f"{s}/{lang} differs: {mine[lang]!r} here, {value!r} in the other result "
                                     "(pass overwrite=True to take the other's)")
                mine[lang] = value
        n_examples = dict(self.n_examples)
        for lang, n in other.n_examples.items():
            if lang in n_examples and n_examples[lang] != n and not overwrite:
                raise ValueError(f"n_examples[{lang!r}] differs: {n_examples[lang]} here, {n} in the other result "
                                 "(different test sets?)")
            n_examples[lang] = n
        meta = dict(self.meta)
        for key, value in other.meta.items():
            if isinstance(meta.get(key), Mapping) and isinstance(value, Mapping):
                meta[key] = {**meta[key], **value}
            else:
                meta[key] = value
        notes = list(dict.fromkeys(self.notes + other.notes))
        return EvalResults(task=self.task, metric=self.metric, systems=systems, n_examples=n_examples,
                           train_lang=self.train_lang or other.train_lang, notes=notes, meta=meta)


# ---------------------------------------------------------------------- text
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _train_lang_words(train_lang: str | None) -> str:
    return "non-English" if train_lang and train_lang.startswith("eng") else f"without {train_lang}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _bold_best(values: list[float | None]) -> list[str]:
    shown = [_pct(v) for v in values]
    present = [float(s) for s, v in zip(shown, values) if v is not None]
    if len(present) < 2:
        return shown
    best = max(present)
    return [f"**{s}**" if v is not None and float(s) == best else s for s, v in zip(shown, values)]


def render_markdown(results: EvalResults) -> str:
    """The ``results.md`` text: header, notes, the per-language table and the averages."""
    systems = list(results.systems)
    lines = [f"# {results.task}: {results.metric} by language", ""]
    n_langs = len(results.languages)
    lines.append(f"{len(systems)} system(s) on {n_langs} language(s); {results.metric} in %; "
                 f"task head trained on `{results.train_lang}`. Best system per row in **bold**; – = not evaluated.")
    chance = results.chance_level()
    if chance is not None:
        lines.append(f"The {chance[1]} level is {100 * chance[0]:.1f}%.")
    flagged = results.single_class()
    notes = list(results.notes)
    if flagged:
        notes.append(f"{SINGLE_CLASS_MARK} every example of "
                     f"{', '.join(f'{lang} ({c})' for lang, c in sorted(flagged.items()))} "
                     f"has the same class: such a score only says whether a system predicts that class (a system that "
                     f"always does scores 100), so it is not bold and not comparable; evaluate more examples")
    notes += _bad_rows_notes(results)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    lines += ["", _row(["Language", "n"] + [_md_escape(s) for s in systems]),
              _row(["---", "---:"] + ["---:"] * len(systems))]
    for lang in results.languages:
        n = results.n_examples.get(lang)
        values = [results.systems[s].get(lang) for s in systems]
        if lang in flagged:
            cells = [_pct(v) if v is None else f"{_pct(v)} {SINGLE_CLASS_MARK}" for v in values]
        else:
            cells = _bold_best(values)
        lines.append(_row([_md_escape(lang), "–" if n is None else str(n)] + cells))
    common = results.common_languages()
    # averages over different language sets are not comparable: bold the best only where the sets agree
    same_sets = len({frozenset(scores) for scores in results.systems.values()}) <= 1
    averages = [("Average (each system's languages)", results.averages(), same_sets),
                (f"Average ({len(common)} languages common to all)", results.averages_common(), True)]
    if results.train_lang is not None:
        averages.append((f"Average ({_train_lang_words(results.train_lang)}, without `{results.train_lang}`)",
                         results.averages_non_english(), same_sets))
    lines.append(_row(["Languages evaluated", ""] + [str(len(results.systems[s])) for s in systems]))
    for label, avg, comparable in averages:
        values = [avg[s] for s in systems]
        lines.append(_row([f"**{label}**", ""] + (_bold_best(values) if comparable else [_pct(v) for v in values])))
    for name, measure in (results.meta.get("measures") or {}).items():
        lines += [""] + _measure_table(name, measure, results.languages)
    return "\n".join(lines) + "\n"


def _measure_table(name: str, measure: Mapping[str, Any], languages: Sequence[str]) -> list[str]:
    """A further per-language measure from ``meta["measures"][name]`` (``{"description", "systems": {system:
    {lang: value}}}``, e.g. the retrieval probe's FVU), as plain numbers with a per-system mean."""
    per_system: Mapping[str, Mapping[str, float]] = measure.get("systems", {})
    systems = list(per_system)
    # languages only this measure has (the retrieval probe's English row) first, then the table's own
    langs = list(dict.fromkeys([*(lang for v in per_system.values() for lang in v if lang not in languages),
                                *languages]))
    lines = [f"## {name}", "", str(measure.get("description", "")), "",
             _row(["Language"] + [_md_escape(s) for s in systems]), _row(["---"] + ["---:"] * len(systems))]
    for lang in langs:
        lines.append(_row([_md_escape(lang)] + [_num(per_system[s].get(lang)) for s in systems]))
    means = [sum(v.values()) / len(v) if v else None for v in (per_system[s] for s in systems)]
    lines.append(_row(["**mean**"] + [_num(m) for m in means]))
    return lines


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _bad_rows_notes(results: EvalResults) -> list[str]:
    """The note on ``meta["bad_rows"]`` (``{lang: {"blank_segment_kept": n, "no_text_dropped": m}}``, from the
    task loaders): the languages whose data had rows kept with a blank segment or dropped without text."""
    bad = results.meta.get("bad_rows")
    if not isinstance(bad, Mapping):
        return []
    parts = []
    for lang, counts in sorted(bad.items()):
        kept, dropped = (int((counts or {}).get(k) or 0) for k in ("blank_segment_kept", "no_text_dropped"))
        if kept or dropped:
            parts.append(f"{lang}: {kept} kept with a blank segment, {dropped} dropped without text")
    if not parts:
        return []
    return [f"bad rows in the data (bad_rows in {RESULTS_JSON}; a row with one blank segment of a pair is scored "
            f"with that segment empty, a row with no text is not scored and not counted in n): {'; '.join(parts)}"]


def format_summary_lines(results: EvalResults) -> list[str]:
    """One line per system, e.g. ``mtllm  avg 0.612 over 60 langs (non-English 0.598)``."""
    if not results.systems:
        return [f"{results.task}: no system evaluated"]
    width = max(len(s) for s in results.systems)
    avg, avg_ne = results.averages(), results.averages_non_english()
    lines = []
    for s, scores in results.systems.items():
        if avg[s] is None:
            lines.append(f"{s:<{width}}  no languages evaluated")
            continue
        line = f"{s:<{width}}  avg {avg[s]:.3f} over {len(scores)} langs"
        if results.train_lang is not None and results.train_lang in scores and avg_ne[s] is not None:
            line += f" ({_train_lang_words(results.train_lang)} {avg_ne[s]:.3f})"
        lines.append(line)
    flagged = results.single_class()
    if flagged:
        lines.append(f"{SINGLE_CLASS_MARK} one class only in the examples of {', '.join(sorted(flagged))}: their "
                     "scores "
                     f"are flagged in {RESULTS_MD}")
    return lines


# ---------------------------------------------------------------------- plot
#: Inches per language on the x axis, the axes' minimum and maximum width, the legend's width (right of the
#: axes), the figure's height and its resolution.
INCH_PER_LANG, MIN_AXES_WIDTH, MAX_AXES_WIDTH, LEGEND_WIDTH, HEIGHT, DPI = 0.16, 6.0, 60.0, 3.0, 5.0, 100
_LEFT = 0.75


def plot_figure_size(n_langs: int) -> tuple[float, float]:
    """Figure size in inches for ``n_langs`` languages: wide enough that the labels do not overlap
    (:data:`INCH_PER_LANG` each), plus room for the legend."""
    axes = min(MAX_AXES_WIDTH, max(MIN_AXES_WIDTH, INCH_PER_LANG * n_langs))
    return _LEFT + axes + LEGEND_WIDTH, HEIGHT


def sort_languages(results: EvalResults, sort_by: str | Callable[[str], Any] | None = None) -> list[str]:
    """The plot's language order: by ``sort_by`` system's score, best first (default: the first system;
    languages it lacks go last, by the other systems' mean), ``"lang"`` (alphabetical) or a key function."""
    langs = results.languages
    if callable(sort_by):
        return sorted(langs, key=sort_by)
    if sort_by in ("lang", "language", "name"):
        return langs
    system = sort_by if sort_by is not None else next(iter(results.systems), None)
    if system is None:
        return langs
    if system not in results.systems:
        raise ValueError(f"sort_by={system!r} is not a system ({list(results.systems)}), 'lang' or a key function")
    scores = results.systems[system]
    # best first; languages that system lacks go last, by the mean of the other systems
    others = {lang: _mean([sc[lang] for sc in results.systems.values() if lang in sc]) or 0.0 for lang in langs}
    return sorted(langs, key=lambda lang: (lang not in scores, -scores.get(lang, others[lang]), lang))


def plot_results(results: EvalResults, path: str | Path, *, sort_by: str | Callable[[str], Any] | None = None,
                 chance: float | None = None, chance_label: str | None = None, title: str | None = None) -> Path:
    """Save a PNG of each system's score per language (see the module docstring): one marker per system
    and language, a line through the markers of the system the languages are sorted by. ``sort_by``: a
    system (default: the first), ``"lang"`` (alphabetical) or a key function of the language code.
    ``chance``: the dashed line's level (default: :meth:`EvalResults.chance_level`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # slow: matplotlib (~0.5 s), only for a plot
    from matplotlib.figure import Figure  # slow: as above
    from matplotlib.lines import Line2D  # slow: as above

    path = Path(path)
    langs = sort_languages(results, sort_by)
    width, height = plot_figure_size(len(langs))
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x_of = {lang: i for i, lang in enumerate(langs)}
    markers = "osD^vP*Xhp<>"
    averages = results.averages()
    line_system = sort_by if isinstance(sort_by, str) and sort_by in results.systems else next(
        iter(results.systems), None)
    for j, (system, scores) in enumerate(results.systems.items()):
        xs = [x_of[lang] for lang in langs if lang in scores]
        ys = [100 * scores[lang] for lang in langs if lang in scores]
        label = system if averages[system] is None else f"{system} (avg {100 * averages[system]:.1f}%, {len(xs)} langs)"
        ax.plot(xs, ys, marker=markers[j % len(markers)], markersize=4 if len(langs) > 60 else 5, alpha=0.85,
                linewidth=0.8, linestyle="-" if system == line_system else "none", label=label)
    if chance is None and results.chance_level() is not None:
        chance, default_label = results.chance_level()
        chance_label = chance_label or default_label
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1.0,
                   label=f"{chance_label or 'chance'} ({100 * chance:.1f}%)")
    ax.set_xticks(range(len(langs)))
    fontsize = 8 if len(langs) <= 80 else 7 if len(langs) <= 150 else 6
    ax.set_xticklabels(langs, rotation=90, fontsize=fontsize)
    ax.set_xlim(-0.7, max(len(langs), 1) - 0.3)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{results.metric} (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{results.task}: {results.metric} by language ({len(langs)} languages, "
                          f"trained on {results.train_lang})", loc="left")
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        handles, labels = [Line2D([], [], linestyle="none")], ["no system evaluated"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    label_inches = 0.35 + 0.011 * fontsize * max((len(lang) for lang in langs), default=4)
    fig.subplots_adjust(left=_LEFT / width, right=1 - (LEGEND_WIDTH - 0.1) / width, top=1 - 0.45 / height,
                        bottom=min(0.5, label_inches / height))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# ---------------------------------------------------------------------- files
def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist") and callable(obj.tolist):      # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"results meta holds {type(obj).__name__} ({obj!r}), which JSON cannot store")


def write_results(results: EvalResults, out_dir: str | Path, *, plot: bool = True,
                  sort_by: str | Callable[[str], Any] | None = None, chance: float | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (``plot=True``) ``results.png`` into ``out_dir``
    (created if needed; each file replaced atomically). Returns ``{"json": .., "markdown": .., "plot": ..}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(results.to_dict(), indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError as e:     # NaN or infinity in meta
        raise ValueError(f"results meta cannot be written as JSON: {e}") from None
    paths = {"json": out_dir / RESULTS_JSON, "markdown": out_dir / RESULTS_MD}
    atomic_write_text(paths["json"], text + "\n")
    atomic_write_text(paths["markdown"], render_markdown(results))
    if plot:
        paths["plot"] = plot_results(results, out_dir / RESULTS_PNG, sort_by=sort_by, chance=chance)
    return paths


def read_results(path: str | Path) -> EvalResults:
    """Read ``results.json`` (give the file or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return EvalResults.from_dict(data)
