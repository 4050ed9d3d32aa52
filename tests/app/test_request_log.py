"""Request ids and JSON log lines (`app.request_log`): an id on every response, no bodies in the log."""

import io
import json
import logging

import pytest
from fastapi.testclient import TestClient

from app.cli import logging_config
from app.request_log import JsonFormatter
from app.settings import ServiceSettings

ANSWER = {
    "context": "회의는 3시에 열린다.",
    "question": "회의는 몇 시에?",
    "decoding": {"strategy": "greedy"},
}


def test_given_id_is_echoed(client: TestClient):
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123 from the proxy"})
    assert response.headers["X-Request-ID"] == "abc-123 from the proxy"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "tab\there", " padded"])
def test_missing_or_invalid_id_is_replaced_by_a_fresh_one(client: TestClient, given):
    headers = {} if given is None else {"X-Request-ID": given}
    first = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    second = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert len(first) == 32 and int(first, 16) >= 0 and first != second


def test_errors_carry_the_id(client: TestClient):
    invalid = client.post("/answer", json={"context": "비"}, headers={"X-Request-ID": "r-422"})
    assert invalid.status_code == 422 and invalid.headers["X-Request-ID"] == "r-422"
    missing = client.get("/nowhere", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "r-404"
    too_large = client.post("/answer", content=b"x" * (3 * 1024 * 1024), headers={"X-Request-ID": "r-413"})
    assert too_large.status_code == 413 and too_large.headers["X-Request-ID"] == "r-413"


def test_one_json_line_per_request_without_bodies(client: TestClient):
    marker = "MARKER-7f3c9a-본문"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        response = client.post(
            "/answer",
            json={**ANSWER, "context": f"{marker} 회의는 3시에."},
            headers={"X-Request-ID": "r-log"},
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert response.status_code == 200, response.text
    output = stream.getvalue()
    assert marker not in output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "app.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["request_id"] == "r-log" and entry["level"] == "info"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/answer", 200)
    assert entry["duration_ms"] >= 0 and entry["client"] == "testclient" and entry["ts"]


def test_log_config_formats(tiny_settings: ServiceSettings):
    config = logging_config(tiny_settings.model_copy(update={"log_format": "text"}))
    assert "format" in config["formatters"]["default"]
    config = logging_config(tiny_settings)
    assert config["formatters"]["default"]["()"] == "app.request_log.JsonFormatter"
    assert all(not logger["handlers"] for logger in config["loggers"].values())  # no duplicate lines
