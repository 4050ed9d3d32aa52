"""Batch jobs on disk, so a restart never loses a finished result nor reports a half-written one as done.

Under `jobs_dir`, each job has `<id>.json` (its status, the `JobStatusResponse` fields) and, once it is done,
`<id>.result.json` (its `BatchResponse`). Every write goes to a temporary file in the same folder, is
flushed and fsynced, then `os.replace`d over the target: a reader or a restart sees the old file or the new
one, never a torn one. The job manager writes a job's result BEFORE its status says done, so "done" on disk
always has a whole result beside it.

`recover()` runs once at start: jobs found `queued` or `running` (the process stopped under them) become
`interrupted` (their input rows were never kept, so they cannot be re-run: the client resubmits), a `done` job
whose result is missing or unreadable becomes `failed`, and unreadable status files are set aside as
`<name>.corrupt`. One process per folder: two servers sharing one would mark each other's jobs interrupted.
This module knows nothing of HTTP or of running jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from app.schemas import BatchResponse, JobStatusResponse

logger = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobStore:
    """Reads and atomically writes job status and result files in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def save_status(self, status: JobStatusResponse) -> None:
        self._write(self._status_path(status.job_id), status.model_dump_json().encode("utf-8"))

    def save_result(self, job_id: str, result: BatchResponse) -> None:
        self._write(self._result_path(job_id), result.model_dump_json().encode("utf-8"))

    def load_result(self, job_id: str) -> BatchResponse:
        """The stored result; raises OSError or ValueError when it is missing or unreadable."""
        return BatchResponse.model_validate_json(self._result_path(job_id).read_bytes())

    def delete(self, job_id: str) -> None:
        for path in (self._status_path(job_id), self._result_path(job_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def recover(self) -> list[JobStatusResponse]:
        """Every stored job, oldest first, with unfinished ones marked interrupted (and saved so)."""
        jobs = []
        for path in sorted(self.root.glob("*.json")):
            job_id = path.name.removesuffix(".json")
            if not _JOB_ID.match(job_id):
                continue  # a result file, or something that is not ours
            try:
                status = JobStatusResponse.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                logger.warning("job file %s is unreadable (%s); set aside as .corrupt", path.name, exc)
                os.replace(path, path.with_name(path.name + ".corrupt"))
                continue
            repaired = self._repaired(status)
            if repaired is not status:
                self.save_status(repaired)
            jobs.append(repaired)
        for path in self.root.glob("*.result.json"):
            if not self._status_path(path.name.removesuffix(".result.json")).exists():
                path.unlink()  # a result whose job never got to "done": not reported, not kept
        for path in self.root.glob(".*.tmp"):
            path.unlink()  # a write the process did not finish
        return sorted(jobs, key=lambda s: s.created_at)

    def _repaired(self, status: JobStatusResponse) -> JobStatusResponse:
        now = datetime.now(UTC)
        if status.status in ("queued", "running"):
            reason = (
                f"interrupted: the server stopped while the job was {status.status} "
                f"({status.done} of {status.total} rows answered, not kept); submit the batch again"
            )
            return status.model_copy(update={"status": "interrupted", "error": reason, "finished_at": now})
        if status.status == "done":
            try:
                self.load_result(status.job_id)
            except (OSError, ValueError) as exc:
                reason = f"failed: the result file is missing or unreadable after a restart ({exc})"
                return status.model_copy(update={"status": "failed", "error": reason, "finished_at": now})
        return status

    def _status_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def _result_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.result.json"

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
