"""`GET /adapters`: the adapters this server answers with (names only; clients never see or send paths)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep
from app.schemas import AdaptersResponse, ErrorResponse

router = APIRouter(tags=["adapters"])


@router.get("/adapters", response_model=AdaptersResponse, responses={503: {"model": ErrorResponse}})
def list_adapters(service: ServiceDep) -> AdaptersResponse:
    adapters = service.adapters()
    return AdaptersResponse(base_model=service.settings.model, adapters=adapters)
