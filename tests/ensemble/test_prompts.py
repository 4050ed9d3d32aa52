"""The prompt registry and the one render function used by serving and training."""

import pytest

from ensemble.errors import UnknownPromptError
from ensemble.prompts import (
    ANSWER_CUE,
    DEFAULT_PROMPTS,
    PROMPT_STYLES,
    PromptStyle,
    get_prompt_style,
    render_prompt,
    render_target,
)

CONTEXT = "서울시는 3일 한강공원에 나무 120개를 새로 심었다고 밝혔다."
QUESTION = "한강공원에 심은 나무는 몇 개인가?"


def test_registry_has_the_three_styles_and_defaults_are_registered() -> None:
    assert {"zero-shot", "few-shot", "principled"} <= set(PROMPT_STYLES)
    assert DEFAULT_PROMPTS == ("zero-shot", "principled")
    for name in DEFAULT_PROMPTS:
        assert get_prompt_style(name).name == name


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        PROMPT_STYLES["new"] = PROMPT_STYLES["zero-shot"]  # type: ignore[index]


def test_unknown_style_raises_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(UnknownPromptError) as info:
        get_prompt_style("x")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "prompts: unknown prompt style 'x'; known: few-shot, principled, zero-shot"
    with pytest.raises(KeyError):
        render_prompt("nope", CONTEXT, QUESTION, chat=True)


@pytest.mark.parametrize("name", ["zero-shot", "principled"])
def test_chat_form_is_system_then_user(name: str) -> None:
    messages = render_prompt(name, CONTEXT, QUESTION, chat=True)
    assert isinstance(messages, list)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == PROMPT_STYLES[name].system
    assert CONTEXT in messages[1]["content"] and QUESTION in messages[1]["content"]
    assert all(set(m) == {"role", "content"} for m in messages)


def test_few_shot_chat_has_user_assistant_pairs_before_the_question() -> None:
    style = get_prompt_style("few-shot")
    assert len(style.few_shot) == 2
    messages = render_prompt(style, CONTEXT, QUESTION, chat=True)
    assert isinstance(messages, list)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    for (ex_context, ex_question, ex_answer), user, assistant in zip(
        style.few_shot, messages[1:5:2], messages[2:5:2], strict=True
    ):
        assert ex_context in user["content"] and ex_question in user["content"]
        assert assistant["content"] == ex_answer
        # Our examples are extractive too: the answer is a span of the example context.
        assert ex_answer in ex_context
    assert CONTEXT in messages[-1]["content"]


@pytest.mark.parametrize("name", sorted(PROMPT_STYLES))
def test_plain_form_is_one_string_ending_in_the_cue(name: str) -> None:
    text = render_prompt(name, CONTEXT, QUESTION, chat=False)
    assert isinstance(text, str)
    assert text.endswith(ANSWER_CUE)
    assert text.startswith(PROMPT_STYLES[name].system)
    assert CONTEXT in text and QUESTION in text


def test_plain_few_shot_examples_read_as_prompt_plus_target() -> None:
    style = get_prompt_style("few-shot")
    text = render_prompt(style, CONTEXT, QUESTION, chat=False)
    assert isinstance(text, str)
    for ex_context, ex_question, ex_answer in style.few_shot:
        example = style.plain_template.format(context=ex_context, question=ex_question)
        assert example + render_target(ex_answer, chat=False) in text


def test_render_target_is_just_the_answer() -> None:
    assert render_target("  베토벤 ") == "베토벤"
    assert render_target("베토벤", chat=False) == " 베토벤"


def test_braces_in_the_context_are_not_a_template() -> None:
    text = render_prompt("zero-shot", "값은 {x}이다", "{question}?", chat=False)
    assert isinstance(text, str)
    assert "값은 {x}이다" in text and "{question}?" in text


def test_a_style_must_have_both_placeholders_and_the_cue() -> None:
    with pytest.raises(ValueError, match="user_template"):
        PromptStyle(name="bad", description="", system="", user_template="{context}", plain_template="답변:")
    with pytest.raises(ValueError, match="plain_template"):
        PromptStyle(
            name="bad",
            description="",
            system="",
            user_template="{context} {question}",
            plain_template="{context} {question}",
        )
