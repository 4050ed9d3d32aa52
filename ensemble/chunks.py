"""How a batch's questions are cut into generation chunks: sorted by length across the whole batch, then cut
wherever the next question would make a chunk hold too many questions, too many padded tokens, or pad its
shortest prompt past a small margin over its own length.

A chunk is one generation pass, and every prompt of a pass is left-padded to the longest. On a GPU a pass
costs about the same whatever its padding (the decode loop rounds shapes up its own ladder anyway), so there
chunks are cut by questions only; on a CPU the prefill is the cost and it grows with padded tokens, so there
a chunk is cut by padded tokens and by a padding margin (``CHUNK_LIMITS``, by kind of device: one table the
service, ``qa-eval`` and the benches read).

Cutting is greedy, left to right over the sorted lengths, and starts afresh at every cut: the questions of
any run of whole chunks, cut again on their own, give the same chunks, which is what
``ensemble.batch.split_parts`` relies on. Lengths are whatever the caller measures (the service: tokens of
context and question; without a tokenizer: characters, ``char_length``). Pure; no device, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ensemble.datasets import QAExample


@dataclass(frozen=True)
class ChunkLimits:
    """Where a sorted run of questions is cut into chunks (one generation pass each)."""

    rows: int = 16
    """Most questions in a chunk."""
    tokens: int | None = None
    """Most padded tokens in a chunk: its questions x its longest length; None: no limit. A question longer
    than this is a chunk alone."""
    margin: float | None = None
    """The longest question of a chunk is at most (1 + margin) x its shortest, plus ``slack``; None: no
    limit."""
    slack: int = 0
    """Padding always allowed under ``margin`` (short questions differ by a few tokens of no cost)."""

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"chunk rows: must be >= 1; got {self.rows}")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"chunk tokens: must be >= 1 or None; got {self.tokens}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"chunk margin: must be >= 0 or None; got {self.margin}")
        if self.slack < 0:
            raise ValueError(f"chunk slack: must be >= 0; got {self.slack}")

    def overridden(self, *, rows: int | None = None, tokens: int | None = None) -> ChunkLimits:
        """These limits with what an operator or a flag set (None keeps the default)."""
        return replace(self, rows=rows or self.rows, tokens=tokens or self.tokens)

    def fits(self, shortest: int, longest: int, count: int) -> bool:
        """May a chunk of `count` questions run from `shortest` to `longest`?"""
        if count > self.rows:
            return False
        if self.tokens is not None and count > 1 and count * longest > self.tokens:
            return False
        return self.margin is None or longest <= shortest * (1 + self.margin) + self.slack


CHUNK_LIMITS: dict[str, ChunkLimits] = {
    # A pass of 16 questions whatever their lengths: a GPU's pass costs its steps, not its padding.
    "cuda": ChunkLimits(rows=16),
    # On the CPU the prefill is the cost (docs/benchmarks.md, "CPU path"): at most ~10% (+16 tokens) of
    # padding, and 6,144 padded tokens a pass, so a chunk takes seconds, not minutes, and an /answer waiting
    # behind it is not starved; 16 questions at most, the micro-batcher's pass (QA_MAX_BATCH_SIZE).
    "cpu": ChunkLimits(rows=16, tokens=6144, margin=0.1, slack=16),
}
"""Chunk limits by kind of device (`cuda`, else `cpu`)."""


def chunk_limits(device: str) -> ChunkLimits:
    """The chunk limits for a device such as "cuda:0", "cuda" or "cpu" (any non-CUDA device is "cpu")."""
    return CHUNK_LIMITS["cuda" if device.startswith("cuda") else "cpu"]


def char_length(example: QAExample) -> int:
    """A question's length where no tokenizer is at hand: characters of its context and question."""
    return len(example.context) + len(example.question)


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indexes by length, shortest first; stable, so a slice of this order sorts to itself again."""
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def cut_chunks(lengths: Sequence[int], limits: ChunkLimits) -> list[list[int]]:
    """Indexes of every question, in `length_order`, cut into consecutive chunks that each fit `limits`."""
    chunks: list[list[int]] = []
    for i in length_order(lengths):
        current = chunks[-1] if chunks else None
        if current is not None and limits.fits(lengths[current[0]], lengths[i], len(current) + 1):
            current.append(i)
        else:
            chunks.append([i])
    return chunks
