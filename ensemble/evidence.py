"""The likelihood rule's arithmetic: every (member, prompt) row's belief over the distinct answers, combined
into one distribution, blended with the count vote, and decided by minimum Bayes risk under the KorQuAD F1.

For one vote, ``gather`` turns the candidates into answers (distinct normalised texts, each represented by
one candidate: grounded first, then the most copied, then the earliest) and a rows x answers table of
teacher-forced log-probabilities; ``decide`` runs the rule on it. ``posterior`` and ``choose`` work on arrays
with any leading axes, so ``evaluation.vote_fit`` evaluates a padded batch of questions per grid point with
exactly the arithmetic a single vote uses.

This module neither clusters nor builds a ``Vote`` (``ensemble.vote`` does both, and is the only caller of
``decide``); it never sees the model, only the scores the pipeline attached to the candidates.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ensemble.metric import f1_korquad

if TYPE_CHECKING:  # vote.py imports this module; at run time the types are only duck-typed here
    from ensemble.vote import Candidate, VoteConfig

Combine = Literal["mixture", "product"]
Row = tuple[str, str]
"""(member name, prompt style) of one scoring row."""


@dataclass(frozen=True)
class Answers:
    """The distinct answers of one vote and the evidence on them (R rows, G answers)."""

    representative: tuple[int, ...]
    """Per answer, the candidate whose text stands for it (and is returned when it wins)."""
    answer_of: np.ndarray
    """(n,) per candidate the index of its answer; -1 for an empty text."""
    rows: tuple[Row, ...]
    """The scoring rows used, in first-seen order."""
    logprob: np.ndarray
    """(R, G) the representative text's summed log-probability under each row."""
    tokens: np.ndarray
    """(R, G) tokens scored, >= 1."""
    row_weight: np.ndarray
    """(R,) the row's member weight."""
    grounded: np.ndarray
    """(G,) whether the representative is a span of the context."""
    utility: np.ndarray
    """(G, G) official KorQuAD character F1 between the representatives (1 on the diagonal)."""


def has_likelihoods(candidates: Sequence[Candidate], keys: Sequence[str]) -> bool:
    """Does every candidate with a non-empty normalised text (``keys``) carry its likelihoods?"""
    return all(c.likelihoods for c, key in zip(candidates, keys, strict=True) if key)


def gather(candidates: Sequence[Candidate], keys: Sequence[str]) -> Answers | None:
    """The answers and their evidence, or None when the rule cannot run (a live candidate without
    likelihoods, or no row that scored every answer).

    Rows are those whose member AND prompt appear among these candidates, so a re-vote of one member's (or
    one prompt's) candidates weighs only that member's (prompt's) evidence; a row must have scored every
    answer's representative to count.
    """
    if not has_likelihoods(candidates, keys):
        return None
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            first.setdefault(key, i)
    if not first:
        return None
    answer_index = {key: g for g, key in enumerate(first)}
    answer_of = np.array([answer_index[k] if k else -1 for k in keys], dtype=np.int64)
    representative = tuple(
        min(
            (i for i, a in enumerate(answer_of) if a == g),
            key=lambda i: (not candidates[i].grounded, -_same_text(candidates, answer_of, i), i),
        )
        for g in range(len(first))
    )
    members = {c.member for c in candidates}
    prompts = {c.prompt for c in candidates}
    scored = [{(s.member, s.prompt): s for s in candidates[i].likelihoods} for i in representative]
    seen = dict.fromkeys(row for table in scored for row in table)
    rows = tuple(r for r in seen if r[0] in members and r[1] in prompts and all(r in t for t in scored))
    if not rows:
        return None
    weight_of: dict[str, float] = {}
    for c in candidates:
        weight_of.setdefault(c.member, float(c.weight))
    row_weight = np.array([weight_of[member] for member, _ in rows], dtype=np.float64)
    if not row_weight.sum() > 0:
        row_weight = np.ones(len(rows))
    texts = [candidates[i].text for i in representative]
    utility = np.eye(len(texts))
    for a, b in itertools.combinations(range(len(texts)), 2):
        utility[a, b] = utility[b, a] = f1_korquad(texts[a], texts[b])  # symmetric
    return Answers(
        representative=representative,
        answer_of=answer_of,
        rows=rows,
        logprob=np.array([[t[r].logprob for t in scored] for r in rows], dtype=np.float64),
        tokens=np.array([[max(t[r].tokens, 1) for t in scored] for r in rows], dtype=np.float64),
        row_weight=row_weight,
        grounded=np.array([candidates[i].grounded for i in representative]),
        utility=utility,
    )


def _same_text(candidates: Sequence[Candidate], answer_of: np.ndarray, i: int) -> int:
    """How many candidates of i's answer have exactly i's text."""
    text = candidates[i].text
    return sum(1 for j, a in enumerate(answer_of) if a == answer_of[i] and candidates[j].text == text)


def row_log_probs(
    logprob: np.ndarray, tokens: np.ndarray, answers: np.ndarray, length_power: float, temperature: float
) -> np.ndarray:
    """(..., R, G) log p_r(g): softmax over the answers of logprob / tokens**length_power / temperature.

    ``answers`` (..., G) masks padding (False), which gets -inf.
    """
    score = logprob / np.power(tokens, length_power) / temperature
    score = np.where(answers[..., None, :], score, -np.inf)
    top = score.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        norm = np.log(np.exp(score - top).sum(axis=-1, keepdims=True)) + top
    return score - norm


def posterior(
    log_p: np.ndarray,
    row_weight: np.ndarray,
    answers: np.ndarray,
    share: np.ndarray,
    *,
    combine: Combine,
    count_mix: float,
) -> np.ndarray:
    """(..., G) P(answer): the rows combined ("mixture": weighted mean of p_r; "product": softmax of the
    weighted mean of log p_r, a product of experts whose weights sum to 1, so a subset of rows is no sharper
    or flatter for being fewer), then ``(1 - count_mix) * P + count_mix * share`` where ``share`` is the count
    rule's weight share of each answer. A question whose share is all zero keeps P unblended.

    ``row_weight`` (..., R) is 0 for padded rows; ``answers`` (..., G) masks padded answers.
    """
    real = row_weight > 0
    weight = row_weight / np.maximum(row_weight.sum(axis=-1, keepdims=True), 1e-300)
    if combine == "mixture":
        p = np.where(real[..., None], np.exp(log_p), 0.0)
        lik = (weight[..., None] * p).sum(axis=-2)
    else:
        summed = (weight[..., None] * np.where(real[..., None], log_p, 0.0)).sum(axis=-2)
        summed = np.where(answers, summed, -np.inf)
        top = summed.max(axis=-1, keepdims=True)
        e = np.exp(summed - np.where(np.isfinite(top), top, 0.0))
        lik = e / np.maximum(e.sum(axis=-1, keepdims=True), 1e-300)
    total = share.sum(axis=-1, keepdims=True)
    blended = (1.0 - count_mix) * lik + count_mix * share / np.maximum(total, 1e-300)
    return np.where(total > 0, blended, lik)


def choose(
    probability: np.ndarray, utility: np.ndarray, answers: np.ndarray, grounded: np.ndarray, *, mbr: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(index, raw score) per question: the answer maximising the expected utility sum_t' P(t') U(t, t')
    (``mbr``), else P itself. Ties (to 9 decimals) go to the larger P, then a grounded answer, then the
    earliest; the raw score is the winner's expected utility (or P)."""
    score = np.einsum("...gh,...h->...g", utility, probability) if mbr else probability
    pick = answers.copy()
    for key in (score, probability):
        rounded = np.where(pick, np.round(key, 9), -np.inf)
        pick &= rounded == rounded.max(axis=-1, keepdims=True)
    grounded_pick = pick & grounded
    pick = np.where(grounded_pick.any(axis=-1, keepdims=True), grounded_pick, pick)
    index = np.argmax(pick, axis=-1)
    return index, np.take_along_axis(score, index[..., None], axis=-1)[..., 0]


def count_share(answer_of: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """(G,) the count rule's effective weight summed per answer (candidates with an empty text left out)."""
    live = answer_of >= 0
    return np.bincount(answer_of[live], weights=weights[live], minlength=size).astype(np.float64)


@dataclass(frozen=True)
class Decision:
    """The likelihood rule's verdict on one vote, per candidate where ``vote`` needs it so."""

    answer: int
    """Index of the candidate whose text is the answer."""
    raw_confidence: float
    """The answer's expected utility (MBR) or probability, before calibration."""
    probability: np.ndarray
    """(n,) P of each candidate's answer; 0 for an empty text."""
    copies: np.ndarray
    """(n,) how many candidates share each candidate's answer; 0 for an empty text."""
    member_probability: dict[str, np.ndarray]
    """Per member with rows: (n,) the mean over its rows of p_r of each candidate's answer."""


def decide(
    candidates: Sequence[Candidate], keys: Sequence[str], count_weights: np.ndarray, config: VoteConfig
) -> Decision | None:
    """Run the likelihood rule (``config``'s fields) on one vote; None when ``gather`` finds no evidence."""
    found = gather(candidates, keys)
    if found is None:
        return None
    size = len(found.representative)
    answers = np.ones(size, dtype=bool)
    log_p = row_log_probs(found.logprob, found.tokens, answers, config.length_power, config.temperature)
    share = count_share(found.answer_of, count_weights, size)
    probability = posterior(
        log_p, found.row_weight, answers, share, combine=config.combine, count_mix=config.count_mix
    )
    index, raw = choose(probability, found.utility, answers, found.grounded, mbr=config.mbr)
    live = found.answer_of >= 0
    per_answer = np.where(live, found.answer_of, 0)
    copies = np.bincount(found.answer_of[live], minlength=size)
    by_member: dict[str, list[int]] = {}
    for r, (member, _) in enumerate(found.rows):
        by_member.setdefault(member, []).append(r)
    return Decision(
        answer=found.representative[int(index)],
        raw_confidence=float(raw),
        probability=np.where(live, probability[per_answer], 0.0),
        copies=np.where(live, copies[per_answer], 0),
        member_probability={
            m: np.where(live, np.exp(log_p[r]).mean(axis=0)[per_answer], 0.0) for m, r in by_member.items()
        },
    )
