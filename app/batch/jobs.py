"""Batch jobs run one at a time, in submission order, by ONE worker thread; their state kept on disk.

A job is a callable `work(on_progress, should_stop) -> BatchResponse` plus its bookkeeping: queued ->
running -> done | failed | cancelled | interrupted. Its result is exposed only once it is done, so nothing
half-done is ever reported as done. The worker survives anything a job raises (the job is marked failed with
the reason). On shutdown (`request_stop`, then `stop`) queued jobs and a running one (after its current chunk)
become `interrupted`, never done. With a `JobStore` every state change, the progress after each chunk and the
result are written atomically (result first), and a restart reports what was finished and marks what was not
as interrupted, with the rows it had answered; without one, jobs live in memory only.

At most `max_jobs` are kept. A finished job is kept at least `retention_s` after it finished: a new job that
finds no room is refused (`TooManyJobsError`, with the seconds until the oldest finished job may go) rather
than erase a result younger than that; past it, the oldest finished job is forgotten (files deleted) to make
room. This module knows neither HTTP nor the model.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.batch.job_errors import JobFinishedError, JobNotReadyError, TooManyJobsError, UnknownJobError
from app.batch.job_store import JobStore
from app.errors import public_error
from app.schemas import BatchResponse, JobState, JobStatusResponse, RowFailureOut
from ensemble.batch import BatchCancelledError

logger = logging.getLogger(__name__)
__all__ = ["JobFinishedError", "JobManager", "JobNotReadyError", "TooManyJobsError", "UnknownJobError"]

Work = Callable[[Callable[[int, int], None], Callable[[], bool]], BatchResponse]
"""work(on_progress(done, total), should_stop()) -> the finished result."""

FINISHED: frozenset[JobState] = frozenset({"done", "failed", "cancelled", "interrupted"})
MAX_FAILURES_LISTED = 100


@dataclass
class _Job:
    id: str
    total: int
    work: Work | None  # dropped once finished: it holds every input row
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: JobState = "queued"
    done: int = 0
    failed_rows: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: BatchResponse | None = None  # in memory only without a store
    failures: list[RowFailureOut] | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def restored(cls, status: JobStatusResponse) -> _Job:
        fields = dict(status)  # the model's own values, not a JSON dump
        return cls(id=fields.pop("job_id"), work=None, **fields)

    def snapshot(self) -> JobStatusResponse:
        fields = {name: getattr(self, name) for name in JobStatusResponse.model_fields if name != "job_id"}
        return JobStatusResponse(job_id=self.id, **fields)


class JobManager:
    """Creates, runs, reports and cancels batch jobs; every method is safe to call from any thread."""

    def __init__(self, max_jobs: int, store: JobStore | None = None, *, retention_s: float = 0.0) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs: must be >= 1; got {max_jobs}")
        if retention_s < 0:
            raise ValueError(f"retention_s: must be >= 0; got {retention_s}")
        self.max_jobs = max_jobs
        self.retention = timedelta(seconds=retention_s)
        self._store = store
        self._jobs: dict[str, _Job] = {}  # insertion order = creation order, oldest first
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop_asked_at: float | None = None
        if store is not None:
            recovered = store.recover()  # all finished now; the newest kept, the others' files deleted
            for status in recovered[: max(0, len(recovered) - max_jobs)]:
                store.delete(status.job_id)
            for status in recovered[-max_jobs:]:
                self._jobs[status.job_id] = _Job.restored(status)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="qa-batch-worker", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Refuse new jobs, mark queued ones interrupted, ask the running one to stop after its chunk."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            self._stop_asked_at = time.monotonic()
            for job in self._jobs.values():
                job.stop.set()
                if job.status == "queued":
                    self._finish(
                        job, "interrupted", "interrupted: the server shut down before the job started"
                    )
        self._queue.put(None)

    def stop(self, timeout: float = 10.0) -> None:
        """`request_stop`, then wait for the worker up to `timeout` seconds after the stop was first asked.

        A job still running then is left as it is on disk ("running"), which the next start reports as
        interrupted: never as done.
        """
        self.request_stop()
        if self._thread is not None:
            assert self._stop_asked_at is not None
            self._thread.join(max(0.0, self._stop_asked_at + timeout - time.monotonic()))
            if self._thread.is_alive():
                logger.warning("batch worker still busy %.0fs after shutdown was asked; leaving it", timeout)

    # -- client operations -------------------------------------------------------------------------------
    def submit(self, total: int, work: Work) -> JobStatusResponse:
        with self._lock:
            if self._closing.is_set():
                raise TooManyJobsError("the server is shutting down; no new batch jobs")
            while len(self._jobs) >= self.max_jobs:
                self._forget_oldest_finished()
            job = _Job(id=uuid.uuid4().hex, total=total, work=work)
            self._jobs[job.id] = job
            snapshot = job.snapshot()
            self._save(job)
        self._queue.put(job.id)
        return snapshot

    def _forget_oldest_finished(self) -> None:
        """Make room for one job (under the lock): forget the finished job whose retention ended first."""
        finished = [j for j in self._jobs.values() if j.status in FINISHED]
        if not finished:
            raise TooManyJobsError(
                f"{len(self._jobs)} batch jobs are queued or running (the limit); try again later"
            )
        oldest = min(finished, key=lambda j: j.finished_at or j.created_at)
        kept_until = (oldest.finished_at or oldest.created_at) + self.retention
        now = datetime.now(UTC)
        if kept_until > now:
            wait = math.ceil((kept_until - now).total_seconds())
            raise TooManyJobsError(
                f"{len(self._jobs)} batch jobs are kept (the limit) and no finished one is older than the "
                f"retention time ({self.retention.total_seconds():g}s); try again in {wait}s",
                retry_after=wait,
            )
        del self._jobs[oldest.id]
        if self._store is not None:
            self._store.delete(oldest.id)

    def status(self, job_id: str) -> JobStatusResponse:
        with self._lock:
            return self._get(job_id).snapshot()

    def result(self, job_id: str) -> BatchResponse:
        with self._lock:
            job = self._get(job_id)
            if job.status != "done":
                raise JobNotReadyError(job_id, job.status)
            if job.result is not None or self._store is None:
                assert job.result is not None, "a done job without a store keeps its result"
                return job.result
        try:
            return self._store.load_result(job_id)  # outside the lock: a large file; "done" means it is whole
        except (OSError, ValueError) as exc:  # removed or damaged behind our back: say so, never a 500
            logger.exception("the result file of batch job %s is unreadable", job_id)
            with self._lock:
                self._finish(job, "failed", "failed: the result file is missing or unreadable")
            raise JobNotReadyError(job_id, "failed") from exc

    def cancel(self, job_id: str) -> JobStatusResponse:
        """A queued job is cancelled at once; a running one stops after its current chunk."""
        with self._lock:
            job = self._get(job_id)
            if job.status in FINISHED:
                raise JobFinishedError(job_id, job.status)
            job.stop.set()
            if job.status == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
            return job.snapshot()

    def _save(self, job: _Job) -> None:
        """Write the job's status (under the lock, so writes of one job never overtake each other)."""
        if self._store is None:
            return
        try:
            self._store.save_status(job.snapshot())
        except OSError:  # a full disk must not kill the worker or the request; the state stays in memory
            logger.exception("could not save the status of batch job %s", job.id)

    # -- the worker --------------------------------------------------------------------------------------
    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    def _finish(self, job: _Job, status: JobState, error: str | None = None) -> None:
        job.status, job.error, job.finished_at, job.work = status, error, datetime.now(UTC), None
        self._save(job)

    def _worker(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception:  # noqa: BLE001 - bookkeeping bugs must not kill the only worker
                logger.exception("batch worker: unexpected error around job %s", job_id)

    def _run(self, job_id: str) -> None:
        with self._lock:
            found = self._jobs.get(job_id)
            if found is None or found.status != "queued" or found.work is None:  # cancelled while it waited
                return
            job, work = found, found.work
            job.status, job.started_at = "running", datetime.now(UTC)
            self._save(job)

        def on_progress(done: int, total: int) -> None:
            with self._lock:
                job.done = done
                self._save(job)  # on disk too: a restart after a kill says how far it got

        try:
            result = work(on_progress, job.stop.is_set)
            if self._store is not None:
                self._store.save_result(job.id, result)  # whole on disk before the status says done
        except BatchCancelledError as exc:
            with self._lock:
                if self._closing.is_set():
                    self._finish(
                        job, "interrupted", f"interrupted: the server shut down; {exc}; submit it again"
                    )
                else:
                    self._finish(job, "cancelled", f"cancelled: {exc}")
        except Exception as exc:  # noqa: BLE001 - recorded on the job; the worker goes on
            logger.exception("batch job %s failed", job.id)
            with self._lock:
                self._finish(job, "failed", public_error(exc))
        else:
            failures = [
                RowFailureOut(row=n, id=row.id, error=row.error)
                for n, row in enumerate(result.rows, start=1)
                if row.error is not None
            ]
            with self._lock:
                # Result and "done" change together under the lock: no reader sees one without the other.
                job.done, job.failed_rows = len(result.rows), result.failed_rows
                job.failures = failures[:MAX_FAILURES_LISTED] or None
                job.result = None if self._store is not None else result
                self._finish(job, "done")
