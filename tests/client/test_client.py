"""`client`: QAClient, AsyncQAClient and the `qa` CLI against a real `qa-serve` process on loopback."""

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from client import AsyncQAClient, QAClient, QAClientError
from client.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONTEXT = "서울시는 한강공원 12곳에 자전거 대여소 120개를 새로 설치한다고 밝혔다."
QUESTION = "새로 설치하는 대여소는 몇 개인가?"
NEWS_IDS = ["news-001", "news-002", "news-003", "news-004"]


def test_sync_answer_and_probes(server):
    with QAClient(server.url) as qa:
        assert qa.health() == {"status": "ok"}
        assert qa.ready()["status"] == "ready"
        assert {a["name"] for a in qa.adapters()["adapters"]} == {"alpha", "beta", "gamma"}
        result = qa.answer(CONTEXT, QUESTION, adapters=["alpha"], explain=True)
    assert isinstance(result["answer"], str) and 0 <= result["confidence"] <= 1
    assert {c["adapter"] for c in result["candidates"]} == {"alpha"}


def test_async_answer(server):
    async def ask() -> dict:
        async with AsyncQAClient(server.url) as qa:
            return await qa.answer(CONTEXT, QUESTION, prompts=["zero-shot"], decoding={"strategy": "greedy"})

    assert asyncio.run(ask())["n_candidates"] == 3  # 3 adapters x 1 prompt x 1 greedy output


def test_server_error_is_typed(server):
    with QAClient(server.url) as qa, pytest.raises(QAClientError) as info:
        qa.answer(CONTEXT, QUESTION, adapters=["nope"])
    assert info.value.status == 422 and info.value.error_type == "unknown_adapter"
    assert "nope" in info.value.message


def test_unreachable_server_is_a_client_error():
    with QAClient("http://127.0.0.1:9", timeout=2) as qa, pytest.raises(QAClientError) as info:
        qa.health()
    assert info.value.status is None and info.value.error_type == "connection_error"


def test_batch_job_wait_and_csv_result(server):
    seen: list[str] = []
    with QAClient(server.url) as qa:
        job = qa.batch_file(FIXTURES / "news_qa.csv")  # 4 rows > QA_BATCH_SYNC_MAX_ROWS=2: a job
        assert job["total"] == 4 and job["status"] in ("queued", "running")
        final = qa.wait(job["job_id"], poll=0.1, timeout=60, on_progress=lambda s: seen.append(s["status"]))
        assert final["status"] == "done" and seen[-1] == "done"
        rows = list(csv.reader(io.StringIO(qa.result(job["job_id"], format="csv"))))
        assert rows[0] == ["id", "answer"] and [r[0] for r in rows[1:]] == NEWS_IDS
        assert [r["id"] for r in qa.result(job["job_id"], format="json")["rows"]] == NEWS_IDS


def test_qa_cli_answer_and_batch(server, tmp_path: Path, capsys):
    context = tmp_path / "context.txt"
    context.write_text(CONTEXT, encoding="utf-8")
    assert (
        main(["--url", server.url, "answer", "--context", str(context), "--question", QUESTION, "--json"])
        == 0
    )
    assert "confidence" in json.loads(capsys.readouterr().out)

    out = tmp_path / "out.csv"
    assert (
        main(["--url", server.url, "batch", str(FIXTURES / "news_qa.csv"), "-o", str(out), "--poll", "0.1"])
        == 0
    )
    rows = list(csv.reader(out.open(encoding="utf-8", newline="")))
    assert rows[0] == ["id", "answer"] and [r[0] for r in rows[1:]] == NEWS_IDS

    small = tmp_path / "two.jsonl"  # 2 rows: answered inline (200), written the same way
    lines = (FIXTURES / "news_qa.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["--url", server.url, "batch", str(small), "-o", str(out), "--quiet"]) == 0
    assert [r[0] for r in csv.reader(out.open(encoding="utf-8", newline=""))] == ["id", *NEWS_IDS[:2]]

    assert (
        main(["--url", server.url, "answer", "--context", str(tmp_path / "missing"), "--question", "?"]) == 1
    )
    assert "qa:" in capsys.readouterr().err


def test_server_logs_are_json_lines_with_request_ids(server):
    with QAClient(server.url) as qa:
        qa.health()
    # Every log record is a JSON line (the rest of the output is progress bars of the model loader).
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "app.access"]
    assert access and all(len(line["request_id"]) == 32 for line in access)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]  # ours replaces uvicorn's
    assert all(CONTEXT not in json.dumps(line, ensure_ascii=False) for line in lines)


def test_api_key_is_sent_as_bearer(keyed_server):
    key = "client-test-key-0123"  # conftest's API_KEY
    with QAClient(keyed_server.url, api_key="wrong") as qa, pytest.raises(QAClientError) as info:
        qa.adapters()
    assert info.value.status == 401 and info.value.error_type == "unauthorized"
    with QAClient(keyed_server.url, api_key=key) as qa:
        assert qa.adapters()["adapters"]
