"""`/adapters`: list the served adapters, load one from the adapters folder by name, unload one.

Names only: clients never see or send paths. Loading and unloading run in the thread pool (reading and
checking weights takes a moment) and wait for generation in progress (the generator's lock), never
interrupting it.
"""

from __future__ import annotations

from fastapi import APIRouter, Path

from app import adapter_admin
from app.deps import ServiceDep
from app.errors import documented
from app.schemas import AdapterChangeResponse, AdaptersResponse

router = APIRouter(tags=["adapters"])

NamePath = Path(
    description="An adapter's name: its folder's name inside the adapters folder.", max_length=200
)


@router.get("/adapters", response_model=AdaptersResponse, responses=documented(503))
def list_adapters(service: ServiceDep) -> AdaptersResponse:
    return adapter_admin.list_adapters(service)


@router.post(
    "/adapters/{name}/load",
    response_model=AdapterChangeResponse,
    responses=documented(
        404,
        422,
        503,
        s404="No folder of that name in the adapters folder (or no adapters folder configured).",
        s422="Refused: a bad name, a link out of the adapters folder, no safetensors weights, a bad "
        "manifest, another base, or corrupt weights. The served adapters are unchanged.",
    ),
)
def load_adapter(service: ServiceDep, name: str = NamePath) -> AdapterChangeResponse:
    """Serve `<adapters folder>/<name>`; `already_loaded` when it is served already."""
    return adapter_admin.load_adapter(service, name)


@router.delete(
    "/adapters/{name}",
    response_model=AdapterChangeResponse,
    responses=documented(404, 422, 503, s404="No adapter of that name is loaded."),
)
def unload_adapter(service: ServiceDep, name: str = NamePath) -> AdapterChangeResponse:
    """Stop serving an adapter (requests generating with it finish first)."""
    return adapter_admin.unload_adapter(service, name)
