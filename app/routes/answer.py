"""`POST /answer`: one context + question -> the ensemble's answer (with provenance on `explain=true`).

The request is checked first (lengths in characters and tokens, members, prompts, decoding), then waits for
a generation slot (`app.admission`): 429 when the queue is full, 504 past `request_timeout_s`, dropped unrun
when its client left while it waited.
"""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.deps import AdmissionDep, ServiceDep
from app.errors import documented
from app.schemas import AnswerRequest, AnswerResponse

router = APIRouter(tags=["answer"])

ANSWER_ERRORS = documented(
    400,
    413,
    422,
    429,
    503,
    504,
    s413="Body, context or question (in characters or tokens) past its limit.",
    s422="Invalid field, unknown adapter/prompt, option past a limit.",
    s429="Every generation slot and the queue are full; see Retry-After.",
)


@router.post("/answer", response_model=AnswerResponse, responses=ANSWER_ERRORS)
async def answer(
    body: AnswerRequest, request: Request, service: ServiceDep, admission: AdmissionDep
) -> AnswerResponse:
    # Checked in the thread pool (tokenizing a long context takes a moment), before taking a queue place.
    plan = await run_in_threadpool(service.check_answer, body)
    work = functools.partial(service.answer, body, plan)
    return await admission.run(work, is_disconnected=request.is_disconnected)
