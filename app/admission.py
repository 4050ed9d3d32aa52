"""Admission control for requests that generate: a bounded number run at once, a bounded number wait.

`Admission.run(work, is_disconnected)` runs `work` (a blocking function) on one of `max_concurrent` worker
threads, first waiting in a FIFO queue of at most `max_queue` requests; past that it refuses at once with
`OverloadedError` (429 + Retry-After), so nobody ever waits without bound. Every request has a deadline
`timeout_s` after it arrived:
- still queued at the deadline: `RequestTimeoutError`, and its work never runs;
- its client gone when its turn comes: `ClientDisconnectedError`, and its work never runs;
- still running at the deadline: `RequestTimeoutError` at once, but the work itself cannot be interrupted (a
  `generate` call runs to its end). It keeps its slot until it really ends, so the count of running work is
  always true, and its result is thrown away.
It runs on the event loop (queue bookkeeping has no lock because only the loop touches it) and knows neither
HTTP nor the model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


class OverloadedError(RuntimeError):
    """Every slot is busy and the queue is full; `retry_after` (seconds) is a fair guess of when to retry."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(TimeoutError):
    """The request was not answered within its deadline."""


class ClientDisconnectedError(ConnectionError):
    """The client went away before its work started; the work was dropped."""


@dataclass
class AdmissionStats:
    """Counters since start (read by tests and logs)."""

    admitted: int = 0
    refused: int = 0
    timed_out: int = 0
    dropped: int = 0


class Admission:
    """Bounds concurrent and queued work; one per app, used from the event loop only."""

    def __init__(self, max_concurrent: int, max_queue: int, timeout_s: float) -> None:
        if max_concurrent < 1 or max_queue < 0 or timeout_s <= 0:
            raise ValueError("max_concurrent >= 1, max_queue >= 0 and timeout_s > 0 are required")
        self.max_concurrent, self.max_queue, self.timeout_s = max_concurrent, max_queue, timeout_s
        self.stats = AdmissionStats()
        self._running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="qa-generate")
        self._seconds = 1.0  # moving average of a run, for Retry-After

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def close(self) -> None:
        """Stop taking work; work already running finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(
        self, work: Callable[[], T], *, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        await self._acquire(loop, deadline)
        try:
            if is_disconnected is not None and await is_disconnected():
                self.stats.dropped += 1
                raise ClientDisconnectedError("the client went away before its work started; dropped")
            started = time.perf_counter()
            future: Future[T] = self._executor.submit(work)
        except BaseException:
            self._release()
            raise
        self.stats.admitted += 1
        future.add_done_callback(lambda _: self._finished(loop, time.perf_counter() - started))
        result = asyncio.wrap_future(future)
        result.add_done_callback(_retrieve)  # a result nobody waits for any more must not warn when dropped
        try:
            return await asyncio.wait_for(asyncio.shield(result), deadline - loop.time())
        except TimeoutError:
            self.stats.timed_out += 1
            raise RequestTimeoutError(
                f"not answered within {self.timeout_s:g} s; the generation already started runs to its end "
                "and its result is discarded"
            ) from None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._running < self.max_concurrent and not self.waiting:
            self._running += 1
            return
        if self.waiting >= self.max_queue:
            self.stats.refused += 1
            raise OverloadedError(
                f"{self._running} requests are generating and {self.waiting} are waiting (the limit); "
                "try again later",
                retry_after=self._retry_after(),
            )
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, deadline - loop.time())  # a granted slot is handed over as is
        except TimeoutError:
            self.stats.timed_out += 1
            raise RequestTimeoutError(
                f"waited {self.timeout_s:g} s in the queue; the work never started"
            ) from None
        finally:
            if waiter in self._waiters and waiter.cancelled():
                self._waiters.remove(waiter)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the next in line
                return
        self._running -= 1

    def _finished(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        # Runs on the worker thread: hand the release to the loop, which owns the bookkeeping.
        self._seconds = 0.8 * self._seconds + 0.2 * seconds
        try:
            loop.call_soon_threadsafe(self._release)
        except RuntimeError:  # the loop is closed: the process is shutting down
            logger.debug("admission: loop closed before a slot was released")

    def _retry_after(self) -> int:
        ahead = self._running + self.waiting
        return max(1, min(60, math.ceil(self._seconds * ahead / self.max_concurrent)))


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
