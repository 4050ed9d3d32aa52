"""Fit the vote on saved candidates (`qa-eval fit-vote`) and re-vote a candidates file (`qa-eval revote`).

`fit_vote` takes the candidates of HELD-OUT TRAIN questions (`qa-eval run --ids .training/holdout_ids.json`),
grid-searches the count rule (rank_discount x ungrounded_weight) and then the likelihood rule (length_power x
temperature x combine x count_mix x mbr, over the chosen count weights) for the mean official KorQuAD F1 of
the answer against gold, keeps the better rule, fits Platt calibration of its raw confidence against exact
match and returns a `VoteFile` whose provenance records what it was fitted on and what every rule and
strategy scored there. Never fit on the eval split: a report.json beside the file that says `eval` is
refused. `revote` scores every strategy of a candidates file under a given config (the eval split's file
is what it is for) and the expected calibration error of the ensemble's confidence.

The likelihood grid does not call `vote` per question and grid point: each question's evidence is gathered
once (`ensemble.evidence.gather`), padded into one batch, and every grid point runs `posterior` / `choose`
on the whole batch: the same functions, so the same answers (the chosen config is re-scored through `vote`
itself for the provenance). Questions without likelihoods count with the count rule's answer, as `vote`
falls back. Pure Python and numpy, no model.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.calibration import expected_calibration_error, fit_platt, reliability
from ensemble.evidence import Combine, choose, gather, posterior, row_log_probs
from ensemble.metric import Scores, exact_match_korquad, f1_korquad, score_predictions
from ensemble.strategies import ENSEMBLE, strategy_answers
from ensemble.vote import VoteConfig, normalise, vote
from ensemble.vote_file import VoteFile, vote_config_to_dict
from evaluation.candidates import QuestionCandidates
from evaluation.selection import sha256_of


@dataclass(frozen=True)
class FitGrid:
    """The values tried; the first of each is preferred on equal F1."""

    rank_discount: tuple[float, ...] = (1.0, 0.0, 0.5, 2.0, 3.0)
    ungrounded_weight: tuple[float, ...] = (0.3, 0.1, 0.5, 1.0)
    length_power: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    temperature: tuple[float, ...] = (1.0, 0.25, 0.5, 2.0, 4.0, 8.0)
    combine: tuple[Combine, ...] = ("mixture", "product")
    count_mix: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    mbr: tuple[bool, ...] = (True, False)


@dataclass(frozen=True)
class RevoteResult:
    """Every strategy of a candidates file re-voted under one config."""

    scores: dict[str, Scores]
    """Strategy id -> EM/F1 over the questions with gold answers (``ensemble`` first)."""
    ece: float
    """Expected calibration error (10 bins) of the ensemble's confidence against KorQuAD exact match."""
    reliability: list[dict[str, float]]
    questions: int
    with_likelihoods: int
    """Questions whose candidates carry likelihoods (the others vote by count under any rule)."""


def gold_questions(questions: Sequence[QuestionCandidates]) -> list[QuestionCandidates]:
    """The questions that can be scored (with gold answers); a failed row stays in, with no candidates."""
    return [q for q in questions if q.answers]


def _answers(questions: Sequence[QuestionCandidates], config: VoteConfig) -> list[tuple[str, float]]:
    """(answer, raw confidence) per question under ``config`` (no calibration); ("", 0) without candidates."""
    raw = replace(config, calibration=None)
    out = []
    for q in questions:
        if q.candidates:
            result = vote(q.candidates, raw)
            out.append((result.answer, result.confidence))
        else:
            out.append(("", 0.0))
    return out


def _f1_each(questions: Sequence[QuestionCandidates], answers: Sequence[str]) -> np.ndarray:
    return np.array(
        [max(f1_korquad(a, g) for g in q.answers) for q, a in zip(questions, answers, strict=True)]
    )


@dataclass
class _Batch:
    """The likelihood questions' evidence, padded to (Q, R, G); per candidate (Q, N) for the count share."""

    index: np.ndarray
    logprob: np.ndarray
    tokens: np.ndarray
    row_weight: np.ndarray
    answers: np.ndarray
    grounded: np.ndarray
    utility: np.ndarray
    f1: np.ndarray
    """(Q, G) the answer's F1 against gold (best over the gold answers)."""
    member_of: np.ndarray
    """(Q, N, G) one-hot: candidate n is of answer g (all 0 for padding and empty texts)."""
    rank: np.ndarray
    cand_grounded: np.ndarray
    weight: np.ndarray
    """(Q, N) member weight (0 for padding)."""

    def share(self, config: VoteConfig) -> np.ndarray:
        """(Q, G) the count rule's effective weight per answer (``ensemble.vote.effective_weight``)."""
        rank_weight = 1.0 / (1.0 + config.rank_discount * np.maximum(self.rank, 0))
        grounding = np.where(self.cand_grounded, config.grounded_weight, config.ungrounded_weight)
        weights = self.weight * rank_weight * grounding
        return np.einsum("qn,qng->qg", weights, self.member_of)


def _batch(questions: Sequence[QuestionCandidates]) -> _Batch | None:
    found = []
    for k, q in enumerate(questions):
        keys = [normalise(c.text) for c in q.candidates]
        evidence = gather(q.candidates, keys) if q.candidates else None
        if evidence is not None:
            found.append((k, q, evidence))
    if not found:
        return None
    size_q = len(found)
    size_r = max(len(e.rows) for _, _, e in found)
    size_g = max(len(e.representative) for _, _, e in found)
    size_n = max(len(q.candidates) for _, q, _ in found)
    b = _Batch(
        index=np.array([k for k, _, _ in found]),
        logprob=np.zeros((size_q, size_r, size_g)),
        tokens=np.ones((size_q, size_r, size_g)),
        row_weight=np.zeros((size_q, size_r)),
        answers=np.zeros((size_q, size_g), dtype=bool),
        grounded=np.zeros((size_q, size_g), dtype=bool),
        utility=np.zeros((size_q, size_g, size_g)),
        f1=np.zeros((size_q, size_g)),
        member_of=np.zeros((size_q, size_n, size_g)),
        rank=np.zeros((size_q, size_n)),
        cand_grounded=np.zeros((size_q, size_n), dtype=bool),
        weight=np.zeros((size_q, size_n)),
    )
    for j, (_, q, e) in enumerate(found):
        r, g, n = len(e.rows), len(e.representative), len(q.candidates)
        b.logprob[j, :r, :g], b.tokens[j, :r, :g], b.row_weight[j, :r] = e.logprob, e.tokens, e.row_weight
        b.answers[j, :g], b.grounded[j, :g], b.utility[j, :g, :g] = True, e.grounded, e.utility
        b.f1[j, :g] = [max(f1_korquad(q.candidates[i].text, a) for a in q.answers) for i in e.representative]
        live = e.answer_of >= 0
        b.member_of[j, np.arange(n)[live], e.answer_of[live]] = 1.0
        b.rank[j, :n] = [c.beam_rank for c in q.candidates]
        b.cand_grounded[j, :n] = [c.grounded for c in q.candidates]
        b.weight[j, :n] = [c.weight for c in q.candidates]
    return b


def _count_points(
    questions: Sequence[QuestionCandidates], grid: FitGrid, base: VoteConfig
) -> list[tuple[VoteConfig, np.ndarray]]:
    """Every count rule of the grid with its per-question F1 (through ``vote`` itself)."""
    points = []
    for rank_discount, ungrounded in itertools.product(grid.rank_discount, grid.ungrounded_weight):
        config = replace(base, rule="count", rank_discount=rank_discount, ungrounded_weight=ungrounded)
        points.append((config, _f1_each(questions, [a for a, _ in _answers(questions, config)])))
    return points


def _fit_likelihood(
    batch: _Batch, counts: Sequence[tuple[VoteConfig, np.ndarray]], grid: FitGrid
) -> tuple[VoteConfig, float]:
    """The best likelihood rule over every count point's weights (its share, and its answers where a
    question has no evidence), and its mean F1."""
    best, best_f1 = counts[0][0], -1.0
    for count, count_f1 in counts:
        # Questions without evidence answer by count under every likelihood point: one constant.
        constant = float(count_f1.sum() - count_f1[batch.index].sum())
        share = batch.share(count)
        for length_power, temperature in itertools.product(grid.length_power, grid.temperature):
            log_p = row_log_probs(batch.logprob, batch.tokens, batch.answers, length_power, temperature)
            for combine, mix in itertools.product(grid.combine, grid.count_mix):
                probability = posterior(
                    log_p, batch.row_weight, batch.answers, share, combine=combine, count_mix=mix
                )
                for mbr in grid.mbr:
                    index, _ = choose(probability, batch.utility, batch.answers, batch.grounded, mbr=mbr)
                    gained = float(np.take_along_axis(batch.f1, index[:, None], axis=1).sum())
                    f1 = (constant + gained) / len(count_f1)
                    if f1 > best_f1 + 1e-12:
                        best_f1 = f1
                        best = replace(
                            count,
                            rule="likelihood",
                            length_power=length_power,
                            temperature=temperature,
                            combine=combine,
                            count_mix=mix,
                            mbr=mbr,
                        )
    return best, best_f1


def fit_vote(
    questions: Sequence[QuestionCandidates],
    grid: FitGrid | None = None,
    *,
    source: dict[str, Any] | None = None,
    base: VoteConfig | None = None,
) -> VoteFile:
    """The best rule on these (held-out train) questions, calibrated, with its provenance.

    ``source`` (the candidates file's name, sha256, split...) goes into the provenance as ``candidates``;
    ``base`` gives the fields not searched (threshold, containment...). Raises ValueError when no question
    has gold answers and candidates.
    """
    started = time.perf_counter()
    grid = grid or FitGrid()
    questions = gold_questions(questions)
    if not any(q.candidates for q in questions):
        raise ValueError("no question with gold answers and candidates to fit on")
    counts = _count_points(questions, grid, base or VoteConfig())
    count, count_f1 = counts[0][0], -1.0
    for config, f1_each in counts:  # the first of equals
        if f1_each.mean() > count_f1 + 1e-12:
            count, count_f1 = config, float(f1_each.mean())
    batch = _batch(questions)
    chosen, likelihood_f1 = count, None
    if batch is not None:
        likelihood, likelihood_f1 = _fit_likelihood(batch, counts, grid)
        if likelihood_f1 > count_f1 + 1e-12:
            chosen = likelihood
    raw = _answers(questions, chosen)
    correct = [
        any(exact_match_korquad(a, g) for g in q.answers) for q, (a, _) in zip(questions, raw, strict=True)
    ]
    confidences = [min(max(c, 0.0), 1.0) for _, c in raw]
    platt = fit_platt(confidences, correct)
    calibrated = replace(chosen, calibration=platt)
    result = revote(questions, calibrated, both_rules=batch is not None)
    oracle = [
        max((f1_korquad(c.text, g) for c in q.candidates for g in q.answers), default=0.0) for q in questions
    ]
    provenance = {
        "fitted_by": "evaluation.vote_fit.fit_vote",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "candidates": {
            **(source or {}),
            "questions": len(questions),
            "with_likelihoods": result.with_likelihoods,
        },
        "rule": chosen.rule,  # its parameters are the file's "vote"
        "f1": {
            "chosen": round(100 * float(_f1_each(questions, [a for a, _ in raw]).mean()), 2),
            "count": round(100 * count_f1, 2),
            "likelihood": None if likelihood_f1 is None else round(100 * likelihood_f1, 2),
            "oracle": round(100 * float(np.mean(oracle)), 2),
        },
        "strategies": {
            s: {"f1": round(v.f1, 2), "exact_match": round(v.exact_match, 2)}
            for s, v in result.scores.items()
        },
        "calibration": {
            "ece_raw": round(expected_calibration_error(confidences, correct), 4),
            "ece_calibrated": round(result.ece, 4),
            "note": "in-sample, on the fitting questions; measure on the eval split with `qa-eval revote`",
        },
        "best_count_rule": {
            "rank_discount": count.rank_discount,
            "ungrounded_weight": count.ungrounded_weight,
        },
        "grid": asdict(grid),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return VoteFile(vote=calibrated, provenance=provenance)


def revote(
    questions: Sequence[QuestionCandidates], config: VoteConfig, *, both_rules: bool | None = None
) -> RevoteResult:
    """Every strategy re-voted from the saved candidates under ``config``, scored on the gold questions.

    ``both_rules`` as `strategy_answers` (None: when ``config`` needs likelihoods or any question has them),
    the same for every question so every row has the same strategy ids.
    """
    questions = gold_questions(questions)
    if not questions:
        raise ValueError("no question with gold answers to score")
    with_likelihoods = sum(1 for q in questions if q.candidates and all(c.likelihoods for c in q.candidates))
    if both_rules is None:
        both_rules = config.needs_likelihoods or with_likelihoods > 0
    predictions: dict[str, dict[str, str]] = {}
    confidences, correct = [], []
    for q in questions:
        if not q.candidates:
            confidences.append(0.0)
            correct.append(False)
            continue
        answers = strategy_answers(list(q.candidates), (), config, both_rules=both_rules)
        for strategy, answer in answers.items():
            predictions.setdefault(strategy, {})[q.id] = answer
        main = vote(q.candidates, config)
        confidences.append(min(max(main.confidence, 0.0), 1.0))
        correct.append(any(exact_match_korquad(main.answer, g) for g in q.answers))
    gold = {q.id: list(q.answers) for q in questions}
    ids = [ENSEMBLE, *(s for s in predictions if s != ENSEMBLE)]
    scores = {s: score_predictions(gold, predictions.get(s, {})) for s in ids}
    return RevoteResult(
        scores=scores,
        ece=expected_calibration_error(confidences, correct),
        reliability=[asdict(b) for b in reliability(confidences, correct)],
        questions=len(questions),
        with_likelihoods=with_likelihoods,
    )


def source_facts(path: Path) -> dict[str, Any]:
    """What the provenance records of a candidates file: its name, sha256 and, from the report.json beside
    it, the data file and split it came from. Raises ValueError for the eval split (never fit on it)."""
    facts: dict[str, Any] = {"file": path.name, "sha256": sha256_of(path)}
    report = path.parent / "report.json"
    if report.is_file():
        data = json.loads(report.read_text("utf-8")).get("data") or {}
        facts |= {"data": data.get("path"), "data_sha256": data.get("sha256"), "split": data.get("split")}
        if data.get("split") == "eval":
            raise ValueError(
                f"{path}: its report.json says the eval split; fit on held-out train questions only "
                "(qa-eval run --ids .training/holdout_ids.json) and check the eval split with qa-eval revote"
            )
    return facts


def revote_to_json(result: RevoteResult, config: VoteConfig, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": "qa-eval.revote/1",
        "candidates": {**source, "questions": result.questions, "with_likelihoods": result.with_likelihoods},
        "vote": vote_config_to_dict(config),
        "strategies": {
            s: {
                "exact_match": round(v.exact_match, 2),
                "f1": round(v.f1, 2),
                "count": v.count,
                "missing": v.missing,
            }
            for s, v in result.scores.items()
        },
        "calibration": {"ece": round(result.ece, 4), "bins": 10, "reliability": result.reliability},
    }
