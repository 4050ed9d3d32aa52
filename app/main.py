"""`build_app(settings)`: the app factory; the lifespan builds the service once into app.state.

Around the routes, outermost first: the request id and log line (`app.request_log`), request metrics
(`app.metrics`, served at /metrics), the API key check (`app.auth`, when a key is configured), the refusal of
ambiguous body framing and HEAD as GET (`app.http_framing`), the body size limit (`app.limits`), then
FastAPI's own error handling (`app.errors`). The lifespan owns the service (and
its micro-batcher), the batch job manager (persisted under `jobs_dir`) and the admission control of
generating requests; on shutdown it stops the job worker (a running job becomes `interrupted`) within
`drain_timeout_s`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.admission import Admission
from app.auth import OPEN_PATHS, ApiKeyMiddleware
from app.batch import job_routes
from app.batch import routes as batch
from app.batch.job_store import JobStore
from app.batch.jobs import JobManager
from app.errors import (
    bad_framing_response,
    body_too_large_response,
    install_error_handlers,
    internal_error_response,
    unauthorized_response,
)
from app.http_framing import FramingMiddleware, HeadMiddleware
from app.limits import BodyLimitMiddleware
from app.metrics import MetricsMiddleware, ServiceMetrics
from app.metrics import router as metrics_router
from app.request_log import RequestLogMiddleware
from app.routes import adapters, answer, demo, health
from app.service import QAService
from app.settings import ServiceSettings

logger = logging.getLogger(__name__)


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    api_key = settings.resolved_api_key()  # an unreadable or empty key file fails here, at start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = QAService(settings, on_batch=metrics.observe_batch, on_vote=metrics.observe_vote)
        app.state.service = service
        jobs = JobManager(
            settings.batch_max_jobs,
            JobStore(settings.resolved_jobs_dir()),
            retention_s=settings.batch_retention_s,
        )
        app.state.jobs = jobs
        app.state.admission = Admission(
            settings.max_concurrent_requests, settings.max_queue, settings.request_timeout_s
        )
        metrics.bind(service, app.state.admission)
        service.start()
        jobs.start()
        try:
            yield
        finally:
            jobs.stop(timeout=settings.drain_timeout_s)  # a running job stops after its current chunk
            app.state.admission.close()
            service.close()

    app = FastAPI(
        title="qa-ensemble",
        version=__version__,
        summary="Extractive QA by voting over LoRA adapters x prompt variants x beams of one base model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    metrics = ServiceMetrics()  # per app, not process-global: tests build many apps
    app.state.metrics = metrics
    for module in (health, answer, batch, job_routes, adapters):
        app.include_router(module.router)
    app.include_router(metrics_router)
    app.include_router(demo.router)
    app.mount("/static", demo.static_files(), name="static")
    install_http_layers(app, settings, api_key)
    return app


def install_http_layers(app: FastAPI, settings: ServiceSettings, api_key: str | None) -> None:
    """The error handlers and middlewares every HTTP front of the service has (this app and the Ray Serve
    ingress of `deploy.ingress` alike): one JSON error body, the body limits, HEAD, refused ambiguous
    framing, the API key, request ids."""
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        limits={("POST", "/batch"): max(settings.batch_max_bytes, settings.max_body_bytes)},
        respond=body_too_large_response,
    )
    app.add_middleware(HeadMiddleware)
    app.add_middleware(FramingMiddleware, respond=bad_framing_response)  # before anything reads a body
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, key=api_key, respond=unauthorized_response)
        _document_api_key(app)
    metrics: ServiceMetrics | None = getattr(app.state, "metrics", None)
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)  # counts the 401s and 413s above too
    # Added last = outermost: every response, a 401 or 413 of the middlewares above included, carries the id.
    app.add_middleware(RequestLogMiddleware, respond=internal_error_response)


def begin_shutdown(app: FastAPI) -> None:
    """First step of a graceful stop (SIGTERM): refuse new batch jobs and ask the running one to stop."""
    jobs: JobManager | None = getattr(app.state, "jobs", None)
    if jobs is not None:
        jobs.request_stop()


def _document_api_key(app: FastAPI) -> None:
    """Declare the two ways to send the key, and the 401, on every operation but the health probes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
            )
            error = {"$ref": "#/components/schemas/ErrorResponse"}
            for path, operations in schema["paths"].items():
                if path in OPEN_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
                    operation["responses"].setdefault(
                        "401",
                        {
                            "description": "Missing or wrong API key.",
                            "content": {"application/json": {"schema": error}},
                        },
                    )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
