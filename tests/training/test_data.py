"""Training data: answer-only labels on exactly the served prompt, the length policy, the article holdout."""

import dataclasses
from pathlib import Path

import pytest

from ensemble.datasets import QAExample, load_examples
from ensemble.prompts import render_target
from training.config import TrainConfig
from training.data import (
    IGNORE_INDEX,
    PromptEncoder,
    article_key,
    encode_examples,
    load_training_data,
    split_holdout,
    window_context,
)

KORQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "korquad" / "KorQuAD_v1.0_dev.json"


@pytest.fixture(scope="module")
def examples(news_fixture) -> list[QAExample]:
    return load_examples(news_fixture)


@pytest.fixture(scope="module")
def encoder(tiny_tokenizer) -> PromptEncoder:
    return PromptEncoder(tiny_tokenizer)


def test_labels_are_ignored_exactly_on_the_prompt_tokens(examples, encoder, tiny_tokenizer):
    encoded, report = encode_examples(examples, encoder, "zero-shot", max_seq_len=1024, policy="drop")
    assert report.kept == len(encoded) == len(examples)
    for ex, item in zip(examples, encoded, strict=True):
        labels = item.labels
        assert len(labels) == len(item.input_ids)
        assert all(label == IGNORE_INDEX for label in labels[: item.prompt_len])
        assert labels[item.prompt_len :] == list(item.input_ids[item.prompt_len :])
        assert IGNORE_INDEX not in labels[item.prompt_len :]
        learnt = tiny_tokenizer.decode(labels[item.prompt_len :])
        assert learnt == render_target(ex.answers[0], chat=True) + "<|im_end|>"
        prompt = tiny_tokenizer.decode(item.input_ids[: item.prompt_len])
        assert prompt == encoder.render("zero-shot", ex.context, ex.question)
        assert prompt.endswith("<|im_start|>assistant\n")


def test_the_prompt_ids_are_the_ones_the_server_feeds(examples, encoder, tiny_model_dir):
    from ensemble.prompts import render_prompt
    from models.base.loading import LoadConfig, load_base
    from models.decode.generator import Generator

    model, tokenizer = load_base(tiny_model_dir, LoadConfig(device="cpu", quantization="none"))
    generator = Generator(model, tokenizer, stop_at_newline=False)
    for style in ("zero-shot", "principled"):
        ex = examples[0]
        served, _ = generator._encode([render_prompt(style, ex.context, ex.question, chat=True)])
        assert served[0].tolist() == encoder.prompt_ids(style, ex.context, ex.question)


def test_the_target_ends_with_the_turn_end_even_when_eos_is_another_token(examples, tiny_tokenizer):
    # Qwen's GGUF tokenizer: EOS is <|endoftext|>, while a chat turn ends with <|im_end|>.
    qwen_like = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    qwen_like.eos_token = "<|endoftext|>"
    encoder = PromptEncoder(qwen_like)
    assert encoder.end_id == qwen_like.convert_tokens_to_ids("<|im_end|>") != qwen_like.eos_token_id
    item = encode_examples(examples[:1], encoder, "zero-shot", max_seq_len=1024, policy="drop")[0][0]
    assert qwen_like.decode(item.input_ids[item.prompt_len :]) == examples[0].answers[0] + "<|im_end|>"


def test_a_tokenizer_without_chat_template_learns_the_plain_target_and_eos(examples, tiny_tokenizer):
    plain = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    plain.chat_template = None
    encoder = PromptEncoder(plain)
    assert not encoder.chat and encoder.end_id == plain.eos_token_id
    item = encode_examples(examples[:1], encoder, "zero-shot", max_seq_len=1024, policy="drop")[0][0]
    assert plain.decode(item.input_ids[item.prompt_len :]) == f" {examples[0].answers[0]}" + plain.eos_token
    assert plain.decode(item.input_ids[: item.prompt_len]).endswith("답변:")


def _full_lengths(examples, encoder, style="zero-shot") -> dict[str, int]:
    return {
        ex.id: len(encoder.prompt_ids(style, ex.context, ex.question))
        + len(encoder.target_ids(ex.answers[0]))
        for ex in examples
    }


def test_drop_skips_only_examples_that_do_not_fit_and_names_them(examples, encoder):
    lengths = _full_lengths(examples, encoder)
    limit = sorted(lengths.values())[1]  # the two shortest fit (ties aside), the rest do not
    encoded, report = encode_examples(examples, encoder, "zero-shot", max_seq_len=limit, policy="drop")
    too_long = {i for i, n in lengths.items() if n > limit}
    assert too_long and set(report.dropped) == too_long
    assert all("max_seq_len" in why for why in report.dropped.values())
    assert {e.id for e in encoded} == set(lengths) - too_long
    assert report.kept + len(report.shortened) + len(report.dropped) == report.total == len(examples)
    assert all(len(e.input_ids) <= limit for e in encoded)


def test_window_shortens_the_context_around_the_answer(examples, encoder, tiny_tokenizer):
    lengths = _full_lengths(examples, encoder)
    limit = min(lengths.values()) - 40  # every example must lose part of its context
    encoded, report = encode_examples(examples, encoder, "zero-shot", max_seq_len=limit, policy="window")
    assert report.kept + len(report.shortened) + len(report.dropped) == report.total == len(examples)
    assert len(report.shortened) == len(examples) and not report.dropped
    by_id = {ex.id: ex for ex in examples}
    for item in encoded:
        ex = by_id[item.id]
        assert item.shortened and len(item.input_ids) <= limit
        prompt = tiny_tokenizer.decode(item.input_ids[: item.prompt_len])
        assert ex.answers[0] in prompt.split("질문:")[0]  # inside the (shortened) article
        assert ex.question in prompt
        assert tiny_tokenizer.decode(item.input_ids[item.prompt_len :]) == ex.answers[0] + "<|im_end|>"


def test_window_drops_what_cannot_fit_and_says_why(examples, encoder):
    no_answer = dataclasses.replace(examples[0], id="no-answer", answers=(), answer_starts=())
    missing = dataclasses.replace(examples[1], id="not-in-context", answers=("없는 답",), answer_starts=())
    rows = [*examples, no_answer, missing]
    encoded, report = encode_examples(rows, encoder, "zero-shot", max_seq_len=100, policy="window")
    assert not encoded and report.kept == 0 and len(report.dropped) == len(rows)
    assert report.dropped["no-answer"] == "no gold answer"
    assert "not in the context" in report.dropped["not-in-context"]
    assert all("answer alone" in report.dropped[ex.id] for ex in examples)
    assert report.as_dict()["dropped"] == len(rows)


def test_window_context_keeps_the_span_and_cuts_at_spaces():
    context = "하나 둘 셋 넷 다섯 여섯 일곱 여덟 아홉 열"
    start = context.index("여섯")
    window, new_start = window_context(context, (start, start + 2), 8)
    assert window[new_start : new_start + 2] == "여섯"
    assert context.find(window) >= 0 and len(window) <= 10
    assert not window.startswith(" ") and not window.endswith(" ")
    assert window_context(context, (0, 2), 1000) == (context, 0)


def _config(path: Path, **kw) -> TrainConfig:
    return TrainConfig(data=(str(path),), **kw)


def test_holdout_is_by_article_seeded_and_capped(examples):
    config = _config(Path("unused"), holdout_fraction=0.5, holdout_seed=3, val_questions=1)
    data = split_holdout(examples, config)
    train_articles = {article_key(ex) for ex in data.train}
    assert len(train_articles) == 1 and data.held_out_articles == 1
    assert not train_articles & {article_key(ex) for ex in data.validation}
    assert data.held_out_questions == 2 and len(data.validation) == 1
    assert split_holdout(examples, config) == data
    assert split_holdout(examples, dataclasses.replace(config, holdout_fraction=0.0)).validation == ()


def test_split_train_keeps_only_korquad_train_articles(news_fixture):
    from ensemble.datasets import korquad_split

    data = load_training_data(_config(news_fixture, split="train", holdout_fraction=0.0))
    expected = [ex.id for ex in load_examples(news_fixture) if korquad_split(ex.title) == "train"]
    assert [ex.id for ex in data.train] == expected


@pytest.mark.skipif(not KORQUAD.is_file(), reason="needs ../shared/data/korquad/KorQuAD_v1.0_dev.json")
def test_split_all_is_refused_on_the_korquad_dev_file():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="train.split: 'all' would train on the eval articles"):
        load_training_data(_config(KORQUAD, split="all"))


def test_untitled_rows_cannot_be_split_by_article(news_fixture):
    from training.config import ConfigError

    csv = news_fixture.with_suffix(".csv")
    with pytest.raises(ConfigError, match="train.split: 'train' splits by article title"):
        load_training_data(_config(csv, split="train"))
    assert len(load_training_data(_config(csv, split="all", holdout_fraction=0.0)).train) == 4
