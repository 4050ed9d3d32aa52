"""Request ids and JSON log lines: a pure ASGI middleware (outermost) and a `logging.Formatter`.

`RequestLogMiddleware` takes the caller's `X-Request-ID` when it is printable and at most 128 characters, else
makes a new one (uuid4 hex); it echoes the id on every response, the 401/413 of the inner middlewares and
errors included, keeps it in `request_id` (a contextvar) while the request runs, and logs one line per request
when it ends: method, path, status, duration, client address. It never logs request or response bodies, nor
headers (an API key travels in one). `JsonFormatter` writes every log record as one JSON object per line,
with the request id when the record was made inside a request. Configuring the handlers is `app.cli`'s job.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_CHARS = 128

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
logger = logging.getLogger("app.access")

# LogRecord attributes that are not `extra=` fields (those are written too).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


def accepted_request_id(value: str | None) -> str:
    """The caller's id when it is usable in a header and a log line, else a fresh uuid4 hex."""
    if value and len(value) <= MAX_REQUEST_ID_CHARS and value.isprintable() and value.strip() == value:
        return value
    return uuid.uuid4().hex


class RequestLogMiddleware:
    """Gives every HTTP request an id (echoed as `X-Request-ID`) and logs one line when it ends.

    An exception that escapes the app before a response started is answered with `respond()` (the 500 of
    `app.errors`), so that this response carries the id as well, and then re-raised for the server to log.
    """

    def __init__(self, app: ASGIApp, *, respond: Callable[[], Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accepted_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not response_started:
                await self.respond()(scope, receive, send_with_id)
            raise
        finally:
            client = scope.get("client")
            logger.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
            request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id (when set), extras, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # An `extra` on the request's own line; any other record made inside a request has the contextvar.
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
