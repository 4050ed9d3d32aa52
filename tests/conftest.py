"""Shared fixtures: a tiny random Qwen2 model folder and LoRA adapters for it, built in code once per session,
and real `qa-serve` processes on loopback (`start_server`, `serve`) for what only a real server shows.

Heavy imports (torch, transformers, peft) happen inside the fixtures, so test modules that do not use them
(ensemble, app routes with fakes) stay fast.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

TINY_ADAPTERS = {"alpha": 1, "beta": 2, "gamma": 3}
"""Adapter name -> the seed of its random LoRA weights."""
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2ForCausalLM + byte-level BPE tokenizer with a ChatML template, stamped."""
    from models.base.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-random")


@pytest.fixture(scope="session")
def tiny_adapters_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of random LoRA adapters (names in TINY_ADAPTERS) for the tiny model, with manifests.

    `init_lora_weights=False` leaves both LoRA matrices random, so each adapter really changes the outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.adapters.registry import AdapterManifest, write_manifest
    from models.base.folders import read_base_info

    base = read_base_info(tiny_model_dir)
    assert base is not None
    root = tmp_path_factory.mktemp("tiny-adapters")
    for name, seed in TINY_ADAPTERS.items():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(root / name)
        write_manifest(
            root / name,
            AdapterManifest(
                name=name,
                base_model=base.key,
                base_fingerprint=base.fingerprint,
                prompt_style="zero-shot",
                training={"seed": seed, "note": "random weights for tests"},
            ),
        )
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(config: uvicorn.Config) -> Iterator[int]:
    """A uvicorn server on `config` in a thread of this process, its port while it runs."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(30)


class ServerProcess:
    """A `qa-serve` subprocess on a loopback port; `client` talks to it once it is ready."""

    def __init__(self, env: dict[str, str], *, timeout: float = 60) -> None:
        self.port = free_port()
        self.base_url = self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # not a pipe: a chatty server must never block on a full one
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout)

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


@contextmanager
def serving(
    env: dict[str, str], *, ready_within: float = 120, timeout: float = 60
) -> Iterator[ServerProcess]:
    """A ready `qa-serve` process for the `with` block, stopped (SIGTERM) after it."""
    server = ServerProcess(env, timeout=timeout)
    try:
        server.wait_ready(ready_within)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def serve() -> Callable[..., AbstractContextManager[ServerProcess]]:
    """`with serve(env, ready_within=, timeout=) as server:` for fixtures of any scope."""
    return serving


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
