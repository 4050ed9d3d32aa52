"""The likelihood rule: every text scored under every (member, prompt) row, combined, blended and decided by
MBR; its fallback, its calibration and its config validation."""

import itertools
import math

import pytest

from ensemble.calibration import Platt
from ensemble.errors import InvalidVoteConfigError
from ensemble.strategies import ENSEMBLE, ENSEMBLE_COUNT, ENSEMBLE_LIKELIHOOD, strategy_answers
from ensemble.vote import Candidate, Likelihood, VoteConfig, vote

LIKELIHOOD = VoteConfig(rule="likelihood")
Table = dict[tuple[str, str], dict[str, float]]
"""(member, prompt) -> text -> probability the row gives it (a log of it is the row's logprob)."""


def scored(
    table: Table,
    text: str,
    adapter: str,
    prompt: str = "zero-shot",
    *,
    rank: int = 0,
    weight: float = 1.0,
    grounded: bool = True,
) -> Candidate:
    likelihoods = tuple(
        Likelihood(member, row_prompt, math.log(probs[text]), len(text) + 1)
        for (member, row_prompt), probs in table.items()
    )
    return Candidate(text, text, adapter, prompt, rank, None, weight, grounded, likelihoods)


def rows(members: str, prompts: tuple[str, ...], probs: dict[str, float]) -> Table:
    return {(m, p): probs for m in members for p in prompts}


def test_one_members_near_duplicate_beams_do_not_outvote_the_others_top_answers() -> None:
    # Member a's six beams are spelling variants of its own (wrong) boundary; b and c answer "정부" on top.
    variants = ["대한민국 정부", "대한민국 정부는", "대한민국의 정부"]
    others = ["국회", "법원", "시민", "기업"]
    texts = ["정부", *variants, *others]
    prompts = ("zero-shot", "principled")
    a_row = {t: 0.25 if t in variants else 0.25 / 5 for t in texts}
    bc_row = {t: 0.7 if t == "정부" else 0.3 / 7 for t in texts}
    table = rows("a", prompts, a_row) | rows("bc", prompts, bc_row)
    candidates = [scored(table, t, "a", p, rank=r) for p in prompts for r, t in enumerate(variants)]
    candidates += [
        scored(table, t, m, p, rank=r)
        for m, tops in (("b", ("정부", "대한민국 정부")), ("c", ("정부", "정부")))
        for p, top in zip(prompts, tops, strict=True)
        for r, t in enumerate((top, *(others[:2] if m == "b" else others[2:])))
    ]
    assert vote(candidates).answer == "대한민국 정부"  # the count: a's cluster outweighs
    result = vote(candidates, LIKELIHOOD)
    assert result.answer == "정부"
    assert result.clusters[0].text == "정부" and result.clusters[0].support == 3
    assert result.support == 3
    assert result.clusters[1].text == "대한민국 정부" and result.clusters[1].support == 7
    assert result.clusters[0].weight > result.clusters[1].weight
    assert result.adapter_agreement == pytest.approx({"a": 0.05, "b": 0.7, "c": 0.7})
    assert sum(v.effective_weight for v in result.candidates) == pytest.approx(1.0)
    assert sum(c.weight for c in result.clusters) == pytest.approx(1.0)


def test_likelihood_breaks_a_tie_counting_cannot() -> None:
    table = rows("ab", ("zero-shot",), {"베토벤": 0.3, "모차르트": 0.7})
    candidates = [scored(table, "베토벤", "a"), scored(table, "모차르트", "b")]
    assert vote(candidates).answer == "베토벤"  # the count's tie goes to the earliest
    assert vote(candidates, LIKELIHOOD).answer == "모차르트"
    assert vote(candidates[::-1], LIKELIHOOD).answer == "모차르트"
    no_mbr = vote(candidates, VoteConfig(rule="likelihood", mbr=False))
    assert no_mbr.confidence == pytest.approx(0.7)
    assert [v.effective_weight for v in no_mbr.candidates] == pytest.approx([0.3, 0.7])


def test_a_subset_re_vote_weighs_only_its_members_and_prompts_rows() -> None:
    table: Table = {
        ("a", "zero-shot"): {"서울": 0.8, "부산": 0.2},
        ("b", "zero-shot"): {"서울": 0.1, "부산": 0.9},
        ("b", "principled"): {"서울": 0.9, "부산": 0.1},
    }
    a = [scored(table, "서울", "a", rank=0), scored(table, "부산", "a", rank=1)]
    b = [scored(table, "부산", "b", rank=0), scored(table, "서울", "b", rank=1)]
    b_principled = [
        scored(table, "서울", "b", "principled"),
        scored(table, "부산", "b", "principled", rank=1),
    ]
    config = VoteConfig(rule="likelihood", mbr=False)
    assert vote(a, config).answer == "서울"
    assert vote(b, config).answer == "부산"  # b's principled row is not among b's zero-shot candidates
    assert vote(b, config).confidence == pytest.approx(0.9)
    answers = strategy_answers([*a, *b, *b_principled], config=config)
    assert answers["member:a"] == "서울" and answers["member:b"] == "부산"
    # zero-shot: a 0.8 / b 0.1 on 서울 -> 0.45 against 0.55; principled rows alone: 서울
    assert answers["prompt:zero-shot"] == "부산" and answers["prompt:principled"] == "서울"
    # every row: 서울 (0.8 + 0.1 + 0.9) / 3 = 0.6
    assert answers[ENSEMBLE] == answers[ENSEMBLE_LIKELIHOOD] == "서울"
    assert answers[ENSEMBLE_COUNT] == "서울"  # 1 + 1/2 + 1 against 부산 1/2 + 1 + 1/2


def test_product_and_mixture_differ_where_one_row_vetoes() -> None:
    table: Table = {
        ("a", "zero-shot"): {"가": 0.9, "나": 0.1 - 1e-6, "다": 1e-6},
        ("b", "zero-shot"): {"가": 0.001, "나": 0.6, "다": 0.399},
    }
    candidates = [scored(table, "가", "a"), scored(table, "나", "b"), scored(table, "다", "b", rank=1)]
    mixture = vote(candidates, VoteConfig(rule="likelihood", combine="mixture", mbr=False))
    product = vote(candidates, VoteConfig(rule="likelihood", combine="product", mbr=False))
    assert mixture.answer == "가" and mixture.confidence == pytest.approx((0.9 + 0.001) / 2)
    assert product.answer == "나"
    expected = math.sqrt(0.1 * 0.6) / sum(
        math.sqrt(x * y) for x, y in ((0.9, 0.001), (0.1, 0.6), (1e-6, 0.399))
    )
    assert product.confidence == pytest.approx(expected, rel=1e-4)


def test_member_weights_weigh_the_rows() -> None:
    table: Table = {("a", "zero-shot"): {"가": 0.8, "나": 0.2}, ("b", "zero-shot"): {"가": 0.3, "나": 0.7}}
    even = [scored(table, "가", "a"), scored(table, "나", "b")]
    heavy = [scored(table, "가", "a"), scored(table, "나", "b", weight=3.0)]
    config = VoteConfig(rule="likelihood", mbr=False)
    assert vote(even, config).answer == "가"
    assert vote(heavy, config).answer == "나"
    assert vote(heavy, config).confidence == pytest.approx((0.2 + 3 * 0.7) / 4)


def test_mbr_picks_the_central_answer() -> None:
    probs = {"1988년 서울 올림픽": 0.36, "서울 올림픽": 0.33, "서울 올림픽 대회": 0.31}
    table = rows("a", ("zero-shot",), probs)
    candidates = [scored(table, t, "a", rank=r) for r, t in enumerate(probs)]
    assert vote(candidates, VoteConfig(rule="likelihood", mbr=False)).answer == "1988년 서울 올림픽"
    central = vote(candidates, LIKELIHOOD)
    assert central.answer == "서울 올림픽"
    assert 0.33 < central.confidence < 1.0  # its expected F1


def test_length_power_temperature_and_count_mix() -> None:
    # Under the raw sum the short text is likelier; per token (length_power 1) the long one is.
    long_text, short_text = "대한민국 임시정부", "정부"
    table: Table = {("a", "zero-shot"): {long_text: math.exp(-4.0), short_text: math.exp(-3.0)}}

    def candidate(text: str, rank: int) -> Candidate:
        likelihood = Likelihood("a", "zero-shot", math.log(table[("a", "zero-shot")][text]), 1 + 9 * rank)
        return Candidate(text, text, "a", "zero-shot", rank, None, 1.0, True, (likelihood,))

    candidates = [candidate(long_text, 1), candidate(short_text, 0)]  # 10 and 1 tokens
    assert vote(candidates, VoteConfig(rule="likelihood", mbr=False)).answer == short_text
    assert vote(candidates, VoteConfig(rule="likelihood", mbr=False, length_power=1.0)).answer == long_text
    cold = vote(candidates, VoteConfig(rule="likelihood", mbr=False, temperature=0.1))
    hot = vote(candidates, VoteConfig(rule="likelihood", mbr=False, temperature=10.0))
    assert cold.confidence > 0.99 and 0.5 < hot.confidence < 0.53
    # The count gives the short text (rank 0) 1 and the long one 1/2: count_mix 1 is the count share alone.
    counted = vote(candidates, VoteConfig(rule="likelihood", mbr=False, count_mix=1.0, length_power=1.0))
    assert counted.answer == short_text and counted.confidence == pytest.approx(2 / 3)


def test_calibration_changes_the_confidence_only() -> None:
    table = rows("ab", ("zero-shot",), {"베토벤": 0.3, "모차르트": 0.6, "바흐": 0.1})
    candidates = [
        scored(table, "베토벤", "a"),
        scored(table, "모차르트", "b"),
        scored(table, "바흐", "b", rank=1),
    ]
    platt = Platt(a=4.0, b=-1.0)
    for base in (VoteConfig(), LIKELIHOOD):
        raw = vote(candidates, base)
        calibrated = vote(candidates, VoteConfig(**{**base.__dict__, "calibration": platt}))
        assert calibrated.confidence == pytest.approx(platt(raw.confidence))
        assert calibrated.confidence != pytest.approx(raw.confidence)
        assert (calibrated.answer, calibrated.support, calibrated.clusters) == (
            raw.answer,
            raw.support,
            raw.clusters,
        )
        assert calibrated.candidates == raw.candidates
        assert calibrated.adapter_agreement == raw.adapter_agreement


def test_without_likelihoods_the_rule_falls_back_to_the_count() -> None:
    table = rows("ab", ("zero-shot",), {"베토벤": 0.1, "모차르트": 0.9})
    scored_ones = [
        scored(table, "베토벤", "a"),
        scored(table, "베토벤", "a", rank=1),
        scored(table, "모차르트", "b"),
    ]
    bare = Candidate("모차르트", "모차르트", "b", "zero-shot", 1, None, 1.0, True)
    assert vote(scored_ones, LIKELIHOOD).answer == "모차르트"
    mixed = [*scored_ones, bare]
    assert vote(mixed, LIKELIHOOD) == vote(mixed, VoteConfig())
    # An empty text needs no likelihoods; the scored texts still decide.
    empty = Candidate("", "", "b", "zero-shot", 2, None, 1.0, False)
    assert vote([*scored_ones, empty], LIKELIHOOD).answer == "모차르트"
    # Rows of members that are not among the candidates are not evidence: nothing left, so the count.
    strangers = rows("x", ("zero-shot",), {"베토벤": 0.1, "모차르트": 0.9})
    alone = [
        scored(strangers, "베토벤", "a"),
        scored(strangers, "베토벤", "a", rank=1),
        scored(strangers, "모차르트", "a"),
    ]
    assert vote(alone, LIKELIHOOD).answer == "베토벤"


def test_a_row_that_missed_a_text_is_left_out() -> None:
    full = {"서울": 0.2, "부산": 0.8}
    both = (
        Likelihood("a", "zero-shot", math.log(0.9), 2),
        Likelihood("b", "zero-shot", math.log(full["서울"]), 2),
    )
    a = Candidate("서울", "서울", "a", "zero-shot", 0, None, 1.0, True, both)
    only_b = (Likelihood("b", "zero-shot", math.log(full["부산"]), 2),)  # row a never scored 부산
    b = Candidate("부산", "부산", "b", "zero-shot", 0, None, 1.0, True, only_b)
    result = vote([a, b], VoteConfig(rule="likelihood", mbr=False))
    assert result.answer == "부산" and result.confidence == pytest.approx(0.8)
    assert result.adapter_agreement == {"a": 0.0, "b": pytest.approx(0.8)}


def test_the_answer_is_grounded_and_independent_of_input_order() -> None:
    probs = {"120개": 0.3, "120 개": 0.3, "130개": 0.4}
    table = rows("abc", ("zero-shot",), probs)
    candidates = [
        scored(table, "120 개", "a", grounded=False),
        scored(table, "120개", "b"),
        scored(table, "130개", "c"),
        scored(table, "130개", "a", rank=1),
    ]
    answers = {
        vote(list(p), VoteConfig(rule="likelihood", mbr=False)).answer
        for p in itertools.permutations(candidates)
    }
    # "120 개" and "120개" are one normalised text: its representative is the grounded spelling (0.3 each,
    # from the representative's likelihood), and 130개 at 0.4 beats it.
    assert answers == {"130개"}
    # The same text in two spellings: the grounded one answers, whichever comes first.
    spellings = rows("ab", ("zero-shot",), {"120개": 0.5, "120 개": 0.5, "모차르트": 0.4})
    pair = [
        scored(spellings, "120 개", "a", grounded=False),
        scored(spellings, "120개", "b"),
        scored(spellings, "모차르트", "a"),
    ]
    assert {vote(list(p), LIKELIHOOD).answer for p in itertools.permutations(pair)} == {"120개"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.0),
        ("temperature", math.inf),
        ("count_mix", 1.5),
        ("length_power", -1.0),
        ("combine", "sum"),
        ("mbr", "yes"),
        ("calibration", {"a": 1.0, "b": 0.0}),
        ("rule", "median"),
    ],
)
def test_vote_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidVoteConfigError, match=f"^vote.{field}: ") as info:
        VoteConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == f"vote.{field}"


def test_both_rules_side_by_side_only_when_asked_or_scored() -> None:
    plain = [Candidate("서울", "서울", "a", "zero-shot", 0, None, 1.0, True)]
    assert ENSEMBLE_COUNT not in strategy_answers(plain)
    assert set(strategy_answers(plain, config=LIKELIHOOD)) >= {ENSEMBLE, ENSEMBLE_COUNT, ENSEMBLE_LIKELIHOOD}
    assert ENSEMBLE_LIKELIHOOD in strategy_answers(plain, both_rules=True)
    table = rows("a", ("zero-shot",), {"서울": 1.0})
    assert ENSEMBLE_LIKELIHOOD in strategy_answers([scored(table, "서울", "a")])
