"""Limits: body size on every route (413 before the body is read), tokens, decoding options; JSON errors."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings

CONTEXT = "한국은행은 기준금리를 연 3.5%로 동결했다."
QUESTION = "기준금리는?"


@pytest.fixture(scope="module")
def limited(tiny_settings: ServiceSettings, tmp_path_factory) -> Iterator[TestClient]:
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": None,
            "jobs_dir": tmp_path_factory.mktemp("jobs"),
            "max_body_bytes": 4_096,
            "batch_max_bytes": 16_384,
            "max_context_tokens": 120,  # CONTEXT is 40 tokens of the tiny byte-level tokenizer
            "max_question_tokens": 30,  # QUESTION is 14
            "default_strategy": "greedy",
        }
    )
    with TestClient(build_app(settings)) as client:
        yield client


def check_error(response, status: int, error_type: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "detail"}
    assert body["error_type"] == error_type, body
    if field is not None:
        assert field in body["error"], body
    return body


def test_a_body_past_the_limit_is_413_before_it_is_read(limited):
    big = b'{"context": "' + b"x" * 5_000 + b'", "question": "q"}'
    body = check_error(
        limited.post("/answer", content=big, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
        "body",
    )
    assert body["detail"] == {"field": "body", "limit": 4_096}


def test_a_streamed_body_without_length_is_counted(limited):
    def chunks():
        yield b'{"context": "'
        for _ in range(10):
            yield b"y" * 1_000
        yield b'", "question": "q"}'

    response = limited.post("/answer", content=chunks(), headers={"content-type": "application/json"})
    check_error(response, 413, "payload_too_large", "body")


def test_every_route_has_the_limit(limited):
    for method, path in (
        ("GET", "/healthz"),
        ("DELETE", "/adapters/x"),
        ("GET", "/batch/x"),
        ("POST", "/nope"),
    ):
        response = limited.request(method, path, content=b"z" * 5_000)
        check_error(response, 413, "payload_too_large")


def test_batch_has_its_own_larger_limit(limited):
    rows = [{"id": str(i), "context": "c" * 60, "question": "q", "title": "t" * 1_200} for i in range(4)]
    body = {"rows": rows, "decoding": {"max_new_tokens": 1}, "prompts": ["zero-shot"], "strategies": False}
    response = limited.post("/batch", json=body)  # ~5 KB: past max_body_bytes, within batch_max_bytes
    assert response.status_code in (200, 202), response.text
    huge = {"rows": [{**row, "title": "t" * 5_000} for row in rows]}
    body = check_error(limited.post("/batch", json=huge), 413, "payload_too_large", "body")
    assert body["detail"]["limit"] == 16_384


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"context": "가나다라 " * 20, "question": QUESTION}, "context"),  # 100 characters, 180 tokens
        ({"context": CONTEXT, "question": "무엇이 얼마나 " * 4}, "question"),  # 32 characters, 53 tokens
    ],
)
def test_context_and_question_past_their_token_limits_are_413(limited, body, field):
    response = check_error(limited.post("/answer", json=body), 413, "payload_too_large", field)
    assert "tokens" in response["error"] and response["detail"] == {"field": field}


def test_batch_rows_past_the_token_limit_name_the_row(limited):
    rows = [
        {"id": "ok", "context": CONTEXT, "question": QUESTION},
        {"id": "long", "context": "가나 " * 40, "question": "q"},
    ]
    body = check_error(limited.post("/batch", json={"rows": rows}), 413, "payload_too_large", "tokens")
    assert body["detail"] == {"field": "context", "row": 2, "id": "long"}


@pytest.mark.parametrize(
    ("decoding", "field"),
    [
        ({"strategy": "sample", "temperature": 1e-300}, "decoding.temperature"),
        ({"strategy": "sample", "temperature": 1e9}, "decoding.temperature"),
        ({"strategy": "sample", "seed": 2**70}, "decoding.seed"),
        ({"strategy": "sample", "top_k": 2**70}, "decoding.top_k"),
        ({"strategy": "sample", "top_p": 0}, "decoding.top_p"),
        ({"max_new_tokens": 10**9}, "decoding.max_new_tokens"),
        ({"num_beams": 10**9}, "decoding.num_beams"),
        ({"strategy": "sample", "num_return_sequences": 10**9}, "adapters"),  # past the candidates limit
    ],
)
def test_decoding_options_past_their_bounds_are_422(limited, decoding, field):
    response = limited.post("/answer", json={"context": CONTEXT, "question": QUESTION, "decoding": decoding})
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]


def test_non_finite_numbers_are_422(limited):
    raw = b'{"context": "c", "question": "q", "decoding": {"strategy": "sample", "temperature": NaN}}'
    response = limited.post("/answer", content=raw, headers={"content-type": "application/json"})
    check_error(response, 422, "validation_error", "decoding.temperature")
