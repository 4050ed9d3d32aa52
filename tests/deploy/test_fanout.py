"""A batch job fanned out over replicas, against a fake Serve handle (no Ray cluster): the parts merge into
the single-process result, progress counts finished parts, at most `in_flight` parts are out, and cancelling
stops sending parts and cancels those not answered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

pytest.importorskip("ray.serve")

from app.batch import result as batch_result  # noqa: E402 - after the skip
from app.batch.input import PreparedBatch  # noqa: E402
from deploy.fanout import FannedOutBatch  # noqa: E402
from ensemble.batch import BatchCancelledError, BatchOptions, BatchResult, run_batch  # noqa: E402
from ensemble.chunks import ChunkLimits  # noqa: E402
from ensemble.datasets import QAExample  # noqa: E402
from ensemble.pipeline import EnsemblePipeline  # noqa: E402


class EchoGenerator:
    """Answers each prompt with the last word of its question (so answers differ per row)."""

    has_chat_template = True

    def generate(
        self, prompts, adapters, *, num_return_sequences, **_: object
    ) -> list[list[tuple[str, float]]]:
        out = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            out.append([(text.split()[-1], -0.1 * i) for i in range(num_return_sequences)])
        return out


PIPELINE = EnsemblePipeline(EchoGenerator())
EXAMPLES = [QAExample(f"q{i}", "가나다 " * (i % 4 + 1), f"질문 {i} 답{i}", (f"답{i}",)) for i in range(7)]
OPTIONS = BatchOptions(chunks=ChunkLimits(rows=2), strategies=True)


@dataclass
class FakeResponse:
    result_value: tuple[str, BatchResult]
    cancelled: bool = False
    fetched: bool = False

    def result(self) -> tuple[str, BatchResult]:
        self.fetched = True
        return self.result_value

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeHandle:
    """Stands for `handle.options(multiplexed_model_id=...).run_part.remote(...)`: runs the part at once."""

    sent: list[list[str]] = field(default_factory=list)
    responses: list[FakeResponse] = field(default_factory=list)
    set_ids: list[str] = field(default_factory=list)
    most_out: int = 0

    def options(self, *, multiplexed_model_id: str) -> FakeHandle:
        self.set_ids.append(multiplexed_model_id)
        return self

    @property
    def run_part(self) -> FakeHandle:
        return self

    def remote(
        self, examples: Sequence[QAExample], options: BatchOptions, lengths: Sequence[int] | None = None
    ) -> FakeResponse:
        self.sent.append([ex.id for ex in examples])
        result = run_batch(PIPELINE, examples, options, lengths=lengths)
        response = FakeResponse((f"replica-{len(self.sent) % 2}", result))
        self.responses.append(response)
        self.most_out = max(self.most_out, sum(not r.fetched for r in self.responses))
        return response


def batch(options: BatchOptions = OPTIONS, lengths: tuple[int, ...] | None = None) -> PreparedBatch:
    return PreparedBatch(examples=EXAMPLES, options=options, explain=False, lengths=lengths)


def test_parts_merge_into_the_single_process_result() -> None:
    handle = FakeHandle()
    progress: list[tuple[int, int]] = []
    job = FannedOutBatch(handle, "alpha,beta", batch(), chunks_per_part=1, in_flight=2)  # type: ignore[arg-type]
    got = job(lambda done, total: progress.append((done, total)), lambda: False)
    want = batch_result.to_batch_response(
        run_batch(PIPELINE, EXAMPLES, OPTIONS), explain=False, strategies=True
    )
    assert got.rows == want.rows and got.scores == want.scores and got.failed_rows == 0
    assert handle.set_ids == ["alpha,beta"]
    assert len(handle.sent) == 4 and sorted(i for part in handle.sent for i in part) == sorted(
        e.id for e in EXAMPLES
    )
    assert progress == [(2, 7), (4, 7), (6, 7), (7, 7)]
    assert handle.most_out == 2  # in_flight


def test_parts_cut_by_the_batchs_token_lengths_merge_into_the_single_process_result() -> None:
    # lengths as the service counts them (tokens), cut by a CPU's limits: padded tokens and a margin
    options = BatchOptions(chunks=ChunkLimits(rows=3, tokens=40, margin=0.1, slack=2), strategies=True)
    lengths = (9, 30, 10, 12, 11, 31, 8)
    handle = FakeHandle()
    job = FannedOutBatch(handle, "*", batch(options, lengths), chunks_per_part=1, in_flight=2)  # type: ignore[arg-type]
    got = job(lambda done, total: None, lambda: False)
    want = run_batch(PIPELINE, EXAMPLES, options, lengths=lengths)
    assert got.rows == batch_result.to_batch_response(want, explain=False, strategies=True).rows
    # chunks: [8, 9, 10] (10 <= 8 x 1.1 + 2), [11, 12] (11 > 10.8), [30], [31] (2 x 31 > 40 tokens)
    assert handle.sent == [["q6", "q0", "q2"], ["q4", "q3"], ["q1"], ["q5"]]


def test_cancel_stops_sending_and_cancels_what_is_out() -> None:
    handle = FakeHandle()
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) > 3  # two parts sent (in_flight), the first answered; stop before a third

    job = FannedOutBatch(handle, "*", batch(), chunks_per_part=1, in_flight=2)  # type: ignore[arg-type]
    with pytest.raises(BatchCancelledError, match="after 2 of 7 rows"):
        job(lambda done, total: None, should_stop)
    assert len(handle.sent) == 2  # nothing sent after the stop
    assert [r.cancelled for r in handle.responses] == [False, True]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="in_flight"):
        FannedOutBatch(FakeHandle(), "*", batch(), chunks_per_part=1, in_flight=0)  # type: ignore[arg-type]
