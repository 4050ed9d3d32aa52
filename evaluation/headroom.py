"""What a vote could still buy from these members: `qa-eval headroom` on a candidates file.

A vote can only choose among the answers its members wrote. `headroom` measures, on the saved candidates of
a run with gold answers, how far choosing could go and how often it matters:

- each member's own top answer (its top beam under the first prompt it answered), the best of them, and the
  oracle over the members' top answers (pick, per question, the member whose top answer scores best);
- the oracle over every row's top answer (member x prompt) and over every distinct candidate;
- how often the members' top answers all agree, and where they disagree, how often the best member is wrong
  while another member is right (what a vote can win) against right while another is wrong (what it can lose).

`rerank_cv` asks whether a learned chooser does better than the fitted vote: a conditional-logit reranker
over every distinct answer's evidence (its likelihoods under each row, combined as the likelihood rule does,
its count share, beam ranks, how many members wrote it, grounding, length, containment in other answers,
overlap with the question and of its sentence with the question), trained on the questions of k-1 folds
grouped by article and scored on the held-out fold. Fit it on held-out train candidates only, as the vote.

Pure Python and numpy: the fit is Newton's method on the L2-regularised listwise log loss (a handful of
features; a library model would add a dependency for a 20-parameter fit). No model, no GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ensemble.evidence import gather, row_log_probs
from ensemble.metric import f1_korquad
from ensemble.vote import VoteConfig, effective_weight, normalise, vote
from evaluation.candidates import QuestionCandidates

PARTICLES = (
    "에서",
    "으로",
    "에게",
    "께서",
    "은",
    "는",
    "이",
    "가",
    "을",
    "를",
    "의",
    "에",
    "로",
    "와",
    "과",
    "도",
)
"""Korean particles a span's boundary often wrongly keeps ("고대 그리스어에서")."""
FEATURES = (
    "log_mixture", "log_product", "log_row_max", "log_row_min", "count_share", "top_row_share",
    "member_share", "is_some_top_beam", "grounded", "log_length", "ends_in_particle", "question_overlap",
    "sentence_overlap", "inside_others", "contains_others", "expected_f1",
)  # fmt: skip


@dataclass(frozen=True)
class Headroom:
    questions: int
    members: tuple[str, ...]
    member_top: dict[str, float]
    """Member -> F1 of its top answer (top beam of its first prompt)."""
    best_member: str
    oracle_members: float
    """F1 if, per question, the best of the members' top answers were chosen."""
    oracle_rows: float
    """The same over every (member, prompt) row's top answer."""
    oracle_candidates: float
    """The same over every candidate."""
    agree: float
    """Share of questions where every member's top answer is the same text."""
    best_wrong_other_right: float
    """Share of questions where the best member's top answer scores below another member's."""
    best_right_other_wrong: float
    """Share where it scores above every other member's (a vote that follows others loses there)."""


def _gold_f1(text: str, answers: Sequence[str]) -> float:
    return max(f1_korquad(text, a) for a in answers)


def _tops(q: QuestionCandidates) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """Per member its top answer (first prompt it answered), per row its top answer."""
    members: dict[str, str] = {}
    rows: dict[tuple[str, str], str] = {}
    for c in q.candidates:
        if c.beam_rank == 0:
            rows.setdefault((c.member, c.prompt), c.text)
            members.setdefault(c.member, c.text)
    return members, rows


def headroom(questions: Sequence[QuestionCandidates]) -> Headroom:
    """The table above over the questions with gold answers (failed rows count 0)."""
    scored = [q for q in questions if q.answers]
    if not scored:
        raise ValueError("no question with gold answers: headroom needs a run on gold data")
    names = sorted({c.member for q in scored for c in q.candidates})
    per_member = {m: [] for m in names}
    oracle_m, oracle_r, oracle_c, agree, win, lose = [], [], [], [], [], []
    tops = [_tops(q) for q in scored]
    for q, (members, _) in zip(scored, tops, strict=True):
        for m in names:
            per_member[m].append(_gold_f1(members[m], q.answers) if m in members else 0.0)
    member_top = {m: float(100 * np.mean(v)) for m, v in per_member.items()}
    best = max(names, key=lambda m: member_top[m]) if names else ""
    for k, (q, (members, rows)) in enumerate(zip(scored, tops, strict=True)):
        f1_m = [per_member[m][k] for m in names]
        oracle_m.append(max(f1_m, default=0.0))
        oracle_r.append(max((_gold_f1(t, q.answers) for t in rows.values()), default=0.0))
        oracle_c.append(max((_gold_f1(c.text, q.answers) for c in q.candidates), default=0.0))
        agree.append(len(set(members.values())) <= 1 and len(members) == len(names))
        others = [per_member[m][k] for m in names if m != best]
        mine = per_member[best][k] if best else 0.0
        win.append(bool(others) and max(others) > mine)
        lose.append(bool(others) and mine > max(others))
    return Headroom(
        questions=len(scored),
        members=tuple(names),
        member_top=member_top,
        best_member=best,
        oracle_members=float(100 * np.mean(oracle_m)),
        oracle_rows=float(100 * np.mean(oracle_r)),
        oracle_candidates=float(100 * np.mean(oracle_c)),
        agree=float(np.mean(agree)),
        best_wrong_other_right=float(np.mean(win)),
        best_right_other_wrong=float(np.mean(lose)),
    )


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"\W+", text) if w]


def _stem(word: str) -> str:
    for particle in PARTICLES:
        if len(word) > len(particle) + 1 and word.endswith(particle):
            return word[: -len(particle)]
    return word


def answer_features(
    q: QuestionCandidates, config: VoteConfig, context: str = "", question: str = ""
) -> tuple[np.ndarray, list[str]] | None:
    """(G, len(FEATURES)) features of the question's distinct answers and their texts; None when the
    candidates carry no likelihoods (the vote then counts, and so does the reranker)."""
    keys = [normalise(c.text) for c in q.candidates]
    found = gather(q.candidates, keys) if q.candidates else None
    if found is None:
        return None
    size = len(found.representative)
    log_p = row_log_probs(
        found.logprob, found.tokens, np.ones(size, dtype=bool), config.length_power, config.temperature
    )
    p = np.exp(log_p)
    mixture = p.mean(axis=0)
    product = log_p.mean(axis=0)
    product = np.exp(product - product.max())
    product /= product.sum()
    live = found.answer_of >= 0
    weights = np.array([effective_weight(c, config) for c in q.candidates])
    share = np.bincount(found.answer_of[live], weights=weights[live], minlength=size)
    share = share / max(share.sum(), 1e-12)
    top_rows, makers, some_top = np.zeros(size), [set() for _ in range(size)], np.zeros(size)
    for c, a in zip(q.candidates, found.answer_of, strict=True):
        if a >= 0:
            makers[a].add(c.member)
            if c.beam_rank == 0:
                top_rows[a] += 1
                some_top[a] = 1
    n_members = max(len({c.member for c in q.candidates}), 1)
    stems = {_stem(w) for w in _words(question)}
    sentences = re.split(r"(?<=[.!?다])\s+", context) if context else []
    texts = [q.candidates[i].text for i in found.representative]
    expected = found.utility @ mixture
    rows = []
    for g, text in enumerate(texts):
        words = _words(text)
        last = words[-1] if words else ""
        overlap = float(np.mean([_stem(w) in stems for w in words])) if words and stems else 0.0
        sentence = max(
            (len(stems & {_stem(w) for w in _words(s)}) / len(stems) for s in sentences if text in s),
            default=0.0,
        ) if stems else 0.0  # fmt: skip
        rows.append([
            np.log(mixture[g] + 1e-6), np.log(product[g] + 1e-6), np.log(p[:, g].max() + 1e-6),
            np.log(p[:, g].min() + 1e-6), share[g], top_rows[g] / max(top_rows.sum(), 1),
            len(makers[g]) / n_members, some_top[g], float(found.grounded[g]), np.log(len(text) + 1),
            float(any(last.endswith(x) and len(last) > len(x) for x in PARTICLES)), overlap, sentence,
            sum(mixture[h] for h in range(size) if h != g and text in texts[h]),
            sum(mixture[h] for h in range(size) if h != g and texts[h] in text),
            expected[g],
        ])  # fmt: skip
    return np.array(rows, dtype=np.float64), texts


@dataclass(frozen=True)
class Reranker:
    weights: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights


def fit_reranker(
    items: Sequence[tuple[np.ndarray, np.ndarray]], l2: float = 0.1, max_iter: int = 50
) -> Reranker:
    """Conditional logit over each question's answers; the target is its best-F1 answers (uniform over
    ties), questions where no answer scores are left out. ``items``: (features, F1 per answer)."""
    usable = [(x, y) for x, y in items if y.max() > 0]
    if not usable:
        raise ValueError("no question with a right answer among its candidates to learn from")
    stacked = np.concatenate([x for x, _ in usable])
    mean, scale = stacked.mean(axis=0), stacked.std(axis=0) + 1e-9
    xs = [(x - mean) / scale for x, _ in usable]
    targets = [(y == y.max()) / (y == y.max()).sum() for _, y in usable]
    w = np.zeros(stacked.shape[1])
    for _ in range(max_iter):
        grad = l2 * len(xs) * w
        hess = l2 * len(xs) * np.eye(len(w))
        for x, t in zip(xs, targets, strict=True):
            s = x @ w
            p = np.exp(s - s.max())
            p /= p.sum()
            grad += x.T @ (p - t)
            hess += x.T @ (np.diag(p) - np.outer(p, p)) @ x
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Reranker(w, mean, scale)


@dataclass(frozen=True)
class RerankResult:
    folds: int
    questions: int
    reranker_f1: float
    """Mean F1 of the reranker's answer on held-out folds (questions without likelihoods: the vote's)."""
    vote_f1: float
    """Mean F1 of the vote under the same config on the same questions."""


def rerank_cv(
    questions: Sequence[QuestionCandidates],
    config: VoteConfig,
    texts: Mapping[str, tuple[str, str]] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
) -> RerankResult:
    """k-fold cross-validated F1 of the reranker, folds grouped by article (the id before its first '-'),
    so no fold learns from the article it is scored on. ``texts``: id -> (context, question)."""
    scored = [q for q in questions if q.answers]
    articles = sorted({q.id.split("-")[0] for q in scored})
    if len(articles) < folds:
        raise ValueError(f"{len(articles)} articles cannot make {folds} folds")
    np.random.default_rng(seed).shuffle(articles)
    fold_of = {a: i % folds for i, a in enumerate(articles)}
    items = []
    for q in scored:
        context, question = (texts or {}).get(q.id, ("", ""))
        found = answer_features(q, config, context, question)
        y = None if found is None else np.array([_gold_f1(t, q.answers) for t in found[1]])
        items.append((q, found, y))
    picked, run = [], []
    for k in range(folds):
        train = [(f[0], y) for q, f, y in items if f is not None and fold_of[q.id.split("-")[0]] != k]
        model = fit_reranker(train)
        for q, f, y in items:
            if fold_of[q.id.split("-")[0]] != k:
                continue
            run.append(_gold_f1(vote(q.candidates, config).answer if q.candidates else "", q.answers))
            picked.append(run[-1] if f is None else float(y[int(np.argmax(model.scores(f[0])))]))
    return RerankResult(folds, len(scored), float(100 * np.mean(picked)), float(100 * np.mean(run)))
