"""`QAIngress`: the HTTP front of the Ray Serve application, with the single-process service's API.

The same request and response schemas (`app.schemas`), the same middlewares and JSON error bodies
(`app.main.install_http_layers`), the same `/batch` body reading (`app.batch.routes.receive_batch`) and the
same job routes (`app.batch.job_routes`), so a client cannot tell the two apart, except that every answer
names the model replica that gave it in `X-Replica`. The ingress holds no model: `/answer` and `/batch` go
to the `QAModel` deployment through a Serve handle, with the request's adapter set as the multiplexed model
id (`deploy.adapter_sets.adapter_set_id`), so Serve routes them to replicas that already hold those adapters.
Batch jobs live here (one `JobManager`, persisted under `jobs_dir` on the ingress node) and are spread over
the replicas part by part (`deploy.fanout`). The admin routes that change one process's adapters
(`POST /adapters/{name}/load`, `DELETE /adapters/{name}`) mean nothing here and are not served: replicas load
adapters from the adapters folder as requests name them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from app import __version__
from app.admission import OverloadedError, RequestTimeoutError
from app.batch import job_routes
from app.batch.job_store import JobStore
from app.batch.jobs import JobManager
from app.batch.routes import BATCH_ROUTE, accepted, receive_batch
from app.errors import documented
from app.main import install_http_layers
from app.routes import demo
from app.routes.answer import ANSWER_ERRORS
from app.schemas import AdaptersResponse, AnswerRequest, AnswerResponse, HealthResponse, ReadyResponse
from app.settings import ServiceSettings
from deploy.adapter_sets import adapter_set_id
from deploy.fanout import FannedOutBatch
from deploy.reply import Reply

READY_TIMEOUT_S = 10.0
"""How long `/readyz` and `/adapters` wait for a model replica."""

router = APIRouter()


@dataclass(frozen=True)
class Ingress:
    """What the routes need, kept in `app.state.ingress`."""

    model: DeploymentHandle
    settings: ServiceSettings
    jobs: JobManager
    chunks_per_part: int
    """Chunks (of `batch_chunk_size` rows) per part of a batch job sent to one replica."""
    parts_in_flight: int
    """Parts of one batch job out at once."""


def _ingress(request: Request) -> Ingress:
    return request.app.state.ingress  # type: ignore[no-any-return]


IngressDep = Annotated[Ingress, Depends(_ingress)]


async def _call(response: DeploymentResponse, timeout_s: float | None = None) -> Any:
    """The result of a handle call; Serve's back-pressure becomes the service's 429, the deadline its 504."""

    async def result() -> Any:
        return await response

    try:
        return await asyncio.wait_for(result(), timeout_s)
    except BackPressureError as exc:
        raise OverloadedError(f"every model replica is busy and their queues are full: {exc}", 5) from exc
    except TimeoutError:
        response.cancel()
        raise RequestTimeoutError(f"not answered within {timeout_s:g} s") from None


@router.get("/healthz", response_model=HealthResponse, tags=["health"])
def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, tags=["health"]
)
async def readyz(ingress: IngressDep) -> JSONResponse:
    """Ready once a model replica answers (Serve routes only to replicas whose model is loaded)."""
    try:
        body: ReadyResponse = await _call(ingress.model.ready.remote(), READY_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
        body = ReadyResponse(
            status="loading", model=ingress.settings.model, detail=f"no model replica answered: {exc}"
        )
    return JSONResponse(status_code=200 if body.status == "ready" else 503, content=body.model_dump())


@router.get("/adapters", response_model=AdaptersResponse, responses=documented(503), tags=["adapters"])
async def list_adapters(ingress: IngressDep) -> AdaptersResponse:
    """The adapters requests may name (each replica loads them as they are asked for)."""
    return await _call(ingress.model.adapters.remote(), READY_TIMEOUT_S)  # type: ignore[no-any-return]


@router.post("/answer", response_model=AnswerResponse, responses=ANSWER_ERRORS, tags=["answer"])
async def answer(body: AnswerRequest, ingress: IngressDep) -> Response:
    model = ingress.model.options(multiplexed_model_id=adapter_set_id(body.adapters))
    reply: Reply = await _call(model.answer.remote(body), ingress.settings.request_timeout_s)
    return reply.to_response()


@router.post("/batch", **BATCH_ROUTE, tags=["batch"])
async def submit_batch(request: Request, ingress: IngressDep) -> Response:
    """Checked and, when small, answered by one replica; a larger batch becomes a job spread over them all."""
    received = await receive_batch(request, ingress.settings)
    set_id = adapter_set_id(received.adapters)
    # No deadline here: checking thousands of rows may take a while; an inline run has the replica's own.
    reply: Reply = await _call(
        ingress.model.options(multiplexed_model_id=set_id).submit_batch.remote(received)
    )
    if reply.prepared is None:
        return reply.to_response()
    work = FannedOutBatch(
        ingress.model, set_id, reply.prepared, ingress.chunks_per_part, ingress.parts_in_flight
    )
    job = ingress.jobs.submit(len(reply.prepared.examples), work)
    return accepted(request, job)


def build_ingress_app(ingress: Ingress) -> FastAPI:
    """The FastAPI app of the ingress; its lifespan runs the batch job worker."""
    settings = ingress.settings
    api_key = settings.resolved_api_key()  # an unreadable or empty key file fails here, at start

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ingress.jobs.start()
        try:
            yield
        finally:
            ingress.jobs.stop(timeout=settings.drain_timeout_s)  # a running job stops after its current part

    app = FastAPI(
        title="qa-ensemble",
        version=__version__,
        summary="Extractive QA by voting over LoRA adapters x prompt variants x beams, served on Ray Serve.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.jobs = ingress.jobs  # for the job routes of app.batch.job_routes
    app.state.ingress = ingress
    app.include_router(router)
    app.include_router(job_routes.router)
    app.include_router(demo.router)
    app.mount("/static", demo.static_files(), name="static")
    install_http_layers(app, settings, api_key)
    return app


@serve.deployment(name="QAIngress", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class QAIngress:
    """One ingress replica (batch jobs live in it: keep one, see the README)."""

    def __init__(
        self,
        model: DeploymentHandle,
        settings: Mapping[str, Any],
        chunks_per_part: int = 4,
        parts_in_flight: int = 8,
    ) -> None:
        service_settings = ServiceSettings(**settings)
        jobs = JobManager(
            service_settings.batch_max_jobs,
            JobStore(service_settings.resolved_jobs_dir()),
            retention_s=service_settings.batch_retention_s,
        )
        self.ingress = Ingress(model, service_settings, jobs, chunks_per_part, parts_in_flight)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_ingress_app(self.ingress)
