"""`qa-eval headroom`: the oracles and agreement of a candidates file, and the reranker's k-fold F1."""

import json

import pytest

from ensemble.vote import Candidate, Likelihood, VoteConfig
from evaluation.candidates import QuestionCandidates, question_to_json
from evaluation.cli import main
from evaluation.headroom import headroom, rerank_cv

ROWS = (("a", "zero-shot"), ("b", "zero-shot"))


def _candidate(text: str, member: str, rank: int = 0, scores: dict[str, float] | None = None) -> Candidate:
    likelihoods = tuple(Likelihood(m, p, (scores or {}).get(text, -1.0), 3) for m, p in ROWS)
    return Candidate(text, text, member, "zero-shot", rank, None, 1.0, True, likelihoods)


def _question(qid: str, gold: str, candidates: list[Candidate]) -> QuestionCandidates:
    return QuestionCandidates(qid, (gold,), tuple(candidates), candidates[0].text, 0.5)


def test_headroom_measures_what_choosing_between_members_could_buy() -> None:
    questions = [
        _question(
            "1-0-0", "서울", [_candidate("서울", "a"), _candidate("부산", "b"), _candidate("서울", "b", 1)]
        ),
        _question("2-0-0", "1988년", [_candidate("1988년", "a"), _candidate("1988년", "b")]),
        _question("3-0-0", "세종", [_candidate("정조", "a"), _candidate("세종", "b")]),
    ]
    found = headroom(questions)
    assert found.members == ("a", "b") and found.questions == 3
    assert found.member_top == pytest.approx({"a": 200 / 3, "b": 200 / 3})
    assert found.best_member == "a"  # ties go to the first name
    assert found.oracle_members == pytest.approx(100.0) and found.oracle_candidates == pytest.approx(100.0)
    assert found.agree == pytest.approx(1 / 3)
    assert found.best_wrong_other_right == pytest.approx(1 / 3)  # question 3
    assert found.best_right_other_wrong == pytest.approx(1 / 3)  # question 1


def _boundary_questions(n_articles: int) -> list[QuestionCandidates]:
    """Two members keep a particle ("X에서") twice for every once they write the bare span: counting
    picks the particle, the evidence that an answer ends in one is what a reranker can learn."""
    questions = []
    for k in range(n_articles):
        for j in range(2):
            gold = f"장소{k}{j}"
            bad = gold + "에서"
            questions.append(
                _question(
                    f"{k}-{j}-0",
                    gold,
                    [_candidate(bad, "a"), _candidate(bad, "b"), _candidate(gold, "a", 1)],
                )
            )
    return questions


def test_the_reranker_learns_what_counting_misses_on_folds_it_never_saw() -> None:
    questions = _boundary_questions(10)
    result = rerank_cv(questions, VoteConfig(rule="count"), folds=5)
    assert result.questions == 20
    assert result.vote_f1 < 100.0  # the count follows the two copies with the particle
    assert result.reranker_f1 == pytest.approx(100.0)


def test_rerank_cv_needs_enough_articles() -> None:
    with pytest.raises(ValueError, match="folds"):
        rerank_cv(_boundary_questions(2), VoteConfig(), folds=5)


def test_qa_eval_headroom_prints_and_writes_the_table(tmp_path, capsys) -> None:
    path = tmp_path / "candidates.jsonl"
    lines = [json.dumps(question_to_json(q), ensure_ascii=False) for q in _boundary_questions(5)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "headroom.json"
    argv = ["headroom", "--candidates", str(path), "--rerank-folds", "5", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "oracle over the members' top answers" in printed and "5-fold by article" in printed
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["headroom"]["questions"] == 10 and written["rerank"]["folds"] == 5
