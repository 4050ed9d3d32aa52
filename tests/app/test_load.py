"""Load: 32 concurrent clients hammer a real `qa-serve` process (tiny model) for LOAD_SECONDS.

Every request must get an HTTP answer (none lost); the only statuses allowed are 200, 429 (queue full, with
Retry-After), 503/504 (documented refusals) and, for the one in ten requests that is deliberately invalid,
422. The server's resident memory may not grow by more than RSS_GROWTH_MB between the middle and the end.
Runs by default (marker `load`; about LOAD_SECONDS + 15 s). The counts are printed and, with
QA_WRITE_BENCH=1, written to bench/results/reliability-load.json (the numbers in docs/reliability.md).
"""

import asyncio
import json
import os
import platform
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

CLIENTS = 32
LOAD_SECONDS = float(os.environ.get("QA_LOAD_SECONDS", "30"))
RSS_GROWTH_MB = 64
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability-load.json"
CONTEXTS = [
    (
        "서울시는 27일 한강공원 12곳에 공공 자전거 대여소 120개를 새로 설치한다고 밝혔다.",
        "대여소는 몇 개인가?",
    ),
    ("한국은행은 기준금리를 연 3.5%로 동결했다. 물가 상승률은 2%대다.", "기준금리는?"),
    ("Apple의 CEO 팀 쿡 🍎 said 東京 is next.", "CEO는?"),
    ("회의는 오후 3시에 본관 2층에서 열린다.", "회의는 어디서?"),
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def client_loop(
    http: httpx.AsyncClient, n: int, stop_at: float, counts: Counter, latencies: list
) -> None:
    i = 0
    while time.monotonic() < stop_at:
        i += 1
        context, question = CONTEXTS[(n + i) % len(CONTEXTS)]
        invalid = (n + i) % 10 == 0
        body = {"context": context, "question": question if not invalid else 42}
        counts["tried"] += 1
        started = time.monotonic()
        try:
            response = await http.post("/answer", json=body)
        except httpx.HTTPError as exc:
            counts["lost"] += 1
            counts[f"lost:{type(exc).__name__}"] += 1
            continue
        status = response.status_code
        if invalid:
            counts["invalid_422" if status == 422 else f"unexpected:{status}"] += 1
        elif status == 200:
            counts["answered"] += 1
            latencies.append(time.monotonic() - started)
        elif status == 429:
            counts["refused_429"] += 1
            assert response.headers.get("retry-after", "").isdigit()
            await asyncio.sleep(min(float(response.headers["retry-after"]), 0.5))  # impatient clients
        elif status in (503, 504):
            counts[f"refused_{status}"] += 1
        else:
            counts[f"unexpected:{status}"] += 1


async def run_load(base_url: str, pid: int) -> tuple[Counter, list[float], dict[str, float]]:
    counts: Counter = Counter()
    latencies: list[float] = []
    rss: dict[str, float] = {"start": rss_mb(pid)}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        stop_at = time.monotonic() + LOAD_SECONDS
        loops = [
            asyncio.create_task(client_loop(http, n, stop_at, counts, latencies)) for n in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_SECONDS / 2)
        rss["middle"] = rss_mb(pid)
        health = await http.get("/healthz")  # the process stays responsive under load
        assert health.status_code == 200
        await asyncio.gather(*loops)
        rss["end"] = rss_mb(pid)
    return counts, latencies, rss


@pytest.mark.load
def test_32_clients_nothing_lost_no_unexpected_errors_bounded_memory(start_server, tiny_server_env, tmp_path):
    env = {
        **tiny_server_env,
        "QA_CACHE_DIR": str(tmp_path),
        "QA_DEFAULT_PROMPTS": "zero-shot",
        "QA_MAX_CONCURRENT_REQUESTS": "2",
        "QA_MAX_QUEUE": "8",
        "QA_REQUEST_TIMEOUT_S": "20",
    }
    server = start_server(env)
    counts, latencies, rss = asyncio.run(run_load(server.base_url, server.proc.pid))
    answered = counts["answered"]
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
        "model": "tiny-random, 3 adapters, greedy, 4 new tokens, 1 prompt (3 rows per request)",
        "limits": {"max_concurrent_requests": 2, "max_queue": 8, "request_timeout_s": 20},
        "clients": CLIENTS,
        "seconds": LOAD_SECONDS,
        "counts": dict(sorted(counts.items())),
        "answered_per_s": round(answered / LOAD_SECONDS, 1),
        "latency_s": {
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p95": round(statistics.quantiles(latencies, n=20)[-1], 3) if len(latencies) >= 20 else None,
        },
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))  # noqa: T201 - the figures, in the test log
    if os.environ.get("QA_WRITE_BENCH") == "1":
        RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    assert counts["lost"] == 0, counts
    assert not [k for k in counts if k.startswith("unexpected")], counts
    assert answered > 0 and counts["invalid_422"] > 0, counts
    assert counts["tried"] == (
        answered
        + counts["refused_429"]
        + counts["refused_503"]
        + counts["refused_504"]
        + counts["invalid_422"]
    )
    assert rss["end"] - rss["middle"] < RSS_GROWTH_MB, rss
    assert server.client.get("/readyz").status_code == 200
