"""Weighted fuzzy voting: many candidate answers in, one answer with its support and provenance out.

Candidates are compared on a normalised form (case, spacing and punctuation ignored) with rapidfuzz and
clustered greedily and deterministically. Two rules then decide (``VoteConfig.rule``):

- "count": the heaviest cluster wins and its weighted medoid is the answer. Weights come from the member, the
  beam rank and grounding; the generator's beam log-probabilities are carried for provenance but not used,
  because scores of different adapters and prompts are not calibrated against each other.
- "likelihood": every distinct text was scored by teacher forcing under every (member, prompt) row of the
  plan (``Candidate.likelihoods``), so every member's evidence speaks on every answer, and one member's
  correlated beams no longer vote for its own boundary errors; the arithmetic is in ``ensemble.evidence``.

Voting never looks at the context or the model: grounding is decided before (``ensemble.clean``) and arrives
as ``Candidate.grounded``, likelihoods are computed before (the pipeline's ``CandidateScorer``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from rapidfuzz import fuzz, process

from ensemble.calibration import Platt
from ensemble.errors import InvalidVoteConfigError, NoCandidatesError
from ensemble.evidence import Combine, Decision, decide
from ensemble.plan import BASE_MEMBER_NAME


@dataclass(frozen=True)
class Likelihood:
    """A candidate text's teacher-forced log-probability under one (member, prompt) row of the plan: the
    text's tokens and the end-of-answer token after the row's prompt (`CandidateScorer.score`)."""

    member: str
    """The scoring member's name (``BASE_MEMBER_NAME`` for the base model)."""
    prompt: str
    """The prompt style the text was scored after."""
    logprob: float
    """Sum of the tokens' log-probabilities (natural log, <= 0)."""
    tokens: int
    """How many tokens were scored (the text's and the end-of-answer token), >= 1."""


@dataclass(frozen=True)
class Candidate:
    """One cleaned model output and where it came from."""

    text: str
    """The cleaned answer; the exact context span when grounded."""
    raw: str
    """The generator's text before cleaning."""
    adapter: str | None
    """The member that produced it; None = the base model."""
    prompt: str
    """Prompt style name."""
    beam_rank: int
    """0 = the generator's best output for this prompt."""
    score: float | None
    """The generator's log-probability (provenance only)."""
    weight: float
    """The member's vote weight."""
    grounded: bool
    """Whether ``text`` is a span of the context."""
    likelihoods: tuple[Likelihood, ...] = ()
    """``text`` scored under every (member, prompt) row of the plan (empty when the vote's rule needs no
    scores): the evidence of every member, not only of the one that produced it."""

    @property
    def member(self) -> str:
        """The producing member's name: its adapter, or ``BASE_MEMBER_NAME`` for the base model (the name
        ``Likelihood.member`` and the strategy ids use)."""
        return self.adapter if self.adapter is not None else BASE_MEMBER_NAME


@dataclass(frozen=True)
class VoteConfig:
    """How candidates are weighted and when two texts count as the same answer."""

    rule: Literal["count", "likelihood"] = "count"
    """"count": the heaviest cluster of weighted candidates wins (weights from member, beam rank and
    grounding). "likelihood": every distinct text is scored under every (member, prompt) row of the plan
    (``Candidate.likelihoods``) and the evidence decides (see ``vote``); the count rule's fields still weigh
    the count share (``count_mix``) and the fallback."""

    threshold: float = 80.0
    """Similarity (0-100) to a cluster's first member needed to join it. One edit in a 5-character answer
    (the median) scores 80, so a slipped character still agrees; a different short word does not."""
    rank_discount: float = 1.0
    """Beam rank r weighs 1 / (1 + rank_discount * r): 1, 1/2, 1/3 ... Lower beams are mostly spelling or
    particle variants of the top one and should support it, not outvote the top output of another member.
    0 makes all ranks equal."""
    grounded_weight: float = 1.0
    """Multiplier for a candidate found in the context."""
    ungrounded_weight: float = 0.3
    """Multiplier for a candidate not found in the context. Answers are extractive, so such text is almost
    always a paraphrase or an invention; it still counts a little so a vote with nothing grounded keeps
    a majority, and about three agreeing ungrounded outputs equal one grounded."""
    containment_min_ratio: float = 0.5
    """Containment ("김대중" in "김대중 대통령") counts only when the shorter text is at least this
    share of the longer one's length; "서울" inside "서울대학교" is a different answer."""
    containment_factor: float = 0.9
    """partial_ratio is scaled by this, so a containment agrees but never ties an exact match."""
    number_mismatch_factor: float = 0.5
    """Similarity is scaled by this when both texts contain numbers and the numbers differ: "1988년" and
    "1989년" are one edit apart but different answers."""

    length_power: float = 0.0
    """Likelihood rule: a row scores a text logprob / tokens**length_power. 0 is the text's probability
    under the row (the end-of-answer token included, so longer texts are not free); 1 is the mean per
    token, which stops favouring short texts."""
    temperature: float = 1.0
    """Likelihood rule: each row's scores are divided by this before the softmax over the distinct texts;
    above 1 flattens a row's belief, below 1 sharpens it."""
    combine: Combine = "mixture"
    """Likelihood rule: how rows' distributions over the texts combine, weighted by member weight.
    "mixture": their weighted mean (one confident row cannot veto); "product": the softmax of the weighted
    mean of their log-probabilities (a product of experts: a text must convince every row)."""
    count_mix: float = 0.0
    """Likelihood rule: P = (1 - count_mix) x the rows' combined P + count_mix x the count rule's weight
    share of the text, in [0, 1]; 0 ignores the count, 1 is the count share alone (with MBR)."""
    mbr: bool = True
    """Likelihood rule: answer the text with the largest expected KorQuAD character F1 against P (minimum
    Bayes risk: a central answer wins over a slightly likelier outlier); False: the most probable text."""
    calibration: Platt | None = None
    """Maps the rule's raw score to ``Vote.confidence`` (Platt scaling fitted on held-out questions against
    exact match, ``evaluation.vote_fit``): the count share, or the expected utility (P with ``mbr`` off).
    None: the raw score is the confidence."""

    @property
    def needs_likelihoods(self) -> bool:
        """Does this rule need every candidate scored under every row (a teacher-forced pass)?"""
        return self.rule == "likelihood"

    def __post_init__(self) -> None:
        if self.rule not in ("count", "likelihood"):
            raise InvalidVoteConfigError("vote.rule", f"must be 'count' or 'likelihood'; got {self.rule!r}")
        for name in ("threshold", "containment_factor", "number_mismatch_factor", "containment_min_ratio"):
            value = getattr(self, name)
            limit = 100.0 if name == "threshold" else 1.0
            if not 0 <= value <= limit:
                raise InvalidVoteConfigError(f"vote.{name}", f"must be in [0, {limit:g}]; got {value!r}")
        for name in ("rank_discount", "grounded_weight", "ungrounded_weight", "length_power"):
            if getattr(self, name) < 0:
                raise InvalidVoteConfigError(f"vote.{name}", f"must be >= 0; got {getattr(self, name)!r}")
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise InvalidVoteConfigError(
                "vote.temperature", f"must be a finite number > 0; got {self.temperature!r}"
            )
        if not 0 <= self.count_mix <= 1:
            raise InvalidVoteConfigError("vote.count_mix", f"must be in [0, 1]; got {self.count_mix!r}")
        if self.combine not in ("mixture", "product"):
            raise InvalidVoteConfigError(
                "vote.combine", f"must be 'mixture' or 'product'; got {self.combine!r}"
            )
        if not isinstance(self.mbr, bool):
            raise InvalidVoteConfigError("vote.mbr", f"must be true or false; got {self.mbr!r}")
        if self.calibration is not None and not isinstance(self.calibration, Platt):
            raise InvalidVoteConfigError(
                "vote.calibration", f"must be a Platt scaling or None; got {self.calibration!r}"
            )

    def calibrated(self, raw: float) -> float:
        """``raw`` through ``calibration`` (unchanged without one)."""
        return float(self.calibration(raw)) if self.calibration is not None else float(raw)


@dataclass(frozen=True)
class VotedCandidate:
    """A candidate with what the vote made of it."""

    candidate: Candidate
    cluster: int | None
    """0 is the winning cluster, then by falling weight; None for an empty text (never clustered)."""
    effective_weight: float
    """Count rule: member weight x rank weight x grounding multiplier. Likelihood rule: P of its text
    divided among the candidates sharing it (so the weights of a vote sum to 1)."""
    similarity: float
    """0-100 similarity to the final answer."""


@dataclass(frozen=True)
class Cluster:
    """One group of agreeing candidates."""

    id: int
    text: str
    """Count rule: the cluster's weighted medoid, a grounded text where the cluster has one. Likelihood rule:
    the answer for the winner, else the cluster's most probable grounded text (any text when none is)."""
    weight: float
    """Count rule: the candidates' summed effective weight. Likelihood rule: the P-mass of its texts."""
    support: int


@dataclass(frozen=True)
class Vote:
    """The ensemble's answer."""

    answer: str
    confidence: float
    """0..1. Count rule: winning cluster weight / total weight of all candidates (empty ones included).
    Likelihood rule: the answer's expected F1 under P (P(answer) with ``mbr`` off). Either through
    ``VoteConfig.calibration`` when set."""
    support: int
    """Number of candidates in the winning cluster."""
    candidates: tuple[VotedCandidate, ...]
    """Every candidate, in input order."""
    adapter_agreement: dict[str, float]
    """Per member ("base" for the base model). Count rule: share of its weight inside the winning cluster.
    Likelihood rule: the probability its own rows (mean over its prompts) give the winning cluster's texts;
    0 for a member without rows."""
    clusters: tuple[Cluster, ...] = ()
    """All clusters, winner first: the runner-up answers."""


_DIGITS = re.compile(r"\d+")


def normalise(text: str) -> str:
    """Case-folded, without whitespace or punctuation: "120 개", "120개." and "120개" are one text.

    "%" and a "." between digits stay, since "3.5%" and "35" are different answers; a "," between digits
    goes, so "1,000" equals "1000".
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = []
    for k, char in enumerate(text):
        between_digits = 0 < k < len(text) - 1 and text[k - 1].isdigit() and text[k + 1].isdigit()
        if char == "%" or (char == "." and between_digits):
            kept.append(char)
        elif not (char.isspace() or unicodedata.category(char).startswith("P")):
            kept.append(char)
    return "".join(kept)


def similarity_matrix(texts: Sequence[str], config: VoteConfig) -> np.ndarray:
    """Pairwise 0-100 similarity of already-normalised texts.

    max(ratio, containment) where containment is ``containment_factor`` x partial_ratio, allowed only when
    the shorter text is at least ``containment_min_ratio`` of the longer: plain ratio gives "김대중" vs
    "김대중대통령" 67 although one names the other, while partial_ratio alone would merge "서울" into
    "서울대학교".
    """
    ratio = process.cdist(texts, texts, scorer=fuzz.ratio, dtype=np.float64)
    partial = process.cdist(texts, texts, scorer=fuzz.partial_ratio, dtype=np.float64)
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    shorter, longer = np.minimum.outer(lengths, lengths), np.maximum.outer(lengths, lengths)
    contained = shorter >= config.containment_min_ratio * np.maximum(longer, 1.0)
    sim: np.ndarray = np.maximum(ratio, np.where(contained, config.containment_factor * partial, 0.0))
    numbers = [tuple(_DIGITS.findall(t)) for t in texts]
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if a and b and a != b:
                sim[i, j] *= config.number_mismatch_factor
    np.fill_diagonal(sim, 100.0)
    return sim


def effective_weight(candidate: Candidate, config: VoteConfig) -> float:
    """member weight x beam-rank weight x grounding multiplier."""
    rank = 1.0 / (1.0 + config.rank_discount * max(candidate.beam_rank, 0))
    grounding = config.grounded_weight if candidate.grounded else config.ungrounded_weight
    return candidate.weight * rank * grounding


def vote(
    candidates: Sequence[Candidate], config: VoteConfig | None = None, *, threshold: float | None = None
) -> Vote:
    """Cluster the candidates and decide by ``config.rule``.

    ``threshold`` overrides ``config.threshold``. Count rule: the weighted medoid of the heaviest cluster.
    Clusters are seeded heaviest candidate first (input order on equal weight), and ties between clusters go
    to the larger weight, then the larger grounded weight, then the cluster holding the earliest candidate.
    Likelihood rule: ``ensemble.evidence.decide`` (ties: larger P, grounded, earliest); the clusters are the
    same fuzzy clusters, the one holding the answer first, the rest by falling P-mass. When a candidate with
    a non-empty text has no likelihoods, or no row scored every text, the likelihood rule falls back to the
    count rule (a pipeline without a scorer still answers). Empty texts are recorded but never win unless
    every text is empty, in which case the answer is "" with confidence 0.
    """
    if not candidates:
        raise NoCandidatesError()
    config = config or VoteConfig()
    if threshold is not None:
        config = replace(config, threshold=threshold)
    weights = np.array([effective_weight(c, config) for c in candidates], dtype=np.float64)
    texts = [normalise(c.text) for c in candidates]
    live = [i for i, t in enumerate(texts) if t]
    if not live:
        voted = tuple(
            VotedCandidate(c, None, float(w), 0.0) for c, w in zip(candidates, weights, strict=True)
        )
        agreement = {name: 0.0 for name in _weight_by_member(candidates, weights)}
        return Vote(answer="", confidence=0.0, support=0, candidates=voted, adapter_agreement=agreement)

    sim = np.zeros((len(candidates), len(candidates)))
    sim[np.ix_(live, live)] = similarity_matrix([texts[i] for i in live], config)
    groups = _cluster(live, weights, sim, config.threshold)
    decision = decide(candidates, texts, weights, config) if config.rule == "likelihood" else None
    if decision is not None:
        return _likelihood_vote(candidates, config, decision, sim, groups)
    grounded = np.array([c.grounded for c in candidates])
    # Rank clusters: weight, then grounded weight, then earliest member; rounding keeps float noise from
    # deciding a tie that is exact in intent (e.g. 1/3 + 1/3 + 1/3 against 1).
    groups.sort(key=lambda g: (-round(weights[g].sum(), 9), -round(weights[g][grounded[g]].sum(), 9), min(g)))
    medoids = [_medoid(g, weights, sim, grounded) for g in groups]
    total = weights.sum()
    winners = np.isin(np.arange(len(candidates)), groups[0])
    by_member = _weight_by_member(candidates, weights)
    in_winner = _weight_by_member(candidates, np.where(winners, weights, 0))
    return _assemble(
        candidates,
        groups,
        [candidates[m].text for m in medoids],
        medoids[0],
        weights,
        sim,
        confidence=config.calibrated(min(1.0, weights[groups[0]].sum() / total) if total > 0 else 0.0),
        agreement={name: (in_winner[name] / w if w > 0 else 0.0) for name, w in by_member.items()},
    )


def _likelihood_vote(
    candidates: Sequence[Candidate],
    config: VoteConfig,
    decision: Decision,
    sim: np.ndarray,
    groups: list[list[int]],
) -> Vote:
    mass = decision.probability / np.maximum(decision.copies, 1)  # P of a text split among its copies
    answer = decision.answer
    winner = next(g for g in groups if answer in g)
    rest = sorted((g for g in groups if g is not winner), key=lambda g: (-round(mass[g].sum(), 9), min(g)))
    ordered = [winner, *rest]
    grounded = np.array([c.grounded for c in candidates])

    def likeliest(group: list[int]) -> str:
        pool = [i for i in group if grounded[i]] or group
        return candidates[min(pool, key=lambda i: (-round(decision.probability[i], 9), i))].text

    in_winner = np.isin(np.arange(len(candidates)), winner)
    agreement = {
        name: float((p / np.maximum(decision.copies, 1))[in_winner].sum())
        for name, p in decision.member_probability.items()
    }
    return _assemble(
        candidates,
        ordered,
        [candidates[answer].text, *(likeliest(g) for g in rest)],
        answer,
        mass,
        sim,
        confidence=config.calibrated(min(1.0, decision.raw_confidence)),
        agreement={name: agreement.get(name, 0.0) for name in _weight_by_member(candidates, mass)},
    )


def _assemble(
    candidates: Sequence[Candidate],
    groups: list[list[int]],
    cluster_texts: list[str],
    answer_index: int,
    weights: np.ndarray,
    sim: np.ndarray,
    *,
    confidence: float,
    agreement: dict[str, float],
) -> Vote:
    """The Vote of ranked clusters (winner first) whose answer is candidate ``answer_index``'s text."""
    cluster_of = {i: k for k, group in enumerate(groups) for i in group}
    voted = tuple(
        VotedCandidate(
            candidate=c,
            cluster=cluster_of.get(i),
            effective_weight=float(weights[i]),
            similarity=float(sim[answer_index, i]) if i in cluster_of else 0.0,
        )
        for i, c in enumerate(candidates)
    )
    clusters = tuple(
        Cluster(id=k, text=text, weight=float(weights[g].sum()), support=len(g))
        for k, (g, text) in enumerate(zip(groups, cluster_texts, strict=True))
    )
    return Vote(
        answer=candidates[answer_index].text,
        confidence=confidence,
        support=len(groups[0]),
        candidates=voted,
        adapter_agreement=agreement,
        clusters=clusters,
    )


def _cluster(live: list[int], weights: np.ndarray, sim: np.ndarray, threshold: float) -> list[list[int]]:
    """Leader clustering: heaviest candidate first; each joins the most similar leader at >= threshold."""
    order = sorted(live, key=lambda i: (-weights[i], i))
    leaders: list[int] = []
    groups: list[list[int]] = []
    for i in order:
        scores = [sim[i, leader] for leader in leaders]
        best = int(np.argmax(scores)) if scores else -1
        if best >= 0 and scores[best] >= threshold:
            groups[best].append(i)
        else:
            leaders.append(i)
            groups.append([i])
    return [sorted(g) for g in groups]


def _medoid(group: list[int], weights: np.ndarray, sim: np.ndarray, grounded: np.ndarray) -> int:
    """The member with the largest weighted similarity to the rest, preferring grounded members."""
    pool = [i for i in group if grounded[i]] or group
    centrality = {i: float(sum(weights[j] * sim[i, j] for j in group)) for i in pool}
    return min(pool, key=lambda i: (-round(centrality[i], 9), -weights[i], i))


def _weight_by_member(candidates: Sequence[Candidate], weights: np.ndarray) -> dict[str, float]:
    totals: dict[str, float] = {}
    for candidate, weight in zip(candidates, weights, strict=True):
        name = candidate.member
        totals[name] = totals.get(name, 0.0) + float(weight)
    return totals
