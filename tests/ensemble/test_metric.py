"""The KorQuAD 1.0 and SQuAD v1.1 metrics: the checked cases of shared/data/README.md and corpus scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ensemble.datasets import load_examples
from ensemble.metric import (
    Scores,
    ScoringError,
    exact_match_korquad,
    exact_match_squad,
    f1_korquad,
    f1_squad,
    normalize_korquad,
    normalize_squad,
    per_question,
    score_predictions,
)

KORQUAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "korquad"
needs_korquad = pytest.mark.skipif(not (KORQUAD / "KorQuAD_v1.0_dev.json").is_file(),
                                   reason="shared KorQuAD data not present")


# --- KorQuAD 1.0: the README's checked cases ------------------------------------------------------

def test_korquad_particle_suffix_is_partial_credit() -> None:
    assert not exact_match_korquad("베토벤이", "베토벤")
    assert round(f1_korquad("베토벤이", "베토벤"), 3) == 0.857


def test_korquad_f1_ignores_spaces_but_exact_match_does_not() -> None:
    assert not exact_match_korquad("1989년2월", "1989년 2월")
    assert f1_korquad("1989년2월", "1989년 2월") == 1.0


def test_korquad_curly_double_quotes_are_not_removed() -> None:
    assert normalize_korquad("“임수경”") == "“임수경”"
    assert f1_korquad("“임수경”", "임수경") == pytest.approx(0.75)


def test_korquad_ascii_punctuation_is_deleted() -> None:
    assert exact_match_korquad("3.5%", "35%")


def test_korquad_middle_dot_is_kept() -> None:
    assert normalize_korquad("한·미") == "한·미"
    assert not exact_match_korquad("한·미", "한미")


def test_korquad_quotes_and_brackets_become_spaces() -> None:
    raw = "《해담일보》 ‘누리칩’ <속보> 〈특집〉 (주)청솔 'A' \"B\""
    assert normalize_korquad(raw) == "해담일보 누리칩 속보 특집 주 청솔 a b"


def test_korquad_no_overlap_and_empty_prediction_score_zero() -> None:
    assert f1_korquad("서울", "부산") == 0.0
    assert f1_korquad("", "부산") == 0.0


# --- SQuAD v1.1 -----------------------------------------------------------------------------------

def test_squad_drops_articles_and_punctuation() -> None:
    assert normalize_squad("The Eiffel Tower, in Paris!") == "eiffel tower in paris"
    assert exact_match_squad("the Eiffel Tower", "Eiffel Tower.")
    assert normalize_squad("banana theme anthem") == "banana theme anthem"  # only whole words are articles


def test_squad_f1_is_word_level() -> None:
    assert f1_squad("cat sat", "the cat sat on a mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1_squad("1989년2월", "1989년 2월") == 0.0  # one word vs two: no shared token


# --- corpus scoring -------------------------------------------------------------------------------

GOLD = {"q1": ["420억 원", "420억"], "q2": ["박서윤"], "q3": ["18%"]}


def test_best_gold_answer_counts_and_mean_is_over_all_questions() -> None:
    scores = score_predictions(GOLD, {"q1": "420억", "q2": "박서윤 시장", "q3": "18%"})
    f1_q2 = f1_korquad("박서윤 시장", "박서윤")
    assert (scores.exact_match, scores.f1) == pytest.approx((200 / 3, 100 * (2 + f1_q2) / 3))
    assert (scores.count, scores.missing) == (3, 0)


def test_missing_prediction_scores_zero_and_extra_ids_are_ignored() -> None:
    full = score_predictions(GOLD, {"q1": "420억 원", "q2": "박서윤", "q3": "18%"})
    partial = score_predictions(GOLD, {"q1": "420억 원", "q2": "박서윤", "unknown": "x"})
    assert (full.exact_match, full.f1, full.missing) == (100.0, 100.0, 0)
    assert (partial.exact_match, partial.f1) == pytest.approx((200 / 3, 200 / 3))
    assert (partial.count, partial.missing) == (3, 1)


def test_per_question_reports_each_id() -> None:
    assert per_question(GOLD, {"q1": "420억 원", "q3": "18 %"}) == {
        "q1": (True, 1.0), "q2": (False, 0.0), "q3": (True, 1.0)}


def test_metric_switch_changes_the_scoring() -> None:
    gold = {"q": ["the Eiffel Tower"]}
    assert score_predictions(gold, {"q": "Eiffel Tower"}, metric="squad").exact_match == 100.0
    assert score_predictions(gold, {"q": "Eiffel Tower"}, metric="korquad").exact_match == 0.0


@pytest.mark.parametrize("gold", [{}, {"q": []}, {"q": "박서윤"}])
def test_unscorable_gold_is_refused(gold: dict[str, object]) -> None:
    with pytest.raises(ScoringError):
        score_predictions(gold, {"q": "박서윤"})  # type: ignore[arg-type]


@needs_korquad
def test_dev_gold_as_predictions_scores_100() -> None:
    gold = {ex.id: ex.answers for ex in load_examples(KORQUAD / "KorQuAD_v1.0_dev.json")}
    predictions = json.loads((KORQUAD / "dev-evaluate-in1.json").read_text(encoding="utf-8"))
    scores = score_predictions(gold, predictions)
    assert scores == Scores(exact_match=100.0, f1=100.0, count=5774, missing=0)

    del predictions[next(iter(gold))]
    fewer = score_predictions(gold, predictions)
    assert fewer.missing == 1
    assert fewer.exact_match == fewer.f1 == pytest.approx(100 * 5773 / 5774)
