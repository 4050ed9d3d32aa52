"""Training data: read the files, hold out whole articles for validation, tokenize with answer-only labels.

A training sequence is the prompt exactly as the server renders it (`ensemble.prompts.render_prompt` through
the base tokenizer's chat template, or the plain form without one) followed by `render_target(answer)` and the
token that ends an assistant turn. Labels are -100 on every prompt token, so only the answer is learnt.
An example longer than `max_seq_len` is never cut at the end (that would cut the answer): the `window` policy
shortens its context around the answer span, the `drop` policy skips it, and both report every id they touch.
This module knows nothing about models or training loops; it only needs a tokenizer object.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble.datasets import QAExample, korquad_split, load_examples
from ensemble.prompts import render_prompt, render_target
from models.decode.teacher_forcing import end_of_answer_id
from training.config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a token the loss skips (PyTorch's cross-entropy default)."""
KORQUAD_DEV_SHA256 = "25ffeb51e6c51ec02c071b60a10188e10005c144110f0d876b26079d80a35bdf"
"""The KorQuAD 1.0 dev file (shared/data/README.md): it holds the eval articles, so split "all" is refused."""
_SPACE = re.compile(r"\s")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def ids_sha256(ids: Iterable[str]) -> str:
    """A digest of a set of question ids (sorted, one per line), to pin a holdout in a manifest."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DataFile:
    """One data file as read for this run."""

    path: str
    sha256: str
    questions: int
    """Questions taken from it (after the split)."""


@dataclass(frozen=True)
class TrainingData:
    """The questions of one run: what is trained on and what validates it, never overlapping by article."""

    train: tuple[QAExample, ...]
    validation: tuple[QAExample, ...]
    """The validation questions actually generated (at most `val_questions` of the held-out ones)."""
    files: tuple[DataFile, ...]
    split: str
    train_articles: int
    held_out_articles: int
    held_out_questions: int
    holdout_ids_sha256: str
    """Digest of every held-out question id (validated on or not): none of them is trained on."""
    validation_ids_sha256: str
    held_out_ids: tuple[str, ...] = ()
    """Every held-out question id, in file order: what `qa-eval run --ids` can score a member on (data the
    member never saw and the eval split is not part of)."""

    def describe(self) -> dict[str, Any]:
        return {
            "files": [vars(f) for f in self.files],
            "split": self.split,
            "train_questions": len(self.train),
            "train_articles": self.train_articles,
            "holdout": {
                "articles": self.held_out_articles,
                "questions": self.held_out_questions,
                "ids_sha256": self.holdout_ids_sha256,
                "validation_questions": len(self.validation),
                "validation_ids_sha256": self.validation_ids_sha256,
            },
        }


def article_key(example: QAExample) -> str:
    """What "article" means for the holdout: the title, or (files without titles) the context itself."""
    if example.title:
        return f"title:{example.title}"
    return "context:" + hashlib.sha1(example.context.encode("utf-8")).hexdigest()


def load_training_data(config: TrainConfig) -> TrainingData:
    """Read `train.data` in `train.split`, then hold out whole articles (`train.holdout_fraction`)."""
    examples: list[QAExample] = []
    files: list[DataFile] = []
    seen: set[str] = set()
    for path in config.data_paths():
        if not path.is_file():
            raise ConfigError(f"train.data: {path} does not exist")
        sha = file_sha256(path)
        if config.split == "all" and sha == KORQUAD_DEV_SHA256:
            raise ConfigError(
                f"train.split: 'all' would train on the eval articles of {path.name}; use 'train'"
            )
        rows = load_examples(path, format=config.data_format)
        if config.split == "train":
            untitled = [ex.id for ex in rows if not ex.title]
            if untitled:
                raise ConfigError(
                    f"train.split: 'train' splits by article title, but {path} has questions "
                    f"without one (e.g. {untitled[0]!r}); use split 'all' for own data"
                )
            rows = [ex for ex in rows if korquad_split(ex.title or "") == "train"]
        repeated = [ex.id for ex in rows if ex.id in seen]
        if repeated:
            raise ConfigError(f"train.data: question id {repeated[0]!r} appears in more than one file")
        seen.update(ex.id for ex in rows)
        examples.extend(rows)
        files.append(DataFile(path=str(path), sha256=sha, questions=len(rows)))
    if not examples:
        raise ConfigError(f"train.data: no questions in split {config.split!r}")
    return split_holdout(examples, config, files)


def split_holdout(
    examples: Sequence[QAExample], config: TrainConfig, files: Sequence[DataFile] = ()
) -> TrainingData:
    """Hold out `holdout_fraction` of the articles (at least one when the fraction is > 0 and there are two),
    chosen with `holdout_seed`; validate on up to `val_questions` of their questions that have answers."""
    keys = sorted({article_key(ex) for ex in examples})
    rng = random.Random(config.holdout_seed)
    rng.shuffle(keys)
    n_held = 0
    if config.holdout_fraction > 0 and len(keys) > 1:
        n_held = min(len(keys) - 1, max(1, round(config.holdout_fraction * len(keys))))
    held = set(keys[:n_held])
    train = tuple(ex for ex in examples if article_key(ex) not in held)
    held_out = [ex for ex in examples if article_key(ex) in held]
    candidates = [ex for ex in held_out if ex.answers]
    rng.shuffle(candidates)
    validation = tuple(candidates[: config.val_questions])
    return TrainingData(
        train=train,
        validation=validation,
        files=tuple(files),
        split=config.split,
        train_articles=len(keys) - n_held,
        held_out_articles=n_held,
        held_out_questions=len(held_out),
        holdout_ids_sha256=ids_sha256(ex.id for ex in held_out),
        validation_ids_sha256=ids_sha256(ex.id for ex in validation),
        held_out_ids=tuple(ex.id for ex in held_out),
    )


class PromptEncoder:
    """Token ids of prompts and targets, produced exactly as the server produces a prompt's ids.

    Chat tokenizers: the chat template with `add_generation_prompt=True`, tokenized without extra special
    tokens (as `models.decode.generator.Generator` does); the target ends with the token the template puts
    after an assistant turn (`<|im_end|>` for ChatML). Plain tokenizers: the plain prompt with the tokenizer's
    own special tokens, and a target ending in EOS.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.end_id = end_of_answer_id(tokenizer)  # the id serving scores answers' ends with
        if self.end_id is None:
            raise ConfigError(
                "train.base: the tokenizer has neither a chat template nor an EOS token, so an "
                "answer's end cannot be learnt"
            )

    def render(self, style: str, context: str, question: str) -> str:
        prompt = render_prompt(style, context, question, chat=self.chat)
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, style: str, context: str, question: str) -> list[int]:
        text = self.render(style, context, question)
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def target_ids(self, answer: str) -> list[int]:
        text = render_target(answer, chat=self.chat)
        return [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.end_id]


@dataclass(frozen=True)
class TrainExample:
    """One tokenized training sequence: prompt ids then target ids (answer + end token)."""

    id: str
    input_ids: tuple[int, ...]
    prompt_len: int
    """The first `prompt_len` ids are the prompt; their labels are -100."""
    shortened: bool = False
    """True when the `window` policy cut the context around the answer."""

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * self.prompt_len + list(self.input_ids[self.prompt_len :])


@dataclass(frozen=True)
class LengthReport:
    """What the length policy did; `kept + len(shortened) + len(dropped) == total`, always."""

    prompt_style: str
    policy: str
    max_seq_len: int
    total: int
    kept: int
    """Examples that fit unchanged."""
    shortened: tuple[str, ...] = ()
    dropped: dict[str, str] = field(default_factory=dict)
    """id -> why (too long under `drop`, no gold answer, answer not locatable, question too long)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_style": self.prompt_style,
            "policy": self.policy,
            "max_seq_len": self.max_seq_len,
            "total": self.total,
            "kept": self.kept,
            "shortened": len(self.shortened),
            "dropped": len(self.dropped),
            "shortened_ids": list(self.shortened),
            "dropped_ids": dict(self.dropped),
        }


def answer_span(example: QAExample) -> tuple[int, int] | None:
    """Character span of the first gold answer: its `answer_start`, else its first occurrence."""
    answer = example.answers[0]
    start = example.answer_starts[0] if example.answer_starts else example.context.find(answer)
    return None if start < 0 else (start, start + len(answer))


def window_context(context: str, span: tuple[int, int], width: int) -> tuple[str, int]:
    """About `width` characters of `context` around `span`, ends moved inward to whitespace where that does
    not reach the span; returns the window and the span's new start. The span is always inside."""
    start, end = span
    extra = max(0, width - (end - start))
    left, right = start - extra // 2, end + (extra - extra // 2)
    if left < 0:
        left, right = 0, right - left
    if right > len(context):
        left, right = max(0, left - (right - len(context))), len(context)
    if left > 0 and (m := _SPACE.search(context, left, start)):
        left = m.end()
    if right < len(context):
        spaces = [m.start() for m in _SPACE.finditer(context, end, right)]
        right = spaces[-1] if spaces else right
    return context[left:right], start - left


def encode_examples(
    examples: Sequence[QAExample], encoder: PromptEncoder, style: str, *, max_seq_len: int, policy: str
) -> tuple[list[TrainExample], LengthReport]:
    """Tokenize `examples` for prompt `style`; apply the length policy; report every id not kept as is."""
    encoded: list[TrainExample] = []
    shortened: list[str] = []
    dropped: dict[str, str] = {}
    for ex in examples:
        if not ex.answers:
            dropped[ex.id] = "no gold answer"
            continue
        target = encoder.target_ids(ex.answers[0])
        prompt = encoder.prompt_ids(style, ex.context, ex.question)
        if len(prompt) + len(target) <= max_seq_len:
            encoded.append(TrainExample(ex.id, tuple(prompt + target), len(prompt)))
            continue
        if policy == "drop":
            dropped[ex.id] = f"{len(prompt) + len(target)} tokens > max_seq_len {max_seq_len}"
            continue
        span = answer_span(ex)
        if span is None:
            dropped[ex.id] = "too long, and the answer is not in the context to shorten around"
            continue
        prompt = _fit_window(encoder, style, ex, span, max_seq_len - len(target))
        if prompt is None:
            dropped[ex.id] = "too long even with the context cut to the answer alone"
            continue
        encoded.append(TrainExample(ex.id, tuple(prompt + target), len(prompt), shortened=True))
        shortened.append(ex.id)
    assert all(len(e.input_ids) <= max_seq_len for e in encoded)
    report = LengthReport(
        style, policy, max_seq_len, len(examples), len(encoded) - len(shortened), tuple(shortened), dropped
    )
    if shortened or dropped:
        logger.warning(
            "prompt %s, max_seq_len %d: %d kept, %d shortened around the answer, %d dropped%s",
            style,
            max_seq_len,
            report.kept,
            len(shortened),
            len(dropped),
            f" (e.g. {', '.join(list(dropped)[:5])})" if dropped else "",
        )
    return encoded, report


def _fit_window(
    encoder: PromptEncoder, style: str, ex: QAExample, span: tuple[int, int], budget: int
) -> list[int] | None:
    """Prompt ids with the widest context window around `span` that fits `budget` tokens (binary search)."""
    best: list[int] | None = None
    low, high = span[1] - span[0], len(ex.context) - 1
    while low <= high:
        width = (low + high) // 2
        window, _ = window_context(ex.context, span, width)
        ids = encoder.prompt_ids(style, window, ex.question)
        if len(ids) <= budget:
            best, low = ids, width + 1
        else:
            high = width - 1
    return best
