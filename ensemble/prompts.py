"""The one registry of prompt texts, and the one function that renders them.

Serving (``ensemble.pipeline``) and training (offline, later) both call ``render_prompt`` / ``render_target``,
so a model is always asked with exactly the prompt it was trained on. A prompt is rendered either as a chat
message list (for tokenizers with a chat template; the template itself is applied in ``models/``) or as one
plain string ending in an answer cue (for base models without a template).

This module only holds and formats text: it knows nothing about tokenizers, adapters or decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ensemble.errors import UnknownPromptError

ANSWER_CUE = "답변:"
"""Ends every plain prompt; the model's answer follows after one space (see ``render_target``)."""


@dataclass(frozen=True, kw_only=True)
class PromptStyle:
    """One way of asking the question. Texts only; ``{context}`` and ``{question}`` are the placeholders."""

    name: str
    """Registry key, e.g. "zero-shot"; also what clients and adapter manifests name."""
    description: str
    """One line for humans (API listing, docs)."""
    system: str
    """The instruction: the system message in chat form, the preamble in plain form."""
    user_template: str
    """The user turn in chat form; must contain ``{context}`` and ``{question}``."""
    few_shot: tuple[tuple[str, str, str], ...] = ()
    """Worked examples as (context, question, answer); written by us, not taken from any dataset."""
    plain_template: str
    """The per-example text in plain form; contains ``{context}`` and ``{question}`` and ends with the cue."""

    def __post_init__(self) -> None:
        for field_name in ("user_template", "plain_template"):
            template = getattr(self, field_name)
            if "{context}" not in template or "{question}" not in template:
                raise ValueError(f"{self.name}.{field_name}: needs both {{context}} and {{question}}")
        if not self.plain_template.endswith(ANSWER_CUE):
            raise ValueError(f"{self.name}.plain_template: must end with the answer cue {ANSWER_CUE!r}")


_USER_TEMPLATE = "기사:\n{context}\n\n질문: {question}"
_PLAIN_TEMPLATE = "기사:\n{context}\n\n질문: {question}\n" + ANSWER_CUE

_ZERO_SHOT = PromptStyle(
    name="zero-shot",
    description="Short bilingual instruction: answer with the shortest exact span from the article.",
    system=(
        "기사를 읽고 질문에 답하세요. 기사에서 답이 되는 가장 짧은 구절을 그대로 복사해 한 줄로만 답하세요.\n"
        "Answer with the shortest exact span copied from the article, on one line, nothing else."
    ),
    user_template=_USER_TEMPLATE,
    plain_template=_PLAIN_TEMPLATE,
)

# Invented news snippets (not from KorQuAD): one number with its unit, one name, so the model sees that
# the answer keeps the unit but drops the particle that follows it in the sentence.
_FEW_SHOT_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "강원도 평창군은 지난 주말 열린 송어 축제에 방문객 4만 2천 명이 다녀갔다고 밝혔다. "
        "군은 얼음 두께가 30㎝를 넘어 안전 기준을 충족했다며 축제를 다음 달 9일까지 연장하기로 했다.",
        "축제를 찾은 방문객은 몇 명인가?",
        "4만 2천 명",
    ),
    (
        "한 지역 도서관이 올해 '책 읽는 마을' 공모에서 대상을 받았다. 심사위원장을 맡은 소설가 한도윤은 "
        "주민이 직접 기획한 낭독회가 높은 평가를 받았다고 설명했다.",
        "공모전 심사위원장을 맡은 사람은 누구인가?",
        "한도윤",
    ),
)

_FEW_SHOT = PromptStyle(
    name="few-shot",
    description="The zero-shot instruction plus two short worked examples in Korean news style.",
    system=_ZERO_SHOT.system,
    user_template=_USER_TEMPLATE,
    few_shot=_FEW_SHOT_EXAMPLES,
    plain_template=_PLAIN_TEMPLATE,
)

_PRINCIPLED = PromptStyle(
    name="principled",
    description="Careful extractive rules: verbatim span, no explanation, units as written, one line.",
    system=(
        "당신은 기사에서 답을 찾아 그대로 옮겨 적는 추출형 질의응답 도구입니다. 다음 규칙을 지키세요.\n"
        "1. 답은 기사 본문에 있는 구절을 글자 하나 바꾸지 말고 그대로 복사합니다. "
        "바꿔 말하거나 번역하지 않습니다.\n"
        "2. 질문에 답하는 가장 짧은 구절만 씁니다. 완전한 문장, 설명, 근거, 인사말을 붙이지 않습니다.\n"
        "3. 숫자, 단위, 날짜, 이름은 기사에 적힌 표기와 띄어쓰기 그대로 씁니다 "
        "(예: 120개, 3.5%, 1989년 2월).\n"
        "4. 구절 뒤에 문장 속에서 붙은 조사(은, 는, 이, 가, 을, 를, 의 등)는 답에 포함하지 않습니다.\n"
        "5. 따옴표, 마침표, '답:' 같은 머리말 없이 한 줄로만 답합니다.\n"
        "Rules: copy the answer span verbatim from the article; shortest span that answers; no explanation, "
        "no full sentence; keep numbers and units exactly as written; one line only."
    ),
    user_template=_USER_TEMPLATE,
    plain_template=_PLAIN_TEMPLATE,
)

PROMPT_STYLES: Mapping[str, PromptStyle] = MappingProxyType(
    {style.name: style for style in (_ZERO_SHOT, _FEW_SHOT, _PRINCIPLED)}
)
"""Every prompt style the service knows, by name (read-only)."""

DEFAULT_PROMPTS: tuple[str, ...] = ("zero-shot", "principled")
"""The styles used when a request names none."""


def get_prompt_style(name: str) -> PromptStyle:
    """The registered style called ``name``; ``UnknownPromptError`` (a ``KeyError``) otherwise."""
    try:
        return PROMPT_STYLES[name]
    except (KeyError, TypeError) as e:
        raise UnknownPromptError(str(name), PROMPT_STYLES) from e


def render_target(answer: str, *, chat: bool = True) -> str:
    """The text a model is trained to produce after ``render_prompt(..., chat=chat)``: just the answer.

    In plain form the prompt ends with the cue and no trailing space (a trailing space splits BPE tokens
    badly), so the target carries the one separating space; prompt + target is then exactly how the few-shot
    examples read inside a plain prompt.
    """
    answer = answer.strip()
    return answer if chat else f" {answer}"


def render_prompt(
    style: str | PromptStyle, context: str, question: str, *, chat: bool
) -> str | list[dict[str, str]]:
    """Render one prompt.

    ``chat=True``: ``[system, (user, assistant) per few-shot example, user]`` as role/content dicts.
    ``chat=False``: one string (instruction, examples, then the question) ending in ``ANSWER_CUE``.
    """
    resolved = get_prompt_style(style) if isinstance(style, str) else style
    context, question = context.strip(), question.strip()
    if chat:
        messages = [{"role": "system", "content": resolved.system}]
        for ex_context, ex_question, ex_answer in resolved.few_shot:
            messages.append(
                {
                    "role": "user",
                    "content": resolved.user_template.format(context=ex_context, question=ex_question),
                }
            )
            messages.append({"role": "assistant", "content": render_target(ex_answer, chat=True)})
        messages.append(
            {"role": "user", "content": resolved.user_template.format(context=context, question=question)}
        )
        return messages
    blocks = [resolved.system]
    for ex_context, ex_question, ex_answer in resolved.few_shot:
        example = resolved.plain_template.format(context=ex_context, question=ex_question)
        blocks.append(example + render_target(ex_answer, chat=False))
    blocks.append(resolved.plain_template.format(context=context, question=question))
    return "\n\n".join(blocks)
