"""Dependency accessors over `app.state` (no globals): handlers declare what they need with these aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.admission import Admission
from app.batch.jobs import JobManager
from app.service import QAService
from app.settings import ServiceSettings


def get_service(request: Request) -> QAService:
    return request.app.state.service  # type: ignore[no-any-return]


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs  # type: ignore[no-any-return]


ServiceDep = Annotated[QAService, Depends(get_service)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]


def get_admission(request: Request) -> Admission:
    return request.app.state.admission  # type: ignore[no-any-return]


AdmissionDep = Annotated[Admission, Depends(get_admission)]
