"""The adapters folder's vote.json becomes the engine's default vote; a bad one stops the start."""

import json
import logging
import shutil
from pathlib import Path

import pytest

from engine.builder import EngineConfig, adapters_vote_config, build_engine
from ensemble.calibration import Platt
from ensemble.errors import InvalidVoteConfigError
from ensemble.vote import VoteConfig
from ensemble.vote_file import VOTE_FILE, VoteFile, write_vote_file

FITTED = VoteConfig(rule="likelihood", temperature=2.0, count_mix=0.25, calibration=Platt(a=4.0, b=-2.0))


@pytest.fixture
def adapters(tiny_adapters_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "adapters"
    shutil.copytree(tiny_adapters_dir, folder)
    write_vote_file(
        folder / VOTE_FILE, VoteFile(FITTED, {"date": "2026-01-02", "candidates": {"questions": 7}})
    )
    return folder


def test_no_folder_or_no_file_means_no_vote_config(tmp_path: Path) -> None:
    assert adapters_vote_config(None) is None
    assert adapters_vote_config(tmp_path) is None


def test_the_adapters_vote_json_is_the_pipelines_vote(
    tiny_model_dir: Path, adapters: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = EngineConfig(
        model=str(tiny_model_dir), adapters_dir=adapters, cache_dir=tmp_path / "c", device="cpu"
    )
    with caplog.at_level(logging.INFO, logger="engine.builder"):
        engine = build_engine(config)
    assert engine.pipeline.config.vote == FITTED
    assert sorted(engine.adapter_names) == ["alpha", "beta", "gamma"]  # vote.json is not an adapter
    assert any("vote config from" in r.message and "2026-01-02" in r.message for r in caplog.records)
    # An explicit config wins over the file.
    explicit = EngineConfig(
        model=str(tiny_model_dir), adapters_dir=adapters, cache_dir=tmp_path / "c", device="cpu",
        vote=VoteConfig(rank_discount=2.0), preload_adapters=False,
    )  # fmt: skip
    assert build_engine(explicit).pipeline.config.vote == VoteConfig(rank_discount=2.0)


def test_a_bad_vote_json_stops_the_start(tiny_model_dir: Path, adapters: Path, tmp_path: Path) -> None:
    data = json.loads((adapters / VOTE_FILE).read_text("utf-8"))
    data["vote"]["count_mix"] = 2.0
    (adapters / VOTE_FILE).write_text(json.dumps(data), "utf-8")
    config = EngineConfig(
        model=str(tiny_model_dir), adapters_dir=adapters, cache_dir=tmp_path / "c", device="cpu"
    )
    with pytest.raises(InvalidVoteConfigError, match=r"^vote\.count_mix: must be in \[0, 1\]") as info:
        build_engine(config)
    assert info.value.field == "vote.count_mix"
