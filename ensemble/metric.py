"""Answer scoring: the official KorQuAD 1.0 metric (the project's metric) and the official SQuAD v1.1 metric.

Both are reproduced exactly as their official evaluation scripts compute them, quirks included (KorQuAD keeps
curly double quotes and "·"; its F1 counts characters, not words), so the numbers here are comparable with
published ones. The definitions are in shared/data/README.md.

This module only compares strings. It does not read files (see `ensemble.datasets`), does not clean model
output (see `ensemble.clean`) and never imports torch.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Metric = Literal["korquad", "squad"]

_PUNCTUATION = frozenset(string.punctuation)
# Exactly the characters the official KorQuAD script turns into spaces. Curly double quotes are not among
# them, which is why "“임수경”" vs "임수경" scores only 0.75; adding them would make our numbers
# incomparable with the leaderboard's.
_KORQUAD_TO_SPACE = str.maketrans({ch: " " for ch in "'\"《》<>〈〉()‘’"})
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class ScoringError(ValueError):
    """Gold answers that cannot be scored: no questions, a question without gold answers, unknown metric."""


@dataclass(frozen=True)
class Scores:
    """Corpus-level scores, each 100 x the mean over all gold questions."""

    exact_match: float
    """Percentage of questions whose prediction equals a gold answer after normalisation."""
    f1: float
    """Mean of the per-question best F1 over the gold answers, as a percentage."""
    count: int
    """Gold questions scored: the denominator. Predictions for ids not in the gold set are ignored."""
    missing: int
    """Gold questions without a prediction; each scored 0 and still counted."""


def normalize_korquad(s: str) -> str:
    """Official KorQuAD 1.0 normalisation: quotes/brackets to spaces, lower, drop ASCII punctuation."""
    s = s.translate(_KORQUAD_TO_SPACE).lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    return " ".join(s.split())


def exact_match_korquad(pred: str, gold: str) -> bool:
    return normalize_korquad(pred) == normalize_korquad(gold)


def f1_korquad(pred: str, gold: str) -> float:
    """Character-level F1; spaces are dropped so "1989년2월" and "1989년 2월" match fully."""
    return _f1(list(normalize_korquad(pred).replace(" ", "")), list(normalize_korquad(gold).replace(" ", "")))


def normalize_squad(s: str) -> str:
    """Official SQuAD v1.1 normalisation: lower, drop ASCII punctuation and articles, collapse spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match_squad(pred: str, gold: str) -> bool:
    return normalize_squad(pred) == normalize_squad(gold)


def f1_squad(pred: str, gold: str) -> float:
    """Word-level F1 over whitespace tokens of the normalised strings."""
    return _f1(normalize_squad(pred).split(), normalize_squad(gold).split())


def _f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


_METRICS: dict[str, tuple[Callable[[str, str], bool], Callable[[str, str], float]]] = {
    "korquad": (exact_match_korquad, f1_korquad),
    "squad": (exact_match_squad, f1_squad),
}


def per_question(
    gold: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    *,
    metric: Metric = "korquad",
) -> dict[str, tuple[bool, float]]:
    """(exact match, F1 in [0, 1]) per gold id, each the best over that question's gold answers.

    A question without a prediction scores (False, 0.0). Raises ScoringError for an unknown metric or a
    question with no gold answers (the official scripts would crash on it; a silent 0 would hide a data bug).
    """
    if metric not in _METRICS:
        raise ScoringError(f"unknown metric {metric!r}; expected one of {sorted(_METRICS)}")
    exact_match, f1 = _METRICS[metric]
    scores: dict[str, tuple[bool, float]] = {}
    for qid, answers in gold.items():
        # A bare string is a Sequence[str] too; iterating its characters would score silently wrong.
        if isinstance(answers, str) or not answers:
            raise ScoringError(f"question {qid!r}: gold answers must be a non-empty list of strings")
        if qid not in predictions:
            scores[qid] = (False, 0.0)
            continue
        pred = predictions[qid]
        scores[qid] = (
            any(exact_match(pred, answer) for answer in answers),
            max(f1(pred, answer) for answer in answers),
        )
    return scores


def score_predictions(
    gold: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    *,
    metric: Metric = "korquad",
) -> Scores:
    """EM and F1 as 100 x the mean over ALL gold questions (official scripts' definition)."""
    scores = per_question(gold, predictions, metric=metric)
    if not scores:
        raise ScoringError("no gold questions to score")
    count = len(scores)
    return Scores(
        exact_match=100.0 * sum(em for em, _ in scores.values()) / count,
        f1=100.0 * sum(f1 for _, f1 in scores.values()) / count,
        count=count,
        missing=sum(1 for qid in gold if qid not in predictions),
    )
