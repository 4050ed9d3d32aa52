"""Deploy fixtures: how two answers are compared (the Ray replicas and the replica service against the
single-process service)."""

from collections.abc import Callable
from typing import Any

import pytest


def _comparable(body: Any) -> Any:
    """A response body without what differs from run to run (times), its numbers to 3 decimals: the stacked
    LoRA sums in an order that follows the adapters resident, which moves a log-probability by ~1e-7."""
    if isinstance(body, dict):
        return {k: _comparable(v) for k, v in body.items() if k not in ("elapsed_ms", "seconds")}
    if isinstance(body, list):
        return [_comparable(v) for v in body]
    return round(body, 3) if isinstance(body, float) else body


@pytest.fixture(scope="session")
def comparable() -> Callable[[Any], Any]:
    return _comparable
