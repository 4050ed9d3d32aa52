"""Synthetic candidates files for the vote-fitting tests: three members x two prompts x three beams a
question, every distinct text scored under the six rows. Member "a" often prefers a boundary variant of the
gold answer and its beams repeat it; "b" and "c" find the gold answer more often than not; the rows' scores
favour the gold answer, through noise. Random, but seeded."""

import json
import random
from pathlib import Path

from ensemble.vote import Candidate, Likelihood
from evaluation.candidates import QuestionCandidates, question_to_json

MEMBERS = ("a", "b", "c")
PROMPTS = ("zero-shot", "principled")
WORDS = ("서울", "부산", "올림픽", "대통령", "정부", "국회")
WORDS += ("대학교", "박물관", "전쟁", "조약", "시장", "위원회")
SUFFIXES = ("에서", "의", "는", "와 함께", "이다")


def synthetic_question(rng: random.Random, k: int, *, likelihoods: bool = True) -> QuestionCandidates:
    gold = " ".join(rng.sample(WORDS, rng.choice((1, 2, 3))))
    variants = [gold + s for s in rng.sample(SUFFIXES, 3)] + [rng.choice(WORDS) + " " + gold]
    wrong = [" ".join(rng.sample(WORDS, 2)) for _ in range(5)]
    pool = [gold, *variants, *wrong]
    beams: dict[tuple[str, str], list[str]] = {}
    for member in MEMBERS:
        for prompt in PROMPTS:
            if member == "a" and rng.random() < 0.5:
                top = variants[0]  # its own boundary error, and beams that repeat it
                beams[(member, prompt)] = [top, top + "다", rng.choice(pool)]
            else:
                top = gold if rng.random() < 0.6 else rng.choice(pool[1:])
                beams[(member, prompt)] = [top, *rng.sample([t for t in pool if t != top], 2)]
    texts = list(dict.fromkeys(t for ts in beams.values() for t in ts))

    def logprob(member: str, text: str) -> float:
        bonus = 1.5 if text == gold else 0.0
        if member == "a" and text.startswith(variants[0]):
            bonus += 1.5
        return min(-0.3 * (len(text) + 1) + bonus + rng.gauss(0.0, 1.5), -1e-3)

    table = {
        text: tuple(Likelihood(m, p, logprob(m, text), len(text) + 1) for m in MEMBERS for p in PROMPTS)
        for text in texts
    }
    candidates = tuple(
        Candidate(
            text, text, member, prompt, rank, -0.1 * rank, 1.0, rng.random() > 0.1,
            table[text] if likelihoods else (),
        )
        for (member, prompt), ts in beams.items()
        for rank, text in enumerate(ts)
    )  # fmt: skip
    return QuestionCandidates(f"q{k:04d}", (gold,), candidates, answer="", confidence=0.0)


def write_synthetic(path: Path, n: int, *, seed: int = 0, likelihoods: bool = True) -> Path:
    """``n`` synthetic questions as a candidates.jsonl at ``path``."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for k in range(n):
            question = synthetic_question(rng, k, likelihoods=likelihoods)
            fh.write(json.dumps(question_to_json(question), ensure_ascii=False) + "\n")
    return path
