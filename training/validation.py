"""Validation during training: answer held-out questions with the adapter being trained, score EM/F1.

The answers are produced the way the server produces them: the pipeline an `Engine` has
(`engine.builder.pipeline_on_model`, over the model being trained with its adapter attached in place) renders
and encodes the prompt, decodes greedily (left-padded batches, stop at the end of the first line), cleans each
output and snaps it to its context span, here with a one-member ensemble (this adapter, its prompt style,
greedy). Scores are the project's metric
(`ensemble.metric`, KorQuAD F1). The adapter is used in place, on the model being trained: nothing is
saved or reloaded, and this module does not decide which checkpoint wins (see `trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ensemble.datasets import QAExample
from ensemble.metric import score_predictions
from ensemble.pipeline import QARequest
from ensemble.plan import Decoding, Member


@dataclass(frozen=True)
class ValidationScores:
    exact_match: float
    f1: float
    predictions: dict[str, str]


class Validator:
    """Scores one adapter on a fixed list of questions; build it once per member (`Generator` setup is paid
    once), call it at every validation point with the model in eval mode."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        adapter: str,
        examples: Sequence[QAExample],
        *,
        prompt_style: str,
        batch_size: int,
        max_new_tokens: int,
    ) -> None:
        from engine import EngineConfig, pipeline_on_model

        if not examples:
            raise ValueError("no validation questions")
        decoding = Decoding(strategy="greedy", num_beams=1, max_new_tokens=max_new_tokens)
        self._pipeline = pipeline_on_model(
            model,
            tokenizer,
            [adapter],
            EngineConfig(default_prompts=(prompt_style,), default_decoding=decoding),
        )
        self._member = (Member(adapter=adapter),)
        # Longest first: similar lengths share a batch (less padding), and memory peaks at the first batch.
        self._examples = sorted(examples, key=lambda ex: -(len(ex.context) + len(ex.question)))
        self._gold = {ex.id: list(ex.answers) for ex in examples}
        self._batch_size = batch_size

    def __call__(self) -> ValidationScores:
        predictions: dict[str, str] = {}
        for i in range(0, len(self._examples), self._batch_size):
            chunk = self._examples[i : i + self._batch_size]
            requests = [QARequest(ex.context, ex.question, members=self._member) for ex in chunk]
            for ex, vote in zip(chunk, self._pipeline.answer_many(requests), strict=True):
                predictions[ex.id] = vote.answer
        scores = score_predictions(self._gold, predictions)
        return ValidationScores(scores.exact_match, scores.f1, predictions)
