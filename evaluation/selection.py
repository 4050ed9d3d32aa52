"""Which questions a run or a score uses: a data file, an optional KorQuAD article split, a fixed sample.

The split is the project's fixed md5-by-title split (`ensemble.datasets.korquad_split`); the sample is
`random.Random(seed).sample` of the split's positions, put back into file order, so the same file, split,
limit and seed always select the same questions, in the same order, on any machine.
"""

from __future__ import annotations

import hashlib
import json
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


def read_ids(path: Path) -> set[str]:
    """Question ids from a JSON file: a list of ids, or an object whose only list value is one
    (`qa-train`'s `.training/holdout_ids.json`); a text file holds one id a line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else None
        if not isinstance(data, list) or not all(isinstance(i, str) for i in data):
            raise ValueError(f"--ids: {path.name} must hold a list of question ids")
        return set(data)
    return {line.strip() for line in text.splitlines() if line.strip()}


def select(
    path: Path, split: Split, limit: int | None = None, seed: int = 0, ids: set[str] | None = None
) -> Selection:
    """The split's questions (only those in `ids` when given), then the fixed sample of `limit`."""
    examples = load_split(path, split)
    if ids is not None:
        examples = [ex for ex in examples if ex.id in ids]
    if limit is None or limit >= len(examples):
        return Selection(examples, split, len(examples), limit, None)
    return Selection(sample_examples(examples, limit, seed), split, len(examples), limit, seed)


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex): what a report or a fitted vote records of the file it read."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
