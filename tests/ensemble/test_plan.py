"""Decoding validation, generate kwargs, and member x prompt plans."""

import pytest

from ensemble.errors import EmptyPlanError, InvalidDecodingError, InvalidMemberError, UnknownPromptError
from ensemble.plan import Decoding, Member, PlanItem, build_plan

GENERATE_KEYS = {
    "max_new_tokens",
    "num_beams",
    "num_return_sequences",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "seed",
}


def test_defaults_are_three_beams_three_outputs() -> None:
    decoding = Decoding()
    assert decoding.strategy == "beam"
    assert decoding.n_outputs == 3
    kwargs = decoding.generate_kwargs()
    assert set(kwargs) == GENERATE_KEYS
    assert kwargs["num_beams"] == 3 and kwargs["num_return_sequences"] == 3 and kwargs["do_sample"] is False


@pytest.mark.parametrize(
    ("decoding", "n_outputs"),
    [
        (Decoding(strategy="beam", num_beams=5), 5),
        (Decoding(strategy="beam", num_beams=5, num_return_sequences=2), 2),
        (Decoding(strategy="greedy"), 1),
        (Decoding(strategy="sample"), 1),
        (Decoding(strategy="sample", num_return_sequences=4), 4),
    ],
)
def test_n_outputs(decoding: Decoding, n_outputs: int) -> None:
    assert decoding.n_outputs == n_outputs
    assert decoding.generate_kwargs()["num_return_sequences"] == n_outputs


def test_greedy_runs_one_beam_with_neutral_sampling_knobs() -> None:
    kwargs = Decoding(strategy="greedy", num_beams=4, temperature=0.3, seed=7).generate_kwargs()
    assert kwargs == {
        "max_new_tokens": 32,
        "num_beams": 1,
        "num_return_sequences": 1,
        "do_sample": False,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
        "seed": None,
    }
    # Equal effect, equal kwargs: the pipeline batches such decodings together.
    assert kwargs == Decoding(strategy="greedy").generate_kwargs()


def test_sampling_passes_its_knobs() -> None:
    kwargs = Decoding(strategy="sample", temperature=0.5, top_k=10, top_p=0.9, seed=3).generate_kwargs()
    assert kwargs["do_sample"] is True and kwargs["num_beams"] == 1
    assert (kwargs["temperature"], kwargs["top_k"], kwargs["top_p"], kwargs["seed"]) == (0.5, 10, 0.9, 3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_beams": 0}, "decoding.num_beams"),
        ({"num_beams": True}, "decoding.num_beams"),
        ({"num_beams": 2, "num_return_sequences": 3}, "decoding.num_return_sequences"),
        ({"num_return_sequences": 0}, "decoding.num_return_sequences"),
        ({"strategy": "greedy", "num_return_sequences": 2}, "decoding.num_return_sequences"),
        ({"max_new_tokens": 0}, "decoding.max_new_tokens"),
        ({"temperature": 0.0}, "decoding.temperature"),
        ({"temperature": float("inf")}, "decoding.temperature"),
        ({"top_p": 0.0}, "decoding.top_p"),
        ({"top_p": 1.5}, "decoding.top_p"),
        ({"top_k": -1}, "decoding.top_k"),
        ({"seed": -1}, "decoding.seed"),
        ({"strategy": "nucleus"}, "decoding.strategy"),
    ],
)
def test_invalid_decoding_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidDecodingError) as info:
        Decoding(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_member_validation_and_name() -> None:
    assert Member(None).name == "base"
    assert Member("news", 2.0).name == "news"
    with pytest.raises(InvalidMemberError, match="members.weight"):
        Member("news", 0.0)
    with pytest.raises(InvalidMemberError, match="members.adapter"):
        Member("  ")


def test_plan_is_every_member_times_every_prompt_member_major() -> None:
    members = [Member("a"), Member("b", 2.0)]
    plan = build_plan(members, ["zero-shot", "principled"], Decoding(num_beams=3))
    assert plan.items == (
        PlanItem(Member("a"), "zero-shot"),
        PlanItem(Member("a"), "principled"),
        PlanItem(Member("b", 2.0), "zero-shot"),
        PlanItem(Member("b", 2.0), "principled"),
    )
    assert plan.n_candidates == 12


def test_duplicates_are_dropped_keeping_the_first() -> None:
    members = [Member("a", 1.0), Member(None), Member("a", 5.0)]
    plan = build_plan(members, ["principled", "zero-shot", "principled"], Decoding(strategy="greedy"))
    assert [(i.member, i.prompt) for i in plan.items] == [
        (Member("a", 1.0), "principled"),
        (Member("a", 1.0), "zero-shot"),
        (Member(None), "principled"),
        (Member(None), "zero-shot"),
    ]
    assert plan.n_candidates == 4


def test_plan_errors() -> None:
    with pytest.raises(EmptyPlanError, match="^members: "):
        build_plan([], ["zero-shot"], Decoding())
    with pytest.raises(EmptyPlanError, match="^prompts: "):
        build_plan([Member(None)], [], Decoding())
    with pytest.raises(UnknownPromptError) as info:
        build_plan([Member(None)], ["zero-shot", "chain-of-thought"], Decoding())
    assert info.value.name == "chain-of-thought"


def test_plan_accepts_iterators() -> None:
    plan = build_plan(iter([Member(None)]), iter(["zero-shot"]), Decoding())
    assert len(plan.items) == 1
