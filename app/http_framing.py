"""HTTP framing the routes do not see: HEAD on every GET route, and requests whose body length is ambiguous.

`HeadMiddleware` answers `HEAD` as the `GET` of the same URL would be answered (status and headers, with its
`Content-Length`), without a body; a path with no GET route answers as GET would (404, or 405 naming its
methods). The GET handler runs: HEAD costs what GET costs.

`FramingMiddleware` refuses a request that has both `Content-Length` and `Transfer-Encoding` (RFC 9112 6.1: a
server may reject it, and a proxy in front could read the body's end differently: request smuggling), or
more than one `Content-Length`, with 400 and `Connection: close`, before the body is read: the server then
drops the connection and whatever bytes followed. uvicorn's httptools parser refuses such a request itself
(its plain-text 400); its h11 parser, used where httptools is not installed, lets `Transfer-Encoding` win, and
this middleware is what refuses it there, and on the Ray Serve ingress. The JSON body comes from `app.errors`
(passed in as `respond`).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadMiddleware:
    """Runs a HEAD request as GET and sends the response's start (headers) but no body bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server keeps its own scope saying HEAD (uvicorn, too, then writes no body).
        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


class FramingMiddleware:
    """Refuses requests whose body length two parsers could read differently (`respond(reason)` answers)."""

    def __init__(self, app: ASGIApp, *, respond: Callable[[str], Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = ambiguous_framing(scope["headers"])
            if reason is not None:
                await self.respond(reason)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def ambiguous_framing(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why these request headers frame the body ambiguously, or None when they do not."""
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in headers)
    if lengths and chunked:
        return "headers: Content-Length and Transfer-Encoding together"
    if len(lengths) > 1 or any(b"," in value for value in lengths):
        return "headers: more than one Content-Length"
    return None
