"""Concurrent /answer requests share generation passes, and get the answers they would get alone."""

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from app.main import build_app
from app.settings import ServiceSettings

QUESTIONS = [
    {"context": "서울은 대한민국의 수도이다.", "question": "대한민국의 수도는?"},
    {"context": "The Han river flows through Seoul.", "question": "Which river flows through Seoul?"},
    {"context": "KorQuAD was released in 2018.", "question": "When was KorQuAD released?"},
    {"context": "Busan is a port city.", "question": "What kind of city is Busan?"},
]


def test_concurrent_answers_are_batched_and_equal_to_answers_alone(tiny_settings: ServiceSettings) -> None:
    settings = tiny_settings.model_copy(update={"max_batch_size": 8, "max_batch_wait_ms": 500})
    with TestClient(build_app(settings)) as client:
        body = {"decoding": {"strategy": "greedy"}, "explain": True}
        alone = [client.post("/answer", json={**q, **body}).json() for q in QUESTIONS]
        pipeline = client.app.state.service.engine().pipeline
        calls_before = pipeline.stats.generate_calls
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            together = list(pool.map(lambda q: client.post("/answer", json={**q, **body}), QUESTIONS))
        assert [r.status_code for r in together] == [200] * len(QUESTIONS)
        calls = pipeline.stats.generate_calls - calls_before
        assert calls < len(QUESTIONS), f"{len(QUESTIONS)} concurrent requests took {calls} generate calls"
        for one, shared in zip(alone, (r.json() for r in together), strict=True):
            assert shared["answer"] == one["answer"]
            assert [c["raw"] for c in shared["candidates"]] == [c["raw"] for c in one["candidates"]]
