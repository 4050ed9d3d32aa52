"""The Ray Serve application (`deploy/`) on a local Ray cluster on this CPU: two model replicas of the tiny
model, reached over HTTP through Serve's proxy, answer exactly as the single-process service does.

- both replicas answer, each adapter set sticks to the replica that loaded it (model multiplexing), and every
  answer (with its candidates and provenance) equals the single-process app's;
- bad input gets the same 4xx and JSON body;
- a small batch answers inline and a large one becomes a job spread over the replicas, with the same rows
  and scores as the single-process job.

Bounded in time: Ray gets 2 CPUs, a 200 MB object store and no dashboard; starting, each test and stopping run
under an alarm. The whole module takes about a minute here. Skipped when `ray[serve]` is not installed (the
`ray` extra; `make test` installs it).
"""

from __future__ import annotations

import contextlib
import csv
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from app.main import build_app  # noqa: E402 - after the skip: these need nothing from ray
from app.settings import ServiceSettings  # noqa: E402
from deploy.ray_serve import RayServeArgs, build_application  # noqa: E402
from deploy.reply import REPLICA_HEADER  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "news_qa.csv"


@contextlib.contextmanager
def deadline(seconds: int, what: str) -> Iterator[None]:
    """Raise TimeoutError in the test (the main thread) if the block runs longer than `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Service settings for both the Ray app and the single-process reference (no jobs folder shared)."""
    return {
        "model": str(tiny_model_dir),
        "adapters_dir": str(tiny_adapters_dir),
        "cache_dir": str(tmp_path_factory.mktemp("ray-cache")),
        "default_max_new_tokens": 6,
        "max_context_chars": 2_000,
        "max_beams_limit": 4,
        "max_new_tokens_limit": 16,
        "max_candidates_limit": 40,
        "batch_sync_max_rows": 4,
        "batch_chunk_size": 2,
        "log_level": "warning",
    }


@pytest.fixture(scope="module")
def reference(settings: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The single-process service on the same settings."""
    own = {
        **settings,
        "jobs_dir": str(tmp_path_factory.mktemp("reference-jobs")),
        "load_in_background": False,
    }
    with TestClient(build_app(ServiceSettings(**own))) as client:
        yield client


@pytest.fixture(scope="module")
def ray_app(settings: dict) -> Iterator[httpx.Client]:
    """The Ray Serve app with two model replicas, behind Serve's HTTP proxy on a free loopback port."""
    port = free_port()
    app = build_application(
        RayServeArgs(settings=settings, batch_chunks_per_part=1, batch_parts_in_flight=4),
        model_options={"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}},
        ingress_options={"ray_actor_options": {"num_cpus": 0}},
    )
    try:
        with deadline(150, "starting Ray and the app"):
            ray.init(
                num_cpus=2,
                object_store_memory=200 * 1024**2,
                include_dashboard=False,
                log_to_driver=False,
                # The workers import this checkout's packages, whatever the environment's editable install is.
                runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
            )
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(app, name="qa", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        with deadline(60, "stopping Ray"):
            serve.shutdown()
            ray.shutdown()


CONTEXT = "서울시는 27일 한강공원 12곳에 공공 자전거 대여소 120개를 새로 설치한다고 밝혔다."
QUESTION = "서울시가 새로 설치하는 대여소는 몇 개인가?"
REQUESTS: list[dict[str, Any]] = [
    {"context": CONTEXT, "question": QUESTION},  # the default ensemble: every adapter
    {"context": CONTEXT, "question": QUESTION, "adapters": ["alpha"], "explain": True},
    {"context": CONTEXT, "question": "대여소는 어디에 설치되나?", "adapters": ["beta", "base"]},
    {
        "context": CONTEXT,
        "question": QUESTION,
        "adapters": ["gamma", "alpha"],
        "prompts": ["zero-shot", "few-shot"],
        "decoding": {"strategy": "greedy", "max_new_tokens": 4},
        "explain": True,
    },
    {"context": CONTEXT, "question": QUESTION, "adapters": ["base"], "decoding": {"num_beams": 2}},
]


def test_two_replicas_answer_as_the_single_process_service(
    comparable: Callable[[Any], Any], ray_app: httpx.Client, reference: TestClient
) -> None:
    with deadline(120, "answering"):
        assert ray_app.get("/readyz").json()["status"] == "ready"
        assert ray_app.get("/adapters").json() == reference.get("/adapters").json()
        first: list[str] = []
        for body in REQUESTS:
            response = ray_app.post("/answer", json=body)
            assert response.status_code == 200, response.text
            assert comparable(response.json()) == comparable(reference.post("/answer", json=body).json()), (
                body
            )
            first.append(response.headers[REPLICA_HEADER])
            time.sleep(
                1.0
            )  # lets the replica's new adapter set reach the router (Serve pushes it every 0.1 s)
        assert len(set(first)) == 2, f"one replica answered everything: {first}"

        # Each adapter set was loaded by one replica; multiplexing sends its requests there again.
        again = []
        for body in REQUESTS:
            response = ray_app.post("/answer", json=body)
            assert comparable(response.json()) == comparable(reference.post("/answer", json=body).json())
            again.append(response.headers[REPLICA_HEADER])
        assert again == first


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/answer", {"json": {"context": CONTEXT}}),  # no question: 422 validation_error
        ("/answer", {"json": {"context": CONTEXT, "question": QUESTION, "adapters": ["nope"]}}),  # 422
        ("/answer", {"json": {"context": CONTEXT, "question": QUESTION, "prompts": ["nope"]}}),  # 422
        (
            "/answer",
            {"json": {"context": CONTEXT, "question": QUESTION, "decoding": {"num_beams": 9}}},
        ),  # 422
        ("/answer", {"json": {"context": "가" * 2_001, "question": QUESTION}}),  # 413, naming context
        ("/answer", {"content": b"{not json", "headers": {"content-type": "application/json"}}),  # 422
        ("/answer", {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}),  # 400
        ("/batch", {"json": {"rows": [{"id": "a", "context": CONTEXT}]}}),  # 422 naming row and field
        ("/batch", {"json": {"rows": [{"id": "a", "context": CONTEXT, "question": "?"}], "adapters": ["x"]}}),
        ("/batch", {"content": b"id,context", "headers": {"content-type": "text/csv"}}),  # 415
        ("/batch/nope", {}),  # 404 unknown job (GET)
    ],
)
def test_bad_input_gets_the_same_4xx_json(
    ray_app: httpx.Client, reference: TestClient, path: str, kwargs: dict
) -> None:
    with deadline(60, "bad input"):
        method = "GET" if path.startswith("/batch/") else "POST"
        got = ray_app.request(method, path, **kwargs)
        want = reference.request(method, path, **kwargs)
    assert 400 <= got.status_code < 500
    assert (got.status_code, got.json()) == (want.status_code, want.json())
    assert set(got.json()) == {"error", "error_type", "detail"}


def rows(n: int) -> list[dict[str, str]]:
    with FIXTURE.open(encoding="utf-8") as f:
        fixture = list(csv.DictReader(f))
    return [{**fixture[i % len(fixture)], "id": f"row-{i}"} for i in range(n)]


def wait_done(client: httpx.Client | TestClient, job_id: str) -> dict:
    while (status := client.get(f"/batch/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(0.2)
    assert status["status"] == "done", status
    return client.get(f"/batch/{job_id}/result").json()  # type: ignore[no-any-return]


def test_batches_inline_and_as_a_job_spread_over_replicas(
    comparable: Callable[[Any], Any], ray_app: httpx.Client, reference: TestClient
) -> None:
    with deadline(150, "batches"):
        small = {"rows": rows(3), "adapters": ["alpha", "beta"]}
        got = ray_app.post("/batch", json=small)
        assert got.status_code == 200, got.text
        assert comparable(got.json()) == comparable(reference.post("/batch", json=small).json())

        large = {
            "rows": rows(9),
            "decoding": {"strategy": "greedy"},
        }  # 9 rows > 4: a job of 5 parts of 2 rows
        accepted = ray_app.post("/batch", json=large)
        assert accepted.status_code == 202, accepted.text
        assert accepted.headers["location"] == f"/batch/{accepted.json()['job_id']}"
        result = wait_done(ray_app, accepted.json()["job_id"])
        want = wait_done(reference, reference.post("/batch", json=large).json()["job_id"])
        assert [row["id"] for row in result["rows"]] == [f"row-{i}" for i in range(9)]
        assert comparable(result) == comparable(want)
        assert result["scores"] is not None and result["failed_rows"] == 0

        csv_text = ray_app.get(f"/batch/{accepted.json()['job_id']}/result", params={"format": "csv"}).text
        assert csv_text.splitlines()[0] == "id,answer" and len(csv_text.splitlines()) == 10
