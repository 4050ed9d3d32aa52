"""The bad-input corpus: every malformed, mistyped, oversize or odd input gets its documented status and
the JSON error body; odd but valid text (mixed scripts, emoji, control characters) is answered; the server
goes on.

`CORPUS_SIZE` (all parametrized cases below) is reported in docs/reliability.md.
"""

import json

import pytest

GREEDY = {"strategy": "greedy", "max_new_tokens": 3}
OK = {
    "context": "한국은행은 기준금리를 연 3.5%로 동결했다.",
    "question": "기준금리는?",
    "decoding": GREEDY,
    "prompts": ["zero-shot"],
}
JSON = {"content-type": "application/json"}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"

# (raw body, content-type, status, error_type) for POST /answer
ANSWER_BODIES = [
    (b"", "application/json", 422, "validation_error"),  # empty body: the fields are missing
    (b"{", "application/json", 422, "validation_error"),  # malformed JSON
    (b'{"context": "a", "question": "b",}', "application/json", 422, "validation_error"),  # trailing comma
    (b"null", "application/json", 422, "validation_error"),
    (b"[]", "application/json", 422, "validation_error"),
    (b'"a string"', "application/json", 422, "validation_error"),
    (b"42", "application/json", 422, "validation_error"),
    (b'{"context": "\xff\xfe", "question": "q"}', "application/json", 400, "invalid_body"),  # not UTF-8
    (PNG, "application/json", 400, "invalid_body"),  # binary
    (b"\x00" * 64, "application/json", 422, "validation_error"),
    (
        b'{"context": "a\\ud800", "question": "q"}',
        "application/json",
        422,
        "validation_error",
    ),  # lone surrogate
    (json.dumps(OK).encode(), "text/plain", 422, "validation_error"),  # not declared as JSON
    (json.dumps(OK).encode(), "application/x-www-form-urlencoded", 422, "validation_error"),
    (b"context=a&question=b", "application/x-www-form-urlencoded", 422, "validation_error"),
]

# (JSON body, status, error_type, field) for POST /answer
ANSWER_FIELDS = [
    ({**OK, "context": None}, 422, "validation_error", "context"),
    ({**OK, "context": {"text": "x"}}, 422, "validation_error", "context"),
    ({**OK, "question": True}, 422, "validation_error", "question"),
    ({**OK, "question": 1.5}, 422, "validation_error", "question"),
    ({**OK, "context": "\u200b\u200b"}, 200, None, None),  # zero-width only: not whitespace to str.strip
    ({**OK, "context": "\t\n\r "}, 422, "validation_error", "context"),
    ({**OK, "adapters": [1]}, 422, "validation_error", "adapters[0]"),
    ({**OK, "adapters": ["alpha", None]}, 422, "validation_error", "adapters[1]"),
    ({**OK, "prompts": "zero-shot"}, 422, "validation_error", "prompts"),
    ({**OK, "decoding": []}, 422, "validation_error", "decoding"),
    (
        {**OK, "decoding": {**GREEDY, "max_new_tokens": "3"}},
        200,
        None,
        None,
    ),  # lax: a numeric string is a number
    ({**OK, "decoding": {"max_new_tokens": "three"}}, 422, "validation_error", "decoding.max_new_tokens"),
    ({**OK, "decoding": {"max_new_tokens": 2.5}}, 422, "validation_error", "decoding.max_new_tokens"),
    ({**OK, "decoding": {"num_beams": -1}}, 422, "validation_error", "decoding.num_beams"),
    ({**OK, "decoding": {"num_beams": True}}, 422, "validation_error", "decoding.num_beams"),  # not 1
    ({**OK, "decoding": {"max_new_tokens": False}}, 422, "validation_error", "decoding.max_new_tokens"),
    ({**OK, "decoding": {"temperature": True}}, 422, "validation_error", "decoding.temperature"),
    ({**OK, "explain": None}, 422, "validation_error", "explain"),
    ({**OK, "context": "가" * 2_001}, 413, "payload_too_large", "context"),  # huge field
    ({**OK, "question": "q" * 201}, 413, "payload_too_large", "question"),
    ({**OK, "adapters": ["../../etc/passwd"]}, 422, "unknown_adapter", "adapters"),
    ({**OK, "adapters": ["alpha"] * 500}, 200, None, None),  # duplicates collapse to one member
    ({**OK, "prompts": ["zero-shot"] * 3}, 200, None, None),  # duplicates collapse too
]

# Odd but valid text: answered (200) with a string answer.
ODD_TEXT = [
    ("Apple의 CEO 팀 쿡 🍎 said 東京 is next; Москва tomorrow.", "CEO는?"),  # mixed scripts + emoji
    ("👩‍👩‍👧‍👦 가족 🇰🇷 여행 🏳️‍🌈", "누가?"),  # ZWJ sequences, flags
    ("مرحبا بالعالم — שלום עולם — 안녕하세요", "인사는?"),  # right-to-left scripts
    ("제목\u0000중간\u0007끝\u001b[31m", "끝은?"),  # control characters
    ("A\u0301 e\u0301 가\u1100\u1161 ﬁ", "무엇?"),  # combining marks, jamo, ligature
    ("\ufeffBOM 앞 텍스트", "무엇?"),
    ("𝕳𝖊𝖑𝖑𝖔 𝟙𝟚𝟛 🀄", "숫자는?"),  # astral planes
    ("<script>alert(1)</script> '; DROP TABLE t; --", "무엇?"),
]

HEADER = b"id,context,question\n"
# (uploaded bytes, file name, status, error_type, field) for POST /batch
BATCH_FILES = [
    (b"", "t.csv", 422, "invalid_file", "file"),
    (PNG, "t.csv", 422, "invalid_file", "file"),  # binary
    (PNG, "t.json", 422, "invalid_file", "file"),
    (b"\xff\xfe\x00\x01", "t.jsonl", 422, "invalid_file", "file"),  # not UTF-8
    ("id,context,question\n1,가,나\n".encode("utf-16"), "t.csv", 422, "invalid_file", "file"),
    (HEADER + b'1,"unclosed,q\n', "t.csv", 422, "invalid_file", "file"),
    (b'{"data": [{"paragraphs": 3}]}', "t.json", 422, "invalid_file", "paragraphs"),
    (b'{"version": "x"}', "t.json", 422, "invalid_file", "data"),
    (b"[1, 2, 3]", "t.json", 422, "invalid_file", "data"),
    (b'{"id": "a", "context": "c", "question": "q"}\nnot json\n', "t.jsonl", 422, "invalid_file", "file"),
    (b'{"id": "a", "context": 5, "question": "q"}\n', "t.jsonl", 422, "invalid_file", "context"),
    (HEADER + b"a,c,q\na,c,q\n", "t.csv", 422, "invalid_file", "id"),  # duplicate ids
    (b'{"id": "a", "context": "c", "question": "q"}\n' * 2, "t.jsonl", 422, "invalid_file", "id"),
    (HEADER + b"a,c\n", "t.csv", 422, "invalid_file", "file"),
    (HEADER + b"a,,q\n", "t.csv", 422, "invalid_file", "context"),
    (HEADER + "a,{},q\n".format("가" * 2_001).encode(), "t.csv", 413, "payload_too_large", "context"),
    (HEADER + b"".join(b"%d,c,q\n" % i for i in range(5_001)), "t.csv", 413, "payload_too_large", "file"),
    (b'{"id": "a\\ud800", "context": "c", "question": "q"}\n', "t.jsonl", 422, "invalid_file", "id"),
]

# (JSON body, status, error_type) for POST /batch
BATCH_BODIES = [
    ({"rows": None}, 422, "validation_error"),
    ({"rows": {"id": "a"}}, 422, "validation_error"),
    ({"rows": [[]]}, 422, "validation_error"),
    ({"rows": [{"id": "a", "context": ["c"], "question": "q"}]}, 422, "invalid_rows"),
    ({"rows": [{"id": None, "context": "c", "question": "q"}]}, 422, "invalid_rows"),
    ({"rows": [{"id": "a", "context": "c", "question": "q"}] * 2}, 422, "invalid_rows"),  # duplicate ids
    ({"rows": [{"id": "a", "context": "c\ud800", "question": "q"}]}, 422, "invalid_rows"),
]

# JSON past `bounded_json`'s bounds, anywhere JSON is read: nested 100,000 deep (json.loads: RecursionError),
# 200 deep (parsed by json.loads, past MAX_DEPTH), an integer of 5,000 digits (json.loads: ValueError).
DEEP, DEEPISH, BIG_INT = b"[" * 100_000 + b"]" * 100_000, b"[" * 200 + b"]" * 200, b"1" * 5_000
ROW = b'{"id": "a", "context": "c", "question": "q"'
# (raw JSON body, status, error_type) for POST /answer and POST /batch
DEEP_BODIES = [
    (DEEP, 422, "validation_error"),
    (b'{"rows": ' + DEEP + b"}", 422, "validation_error"),
    (b'{"rows": [' + ROW + b', "extra": ' + DEEPISH + b"}]}", 422, "validation_error"),
    (b'{"rows": [' + ROW + b"}], " + b'"decoding": {"seed": ' + BIG_INT + b"}}", 422, "validation_error"),
    (b'{"rows": [{"id": ' + BIG_INT + b', "context": "c", "question": "q"}]}', 422, "validation_error"),
]
# (uploaded bytes, file name, field) for POST /batch: each 422 invalid_file
DEEP_FILES = [
    (b'{"data": ' + DEEP + b"}", "t.json", "file"),  # SQuAD
    (b'{"data": ' + DEEPISH + b"}", "t.json", "file"),
    (b'{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": ' + BIG_INT + b"}]}]}]}", "t.json", "file"),
    (ROW + b"}\n" + DEEP + b"\n", "t.jsonl", "file"),  # JSON Lines
    (ROW + b', "answers": ' + DEEPISH + b"}\n", "t.jsonl", "file"),
    (ROW + b', "x": ' + BIG_INT + b"}\n", "t.jsonl", "file"),
    # a CSV cell parsed as JSON (5,000 deep: the csv module's own cell limit refuses DEEP's 200,000 chars)
    (b"id,context,question,answers\na,c,q," + b"[" * 5_000 + b"]" * 5_000 + b"\n", "t.csv", "answers"),
    (b"id,context,question,answers\na,c,q,[" + BIG_INT + b"]\n", "t.csv", "answers"),
    (DEEP, "t.txt", "file"),  # format auto-detection reads the first line
    (b"[" + BIG_INT + b"]", "upload", "file"),
]
# (form field value) for POST /batch with a good file: each 422 validation_error naming `decoding`
DEEP_FORM_FIELDS = [DEEP, DEEPISH, b'{"seed": ' + BIG_INT + b"}"]

CORPUS_SIZE = (
    len(ANSWER_BODIES) + len(ANSWER_FIELDS) + len(ODD_TEXT) + len(BATCH_FILES) + len(BATCH_BODIES)
    + len(DEEP_BODIES) * 2 + len(DEEP_FILES) + len(DEEP_FORM_FIELDS)
)


def check(response, status: int, error_type: str | None, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    if status >= 400:
        assert set(body) == {"error", "error_type", "detail"} and body["error_type"] == error_type, body
        if field is not None:
            assert field in body["error"], body
    else:
        assert isinstance(body.get("answer", ""), str)


@pytest.mark.parametrize(("raw", "content_type", "status", "error_type"), ANSWER_BODIES)
def test_answer_bodies(client, raw, content_type, status, error_type):
    check(client.post("/answer", content=raw, headers={"content-type": content_type}), status, error_type)


@pytest.mark.parametrize(("body", "status", "error_type", "field"), ANSWER_FIELDS)
def test_answer_fields(client, body, status, error_type, field):
    check(client.post("/answer", json=body), status, error_type, field)


@pytest.mark.parametrize(("context", "question"), ODD_TEXT)
def test_odd_but_valid_text_is_answered(client, context, question):
    body = {"context": context, "question": question, "decoding": GREEDY, "adapters": ["alpha"]}
    check(client.post("/answer", json=body), 200, None)


@pytest.mark.parametrize(("data", "filename", "status", "error_type", "field"), BATCH_FILES)
def test_batch_files(client, data, filename, status, error_type, field):
    response = client.post("/batch", files={"file": (filename, data)})
    check(response, status, error_type)
    assert response.json()["detail"]["field"] == field


@pytest.mark.parametrize(("body", "status", "error_type"), BATCH_BODIES)
def test_batch_bodies(client, body, status, error_type):
    check(client.post("/batch", content=json.dumps(body), headers=JSON), status, error_type)


def test_the_server_still_answers_after_the_corpus(client):
    check(client.post("/answer", json=OK), 200, None)


@pytest.mark.parametrize(("raw", "status", "error_type"), DEEP_BODIES)
def test_json_past_its_bounds_is_refused_by_batch(client, raw, status, error_type):
    response = client.post("/batch", content=raw, headers=JSON)
    check(response, status, error_type)
    assert response.headers.get("connection") != "close"  # a 4xx keeps the connection


@pytest.mark.parametrize(("raw", "status", "error_type"), DEEP_BODIES)
def test_json_past_its_bounds_is_refused_by_answer(client, raw, status, error_type):
    # FastAPI parses /answer's body itself: what json.loads cannot parse is its 400, the rest is a 422.
    response = client.post("/answer", content=raw, headers=JSON)
    assert response.status_code in (400, 422), response.text
    check(response, response.status_code, "invalid_body" if response.status_code == 400 else error_type)


@pytest.mark.parametrize(("data", "filename", "field"), DEEP_FILES)
def test_files_past_the_json_bounds_are_refused(client, data, filename, field):
    response = client.post("/batch", files={"file": (filename, data)})
    check(response, 422, "invalid_file")
    assert response.json()["detail"]["field"] == field


@pytest.mark.parametrize("value", DEEP_FORM_FIELDS, ids=["deep", "deepish", "big-int"])
def test_a_form_field_past_the_json_bounds_is_refused(client, value):
    upload = {"file": ("t.csv", HEADER + b"a,c,q\n")}
    response = client.post("/batch", files=upload, data={"decoding": value.decode()})
    check(response, 422, "validation_error", "decoding")
