"""`loads`: the one reader of JSON that comes from outside (request bodies, uploaded files, form fields,
adapter folders), with bounded nesting depth and integer length.

`json.loads` raises `RecursionError` for JSON nested about a thousand levels deep and a bare `ValueError`
for an integer of more than 4,300 digits (`sys.get_int_max_str_digits`); code that catches
`json.JSONDecodeError` only would then answer 500. `loads` refuses both as `JSONLimitError`, a
`JSONDecodeError` subclass with a position like any syntax error, so each caller's handling of malformed
JSON covers them too. Depth is checked before parsing, by one scan over the brackets outside strings
(linear, no recursion); integers as the parser meets them. Size is bounded by whoever reads the bytes (the
body limits; `max_chars` here). This package knows nothing about what a document means and imports nothing
of the project: `app`, `ensemble` and `models` all use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted. The service's documents need 6 (a SQuAD file)."""
MAX_INT_DIGITS = 4_300
"""Longest integer accepted, in digits: Python's own limit for turning text into an int."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JSONLimitError(json.JSONDecodeError):
    """JSON nested deeper than `MAX_DEPTH`, an integer longer than `MAX_INT_DIGITS`, or a text longer than
    its `max_chars`; `msg`, `lineno` and `colno` locate it as for a syntax error."""


class _IntTooLongError(ValueError):
    def __init__(self, digits: str) -> None:
        super().__init__(digits)
        self.digits = digits


def loads(
    text: str | bytes,
    *,
    max_depth: int = MAX_DEPTH,
    max_chars: int | None = None,
    **kwargs: Any,
) -> Any:
    """`json.loads(text, **kwargs)` that raises `json.JSONDecodeError` (maybe `JSONLimitError`) for every
    document it does not return. Bytes are decoded as UTF-8 (`UnicodeDecodeError` as before)."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    if max_chars is not None and len(text) > max_chars:
        raise JSONLimitError(f"longer than {max_chars} characters", text, max_chars)
    _check_depth(text, max_depth)
    parse_int: Callable[[str], int] = kwargs.pop("parse_int", int)
    try:
        return json.loads(text, parse_int=lambda digits: _int(digits, parse_int), **kwargs)
    except _IntTooLongError as e:
        at = text.find(e.digits)
        raise JSONLimitError(f"an integer of more than {MAX_INT_DIGITS} digits", text, max(at, 0)) from None
    except RecursionError:  # unreachable with a max_depth below the interpreter's limit; never a 500 anyway
        raise JSONLimitError(f"nested deeper than {max_depth} levels", text, 0) from None


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _check_depth(text: str, max_depth: int) -> None:
    if depth(text) <= max_depth:
        return
    level = 0
    for match in _TOKEN.finditer(text):  # only on the way to an error: find where it went too deep
        token = match.group()
        if token[0] != '"':
            level += _STEP[token]
            if level > max_depth:
                raise JSONLimitError(f"nested deeper than {max_depth} levels", text, match.start())
    raise JSONLimitError(f"nested deeper than {max_depth} levels", text, 0)  # not reached: the same scan


def _int(digits: str, parse_int: Callable[[str], int]) -> int:
    if len(digits) - digits.startswith("-") > MAX_INT_DIGITS:
        raise _IntTooLongError(digits)
    return parse_int(digits)
