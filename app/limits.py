"""The request body size limit: a pure ASGI middleware in front of every route.

A body past its limit is refused with 413 as soon as that is known: at once when Content-Length says so (the
body is never read), else when the streamed bytes pass the limit (the app's read raises `BodyTooLargeError`).
POST /batch has its own, larger limit (`batch_max_bytes`); every other route has `max_body_bytes`. The field
named is `file` for a multipart upload and `body` otherwise. Nothing is buffered here, and the JSON error body
is built by `app.errors` (passed in as `respond`), which owns every HTTP error shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def route_path(scope: Scope) -> str:
    """The request path as the routes see it (without the `root_path` a proxy mounts the app under)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class BodyTooLargeError(StarletteHTTPException):
    """A request body past its limit.

    An HTTP exception rather than a plain `ValueError` on purpose: FastAPI turns any other error raised while
    it reads a body into a 400, and re-raises HTTP exceptions untouched.
    """

    def __init__(self, field: str, limit: int) -> None:
        super().__init__(413, f"{field}: the request body is larger than the limit of {limit} bytes")
        self.field = field
        self.limit = limit


class BodyLimitMiddleware:
    """Refuses bodies past `max_bytes`, or past the route's own limit in `limits` (keyed by method, path)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        limits: Mapping[tuple[str, str], int],
        respond: Callable[[BodyTooLargeError], Response],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = dict(limits)
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], route_path(scope)), self.max_bytes)
        headers = Headers(scope=scope)
        field = "file" if headers.get("content-type", "").lower().startswith("multipart/") else "body"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self.respond(BodyTooLargeError(field, limit))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(field, limit)
            return message

        await self.app(scope, limited_receive, send)
