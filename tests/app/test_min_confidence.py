"""Abstaining below a minimum confidence, on the real service (tiny random model, 3 random adapters): the
request's `min_confidence` on /answer and /batch, the server's `QA_MIN_CONFIDENCE`, and what an abstained
answer still carries (the clusters, the confidence)."""

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import build_app
from app.settings import ServiceSettings

CONTEXT = (
    "서울시는 27일 한강공원 12곳에 공공 자전거 대여소 120개를 새로 설치한다고 밝혔다. 사업비는 35억 원이다."
)
QUESTION = "서울시가 새로 설치하는 대여소는 몇 개인가?"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDS = ["news-001", "news-002", "news-003", "news-004"]
GREEDY = {"strategy": "greedy", "max_new_tokens": 3}


def ask(client: TestClient, **body):
    return client.post("/answer", json={"context": CONTEXT, "question": QUESTION, **body})


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "news_qa.jsonl").read_text("utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def plain(client: TestClient) -> dict:
    """The default answer, with no minimum: the tiny random model's 18 candidates scatter (confidence < 1)."""
    body = ask(client).json()
    assert body["abstained"] is False and body["confidence"] < 1.0, body
    return body


@pytest.fixture(scope="module")
def strict_client(tiny_settings: ServiceSettings) -> Iterator[TestClient]:
    """A server that abstains unless every vote agrees (QA_MIN_CONFIDENCE=1), with jobs from 3 rows."""
    settings = tiny_settings.model_copy(
        update={"min_confidence": 1.0, "batch_sync_max_rows": 2, "batch_chunk_size": 2}
    )
    with TestClient(build_app(settings)) as client:
        yield client


def test_answer_says_every_cluster_and_its_confidence(plain):
    clusters = plain["clusters"]
    assert clusters and clusters[0]["id"] == 0 and clusters[0]["text"] == plain["answer"]
    assert clusters[0]["support"] == plain["support"]
    assert [c["id"] for c in clusters] == list(range(len(clusters)))
    weights = [c["weight"] for c in clusters]
    assert weights == sorted(weights, reverse=True)


def test_below_min_confidence_the_answer_is_null_and_the_alternatives_stay(client, plain):
    body = ask(client, min_confidence=1.0).json()
    assert body["answer"] is None and body["abstained"] is True
    assert body["confidence"] == plain["confidence"] and body["support"] == plain["support"]
    assert body["clusters"] == plain["clusters"]  # the withheld answer is clusters[0]
    assert body["n_candidates"] == plain["n_candidates"]


def test_at_or_above_min_confidence_the_answer_is_given(client, plain):
    for minimum in (0.0, plain["confidence"]):  # not strictly below: answered
        body = ask(client, min_confidence=minimum).json()
        assert (body["answer"], body["abstained"]) == (plain["answer"], False)


@pytest.mark.parametrize("value", [1.5, -0.1, True, "high"])
def test_min_confidence_outside_0_1_is_422_naming_it(client, value):
    response = ask(client, min_confidence=value)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "validation_error"
    assert [d["field"] for d in body["detail"]] == ["min_confidence"]


def test_the_setting_abstains_by_default_and_a_request_can_lower_it(strict_client, plain):
    body = ask(strict_client).json()
    assert body["answer"] is None and body["abstained"] is True
    assert body["clusters"][0]["text"] == plain["answer"]
    body = ask(strict_client, min_confidence=0.0).json()
    assert (body["answer"], body["abstained"]) == (plain["answer"], False)


def test_setting_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.setenv("QA_MIN_CONFIDENCE", "0.4")
    assert ServiceSettings().min_confidence == 0.4
    monkeypatch.delenv("QA_MIN_CONFIDENCE")
    assert ServiceSettings().min_confidence is None  # the default: never abstain
    for bad in ("1.5", "-1", "nan"):
        monkeypatch.setenv("QA_MIN_CONFIDENCE", bad)
        with pytest.raises(ValidationError, match="min_confidence"):
            ServiceSettings()


def test_batch_rows_below_min_confidence_abstain_in_order_with_their_ids(client):
    rows = fixture_rows()[::-1]
    request = {"rows": rows, "prompts": ["zero-shot"], "decoding": GREEDY}
    plain = client.post("/batch", json=request).json()
    body = client.post("/batch", json={**request, "min_confidence": 1.0}).json()
    assert [r["id"] for r in body["rows"]] == IDS[::-1]
    for row, before in zip(body["rows"], plain["rows"], strict=True):
        assert before["abstained"] is False and before["answer"] is not None
        assert before["clusters"] is None  # answered rows list clusters only with explain
        if before["confidence"] < 1.0:
            assert (row["answer"], row["abstained"]) == (None, True)
            assert row["clusters"][0]["text"] == before["answer"]
        else:
            assert (row["answer"], row["abstained"]) == (before["answer"], False)
        assert row["confidence"] == before["confidence"] and row["error"] is None
    assert any(r["abstained"] for r in body["rows"])
    assert body["scores"]["ensemble"]["count"] == 4  # abstained rows are scored, as ""


def test_batch_form_field_and_bad_value(client):
    data = (FIXTURES / "news_qa.jsonl").read_bytes()
    fields = {"prompts": "zero-shot", "decoding": json.dumps(GREEDY), "strategies": "false"}
    response = client.post(
        "/batch", files={"file": ("q.jsonl", data)}, data={**fields, "min_confidence": "1"}
    )
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["rows"]] == IDS
    response = client.post(
        "/batch", files={"file": ("q.jsonl", data)}, data={**fields, "min_confidence": "7"}
    )
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == ["min_confidence"]
    response = client.post("/batch", json={"rows": fixture_rows(), "min_confidence": -1})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == ["min_confidence"]


def test_a_job_of_abstained_rows_keeps_them_and_its_csv_writes_empty_answers(strict_client):
    response = strict_client.post(
        "/batch", json={"rows": fixture_rows(), "prompts": ["zero-shot"], "decoding": GREEDY}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + 120
    while (status := strict_client.get(job["status_url"]).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["status"] == "done", status
    body = strict_client.get(job["result_url"]).json()
    assert [r["id"] for r in body["rows"]] == IDS
    abstained = {r["id"] for r in body["rows"] if r["abstained"]}
    assert abstained and all(r["answer"] is None for r in body["rows"] if r["abstained"])
    table = list(csv.reader(io.StringIO(strict_client.get(job["result_url"], params={"format": "csv"}).text)))
    assert [row[0] for row in table[1:]] == IDS
    for (qid, answer), row in zip(table[1:], body["rows"], strict=True):
        assert answer == ("" if qid in abstained else row["answer"])


def test_openapi_documents_the_abstain_fields(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for model, field in [("AnswerRequest", "min_confidence"), ("AnswerResponse", "abstained"),
                         ("AnswerResponse", "clusters"), ("BatchRowOut", "abstained")]:  # fmt: skip
        assert schemas[model]["properties"][field].get("description"), (model, field)
    assert "null" in json.dumps(schemas["AnswerResponse"]["properties"]["answer"])
    body = spec["paths"]["/batch"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["properties"]["min_confidence"]["description"]
    assert "min_confidence" in body["multipart/form-data"]["schema"]["properties"]
