"""The vote config file: a ``VoteConfig`` fitted offline, shipped beside the adapters it was fitted for.

    {"schema": "qa-ensemble.vote/1",
     "vote": {"rule": "likelihood", "temperature": 2.0, ..., "calibration": {"a": 5.1, "b": -2.3}},
     "provenance": {"date": ..., "candidates": {"sha256": ..., "questions": ...}, "f1": {...}, ...}}

``vote`` holds ``VoteConfig`` fields by name (any left out keep their defaults); ``provenance`` is free-form
JSON saying what the config was fitted on and what it scored (``evaluation.vote_fit`` writes it). A bad file
fails loudly at load with an ``InvalidVoteConfigError`` naming the field (``vote.<name>``), so a deployment
mistake stops the server at start, never a request. This module reads and writes the file; it does not fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble.calibration import Platt
from ensemble.errors import InvalidVoteConfigError
from ensemble.vote import VoteConfig

VOTE_FILE = "vote.json"
"""The file's name inside an adapters folder (``adapters/<model key>/vote.json``)."""
SCHEMA = "qa-ensemble.vote/1"

_FIELDS = {f.name: f for f in dataclasses.fields(VoteConfig)}
_STRINGS = ("rule", "combine")
_BOOLEANS = ("mbr",)


@dataclass(frozen=True)
class VoteFile:
    """A vote config and where it came from."""

    vote: VoteConfig
    provenance: dict[str, Any] = field(default_factory=dict)


def vote_config_to_dict(config: VoteConfig) -> dict[str, Any]:
    """Every field by name, JSON-ready (``calibration`` as ``{"a", "b"}`` or null)."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(config, name)
        out[name] = value.to_dict() if isinstance(value, Platt) else value
    return out


def vote_config_from_dict(data: Mapping[str, Any]) -> VoteConfig:
    """The inverse of ``vote_config_to_dict``; unknown fields and values of the wrong type are refused."""
    if not isinstance(data, Mapping):
        raise InvalidVoteConfigError("vote", f"must be an object of VoteConfig fields; got {data!r}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        where = f"vote.{name}"
        if name not in _FIELDS:
            raise InvalidVoteConfigError(where, f"unknown field; known: {', '.join(_FIELDS)}")
        if name == "calibration":
            try:
                values[name] = None if value is None else Platt.from_dict(value)
            except ValueError as e:
                raise InvalidVoteConfigError(where, str(e)) from e
        elif name in _STRINGS:
            if not isinstance(value, str):
                raise InvalidVoteConfigError(where, f"must be a string; got {value!r}")
            values[name] = value
        elif name in _BOOLEANS:
            if not isinstance(value, bool):
                raise InvalidVoteConfigError(where, f"must be true or false; got {value!r}")
            values[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidVoteConfigError(where, f"must be a finite number; got {value!r}")
            values[name] = float(value)
    return VoteConfig(**values)  # __post_init__ checks the ranges, naming the field the same way


def read_vote_file(path: Path) -> VoteFile:
    """Load ``path``; raises ``InvalidVoteConfigError`` (field ``vote``, ``vote.<name>``, ``schema`` or
    ``provenance``, the path in the message) for a file that is not JSON or holds a bad config, ``OSError``
    when it cannot be read."""
    text = Path(path).read_text("utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidVoteConfigError("vote", f"{path} is not JSON: {e}") from e
    if not isinstance(data, dict) or "vote" not in data:
        raise InvalidVoteConfigError("vote", f"{path} must be an object with a 'vote' key")
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise InvalidVoteConfigError("schema", f"{path}: expected {SCHEMA!r}; got {schema!r}")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise InvalidVoteConfigError("provenance", f"{path}: must be an object; got {provenance!r}")
    try:
        config = vote_config_from_dict(data["vote"])
    except InvalidVoteConfigError as e:
        raise InvalidVoteConfigError(e.field, f"{e.problem} (in {path})") from e
    return VoteFile(vote=config, provenance=provenance)


def write_vote_file(path: Path, vote_file: VoteFile) -> None:
    """Write ``vote_file`` as indented UTF-8 JSON (the parent folder must exist)."""
    data = {"schema": SCHEMA, "vote": vote_config_to_dict(vote_file.vote), "provenance": vote_file.provenance}
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8")
