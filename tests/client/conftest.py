"""A real `qa-serve` process (tiny model, 3 adapters) on a loopback port for the client tests, per module
(started by the root conftest's `serve`)."""

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def server_env(tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path_factory) -> dict[str, str]:
    return {
        "QA_MODEL": str(tiny_model_dir),
        "QA_ADAPTERS_DIR": str(tiny_adapters_dir),
        "QA_CACHE_DIR": str(tmp_path_factory.mktemp("client-cache")),
        "QA_DEFAULT_STRATEGY": "greedy",
        "QA_DEFAULT_MEMBERS": "3",
        "QA_DEFAULT_MAX_NEW_TOKENS": "3",
        "QA_BATCH_SYNC_MAX_ROWS": "2",
        "QA_LOG_LEVEL": "info",
    }


@pytest.fixture(scope="module")
def server(serve, server_env: dict[str, str]) -> Iterator:
    with serve(server_env) as running:
        yield running


API_KEY = "client-test-key-0123"


@pytest.fixture(scope="module")
def keyed_server(serve, server_env: dict[str, str]) -> Iterator:
    """The same server, requiring the API key `API_KEY`."""
    with serve({**server_env, "QA_API_KEY": API_KEY}) as running:
        yield running
