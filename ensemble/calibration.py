"""Confidence calibration: Platt scaling of a raw vote score, and how well a confidence is calibrated.

A calibrated confidence is the probability that the answer is right, "right" being an exact match under the
project's metric (``ensemble.metric``). ``fit_platt`` fits ``sigmoid(a * raw + b)`` to (raw score, correct)
pairs from held-out data; ``reliability`` and ``expected_calibration_error`` measure how far a confidence is
from the accuracy it claims; ``abstains`` is the one rule for withholding an answer below a minimum
confidence (the service, ``ensemble.batch`` and the report's coverage table all use it).

Numbers in, numbers out: this module does not score answers, run a vote or read files, and imports only numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def abstains(confidence: float, min_confidence: float | None) -> bool:
    """Is the answer withheld? Only strictly below ``min_confidence``; None never abstains."""
    return min_confidence is not None and confidence < min_confidence


@dataclass(frozen=True)
class Platt:
    """A fitted Platt scaling: ``confidence = sigmoid(a * raw + b)``."""

    a: float
    """Slope on the raw score (> 0 when a higher raw score means more likely right)."""
    b: float
    """Intercept."""

    def __call__(self, raw: float) -> float:
        z = self.a * float(raw) + self.b
        # Two branches so a large |z| never overflows exp.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_dict(self) -> dict[str, float]:
        return {"a": float(self.a), "b": float(self.b)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Platt:
        """The inverse of ``to_dict``; a ValueError names the missing or non-numeric key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"Platt calibration must be a mapping with keys 'a' and 'b'; got {data!r}")
        values: dict[str, float] = {}
        for key in ("a", "b"):
            if key not in data:
                raise ValueError(f"Platt calibration: missing key {key!r}")
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"Platt calibration: key {key!r} must be a finite number; got {value!r}")
            values[key] = float(value)
        return cls(a=values["a"], b=values["b"])


def _as_arrays(scores: Sequence[float], correct: Sequence[bool], what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=bool).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"{what} and correct differ in length: {x.size} vs {y.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} must be finite numbers")
    return x, y.astype(np.float64)


def fit_platt(raw: Sequence[float], correct: Sequence[bool], l2: float = 1e-3, max_iter: int = 100) -> Platt:
    """Logistic regression of ``correct`` on ``raw`` by Newton's method (IRLS).

    Targets are Platt's smoothed ones ((N+ + 1) / (N+ + 2) for a right answer, 1 / (N- + 2) for a wrong one),
    so the fit stays finite when the data are separable (every right answer scoring above every wrong one) or
    all one class; a small L2 penalty on the slope (``l2``; the intercept is not penalised) keeps it defined
    when every raw score is the same.
    """
    x, y = _as_arrays(raw, correct, "raw")
    n = x.size
    if n == 0:
        raise ValueError("fit_platt needs at least one (raw, correct) pair")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0; got {l2!r}")
    design = np.column_stack([x, np.ones(n)])
    # Platt's smoothed targets: the intercept of an all-right (or all-wrong) set stays finite too.
    positives = float(y.sum())
    negatives = n - positives
    targets = np.where(y > 0, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
    penalty = np.diag([l2, 0.0])
    w = np.array([0.0, math.log((positives + 1.0) / (negatives + 1.0))])
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -500.0, 500.0)))
        gradient = design.T @ (p - targets) + penalty @ w
        hessian = design.T @ (design * (p * (1.0 - p))[:, None]) + penalty
        # A tiny ridge keeps the solve defined when every p has saturated.
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        w = w - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return Platt(a=float(w[0]), b=float(w[1]))


@dataclass(frozen=True)
class Bin:
    """One bin of a reliability diagram."""

    lower: float
    upper: float
    count: int
    """Confidences in [lower, upper) (the last bin includes 1.0)."""
    mean_confidence: float
    """Mean confidence of the bin's answers (0.0 for an empty bin)."""
    accuracy: float
    """Share of the bin's answers that are right (0.0 for an empty bin)."""


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[Bin]:
    """Equal-width bins on [0, 1], every bin listed (empty ones with count 0); 1.0 falls in the last."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1; got {bins!r}")
    conf, right = _as_arrays(confidences, correct, "confidences")
    if conf.size and (conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidences must be in [0, 1]")
    index = np.minimum((conf * bins).astype(np.int64), bins - 1)
    out = []
    for k in range(bins):
        mask = index == k
        count = int(mask.sum())
        out.append(Bin(
            lower=k / bins,
            upper=(k + 1) / bins,
            count=count,
            mean_confidence=float(conf[mask].mean()) if count else 0.0,
            accuracy=float(right[mask].mean()) if count else 0.0,
        ))
    return out


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """Sum over bins of count / n x |accuracy - mean confidence|; 0.0 for no data."""
    table = reliability(confidences, correct, bins)
    n = sum(b.count for b in table)
    if n == 0:
        return 0.0
    return float(sum(b.count / n * abs(b.accuracy - b.mean_confidence) for b in table))


@dataclass(frozen=True)
class Coverage:
    """What abstaining below one ``min_confidence`` would give."""

    min_confidence: float
    answered: int
    """Answers kept (confidence >= min_confidence)."""
    coverage: float
    """answered / all, 0..1 (0.0 for no data)."""
    accuracy: float | None
    """Share of the kept answers that are right; None when none is kept."""


def coverage_at(
    confidences: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float]
) -> list[Coverage]:
    """Per threshold, how many answers ``abstains`` keeps and how often those are right."""
    conf, right = _as_arrays(confidences, correct, "confidences")
    out = []
    for threshold in thresholds:
        kept = np.array([not abstains(c, threshold) for c in conf.tolist()], dtype=bool)
        answered = int(kept.sum())
        out.append(Coverage(
            min_confidence=float(threshold),
            answered=answered,
            coverage=answered / conf.size if conf.size else 0.0,
            accuracy=float(right[kept].mean()) if answered else None,
        ))
    return out
