"""App fixtures: a real service (tiny random model + 3 random adapters) behind FastAPI's TestClient, and
`qa-serve` processes on loopback for what only a real server shows (signals, sockets, load)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path_factory) -> ServiceSettings:
    return ServiceSettings(
        model=str(tiny_model_dir),
        adapters_dir=tiny_adapters_dir,
        cache_dir=tmp_path_factory.mktemp("cache"),
        load_in_background=False,
        default_max_new_tokens=6,
        # The GPU's default plan, every adapter (the CPU's default is one member, greedy, one prompt).
        default_prompts=("zero-shot", "principled"),
        default_strategy="beam",
        default_num_beams=3,
        default_members=3,
        max_context_chars=2_000,
        max_question_chars=200,
        max_beams_limit=4,
        max_new_tokens_limit=16,
        max_candidates_limit=40,
    )


@pytest.fixture(scope="session")
def client(tiny_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(build_app(tiny_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def tiny_server_env(tiny_model_dir: Path, tiny_adapters_dir: Path) -> dict[str, str]:
    """QA_* variables for a `qa-serve` process on the tiny model and its adapters (greedy, short answers)."""
    return {
        "QA_MODEL": str(tiny_model_dir),
        "QA_ADAPTERS_DIR": str(tiny_adapters_dir),
        "QA_DEFAULT_STRATEGY": "greedy",
        "QA_DEFAULT_PROMPTS": "zero-shot,principled",
        "QA_DEFAULT_MEMBERS": "3",
        "QA_DEFAULT_MAX_NEW_TOKENS": "4",
        "QA_LOG_LEVEL": "warning",
    }
