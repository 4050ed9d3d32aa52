"""Every bad input gets a 4xx with the JSON error body naming the field, and the server keeps serving."""

import pytest

CONTEXT = "한국은행은 기준금리를 연 3.5%로 동결했다."
QUESTION = "기준금리는?"


def check_error(response, status: int, error_type: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "detail"}
    assert body["error_type"] == error_type
    if field is not None:
        assert field in body["error"]
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": QUESTION}, "context"),
        ({"context": CONTEXT}, "question"),
        ({"context": "", "question": QUESTION}, "context"),
        ({"context": "   \n", "question": QUESTION}, "context"),
        ({"context": CONTEXT, "question": " "}, "question"),
        ({"context": 123, "question": QUESTION}, "context"),
        ({"context": CONTEXT, "question": ["x"]}, "question"),
        ({"context": CONTEXT, "question": QUESTION, "adapters": []}, "adapters"),
        ({"context": CONTEXT, "question": QUESTION, "adapters": "alpha"}, "adapters"),
        ({"context": CONTEXT, "question": QUESTION, "prompts": [""]}, "prompts"),
        ({"context": CONTEXT, "question": QUESTION, "explain": "maybe"}, "explain"),
        ({"context": CONTEXT, "question": QUESTION, "unknown": 1}, "unknown"),
        ({"context": CONTEXT, "question": QUESTION, "decoding": {"num_beams": 0}}, "decoding.num_beams"),
        ({"context": CONTEXT, "question": QUESTION, "decoding": {"strategy": "magic"}}, "decoding.strategy"),
        ({"context": CONTEXT, "question": QUESTION, "decoding": {"top_p": 1.5}}, "decoding.top_p"),
        ({"context": CONTEXT, "question": QUESTION, "decoding": {"beams": 2}}, "decoding.beams"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(client, body, field):
    body = check_error(client.post("/answer", json=body), 422, "validation_error", field)
    assert any(d["field"] == field for d in body["detail"])


def test_malformed_json_is_422(client):
    response = client.post(
        "/answer", content=b'{"context": "x", ', headers={"content-type": "application/json"}
    )
    check_error(response, 422, "validation_error")


def test_non_utf8_body_is_400(client):
    response = client.post(
        "/answer",
        content=b'{"context": "\xff\xfe", "question": "q"}',
        headers={"content-type": "application/json"},
    )
    check_error(response, 400, "invalid_body", "body")


def test_unknown_adapter_is_422(client):
    response = client.post("/answer", json={"context": CONTEXT, "question": QUESTION, "adapters": ["nope"]})
    body = check_error(response, 422, "unknown_adapter", "adapters")
    assert "alpha" in body["error"]  # says what is served


def test_unknown_prompt_is_422(client):
    response = client.post("/answer", json={"context": CONTEXT, "question": QUESTION, "prompts": ["poem"]})
    check_error(response, 422, "unknown_prompt", "prompts")


@pytest.mark.parametrize(
    ("decoding", "field"),
    [
        ({"num_beams": 5}, "decoding.num_beams"),
        ({"max_new_tokens": 17}, "decoding.max_new_tokens"),
    ],
)
def test_options_past_server_limits_are_422(client, decoding, field):
    response = client.post("/answer", json={"context": CONTEXT, "question": QUESTION, "decoding": decoding})
    check_error(response, 422, "limit_exceeded", field)


def test_more_outputs_than_beams_is_422(client):
    decoding = {"strategy": "beam", "num_beams": 2, "num_return_sequences": 3}
    response = client.post("/answer", json={"context": CONTEXT, "question": QUESTION, "decoding": decoding})
    check_error(response, 422, "invalid_decoding", "num_return_sequences")


def test_too_many_candidates_is_422(client):
    body = {
        "context": CONTEXT,
        "question": QUESTION,
        "prompts": ["zero-shot", "few-shot", "principled"],
        "decoding": {"num_beams": 4},
        "adapters": ["alpha", "beta", "gamma", "base"],
    }
    check_error(client.post("/answer", json=body), 422, "limit_exceeded", "adapters")


def test_oversize_context_and_question_are_413(client):
    check_error(
        client.post("/answer", json={"context": "가" * 2_001, "question": QUESTION}),
        413,
        "payload_too_large",
        "context",
    )
    check_error(
        client.post("/answer", json={"context": CONTEXT, "question": "나" * 201}),
        413,
        "payload_too_large",
        "question",
    )


def test_unknown_route_and_method_have_json_errors(client):
    check_error(client.get("/nope"), 404, "not_found")
    check_error(client.get("/answer"), 405, "method_not_allowed")


def test_mixed_scripts_and_emoji_are_answered(client):
    response = client.post(
        "/answer", json={"context": "Apple의 CEO 팀 쿡 🍎 said 東京 is next.", "question": "CEO는?"}
    )
    assert response.status_code == 200


def test_server_keeps_serving_after_errors(client):
    client.post("/answer", content=b"garbage", headers={"content-type": "application/json"})
    assert client.post("/answer", json={"context": CONTEXT, "question": QUESTION}).status_code == 200
