"""Which questions a run or a score uses: a data file, an optional KorQuAD article split, a fixed sample.

The split is the project's fixed md5-by-title split (`ensemble.datasets.korquad_split`); the sample is
`random.Random(seed).sample` of the split's positions, put back into file order, so the same file, split,
limit and seed always select the same questions, in the same order, on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ensemble.datasets import QAExample, load_examples, load_korquad

Split = Literal["train", "eval", "all"]


@dataclass(frozen=True)
class Selection:
    """The questions chosen, and how many the split held before sampling."""

    examples: list[QAExample]
    split: Split
    n_in_split: int
    limit: int | None
    sample_seed: int | None
    """The seed used; None when no sample was drawn (no limit, or a limit at least the split's size)."""


def load_split(path: Path, split: Split) -> list[QAExample]:
    """Every question of `path`; for `train`/`eval` only those whose article is in that split.

    A split other than `all` needs a KorQuAD/SQuAD-layout JSON file with article titles.
    """
    if split == "all":
        return load_examples(path)
    return load_korquad(path, split)


def sample_examples(examples: Sequence[QAExample], limit: int, seed: int) -> list[QAExample]:
    """`limit` examples drawn at random with `seed`, in their original order (all of them if fewer)."""
    if limit < 1:
        raise ValueError(f"--limit: must be >= 1; got {limit}")
    if limit >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


def select(path: Path, split: Split, limit: int | None = None, seed: int = 0) -> Selection:
    examples = load_split(path, split)
    if limit is None or limit >= len(examples):
        return Selection(examples, split, len(examples), limit, None)
    return Selection(sample_examples(examples, limit, seed), split, len(examples), limit, seed)
