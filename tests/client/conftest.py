"""A real `qa-serve` process (tiny model, 3 adapters) on a loopback port for the client tests, per module."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest


@dataclass
class Server:
    url: str
    log: IO[bytes]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(env: dict[str, str], *, ready_within: float = 120) -> Iterator[Server]:
    port = _free_port()
    log = tempfile.TemporaryFile()  # not a pipe: a chatty server must never block on a full one
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            assert proc.poll() is None, server.output()
            try:
                if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server_env(tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path_factory) -> dict[str, str]:
    return {
        "QA_MODEL": str(tiny_model_dir),
        "QA_ADAPTERS_DIR": str(tiny_adapters_dir),
        "QA_CACHE_DIR": str(tmp_path_factory.mktemp("client-cache")),
        "QA_DEFAULT_STRATEGY": "greedy",
        "QA_DEFAULT_MAX_NEW_TOKENS": "3",
        "QA_BATCH_SYNC_MAX_ROWS": "2",
        "QA_LOG_LEVEL": "info",
    }


@pytest.fixture(scope="module")
def server(server_env: dict[str, str]) -> Iterator[Server]:
    with serving(server_env) as running:
        yield running


API_KEY = "client-test-key-0123"


@pytest.fixture(scope="module")
def keyed_server(server_env: dict[str, str]) -> Iterator[Server]:
    """The same server, requiring the API key `API_KEY`."""
    with serving({**server_env, "QA_API_KEY": API_KEY}) as running:
        yield running
