"""`POST /batch` (a test file or JSON rows -> one answer per row, scored on gold).

Small batches answer inline (200); larger ones become a job (202 + Location) that the routes of
`app.batch.job_routes` follow, download and cancel. HTTP only: reading a capped body and choosing JSON or
multipart (`receive_batch`, which the Ray Serve ingress in `deploy` uses too); validation is
`app.batch.input`'s, running `app.batch.result`'s, the job queue `app.batch.jobs`'.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batch import input as batch_input
from app.batch import result as batch_result
from app.batch.input import BatchInputError, ReceivedBatch
from app.deps import AdmissionDep, JobsDep, ServiceDep
from app.errors import documented
from app.schemas import BatchJobResponse, BatchRequest, BatchResponse, JobStatusResponse
from app.settings import ServiceSettings

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
        "vote": {"type": "string", "description": 'JSON object of vote overrides, e.g. {"threshold": 90}.'},
        "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
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


BATCH_ROUTE: dict[str, Any] = {
    "response_model": BatchResponse,
    "responses": {202: {"model": BatchJobResponse, "description": "Queued as a job."}, **_ERRORS},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _JSON_SCHEMA},
                "multipart/form-data": {"schema": _FORM_SCHEMA},
            },
        }
    },
}
"""The OpenAPI description of `POST /batch`, shared with the Ray Serve ingress."""


@router.post("/batch", **BATCH_ROUTE)
async def submit_batch(
    request: Request, service: ServiceDep, jobs: JobsDep, admission: AdmissionDep
) -> JSONResponse:
    received = await receive_batch(request, service.settings)
    batch = await run_in_threadpool(received.prepare, service)
    if len(batch.examples) <= service.settings.batch_sync_max_rows:
        # Inline batches take generation slots like /answer does (429 when full, 504 past the deadline).
        work = functools.partial(batch_result.run, service, batch)
        result = await admission.run(work, is_disconnected=request.is_disconnected)
        return JSONResponse(result.model_dump(mode="json"))
    job = jobs.submit(len(batch.examples), functools.partial(batch_result.run, service, batch))
    return accepted(request, job)


def accepted(request: Request, job: JobStatusResponse) -> JSONResponse:
    """The 202 for a batch that became a job, with where to follow it."""
    status_url = f"{request.scope.get('root_path', '')}/batch/{job.job_id}"
    body = BatchJobResponse(
        job_id=job.job_id,
        status=job.status,
        total=job.total,
        status_url=status_url,
        result_url=f"{status_url}/result",
    )
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": status_url})


# -- reading the request ---------------------------------------------------------------------------------
async def receive_batch(request: Request, settings: ServiceSettings) -> ReceivedBatch:
    """The body as JSON rows or one upload with its form options; 413 past `batch_max_bytes`, 415 for
    another media type, 400/422 for a malformed form. Nothing about the rows is checked yet."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    field = "file" if "multipart" in media_type else "body"
    body = await _read_body(request, settings.batch_max_bytes, field)
    if media_type == "application/json":
        return ReceivedBatch(json_body=body)
    if media_type != "multipart/form-data":
        raise HTTPException(
            415, f"content-type: send application/json or multipart/form-data, not {media_type!r}"
        )
    form = await _form(request, body)
    try:
        options, upload = batch_input.form_options(form)
        data = await upload.read()
    finally:
        await form.close()
    return ReceivedBatch(upload=data, filename=upload.filename, form=options)


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
