"""What one more Ray Serve replica adds: the same requests against 1 and 2 model replicas, in one run.

    python -m bench.ray_replicas [--model tiny-random] [--configs 1x1,2x1] [--requests 48] [--concurrency 8]
        [--strategy greedy] [--max-new-tokens 8] [--max-ongoing 2] [--out bench/results]

Starts a local Ray cluster (every CPU of the machine unless --num-cpus) and, for each config `RxC` (R model
replicas of C CPUs each; Ray gives each replica's torch C threads), deploys the application of
`deploy.ray_serve`, warms it up (every adapter set asked for, so each replica loads what it will serve), then
sends the same requests (the fixture's four questions x the adapter sets the app serves: the default
ensemble, each adapter alone, the base) from --concurrency client threads over HTTP and measures the wall
time. Throughput is requests per second; the ratio is each config's throughput over the first config's.
The table is printed; the JSON goes to bench/results/. Run from the repository root.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "news_qa.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random", help="Base model (a key, tiny-random or a folder).")
    parser.add_argument(
        "--configs", default="1x1,2x1", help="Comma-separated REPLICASxCPUS, first = baseline."
    )
    parser.add_argument("--requests", type=int, default=48, help="Requests measured per config.")
    parser.add_argument("--concurrency", type=int, default=8, help="Client threads sending them.")
    parser.add_argument("--strategy", default="greedy", choices=["greedy", "beam"], help="Decoding.")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--max-ongoing", type=int, default=2, help="max_ongoing_requests of a model replica (past it, spill)."
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs Ray may use.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def requests_for(adapters: list[str], n: int) -> list[dict[str, Any]]:
    """n request bodies: the fixture's questions crossed with the adapter sets, round robin."""
    with FIXTURE.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    sets: list[list[str] | None] = [None, *([name] for name in adapters), ["base"]]
    pairs = [(row, members) for members in sets for row in rows]
    out = []
    for i in range(n):
        row, members = pairs[i % len(pairs)]
        body: dict[str, Any] = {"context": row["context"], "question": row["question"]}
        if members is not None:
            body["adapters"] = members
        out.append(body)
    return out


def send_all(client: httpx.Client, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    def one(body: dict[str, Any]) -> tuple[float, str]:
        started = time.perf_counter()
        response = client.post("/answer", json=body)
        response.raise_for_status()
        return time.perf_counter() - started, response.headers["x-replica"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "requests": len(bodies),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(bodies) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "answers_per_replica": sorted(Counter(replica for _, replica in results).values(), reverse=True),
    }


def run_config(args: argparse.Namespace, replicas: int, cpus: int, port: int) -> dict[str, Any]:
    from ray import serve

    from deploy.ray_serve import RayServeArgs, build_application

    settings = {
        "model": args.model,
        "device": "cpu",
        "default_strategy": args.strategy,
        "default_max_new_tokens": args.max_new_tokens,
        "max_queue": 64,
        "request_timeout_s": 600,
        "log_level": "warning",
    }
    app = build_application(
        RayServeArgs(settings=settings),
        model_options={
            "num_replicas": replicas,
            "max_ongoing_requests": args.max_ongoing,
            "ray_actor_options": {"num_cpus": cpus},
        },
        ingress_options={"ray_actor_options": {"num_cpus": 0}},
    )
    started = time.perf_counter()
    serve.run(app, name="bench", route_prefix="/")
    deploy_s = time.perf_counter() - started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            adapters = [a["name"] for a in client.get("/adapters").json()["adapters"]]
            bodies = requests_for(adapters, args.requests)
            send_all(client, requests_for(adapters, 2 * args.concurrency), args.concurrency)  # warm-up
            measured = send_all(client, bodies, args.concurrency)
    finally:
        serve.delete("bench")
    return {
        "config": f"{replicas}x{cpus}",
        "replicas": replicas,
        "cpus_each": cpus,
        "deploy_s": round(deploy_s, 1),
        "adapters": adapters,
        **measured,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| replicas x CPUs | requests | wall s | req/s | ratio | p50 s | p95 s | answers per replica |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['requests']} | {row['wall_s']} | {row['throughput_rps']} | "
            f"{row['ratio']:.2f} | {row['latency_p50_s']} | {row['latency_p95_s']} | "
            f"{', '.join(map(str, row['answers_per_replica']))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ray.init(
        num_cpus=args.num_cpus,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        rows = [run_config(args, replicas, cpus, port) for replicas, cpus in configs]
    finally:
        serve.shutdown()
        ray.shutdown()
    for row in rows:
        row["ratio"] = round(row["throughput_rps"] / rows[0]["throughput_rps"], 3)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "command": "python -m bench.ray_replicas " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "strategy": args.strategy,
        "max_new_tokens": args.max_new_tokens,
        "concurrency": args.concurrency,
        "max_ongoing_requests": args.max_ongoing,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.now(UTC):%Y-%m-%d}-ray-replicas-{Path(args.model).name}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(table(rows) + f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
