"""`QAClient` (sync) and `AsyncQAClient` over httpx: one method per route, errors as `QAClientError`.

Every non-2xx answer raises `QAClientError` with the status and the server's `{error, error_type, detail}`;
a connection failure raises it with `status=None`. Responses come back as the server's JSON (plain dicts):
the client does not re-validate the schema, so it keeps working when the server adds fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx

TERMINAL = frozenset({"done", "failed", "cancelled", "interrupted"})
"""Job states that never change again."""

BatchFormat = Literal["auto", "squad", "csv", "jsonl"]
ResultFormat = Literal["csv", "json"]
Progress = Callable[[dict[str, Any]], None]


class QAClientError(RuntimeError):
    """A refusal of the server (`status`, `error_type`, `detail` from its JSON body), or no connection."""

    def __init__(self, message: str, *, status: int | None, error_type: str, detail: object = None) -> None:
        super().__init__(message if status is None else f"{status} {error_type}: {message}")
        self.message = message
        self.status = status
        self.error_type = error_type
        self.detail = detail


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        raise QAClientError(
            str(body["error"]),
            status=response.status_code,
            error_type=str(body.get("error_type", "http_error")),
            detail=body.get("detail"),
        )
    raise QAClientError(response.text[:500], status=response.status_code, error_type="http_error")


def _answer_body(
    context: str,
    question: str,
    adapters: list[str] | None,
    prompts: list[str] | None,
    decoding: Mapping[str, Any] | None,
    explain: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"context": context, "question": question, "explain": explain}
    for key, value in (("adapters", adapters), ("prompts", prompts), ("decoding", decoding)):
        if value is not None:
            body[key] = list(value) if key != "decoding" else dict(value)
    return body


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _result(response: httpx.Response, format: ResultFormat) -> str | dict[str, Any]:
    return response.text if format == "csv" else response.json()


class QAClient:
    """A blocking client; use it as a context manager (or call `close()`) to release its connections."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> QAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _check(self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise QAClientError(
                str(exc) or type(exc).__name__, status=None, error_type="connection_error"
            ) from exc

    def answer(
        self,
        context: str,
        question: str,
        *,
        adapters: list[str] | None = None,
        prompts: list[str] | None = None,
        decoding: Mapping[str, Any] | None = None,
        explain: bool = False,
    ) -> dict[str, Any]:
        body = _answer_body(context, question, adapters, prompts, decoding, explain)
        return self._request("POST", "/answer", json=body).json()

    def batch_file(self, path: str | Path, *, format: BatchFormat = "auto") -> dict[str, Any]:
        """Upload a test file: the result (200) when the server answers it inline, else the job (202)."""
        path = Path(path)
        with path.open("rb") as file:
            files = {"file": (path.name, file)}
            return self._request("POST", "/batch", files=files, data={"format": format}).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/batch/{job_id}").json()

    def wait(
        self, job_id: str, *, poll: float = 0.5, timeout: float = 3600.0, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """Poll the job until it is done, failed, cancelled or interrupted; returns its last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.job(job_id)
            if on_progress is not None:
                on_progress(status)
            if status["status"] in TERMINAL:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {status['status']} after {timeout} s")
            time.sleep(poll)

    def result(self, job_id: str, format: ResultFormat = "csv") -> str | dict[str, Any]:
        """A done job's result: the `id,answer` CSV text, or the JSON result."""
        return _result(self._request("GET", f"/batch/{job_id}/result", params={"format": format}), format)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def ready(self) -> dict[str, Any]:
        """`/readyz`; while the model loads the server answers 503, which raises `QAClientError`."""
        return self._request("GET", "/readyz").json()

    def adapters(self) -> dict[str, Any]:
        return self._request("GET", "/adapters").json()


class AsyncQAClient:
    """The same methods as `QAClient`, awaitable; use it as an async context manager (or `await aclose()`)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout
        )

    async def __aenter__(self) -> AsyncQAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _check(await self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise QAClientError(
                str(exc) or type(exc).__name__, status=None, error_type="connection_error"
            ) from exc

    async def answer(
        self,
        context: str,
        question: str,
        *,
        adapters: list[str] | None = None,
        prompts: list[str] | None = None,
        decoding: Mapping[str, Any] | None = None,
        explain: bool = False,
    ) -> dict[str, Any]:
        body = _answer_body(context, question, adapters, prompts, decoding, explain)
        return (await self._request("POST", "/answer", json=body)).json()

    async def batch_file(self, path: str | Path, *, format: BatchFormat = "auto") -> dict[str, Any]:
        path = Path(path)
        files = {"file": (path.name, path.read_bytes())}
        return (await self._request("POST", "/batch", files=files, data={"format": format})).json()

    async def job(self, job_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/batch/{job_id}")).json()

    async def wait(
        self, job_id: str, *, poll: float = 0.5, timeout: float = 3600.0, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.job(job_id)
            if on_progress is not None:
                on_progress(status)
            if status["status"] in TERMINAL:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {status['status']} after {timeout} s")
            await asyncio.sleep(poll)

    async def result(self, job_id: str, format: ResultFormat = "csv") -> str | dict[str, Any]:
        response = await self._request("GET", f"/batch/{job_id}/result", params={"format": format})
        return _result(response, format)

    async def health(self) -> dict[str, Any]:
        return (await self._request("GET", "/healthz")).json()

    async def ready(self) -> dict[str, Any]:
        return (await self._request("GET", "/readyz")).json()

    async def adapters(self) -> dict[str, Any]:
        return (await self._request("GET", "/adapters")).json()
