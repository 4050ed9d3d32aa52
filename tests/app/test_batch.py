"""POST /batch on the real service (tiny random model, 3 random adapters): inline answers, jobs, bad input.

Also the job queue (`app.batch.jobs.JobManager`) alone, with fake work, for what is hard to time over HTTP: a
running job cancelled, a job that raises, eviction, shutdown.
"""

import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.batch.jobs import JobManager, TooManyJobsError, UnknownJobError
from app.main import build_app
from app.schemas import BatchResponse
from app.settings import ServiceSettings
from ensemble.batch import BatchCancelledError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDS = ["news-001", "news-002", "news-003", "news-004"]
FAST = {"max_new_tokens": 3}
GREEDY = json.dumps({"strategy": "greedy", "max_new_tokens": 3})


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "news_qa.jsonl").read_text("utf-8").splitlines() if line]


def check_error(response, status: int, error_type: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "detail"}
    assert body["error_type"] == error_type, body
    if field is not None:
        assert field in body["error"], body
    return body


def upload(client: TestClient, data: bytes, filename: str = "test.csv", **fields: str):
    return client.post("/batch", files={"file": (filename, data)}, data=fields)


@pytest.fixture(scope="module")
def small_client(tiny_settings: ServiceSettings) -> Iterator[TestClient]:
    """Jobs from 3 rows, small row/byte/job limits (finished jobs kept only until room is needed), and
    prompts over 800 tokens refused."""
    settings = tiny_settings.model_copy(
        update={
            "batch_sync_max_rows": 2,
            "batch_max_rows": 6,
            "batch_max_bytes": 64 * 1024,
            "batch_chunk_size": 2,
            "batch_max_jobs": 2,
            "batch_retention_s": 0.0,
            "max_input_tokens": 800,
        }
    )
    with TestClient(build_app(settings)) as client:
        yield client


def wait_finished(client: TestClient, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/batch/{job_id}").json()
        if status["status"] in ("done", "failed", "cancelled"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


# -- inline answers ----------------------------------------------------------------------------------------
def test_json_rows_answer_inline_in_order_with_scores_per_strategy(client):
    rows = fixture_rows()[::-1]  # not sorted: the output must follow the input order
    response = client.post("/batch", json={"rows": rows, "prompts": ["zero-shot"], "decoding": FAST})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["rows"]] == IDS[::-1]
    assert body["failed_rows"] == 0 and all(r["error"] is None for r in body["rows"])
    scores = body["scores"]
    expected = {
        "ensemble",
        "greedy:alpha:zero-shot",
        "top-beam:alpha:zero-shot",
        "member:alpha",
        "member:gamma",
        "prompt:zero-shot",
    }
    assert expected <= set(scores)
    for score in scores.values():
        assert score["count"] == 4 and score["missing"] == 0
        assert 0.0 <= score["exact_match"] <= 100.0 and 0.0 <= score["f1"] <= 100.0
    assert all(set(r["strategies"]) <= set(scores) for r in body["rows"])
    assert all(r["candidates"] is None for r in body["rows"])
    assert body["seconds"]["total"] >= 0.0


@pytest.mark.parametrize("name", ["news_qa.json", "news_qa.csv", "news_qa.jsonl"])
def test_upload_in_each_format(client, name):
    data = (FIXTURES / name).read_bytes()
    response = upload(client, data, name, adapters="alpha,base", prompts="zero-shot", decoding=GREEDY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["rows"]] == IDS
    assert {"ensemble", "greedy:alpha:zero-shot", "greedy:base:zero-shot", "member:base"} <= set(
        body["scores"]
    )


def test_format_field_overrides_the_extension_and_explain_gives_candidates(client):
    data = (FIXTURES / "news_qa.jsonl").read_bytes()
    response = upload(
        client, data, "upload.txt", format="jsonl", adapters="beta", prompts="zero-shot", explain="true",
        strategies="false", decoding=GREEDY,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["rows"]] == IDS
    assert list(body["scores"]) == ["ensemble"]  # gold answers score the ensemble even without strategies
    for row in body["rows"]:
        assert row["strategies"] is None
        assert [(c["adapter"], c["prompt"]) for c in row["candidates"]] == [("beta", "zero-shot")]


def test_rows_without_gold_have_no_scores(client):
    rows = [{"id": 7, "context": "회의는 3시에 열린다.", "question": "회의는 몇 시에?"}]
    body = client.post("/batch", json={"rows": rows, "prompts": ["zero-shot"], "decoding": FAST}).json()
    assert body["scores"] is None
    assert [r["id"] for r in body["rows"]] == ["7"] and body["rows"][0]["strategies"] is None


def test_a_failing_row_fails_alone(small_client):
    long_context = "해담시는 수변공원을 개방했다. " * 60  # over 800 prompt tokens
    rows = [
        {"id": "long", "context": long_context, "question": "무엇을 개방했나?", "answer": "수변공원"},
        fixture_rows()[0],
    ]
    response = small_client.post("/batch", json={"rows": rows, "prompts": ["zero-shot"], "decoding": FAST})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["rows"]] == ["long", "news-001"]
    failed, answered = body["rows"]
    assert failed["answer"] == "" and "PromptTooLongError" in failed["error"]
    assert answered["error"] is None and answered["support"] >= 1
    assert body["failed_rows"] == 1
    assert body["scores"]["ensemble"]["count"] == 2 and body["scores"]["ensemble"]["missing"] == 1


# -- jobs ----------------------------------------------------------------------------------------------------
def test_large_batch_becomes_a_job_with_json_and_csv_results(small_client):
    data = (FIXTURES / "news_qa.csv").read_bytes()
    response = upload(small_client, data, "news_qa.csv", prompts="zero-shot", decoding=GREEDY)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id = accepted["job_id"]
    assert accepted["status"] == "queued" and accepted["total"] == 4
    assert response.headers["location"] == accepted["status_url"] == f"/batch/{job_id}"
    status = wait_finished(small_client, job_id)
    assert status["status"] == "done", status
    assert status["done"] == status["total"] == 4 and status["failed_rows"] == 0
    assert status["started_at"] and status["finished_at"] and status["error"] is None

    body = small_client.get(accepted["result_url"]).json()
    assert [r["id"] for r in body["rows"]] == IDS
    assert "greedy:alpha:zero-shot" in body["scores"]

    download = small_client.get(accepted["result_url"], params={"format": "csv"})
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    table = list(csv.reader(io.StringIO(download.text)))
    assert table[0] == ["id", "answer"]
    assert [row[0] for row in table[1:]] == IDS
    assert [row[1] for row in table[1:]] == [r["answer"] for r in body["rows"]]


def test_json_rows_job(small_client):
    rows = fixture_rows()[:3]
    response = small_client.post("/batch", json={"rows": rows, "prompts": ["zero-shot"], "decoding": FAST})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert wait_finished(small_client, job_id)["status"] == "done"
    assert [r["id"] for r in small_client.get(f"/batch/{job_id}/result").json()["rows"]] == IDS[:3]


def test_queued_job_cancel_not_ready_and_too_many_jobs(small_client):
    jobs: JobManager = small_client.app.state.jobs
    gate = threading.Event()
    empty = BatchResponse(rows=[], scores=None, failed_rows=0, seconds={})
    blocker = jobs.submit(1, lambda on_progress, should_stop: gate.wait(60) and empty)
    try:
        body = {"rows": fixture_rows()[:3], "prompts": ["zero-shot"], "decoding": FAST}
        job_id = small_client.post("/batch", json=body).json()["job_id"]
        assert small_client.get(f"/batch/{job_id}").json()["status"] == "queued"
        check_error(small_client.get(f"/batch/{job_id}/result"), 409, "not_ready", "job_id")

        full = small_client.post("/batch", json=body)  # batch_max_jobs=2, both unfinished
        check_error(full, 429, "too_many_jobs")
        assert full.headers["retry-after"]

        cancelled = small_client.delete(f"/batch/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert small_client.get(f"/batch/{job_id}").json()["status"] == "cancelled"
        check_error(small_client.get(f"/batch/{job_id}/result", params={"format": "csv"}), 409, "not_ready")
        check_error(small_client.delete(f"/batch/{job_id}"), 409, "already_finished")
    finally:
        gate.set()
    assert wait_finished(small_client, blocker.job_id)["status"] == "done"


def test_unknown_job_is_404(client):
    for path in ("/batch/0123456789abcdef0123456789abcdef", "/batch/nope/result", "/batch/..%2F..%2Fetc"):
        check_error(client.get(path), 404, "not_found")
    check_error(client.delete("/batch/nope"), 404, "not_found", "job_id")
    check_error(client.get("/batch/nope/result", params={"format": "xml"}), 422, "validation_error", "format")


# -- bad input ---------------------------------------------------------------------------------------------
HEADER = b"id,context,question\n"


@pytest.mark.parametrize(
    ("data", "filename", "field", "row"),
    [
        (HEADER + b"1,\xff\xfe,q\n", "t.csv", "file", None),  # not UTF-8 (line 2)
        (HEADER + b'1,"unclosed,q\n', "t.csv", "file", 2),  # malformed CSV
        (HEADER + b"1,ctx\n", "t.csv", "file", 2),  # wrong column count
        (b'{"data": [', "t.json", "file", None),  # malformed JSON
        (b'{"id": "a", "context": "c", "question": "q"}\n{"id": \n', "t.jsonl", "file", 2),
        (b"id,context\n1,ctx\n", "t.csv", "question", 1),  # missing column
        (HEADER + b",ctx,q\n", "t.csv", "id", 2),  # empty id
        (HEADER + b"a,ctx,q\nb,ctx,q\na,ctx,q\n", "t.csv", "id", 4),  # duplicate id
        (b"", "t.csv", "file", None),  # empty file
        (HEADER, "t.csv", "file", None),  # no rows
    ],
)
def test_bad_files_are_422_naming_row_and_field(client, data, filename, field, row):
    body = check_error(upload(client, data, filename), 422, "invalid_file", "file")
    assert body["detail"]["field"] == field and body["detail"]["row"] == row


def test_not_utf8_names_the_line(client):
    body = check_error(upload(client, HEADER + b"1,\xff,q\n"), 422, "invalid_file", "not UTF-8")
    assert body["detail"]["line"] == 2


@pytest.mark.parametrize(
    ("rows", "field", "row"),
    [
        ([{"id": "a", "context": "c", "question": "q"}, {"id": "b", "context": "c"}], "question", 2),
        ([{"id": " ", "context": "c", "question": "q"}], "id", 1),
        ([{"id": "a", "context": "c", "question": "q"}] * 2, "id", 2),
        ([{"id": "a", "context": "c", "question": "q", "answers": "x", "answer": "y"}], "answers", 1),
        ([], "rows", None),
    ],
)
def test_bad_json_rows_are_422_naming_row_and_field(client, rows, field, row):
    body = check_error(client.post("/batch", json={"rows": rows}), 422, "invalid_rows", "rows")
    assert body["detail"]["field"] == field and body["detail"]["row"] == row


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rows": "a,b"}, "rows"),
        ({"rows": [1]}, "rows[0]"),
        ({}, "rows"),
        ({"rows": [], "decoding": {"num_beams": 0}}, "decoding.num_beams"),
        ({"rows": [], "adapters": []}, "adapters"),
        ({"rows": [], "bogus": 1}, "bogus"),
        ([1, 2], "body"),
    ],
)
def test_bad_json_fields_are_422_naming_the_field(client, body, field):
    response = check_error(client.post("/batch", json=body), 422, "validation_error", field)
    assert any(d["field"] == field for d in response["detail"])


def test_bad_form_fields_are_422(client):
    data = (FIXTURES / "news_qa.csv").read_bytes()
    check_error(upload(client, data, decoding="not json"), 422, "validation_error", "decoding")
    check_error(
        upload(client, data, decoding='{"num_beams": 99}'), 422, "limit_exceeded", "decoding.num_beams"
    )
    check_error(upload(client, data, strategies="maybe"), 422, "validation_error", "strategies")
    check_error(upload(client, data, format="xlsx"), 422, "validation_error", "format")
    check_error(upload(client, data, bogus="1"), 422, "validation_error", "bogus")
    missing = client.post("/batch", data={"adapters": "alpha"}, files={"other": ("x.csv", data)})
    check_error(missing, 422, "invalid_file", "file")


def test_unknown_adapter_or_prompt_is_422(client):
    data = (FIXTURES / "news_qa.csv").read_bytes()
    body = check_error(upload(client, data, adapters="alpha,nope"), 422, "unknown_adapter", "adapters")
    assert "alpha" in body["error"]  # says what is served
    check_error(upload(client, data, prompts="poem"), 422, "unknown_prompt", "prompts")
    rows = fixture_rows()
    check_error(client.post("/batch", json={"rows": rows, "adapters": ["nope"]}), 422, "unknown_adapter")


def test_bodies_that_cannot_be_read(client):
    post = client.post
    check_error(
        post("/batch", content=b"id\n", headers={"content-type": "text/csv"}), 415, "unsupported_media_type"
    )
    check_error(post("/batch", content=b'{"rows": ["\xff"]}', headers={"content-type": "application/json"}),
                400, "invalid_body", "body")  # fmt: skip
    check_error(post("/batch", content=b'{"rows": [', headers={"content-type": "application/json"}),
                422, "validation_error")  # fmt: skip
    bad_form = post("/batch", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data"})
    check_error(bad_form, 400, "invalid_body", "malformed multipart")


def test_oversize_context_is_413_naming_row_and_field(client):
    rows = [*fixture_rows()[:2], {"id": "big", "context": "가" * 2_001, "question": "q"}]
    body = check_error(client.post("/batch", json={"rows": rows}), 413, "payload_too_large", "context")
    assert body["detail"] == {"field": "context", "row": 3, "id": "big"}


def test_too_many_rows_or_bytes_is_413(small_client):
    rows = [{"id": str(i), "context": "c", "question": "q"} for i in range(7)]  # batch_max_rows=6
    body = check_error(small_client.post("/batch", json={"rows": rows}), 413, "payload_too_large", "rows")
    assert body["detail"]["field"] == "rows"
    text = HEADER + b"".join(b"%d,c,q\n" % i for i in range(7))
    body = check_error(upload(small_client, text), 413, "payload_too_large", "file")
    assert body["detail"]["field"] == "file"
    big = HEADER + b"1," + b"x" * (64 * 1024) + b",q\n"  # batch_max_bytes=64 KiB
    body = check_error(upload(small_client, big), 413, "payload_too_large", "file")
    assert body["detail"]["field"] == "file"
    huge_json = json.dumps({"rows": [{"id": "1", "context": "x" * 70_000, "question": "q"}]})
    check_error(small_client.post("/batch", content=huge_json, headers={"content-type": "application/json"}),
                413, "payload_too_large", "body")  # fmt: skip


def test_server_keeps_serving_and_documents_batch(client):
    upload(client, b"\xff\xfe")
    assert (
        client.post("/answer", json={"context": "비는 오후에 그친다.", "question": "언제?"}).status_code
        == 200
    )
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/batch"]["post"]
    assert {"application/json", "multipart/form-data"} <= set(post["requestBody"]["content"])
    assert {"200", "202", "413", "422", "429"} <= set(post["responses"])
    assert {"/batch/{job_id}", "/batch/{job_id}/result"} <= set(spec["paths"])


# -- the job queue alone -----------------------------------------------------------------------------------
EMPTY = BatchResponse(rows=[], scores=None, failed_rows=0, seconds={})


def wait_for(manager: JobManager, job_id: str, states: tuple[str, ...], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := manager.status(job_id).status) not in states:
        assert time.monotonic() < deadline, status
        time.sleep(0.01)
    return status


@pytest.fixture
def manager() -> Iterator[JobManager]:
    jobs = JobManager(max_jobs=3)
    jobs.start()
    yield jobs
    jobs.stop(timeout=5)


def test_worker_survives_a_failing_job(manager):
    def boom(on_progress, should_stop):
        raise RuntimeError("disk on fire")

    failed = manager.submit(1, boom)
    ok = manager.submit(1, lambda on_progress, should_stop: EMPTY)
    assert wait_for(manager, failed.job_id, ("failed",)) == "failed"
    error = manager.status(failed.job_id).error
    assert error.startswith("internal error") and "disk on fire" not in error  # the log has it, not clients
    assert wait_for(manager, ok.job_id, ("done",)) == "done"
    assert manager.result(ok.job_id) is EMPTY


def test_running_job_stops_when_cancelled(manager):
    started = threading.Event()

    def slow(on_progress, should_stop):
        for done in range(1, 1_000):
            started.set()
            if should_stop():
                raise BatchCancelledError(f"stopped after {done - 1} rows")
            on_progress(done, 1_000)
            time.sleep(0.005)
        return EMPTY

    job = manager.submit(1_000, slow)
    assert started.wait(5)
    assert manager.cancel(job.job_id).status == "running"  # stops after the current chunk
    assert wait_for(manager, job.job_id, ("cancelled", "done")) == "cancelled"
    status = manager.status(job.job_id)
    assert status.error.startswith("cancelled") and 0 < status.done < 1_000


def test_oldest_finished_job_is_forgotten_and_full_queue_refuses(manager):
    first = manager.submit(1, lambda on_progress, should_stop: EMPTY)
    wait_for(manager, first.job_id, ("done",))
    gate = threading.Event()
    blocked = [manager.submit(1, lambda on_progress, should_stop: gate.wait(10) and EMPTY) for _ in range(3)]
    with pytest.raises(UnknownJobError):
        manager.status(first.job_id)
    with pytest.raises(TooManyJobsError):
        manager.submit(1, lambda on_progress, should_stop: EMPTY)
    gate.set()
    for job in blocked:
        assert wait_for(manager, job.job_id, ("done",)) == "done"


def test_shutdown_interrupts_queued_and_running_jobs_and_joins_the_worker():
    manager = JobManager(max_jobs=4)
    manager.start()
    running = manager.submit(10, lambda on_progress, should_stop: _until_stopped(should_stop))
    queued = manager.submit(1, lambda on_progress, should_stop: EMPTY)
    wait_for(manager, running.job_id, ("running",))
    manager.stop(timeout=5)
    # "interrupted", not "cancelled": nobody asked, the server stopped; the client should resubmit.
    assert manager.status(running.job_id).status == "interrupted"
    assert manager.status(queued.job_id).status == "interrupted"
    assert "submit it again" in manager.status(running.job_id).error
    with pytest.raises(TooManyJobsError):
        manager.submit(1, lambda on_progress, should_stop: EMPTY)


def _until_stopped(should_stop) -> BatchResponse:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if should_stop():
            raise BatchCancelledError("stopped")
        time.sleep(0.01)
    return EMPTY
