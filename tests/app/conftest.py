"""App fixtures: a real service (tiny random model + 3 random adapters) behind FastAPI's TestClient, and
`qa-serve` processes on loopback for what only a real server shows (signals, sockets, load)."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
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
        "QA_DEFAULT_MAX_NEW_TOKENS": "4",
        "QA_LOG_LEVEL": "warning",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `qa-serve` subprocess on a loopback port; `client` talks to it once it is ready."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # not a pipe: a chatty server must never block on a full one
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.base_url, timeout=60)

    def wait_ready(self, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_server() -> Iterator[Callable[[dict[str, str]], ServerProcess]]:
    """Start `qa-serve` processes (ready before returned); every one still running is stopped at the end."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str]) -> ServerProcess:
        server = ServerProcess(env)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
