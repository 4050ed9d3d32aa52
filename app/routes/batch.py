"""`POST /batch` (a test file or JSON rows -> one answer per row, scored on gold) and its job routes.

Small batches answer inline (200); larger ones become a job (202 + Location) that `GET /batch/{id}` follows,
`GET /batch/{id}/result` downloads (JSON, or the `id,answer` submission CSV) once done, and `DELETE` cancels.
HTTP only: reading a capped body and choosing JSON or multipart; validation is `app.batch_input`'s, running
`app.batch_result`'s, the job queue `app.jobs`'.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import batch_input, batch_result
from app.batch_input import BatchInputError
from app.deps import AdmissionDep, JobsDep, ServiceDep
from app.errors import documented
from app.schemas import BatchJobResponse, BatchRequest, BatchResponse, JobStatusResponse
from ensemble.datasets import write_predictions_csv

router = APIRouter(tags=["batch"])
_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "SQuAD JSON, CSV or JSON Lines (UTF-8).",
        },
        "format": {"type": "string", "enum": ["auto", "squad", "csv", "jsonl"], "default": "auto"},
        "adapters": {"type": "string", "description": "Comma-separated adapter names."},
        "prompts": {"type": "string", "description": "Comma-separated prompt variants."},
        "decoding": {"type": "string", "description": 'JSON object, e.g. {"strategy": "greedy"}.'},
        "strategies": {"type": "boolean"},
        "explain": {"type": "boolean"},
        "metric": {"type": "string", "enum": ["korquad", "squad"], "default": "korquad"},
    },
}
_JSON_SCHEMA = BatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_JSON_SCHEMA.pop("$defs", None)  # the nested models are components already (through /answer)
_ERRORS = documented(
    400,
    413,
    415,
    422,
    429,
    503,
    504,
    s413="Body, row count, context or question past a limit.",
    s415="Neither application/json nor multipart/form-data.",
    s422="Bad file or rows (naming row and field), bad option.",
    s429="Too many unfinished jobs, or (inline) a full queue; see Retry-After.",
    s504="An inline batch not answered within request_timeout_s.",
)


@router.post(
    "/batch",
    response_model=BatchResponse,
    responses={202: {"model": BatchJobResponse, "description": "Queued as a job."}, **_ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _JSON_SCHEMA},
                "multipart/form-data": {"schema": _FORM_SCHEMA},
            },
        }
    },
)
async def submit_batch(
    request: Request, service: ServiceDep, jobs: JobsDep, admission: AdmissionDep
) -> JSONResponse:
    settings = service.settings
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(
        request, settings.batch_max_bytes, "file" if "multipart" in media_type else "body"
    )
    if media_type == "application/json":
        batch = await run_in_threadpool(batch_input.from_json, body, service)
    elif media_type == "multipart/form-data":
        form = await _form(request, body)
        try:
            options, upload = batch_input.form_options(form)
            data = await upload.read()
        finally:
            await form.close()
        batch = await run_in_threadpool(batch_input.from_upload, data, upload.filename, options, service)
    else:
        raise HTTPException(
            415, f"content-type: send application/json or multipart/form-data, not {media_type!r}"
        )

    if len(batch.examples) <= settings.batch_sync_max_rows:
        # Inline batches take generation slots like /answer does (429 when full, 504 past the deadline).
        work = functools.partial(batch_result.run, service, batch)
        result = await admission.run(work, is_disconnected=request.is_disconnected)
        return JSONResponse(result.model_dump(mode="json"))
    job = jobs.submit(len(batch.examples), functools.partial(batch_result.run, service, batch))
    status_url = f"{request.scope.get('root_path', '')}/batch/{job.job_id}"
    accepted = BatchJobResponse(
        job_id=job.job_id,
        status=job.status,
        total=job.total,
        status_url=status_url,
        result_url=f"{status_url}/result",
    )
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": status_url})


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
    write_predictions_csv(((row.id, row.answer) for row in result.rows), buffer)
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


# -- reading the request ---------------------------------------------------------------------------------
async def _read_body(request: Request, limit: int, field: str) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes (whatever Content-Length says)."""
    declared = request.headers.get("content-length", "")
    too_large = BatchInputError(
        f"{field}: the request body is larger than the limit of {limit} bytes",
        status=413,
        error_type="payload_too_large",
        field=field,
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request, body: bytes) -> FormData:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except StarletteHTTPException as exc:  # Starlette reports a malformed multipart body as a 400
        raise BatchInputError(
            f"body: malformed multipart form: {exc.detail}",
            status=400,
            error_type="invalid_body",
            field="body",
        ) from exc
