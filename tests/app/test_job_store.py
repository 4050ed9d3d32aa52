"""Batch jobs on disk: atomic files, nothing half-written ever reported done, restarts mark unfinished jobs.

`JobStore` alone, `JobManager` over a store (a "restart" is a new manager on the same folder), then a job
through HTTP that survives an app restart with its result.
"""

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.batch.job_store import JobStore
from app.batch.jobs import JobManager, JobNotReadyError, TooManyJobsError, UnknownJobError
from app.main import build_app
from app.schemas import BatchResponse, BatchRowOut, JobStatusResponse
from app.settings import ServiceSettings
from ensemble.batch import BatchCancelledError

ROWS = [
    BatchRowOut(id="a", answer="x", confidence=1.0, support=1),
    BatchRowOut(
        id="b", answer="", confidence=0.0, support=0, error="PromptTooLongError: prompt 0 has 900 tokens"
    ),
]
RESULT = BatchResponse(rows=ROWS, scores=None, failed_rows=1, seconds={"total": 0.1})


def status(job_id: str, state: str, **extra) -> JobStatusResponse:
    return JobStatusResponse(
        job_id=job_id, status=state, total=2, done=0, failed_rows=0, created_at=datetime.now(UTC), **extra
    )


def submit_and_finish(client, rows: list[dict], timeout: float = 60.0) -> str:
    """POST the rows as a batch job over HTTP and wait until it is done; returns its id."""
    job_id = client.post("/batch", json={"rows": rows}).json()["job_id"]
    deadline = time.monotonic() + timeout
    while client.get(f"/batch/{job_id}").json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job_id


def wait_for(manager: JobManager, job_id: str, states: tuple[str, ...], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := manager.status(job_id).status) not in states:
        assert time.monotonic() < deadline, state
        time.sleep(0.01)
    return state


def test_recover_marks_unfinished_and_checks_done_results(tmp_path: Path):
    store = JobStore(tmp_path)
    ids = {name: f"{n:032x}" for n, name in enumerate(["queued", "running", "done", "torn", "cancelled"], 1)}
    for name in ("queued", "running", "cancelled"):
        store.save_status(status(ids[name], name))
    store.save_status(status(ids["done"], "done"))
    store.save_result(ids["done"], RESULT)
    store.save_status(status(ids["torn"], "done"))
    (tmp_path / f"{ids['torn']}.result.json").write_text('{"rows": [')  # a torn result file
    (tmp_path / f"{'f' * 32}.result.json").write_text("{}")  # a result whose job never got to done
    (tmp_path / f".{'e' * 32}.json.123.tmp").write_text("half")
    (tmp_path / f"{'d' * 32}.json").write_text("not json")

    recovered = {s.job_id: s for s in JobStore(tmp_path).recover()}
    assert recovered[ids["queued"]].status == recovered[ids["running"]].status == "interrupted"
    assert "submit the batch again" in recovered[ids["running"]].error
    assert recovered[ids["done"]].status == "done"
    assert recovered[ids["torn"]].status == "failed" and "unreadable" in recovered[ids["torn"]].error
    assert recovered[ids["cancelled"]].status == "cancelled"
    assert store.load_result(ids["done"]) == RESULT
    assert not (tmp_path / f"{'f' * 32}.result.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / f"{'d' * 32}.json.corrupt").exists() and len(recovered) == 5
    # The repair is on disk too: a second start reads the same.
    again = {s.job_id: s.status for s in JobStore(tmp_path).recover()}
    assert again == {job_id: s.status for job_id, s in recovered.items()}


def test_writes_are_atomic_replacements(tmp_path: Path, monkeypatch):
    store = JobStore(tmp_path)
    job_id = "a" * 32
    store.save_result(job_id, RESULT)
    before = (tmp_path / f"{job_id}.result.json").read_bytes()

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr("app.batch.job_store.os.fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save_result(job_id, BatchResponse(rows=[], scores=None, failed_rows=0, seconds={}))
    assert (tmp_path / f"{job_id}.result.json").read_bytes() == before  # the old file, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_done_job_and_its_failed_rows_survive_a_restart(tmp_path: Path):
    manager = JobManager(max_jobs=4, store=JobStore(tmp_path))
    manager.start()
    job = manager.submit(2, lambda on_progress, should_stop: RESULT)
    assert wait_for(manager, job.job_id, ("done",)) == "done"
    failures = manager.status(job.job_id).failures
    assert [(f.row, f.id) for f in failures] == [(2, "b")] and "PromptTooLong" in failures[0].error
    manager.stop(timeout=5)

    restarted = JobManager(max_jobs=4, store=JobStore(tmp_path))
    assert restarted.status(job.job_id).status == "done"
    assert restarted.status(job.job_id).failures == failures
    assert restarted.result(job.job_id) == RESULT


def test_a_job_running_at_shutdown_is_interrupted_on_disk_never_done(tmp_path: Path):
    manager = JobManager(max_jobs=4, store=JobStore(tmp_path))
    manager.start()
    started, release = threading.Event(), threading.Event()

    def slow(on_progress, should_stop):
        started.set()
        release.wait(10)  # a chunk that outlives the shutdown wait
        if should_stop():
            raise BatchCancelledError("stopped after 1 of 2 rows")
        return RESULT

    job = manager.submit(2, slow)
    queued = manager.submit(1, lambda on_progress, should_stop: RESULT)
    assert started.wait(5)
    manager.stop(timeout=0.2)  # the worker is still inside the chunk: the file still says running
    on_disk = json.loads((tmp_path / f"{job.job_id}.json").read_text())
    assert on_disk["status"] == "running"
    assert json.loads((tmp_path / f"{queued.job_id}.json").read_text())["status"] == "interrupted"

    restarted = JobManager(max_jobs=4, store=JobStore(tmp_path))  # as if the process had died here
    assert restarted.status(job.job_id).status == "interrupted"
    with pytest.raises(JobNotReadyError):
        restarted.result(job.job_id)
    release.set()
    wait_for(manager, job.job_id, ("interrupted",))  # the old worker, once out of its chunk, agrees


def test_forgotten_jobs_are_deleted_from_disk(tmp_path: Path):
    manager = JobManager(max_jobs=1, store=JobStore(tmp_path))
    manager.start()
    first = manager.submit(2, lambda on_progress, should_stop: RESULT)
    wait_for(manager, first.job_id, ("done",))
    second = manager.submit(2, lambda on_progress, should_stop: RESULT)
    wait_for(manager, second.job_id, ("done",))
    manager.stop(timeout=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{second.job_id}.json",
        f"{second.job_id}.result.json",
    ]


def test_a_job_result_survives_an_app_restart(tiny_settings: ServiceSettings, tmp_path: Path):
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": None,
            "jobs_dir": tmp_path,
            "batch_sync_max_rows": 0,
            "default_strategy": "greedy",
        }
    )
    rows = [{"id": f"r{i}", "context": "비는 오후에 그친다.", "question": "비는 언제?"} for i in range(3)]
    with TestClient(build_app(settings)) as client:
        job_id = submit_and_finish(client, rows)
        before = client.get(f"/batch/{job_id}/result").json()
    with TestClient(build_app(settings)) as client:
        assert client.get(f"/batch/{job_id}").json()["status"] == "done"
        after = client.get(f"/batch/{job_id}/result").json()
        assert after == before and [r["id"] for r in after["rows"]] == ["r0", "r1", "r2"]


def test_a_result_file_removed_behind_our_back_fails_the_job_not_the_request(tmp_path: Path):
    manager = JobManager(max_jobs=2, store=JobStore(tmp_path))
    manager.start()
    job = manager.submit(2, lambda on_progress, should_stop: RESULT)
    wait_for(manager, job.job_id, ("done",))
    (tmp_path / f"{job.job_id}.result.json").unlink()
    with pytest.raises(JobNotReadyError):
        manager.result(job.job_id)
    assert manager.status(job.job_id).status == "failed"
    manager.stop(timeout=5)


def test_finished_results_are_kept_for_the_retention_time_then_make_room(tmp_path: Path):
    manager = JobManager(max_jobs=2, store=JobStore(tmp_path), retention_s=60)
    manager.start()
    kept = [manager.submit(2, lambda on_progress, should_stop: RESULT) for _ in range(2)]
    for job in kept:
        wait_for(manager, job.job_id, ("done",))
    for _ in range(5):  # newer jobs from anyone: refused, never at the expense of a result seconds old
        with pytest.raises(TooManyJobsError) as refused:
            manager.submit(2, lambda on_progress, should_stop: RESULT)
        assert 55 <= refused.value.retry_after <= 60 and "retention" in str(refused.value)
    for job in kept:
        assert manager.result(job.job_id) == RESULT
        assert (tmp_path / f"{job.job_id}.result.json").exists()
    manager.stop(timeout=5)

    # Past the retention time the oldest finished job makes room (and its files go); the newer one stays.
    later = JobManager(max_jobs=2, store=JobStore(tmp_path), retention_s=0.3)
    later.start()
    time.sleep(0.4)
    new = later.submit(2, lambda on_progress, should_stop: RESULT)
    with pytest.raises(UnknownJobError):
        later.status(kept[0].job_id)
    assert not (tmp_path / f"{kept[0].job_id}.result.json").exists()
    assert later.result(kept[1].job_id) == RESULT
    wait_for(later, new.job_id, ("done",))
    later.stop(timeout=5)


def test_too_many_jobs_over_http_is_429_with_the_retention_wait(
    tiny_settings: ServiceSettings, tmp_path: Path
):
    settings = tiny_settings.model_copy(
        update={
            "adapters_dir": None,
            "jobs_dir": tmp_path,
            "batch_sync_max_rows": 0,
            "batch_max_jobs": 1,
            "batch_retention_s": 120.0,
            "default_strategy": "greedy",
        }
    )
    rows = [{"id": "r0", "context": "비는 오후에 그친다.", "question": "비는 언제?"}]
    with TestClient(build_app(settings)) as client:
        job_id = submit_and_finish(client, rows)
        refused = client.post("/batch", json={"rows": rows})
        assert refused.status_code == 429 and refused.json()["error_type"] == "too_many_jobs", refused.text
        assert 110 <= int(refused.headers["Retry-After"]) <= 120
        assert client.get(f"/batch/{job_id}/result").status_code == 200  # still there


def test_progress_is_on_disk_so_a_killed_job_says_how_far_it_got(tmp_path: Path):
    manager = JobManager(max_jobs=2, store=JobStore(tmp_path))
    manager.start()
    answered, release = threading.Event(), threading.Event()

    def work(on_progress, should_stop):
        on_progress(3, 10)
        answered.set()
        release.wait(10)  # the process "dies" inside the next chunk
        return RESULT

    job = manager.submit(10, work)
    assert answered.wait(5)
    on_disk = json.loads((tmp_path / f"{job.job_id}.json").read_text())
    assert (on_disk["status"], on_disk["done"], on_disk["total"]) == ("running", 3, 10)

    restarted = JobManager(max_jobs=2, store=JobStore(tmp_path))  # a new process on the folder
    status = restarted.status(job.job_id)
    assert status.status == "interrupted" and status.done == 3
    assert "3 of 10 rows answered" in status.error
    release.set()
    wait_for(manager, job.job_id, ("done",))
    manager.stop(timeout=5)


def test_jobs_past_max_jobs_at_a_restart_are_deleted_not_left_behind(tmp_path: Path):
    manager = JobManager(max_jobs=3, store=JobStore(tmp_path))
    manager.start()
    jobs = [manager.submit(2, lambda on_progress, should_stop: RESULT) for _ in range(3)]
    for job in jobs:
        wait_for(manager, job.job_id, ("done",))
    manager.stop(timeout=5)
    restarted = JobManager(max_jobs=1, store=JobStore(tmp_path))
    assert restarted.status(jobs[2].job_id).status == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{jobs[2].job_id}.json",
        f"{jobs[2].job_id}.result.json",
    ]
