"""Run a `PreparedBatch` through `ensemble.batch.run_batch` (via the service) and shape its `BatchResponse`.

The same function answers a small batch inline and runs a large one as a job, so both have one JSON shape.
No batching of its own happens here (chunking, row isolation and scoring are `ensemble.batch`'s); no state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

from app.batch.input import PreparedBatch
from app.errors import public_error
from app.schemas import BatchResponse, BatchRowOut, ScoresOut
from app.service import QAService, to_candidates, to_clusters
from ensemble.batch import BatchResult

logger = logging.getLogger(__name__)


def run(
    service: QAService,
    batch: PreparedBatch,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResponse:
    """Answer every row; raises `ensemble.batch.BatchCancelledError` when `should_stop()` says so."""
    result = service.run_batch(
        batch.examples,
        batch.options,
        lengths=batch.lengths,
        on_progress=on_progress,
        should_stop=should_stop,
        describe_error=_row_error,
    )
    return to_batch_response(result, explain=batch.explain, strategies=batch.options.strategies)


def _row_error(exc: Exception) -> str:
    """A failed row's error as the client sees it: typed errors say what they are, others nothing."""
    message = public_error(exc)
    if message.startswith("internal error"):
        logger.error("a batch row failed", exc_info=exc)
    return message


def to_batch_response(result: BatchResult, *, explain: bool, strategies: bool) -> BatchResponse:
    rows = [
        BatchRowOut(
            id=row.id,
            answer=None if row.abstained else row.answer,
            abstained=row.abstained,
            confidence=row.confidence,
            support=row.support,
            clusters=to_clusters(row.vote) if row.vote is not None and (explain or row.abstained) else None,
            error=row.error,
            strategies=dict(row.strategies) if strategies else None,
            candidates=to_candidates(row.vote) if explain and row.vote is not None else None,
        )
        for row in result.rows
    ]
    scores = None
    if result.scores is not None:
        scores = {name: ScoresOut(**asdict(score)) for name, score in result.scores.items()}
    return BatchResponse(
        rows=rows,
        scores=scores,
        failed_rows=len(result.failed),
        seconds={name: round(value, 3) for name, value in result.seconds.items()},
        passes=dict(result.passes) if strategies else None,
    )
