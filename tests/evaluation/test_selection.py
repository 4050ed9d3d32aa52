"""The `--split` / `--limit` / `--sample-seed` selection is fixed: same inputs, same questions, file order."""

import random
from pathlib import Path

import pytest

from ensemble.datasets import QAExample
from evaluation.selection import sample_examples, select

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "news_qa.json"
KORQUAD_DEV = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "korquad" / "KorQuAD_v1.0_dev.json"
)

EXAMPLES = [QAExample(f"q{i:03d}", "문맥", "질문?", ("답",)) for i in range(200)]


def ids(examples: list[QAExample]) -> list[str]:
    return [ex.id for ex in examples]


def test_a_sample_is_fixed_by_its_seed_and_kept_in_file_order() -> None:
    first = sample_examples(EXAMPLES, 20, seed=0)
    assert ids(first) == ids(sample_examples(EXAMPLES, 20, seed=0))
    assert ids(first) == sorted(ids(first)) and len(set(ids(first))) == 20
    assert ids(first) != ids(sample_examples(EXAMPLES, 20, seed=1))
    random.seed(12345)  # the global random state does not matter
    assert ids(first) == ids(sample_examples(EXAMPLES, 20, seed=0))


def test_a_limit_at_least_the_size_keeps_everything_unsampled() -> None:
    selection = select(FIXTURE, "all", limit=10, seed=3)
    assert ids(selection.examples) == ["news-001", "news-002", "news-003", "news-004"]
    assert (selection.n_in_split, selection.sample_seed) == (4, None)


def test_select_records_the_split_size_and_seed() -> None:
    selection = select(FIXTURE, "all", limit=2, seed=5)
    assert len(selection.examples) == 2 and selection.n_in_split == 4 and selection.sample_seed == 5
    assert ids(selection.examples) == ids(select(FIXTURE, "all", limit=2, seed=5).examples)


@pytest.mark.skipif(not KORQUAD_DEV.is_file(), reason="../shared/data is absent")
def test_the_korquad_eval_sample_is_deterministic() -> None:
    full = select(KORQUAD_DEV, "eval")
    assert len(full.examples) == 1510
    first, again = select(KORQUAD_DEV, "eval", 100, 0), select(KORQUAD_DEV, "eval", 100, 0)
    assert ids(first.examples) == ids(again.examples) and len(first.examples) == 100
    positions = [ids(full.examples).index(i) for i in ids(first.examples)]
    assert positions == sorted(positions)
