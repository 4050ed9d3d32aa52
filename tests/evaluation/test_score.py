"""`qa-eval score` on prediction files written here, and on the shared KorQuAD dev set when it is present."""

import json
from pathlib import Path

import pytest

from evaluation.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "news_qa.json"
KORQUAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "korquad"
GOLD = {"news-001": "420억 원", "news-002": "박서윤", "news-003": "18%", "news-004": "누리칩"}


def score(capsys: pytest.CaptureFixture[str], data: Path, predictions: Path, *extra: str) -> dict[str, float]:
    assert main(["score", "--data", str(data), "--predictions", str(predictions), *extra]) == 0
    out = capsys.readouterr().out
    return {key: float(value) for key, value in (line.split() for line in out.splitlines())}


def write_json(path: Path, predictions: dict[str, str]) -> Path:
    path.write_text(json.dumps(predictions, ensure_ascii=False), "utf-8")
    return path


def test_all_correct_is_100(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = score(capsys, FIXTURE, write_json(tmp_path / "p.json", GOLD))
    assert result == {"EM": 100.0, "F1": 100.0, "count": 4, "missing": 0, "extra": 0}


def test_one_wrong_and_one_partial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions = {**GOLD, "news-002": "김철수", "news-001": "420억"}
    result = score(capsys, FIXTURE, write_json(tmp_path / "p.json", predictions))
    # 420억 vs 420억 원: P 1, R 4/5 -> F1 8/9; 김철수 scores 0.
    assert result["EM"] == 50.0
    assert result["F1"] == pytest.approx(100 * (2 + 8 / 9) / 4, abs=0.005)


def test_csv_predictions_missing_and_extra_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,answer\nnews-001,420억 원\nnews-003,18%\nother,x\n", "utf-8")
    result = score(capsys, FIXTURE, path)
    assert result == {"EM": 50.0, "F1": 50.0, "count": 4, "missing": 2, "extra": 1}


@pytest.mark.skipif(not (KORQUAD / "dev-evaluate-in1.json").is_file(), reason="../shared/data is absent")
def test_the_split_restricts_the_gold_set(capsys: pytest.CaptureFixture[str]) -> None:
    data, predictions = KORQUAD / "KorQuAD_v1.0_dev.json", KORQUAD / "dev-evaluate-in1.json"
    result = score(capsys, data, predictions, "--split", "eval")
    assert result == {"EM": 100.0, "F1": 100.0, "count": 1510, "missing": 0, "extra": 4264}


def test_a_bad_file_exits_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"news-001": 3}', "utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--data", str(FIXTURE), "--predictions", str(bad)])
    assert exit_info.value.code == 1
    assert "qa-eval: error:" in capsys.readouterr().err


@pytest.mark.skipif(not (KORQUAD / "dev-evaluate-in1.json").is_file(), reason="../shared/data is absent")
def test_the_official_gold_predictions_score_100(capsys: pytest.CaptureFixture[str]) -> None:
    result = score(capsys, KORQUAD / "KorQuAD_v1.0_dev.json", KORQUAD / "dev-evaluate-in1.json")
    assert result == {"EM": 100.0, "F1": 100.0, "count": 5774, "missing": 0, "extra": 0}
