"""`ensemble.chunks`: chunks cut by length across the whole batch, within rows, padded tokens and a padding
margin; a run of whole chunks cut again gives the same chunks; limits by device."""

import random

import pytest

from ensemble.chunks import CHUNK_LIMITS, ChunkLimits, chunk_limits, cut_chunks, length_order


def test_without_token_or_margin_limits_chunks_are_runs_of_rows_in_length_order() -> None:
    lengths = [50, 10, 40, 20, 30]
    assert cut_chunks(lengths, ChunkLimits(rows=2)) == [[1, 3], [4, 2], [0]]
    assert length_order(lengths) == [1, 3, 4, 2, 0]


def test_the_margin_cuts_where_the_longest_would_pad_the_shortest_too_much() -> None:
    lengths = [100, 105, 111, 200, 209, 400]
    limits = ChunkLimits(rows=16, margin=0.1, slack=0)
    assert cut_chunks(lengths, limits) == [[0, 1], [2], [3, 4], [5]]  # 111 > 110: a chunk of its own


def test_the_token_limit_counts_padded_tokens_and_a_longer_question_goes_alone() -> None:
    limits = ChunkLimits(rows=16, tokens=1000)
    assert cut_chunks([300, 300, 300, 300], limits) == [[0, 1, 2], [3]]  # 3 x 300 fits, 4 x 300 does not
    assert cut_chunks([2000, 10], limits) == [[1], [0]]  # past the limit alone: still answered


def test_every_question_in_exactly_one_chunk_padded_at_most_its_margin() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(150, 2200) for _ in range(300)]
    limits = CHUNK_LIMITS["cpu"]
    chunks = cut_chunks(lengths, limits)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    assert [i for chunk in chunks for i in chunk] == length_order(lengths)
    assert limits.margin is not None and limits.tokens is not None
    for chunk in chunks:
        longest = max(lengths[i] for i in chunk)
        assert len(chunk) <= limits.rows
        assert len(chunk) == 1 or len(chunk) * longest <= limits.tokens
        for i in chunk:
            assert longest <= lengths[i] * (1 + limits.margin) + limits.slack


def test_a_run_of_whole_chunks_cut_again_gives_the_same_chunks() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(10, 400) for _ in range(120)]
    limits = ChunkLimits(rows=5, tokens=900, margin=0.2, slack=3)
    chunks = cut_chunks(lengths, limits)
    for start in range(len(chunks)):
        for stop in range(start + 1, min(len(chunks), start + 4) + 1):
            rows = [i for chunk in chunks[start:stop] for i in chunk]
            again = cut_chunks([lengths[i] for i in rows], limits)
            assert [[rows[j] for j in chunk] for chunk in again] == chunks[start:stop]


def test_limits_by_device_and_overridden() -> None:
    assert chunk_limits("cuda:0") == CHUNK_LIMITS["cuda"] and chunk_limits("mps") == CHUNK_LIMITS["cpu"]
    assert CHUNK_LIMITS["cuda"].tokens is None and CHUNK_LIMITS["cpu"].tokens is not None
    cpu = CHUNK_LIMITS["cpu"]
    assert cpu.overridden() == cpu
    assert cpu.overridden(rows=4, tokens=99) == ChunkLimits(4, 99, cpu.margin, cpu.slack)


@pytest.mark.parametrize("bad", [{"rows": 0}, {"tokens": 0}, {"margin": -0.1}, {"slack": -1}])
def test_bad_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="chunk"):
        ChunkLimits(**bad)  # type: ignore[arg-type]
