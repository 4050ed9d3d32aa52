"""`Reply`: what a model replica sends back to the ingress through a Serve handle, and how it becomes HTTP.

A replica answers with the status and JSON body the single-process app would send (errors mapped by
`app.errors`, the one place that knows HTTP statuses), plus which replica answered. Exceptions never cross
the handle: typed errors do not survive pickling with their fields, and the ingress should not have to know
them. A batch too large to answer inline comes back prepared, for the ingress to run as a job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request

from app.batch.input import PreparedBatch
from app.errors import error_response

REPLICA_HEADER = "X-Replica"
"""The response header naming the model replica that answered (Serve's replica id)."""
_KEPT_HEADERS = ("retry-after", "www-authenticate")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    """The JSON body (already `model_dump(mode="json")`-ed)."""
    replica: str
    headers: dict[str, str] = field(default_factory=dict)
    prepared: PreparedBatch | None = None
    """A validated batch past `batch_sync_max_rows`: not answered, to be run as a job by the ingress."""

    def to_response(self) -> JSONResponse:
        return JSONResponse(
            self.body, status_code=self.status, headers={**self.headers, REPLICA_HEADER: self.replica}
        )


async def error_reply(exc: Exception, *, path: str, replica: str) -> Reply:
    """The single-process app's answer to `exc` on `POST path`, as a `Reply`."""
    request = Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""})
    response = await error_response(exc, request)
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    return Reply(
        status=response.status_code, body=json.loads(response.body), replica=replica, headers=headers
    )
