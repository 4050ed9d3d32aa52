"""Weighted fuzzy voting: winners, weights, ties, empties and provenance."""

import itertools

import pytest

from ensemble.errors import InvalidVoteConfigError, NoCandidatesError
from ensemble.vote import Candidate, VoteConfig, effective_weight, normalise, similarity_matrix, vote


def cand(
    text: str,
    adapter: str | None = None,
    *,
    rank: int = 0,
    weight: float = 1.0,
    grounded: bool = True,
    prompt: str = "zero-shot",
) -> Candidate:
    return Candidate(
        text=text,
        raw=f"답변: {text}",
        adapter=adapter,
        prompt=prompt,
        beam_rank=rank,
        score=-0.1 * rank,
        weight=weight,
        grounded=grounded,
    )


def test_normalise() -> None:
    assert normalise("120 개") == normalise("120개.") == "120개"
    assert normalise("“Paris”") == "paris"
    assert normalise("1,000") == "1000"
    assert normalise("3.5%") == "3.5%"
    assert normalise("3.5%") != normalise("35%")


def test_similarity_treats_a_dropped_unit_as_agreement_but_not_a_different_number() -> None:
    texts = [normalise(t) for t in ["120개", "120", "130개", "김대중", "김대중 대통령", "서울", "서울대학교"]]
    sim = similarity_matrix(texts, VoteConfig())
    threshold = VoteConfig().threshold
    assert sim[0, 1] >= threshold  # "120" vs "120개"
    assert sim[0, 2] < threshold  # "120개" vs "130개"
    assert sim[3, 4] >= threshold  # "김대중" names "김대중 대통령"
    assert sim[5, 6] < threshold  # "서울" is not "서울대학교"
    assert (sim == sim.T).all()


def test_exact_majority() -> None:
    result = vote([cand("베토벤"), cand("모차르트"), cand("베토벤"), cand("베토벤")])
    assert result.answer == "베토벤"
    assert result.support == 3
    assert result.confidence == pytest.approx(0.75)
    assert result.clusters[0].text == "베토벤" and result.clusters[1].text == "모차르트"


def test_fuzzy_variants_outvote_a_single_other_answer() -> None:
    result = vote([cand("130개"), cand("120 개", grounded=False), cand("120"), cand("120개")])
    assert result.answer == "120개"
    assert result.support == 3
    assert [c.cluster for c in result.candidates] == [1, 0, 0, 0]
    assert result.candidates[0].similarity < VoteConfig().threshold


def test_weights_change_the_winner() -> None:
    candidates = [cand("베토벤", "a"), cand("베토벤", "b"), cand("모차르트", "c")]
    assert vote(candidates).answer == "베토벤"
    heavy = [cand("베토벤", "a"), cand("베토벤", "b"), cand("모차르트", "c", weight=3.0)]
    assert vote(heavy).answer == "모차르트"


def test_grounding_and_beam_rank_change_the_weight() -> None:
    config = VoteConfig()
    assert effective_weight(cand("x", rank=0), config) == 1.0
    assert effective_weight(cand("x", rank=2), config) == pytest.approx(1 / 3)
    assert effective_weight(cand("x", grounded=False), config) == pytest.approx(config.ungrounded_weight)
    assert effective_weight(cand("x", weight=2.0, rank=1), config) == pytest.approx(1.0)
    # Two ungrounded outputs lose to one grounded one.
    result = vote([cand("파리", grounded=False), cand("파리", grounded=False), cand("런던")])
    assert result.answer == "런던"
    # Two lower beams (1/2 + 1/3) do not outvote one top beam; three do.
    assert vote([cand("런던", rank=0), cand("파리", rank=1), cand("파리", rank=2)]).answer == "런던"
    assert (
        vote([cand("런던"), cand("파리", rank=1), cand("파리", rank=2), cand("파리", rank=3)]).answer
        == "파리"
    )
    # With rank_discount 0 every beam counts fully.
    flat = VoteConfig(rank_discount=0.0)
    assert vote([cand("런던"), cand("파리", rank=1), cand("파리", rank=2)], flat).answer == "파리"


def test_the_answer_prefers_a_grounded_text() -> None:
    # "120 개" is the most frequent spelling but only "120개" is in the context.
    candidates = [cand("120 개", grounded=False)] * 3 + [cand("120개")]
    result = vote(candidates, VoteConfig(ungrounded_weight=1.0))
    assert result.answer == "120개"


def test_medoid_is_the_most_central_text() -> None:
    # The first candidate seeds the cluster, but the answer is the text the others agree with most.
    result = vote([cand("김대중 대통령"), cand("김대중"), cand("김대중")])
    assert result.support == 3
    assert result.answer == "김대중"


def test_threshold_override() -> None:
    candidates = [cand("120개"), cand("120"), cand("130개")]
    assert vote(candidates).support == 2
    assert vote(candidates, threshold=100.0).support == 1


def test_ties_go_to_the_earliest_candidate() -> None:
    assert vote([cand("베토벤"), cand("모차르트")]).answer == "베토벤"
    assert vote([cand("모차르트"), cand("베토벤")]).answer == "모차르트"
    # Equal weight but more of it grounded wins, whatever the order.
    mixed = [cand("모차르트", grounded=False, weight=1 / 0.3), cand("베토벤")]
    assert vote(mixed).answer == "베토벤"
    assert vote(mixed[::-1]).answer == "베토벤"


def test_a_clear_winner_does_not_depend_on_input_order() -> None:
    candidates = [
        cand("120개", "a"),
        cand("120 개", "b", grounded=False),
        cand("120", "a", rank=1),
        cand("130개", "b", rank=1),
        cand("130개", "c", rank=2),
        cand("", "c"),
    ]
    results = {
        (r.answer, r.support, round(r.confidence, 9))
        for r in (vote(list(p)) for p in itertools.permutations(candidates))
    }
    assert len(results) == 1


def test_single_candidate() -> None:
    result = vote([cand("베토벤", "a")])
    assert (result.answer, result.confidence, result.support) == ("베토벤", 1.0, 1)
    assert result.adapter_agreement == {"a": 1.0}
    assert result.candidates[0].similarity == 100.0


def test_empty_list_raises() -> None:
    with pytest.raises(NoCandidatesError):
        vote([])


def test_empty_texts_are_kept_but_never_win() -> None:
    result = vote([cand(""), cand(""), cand("베토벤", rank=2, grounded=False)])
    assert result.answer == "베토벤"
    assert result.support == 1
    assert [c.cluster for c in result.candidates] == [None, None, 0]
    assert 0 < result.confidence < 0.1  # the empty outputs still count against it


def test_all_empty_gives_an_empty_answer_with_zero_confidence() -> None:
    result = vote([cand("", "a"), cand(" ", None)])
    assert (result.answer, result.confidence, result.support) == ("", 0.0, 0)
    assert len(result.candidates) == 2
    assert result.adapter_agreement == {"a": 0.0, "base": 0.0}


def test_provenance_and_adapter_agreement() -> None:
    candidates = [
        cand("베토벤", "a", rank=0),
        cand("모차르트", "a", rank=1),
        cand("베토벤", None, rank=0),
        cand("베토벤", None, rank=1, prompt="principled"),
        cand("모차르트", "b", rank=0, weight=2.0),
    ]
    result = vote(candidates)
    assert result.answer == "베토벤"
    assert [v.candidate for v in result.candidates] == candidates
    assert [v.cluster for v in result.candidates] == [0, 1, 0, 0, 1]
    assert [v.effective_weight for v in result.candidates] == pytest.approx([1.0, 0.5, 1.0, 0.5, 2.0])
    assert result.confidence == pytest.approx(2.5 / 5.0)
    assert result.adapter_agreement == pytest.approx({"a": 1.0 / 1.5, "base": 1.0, "b": 0.0})
    assert result.candidates[3].similarity == 100.0 and result.candidates[4].similarity < 50
    assert result.clusters[1].weight == pytest.approx(2.5) and result.clusters[1].support == 2


def test_vote_config_validation() -> None:
    with pytest.raises(InvalidVoteConfigError, match="vote.threshold"):
        VoteConfig(threshold=120)
    with pytest.raises(InvalidVoteConfigError, match="vote.ungrounded_weight"):
        VoteConfig(ungrounded_weight=-1)
