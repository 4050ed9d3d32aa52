"""`bounded_json.loads`: what json.loads would raise RecursionError or ValueError for is a JSONDecodeError."""

import json

import pytest

import bounded_json
from bounded_json import MAX_DEPTH, JSONLimitError


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),  # json.loads: RecursionError
        ('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "nested deeper"),
        ("[" + "9" * 5_000 + "]", "more than 4300 digits"),  # json.loads: ValueError
        ('{"n": -' + "9" * 4_301 + "}", "more than 4300 digits"),
    ],
)
def test_past_the_bounds_is_a_decode_error(text, words):
    with pytest.raises(json.JSONDecodeError, match=words) as caught:
        bounded_json.loads(text)
    assert isinstance(caught.value, JSONLimitError)


def test_within_the_bounds_is_json_loads():
    text = json.dumps({"a": "[[[[{{{{" * 100, "deep": [[[[1]]]], "n": int("9" * 4_300)})
    assert bounded_json.loads(text) == json.loads(text)
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert bounded_json.loads(nested) == json.loads(nested)
    assert bounded_json.depth('["]", {"a": "\\"["}]') == 2


def test_the_position_points_at_the_fault():
    with pytest.raises(JSONLimitError) as caught:
        bounded_json.loads('{"rows": ' + "[" * 70 + "]" * 70 + "}")
    assert caught.value.pos == len('{"rows": ') + MAX_DEPTH - 1


def test_malformed_and_bytes_behave_as_before():
    with pytest.raises(json.JSONDecodeError):
        bounded_json.loads("{")
    with pytest.raises(UnicodeDecodeError):
        bounded_json.loads(b"\xff")
    assert bounded_json.loads(b'{"a": 1}') == {"a": 1}
    with pytest.raises(JSONLimitError, match="longer than 3"):
        bounded_json.loads("[1, 2]", max_chars=3)
