"""The Ray Serve application: `build_app(args)`, the builder a Serve config's `import_path` names.

    serve run deploy/serve_config.local.yaml      # this machine: tiny-random, two CPU replicas
    serve deploy deploy/serve_config.yaml         # a running Ray cluster with GPU nodes

Two deployments: `QAIngress` (HTTP, `deploy.ingress`) in front of `QAModel` (the model replicas,
`deploy.replica`). The application arguments (`RayServeArgs`) carry the service settings, mapped onto
`app.settings.ServiceSettings` in each replica (that class stays the only reader of `QA_*` variables, which
still fill what the arguments leave out). Replica counts, autoscaling, `max_ongoing_requests` and
`ray_actor_options` (`num_gpus: 1` per model replica on GPU nodes) are deployment options: the Serve config's
`deployments:` section sets them, or `build_application`'s `model_options` / `ingress_options` from Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from app.settings import ServiceSettings
from deploy.ingress import QAIngress
from deploy.replica import QAModel


class RayServeArgs(BaseModel):
    """The application arguments (`args:` of the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="ServiceSettings fields by name (model, adapters_dir, cache_dir, default_strategy, ...), "
        "the same for the ingress and every model replica.",
    )
    max_adapter_sets_per_replica: int = Field(
        4, ge=1, description="Adapter sets a model replica keeps loaded (least recently used evicted first)."
    )
    batch_chunks_per_part: int = Field(
        4,
        ge=1,
        description="A batch job goes to the replicas in parts of this many chunks (batch_chunk_size).",
    )
    batch_parts_in_flight: int = Field(8, ge=1, description="Parts of one batch job sent out at once.")

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ServiceSettings.model_fields))
        if unknown:
            raise ValueError(f"settings: unknown ServiceSettings fields {', '.join(unknown)}")
        if "api_key" in value:
            raise ValueError(
                "settings.api_key: do not put the key in the config; set QA_API_KEY on the nodes or "
                "api_key_file (a mounted secret)"
            )
        ServiceSettings(**value)  # a bad value fails at deploy time, naming the field, not in every replica
        return value


def build_app(args: Mapping[str, Any]) -> Application:
    """The application builder `serve run` and Serve configs call with the `args:` mapping."""
    return build_application(RayServeArgs.model_validate(dict(args)))


def build_application(
    args: RayServeArgs,
    *,
    model_options: Mapping[str, Any] | None = None,
    ingress_options: Mapping[str, Any] | None = None,
) -> Application:
    """The application, with deployment options set from Python (tests, benchmarks) instead of a config."""
    model = QAModel.options(**dict(model_options or {})).bind(
        args.settings, args.max_adapter_sets_per_replica
    )
    ingress = QAIngress.options(**dict(ingress_options or {}))
    return ingress.bind(model, args.settings, args.batch_chunks_per_part, args.batch_parts_in_flight)
