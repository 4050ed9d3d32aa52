"""Maps every error to one JSON body `{"error", "error_type", "detail"}` and an HTTP status, in one place.

Bad input is a 4xx naming the field; a model that is not ready is 503; anything unexpected is a logged 500
that leaks no internals. Domain errors stay typed in their packages; only this module knows HTTP.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batch_input import BatchInputError
from app.jobs import JobFinishedError, JobNotReadyError, TooManyJobsError, UnknownJobError
from app.service import RequestLimitError, ServiceNotReadyError, UnknownMemberError
from ensemble.errors import EmptyPlanError, InvalidDecodingError, NoCandidatesError, UnknownPromptError
from models.errors import PromptTooLongError

logger = logging.getLogger(__name__)


def error_body(status: int, error: str, error_type: str, detail: object = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": error, "error_type": error_type, "detail": detail}
    )


def _field(loc: tuple[object, ...] | list[object]) -> str:
    # ("body", "decoding", "num_beams") -> "decoding.num_beams"; keep list indexes readable: adapters[1]
    parts: list[str] = []
    for item in loc:
        if item == "body" and not parts:
            continue
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "body"


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"field": _field(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    fields = ", ".join(dict.fromkeys(d["field"] for d in detail))
    return error_body(422, f"invalid request: {fields}", "validation_error", detail)


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kinds = {
        400: "invalid_body",  # FastAPI's "error parsing the body": e.g. bytes that are not UTF-8
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }
    message = "body: could not be parsed (not UTF-8 JSON?)" if exc.status_code == 400 else str(exc.detail)
    response = error_body(exc.status_code, message, kinds.get(exc.status_code, "http_error"))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _limit(_: Request, exc: RequestLimitError) -> JSONResponse:
    kind = "payload_too_large" if exc.status == 413 else "limit_exceeded"
    return error_body(exc.status, str(exc), kind, {"field": exc.field})


def _named(status: int, error_type: str, field: str | None):  # type: ignore[no-untyped-def]
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return error_body(status, str(exc), error_type, {"field": field} if field else None)

    return handler


async def _batch_input(_: Request, exc: BatchInputError) -> JSONResponse:
    return error_body(exc.status, str(exc), exc.error_type, exc.detail)


async def _job_state(_: Request, exc: JobNotReadyError | JobFinishedError) -> JSONResponse:
    kind = "not_ready" if isinstance(exc, JobNotReadyError) else "already_finished"
    return error_body(409, str(exc), kind, {"field": "job_id", "status": exc.status})


async def _too_many_jobs(_: Request, exc: TooManyJobsError) -> JSONResponse:
    response = error_body(429, str(exc), "too_many_jobs")
    response.headers["Retry-After"] = "30"
    return response


async def _not_ready(_: Request, exc: ServiceNotReadyError) -> JSONResponse:
    response = error_body(503, str(exc), "not_ready")
    response.headers["Retry-After"] = "5"
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_body(500, "internal error", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestLimitError, _limit)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownMemberError, _named(422, "unknown_adapter", "adapters"))
    app.add_exception_handler(UnknownPromptError, _named(422, "unknown_prompt", "prompts"))
    app.add_exception_handler(InvalidDecodingError, _named(422, "invalid_decoding", "decoding"))
    app.add_exception_handler(EmptyPlanError, _named(422, "empty_plan", None))
    app.add_exception_handler(NoCandidatesError, _named(422, "no_candidates", None))
    app.add_exception_handler(PromptTooLongError, _named(413, "prompt_too_long", "context"))
    app.add_exception_handler(BatchInputError, _batch_input)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownJobError, _named(404, "not_found", "job_id"))
    app.add_exception_handler(JobNotReadyError, _job_state)  # type: ignore[arg-type]
    app.add_exception_handler(JobFinishedError, _job_state)  # type: ignore[arg-type]
    app.add_exception_handler(TooManyJobsError, _too_many_jobs)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceNotReadyError, _not_ready)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
