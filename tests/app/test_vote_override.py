"""A request's `vote` object over the server's vote config, on the real service (tiny random model, 3 random
adapters): it changes this request's vote only, bad values are 422s naming `vote.<field>`, and the request
schema follows `ensemble.vote.VoteConfig`'s scalar fields."""

import dataclasses
import json
import typing

import pytest
from fastapi.testclient import TestClient

from app.vote_request import VoteRequest
from ensemble.vote import VoteConfig

CONTEXT = (
    "서울시는 27일 한강공원 12곳에 공공 자전거 대여소 120개를 새로 설치한다고 밝혔다. 사업비는 35억 원이다."
)
QUESTION = "서울시가 새로 설치하는 대여소는 몇 개인가?"
ROWS = [
    {"id": "a", "context": CONTEXT, "question": QUESTION, "answer": "120개"},
    {"id": "b", "context": CONTEXT, "question": "사업비는 얼마인가?", "answer": "35억 원"},
]


def ask(client: TestClient, **body):
    return client.post("/answer", json={"context": CONTEXT, "question": QUESTION, "explain": True, **body})


@pytest.fixture(scope="module")
def plain(client: TestClient) -> dict:
    body = ask(client).json()
    assert len(body["clusters"]) > 1, body  # the tiny random model's candidates disagree
    return body


def test_a_threshold_of_zero_puts_every_text_in_one_cluster(client, plain):
    body = ask(client, vote={"threshold": 0}).json()
    clustered = [c for c in body["candidates"] if c["cluster"] is not None]  # None: empty once normalised
    assert len(body["clusters"]) == 1 and body["support"] == len(clustered) > plain["support"]
    assert all(c["cluster"] == 0 for c in clustered)
    assert body["confidence"] > plain["confidence"]


def test_the_rule_can_be_chosen_per_request(client, plain):
    body = ask(client, vote={"rule": "likelihood"}).json()
    assert body["n_candidates"] == plain["n_candidates"]
    assert body["clusters"] != plain["clusters"]  # weights are now the evidence, not counts


def test_an_override_changes_only_its_request(client, plain):
    assert ask(client, vote={"threshold": 0, "rank_discount": 0}).status_code == 200
    assert ask(client).json()["clusters"] == plain["clusters"]
    assert client.app.state.service.engine().pipeline.config.vote == VoteConfig()
    # Fields left out or null keep the server's value: an empty override is no override.
    for vote in ({}, {"threshold": None}):
        assert ask(client, vote=vote).json()["clusters"] == plain["clusters"]


@pytest.mark.parametrize(
    "vote, field, error_type",
    [
        ({"threshold": 150}, "vote.threshold", "invalid_vote"),
        ({"ungrounded_weight": -1}, "vote.ungrounded_weight", "invalid_vote"),
        ({"containment_factor": 1.5}, "vote.containment_factor", "invalid_vote"),
        ({"rule": "majority"}, "vote.rule", "validation_error"),
        ({"threshold": True}, "vote.threshold", "validation_error"),
        ({"threshold": "high"}, "vote.threshold", "validation_error"),
        ({"calibration": {"a": 1, "b": 0}}, "vote.calibration", "validation_error"),
        ({"bogus": 1}, "vote.bogus", "validation_error"),
    ],
)
def test_a_bad_value_is_422_naming_the_field_and_the_server_keeps_serving(client, vote, field, error_type):
    response = ask(client, vote=vote)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == error_type
    detail = body["detail"]
    named = [d["field"] for d in detail] if isinstance(detail, list) else [detail["field"]]
    assert named == [field]
    assert field in body["error"]
    assert ask(client).status_code == 200


def test_batch_rows_are_voted_with_the_override(client):
    request = {"rows": ROWS, "decoding": {"strategy": "greedy", "max_new_tokens": 3}, "explain": True}
    body = client.post("/batch", json={**request, "vote": {"threshold": 0}}).json()
    for row in body["rows"]:
        clustered = [c for c in row["candidates"] if c["cluster"] is not None]
        assert len(row["clusters"]) == 1 and row["support"] == len(clustered)
    response = client.post("/batch", json={**request, "vote": {"threshold": -5}})
    assert response.status_code == 422
    assert response.json()["detail"] == {"field": "vote.threshold"}


def test_batch_form_takes_the_vote_as_json(client):
    data = "\n".join(json.dumps(row, ensure_ascii=False) for row in ROWS).encode("utf-8")
    fields = {"decoding": json.dumps({"strategy": "greedy", "max_new_tokens": 3}), "explain": "true"}
    response = client.post(
        "/batch", files={"file": ("q.jsonl", data)}, data={**fields, "vote": json.dumps({"threshold": 0})}
    )
    assert response.status_code == 200, response.text
    assert all(len(row["clusters"]) == 1 for row in response.json()["rows"])
    response = client.post("/batch", files={"file": ("q.jsonl", data)}, data={**fields, "vote": "[1]"})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == ["vote"]


def test_the_request_schema_has_every_scalar_vote_setting_documented(client):
    hints = typing.get_type_hints(VoteConfig)
    scalars = {
        f.name for f in dataclasses.fields(VoteConfig)
        if hints[f.name] in (bool, int, float, str) or typing.get_origin(hints[f.name]) is typing.Literal
    }  # fmt: skip
    assert {"rule", "threshold", "rank_discount", "grounded_weight", "ungrounded_weight"} <= scalars
    assert set(VoteRequest.model_fields) == scalars
    schema = client.get("/openapi.json").json()["components"]["schemas"]["VoteRequest"]
    assert set(schema["properties"]) == scalars
    assert all(prop.get("description") for prop in schema["properties"].values())
    assert schema["additionalProperties"] is False
    assert VoteRequest(threshold=90).overrides() == {"threshold": 90.0}
