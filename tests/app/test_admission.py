"""Admission control: bounded running + waiting, 429 past it, deadlines (504), disconnected clients dropped.

The `Admission` object alone (on its own event loop, with blocking fake work), then the /answer route with a
generation that blocks until released.
"""

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.admission import Admission, ClientDisconnectedError, OverloadedError, RequestTimeoutError
from app.main import build_app
from app.settings import ServiceSettings


def blocking(gate: threading.Event, ran: list[str], name: str):
    def work() -> str:
        ran.append(name)
        assert gate.wait(10)
        return name

    return work


async def no(*_) -> bool:
    return False


async def yes(*_) -> bool:
    return True


def test_running_and_waiting_are_bounded_and_served_in_order():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=2, timeout_s=10)
        gate, ran = threading.Event(), []
        tasks = [
            asyncio.create_task(admission.run(blocking(gate, ran, n), is_disconnected=no)) for n in "abc"
        ]
        await asyncio.sleep(0.05)
        assert (admission.running, admission.waiting) == (1, 2)
        with pytest.raises(OverloadedError) as refused:
            await admission.run(blocking(gate, ran, "d"))
        assert refused.value.retry_after >= 1
        gate.set()
        assert await asyncio.gather(*tasks) == ["a", "b", "c"]
        assert ran == ["a", "b", "c"]  # FIFO, and "d" never ran
        await asyncio.sleep(0.05)
        assert (admission.running, admission.waiting) == (0, 0)
        assert (admission.stats.admitted, admission.stats.refused) == (3, 1)
        admission.close()

    asyncio.run(scenario())


def test_a_request_waiting_past_its_deadline_never_runs():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=4, timeout_s=0.2)
        gate, ran = threading.Event(), []
        first = asyncio.create_task(admission.run(blocking(gate, ran, "first")))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestTimeoutError, match="never started"):
            await admission.run(blocking(gate, ran, "late"))
        with pytest.raises(RequestTimeoutError, match="runs to its end"):
            await first  # running past its deadline: answered at once, its slot kept until it ends
        assert admission.running == 1 and ran == ["first"]
        gate.set()
        await asyncio.sleep(0.1)
        assert admission.running == 0 and ran == ["first"]
        admission.close()

    asyncio.run(scenario())


def test_a_disconnected_client_is_dropped_before_its_work_starts():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=4, timeout_s=5)
        gate, ran = threading.Event(), []
        first = asyncio.create_task(admission.run(blocking(gate, ran, "first"), is_disconnected=no))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(admission.run(blocking(gate, ran, "gone"), is_disconnected=yes))
        await asyncio.sleep(0.02)
        gate.set()
        assert await first == "first"
        with pytest.raises(ClientDisconnectedError):
            await gone
        assert ran == ["first"] and admission.stats.dropped == 1
        assert await admission.run(blocking(gate, ran, "next"), is_disconnected=no) == "next"
        admission.close()

    asyncio.run(scenario())


def test_a_failing_work_frees_its_slot():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=0, timeout_s=5)

        def boom():
            raise RuntimeError("bad row")

        with pytest.raises(RuntimeError, match="bad row"):
            await admission.run(boom)
        await asyncio.sleep(0.02)
        assert admission.running == 0
        assert await admission.run(lambda: 42) == 42
        admission.close()

    asyncio.run(scenario())


# -- through HTTP -------------------------------------------------------------------------------------------
BODY = {"context": "회의는 3시에 열린다.", "question": "회의는 몇 시에?", "decoding": {"strategy": "greedy"}}


@pytest.fixture(scope="module")
def narrow(tiny_settings: ServiceSettings, tmp_path_factory) -> Iterator[TestClient]:
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": None,
            "jobs_dir": tmp_path_factory.mktemp("jobs"),
            "max_concurrent_requests": 1,
            "max_queue": 1,
            "request_timeout_s": 3.0,
        }
    )
    with TestClient(build_app(settings)) as client:
        yield client


def test_past_the_queue_is_429_with_retry_after_and_past_the_deadline_504(narrow, monkeypatch):
    service = narrow.app.state.service
    gate, real = threading.Event(), service.answer

    def slow_answer(*args, **kwargs):
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "answer", slow_answer)
    results: dict[str, object] = {}

    def ask(name: str) -> None:
        results[name] = narrow.post("/answer", json=BODY)

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("running", "waiting")]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    refused = narrow.post("/answer", json=BODY)  # one running, one waiting: the queue is full
    assert refused.status_code == 429, refused.text
    assert refused.json()["error_type"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
    for thread in threads:
        thread.join(10)
    for name in ("running", "waiting"):  # both past the 3 s deadline while the generation was held
        response = results[name]
        assert response.status_code == 504, response.text
        assert response.json()["error_type"] == "timeout"
    gate.set()
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while narrow.app.state.admission.running and time.monotonic() < deadline:
        time.sleep(0.05)  # the held generation ends; its result is thrown away
    # The slot is free again. A one-token greedy answer keeps this well inside the deadline on a busy CPU.
    cheap = {**BODY, "prompts": ["zero-shot"], "decoding": {"strategy": "greedy", "max_new_tokens": 1}}
    assert narrow.post("/answer", json=cheap).status_code == 200
