"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the model is loaded; adapters taken
out of service at run time are listed, and the service stays ready while the others answer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import ServiceDep
from app.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
def readyz(service: ServiceDep) -> JSONResponse:
    body = ReadyResponse(
        status=service.status,
        model=service.settings.model,
        device=service.device,
        adapters=service.adapter_names(),
        faulty_adapters=service.faulty_adapters(),
        detail=service.error,
    )
    return JSONResponse(status_code=200 if service.status == "ready" else 503, content=body.model_dump())
