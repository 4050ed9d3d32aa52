"""vote.json: a fitted VoteConfig and its provenance, written and read back; bad files name the field."""

import json
from pathlib import Path

import pytest

from ensemble.calibration import Platt
from ensemble.errors import InvalidVoteConfigError
from ensemble.vote import VoteConfig
from ensemble.vote_file import (
    SCHEMA,
    VoteFile,
    read_vote_file,
    vote_config_from_dict,
    vote_config_to_dict,
    write_vote_file,
)

FITTED = VoteConfig(
    rule="likelihood",
    rank_discount=3.0,
    length_power=0.5,
    temperature=2.0,
    combine="product",
    count_mix=0.25,
    mbr=False,
    calibration=Platt(a=5.5, b=-2.0),
)


def test_a_config_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vote.json"
    write_vote_file(path, VoteFile(FITTED, {"date": "2026-01-01", "candidates": {"questions": 3}}))
    data = json.loads(path.read_text("utf-8"))
    assert data["schema"] == SCHEMA and data["vote"]["calibration"] == {"a": 5.5, "b": -2.0}
    assert data["vote"]["combine"] == "product" and data["vote"]["mbr"] is False
    loaded = read_vote_file(path)
    assert loaded.vote == FITTED
    assert loaded.provenance == {"date": "2026-01-01", "candidates": {"questions": 3}}
    assert vote_config_from_dict(vote_config_to_dict(VoteConfig())) == VoteConfig()


def test_fields_left_out_keep_their_defaults() -> None:
    assert vote_config_from_dict({"rule": "likelihood"}) == VoteConfig(rule="likelihood")
    assert vote_config_from_dict({"threshold": 75}).threshold == 75.0


@pytest.mark.parametrize(
    ("vote", "field", "problem"),
    [
        ({"temprature": 2.0}, "vote.temprature", "unknown field"),
        ({"temperature": "hot"}, "vote.temperature", "must be a finite number"),
        ({"temperature": -1.0}, "vote.temperature", "must be a finite number > 0"),
        ({"count_mix": True}, "vote.count_mix", "must be a finite number"),
        ({"mbr": 1}, "vote.mbr", "must be true or false"),
        ({"combine": 3}, "vote.combine", "must be a string"),
        ({"combine": "sum"}, "vote.combine", "must be 'mixture' or 'product'"),
        ({"calibration": {"a": 1.0}}, "vote.calibration", "missing key 'b'"),
        ({"rule": "median"}, "vote.rule", "must be 'count' or 'likelihood'"),
        ([1, 2], "vote", "must be an object"),
    ],
)
def test_a_bad_config_names_the_field_and_the_file(
    tmp_path: Path, vote: object, field: str, problem: str
) -> None:
    path = tmp_path / "vote.json"
    path.write_text(json.dumps({"vote": vote}), "utf-8")
    with pytest.raises(InvalidVoteConfigError) as info:
        read_vote_file(path)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ") and problem in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", "vote"),
        ('{"provenance": {}}', "vote"),
        ('{"schema": "qa-ensemble.vote/9", "vote": {}}', "schema"),
        ('{"vote": {}, "provenance": []}', "provenance"),
    ],
)
def test_a_bad_file_names_what_is_wrong(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "vote.json"
    path.write_text(text, "utf-8")
    with pytest.raises(InvalidVoteConfigError) as info:
        read_vote_file(path)
    assert info.value.field == field and str(path) in str(info.value)
