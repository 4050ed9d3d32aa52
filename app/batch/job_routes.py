"""`GET /batch/{id}` (a job's progress), `GET /batch/{id}/result` (JSON, or the `id,answer` CSV) and
`DELETE /batch/{id}` (cancel): the routes of batch jobs, over the `JobManager` in `app.state.jobs`.

They need no model, so the Ray Serve ingress (`deploy`), which keeps the jobs of a whole cluster, serves them
as they are. Submitting is `app.batch.routes`'s.
"""

from __future__ import annotations

import io
from typing import Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from app.deps import JobsDep
from app.errors import documented
from app.schemas import BatchResponse, JobStatusResponse
from ensemble.datasets import write_predictions_csv

router = APIRouter(tags=["batch"])


@router.get(
    "/batch/{job_id}",
    response_model=JobStatusResponse,
    responses=documented(404, s404="Unknown job."),
)
def job_status(job_id: str, jobs: JobsDep) -> JobStatusResponse:
    return jobs.status(job_id)


@router.get(
    "/batch/{job_id}/result",
    response_model=BatchResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or with format=csv the id,answer file."},
        **documented(404, 409, 422, s404="Unknown job.", s409="The job is not done (yet)."),
    },
)
def download_result(
    job_id: str, jobs: JobsDep, format: Literal["json", "csv"] = Query("json", description="json or csv.")
) -> Response:
    result = jobs.result(job_id)
    if format == "json":
        return JSONResponse(result.model_dump(mode="json"))
    buffer = io.StringIO(newline="")
    # An abstained row (answer null) is "" in the submission file, as a failed one.
    write_predictions_csv(((row.id, row.answer or "") for row in result.rows), buffer)
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="batch-{job_id}.csv"'},
    )


@router.delete(
    "/batch/{job_id}",
    response_model=JobStatusResponse,
    responses=documented(404, 409, s404="Unknown job.", s409="Already finished."),
)
def cancel_batch(job_id: str, jobs: JobsDep) -> JobStatusResponse:
    """A queued job is cancelled at once; a running one stops after its current chunk (poll its status)."""
    return jobs.cancel(job_id)
