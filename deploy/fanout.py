"""A batch job spread over the model replicas: parts of whole chunks, answered side by side, merged in order.

`FannedOutBatch` is the work of one job in the ingress's `JobManager` (it runs on the job worker thread, so it
blocks on Serve handles). The batch is split by `ensemble.batch.split_parts`, so every replica forms the very
generation batches one process would and the merged result equals a single-process run; at most `in_flight`
parts are out at once, all routed by the batch's adapter set. Progress counts rows of finished parts;
cancelling stops sending parts and cancels those not started (a part already generating finishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ray.serve.handle import DeploymentHandle, DeploymentResponse

from app.batch import result as batch_result
from app.batch.input import PreparedBatch
from app.schemas import BatchResponse
from ensemble.batch import BatchCancelledError, BatchResult, merge_parts, split_parts


@dataclass(frozen=True)
class FannedOutBatch:
    """The work of one batch job: `job(on_progress, should_stop)`, as `app.batch.jobs.JobManager` calls it."""

    model: DeploymentHandle
    """A handle of the `QAModel` deployment."""
    set_id: str
    """The batch's adapter set (the multiplexed model id every part is routed by)."""
    batch: PreparedBatch
    chunks_per_part: int
    in_flight: int

    def __post_init__(self) -> None:
        if self.chunks_per_part < 1 or self.in_flight < 1:
            raise ValueError(
                f"chunks_per_part and in_flight must be >= 1; got {self.chunks_per_part}, {self.in_flight}"
            )

    def __call__(
        self, on_progress: Callable[[int, int], None], should_stop: Callable[[], bool]
    ) -> BatchResponse:
        """Answer every row; raises `BatchCancelledError` when `should_stop()` says so."""
        examples, options, lengths = self.batch.examples, self.batch.options, self.batch.lengths
        parts = split_parts(examples, options.chunks, self.chunks_per_part, lengths)
        handle = self.model.options(multiplexed_model_id=self.set_id)
        started = time.perf_counter()
        results: dict[int, BatchResult] = {}
        pending: dict[int, DeploymentResponse] = {}  # part index -> its call, oldest first
        sent = done = 0
        try:
            while sent < len(parts) or pending:
                while sent < len(parts) and len(pending) < self.in_flight:
                    if should_stop():
                        raise BatchCancelledError(f"stopped after {done} of {len(examples)} rows")
                    part = parts[sent]
                    pending[sent] = handle.run_part.remote(
                        [examples[i] for i in part],
                        options,
                        None if lengths is None else [lengths[i] for i in part],
                    )
                    sent += 1
                oldest = next(iter(pending))
                _, results[oldest] = pending.pop(oldest).result()
                done += len(parts[oldest])
                on_progress(done, len(examples))
                if should_stop() and (pending or sent < len(parts)):
                    raise BatchCancelledError(f"stopped after {done} of {len(examples)} rows")
        finally:
            for response in pending.values():
                response.cancel()  # not started: dropped; already generating: runs to its end
        merged = merge_parts(examples, parts, [results[i] for i in range(len(parts))], options)
        merged = replace(merged, seconds={**merged.seconds, "total": time.perf_counter() - started})
        return batch_result.to_batch_response(
            merged, explain=self.batch.explain, strategies=options.strategies
        )
