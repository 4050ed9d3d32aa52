"""GET /metrics: Prometheus text with request, batching, vote, adapter and generation metrics."""

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import build_app
from app.settings import ServiceSettings

Q = {"context": "세종대왕은 1443년에 훈민정음을 창제하였다.", "question": "누가 창제했나?"}


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_follow_requests_passes_votes_and_adapters(tiny_settings: ServiceSettings) -> None:
    with TestClient(build_app(tiny_settings)) as client:
        for _ in range(2):
            assert client.post("/answer", json={**Q, "decoding": {"strategy": "greedy"}}).status_code == 200
        assert client.post("/answer", json={"context": "x"}).status_code == 422
        assert client.get("/batch/no-such-job").status_code == 404
        m = _samples(client)
    route = (("method", "POST"), ("route", "/answer"))
    assert m[("qa_http_requests_total", (*route[:1], route[1], ("status", "200")))] == 2
    assert m[("qa_http_requests_total", (*route[:1], route[1], ("status", "422")))] == 1
    job_route = (("method", "GET"), ("route", "/batch/{job_id}"), ("status", "404"))
    assert m[("qa_http_requests_total", job_route)] == 1  # the template, not the id
    assert m[("qa_http_request_duration_seconds_count", route)] == 3
    assert m[("qa_batch_size_count", ())] == 2 and m[("qa_batch_size_sum", ())] == 2
    assert m[("qa_candidates_per_answer_count", ())] == 2
    assert m[("qa_candidates_per_answer_sum", ())] == 2 * 3 * 2  # 3 adapters x 2 default prompts, greedy
    assert m[("qa_answer_confidence_count", ())] == 2
    for name in ("alpha", "beta", "gamma"):
        assert m[("qa_adapter_resident", (("adapter", name),))] == 1
        assert m[("qa_adapter_agreement_count", (("adapter", name),))] == 2
    assert m[("qa_ready", ())] == 1 and m[("qa_requests_running", ())] == 0
    assert m[("qa_generate_calls_total", ())] >= 2
    assert m[("qa_generated_tokens_total", ())] > 0 and m[("qa_generate_seconds_total", ())] > 0
    assert not any(name.startswith("qa_gpu_") for name, _ in m)  # CPU: no accelerator memory series


def test_made_up_methods_and_paths_do_not_grow_the_series(tiny_settings: ServiceSettings) -> None:
    with TestClient(build_app(tiny_settings)) as client:
        for i in range(50):
            assert client.request(f"BREW{i}", "/answer").status_code == 405
            assert client.request(f"X{i}", f"/no/such/path/{i}").status_code == 404
        m = _samples(client)
        series = client.get("/metrics").text.count("qa_http_requests_total{")
    other = ("method", "other")
    assert m[("qa_http_requests_total", (other, ("route", "/answer"), ("status", "405")))] == 50
    assert m[("qa_http_requests_total", (other, ("route", "unmatched"), ("status", "404")))] == 50
    assert series <= 4  # those two, and the two scrapes of /metrics
