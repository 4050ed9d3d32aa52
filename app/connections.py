"""Slow and surplus connections: uvicorn's HTTP protocol with a connection cap and request read deadlines.

uvicorn bounds the wait between requests on a kept-alive connection (`timeout_keep_alive`) but not how long a
request's head or body may take to arrive, nor how many connections are open: a client that sends a header
line or a body byte every few seconds holds its connection (and a file descriptor, and parser buffers)
forever. `guarded_protocol(...)` returns uvicorn's own protocol class (httptools where installed, else h11:
what uvicorn's `http="auto"` picks) with three bounds added, per connection:

- a connection opened while `max_connections` are open is answered 503 (`too_many_connections`, with
  `Retry-After`) and closed before anything is read;
- the request head (request line and headers) must be complete within `header_timeout_s` of the connection
  opening, or of the previous response's end, however the bytes trickle in; else 408 and the connection is
  closed;
- the body must be complete within `body_timeout_s` of the head; else 408 (or, when the app has already
  answered without the rest of the body, nothing more) and the connection is closed. The app then reads a
  disconnect, as if the client had left.

The deadlines are observed at the ASGI boundary (the app is called once the head is parsed; the body is done
when the app reads its last part, or the response ends), so they hold for either parser, and time spent
inside the app (queueing, generation) never counts. The raw responses' JSON bodies come from `app.errors`.
This module knows nothing of routes; `app.cli` passes it to uvicorn.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from app.errors import raw_error_response

TOO_MANY = "too many connections are open; try again later"


def guarded_protocol(
    *, max_connections: int, header_timeout_s: float, body_timeout_s: float
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the bounds above (pass it as `uvicorn.Config(http=...)`)."""
    if max_connections < 1 or header_timeout_s <= 0 or body_timeout_s <= 0:
        raise ValueError("max_connections must be >= 1 and the timeouts > 0")

    class GuardedProtocol(AutoHTTPProtocol):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._refused = False
            self.app = self._guarded(self.app)  # read by the parser for every request it starts

        # -- the connection --------------------------------------------------------------------------
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if len(self.connections) >= max_connections:
                self._refused = True
                transport.write(  # type: ignore[attr-defined]
                    raw_error_response(503, TOO_MANY, "too_many_connections", retry_after=1)
                )
                transport.close()
                return
            super().connection_made(transport)
            self._arm(header_timeout_s, "the request head was not complete in time")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        # -- the deadlines ---------------------------------------------------------------------------
        def _arm(self, seconds: float, why: str, request: _Request | None = None) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire, why, request)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, why: str, request: _Request | None) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            self.logger.info("closing a slow connection from %s: %s", self.client, why)
            if request is None or not request.answered:  # no response of the app's on its way: say why
                if request is not None:
                    request.cut = True  # the app's answer, should one come, is dropped
                self.transport.write(raw_error_response(408, f"request timeout: {why}", "request_timeout"))
            self.transport.close()

        def _guarded(self, app: ASGIApp) -> ASGIApp:
            async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
                self._disarm()  # the head is in
                request = _Request(body_done=not _has_body(scope))
                if not request.body_done:
                    self._arm(body_timeout_s, "the request body was not complete in time", request)

                async def timed_receive() -> Message:
                    message = await receive()
                    if not request.body_done and (
                        message["type"] == "http.disconnect" or not message.get("more_body", False)
                    ):
                        request.body_done = True
                        self._disarm()
                    return message

                async def timed_send(message: Message) -> None:
                    if request.cut:
                        return
                    request.answered = True
                    await send(message)
                    ended = message["type"] == "http.response.body" and not message.get("more_body", False)
                    if ended and request.body_done:  # else the body deadline still runs, then closes
                        self._arm(header_timeout_s, "the next request head was not complete in time")

                await app(scope, timed_receive, timed_send)

            return guarded

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{AutoHTTPProtocol.__name__}"
    return GuardedProtocol


@dataclass
class _Request:
    body_done: bool
    answered: bool = False  # the app has started its response
    cut: bool = False  # a deadline answered 408 instead of the app


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False
