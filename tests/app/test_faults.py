"""Injected faults: CUDA out-of-memory, clients that disconnect, SIGTERM during a batch job.

OOM is injected into the model's forward (as CUDA would raise it) inside the TestClient app. Disconnects
need real sockets: a uvicorn server runs in a thread of this process (so the test can see which work ran).
SIGTERM needs a real process: `qa-serve` is started, signalled mid-job, and started again on the same jobs
folder. The table of faults in docs/reliability.md lists these.
"""

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings
from tests.conftest import free_port, served

GREEDY = {"strategy": "greedy", "max_new_tokens": 3}
ASK = {
    "context": "비는 오후에 그친다.",
    "question": "비는 언제?",
    "decoding": GREEDY,
    "prompts": ["zero-shot"],
}
POISON = "폭탄"


@pytest.fixture(scope="module")
def app_client(tiny_settings: ServiceSettings, tmp_path_factory) -> Iterator[TestClient]:
    settings = tiny_settings.model_copy(update={"jobs_dir": tmp_path_factory.mktemp("jobs")})
    with TestClient(build_app(settings)) as client:
        yield client


def inject_oom(monkeypatch, client: TestClient, *, max_rows: int | None = None, poison: str | None = None):
    """CUDA OOM for forwards past `max_rows` rows, or for a prompt batch with `poison` in it.

    Injected into the model's forward, which both decoders call (`generate` and the decode loop); returns the
    row counts of the prompt forwards (prefills), in order."""
    generator = client.app.state.service.engine().generator
    if generator._loop is not None:  # the same request again would decode on the kept prefill: prefill it
        generator._loop.clear()
        # as on CUDA, where this OOM comes from, the prompts prefill as one padded batch (on the CPU each
        # prompt runs alone, and a forward of one row would never exceed `max_rows`)
        monkeypatch.setattr(generator._loop, "prefill_alone", False)
    real, sizes = generator.model.forward, []

    def forward(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            sizes.append(ids.shape[0])
        too_big = max_rows is not None and ids.shape[0] > max_rows
        if too_big or (poison and any(poison in t for t in generator.tokenizer.batch_decode(ids))):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(generator.model, "forward", forward)
    return sizes


def test_oom_splits_the_batch_and_every_row_is_answered(app_client, monkeypatch):
    expected = app_client.post("/answer", json={**ASK, "explain": True}).json()
    # another question in between: the decode loop would start the very batch it just prefilled from its
    # kept prefill (no prompt forward to fail), and this test is about the prefill running out of memory
    assert app_client.post("/answer", json={**ASK, "question": "무엇이 그치나?"}).status_code == 200
    sizes = inject_oom(monkeypatch, app_client, max_rows=1)
    response = app_client.post("/answer", json={**ASK, "explain": True})
    assert response.status_code == 200, response.text
    assert sizes[0] == 3 and max(sizes[1:]) <= 2 and sizes.count(1) == 3  # 3 adapters: 3 -> 1 + 2 -> 1 + 1
    assert [c["raw"] for c in response.json()["candidates"]] == [c["raw"] for c in expected["candidates"]]


def test_oom_on_a_single_row_is_503_and_the_server_goes_on(app_client, monkeypatch):
    inject_oom(monkeypatch, app_client, max_rows=0)
    response = app_client.post("/answer", json=ASK)
    assert response.status_code == 503, response.text
    assert response.json()["error_type"] == "out_of_memory" and int(response.headers["retry-after"]) > 0
    monkeypatch.undo()
    assert app_client.post("/answer", json=ASK).status_code == 200


def test_oom_fails_only_the_rows_it_hits_in_a_batch(app_client, monkeypatch):
    inject_oom(monkeypatch, app_client, poison=POISON)
    rows = [
        {"id": "a", "context": "비는 오후에 그친다.", "question": "언제?"},
        {"id": "b", "context": f"{POISON} 문맥은 메모리를 다 쓴다.", "question": "무엇?"},
        {"id": "c", "context": "회의는 3시에 열린다.", "question": "몇 시?"},
    ]
    response = app_client.post("/batch", json={"rows": rows, "decoding": GREEDY, "prompts": ["zero-shot"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["rows"]] == ["a", "b", "c"] and body["failed_rows"] == 1
    assert body["rows"][1]["answer"] == "" and "GenerationOutOfMemoryError" in body["rows"][1]["error"]
    assert body["rows"][0]["error"] is None and body["rows"][2]["error"] is None


def inject_adapter_fault(monkeypatch, client: TestClient, bad: str) -> None:
    """Rows of adapter `bad` fail in the forward as a config that disagrees with its weights did (RuntimeError
    from the stacked matmuls), with server internals in the message."""
    stacked = client.app.state.service.engine().generator._stacked
    real = stacked.set_rows

    def set_rows(adapters, repeat=1):
        if bad in adapters:
            raise RuntimeError("The size of tensor a (8) must match the size of tensor b (4) at /srv/secret")
        return real(adapters, repeat=repeat)

    monkeypatch.setattr(stacked, "set_rows", set_rows)


def test_an_adapter_failing_at_run_time_is_isolated_and_reported(app_client, monkeypatch):
    inject_adapter_fault(monkeypatch, app_client, "beta")
    response = app_client.post("/answer", json={**ASK, "explain": True})
    assert response.status_code == 200, response.text
    assert {c["adapter"] for c in response.json()["candidates"]} == {"alpha", "gamma"}  # the rest answer
    ready = app_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["adapters"] == ["alpha", "gamma"]
    assert list(ready.json()["faulty_adapters"]) == ["beta"] and "/srv" not in ready.text
    assert 'qa_adapter_faulty{adapter="beta"} 1.0' in app_client.get("/metrics").text
    named = app_client.post("/answer", json={**ASK, "adapters": ["beta"]})
    assert named.status_code == 422 and named.json()["error_type"] == "unknown_adapter"
    rows = [{"id": f"r{i}", "context": "비는 오후에 그친다.", "question": "언제?"} for i in range(3)]
    batch = app_client.post("/batch", json={"rows": rows, "decoding": GREEDY, "prompts": ["zero-shot"]})
    assert batch.status_code == 200 and batch.json()["failed_rows"] == 0, batch.text
    monkeypatch.undo()
    assert app_client.post("/adapters/beta/load").json()["status"] == "loaded"  # load again to retry it
    assert app_client.get("/readyz").json()["faulty_adapters"] == {}


def test_an_adapter_that_fails_alone_is_isolated_too(app_client, monkeypatch):
    inject_adapter_fault(monkeypatch, app_client, "gamma")
    alone = app_client.post("/answer", json={**ASK, "adapters": ["gamma"]})
    assert alone.status_code == 422 and alone.json()["error_type"] == "no_candidates", alone.text
    assert "/srv" not in alone.text
    assert list(app_client.get("/readyz").json()["faulty_adapters"]) == ["gamma"]
    monkeypatch.undo()
    assert app_client.post("/adapters/gamma/load").json()["status"] == "loaded"


def test_a_row_that_fails_unexpectedly_leaks_nothing(app_client, monkeypatch):
    generator = app_client.app.state.service.engine().generator
    real = generator.generate

    def generate(prompts, adapters, **kwargs):
        if any(POISON in str(p) for p in prompts):
            raise RuntimeError("boom in /srv/secret/models/decode/generator.py line 12")
        return real(prompts, adapters, **kwargs)

    monkeypatch.setattr(generator, "generate", generate)
    rows = [
        {"id": "a", "context": "비는 오후에 그친다.", "question": "언제?"},
        {"id": "b", "context": f"{POISON} 문맥.", "question": "무엇?"},
    ]
    response = app_client.post("/batch", json={"rows": rows, "decoding": GREEDY, "prompts": ["zero-shot"]})
    assert response.status_code == 200, response.text
    failed = response.json()["rows"][1]
    assert failed["error"].startswith("internal error") and "/srv" not in response.text
    assert "RuntimeError" not in failed["error"] and response.json()["rows"][0]["error"] is None


# -- disconnects, on a real socket --------------------------------------------------------------------------
def threaded_server(app) -> AbstractContextManager[int]:
    return served(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))


def raw_request(port: int, body: bytes, *, send: int | None = None) -> socket.socket:
    """Open a connection and send a POST /answer (only the first `send` bytes of it, when given)."""
    head = (
        f"POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall((head + body)[:send])
    return sock


def test_a_client_that_leaves_while_queued_is_dropped_and_the_server_goes_on(tiny_settings, tmp_path):
    settings = tiny_settings.model_copy(
        update={"adapters_dir": None, "jobs_dir": tmp_path, "max_concurrent_requests": 1, "max_queue": 4}
    )
    app = build_app(settings)
    with threaded_server(app) as port:
        service, admission = app.state.service, app.state.admission
        gate, ran, real = threading.Event(), [], service.answer

        def answer(req, plan=None):
            ran.append(req.question)
            if req.question == "first":
                gate.wait(10)
            return real(req, plan)

        service.answer = answer
        url = f"http://127.0.0.1:{port}/answer"
        first = threading.Thread(
            target=lambda: httpx.post(url, json={**ASK, "question": "first"}, timeout=30)
        )
        first.start()
        while ran != ["first"]:
            time.sleep(0.01)
        leaver = raw_request(port, httpx.Request("POST", url, json={**ASK, "question": "gone"}).read())
        while admission.waiting != 1:
            time.sleep(0.01)
        leaver.close()  # leaves while queued
        half = raw_request(port, b'{"context": "' + b"x" * 1_000, send=200)
        half.close()  # leaves mid-body
        gate.set()
        first.join(30)
        response = httpx.post(url, json={**ASK, "question": "after"}, timeout=30)
        assert response.status_code == 200, response.text
        assert ran == ["first", "after"]  # the queued work of the client that left never ran
        assert admission.stats.dropped == 1 and admission.running == 0


# -- SIGTERM during a batch job, on a real process ----------------------------------------------------------
def test_sigterm_during_a_batch_job_exits_in_time_and_the_job_is_never_done(
    start_server, tiny_server_env: dict[str, str], tmp_path: Path
):
    env = {
        **tiny_server_env,
        "QA_CACHE_DIR": str(tmp_path / "cache"),
        "QA_JOBS_DIR": str(tmp_path / "jobs"),
        "QA_BATCH_SYNC_MAX_ROWS": "0",
        "QA_BATCH_CHUNK_SIZE": "1",
        "QA_DRAIN_TIMEOUT_S": "5",
        "QA_DEFAULT_MAX_NEW_TOKENS": "8",
    }
    server = start_server(env)
    rows = [
        {"id": f"q{i}", "context": f"문맥 {i}: 비는 오후에 그친다.", "question": "언제?"} for i in range(400)
    ]
    accepted = server.client.post("/batch", json={"rows": rows})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    deadline = time.monotonic() + 60
    while (status := server.client.get(f"/batch/{job_id}").json())["done"] < 2:
        assert status["status"] in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.1)

    signalled = time.monotonic()
    code = server.stop(timeout=30)
    took = time.monotonic() - signalled
    # uvicorn re-raises the signal once it has shut down gracefully, so the process ends "killed" by it.
    assert code in (0, -signal.SIGTERM), server.output()
    assert took < 5 + 5, f"exit took {took:.1f}s"  # the drain timeout, plus the chunk in progress
    on_disk = json.loads((tmp_path / "jobs" / f"{job_id}.json").read_text())
    assert on_disk["status"] == "interrupted", on_disk  # the worker stopped after its chunk and said so

    restarted = start_server(env)
    status = restarted.client.get(f"/batch/{job_id}").json()
    assert status["status"] == "interrupted", status
    assert "submit" in status["error"] and status["done"] < len(rows)
    result = restarted.client.get(f"/batch/{job_id}/result")
    assert result.status_code == 409 and result.json()["error_type"] == "not_ready"
    assert restarted.client.post("/answer", json=ASK).status_code == 200
