"""candidates.jsonl: what `qa-eval run` writes (likelihoods included) reads back into the same candidates."""

import json
from pathlib import Path

import pytest

from ensemble.batch import BatchResult, RowResult
from ensemble.datasets import DataFormatError, QAExample
from ensemble.vote import Candidate, Likelihood, VoteConfig, vote
from evaluation.candidates import read_candidates
from evaluation.run import write_candidates

LIKELIHOODS = (Likelihood("a", "zero-shot", -1.25, 3), Likelihood("base", "principled", -0.5, 2))
CANDIDATES = (
    Candidate("서울", "답: 서울", "a", "zero-shot", 0, -0.1, 2.0, True, LIKELIHOODS),
    Candidate("부산 시", "부산 시", None, "principled", 1, None, 1.0, False, LIKELIHOODS),
)


def test_write_candidates_writes_likelihoods_and_they_read_back(tmp_path: Path) -> None:
    examples = [
        QAExample(id="q1", context="서울과 부산", question="어디?", answers=("서울",)),
        QAExample(id="q2", context="x", question="y", answers=("x",)),
    ]
    voted = vote(CANDIDATES, VoteConfig(rule="likelihood"))
    rows = [
        RowResult(
            id="q1", answer=voted.answer, confidence=voted.confidence, support=voted.support, vote=voted
        ),
        RowResult(id="q2", answer="", confidence=0.0, support=0, error="PromptTooLongError: too long"),
    ]
    path = tmp_path / "candidates.jsonl"
    write_candidates(path, examples, BatchResult(rows=rows, scores=None, seconds={}))
    first = json.loads(path.read_text("utf-8").splitlines()[0])
    assert first["candidates"][0]["likelihoods"] == [
        ["a", "zero-shot", -1.25, 3],
        ["base", "principled", -0.5, 2],
    ]
    back = read_candidates(path)
    assert [q.id for q in back] == ["q1", "q2"]
    assert back[0].candidates == CANDIDATES and back[0].answers == ("서울",)
    assert back[0].answer == voted.answer and back[0].confidence == pytest.approx(voted.confidence)
    assert back[1].candidates == () and back[1].error == "PromptTooLongError: too long"


def test_a_file_from_before_likelihoods_reads_with_none(tmp_path: Path) -> None:
    old = {
        "text": "서울",
        "raw": "서울",
        "adapter": "a",
        "prompt": "zero-shot",
        "beam_rank": 0,
        "score": -0.2,
    }
    old |= {"grounded": True, "weight": 1.0}
    line = {
        "id": "q",
        "answers": ["서울"],
        "answer": "서울",
        "confidence": 1.0,
        "error": None,
        "candidates": [old],
    }
    path = tmp_path / "candidates.jsonl"
    path.write_text(json.dumps(line, ensure_ascii=False) + "\n\n", "utf-8")
    (question,) = read_candidates(path)
    assert question.candidates[0].likelihoods == () and question.candidates[0].text == "서울"


@pytest.mark.parametrize(
    "bad", ["{not json", '{"answers": []}', '{"id": "q", "candidates": [{"text": "x"}]}']
)
def test_a_bad_line_is_named(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "candidates.jsonl"
    good = json.dumps({"id": "ok", "answers": ["x"], "candidates": []})
    path.write_text(good + "\n" + bad + "\n", "utf-8")
    with pytest.raises(DataFormatError, match="line 2") as info:
        read_candidates(path)
    assert info.value.line == 2
