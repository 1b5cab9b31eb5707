"""Multiple choice (Belebele-style): lay out passage, question and options in ONE sequence and find the
token span of every option, so that the model can score each option from the mean of its own tokens
(:func:`mtllm.modeling.pooling.span_mean_pool`; ``MTLLMModel.forward(..., option_spans=spans_NK2)``).

The default layout (:data:`DEFAULT_TEMPLATE`) is::

    {passage} {question}
    1 {option 1}
    2 {option 2}
    3 {option 3}
    4 {option 4}

i.e. ``passage + " " + question`` followed, for every option, by ``"\\n" + number + " " + option``; no
trailing newline. The span of an option is the option's own text only, never its ``"\\n1 "`` marker.

Three steps, all pure functions:

1. :func:`format_multiple_choice` -> the text and each option's CHARACTER span ``[start, end)``;
2. tokenise the text with a fast tokenizer and ``return_offsets_mapping=True`` (or
   ``MTLLMModel.tokenize(..., return_offsets=True)``, whose offsets carry ``(0, 0)`` for a prepended
   ``<bos>``);
3. :func:`char_to_token_spans` (one sequence) or :func:`option_token_spans` (a batch, returns the
   ``(N, K, 2)`` ``LongTensor`` the model takes) -> each option's TOKEN span ``[start, end)``.

The token span of an option holds every token whose character range overlaps the option's character
span. This needs nothing tokenizer-specific, so it works for any fast tokenizer and any script:
special tokens (offsets ``(0, 0)``) and other zero-width tokens never overlap anything; a SentencePiece
``"▁word"`` token whose offsets include the space before the option still overlaps the option; byte-level
BPE tokens that share one character (several tokens for one emoji or CJK character, all with that
character's offsets) are all included; overlapping offsets are fine. With the default template two
options' spans can only share a token if the tokenizer merges a whole ``"\\n2 "`` marker with the text
on both sides, which no whitespace-splitting tokenizer (BPE, SentencePiece, WordPiece) does.

Truncation: an option cut off entirely has no token; :func:`char_to_token_spans` then raises
:class:`OptionTruncatedError` (or, with ``allow_truncated=True``, returns the empty span
``(n, n)``, which ``span_mean_pool`` pools to zeros). An option cut part-way keeps the tokens that
survive; check ``n_truncated`` from ``MTLLMModel.tokenize`` (or the tokenizer's ``overflowing_tokens``)
to know whether anything was cut.

Encoder prefixes: when the tokenised text is ``prefix + text`` (e.g. an E5 encoder's ``"query: "``,
added inside ``MTLLMModel.tokenize``), pass ``char_offset=len(prefix)``.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = [
    "MultipleChoiceTemplate", "DEFAULT_TEMPLATE", "OptionTruncatedError", "format_multiple_choice",
    "char_to_token_spans", "option_token_spans",
]


class OptionTruncatedError(ValueError):
    """An answer option has no token left in the tokenised sequence (truncation cut it off)."""

    def __init__(self, option_index: int, message: str, *, row: int | None = None):
        super().__init__(message)
        self.option_index = option_index
        self.row = row


@dataclass(frozen=True)
class MultipleChoiceTemplate:
    """How passage, question and options are laid out in one text.

    ``stem`` is formatted with ``passage`` and ``question``; ``option`` once per option with
    ``option`` (the answer text), ``number`` (1, 2, ...) and ``letter`` (A, B, ...), and the pieces are
    concatenated. ``option`` must contain ``{option}`` exactly once.
    """

    stem: str = "{passage} {question}"
    option: str = "\n{number} {option}"

    def __post_init__(self):
        fields = [f for _, f, _, _ in string.Formatter().parse(self.option) if f is not None]
        if fields.count("option") != 1:
            raise ValueError(f"the option template must contain '{{option}}' exactly once, got {self.option!r}")
        unknown = set(fields) - {"option", "number", "letter"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)} in the option template {self.option!r}: "
                             "use {option}, {number} and {letter}")
        stem_fields = {f for _, f, _, _ in string.Formatter().parse(self.stem) if f is not None}
        if stem_fields - {"passage", "question"}:
            raise ValueError(f"unknown fields {sorted(stem_fields - {'passage', 'question'})} in the stem template "
                             f"{self.stem!r}: use {{passage}} and {{question}}")


#: ``"{passage} {question}\n1 {a1}\n2 {a2}\n3 {a3}\n4 {a4}"``.
DEFAULT_TEMPLATE = MultipleChoiceTemplate()

_OPTION_MARK = "\x00mtllm-option\x00"


def _letter(i: int) -> str:
    letters = string.ascii_uppercase
    return letters[i] if i < len(letters) else _letter(i // len(letters) - 1) + letters[i % len(letters)]


def format_multiple_choice(passage: str, question: str, options: Sequence[str], *,
                           template: MultipleChoiceTemplate = DEFAULT_TEMPLATE) -> tuple[str, list[tuple[int, int]]]:
    """Lay out ``passage``, ``question`` and ``options`` in one text (see :data:`DEFAULT_TEMPLATE`).

    Passage, question and options are stripped of surrounding whitespace first. Returns the text and
    each option's character span ``[start, end)``, so that ``text[start:end] == options[k].strip()``.
    Raises ``ValueError`` for no options or an empty (or whitespace-only) option.
    """
    if isinstance(options, str):
        raise TypeError("options must be a sequence of strings, not one string")
    options = list(options)
    if not options:
        raise ValueError("multiple choice needs at least one option, got none")
    for k, option in enumerate(options):
        if not isinstance(option, str):
            raise TypeError(f"option {k} is {type(option).__name__}, not str: {option!r}")
        if not option.strip():
            raise ValueError(f"option {k} (number {k + 1}) is empty or whitespace only ({option!r}): an empty answer "
                             "has no tokens to score; drop the example or give the option a text")
    text = template.stem.format(passage=str(passage).strip(), question=str(question).strip())
    spans = []
    for k, option in enumerate(options):
        piece = template.option.format(option=_OPTION_MARK, number=k + 1, letter=_letter(k))
        before, after = piece.split(_OPTION_MARK)
        start = len(text) + len(before)
        answer = option.strip()
        text = text + before + answer + after
        spans.append((start, start + len(answer)))
    return text, spans


def _as_pairs(x: Any) -> list[tuple[int, int]]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    pairs = []
    for pair in x:
        if len(pair) != 2:
            raise ValueError(f"expected (start, end) pairs, got {pair!r}")
        pairs.append((int(pair[0]), int(pair[1])))
    return pairs


def _check_char_spans(char_spans: list[tuple[int, int]]) -> None:
    for k, (s, e) in enumerate(char_spans):
        if s < 0 or e <= s:
            raise ValueError(f"option {k}: character span ({s}, {e}) is empty or negative; use the spans from "
                             "format_multiple_choice")


def _token_spans_NK2(offsets_NL2: torch.Tensor, valid_NL: torch.Tensor, chars_NK2: torch.Tensor) -> torch.Tensor:
    """The vectorised core: ``[first, last + 1)`` of the tokens whose character range overlaps each span;
    ``(n, n)`` (``n`` = valid length) where none does."""
    N, L = valid_NL.shape
    tok_start_N1L, tok_end_N1L = offsets_NL2[..., 0].unsqueeze(1), offsets_NL2[..., 1].unsqueeze(1)
    char_start_NK1, char_end_NK1 = chars_NK2[..., :1], chars_NK2[..., 1:]
    overlap_NKL = ((tok_start_N1L < char_end_NK1) & (tok_end_N1L > char_start_NK1)
                   & (tok_end_N1L > tok_start_N1L) & valid_NL.unsqueeze(1))
    positions_11L = torch.arange(L).view(1, 1, L)
    if L:
        first_NK = torch.where(overlap_NKL, positions_11L, L).amin(dim=-1)
        last_NK = torch.where(overlap_NKL, positions_11L, -1).amax(dim=-1)
    else:
        last_NK = torch.full(chars_NK2.shape[:2], -1, dtype=torch.long)
        first_NK = last_NK
    length_N1 = valid_NL.sum(dim=1, keepdim=True)
    found_NK = last_NK >= 0
    start_NK = torch.where(found_NK, first_NK, length_N1)
    end_NK = torch.where(found_NK, last_NK + 1, length_N1)
    return torch.stack([start_NK, end_NK], dim=-1)


def _truncation_message(k: int, row: int | None, n_tokens: int) -> str:
    where = f"row {row}, " if row is not None else ""
    return (f"{where}option {k} (number {k + 1}) has no token in the tokenised sequence ({n_tokens} tokens): "
            "truncation cut it off. Raise the maximum sequence length (e.g. max_seq_length / max_length), shorten "
            "the passage, or pass allow_truncated=True to score it from an empty span (zeros).")


def char_to_token_spans(offsets_L2: Sequence[tuple[int, int]], char_spans_K2: Sequence[tuple[int, int]], *,
                        n_tokens: int | None = None, char_offset: int = 0,
                        allow_truncated: bool = False) -> list[tuple[int, int]]:
    """Token span ``[start, end)`` of every option, from one sequence's ``offset_mapping``.

    ``offsets_L2``: ``(start, end)`` character offsets per token, as a fast tokenizer's
    ``offset_mapping`` (special tokens ``(0, 0)``); a list, array or tensor. ``n_tokens``: only the
    first ``n_tokens`` entries count (the rest is padding). ``char_spans_K2``: the options' character
    spans (:func:`format_multiple_choice`), shifted by ``char_offset`` (the length of a prefix that was
    put before the text when tokenising). An option's span holds every token whose character range
    overlaps it. An option without any token raises :class:`OptionTruncatedError`, or gets the empty
    span ``(n, n)`` with ``allow_truncated=True``.
    """
    offsets = _as_pairs(offsets_L2)
    if n_tokens is not None:
        if not 0 <= n_tokens <= len(offsets):
            raise ValueError(f"n_tokens={n_tokens} is outside [0, {len(offsets)}] (the number of offsets)")
        offsets = offsets[:n_tokens]
    chars = [(s + char_offset, e + char_offset) for s, e in _as_pairs(char_spans_K2)]
    _check_char_spans(chars)
    L = len(offsets)
    offsets_1L2 = torch.tensor(offsets, dtype=torch.long).view(1, L, 2)
    chars_1K2 = torch.tensor(chars, dtype=torch.long).view(1, len(chars), 2)
    spans_K2 = _token_spans_NK2(offsets_1L2, torch.ones(1, L, dtype=torch.bool), chars_1K2)[0]
    spans = [(int(s), int(e)) for s, e in spans_K2.tolist()]
    if not allow_truncated:
        for k, (s, e) in enumerate(spans):
            if e <= s:
                raise OptionTruncatedError(k, _truncation_message(k, None, L))
    return spans


def option_token_spans(tokenizer_output_offsets: Any, char_spans_NK2: Any, *,
                       attention_mask: Any = None, n_tokens: Sequence[int] | None = None,
                       char_offset: int | Sequence[int] = 0, allow_truncated: bool = False) -> torch.Tensor:
    """Token spans of the options of a batch: a ``LongTensor`` ``(N, K, 2)`` for ``option_spans``.

    ``tokenizer_output_offsets``: the batch's ``offset_mapping`` -- a list of N per-text lists (as
    ``MTLLMModel.tokenize(..., return_offsets=True)`` gives), an ``(N, L, 2)`` tensor/array, or a
    ``BatchEncoding``/dict holding ``offset_mapping`` (and then its ``attention_mask`` is used).
    ``char_spans_NK2``: per text, the K options' character spans (every text must have the same K).
    Padding is excluded by ``attention_mask`` ``(N, L)`` or ``n_tokens`` (per text); otherwise every
    offset counts (padding has ``(0, 0)`` and overlaps nothing anyway). ``char_offset``: one prefix length
    for all texts or one per text. Truncated options: see :func:`char_to_token_spans`.
    """
    if hasattr(tokenizer_output_offsets, "keys") and "offset_mapping" in tokenizer_output_offsets:
        if attention_mask is None and n_tokens is None and "attention_mask" in tokenizer_output_offsets:
            attention_mask = tokenizer_output_offsets["attention_mask"]
        tokenizer_output_offsets = tokenizer_output_offsets["offset_mapping"]
    if hasattr(tokenizer_output_offsets, "tolist"):
        tokenizer_output_offsets = tokenizer_output_offsets.tolist()
    rows = [_as_pairs(r) for r in tokenizer_output_offsets]
    chars = [_as_pairs(c) for c in (char_spans_NK2.tolist() if hasattr(char_spans_NK2, "tolist") else char_spans_NK2)]
    N = len(rows)
    if len(chars) != N:
        raise ValueError(f"{N} offset rows but {len(chars)} rows of option spans")
    if N == 0:
        return torch.zeros(0, 0, 2, dtype=torch.long)
    Ks = {len(c) for c in chars}
    if len(Ks) != 1:
        raise ValueError(f"every example needs the same number of options, got {sorted(Ks)}; pad or split the batch")
    shifts = [char_offset] * N if isinstance(char_offset, int) else [int(x) for x in char_offset]
    if len(shifts) != N:
        raise ValueError(f"char_offset has {len(shifts)} entries for {N} rows")
    chars = [[(s + d, e + d) for s, e in c] for c, d in zip(chars, shifts)]
    for c in chars:
        _check_char_spans(c)
    L = max(len(r) for r in rows)
    offsets_NL2 = torch.zeros(N, L, 2, dtype=torch.long)
    valid_NL = torch.zeros(N, L, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            offsets_NL2[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        valid_NL[i, :len(r)] = True
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).bool()
        if mask.dim() != 2 or mask.shape[0] != N or (mask.shape[1] > L and bool(mask[:, L:].any())):
            raise ValueError(f"attention_mask {tuple(mask.shape)} does not match the offsets ({N}, {L})")
        m = torch.zeros(N, L, dtype=torch.bool)
        m[:, :min(L, mask.shape[1])] = mask[:, :L]
        valid_NL &= m
    if n_tokens is not None:
        n = torch.as_tensor(list(n_tokens), dtype=torch.long).view(N, 1)
        valid_NL &= torch.arange(L).view(1, L) < n
    spans_NK2 = _token_spans_NK2(offsets_NL2, valid_NL, torch.tensor(chars, dtype=torch.long).view(N, -1, 2))
    if not allow_truncated:
        empty_NK = spans_NK2[..., 1] <= spans_NK2[..., 0]
        if bool(empty_NK.any()):
            i, k = (int(x) for x in empty_NK.nonzero()[0])
            raise OptionTruncatedError(k, _truncation_message(k, i, int(valid_NL[i].sum())), row=i)
    return spans_NK2
