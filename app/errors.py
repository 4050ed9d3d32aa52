"""Maps every error to one JSON body `{"error", "error_type", "detail"}` and an HTTP status, in one place.

Bad input is a 4xx naming the field; a missing or wrong API key 401; a full queue 429 and a request past its
deadline 504; a model that is not ready, or out of accelerator memory even for one prompt, 503 (both with
Retry-After); anything unexpected is a logged 500 that leaks no internals. Domain errors stay typed in their
packages; only this module knows HTTP. The pure ASGI middlewares (`app.auth`, `app.limits`, `app.request_log`)
answer before any handler runs, so they get their responses from `unauthorized_response` /
`body_too_large_response` / `bad_framing_response` / `internal_error_response` here, and `app.connections`,
below any ASGI app, its raw bytes from `raw_error_response`.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.admission import ClientDisconnectedError, OverloadedError, RequestTimeoutError
from app.batch.input import BatchInputError
from app.batch.job_errors import JobFinishedError, JobNotReadyError, TooManyJobsError, UnknownJobError
from app.limits import BodyTooLargeError
from app.schemas import ErrorResponse
from app.service import RequestLimitError, ServiceNotReadyError, UnknownMemberError
from ensemble.errors import (
    EmptyPlanError,
    InvalidDecodingError,
    InvalidVoteConfigError,
    NoCandidatesError,
    UnknownPromptError,
)
from models.errors import (
    AdapterBaseMismatchError,
    AdapterCapacityError,
    AdapterError,
    AdapterNotFoundError,
    GenerationOutOfMemoryError,
    PromptTooLongError,
    UnknownAdapterError,
)

logger = logging.getLogger(__name__)
Handler = Callable[[Request, Any], Awaitable[JSONResponse]]


def error_body(
    status: int, error: str, error_type: str, detail: object = None, *, retry_after: int | None = None
) -> JSONResponse:
    response = JSONResponse(
        status_code=status, content={"error": error, "error_type": error_type, "detail": detail}
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


_DESCRIPTIONS = {
    400: "Body not UTF-8 JSON, or a malformed multipart form.",
    404: "Not found.",
    409: "Conflicts with the resource's state.",
    413: "Body, or a field of it, past its limit (the body names the field).",
    415: "Unsupported content type.",
    422: "Invalid field or option (the body names the field).",
    429: "Overloaded; see Retry-After.",
    503: "Model not loaded yet (see /readyz), or out of accelerator memory; see Retry-After.",
    504: "Not answered within request_timeout_s.",
}


def documented(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, all with the `ErrorResponse` body.

    Routes declare every error they can answer (FastAPI's own 422 schema is not the body this app sends);
    `descriptions` overrides the wording per status, keyed `s413=...`.
    """
    return {
        status: {"model": ErrorResponse, "description": descriptions.get(f"s{status}", _DESCRIPTIONS[status])}
        for status in statuses
    }


def unauthorized_response() -> JSONResponse:
    """The one 401: the same words whether the key was missing, malformed or wrong."""
    response = error_body(
        401,
        "unauthorized: send the API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        "unauthorized",
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def internal_error_response() -> JSONResponse:
    """The one 500: says nothing about what went wrong (the log does). The server closes the connection
    after an unhandled error, so the response says so and the client does not reuse it."""
    response = error_body(500, "internal error", "internal_error")
    response.headers["Connection"] = "close"
    return response


def raw_error_response(status: int, error: str, error_type: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response with the JSON error body and `Connection: close`, as bytes: for
    `app.connections`, which answers on the socket itself (a connection past the cap, a request too slow to
    arrive) where no ASGI app runs."""
    body = json.dumps({"error": error, "error_type": error_type, "detail": None}).encode("utf-8")
    reason = http.HTTPStatus(status).phrase
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def bad_framing_response(reason: str) -> JSONResponse:
    """The 400 of a request whose body length is ambiguous; the connection is closed after it."""
    response = error_body(400, reason, "invalid_framing")
    response.headers["Connection"] = "close"
    return response


def body_too_large_response(exc: BodyTooLargeError) -> JSONResponse:
    return error_body(413, str(exc.detail), "payload_too_large", {"field": exc.field, "limit": exc.limit})


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


def _named(status: int, error_type: str, field: str | None) -> Handler:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return error_body(status, str(exc), error_type, {"field": field} if field else None)

    return handler


async def _vote_config(_: Request, exc: InvalidVoteConfigError) -> JSONResponse:
    # The field is the setting's own (`vote.threshold`): a request's override, checked by the dataclass.
    return error_body(422, str(exc), "invalid_vote", {"field": exc.field})


async def _batch_input(_: Request, exc: BatchInputError) -> JSONResponse:
    return error_body(exc.status, str(exc), exc.error_type, exc.detail)


async def _job_state(_: Request, exc: JobNotReadyError | JobFinishedError) -> JSONResponse:
    kind = "not_ready" if isinstance(exc, JobNotReadyError) else "already_finished"
    return error_body(409, str(exc), kind, {"field": "job_id", "status": exc.status})


async def _too_many_jobs(_: Request, exc: TooManyJobsError) -> JSONResponse:
    return error_body(429, str(exc), "too_many_jobs", retry_after=exc.retry_after)


async def _not_ready(_: Request, exc: ServiceNotReadyError) -> JSONResponse:
    return error_body(503, str(exc), "not_ready", retry_after=5)


async def _too_large(_: Request, exc: BodyTooLargeError) -> JSONResponse:
    return body_too_large_response(exc)


async def _overloaded(_: Request, exc: OverloadedError) -> JSONResponse:
    return error_body(429, str(exc), "overloaded", retry_after=exc.retry_after)


async def _out_of_memory(_: Request, exc: GenerationOutOfMemoryError) -> JSONResponse:
    return error_body(503, str(exc), "out_of_memory", retry_after=10)


async def _timeout(_: Request, exc: RequestTimeoutError) -> JSONResponse:
    return error_body(504, str(exc), "timeout")


async def _gone(_: Request, exc: ClientDisconnectedError) -> JSONResponse:
    # Nobody reads this (the client left); 499 is what proxies log for "client closed request".
    return error_body(499, str(exc), "client_disconnected")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return internal_error_response()


_HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: _validation,
    StarletteHTTPException: _http,
    RequestLimitError: _limit,
    UnknownMemberError: _named(422, "unknown_adapter", "adapters"),
    UnknownPromptError: _named(422, "unknown_prompt", "prompts"),
    InvalidDecodingError: _named(422, "invalid_decoding", "decoding"),
    InvalidVoteConfigError: _vote_config,
    EmptyPlanError: _named(422, "empty_plan", None),
    NoCandidatesError: _named(422, "no_candidates", None),
    PromptTooLongError: _named(413, "prompt_too_long", "context"),
    BatchInputError: _batch_input,
    UnknownJobError: _named(404, "not_found", "job_id"),
    JobNotReadyError: _job_state,
    JobFinishedError: _job_state,
    TooManyJobsError: _too_many_jobs,
    ServiceNotReadyError: _not_ready,
    BodyTooLargeError: _too_large,
    OverloadedError: _overloaded,
    RequestTimeoutError: _timeout,
    ClientDisconnectedError: _gone,
    GenerationOutOfMemoryError: _out_of_memory,
    AdapterNotFoundError: _named(404, "adapter_not_found", "name"),
    AdapterBaseMismatchError: _named(422, "adapter_base_mismatch", "name"),
    AdapterError: _named(422, "invalid_adapter", "name"),
    AdapterCapacityError: _named(422, "adapter_capacity", "adapters"),
    UnknownAdapterError: _named(422, "unknown_adapter", "adapters"),
    Exception: _unexpected,
}


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, handler in _HANDLERS.items():
        app.add_exception_handler(exc_type, handler)  # type: ignore[arg-type]


def public_error(exc: Exception) -> str:
    """How an error reads where clients see it outside a response of its own (a failed batch row or job):
    a typed error by its class and message, anything else as an internal error that names nothing (the
    caller logs it). The same split as the handlers: what gets a 4xx/503 here may be shown, a 500 not."""
    nearest = next(t for t in type(exc).__mro__ if t in _HANDLERS)
    if nearest is Exception:
        return "internal error (the server log has the reason)"
    return f"{type(exc).__name__}: {exc}"


async def error_response(exc: Exception, request: Request) -> JSONResponse:
    """The response `install_error_handlers` gives for `exc`, for code that catches errors itself.

    `deploy`'s Ray Serve replicas answer through a handle, not HTTP: they turn what they raise into the same
    status and body here, and their ingress sends those on. The handler of the nearest class in the MRO wins,
    as in Starlette.
    """
    for exc_type in type(exc).__mro__:
        handler = _HANDLERS.get(exc_type)
        if handler is not None:
            return await handler(request, exc)
    raise TypeError(f"no error handler for {type(exc).__name__}")  # unreachable: Exception has one
