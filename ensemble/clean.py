"""Turn a raw model output into a short answer, and snap it onto the context span it came from.

``clean_answer`` only removes packaging a small model wraps around an answer (role prefixes, quotes, a
trailing explanation, trailing punctuation); it never rewrites the answer itself. ``ground`` finds the span of
the context the answer was copied from, so that spelling and spacing variants of one span vote as one text and
the service returns text that is literally in the article. Neither function knows about voting or models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

# Chat-template tokens leak into the text when a generator decodes without skip_special_tokens; treat them as
# line breaks so whatever follows one is cut like any other trailing text.
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]*\|>")

# Short cue words only count with a colon: "답" or "A" alone also start real answers ("답십리", "Apple").
_PREFIX = re.compile(
    r"""^(?:
        (?:final\s+answer|answer|정답|답변|대답|응답|답|a)\s*[:：]
      | (?:assistant|model)(?:\s*[:：]|[ \t]*(?:\r?\n|$))
      | (?:the\s+answer\s+is|answer\s+is|정답은|답변은|답은)\s
      | [-*•]\s
    )\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_TRAILING = ".,!?。;:…、，．！？；：" + " \t\r\n\u3000"
# A polite copula turns a span into a sentence ("베토벤입니다"); extractive spans never end with it.
_COPULA = re.compile(r"(?<=\S)\s*입니다$")
_PAIRS: tuple[tuple[str, str], ...] = (
    ("**", "**"),
    ('"', '"'),
    ("'", "'"),
    ("`", "`"),
    ("“", "”"),
    ("‘", "’"),
    ("「", "」"),
    ("『", "』"),
    ("《", "》"),
    ("〈", "〉"),
    ("<", ">"),
    ("«", "»"),
)
_DIGITS = re.compile(r"\d+")
_LINE_BREAK = re.compile(r"[\r\n\u2028\u2029]")


def clean_answer(raw: str) -> str:
    """The answer inside one raw generation: first line, no prefix, no wrapping quotes, no trailing stops.

    Inner punctuation is kept ("3.5%", "1989년 2월", "U.S. Steel"); only the packaging around it goes.
    """
    # U+FFFD marks bytes that did not decode: a multi-byte character cut by the token budget, or byte-level
    # tokens that never formed one. They are never part of a context span, so they only spoil matching.
    text = _SPECIAL_TOKEN.sub("\n", raw).replace("\ufffd", "")
    previous = None
    while text != previous:
        previous = text
        text = _strip_prefixes(text)
        text = _LINE_BREAK.split(text, maxsplit=1)[0]
        text = _unwrap(text.strip()).rstrip(_TRAILING)
        text = _COPULA.sub("", text)
    return text


def _strip_prefixes(text: str) -> str:
    # All of them before the line cut: in "assistant\n답변:\n베토벤" the answer is on the third line.
    text = text.strip()
    while (peeled := _PREFIX.sub("", text, count=1).strip()) != text:
        text = peeled
    return text


def _unwrap(text: str) -> str:
    for opener, closer in _PAIRS:
        if len(text) >= len(opener) + len(closer) and text.startswith(opener) and text.endswith(closer):
            return text[len(opener) : -len(closer)]
    # A quote the model opened but never closed (or the reverse), usually because generation stopped early.
    for opener, closer in _PAIRS:
        if text.startswith(opener) and _unbalanced(text, opener, closer):
            return text[len(opener) :]
        if text.endswith(closer) and _unbalanced(text, opener, closer):
            return text[: -len(closer)]
    return text


def _unbalanced(text: str, opener: str, closer: str) -> bool:
    if opener == closer:
        return text.count(opener) % 2 == 1
    return text.count(opener) != text.count(closer)


@dataclass(frozen=True)
class Grounding:
    """The context span an answer was copied from: ``context[start:end] == text``."""

    text: str
    start: int
    end: int
    score: float
    """0-100 Levenshtein similarity; 100 when the answer occurs in the context up to case and spacing."""


DEFAULT_MIN_SCORE = 80.0
"""Levenshtein similarity (0-100, spaces ignored) an answer needs with its context span to count as grounded.

Answers are short (median 5 characters). One inserted, dropped or changed character in a 5-character answer
scores 80 and in a longer one more, so a slip in the model's copy still grounds; a 3- or 4-character answer
must match exactly (one edit there scores 67-75, and is as likely another word), and a paraphrase or a
hallucination stays well below. Levenshtein rather than Indel: Indel scores a truncation ("베토" for "베토밴",
80) above the right span with one changed character ("베토벤", 67), which would cut answers short.
"""

_NEIGHBOURHOOD = 2
"""How far (characters) each end of rapidfuzz's fixed-width alignment may move to fit the answer's length."""


def ground(answer: str, context: str, *, min_score: float = DEFAULT_MIN_SCORE) -> Grounding | None:
    """The context span that ``answer`` best matches, or None when nothing scores ``min_score``.

    Tried in order: a verbatim occurrence; an occurrence up to case and spacing ("120 개" finds "120개");
    the best fuzzy alignment, refined so the span keeps the answer's length (so it does not swallow a
    following particle). A span never cuts through a number or a Latin word ("120" inside "1200" becomes
    "1200", which then fails the digit check below). Hangul runs are not extended: Korean particles attach
    to the word, and a span ending mid-run is usually the word without its particle, which is what we want.
    """
    if not answer.strip() or not context:
        return None
    folded_answer, folded_context = _fold(answer), _fold(context)
    spans = [(m.start(), m.end()) for m in _spacing_insensitive(answer).finditer(context)]
    if spans:
        clean = [span for span in spans if _snap(context, *span) == span]
        start, end = clean[0] if clean else _snap(context, *spans[0])
    elif len(answer) <= len(context) and (
        alignment := fuzz.partial_ratio_alignment(folded_answer, folded_context)
    ):
        start, end = _refine(folded_answer, folded_context, alignment.dest_start, alignment.dest_end)
        start, end = _snap(context, *_trim(context, start, end))
    else:
        return None
    if start >= end or _DIGITS.findall(answer) != _DIGITS.findall(context[start:end]):
        # A different number is a different answer however close the strings are ("1988년" vs "1989년").
        return None
    score = _similarity(_squash(folded_answer), _squash(folded_context[start:end]))
    if score < min_score:
        return None
    return Grounding(text=context[start:end], start=start, end=end, score=score)


def _fold(text: str) -> str:
    # Lower-case without changing length (e.g. "İ".lower() has two characters), so offsets stay valid.
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)


def _squash(text: str) -> str:
    return "".join(text.split())


def _spacing_insensitive(answer: str) -> re.Pattern[str]:
    return re.compile(r"\s*".join(re.escape(char) for char in _squash(answer)), re.IGNORECASE)


def _similarity(a: str, b: str) -> float:
    return 100.0 * Levenshtein.normalized_similarity(a, b)


def _refine(answer: str, context: str, start: int, end: int) -> tuple[int, int]:
    best = (_similarity(answer, context[start:end]), start, end)
    for new_start in range(max(0, start - _NEIGHBOURHOOD), start + _NEIGHBOURHOOD + 1):
        for new_end in range(
            max(new_start + 1, end - _NEIGHBOURHOOD), min(len(context), end + _NEIGHBOURHOOD) + 1
        ):
            score = _similarity(answer, context[new_start:new_end])
            # Strictly better only: on ties the earlier, shorter span found first is kept.
            if score > best[0]:
                best = (score, new_start, new_end)
    return best[1], best[2]


def _trim(context: str, start: int, end: int) -> tuple[int, int]:
    while start < end and (context[start].isspace() or context[start] in _TRAILING):
        start += 1
    while end > start and (context[end - 1].isspace() or context[end - 1] in _TRAILING):
        end -= 1
    return start, end


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _snap(context: str, start: int, end: int) -> tuple[int, int]:
    while 0 < start < len(context) and _is_word_char(context[start - 1]) and _is_word_char(context[start]):
        start -= 1
    while 0 < end < len(context) and _is_word_char(context[end - 1]) and _is_word_char(context[end]):
        end += 1
    return start, end
