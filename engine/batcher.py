"""Micro-batching: questions that arrive at about the same time share one pipeline pass (one `generate`).

`MicroBatcher.submit(request)` queues a `QARequest` and returns a `Future` of its `Vote`. One worker thread
takes the oldest waiting request, waits at most `max_wait_ms` for company (never when `max_batch_size`
requests already wait), and answers up to `max_batch_size` of them with one `answer_many` call: the oldest
plus those closest to it in length, so a batch pads little and no request waits behind a stream of
better-matching newcomers. While a batch runs, new arrivals gather for the next one, so a busy server batches
more without waiting longer. If a batch fails as a whole, each of its requests is answered alone: one bad
request never fails the others. A request whose future was cancelled before its batch started is skipped.

`answer_many(requests)` is the same contract as `EnsemblePipeline.answer_many`, so a `/batch` job feeds the
same queue chunk by chunk, interleaved with interactive requests. This module knows neither HTTP nor torch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from ensemble.pipeline import PipelineConfig, QARequest
from ensemble.vote import Vote

logger = logging.getLogger(__name__)

AnswerMany = Callable[[Sequence[QARequest]], list[Vote]]


@dataclass(frozen=True)
class BatchRecord:
    """One pass, as reported to `on_batch` (metrics, logs)."""

    size: int
    """Requests answered together."""
    seconds: float
    waited_ms: float
    """How long the oldest request of the batch waited in the queue."""
    failed: bool
    """The pass as a whole failed and its requests were answered one by one."""


@dataclass
class _Item:
    request: QARequest
    future: Future[Vote]
    length: int
    arrived: float


def request_length(request: QARequest) -> int:
    """A cheap stand-in for the prompt's token count (characters of context and question)."""
    return len(request.context) + len(request.question)


class MicroBatcher:
    """Gathers concurrent requests into batches for one `answer_many` callable (thread-safe)."""

    def __init__(
        self,
        answer_many: AnswerMany,
        *,
        config: PipelineConfig,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size >= 1 and max_wait_ms >= 0 are required")
        self._answer_many = answer_many
        self.config = config  # read by `ensemble.batch.run_batch` for its default decoding and vote settings
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: list[_Item] = []
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="qa-microbatch", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        """Requests queued for a batch (not counting the one running)."""
        with self._cond:
            return len(self._queue)

    def submit(self, request: QARequest) -> Future[Vote]:
        future: Future[Vote] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed")
            self._queue.append(_Item(request, future, request_length(request), time.monotonic()))
            self._cond.notify()
        return future

    def answer(self, request: QARequest, timeout: float | None = None) -> Vote:
        """Submit and wait; on timeout the request is withdrawn if its batch has not started."""
        future = self.submit(request)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def answer_many(self, requests: Sequence[QARequest]) -> list[Vote]:
        """Answers in request order; raises the first request's error if any failed (like the pipeline)."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def close(self, timeout: float | None = None) -> None:
        """Stop after the batch in progress; requests still queued fail with RuntimeError."""
        with self._cond:
            self._closed = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for item in pending:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError("the service is shutting down"))
        self._worker.join(timeout)

    # -- worker --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            try:
                if live:
                    self._answer(live)
            except BaseException as exc:  # never leave a caller waiting on a future nobody will set
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            oldest = self._queue[0]  # appended in arrival order; taking items out keeps that order
            deadline = oldest.arrived + self.max_wait_s
            while len(self._queue) < self.max_batch_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            others = sorted(
                (item for item in self._queue if item is not oldest),
                key=lambda item: (abs(item.length - oldest.length), item.arrived),
            )
            batch = [oldest, *others[: self.max_batch_size - 1]]
            taken = {id(item) for item in batch}
            self._queue = [item for item in self._queue if id(item) not in taken]
            return sorted(batch, key=lambda item: item.length)

    def _answer(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        waited_ms = 1000 * (time.monotonic() - min(item.arrived for item in batch))
        failed = False
        try:
            votes = self._answer_many([item.request for item in batch])
            if len(votes) != len(batch):
                raise RuntimeError(f"answer_many returned {len(votes)} votes for {len(batch)} requests")
        except Exception as exc:  # noqa: BLE001 - the batch is retried request by request below
            failed = True
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                logger.warning("a batch of %d failed (%s); answering each alone", len(batch), exc)
                for item in batch:
                    self._answer_alone(item)
        else:
            for item, vote in zip(batch, votes, strict=True):
                item.future.set_result(vote)
        if self._on_batch is not None:
            record = BatchRecord(len(batch), time.perf_counter() - started, waited_ms, failed)
            try:
                self._on_batch(record)
            except Exception:  # a metrics hook must never stop the worker
                logger.exception("on_batch hook failed")

    def _answer_alone(self, item: _Item) -> None:
        try:
            item.future.set_result(self._answer_many([item.request])[0])
        except Exception as exc:  # noqa: BLE001 - this request's own error, delivered to its caller
            item.future.set_exception(exc)
