"""The ensemble errors: built-in bases, field names in messages, a readable KeyError."""

import pytest

from ensemble.errors import (
    EmptyPlanError,
    GeneratorContractError,
    InvalidDecodingError,
    InvalidMemberError,
    InvalidVoteConfigError,
    NoCandidatesError,
    UnknownPromptError,
)


def test_unknown_prompt_is_a_key_error_with_a_plain_message() -> None:
    error = UnknownPromptError("x", ["zero-shot", "principled", "few-shot"])
    assert isinstance(error, KeyError)
    assert str(error) == "prompts: unknown prompt style 'x'; known: few-shot, principled, zero-shot"
    assert error.field == "prompts"
    assert error.name == "x"
    assert error.known == ("few-shot", "principled", "zero-shot")


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (InvalidDecodingError, ValueError),
        (InvalidMemberError, ValueError),
        (InvalidVoteConfigError, ValueError),
        (EmptyPlanError, ValueError),
        (GeneratorContractError, RuntimeError),
    ],
)
def test_field_errors_name_the_field(cls: type[Exception], base: type[Exception]) -> None:
    error = cls("decoding.num_beams", "must be an integer >= 1; got 0")
    assert isinstance(error, base)
    assert error.field == "decoding.num_beams"  # type: ignore[attr-defined]
    assert str(error) == "decoding.num_beams: must be an integer >= 1; got 0"


def test_no_candidates_has_a_default_message() -> None:
    error = NoCandidatesError()
    assert isinstance(error, ValueError)
    assert str(error).startswith("candidates: ")
