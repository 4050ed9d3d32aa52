"""Run a pipeline over many examples: chunked by length, one result per input row, scored on gold.

Used by `POST /batch` and `qa-eval run`, so the service and the offline report compute the same thing. A chunk
that fails is retried row by row, so one bad row (a prompt too long, say) fails only itself: the output always
has exactly one row per input row, in input order, with its id and, for a failed row, the error. A row
whose confidence is below ``BatchOptions.min_confidence`` abstains: it keeps its id, place and vote, and its
answer is "" (what prediction files write and what is scored). On gold data every answered row records
whether the vote's answer is right (``RowResult.correct``, KorQuAD exact match): what the report's
calibration is measured on. This module runs no threads and holds no state between calls; callers report
progress and cancel through callbacks.

Chunks are cut by `ensemble.chunks` across the whole batch, not in arrival order: sorted by length, each chunk
within its `ChunkLimits` (by device: questions on a GPU; padded tokens and a padding margin on a CPU). With
strategies, a chunk's greedy pass runs right after its main pass over the very same prompts, so a decoder
that keeps its last prefill (`models.decode.loop`) decodes the greedy answers on it instead of prefilling
again; `BatchResult.passes` says which strategies came from which pass.

A caller that spreads one batch over several workers (`deploy`'s Ray Serve replicas) splits it with
`split_parts` and joins the parts' results with `merge_parts`: each part is a run of whole chunks in the order
`run_batch` itself would answer them, so every generation batch, and every answer, is the one a single
`run_batch` call gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ensemble.calibration import abstains
from ensemble.chunks import ChunkLimits, char_length, cut_chunks
from ensemble.datasets import QAExample
from ensemble.metric import Metric, Scores, exact_match_korquad, score_predictions
from ensemble.pipeline import PipelineConfig, QARequest
from ensemble.plan import Decoding, Member
from ensemble.strategies import ENSEMBLE, strategy_answers
from ensemble.vote import Vote, VoteConfig


class BatchCancelledError(RuntimeError):
    """The caller asked the batch to stop (`should_stop` returned True)."""


@dataclass(frozen=True)
class BatchOptions:
    """What to run for every row."""

    members: tuple[Member, ...] | None = None
    """Ensemble members; None = the pipeline's default (every served adapter, or the base)."""
    prompts: tuple[str, ...] | None = None
    """Prompt variants; None = the pipeline's default."""
    decoding: Decoding | None = None
    """Decoding of the main pass; None = the pipeline's default (beam search)."""
    strategies: bool = False
    """Also answer per strategy. Adds a greedy pass (one output per member x prompt) beside the main pass,
    unless the main pass is already greedy; every other strategy is re-voted from the main pass."""
    chunks: ChunkLimits = field(default_factory=ChunkLimits)
    """Where the length-sorted questions are cut into generation chunks (`ensemble.chunks.chunk_limits`
    gives them by device)."""
    metric: Metric = "korquad"
    """Metric used when the examples carry gold answers."""
    vote: VoteConfig | None = None
    """How every row is voted (its strategies too); None = the pipeline's ``config.vote``."""
    min_confidence: float | None = None
    """Rows whose confidence is below this abstain (answer "", ``abstained``); None = never."""

    def __post_init__(self) -> None:
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence: must be in [0, 1]; got {self.min_confidence}")


@dataclass(frozen=True)
class RowResult:
    """The answer to one input row (or why there is none)."""

    id: str
    answer: str
    """The ensemble's answer; "" for a failed or abstained row."""
    confidence: float
    support: int
    error: str | None = None
    vote: Vote | None = None
    """The full vote (candidates with provenance, ``vote.answer`` also when abstained); None for a failed
    row."""
    strategies: dict[str, str] = field(default_factory=dict)
    """Strategy id -> answer, when requested."""
    strategy_error: str | None = None
    """Why the greedy pass failed for this row (its ``greedy:*`` strategies are then missing, scored 0)."""
    abstained: bool = False
    """The confidence was below ``BatchOptions.min_confidence``: no answer given."""
    correct: bool | None = None
    """Is the vote's answer (``vote.answer``, abstained or not) an exact match of a gold answer under the
    KorQuAD metric? None for a failed row or one without gold answers."""


@dataclass(frozen=True)
class BatchResult:
    rows: list[RowResult]
    scores: dict[str, Scores] | None
    """Strategy id (``ensemble`` always) -> EM/F1, when every example has gold answers."""
    seconds: dict[str, float]
    """Wall time of the main pass, the greedy pass (with strategies) and in all."""
    passes: dict[str, str] = field(default_factory=dict)
    """With strategies: which pass each kind of strategy came from ("greedy:*" -> "main" or "greedy",
    every other -> "main"); see `strategy_passes`."""

    @property
    def failed(self) -> list[RowResult]:
        return [row for row in self.rows if row.error is not None]


def _requests(
    examples: Sequence[QAExample],
    options: BatchOptions,
    decoding: Decoding | None,
    vote: VoteConfig | None = None,
) -> list[QARequest]:
    """One request per example; `vote` overrides `options.vote`."""
    return [
        QARequest(
            context=ex.context,
            question=ex.question,
            members=options.members,
            prompts=options.prompts,
            decoding=decoding,
            vote=vote or options.vote,
        )
        for ex in examples
    ]


def _answer_isolated(pipeline: AnswersMany, requests: list[QARequest]) -> list[Vote | Exception]:
    """All at once; if that fails, row by row so only the bad rows fail."""
    try:
        return list(pipeline.answer_many(requests))
    except Exception:  # noqa: BLE001 - the error is re-raised per row below, attached to its row
        results: list[Vote | Exception] = []
        for request in requests:
            try:
                results.append(pipeline.answer_many([request])[0])
            except Exception as exc:  # noqa: BLE001 - recorded on the row; the batch goes on
                results.append(exc)
        return results


class AnswersMany(Protocol):
    """What a batch run needs: `EnsemblePipeline`, or a micro-batcher in front of one (`engine.batcher`)."""

    config: PipelineConfig

    def answer_many(self, requests: Sequence[QARequest]) -> list[Vote]: ...


def run_batch(
    pipeline: AnswersMany,
    examples: Sequence[QAExample],
    options: BatchOptions | None = None,
    *,
    lengths: Sequence[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    describe_error: Callable[[Exception], str] | None = None,
) -> BatchResult:
    """Answer every example. `lengths` (one per example; default `char_length`) is what chunks are cut by;
    `on_progress(done, total)` runs after each chunk; `should_stop()` cancels; `describe_error` turns a
    failed row's exception into its `error` text (default: class and message; a server passes one that hides
    internals)."""
    describe = describe_error or _describe
    options = options or BatchOptions()
    total = len(examples)
    decoding = options.decoding or pipeline.config.default_decoding
    greedy = Decoding(strategy="greedy", max_new_tokens=decoding.max_new_tokens)
    greedy_pass = options.strategies and needs_greedy_pass(decoding)
    # the greedy pass only gives each member's greedy texts: counted, it needs no likelihoods scored
    counted = replace(options.vote or pipeline.config.vote, rule="count")
    main: dict[int, Vote | Exception] = {}
    extra: dict[int, Vote | Exception] = {}
    seconds = {"main": 0.0, "greedy": 0.0}
    started = time.perf_counter()
    done = 0
    for index in cut_chunks(_lengths(examples, lengths), options.chunks):
        if should_stop is not None and should_stop():
            raise BatchCancelledError(f"stopped after {done} of {total} rows")
        chunk = [examples[i] for i in index]
        t0 = time.perf_counter()
        main.update(zip(index, _answer_isolated(pipeline, _requests(chunk, options, decoding)), strict=True))
        seconds["main"] += time.perf_counter() - t0
        if greedy_pass:
            # right after the main pass, over the same prompts: a decoder that keeps its last prefill
            # decodes these on it (`models.decode.loop`), so this pass costs its steps, not a prefill
            t0 = time.perf_counter()
            extra.update(
                zip(
                    index, _answer_isolated(pipeline, _requests(chunk, options, greedy, counted)), strict=True
                )
            )
            seconds["greedy"] += time.perf_counter() - t0
        done += len(index)
        if on_progress is not None:
            on_progress(done, total)
    seconds["total"] = time.perf_counter() - started

    rows = []
    for i, ex in enumerate(examples):
        result = main[i]
        if isinstance(result, Exception):
            rows.append(RowResult(ex.id, "", 0.0, 0, error=describe(result)))
            continue
        strategies: dict[str, str] = {}
        strategy_error = None
        if options.strategies:
            greedy_vote = extra[i] if greedy_pass else result
            greedy_candidates = []
            if isinstance(greedy_vote, Vote):
                greedy_candidates = [v.candidate for v in greedy_vote.candidates]
            else:
                strategy_error = f"greedy pass: {describe(greedy_vote)}"
            strategies = strategy_answers(
                [v.candidate for v in result.candidates],
                greedy_candidates,
                options.vote or pipeline.config.vote,
                top_beam=greedy_pass,
            )
        abstained = abstains(result.confidence, options.min_confidence)
        correct = any(exact_match_korquad(result.answer, a) for a in ex.answers) if ex.answers else None
        rows.append(
            RowResult(
                ex.id,
                "" if abstained else result.answer,
                result.confidence,
                result.support,
                vote=result,
                strategies=strategies,
                strategy_error=strategy_error,
                abstained=abstained,
                correct=correct,
            )
        )
    passes = strategy_passes(decoding) if options.strategies else {}
    return BatchResult(rows=rows, scores=_scores(examples, rows, options), seconds=seconds, passes=passes)


def needs_greedy_pass(decoding: Decoding) -> bool:
    """Do the `greedy:*` strategies need a pass of their own beside a main pass of `decoding`? Not when it
    is greedy already: its candidates are the greedy answers, and it never runs twice."""
    greedy = Decoding(strategy="greedy", max_new_tokens=decoding.max_new_tokens)
    return decoding.generate_kwargs() != greedy.generate_kwargs()


def strategy_passes(decoding: Decoding) -> dict[str, str]:
    """Which pass each kind of strategy comes from, for a main pass of `decoding`: "greedy:*" from the greedy
    pass (decoded on the main pass's prefill where the decoder keeps it) or, when the main pass is greedy,
    from the main pass itself; every other strategy is re-voted from the main pass."""
    if needs_greedy_pass(decoding):
        return {"greedy:*": "greedy", "*": "main"}
    return {"greedy:*": "main", "*": "main"}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _lengths(examples: Sequence[QAExample], lengths: Sequence[int] | None) -> list[int]:
    if lengths is None:
        return [char_length(ex) for ex in examples]
    if len(lengths) != len(examples):
        raise ValueError(f"{len(lengths)} lengths for {len(examples)} examples")
    return list(lengths)


def split_parts(
    examples: Sequence[QAExample],
    chunks: ChunkLimits,
    chunks_per_part: int,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Row indexes of consecutive parts of `chunks_per_part` whole chunks each, in the order `run_batch`
    answers them.

    `run_batch` over one part's rows (in this order, with their `lengths` and the same `chunks`) cuts
    exactly the chunks a single `run_batch` over all rows cuts (`ensemble.chunks` cuts greedily from each
    chunk's start), so parts can run anywhere and `merge_parts` gives the same rows.
    """
    if chunks_per_part < 1:
        raise ValueError(f"chunks_per_part must be >= 1; got {chunks_per_part}")
    cut = cut_chunks(_lengths(examples, lengths), chunks)
    return [
        [i for chunk in cut[start : start + chunks_per_part] for i in chunk]
        for start in range(0, len(cut), chunks_per_part)
    ]


def merge_parts(
    examples: Sequence[QAExample],
    parts: Sequence[Sequence[int]],
    results: Sequence[BatchResult],
    options: BatchOptions,
) -> BatchResult:
    """One result for the whole batch from its parts' results: rows back in input order, scores over all rows,
    seconds summed (work time, not wall time, when the parts ran side by side)."""
    if len(parts) != len(results):
        raise ValueError(f"{len(parts)} parts but {len(results)} results")
    placed: dict[int, RowResult] = {}
    for index, result in zip(parts, results, strict=True):
        if len(index) != len(result.rows):
            raise ValueError(f"a part of {len(index)} rows came back with {len(result.rows)}")
        placed.update(zip(index, result.rows, strict=True))
    if sorted(placed) != list(range(len(examples))):
        raise ValueError("the parts do not cover every row exactly once")
    rows = [placed[i] for i in range(len(examples))]
    seconds: dict[str, float] = {}
    for result in results:
        for name, value in result.seconds.items():
            seconds[name] = seconds.get(name, 0.0) + value
    passes = next((r.passes for r in results if r.passes), {})
    return BatchResult(rows=rows, scores=_scores(examples, rows, options), seconds=seconds, passes=passes)


def _prediction(row: RowResult, strategy: str) -> str | None:
    if row.error is not None:
        return None  # a failed row has no prediction and scores 0, as the metric treats a missing answer
    return row.answer if strategy == ENSEMBLE else row.strategies.get(strategy)


def _scores(
    examples: Sequence[QAExample], rows: list[RowResult], options: BatchOptions
) -> dict[str, Scores] | None:
    if not examples or any(not ex.answers for ex in examples):
        return None
    gold = {ex.id: list(ex.answers) for ex in examples}
    ids = dict.fromkeys(s for row in rows for s in row.strategies)
    ids.setdefault(ENSEMBLE)
    scores = {}
    for strategy in ids:
        predictions = {row.id: p for row in rows if (p := _prediction(row, strategy)) is not None}
        scores[strategy] = score_predictions(gold, predictions, metric=options.metric)
    return scores
