"""Batch jobs kept in memory and run one at a time, in submission order, by ONE worker thread.

A job is a callable `work(on_progress, should_stop) -> BatchResponse` plus its bookkeeping: queued ->
running -> done | failed | cancelled. Its result is exposed only once it is done, so nothing half-done is ever
reported as done. The worker survives anything a job raises (the job is marked failed with the reason) and
stops when the app shuts down. This module knows neither HTTP nor the model; jobs are lost when the process
ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.schemas import BatchResponse, JobState, JobStatusResponse
from ensemble.batch import BatchCancelledError

logger = logging.getLogger(__name__)

Work = Callable[[Callable[[int, int], None], Callable[[], bool]], BatchResponse]
"""work(on_progress(done, total), should_stop()) -> the finished result."""

FINISHED: frozenset[JobState] = frozenset({"done", "failed", "cancelled"})


class UnknownJobError(KeyError):
    """No job has this id (never created, or forgotten to make room for newer ones)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job_id: no batch job {self.job_id!r} (unknown, or finished long ago and forgotten)"


class JobNotReadyError(RuntimeError):
    """The job's result was asked for before the job is done."""

    def __init__(self, job_id: str, status: JobState) -> None:
        super().__init__(f"job_id: batch job {job_id!r} is {status}; its result exists only once it is done")
        self.status = status


class JobFinishedError(RuntimeError):
    """A finished job cannot be cancelled."""

    def __init__(self, job_id: str, status: JobState) -> None:
        super().__init__(f"job_id: batch job {job_id!r} is already {status}")
        self.status = status


class TooManyJobsError(RuntimeError):
    """Every kept job is still unfinished (or the server is shutting down): try again later."""


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
    result: BatchResponse | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def snapshot(self) -> JobStatusResponse:
        return JobStatusResponse(
            job_id=self.id,
            status=self.status,
            total=self.total,
            done=self.done,
            failed_rows=self.failed_rows,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
        )


class JobManager:
    """Creates, runs, reports and cancels batch jobs; every method is safe to call from any thread."""

    def __init__(self, max_jobs: int) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs: must be >= 1; got {max_jobs}")
        self.max_jobs = max_jobs
        self._jobs: dict[str, _Job] = {}  # insertion order = creation order, oldest first
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="qa-batch-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued, ask the running job to stop after its current chunk, join the worker."""
        self._closing.set()
        with self._lock:
            for job in self._jobs.values():
                job.stop.set()
                if job.status == "queued":
                    self._finish(job, "cancelled", "the server shut down before the job started")
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("batch worker still busy %.0fs after shutdown was asked; leaving it", timeout)

    # -- client operations -------------------------------------------------------------------------------
    def submit(self, total: int, work: Work) -> JobStatusResponse:
        with self._lock:
            if self._closing.is_set():
                raise TooManyJobsError("the server is shutting down; no new batch jobs")
            while len(self._jobs) >= self.max_jobs:
                oldest = next((j for j in self._jobs.values() if j.status in FINISHED), None)
                if oldest is None:
                    raise TooManyJobsError(
                        f"{len(self._jobs)} batch jobs are queued or running (the limit); try again later"
                    )
                del self._jobs[oldest.id]
            job = _Job(id=uuid.uuid4().hex, total=total, work=work)
            self._jobs[job.id] = job
            snapshot = job.snapshot()
        self._queue.put(job.id)
        return snapshot

    def status(self, job_id: str) -> JobStatusResponse:
        with self._lock:
            return self._get(job_id).snapshot()

    def result(self, job_id: str) -> BatchResponse:
        with self._lock:
            job = self._get(job_id)
            if job.status != "done" or job.result is None:
                raise JobNotReadyError(job_id, job.status)
            return job.result

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

    # -- the worker --------------------------------------------------------------------------------------
    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    def _finish(self, job: _Job, status: JobState, error: str | None = None) -> None:
        job.status, job.error, job.finished_at, job.work = status, error, datetime.now(UTC), None

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

        def on_progress(done: int, total: int) -> None:
            with self._lock:
                job.done = done

        try:
            result = work(on_progress, job.stop.is_set)
        except BatchCancelledError as exc:
            with self._lock:
                self._finish(job, "cancelled", f"cancelled: {exc}")
        except Exception as exc:  # noqa: BLE001 - recorded on the job; the worker goes on
            logger.exception("batch job %s failed", job.id)
            with self._lock:
                self._finish(job, "failed", f"{type(exc).__name__}: {exc}")
        else:
            with self._lock:
                # Result and "done" change together under the lock: no reader sees one without the other.
                job.result, job.done, job.failed_rows = result, len(result.rows), result.failed_rows
                self._finish(job, "done")
