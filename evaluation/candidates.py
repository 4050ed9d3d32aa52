"""candidates.jsonl, the saved candidates of a `qa-eval run`: one JSON line per question, read back into
`Candidate` objects and gold answers so vote rules can be re-run and fitted offline, without a GPU.

    {"id": ..., "answers": [gold, ...], "answer": ..., "confidence": ..., "error": null | "...",
     "candidates": [{"text", "raw", "adapter", "prompt", "beam_rank", "score", "grounded", "weight",
                     "likelihoods": [[member, prompt, logprob, tokens], ...]}, ...]}

`likelihoods` is absent in files written before the likelihood vote (read as none). This module only maps
JSON to candidates and back; writing a run's file is `evaluation.run.write_candidates`, using it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble.datasets import DataFormatError
from ensemble.vote import Candidate, Likelihood

CANDIDATES = "candidates.jsonl"
"""The file's name in a report folder."""


@dataclass(frozen=True)
class QuestionCandidates:
    """One question of a candidates file."""

    id: str
    answers: tuple[str, ...]
    """Gold answers (empty when the data had none)."""
    candidates: tuple[Candidate, ...]
    """The main pass's candidates, in the order the vote saw them (none for a failed row)."""
    answer: str
    """The run's own answer."""
    confidence: float
    error: str | None = None


def candidate_to_json(candidate: Candidate) -> dict[str, Any]:
    return {
        "text": candidate.text,
        "raw": candidate.raw,
        "adapter": candidate.adapter,
        "prompt": candidate.prompt,
        "beam_rank": candidate.beam_rank,
        "score": candidate.score,
        "grounded": candidate.grounded,
        "weight": candidate.weight,
        "likelihoods": [[s.member, s.prompt, s.logprob, s.tokens] for s in candidate.likelihoods],
    }


def candidate_from_json(data: Mapping[str, Any]) -> Candidate:
    """The inverse of ``candidate_to_json``; a KeyError, TypeError or ValueError on a malformed entry."""
    score = data.get("score")
    likelihoods = tuple(
        Likelihood(str(member), str(prompt), _number(logprob, "likelihoods"), int(tokens))
        for member, prompt, logprob, tokens in data.get("likelihoods") or ()
    )
    return Candidate(
        text=str(data["text"]),
        raw=str(data.get("raw", data["text"])),
        adapter=None if data.get("adapter") is None else str(data["adapter"]),
        prompt=str(data["prompt"]),
        beam_rank=int(data["beam_rank"]),
        score=None if score is None else float(score),
        weight=_number(data.get("weight", 1.0), "weight"),
        grounded=bool(data["grounded"]),
        likelihoods=likelihoods,
    )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number; got {value!r}")
    return float(value)


def question_to_json(question: QuestionCandidates) -> dict[str, Any]:
    return {
        "id": question.id,
        "answers": list(question.answers),
        "answer": question.answer,
        "confidence": question.confidence,
        "error": question.error,
        "candidates": [candidate_to_json(c) for c in question.candidates],
    }


def iter_candidates(path: Path) -> Iterator[QuestionCandidates]:
    """The questions of a candidates file in file order; DataFormatError names the bad line."""
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                yield QuestionCandidates(
                    id=str(data["id"]),
                    answers=tuple(str(a) for a in data.get("answers") or ()),
                    candidates=tuple(candidate_from_json(c) for c in data.get("candidates") or ()),
                    answer=str(data.get("answer") or ""),
                    confidence=float(data.get("confidence") or 0.0),
                    error=data.get("error"),
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataFormatError(
                    f"{path}: not a candidates line ({type(e).__name__}: {e})", line=number
                ) from e


def read_candidates(path: Path) -> list[QuestionCandidates]:
    return list(iter_candidates(path))
