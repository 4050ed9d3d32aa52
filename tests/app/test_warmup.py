"""QA_WARMUP: the decode loop makes its first shapes before /readyz says ready; requests then meet them."""

import logging
import threading

from fastapi.testclient import TestClient

import engine.builder
from app.main import build_app
from app.settings import ServiceSettings

BODY = {"context": "회의는 오후 3시에 본관 2층에서 열린다.", "question": "회의는 어디서?"}


def shapes(client: TestClient) -> set[tuple]:
    return set(client.app.state.service.engine().generator._loop._states)


def test_warm_up_before_ready_then_requests_meet_warm_shapes(
    tiny_settings: ServiceSettings, monkeypatch, caplog
):
    release, real_warm_up = threading.Event(), engine.builder.Engine.warm_up

    def held_warm_up(self):
        release.wait(30)
        return real_warm_up(self)

    monkeypatch.setattr(engine.builder.Engine, "warm_up", held_warm_up)
    settings = tiny_settings.model_copy(
        update={"decoder": "loop", "warmup": True, "max_input_tokens": 1000, "load_in_background": True}
    )
    with (
        caplog.at_level(logging.INFO, logger="models.decode.generator"),
        TestClient(build_app(settings)) as client,
    ):
        assert client.get("/readyz").status_code == 503  # loaded, still warming up
        release.set()
        assert client.app.state.service.wait_ready(timeout=60)
        assert client.get("/readyz").status_code == 200
        # 3 adapters x 2 prompts x 3 beams, and one greedy row, at each length up to 1536 (999 prompt tokens
        # and 32 slots for new ones)
        warm = shapes(client)
        assert warm == {
            (rows, length, 32, beams, True)
            for rows, beams in ((18, True), (1, False))
            for length in (256, 384, 512, 768, 1024, 1536)
        }
        assert "decode loop warm-up: 12 shapes" in caplog.text
        assert client.post("/answer", json=BODY).status_code == 200
        greedy = {"adapters": ["alpha"], "prompts": ["zero-shot"], "decoding": {"strategy": "greedy"}}
        assert client.post("/answer", json={**BODY, **greedy}).status_code == 200
        assert shapes(client) == warm


def test_auto_does_not_warm_up_off_cuda(tiny_settings: ServiceSettings):
    settings = tiny_settings.model_copy(update={"decoder": "loop", "max_input_tokens": 1000})
    assert settings.warmup == "auto"
    with TestClient(build_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        assert shapes(client) == set()
        assert client.post("/answer", json=BODY).status_code == 200
        assert len(shapes(client)) == 1  # made on demand


def test_a_sampled_default_warms_the_greedy_row_only(tiny_settings: ServiceSettings):
    update = {"decoder": "loop", "warmup": True, "max_input_tokens": 200, "default_strategy": "sample"}
    with TestClient(build_app(tiny_settings.model_copy(update=update))) as client:
        assert client.get("/readyz").status_code == 200
        assert shapes(client) == {(1, 256, 32, False, True)}  # sampled requests decode through generate


def test_qa_warmup_reads_auto_true_and_false(monkeypatch):
    for value, expected in (("auto", "auto"), ("true", True), ("0", False)):
        monkeypatch.setenv("QA_WARMUP", value)
        assert ServiceSettings().warmup == expected
