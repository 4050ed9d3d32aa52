"""Weighted fuzzy voting: many candidate answers in, one answer with its support and provenance out.

Candidates are compared on a normalised form (case, spacing and punctuation ignored) with rapidfuzz,
clustered greedily and deterministically, and the heaviest cluster wins; its weighted medoid is the answer.
Voting never looks at the context or the model: grounding is decided before (``ensemble.clean``) and arrives
as ``Candidate.grounded``; beam log-probabilities are carried for provenance but deliberately not used as
weights, because scores from different adapters and prompts are not calibrated against each other.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from rapidfuzz import fuzz, process

from ensemble.errors import InvalidVoteConfigError, NoCandidatesError
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


@dataclass(frozen=True)
class VoteConfig:
    """How candidates are weighted and when two texts count as the same answer."""

    rule: Literal["count", "likelihood"] = "count"
    """"count": the heaviest cluster of weighted candidates wins (weights from member, beam rank and
    grounding). "likelihood": every distinct text is scored under every (member, prompt) row of the plan
    (``Candidate.likelihoods``) and the evidence decides (see ``vote``)."""

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
        for name in ("rank_discount", "grounded_weight", "ungrounded_weight"):
            if getattr(self, name) < 0:
                raise InvalidVoteConfigError(f"vote.{name}", f"must be >= 0; got {getattr(self, name)!r}")


@dataclass(frozen=True)
class VotedCandidate:
    """A candidate with what the vote made of it."""

    candidate: Candidate
    cluster: int | None
    """0 is the winning cluster, then by falling weight; None for an empty text (never clustered)."""
    effective_weight: float
    """member weight x rank weight x grounding multiplier."""
    similarity: float
    """0-100 similarity to the final answer."""


@dataclass(frozen=True)
class Cluster:
    """One group of agreeing candidates."""

    id: int
    text: str
    """The cluster's weighted medoid (a grounded text where the cluster has one)."""
    weight: float
    support: int


@dataclass(frozen=True)
class Vote:
    """The ensemble's answer."""

    answer: str
    confidence: float
    """Winning cluster weight / total weight of all candidates (empty ones included), 0..1."""
    support: int
    """Number of candidates in the winning cluster."""
    candidates: tuple[VotedCandidate, ...]
    """Every candidate, in input order."""
    adapter_agreement: dict[str, float]
    """Per member ("base" for the base model): share of its weight inside the winning cluster."""
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
    """Cluster the candidates and return the weighted medoid of the heaviest cluster.

    ``threshold`` overrides ``config.threshold``. Deterministic: clusters are seeded heaviest candidate first
    (input order on equal weight), and ties between clusters go to the larger weight, then the larger grounded
    weight, then the cluster holding the earliest candidate. Empty texts are recorded but never win unless
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
    grounded = np.array([c.grounded for c in candidates])
    # Rank clusters: weight, then grounded weight, then earliest member; rounding keeps float noise from
    # deciding a tie that is exact in intent (e.g. 1/3 + 1/3 + 1/3 against 1).
    groups.sort(key=lambda g: (-round(weights[g].sum(), 9), -round(weights[g][grounded[g]].sum(), 9), min(g)))
    medoids = [_medoid(g, weights, sim, grounded) for g in groups]
    answer_index = medoids[0]

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
    total = weights.sum()
    winners = set(groups[0])
    by_member = _weight_by_member(candidates, weights)
    in_winner = _weight_by_member(
        candidates, np.where([i in winners for i in range(len(candidates))], weights, 0)
    )
    clusters = tuple(
        Cluster(id=k, text=candidates[m].text, weight=float(weights[g].sum()), support=len(g))
        for k, (g, m) in enumerate(zip(groups, medoids, strict=True))
    )
    return Vote(
        answer=candidates[answer_index].text,
        confidence=float(min(1.0, weights[groups[0]].sum() / total)) if total > 0 else 0.0,
        support=len(groups[0]),
        candidates=voted,
        adapter_agreement={
            name: (in_winner[name] / weight if weight > 0 else 0.0) for name, weight in by_member.items()
        },
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
        name = candidate.adapter if candidate.adapter is not None else BASE_MEMBER_NAME
        totals[name] = totals.get(name, 0.0) + float(weight)
    return totals
