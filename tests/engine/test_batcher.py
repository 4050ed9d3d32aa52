"""The micro-batcher on a fake `answer_many`: gathering, caps, length groups, failure isolation, shutdown."""

import threading
import time
from collections.abc import Sequence

import pytest

from engine.batcher import BatchRecord, MicroBatcher
from ensemble.pipeline import PipelineConfig, QARequest
from ensemble.vote import Candidate, Vote, VoteConfig, vote


class FakePipeline:
    """Answers each question with its own text; fails a whole call that holds a question "bad"."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.hold = hold
        self.lock = threading.Lock()

    def answer_many(self, requests: Sequence[QARequest]) -> list[Vote]:
        if self.hold is not None:
            self.hold.wait(5)
        with self.lock:
            self.calls.append([r.question for r in requests])
        if any(r.question == "bad" for r in requests):
            raise ValueError("a bad question")
        return [_vote(r.question) for r in requests]


def _vote(text: str) -> Vote:
    candidate = Candidate(
        text=text, raw=text, adapter=None, prompt="p", beam_rank=0, score=0.0, weight=1.0, grounded=True
    )
    return vote([candidate], VoteConfig())


def _req(question: str, context: str = "ctx") -> QARequest:
    return QARequest(context=context, question=question)


def _batcher(fake: FakePipeline, records: list[BatchRecord] | None = None, **kw) -> MicroBatcher:
    on_batch = records.append if records is not None else None
    return MicroBatcher(fake.answer_many, config=PipelineConfig(), on_batch=on_batch, **kw)


def test_concurrent_requests_share_one_pass() -> None:
    fake, records = FakePipeline(), []
    batcher = _batcher(fake, records, max_batch_size=8, max_wait_ms=300)
    futures = [batcher.submit(_req(f"q{i}")) for i in range(5)]
    assert [f.result(5).answer for f in futures] == [f"q{i}" for i in range(5)]
    assert len(fake.calls) == 1 and sorted(fake.calls[0]) == [f"q{i}" for i in range(5)]
    assert records[0].size == 5 and not records[0].failed
    batcher.close()


def test_a_full_batch_does_not_wait() -> None:
    fake = FakePipeline()
    batcher = _batcher(fake, max_batch_size=2, max_wait_ms=10_000)
    started = time.monotonic()
    futures = [batcher.submit(_req(f"q{i}")) for i in range(2)]
    assert [f.result(5).answer for f in futures] == ["q0", "q1"]
    assert time.monotonic() - started < 5  # the 10 s wait applies only to a batch that is not yet full
    batcher.close()


def test_batches_are_capped_and_grouped_by_length() -> None:
    hold = threading.Event()
    fake = FakePipeline(hold)
    batcher = _batcher(fake, max_batch_size=3, max_wait_ms=0)
    first = batcher.submit(_req("first"))  # taken alone at once; the worker then blocks on `hold`
    time.sleep(0.2)
    lengths = {"a": 10, "b": 500, "c": 12, "d": 480, "e": 11, "f": 490}
    futures = [batcher.submit(_req(q, "x" * n)) for q, n in lengths.items()]
    hold.set()
    assert first.result(5).answer == "first"
    assert [f.result(5).answer for f in futures] == list(lengths)
    assert fake.calls[0] == ["first"]
    assert [sorted(c) for c in fake.calls[1:]] == [["a", "c", "e"], ["b", "d", "f"]]
    batcher.close()


def test_one_bad_request_does_not_fail_the_others() -> None:
    fake, records = FakePipeline(), []
    batcher = _batcher(fake, records, max_batch_size=8, max_wait_ms=300)
    futures = {q: batcher.submit(_req(q)) for q in ("q0", "bad", "q2")}
    assert futures["q0"].result(5).answer == "q0"
    assert futures["q2"].result(5).answer == "q2"
    with pytest.raises(ValueError, match="a bad question"):
        futures["bad"].result(5)
    assert records[0].failed and records[0].size == 3
    batcher.close()


def test_a_cancelled_request_is_skipped() -> None:
    hold = threading.Event()
    fake = FakePipeline(hold)
    batcher = _batcher(fake, max_batch_size=4, max_wait_ms=0)
    running = batcher.submit(_req("running"))
    time.sleep(0.2)
    gone = batcher.submit(_req("gone"))
    kept = batcher.submit(_req("kept"))
    assert gone.cancel()
    hold.set()
    assert running.result(5).answer == "running" and kept.result(5).answer == "kept"
    assert all("gone" not in call for call in fake.calls)
    batcher.close()


def test_answer_withdraws_a_request_on_timeout() -> None:
    hold = threading.Event()
    fake = FakePipeline(hold)
    batcher = _batcher(fake, max_batch_size=1, max_wait_ms=0)
    batcher.submit(_req("slow"))
    time.sleep(0.2)
    with pytest.raises(TimeoutError):
        batcher.answer(_req("late"), timeout=0.1)
    hold.set()
    batcher.close(timeout=5)
    assert all("late" not in call for call in fake.calls)


def test_answer_many_keeps_order_and_close_fails_the_queue() -> None:
    fake = FakePipeline()
    batcher = _batcher(fake, max_batch_size=2, max_wait_ms=0)
    assert [v.answer for v in batcher.answer_many([_req(q) for q in "abcde"])] == list("abcde")
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_req("after"))
