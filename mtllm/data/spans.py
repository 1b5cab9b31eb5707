"""Aligning two tokenisations of the same text into shared units (words), for the stage-1 span objective.

The teacher LLM and the student's encoder tokenise the same text differently, but both fast tokenizers
report each token's character offsets. :func:`align_units` cuts the text into *units* such that every
token (of either tokenizer) lies inside one unit, so a unit's tokens on each side cover the same
characters, and the mean of the teacher's states over its tokens can be a target for the mean of the
student's states over its own.

How the text is cut:

1. **Atoms.** A run of letters, marks and digits is one atom (a word); each punctuation mark or symbol
   is an atom of its own; whitespace separates atoms and belongs to none. Scripts written without
   spaces between words (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar, Tibetan) have no word
   boundary to find, so each of their characters is an atom: the fallback to character-aligned chunks.
2. **Merging.** A token's *core* is its character span with surrounding whitespace stripped
   (SentencePiece tokens often carry the space before a word). Atoms touched by the same token's core,
   on either side, are merged. The result is the finest segmentation at word (or, without spaces,
   character) granularity that both tokenisations respect: in English mostly single words; in Chinese
   or Thai the chunks that both tokenizers agree on.
3. **Keeping.** A unit is kept only if both sides have at least one token in it (a unit cut off by
   truncation on one side is dropped). Tokens with no core (special tokens, padding, whitespace) and
   tokens in dropped units get ``-1``.

Everything here is pure Python on offsets; nothing loads a model.
"""
from __future__ import annotations

import bisect
import unicodedata
from typing import Sequence

__all__ = ["NO_SPACE_RANGES", "atoms", "align_units"]

#: Code point ranges of scripts written without spaces between words: each character is an atom.
NO_SPACE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan (syllables separated by tsheg, not by spaces)
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x2FFFF),  # CJK extensions B-F
)


def _no_space(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in NO_SPACE_RANGES)


def _kind(ch: str) -> str:
    """``space``, ``single`` (an atom by itself) or ``word`` (joins its neighbours of the same kind)."""
    if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
        return "space"
    cat = unicodedata.category(ch)
    if cat[0] in "PS" or _no_space(ch):
        return "single"
    return "word"  # letters, marks (vowel signs, viramas), digits


def atoms(text: str) -> list[tuple[int, int]]:
    """The atoms of ``text`` as character spans ``[start, end)``, in order (see the module docstring)."""
    out: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(text):
        kind = _kind(ch)
        if kind == "word":
            if start is None:
                start = i
            continue
        if start is not None:
            out.append((start, i))
            start = None
        if kind == "single":
            out.append((i, i + 1))
    if start is not None:
        out.append((start, len(text)))
    return out


def _core(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span ``[start, end)`` clipped to the text, with whitespace stripped; ``None`` if nothing is left."""
    start, end = max(start, 0), min(end, len(text))
    while start < end and _kind(text[start]) == "space":
        start += 1
    while end > start and _kind(text[end - 1]) == "space":
        end -= 1
    return (start, end) if start < end else None


def _touched(atom_starts: list[int], atom_ends: list[int], core: tuple[int, int]) -> tuple[int, int] | None:
    """First and last atom that the character span ``core`` overlaps, or ``None``."""
    first = bisect.bisect_right(atom_ends, core[0])  # first atom ending after the span starts
    last = bisect.bisect_left(atom_starts, core[1]) - 1  # last atom starting before the span ends
    return (first, last) if first <= last else None


def align_units(text: str, offsets_a: Sequence[tuple[int, int]], offsets_b: Sequence[tuple[int, int]],
                *, shift_a: int = 0, shift_b: int = 0) -> tuple[list[int], list[int], int]:
    """Unit index of every token of two tokenisations of ``text``, and the number of units.

    ``offsets_a``/``offsets_b``: each token's character span ``(start, end)`` as a fast tokenizer's
    ``offset_mapping`` gives it (special tokens ``(0, 0)``); ``shift_a``/``shift_b`` are subtracted first
    (e.g. the length of a prefix such as e5's ``"query: "`` that the tokenizer saw before ``text``).
    Returns ``(units_a, units_b, n_units)``: per token a unit in ``0..n_units-1`` or ``-1``; units are
    numbered in text order and every unit has at least one token on each side."""
    spans = atoms(text)
    starts = [s for s, _ in spans]
    ends = [e for _, e in spans]
    join = [False] * max(len(spans) - 1, 0)  # join[k]: atoms k and k+1 are in one unit
    touched: list[list[tuple[int, int] | None]] = []
    for offsets, shift in ((offsets_a, shift_a), (offsets_b, shift_b)):
        side = []
        for s, e in offsets:
            core = _core(text, s - shift, e - shift) if e > s else None
            hit = _touched(starts, ends, core) if core is not None else None
            if hit is not None:
                for k in range(hit[0], hit[1]):
                    join[k] = True
            side.append(hit)
        touched.append(side)
    unit_of_atom: list[int] = []
    unit = 0
    for k in range(len(spans)):
        unit_of_atom.append(unit)
        if k < len(join) and not join[k]:
            unit += 1
    raw = [[unit_of_atom[h[0]] if h is not None else -1 for h in side] for side in touched]
    # keep the units present on both sides, renumbered in text order
    both = sorted(set(raw[0]) & set(raw[1]) - {-1})
    renumber = {u: i for i, u in enumerate(both)}
    units_a = [renumber.get(u, -1) for u in raw[0]]
    units_b = [renumber.get(u, -1) for u in raw[1]]
    return units_a, units_b, len(both)
