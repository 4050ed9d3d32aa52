"""Answer clean-up and grounding, Korean and English."""

import pytest

from ensemble.clean import Grounding, clean_answer, ground


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("답변: 베토벤.", "베토벤"),
        ('"임수경"', "임수경"),
        ("The answer is Paris\nbecause it is the capital.", "Paris"),
        ("Paris\nbecause", "Paris"),
        ("\n\n  정답: 1989년 2월", "1989년 2월"),
        ("3.5%.", "3.5%"),
        ("답: 답변: 「기생충」", "기생충"),
        ("assistant\n답변:\n《토지》", "토지"),
        ("<|im_start|>assistant\n베토벤<|im_end|>", "베토벤"),
        ("ANSWER: Seoul!", "Seoul"),
        ("A: **Seoul**", "Seoul"),
        ("“서울”입니다.", "서울"),
        ("‘한강’…", "한강"),
        ('"임수경', "임수경"),
        ("120개...", "120개"),
        ("- 120개", "120개"),
        ("U.S. Steel", "U.S. Steel"),
        ("", ""),
        ("  \n ", ""),
        ("답변:", ""),
    ],
)
def test_clean_answer(raw: str, clean: str) -> None:
    assert clean_answer(raw) == clean


@pytest.mark.parametrize(
    "text", ["답십리", "Apple", "Model 3", "assistant manager", 'the "Big" one', "1,000명"]
)
def test_clean_answer_keeps_text_that_only_looks_like_packaging(text: str) -> None:
    assert clean_answer(text) == text


CONTEXT = (
    "서울시는 3일 한강공원에 나무 120개를 새로 심었다고 밝혔다. 예산은 1200만 원이 들었다. "
    "행사에는 작곡가 베토벤의 교향곡 제9번이 연주됐다. The mayor later flew to Paris, France."
)


def test_verbatim_answer_grounds_to_itself() -> None:
    grounding = ground("베토벤", CONTEXT)
    assert grounding == Grounding("베토벤", CONTEXT.index("베토벤"), CONTEXT.index("베토벤") + 3, 100.0)


def test_spacing_variant_grounds_to_the_context_spelling() -> None:
    grounding = ground("120 개", CONTEXT)
    assert grounding is not None
    assert grounding.text == "120개"
    assert CONTEXT[grounding.start : grounding.end] == "120개"
    assert grounding.score == 100.0


def test_case_variant_grounds_to_the_context_spelling() -> None:
    grounding = ground("paris", CONTEXT)
    assert grounding is not None and grounding.text == "Paris"


def test_fuzzy_match_snaps_to_a_span_of_the_right_length() -> None:
    grounding = ground("교향곡 9번", CONTEXT)
    assert grounding is not None
    # Not "교향곡 제9번이": the particle after the span is not swallowed.
    assert grounding.text == "교향곡 제9번"
    assert 80 <= grounding.score < 100


def test_latin_words_are_not_cut() -> None:
    grounding = ground("Pari", CONTEXT)
    assert grounding is not None and grounding.text == "Paris"


def test_answer_not_in_context_is_not_grounded() -> None:
    assert ground("모차르트", CONTEXT) is None
    assert ground("London", CONTEXT) is None
    assert ground("", CONTEXT) is None
    assert ground("베토벤", "") is None


def test_a_one_character_slip_in_a_short_name_is_not_grounded() -> None:
    # One changed character in three is as likely another word; and never truncate to "베토".
    assert ground("베토밴", CONTEXT) is None


def test_numbers_must_match() -> None:
    context = "사과 1200개와 1988년 기록"
    assert ground("1989년", context) is None
    # "120" occurs only inside "1200": snapping gives "1200", a different number.
    assert ground("120", context) is None
    assert ground("120", CONTEXT) == Grounding(
        "120", CONTEXT.index("120개"), CONTEXT.index("120개") + 3, 100.0
    )


def test_a_clean_occurrence_is_preferred_over_one_inside_a_longer_number() -> None:
    context = "1200명 중 120명"
    grounding = ground("120", context)
    assert grounding is not None and grounding.start == context.index("120명")


def test_min_score_is_respected() -> None:
    assert ground("교향곡 9번", CONTEXT, min_score=90) is None
    assert ground("교향곡 9번", CONTEXT, min_score=80) is not None


def test_answer_longer_than_context() -> None:
    assert ground("아주 긴 답변 문장입니다", "짧음") is None


def test_undecodable_bytes_are_dropped():
    # A Korean character cut in half by the token budget decodes to U+FFFD.
    assert clean_answer("120개\ufffd") == "120개"
    assert clean_answer("\ufffd\ufffd") == ""
