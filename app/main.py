"""`build_app(settings)`: the app factory; the lifespan builds the service once into app.state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.jobs import JobManager
from app.routes import adapters, answer, batch, health
from app.service import QAService
from app.settings import ServiceSettings

logger = logging.getLogger(__name__)


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = QAService(settings)
        app.state.service = service
        jobs = JobManager(settings.batch_max_jobs)
        app.state.jobs = jobs
        service.start()
        jobs.start()
        try:
            yield
        finally:
            jobs.stop(timeout=10.0)  # a running job stops after its current chunk

    app = FastAPI(
        title="qa-ensemble",
        version="0.1.0",
        summary="Extractive QA by voting over LoRA adapters x prompt variants x beams of one base model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for module in (health, answer, batch, adapters):
        app.include_router(module.router)
    return app
