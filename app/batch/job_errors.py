"""The typed errors of batch jobs (`app.batch.jobs`), mapped to HTTP statuses in `app.errors`."""

from __future__ import annotations

from app.schemas import JobState


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
    """No room for a new job: every kept job is unfinished or finished within the retention time (or the
    server is shutting down). `retry_after`: seconds until room may be made."""

    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
