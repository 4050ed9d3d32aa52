"""The pipeline against a fake generator: batching, rendering, provenance and voting."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ensemble.errors import EmptyPlanError, GeneratorContractError, UnknownPromptError
from ensemble.pipeline import CandidateGenerator, EnsemblePipeline, PipelineConfig, QARequest
from ensemble.plan import Decoding, Member
from ensemble.prompts import render_prompt
from ensemble.vote import VoteConfig

CONTEXT = "서울시는 3일 한강공원에 나무 120개를 새로 심었다고 밝혔다. 작곡가 베토벤의 교향곡이 연주됐다."
QUESTION = "한강공원에 심은 나무는 몇 개인가?"

Script = Callable[[str | list[dict[str, str]], str | None, int], list[tuple[str, float]]]


def beams(*texts: str) -> Script:
    """Every prompt gets these outputs (cut to num_return_sequences)."""
    return lambda prompt, adapter, n: [(t, -0.1 * i) for i, t in enumerate(texts)][:n]


@dataclass
class FakeGenerator:
    """Records every generate call and answers from a script."""

    script: Script = field(default_factory=lambda: beams("답변: 120 개.", "120", "130개"))
    has_chat_template: bool = True
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
        self.calls.append(
            {
                "prompts": list(prompts),
                "adapters": list(adapters),
                "num_beams": num_beams,
                "num_return_sequences": num_return_sequences,
                "do_sample": do_sample,
                "max_new_tokens": max_new_tokens,
            }
        )
        return [self.script(p, a, num_return_sequences) for p, a in zip(prompts, adapters, strict=True)]


TWO_ADAPTERS = (Member("a"), Member("b"))


def test_fake_satisfies_the_protocol() -> None:
    assert isinstance(FakeGenerator(), CandidateGenerator)


def test_two_adapters_two_prompts_three_beams_is_one_call_of_four_prompts() -> None:
    generator = FakeGenerator()
    pipeline = EnsemblePipeline(generator)
    result = pipeline.answer(CONTEXT, QUESTION, members=TWO_ADAPTERS, decoding=Decoding(num_beams=3))

    assert len(generator.calls) == 1
    call = generator.calls[0]
    assert call["adapters"] == ["a", "a", "b", "b"]
    assert call["prompts"] == [
        render_prompt(style, CONTEXT, QUESTION, chat=True)
        for style in ("zero-shot", "principled", "zero-shot", "principled")
    ]
    assert (call["num_beams"], call["num_return_sequences"], call["do_sample"]) == (3, 3, False)
    assert len(result.candidates) == 12
    assert result.answer == "120개"
    assert result.support == 8  # "120 개" and "120" from every prompt; "130개" is its own cluster
    stats = pipeline.stats
    assert (stats.requests, stats.generate_calls, stats.prompts, stats.candidates) == (1, 1, 4, 12)


def test_provenance() -> None:
    generator = FakeGenerator()
    result = EnsemblePipeline(generator).answer(
        CONTEXT, QUESTION, members=(Member("a", 2.0), Member(None)), prompts=("principled",)
    )
    provenance = [
        (v.candidate.adapter, v.candidate.prompt, v.candidate.beam_rank, v.candidate.weight)
        for v in result.candidates
    ]
    assert provenance == [
        ("a", "principled", 0, 2.0),
        ("a", "principled", 1, 2.0),
        ("a", "principled", 2, 2.0),
        (None, "principled", 0, 1.0),
        (None, "principled", 1, 1.0),
        (None, "principled", 2, 1.0),
    ]
    first = result.candidates[0].candidate
    assert (first.raw, first.text, first.grounded, first.score) == ("답변: 120 개.", "120개", True, 0.0)
    assert result.adapter_agreement.keys() == {"a", "base"}


def test_ungrounded_answers_keep_their_cleaned_text() -> None:
    generator = FakeGenerator(script=beams("모차르트", "베토벤."))
    result = EnsemblePipeline(generator).answer(CONTEXT, QUESTION, decoding=Decoding(num_beams=2))
    texts = [(v.candidate.text, v.candidate.grounded) for v in result.candidates]
    assert ("모차르트", False) in texts and ("베토벤", True) in texts
    assert result.answer == "베토벤"


def test_answer_many_is_one_call_for_three_requests() -> None:
    generator = FakeGenerator()
    pipeline = EnsemblePipeline(generator, default_members=lambda: TWO_ADAPTERS)
    requests = [
        QARequest(context=CONTEXT, question=QUESTION),
        QARequest(context="나무 130개를 심었다.", question="몇 개?"),
        QARequest(context=CONTEXT, question="누구의 교향곡인가?", members=(Member(None),)),
    ]
    votes = pipeline.answer_many(requests)

    assert len(generator.calls) == 1
    assert generator.calls[0]["adapters"] == ["a", "a", "b", "b", "a", "a", "b", "b", None, None]
    assert [len(v.candidates) for v in votes] == [12, 12, 6]
    # Each request is grounded against its own context.
    assert votes[0].answer == "120개"
    grounded = {(v.candidate.text, v.candidate.grounded) for v in votes[1].candidates}
    assert grounded == {("120 개", False), ("120", False), ("130개", True)}


def test_mixed_decodings_make_one_call_each() -> None:
    generator = FakeGenerator()
    pipeline = EnsemblePipeline(generator)
    greedy = Decoding(strategy="greedy")
    requests = [
        QARequest(context=CONTEXT, question=QUESTION),
        QARequest(context=CONTEXT, question=QUESTION, decoding=greedy),
        QARequest(context=CONTEXT, question=QUESTION, decoding=Decoding(num_beams=3)),
        # Greedy with other (ignored) sampling knobs runs in the same batch as plain greedy.
        QARequest(context=CONTEXT, question=QUESTION, decoding=Decoding(strategy="greedy", temperature=0.2)),
    ]
    votes = pipeline.answer_many(requests)

    assert len(generator.calls) == 2
    assert [c["num_beams"] for c in generator.calls] == [3, 1]
    assert [len(c["prompts"]) for c in generator.calls] == [4, 4]
    assert [len(v.candidates) for v in votes] == [6, 2, 6, 2]
    assert pipeline.stats.generate_calls == 2


def test_plain_prompts_without_a_chat_template() -> None:
    generator = FakeGenerator(has_chat_template=False)
    EnsemblePipeline(generator).answer(CONTEXT, QUESTION, prompts=("few-shot",))
    assert generator.calls[0]["prompts"] == [render_prompt("few-shot", CONTEXT, QUESTION, chat=False)]


def test_config_defaults_are_used() -> None:
    generator = FakeGenerator()
    config = PipelineConfig(default_prompts=("few-shot",), default_decoding=Decoding(strategy="greedy"))
    result = EnsemblePipeline(generator, config).answer(CONTEXT, QUESTION)
    assert [(v.candidate.adapter, v.candidate.prompt) for v in result.candidates] == [(None, "few-shot")]
    assert generator.calls[0]["num_return_sequences"] == 1


def test_default_members_are_read_per_request() -> None:
    loaded: list[Member] = [Member(None)]
    generator = FakeGenerator()
    pipeline = EnsemblePipeline(generator, default_members=lambda: loaded)
    pipeline.answer(CONTEXT, QUESTION)
    loaded.append(Member("new"))
    pipeline.answer(CONTEXT, QUESTION)
    assert generator.calls[1]["adapters"] == [None, None, "new", "new"]


def test_bad_requests_fail_before_generating() -> None:
    generator = FakeGenerator()
    pipeline = EnsemblePipeline(generator)
    with pytest.raises(UnknownPromptError):
        pipeline.answer_many(
            [
                QARequest(context=CONTEXT, question=QUESTION),
                QARequest(context=CONTEXT, question=QUESTION, prompts=("bogus",)),
            ]
        )
    with pytest.raises(EmptyPlanError):
        pipeline.answer(CONTEXT, QUESTION, members=())
    assert generator.calls == []
    assert pipeline.answer_many([]) == []


def test_a_generator_breaking_the_protocol_is_reported() -> None:
    class Short(FakeGenerator):
        def generate(self, prompts: Sequence[Any], adapters: Sequence[Any], **kwargs: Any) -> Any:
            return super().generate(prompts, adapters, **kwargs)[:-1]

    with pytest.raises(GeneratorContractError, match="^generate: "):
        EnsemblePipeline(Short()).answer(CONTEXT, QUESTION)
    too_many = FakeGenerator(script=lambda p, a, n: [("120개", 0.0)] * (n + 1))
    with pytest.raises(GeneratorContractError):
        EnsemblePipeline(too_many).answer(CONTEXT, QUESTION)


def test_all_empty_outputs_give_an_empty_answer() -> None:
    result = EnsemblePipeline(FakeGenerator(script=beams("", "답변:", "\n"))).answer(CONTEXT, QUESTION)
    assert (result.answer, result.confidence, result.support) == ("", 0.0, 0)
    assert len(result.candidates) == 6


@dataclass
class ScoringGenerator(FakeGenerator):
    """A fake that also scores: a text's log-probability is a function of its adapter and text."""

    score_calls: list[dict[str, Any]] = field(default_factory=list)
    wrong_count: bool = False

    def score(
        self,
        prompts: Sequence[str | list[dict[str, str]]],
        adapters: Sequence[str | None],
        continuations: Sequence[Sequence[str]],
    ) -> list[list[tuple[float, int]]]:
        self.score_calls.append(
            {
                "prompts": list(prompts),
                "adapters": list(adapters),
                "continuations": [list(c) for c in continuations],
            }
        )
        out = [
            [(-float(len(text)) - (0.5 if adapter == "b" else 0.0), len(text) + 1) for text in texts]
            for adapter, texts in zip(adapters, continuations, strict=True)
        ]
        return out[:-1] if self.wrong_count else out


LIKELIHOOD = VoteConfig(rule="likelihood")


def test_likelihood_vote_scores_every_distinct_text_under_every_row_in_one_call() -> None:
    generator = ScoringGenerator()
    pipeline = EnsemblePipeline(generator, PipelineConfig(vote=LIKELIHOOD))
    requests = [
        QARequest(context=CONTEXT, question=QUESTION, members=TWO_ADAPTERS),
        QARequest(context=CONTEXT, question="베토벤은 무엇을 했나?", members=(Member("a"),)),
    ]
    votes = pipeline.answer_many(requests)
    assert len(generator.score_calls) == 1 and pipeline.stats.score_calls == 1
    call = generator.score_calls[0]
    # request 0: 2 members x 2 prompts; request 1: 1 member x 2 prompts; each row once, prompts as generated
    assert call["adapters"] == ["a", "a", "b", "b", "a", "a"]
    assert call["prompts"] == generator.calls[0]["prompts"]
    texts = list(dict.fromkeys(v.candidate.text for v in votes[0].candidates))
    assert texts == ["120개", "120", "130개"]  # "답변: 120 개." grounded to the context's span
    assert call["continuations"][0] == texts
    for voted in votes[0].candidates:
        rows = {(lik.member, lik.prompt): lik for lik in voted.candidate.likelihoods}
        assert set(rows) == {(m, p) for m in ("a", "b") for p in ("zero-shot", "principled")}
        assert rows[("b", "zero-shot")].logprob == -float(len(voted.candidate.text)) - 0.5
        assert rows[("a", "principled")].tokens == len(voted.candidate.text) + 1


def test_count_vote_and_a_single_distinct_text_need_no_scores() -> None:
    generator = ScoringGenerator()
    EnsemblePipeline(generator).answer(CONTEXT, QUESTION, members=TWO_ADAPTERS)
    one_text = ScoringGenerator(script=beams("120개", "120개"))
    vote_ = EnsemblePipeline(one_text, PipelineConfig(vote=LIKELIHOOD)).answer(CONTEXT, QUESTION)
    assert generator.score_calls == [] and one_text.score_calls == []
    assert all(v.candidate.likelihoods == () for v in vote_.candidates)


def test_a_request_may_ask_for_the_likelihood_vote_itself() -> None:
    generator = ScoringGenerator()
    pipeline = EnsemblePipeline(generator)
    pipeline.answer_many([QARequest(context=CONTEXT, question=QUESTION, vote=LIKELIHOOD)])
    assert len(generator.score_calls) == 1


def test_likelihood_vote_without_a_scorer_or_with_short_scores_is_a_contract_error() -> None:
    with pytest.raises(GeneratorContractError, match="score"):
        EnsemblePipeline(FakeGenerator(), PipelineConfig(vote=LIKELIHOOD)).answer(CONTEXT, QUESTION)
    with pytest.raises(GeneratorContractError, match="score"):
        EnsemblePipeline(ScoringGenerator(wrong_count=True), PipelineConfig(vote=LIKELIHOOD)).answer(
            CONTEXT, QUESTION
        )
