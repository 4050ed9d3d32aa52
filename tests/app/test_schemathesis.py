"""Property-based API test: schemathesis drives every operation of the served OpenAPI spec (tiny model).

Each operation gets a bounded, derandomized set of generated requests, valid (positive) and invalid
(negative); every response must be a non-5xx that matches the status codes, content types and schemas the
spec declares. The app runs in-process (ASGI, no sockets) with small limits, so the whole run stays within a
couple of minutes on 2 cores. Hypothesis drives schemathesis's strategies directly: its pytest plugin does not
work with this pytest.
"""

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import build_app
from app.settings import ServiceSettings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 25
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability-schemathesis.json"
SENT: Counter = Counter()  # "METHOD path mode" -> requests sent
STATUSES: Counter = Counter()


def can_be_invalid(operation: dict) -> bool:
    """Invalid requests exist only for a body or a constrained parameter (any string is a valid job id)."""
    if operation.get("requestBody"):
        return True
    schemas = [p.get("schema", {}) for p in operation.get("parameters", [])]
    return any(s.get("type") != "string" or set(s) - {"type", "title", "description"} for s in schemas)


# The spec does not depend on the settings, so the operations are known without loading a model.
SPEC = build_app(ServiceSettings(api_key=None, api_key_file=None)).openapi()
CASES = [
    (method.upper(), path, mode)
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or can_be_invalid(operation)
]


@pytest.fixture(scope="module")
def api_schema(tiny_settings: ServiceSettings, tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    settings = tiny_settings.model_copy(
        update={
            "jobs_dir": tmp_path_factory.mktemp("schemathesis-jobs"),
            "default_strategy": "greedy",
            "default_prompts": ("zero-shot",),
            "default_max_new_tokens": 2,
            "batch_sync_max_rows": 2,
            "batch_max_rows": 4,
            "request_timeout_s": 30.0,
        }
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", build_app(settings))
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()
    if os.environ.get("QA_WRITE_BENCH") == "1":  # the figures in docs/reliability.md
        report = {
            "max_examples": MAX_EXAMPLES,
            "requests": sum(SENT.values()),
            "by_operation": dict(sorted(SENT.items())),
            "statuses": {str(k): v for k, v in sorted(STATUSES.items())},
        }
        RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES]
)
def test_every_operation_conforms_and_never_5xx(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def run(case):
        response = case.call_and_validate(checks=CHECKS)
        SENT[f"{method} {path} {mode.value}"] += 1
        STATUSES[response.status_code] += 1

    run()
