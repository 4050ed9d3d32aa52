"""`POST /answer`: one context + question -> the ensemble's answer (with provenance on `explain=true`)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep
from app.schemas import AnswerRequest, AnswerResponse, ErrorResponse

router = APIRouter(tags=["answer"])

_ERRORS: dict[int | str, dict[str, object]] = {
    413: {"model": ErrorResponse, "description": "Context, question or prompt too long."},
    422: {
        "model": ErrorResponse,
        "description": "Invalid field, unknown adapter/prompt, option past a limit.",
    },
    503: {"model": ErrorResponse, "description": "Model not loaded yet (see /readyz)."},
}


@router.post("/answer", response_model=AnswerResponse, responses=_ERRORS)
def answer(request: AnswerRequest, service: ServiceDep) -> AnswerResponse:
    # A plain `def`: FastAPI runs it in its thread pool, so generation never blocks the event loop.
    return service.answer(request)
