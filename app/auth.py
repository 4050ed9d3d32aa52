"""API key check: a pure ASGI middleware in front of every route but the health probes and the demo page.

When a key is configured (`QA_API_KEY` or `QA_API_KEY_FILE`), a request must carry it as
`Authorization: Bearer <key>` or `X-API-Key: <key>`; `/healthz` and `/readyz` stay open so orchestrators can
probe the process, and so do the demo page (`/`) and its files (`/static/...`), which hold no data (the page
sends the key the user types with each API call); everything else (the API docs and `/openapi.json` included)
answers 401. The check runs before the body is read. Keys are compared as SHA-256 digests with
`hmac.compare_digest`, so the time taken says nothing about how much of a key was right (not even its length),
and the 401 says nothing about which header or part was wrong. The JSON body comes from `app.errors` (passed
in as `respond`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.limits import route_path

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_OPEN_PAGES = frozenset({"/"})
_OPEN_PREFIX = "/static/"


def is_open_path(path: str) -> bool:
    """Answered without a key: the health probes, the demo page and its static files."""
    return path in OPEN_PATHS or path in _OPEN_PAGES or path.startswith(_OPEN_PREFIX)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class ApiKeyMiddleware:
    """Lets a request through only with the right key (or to an open path); else `respond()` answers it."""

    def __init__(self, app: ASGIApp, *, key: str, respond: Callable[[], Response]) -> None:
        if not key:
            raise ValueError("key: must not be empty")
        self.app = app
        self._digest = _digest(key)
        self.respond = respond

    def allowed(self, headers: Headers) -> bool:
        presented: list[str] = []
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            presented.append(token.strip())
        if "x-api-key" in headers:
            presented.append(headers["x-api-key"].strip())
        matched = False
        for candidate in presented:  # every candidate is compared: no early exit to time
            matched |= hmac.compare_digest(_digest(candidate), self._digest)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(route_path(scope)) or self.allowed(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        await self.respond()(scope, receive, send)
