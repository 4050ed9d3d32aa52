"""Adapter management behind `/adapters`: list the served adapters, load one by name, unload one.

Clients name adapters; they never send paths. Loading is the engine's (`engine.Engine.load_adapter`): the
folder must lie inside the configured adapters folder (links out refused), hold safetensors weights (never
pickle), and carry a manifest for the served base, and its weights are checked before the shared model is
touched, so a refused adapter leaves the served ones as they were. Both calls are idempotent in effect:
loading a loaded adapter answers `already_loaded`; unloading one that is not loaded is a 404. This module only
shapes responses; the errors it lets through are mapped in `app.errors`.
"""

from __future__ import annotations

from app.schemas import AdapterChangeResponse, AdapterOut, AdaptersResponse
from app.service import QAService
from models.adapters.registry import AdapterSpec


def list_adapters(service: QAService) -> AdaptersResponse:
    engine = service.engine()
    out = []
    if engine.registry is not None:
        for name in engine.adapter_names:
            if name not in engine.registry:
                continue  # attached by training, not served from a folder
            out.append(adapter_out(engine.registry.get(name)))
    return AdaptersResponse(base_model=service.settings.model, adapters=out)


def adapter_out(spec: AdapterSpec) -> AdapterOut:
    """What clients see of an adapter: its manifest, never its path."""
    m = spec.manifest
    return AdapterOut(
        name=spec.name,
        prompt_style=m.prompt_style,
        weight=m.weight,
        base_model=m.base_model,
        training=dict(m.training),
    )


def load_adapter(service: QAService, name: str) -> AdapterChangeResponse:
    engine = service.engine()
    _, loaded = engine.load_adapter(name)
    status = "loaded" if loaded else "already_loaded"
    return AdapterChangeResponse(name=name, status=status, adapters=engine.adapter_names)


def unload_adapter(service: QAService, name: str) -> AdapterChangeResponse:
    engine = service.engine()
    engine.unload_adapter(name)
    return AdapterChangeResponse(name=name, status="unloaded", adapters=engine.adapter_names)
