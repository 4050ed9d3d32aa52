"""`run_batch` against a fake generator: row order and ids, failure isolation, scores, cancel and progress; a
batch run as parts (`split_parts` / `merge_parts`, as the Ray Serve replicas run it) equals one run."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from ensemble.batch import (
    BatchCancelledError,
    BatchOptions,
    BatchResult,
    merge_parts,
    run_batch,
    split_parts,
)
from ensemble.chunks import ChunkLimits, char_length, length_order
from ensemble.datasets import QAExample
from ensemble.metric import score_predictions
from ensemble.pipeline import CandidateGenerator, EnsemblePipeline
from ensemble.plan import Decoding
from ensemble.strategies import ENSEMBLE
from ensemble.vote import VoteConfig

# question -> (beam outputs best first, the greedy output); "BOOM" makes the generator raise.
SCRIPT = {
    "나무는 몇 개인가?": (("120개", "12개", "130개"), "120개"),
    "작곡가는 누구인가?": (("베토벤", "모차르트", "바흐"), "모차르트"),
    "산책로의 길이는?": (("420억 원", "420억", "7.2km"), "7.2km"),
    "BOOM 무엇이 터졌나?": (("폭탄",), "폭탄"),
    "누가 말했나?": (("박서윤", "박서윤 시장", "시장"), "박서윤"),
}
# Input order is NOT length order: run_batch sorts by length internally and must put rows back.
EXAMPLES = [
    QAExample("q1", "서울시는 3일 한강공원에 나무 120개를 새로 심었다고 밝혔다. " * 3, "나무는 몇 개인가?",
              ("120개",)),
    QAExample("q2", "작곡가 베토벤의 교향곡이 연주됐다. 관객은 500명이었다.", "작곡가는 누구인가?",
              ("베토벤",)),
    QAExample("q3", "해담시 공원의 산책로는 7.2km이고 예산은 420억 원이다. " * 2, "산책로의 길이는?",
              ("7.2km",)),
    QAExample("q4", "무언가 터졌다고 한다. 자세한 내용은 알려지지 않았다.", "BOOM 무엇이 터졌나?", ("폭탄",)),
    QAExample("q5", "박서윤 시장이 말했다.", "누가 말했나?", ("박서윤",)),
]  # fmt: skip


def question_of(prompt: str | list[dict[str, str]]) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return next(q for q in SCRIPT if q in text)


@dataclass
class FakeGenerator:
    """Answers from SCRIPT by the question in the prompt; the whole batch fails if one question says BOOM."""

    has_chat_template: bool = True
    greedy_fails: frozenset[str] = frozenset()
    """Questions whose greedy (one-beam) generation raises."""
    calls: list[dict[str, Any]] = field(default_factory=list)

    def generate(
        self,
        prompts: Sequence[str | list[dict[str, str]]],
        adapters: Sequence[str | None],
        *,
        max_new_tokens: int,
        num_beams: int,
        num_return_sequences: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int | None,
    ) -> list[list[tuple[str, float]]]:
        questions = [question_of(p) for p in prompts]
        self.calls.append({"questions": questions, "num_beams": num_beams})
        if any("BOOM" in q for q in questions):
            raise RuntimeError("the model exploded")
        if num_beams == 1 and self.greedy_fails.intersection(questions):
            raise RuntimeError("greedy failed")
        outputs = []
        for q in questions:
            beam, greedy = SCRIPT[q]
            texts = beam[:num_return_sequences] if num_beams > 1 else (greedy,)
            outputs.append([(t, -0.1 * i) for i, t in enumerate(texts)])
        return outputs


def run(
    examples: Sequence[QAExample] = EXAMPLES, generator: FakeGenerator | None = None, **options: Any
) -> tuple[Any, FakeGenerator]:
    generator = generator or FakeGenerator()
    on_progress = options.pop("on_progress", None)
    should_stop = options.pop("should_stop", None)
    result = run_batch(
        EnsemblePipeline(generator),
        examples,
        BatchOptions(**{"chunks": ChunkLimits(rows=2), **options}),
        on_progress=on_progress,
        should_stop=should_stop,
    )
    return result, generator


def test_fake_satisfies_the_protocol() -> None:
    assert isinstance(FakeGenerator(), CandidateGenerator)


def question(qid: str) -> str:
    return next(ex.question for ex in EXAMPLES if ex.id == qid)


def test_one_row_per_input_in_input_order_although_run_length_sorted() -> None:
    result, generator = run()
    assert [row.id for row in result.rows] == ["q1", "q2", "q3", "q4", "q5"]
    assert [row.answer for row in result.rows] == ["120개", "베토벤", "420억 원", "", "박서윤"]
    # Chunks went shortest first: q5 and q2 lead, the longest (q1) comes last.
    first = generator.calls[0]["questions"]
    assert set(first) == {question("q5"), question("q2")}
    assert set(generator.calls[-1]["questions"]) == {question("q1")}


def test_a_row_whose_generation_raises_fails_alone() -> None:
    result, _ = run()
    assert [row.id for row in result.failed] == ["q4"]
    failed = result.failed[0]
    assert failed.error == "RuntimeError: the model exploded"
    assert (failed.answer, failed.vote, failed.strategies) == ("", None, {})
    for row in result.rows:
        if row.id != "q4":
            assert row.error is None and row.vote is not None and row.answer
            assert row.confidence > 0 and row.support >= 1


def test_scores_per_strategy_when_gold_exists() -> None:
    result, _ = run(strategies=True)
    gold = {ex.id: list(ex.answers) for ex in EXAMPLES}
    assert result.scores is not None
    assert result.scores.keys() == {
        "greedy:base:zero-shot", "top-beam:base:zero-shot", "greedy:base:principled",
        "top-beam:base:principled", "member:base", "prompt:zero-shot", "prompt:principled", ENSEMBLE,
    }  # fmt: skip
    beam = {"q1": "120개", "q2": "베토벤", "q3": "420억 원", "q5": "박서윤"}  # q4 failed: missing, scores 0
    greedy = {"q1": "120개", "q2": "모차르트", "q3": "7.2km", "q5": "박서윤"}
    for strategy, scores in result.scores.items():
        expected = greedy if strategy.startswith("greedy:") else beam
        assert scores == score_predictions(gold, expected), strategy
    assert (result.scores[ENSEMBLE].exact_match, result.scores[ENSEMBLE].count) == (60.0, 5)
    assert result.scores[ENSEMBLE].missing == 1
    assert result.rows[1].strategies["greedy:base:principled"] == "모차르트"


def test_without_strategies_only_the_ensemble_is_scored_and_no_greedy_pass_runs() -> None:
    result, generator = run()
    assert result.scores is not None and list(result.scores) == [ENSEMBLE]
    assert all(call["num_beams"] == 3 for call in generator.calls)
    assert all(row.strategies == {} for row in result.rows)
    assert result.seconds["greedy"] == 0.0 and result.seconds["total"] >= result.seconds["main"]


def test_strategies_add_a_greedy_pass_unless_the_main_pass_is_greedy() -> None:
    _, generator = run(strategies=True)
    assert {call["num_beams"] for call in generator.calls} == {1, 3}
    result, generator = run(strategies=True, decoding=Decoding(strategy="greedy"))
    assert {call["num_beams"] for call in generator.calls} == {1}
    assert len(generator.calls) == 3 + 2  # three chunks, and q4's chunk retried row by row
    row = result.rows[0]
    assert row.strategies["greedy:base:zero-shot"] == "120개"
    assert not [s for s in row.strategies if s.startswith("top-beam:")]  # it would only repeat greedy:*


def test_a_row_whose_greedy_pass_fails_keeps_its_answer_and_misses_only_greedy_strategies() -> None:
    result, _ = run(generator=FakeGenerator(greedy_fails=frozenset({question("q2")})), strategies=True)
    row = result.rows[1]
    assert (row.id, row.error, row.answer) == ("q2", None, "베토벤")
    assert not [s for s in row.strategies if s.startswith("greedy:")]
    assert row.strategy_error is not None and row.strategy_error.startswith("greedy pass:")
    assert result.rows[0].strategy_error is None
    assert result.scores is not None
    assert result.scores["greedy:base:zero-shot"].missing == 2  # q4 (failed) and q2 (greedy pass failed)
    assert result.scores[ENSEMBLE].missing == 1


def test_scores_are_none_when_a_row_has_no_gold() -> None:
    examples = [*EXAMPLES[:2], QAExample("x", "박서윤 시장이 말했다.", "누가 말했나?", ())]
    result, _ = run(examples, strategies=True)
    assert result.scores is None
    assert [row.answer for row in result.rows] == ["120개", "베토벤", "박서윤"]


def test_should_stop_cancels() -> None:
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) > 1  # let the first chunk run

    with pytest.raises(BatchCancelledError, match="after 2 of 5"):
        run(should_stop=should_stop)


def test_on_progress_counts_up_to_the_total() -> None:
    seen: list[tuple[int, int]] = []
    run(on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_no_examples() -> None:
    result, generator = run([])
    assert (result.rows, result.scores, generator.calls) == ([], None, [])


def test_parts_are_whole_chunks_in_length_order() -> None:
    order = length_order([char_length(ex) for ex in EXAMPLES])
    two = ChunkLimits(rows=2)
    assert split_parts(EXAMPLES, two, chunks_per_part=1) == [order[0:2], order[2:4], order[4:5]]
    assert split_parts(EXAMPLES, two, chunks_per_part=2) == [order[0:4], order[4:5]]
    assert split_parts([], two, chunks_per_part=2) == []
    with pytest.raises(ValueError, match="chunks_per_part"):
        split_parts(EXAMPLES, two, chunks_per_part=0)
    with pytest.raises(ValueError, match="3 lengths for 5 examples"):
        split_parts(EXAMPLES, two, 1, lengths=[1, 2, 3])


# by characters, then by lengths as a tokenizer would count them, cut by a CPU's limits
CUTS = [
    (ChunkLimits(rows=2), None),
    (ChunkLimits(rows=3, tokens=60, margin=0.1, slack=2), (30, 10, 21, 11, 20)),
]


@pytest.mark.parametrize("chunks_per_part", [1, 2, 3])
@pytest.mark.parametrize(("chunks", "lengths"), CUTS)
def test_parts_merged_equal_one_run_with_the_same_generation_batches(
    chunks_per_part: int, chunks: ChunkLimits, lengths: tuple[int, ...] | None
) -> None:
    options = BatchOptions(chunks=chunks, strategies=True)
    whole_generator = FakeGenerator()
    whole = run_batch(EnsemblePipeline(whole_generator), EXAMPLES, options, lengths=lengths)

    parts = split_parts(EXAMPLES, options.chunks, chunks_per_part, lengths)
    parts_generator = FakeGenerator()
    results = [
        run_batch(
            EnsemblePipeline(parts_generator),
            [EXAMPLES[i] for i in part],
            options,
            lengths=None if lengths is None else [lengths[i] for i in part],
        )
        for part in parts
    ]
    merged = merge_parts(EXAMPLES, parts, results, options)

    assert merged.rows == whole.rows  # ids, answers, votes, strategies, errors: all of it, in input order
    assert merged.scores == whole.scores
    assert parts_generator.calls == whole_generator.calls  # the very same generate calls, in the same order
    assert merged.seconds.keys() == whole.seconds.keys()


def test_merge_refuses_parts_that_do_not_fit() -> None:
    options = BatchOptions(chunks=ChunkLimits(rows=2))
    parts = split_parts(EXAMPLES, options.chunks, 2)
    results = [run_batch(EnsemblePipeline(FakeGenerator()), [EXAMPLES[i] for i in p], options) for p in parts]
    with pytest.raises(ValueError, match="2 parts but 1 results"):
        merge_parts(EXAMPLES, parts, results[:1], options)
    short = replace(results[0], rows=results[0].rows[:1])
    with pytest.raises(ValueError, match="came back with 1"):
        merge_parts(EXAMPLES, parts, [short, results[1]], options)
    with pytest.raises(ValueError, match="every row exactly once"):
        merge_parts(EXAMPLES, [parts[0], parts[0]], [results[0], results[0]], options)


def test_merge_of_no_rows() -> None:
    empty: list[QAExample] = []
    assert merge_parts(empty, [], [], BatchOptions()) == BatchResult(rows=[], scores=None, seconds={})


def test_rows_on_gold_record_whether_the_votes_answer_is_an_exact_match() -> None:
    result, _ = run()
    assert [row.correct for row in result.rows] == [True, True, False, None, True]  # q4 failed
    examples = [replace(EXAMPLES[0], answers=())]
    result, _ = run(examples)
    assert result.rows[0].correct is None


def test_rows_below_min_confidence_abstain_keeping_id_order_and_vote() -> None:
    plain, _ = run()
    confidences = {row.id: row.confidence for row in plain.rows}
    cut = sorted(set(confidences.values()))[-1]  # only the most confident rows answer
    result, _ = run(min_confidence=cut)
    assert [row.id for row in result.rows] == ["q1", "q2", "q3", "q4", "q5"]
    for row, before in zip(result.rows, plain.rows, strict=True):
        if row.error is not None:
            assert not row.abstained  # a failed row has no confidence to abstain on
            continue
        assert row.abstained is (before.confidence < cut)
        assert row.answer == ("" if row.abstained else before.answer)
        assert row.vote is not None and row.vote.answer == before.answer  # the alternatives stay
        assert (row.confidence, row.correct) == (before.confidence, before.correct)
    assert any(row.abstained for row in result.rows) and not all(row.abstained for row in result.rows)
    assert result.scores is not None  # an abstained row is scored as "" (wrong)
    answered = {row.id: row.answer for row in result.rows if row.error is None}
    gold = {ex.id: list(ex.answers) for ex in EXAMPLES}
    assert result.scores[ENSEMBLE] == score_predictions(gold, answered)


def test_min_confidence_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="min_confidence"):
        BatchOptions(min_confidence=1.5)


def test_options_vote_overrides_the_pipelines_vote_for_rows_and_strategies() -> None:
    # Only ungrounded text counts: q2's context names 베토벤, not 모차르트 (beam 1) or 바흐 (beam 2).
    vote = VoteConfig(grounded_weight=0.0, ungrounded_weight=1.0)
    result, _ = run(strategies=True, vote=vote)
    row = result.rows[1]
    assert row.answer == "모차르트"
    assert row.strategies["member:base"] == "모차르트"
    assert run()[0].rows[1].answer == "베토벤"
