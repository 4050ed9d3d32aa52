"""HTTP latency and throughput of a real `qa-serve` process (issue 5): POST /answer at several concurrencies.

    python -m bench.http_latency --model qwen2.5-coder-0.5b --cache-dir /tmp/cache [--adapters-dir adapters]
        [--random-init CONFIG_DIR] [--concurrency 1,8,32] [--requests 64] [--kinds ensemble,greedy]
        [--new-tokens 24] [--server-env QA_MAX_BATCH_SIZE=16 ...] [--out DIR]
    python -m bench.http_latency --smoke       # tiny random model on the CPU, a few requests

It starts the server as the service runs (bench/qa_server.py: `python -m app.cli`, QA_* variables) on a free
loopback port, waits for /readyz, then for each request kind and concurrency sends --warmup unmeasured
rounds of that many concurrent requests (other questions than the measured ones: the micro-batch shapes of
that load are made first) and then up to --requests requests from that many concurrent clients (httpx,
asyncio; none starts after --cell-seconds), each a KorQuAD eval question. Per cell: client latency
p50/p95/p99, answered requests/s, the server's own `elapsed_ms` (pipeline and vote, without HTTP and
admission), every non-200 status, and from /metrics (when served) the generation passes, questions per
pass (micro-batching), new tokens per sequence and the peak accelerator memory. Request kinds:
  ensemble: every served adapter x --prompts (zero-shot, principled) x 3 beams (all beam outputs voted);
  greedy:   one member (the first adapter, or --greedy-member base), the first prompt, greedy decoding.
The server's queue is sized so no request is refused (QA_MAX_QUEUE, QA_REQUEST_TIMEOUT_S); everything else is
the server's default unless --server-env sets it (e.g. micro-batching or concurrency limits).
What it does NOT measure: fixed-length generation (the server stops a row at EOS or the end of its first
line, as in service: a real model answers in a few tokens, random weights run longer), /batch, a network
beyond loopback, and memory per adapter (bench/serving_speed.py measures memory and the pipeline without
HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.qa_server import Server, cpu_delta, metrics_delta, scrape
from bench.workload import (
    add_base_args,
    default_out,
    environment,
    load_questions,
    make_lora_adapters,
    markdown_table,
    median,
    percentile,
    resolve_base,
    write_json,
)
from ensemble.datasets import QAExample

logger = logging.getLogger(__name__)
SMOKE = {
    "model": "tiny-random",
    "device": "cpu",
    "concurrency": "1,2",
    "requests": 2,
    "warmup": 1,
    "new_tokens": 2,
    "questions": 2,
    "n_adapters": 2,
    "lora_r": 4,
    "lora_alpha": 8,
    "ready_timeout": 180.0,
    "cell_seconds": 0.0,
}
"""--smoke: the tiny random model on the CPU, a few requests per cell, seconds."""


def request_body(
    kind: str,
    example: QAExample,
    *,
    adapters: list[str],
    prompts: list[str],
    greedy_member: str | None,
    new_tokens: int,
) -> dict[str, Any]:
    """The JSON of one POST /answer of `kind` (the greedy kind uses the first prompt only)."""
    body: dict[str, Any] = {"context": example.context, "question": example.question}
    if kind == "ensemble":
        body |= {
            "adapters": adapters or ["base"],
            "prompts": prompts,
            "decoding": {"strategy": "beam", "num_beams": 3, "max_new_tokens": new_tokens},
        }
    elif kind == "greedy":
        member = greedy_member or (adapters[0] if adapters else "base")
        body |= {
            "adapters": [member],
            "prompts": prompts[:1],
            "decoding": {"strategy": "greedy", "max_new_tokens": new_tokens},
        }
    else:
        raise ValueError(f"unknown request kind {kind!r}; known: ensemble, greedy")
    return body


async def run_cell(
    url: str, bodies: list[dict[str, Any]], concurrency: int, max_seconds: float | None = None
) -> dict[str, Any]:
    """Send the bodies with `concurrency` clients at once, none started after `max_seconds`; latencies of the
    200s, statuses of all."""
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: Counter[str] = Counter()
    next_index = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient, deadline: float | None) -> None:
        for i in next_index:  # shared iterator: each body is sent once, by whichever client is free
            if deadline is not None and time.perf_counter() > deadline:
                break
            started = time.perf_counter()
            try:
                response = await http.post("/answer", json=bodies[i])
            except httpx.HTTPError as exc:
                statuses[f"error:{type(exc).__name__}"] += 1
                continue
            elapsed = time.perf_counter() - started
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                latencies.append(elapsed)
                if isinstance(ms := response.json().get("elapsed_ms"), int | float):
                    server_ms.append(float(ms))

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(900.0), limits=limits) as http:
        started = time.perf_counter()
        deadline = started + max_seconds if max_seconds else None
        await asyncio.gather(*(client(http, deadline) for _ in range(concurrency)))
        wall = time.perf_counter() - started

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1000 * value, 1)

    return {
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "planned": len(bodies),
        "ok": len(latencies),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3) if wall > 0 else None,
        "latency_ms": {
            "p50": ms(percentile(latencies, 50)),
            "p95": ms(percentile(latencies, 95)),
            "p99": ms(percentile(latencies, 99)),
            "mean": ms(sum(latencies) / len(latencies)) if latencies else None,
        },
        "server_elapsed_ms": {"p50": median(server_ms), "p95": percentile(server_ms, 95)},
        "statuses": dict(sorted(statuses.items())),
    }


def measure(
    server: Server,
    questions: list[QAExample],
    adapters: list[str],
    args: argparse.Namespace,
    kinds: list[str],
    concurrencies: list[int],
) -> list[dict[str, Any]]:
    """Every kind x concurrency cell against the running server: a warm-up, then the measured requests."""
    cells = []
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    for kind in kinds:

        def body(i: int, kind: str = kind) -> dict[str, Any]:
            return request_body(
                kind,
                questions[i % len(questions)],
                adapters=adapters,
                prompts=prompts,
                greedy_member=args.greedy_member,
                new_tokens=args.new_tokens,
            )

        bodies = [body(i) for i in range(args.requests)]
        for concurrency in concurrencies:
            # --warmup rounds at the cell's concurrency, of the questions after the measured ones: the
            # micro-batch sizes this load forms have met the server (its decode shapes are made) first
            rounds = max(args.warmup, 0) * concurrency
            warmup = [body(args.requests + i) for i in range(rounds)]
            if warmup:
                asyncio.run(run_cell(server.url, warmup, concurrency))
            before, cpu_before = scrape(server.url), server.thread_cpu_seconds()
            cell = asyncio.run(run_cell(server.url, bodies, concurrency, args.cell_seconds))
            cell["server_cpu"] = cpu_delta(cpu_before, server.thread_cpu_seconds(), cell["seconds"])
            cell["server_metrics"] = metrics_delta(before, scrape(server.url))
            logger.info(
                "%s x %d: %s req/s, p50 %s ms",
                kind,
                concurrency,
                cell["requests_per_s"],
                cell["latency_ms"]["p50"],
            )
            cells.append({"kind": kind, **cell})
    return cells


def table(report: dict[str, Any]) -> str:
    rows = [
        (
            c["kind"],
            c["concurrency"],
            c["requests"],
            c["ok"],
            c["requests_per_s"],
            c["latency_ms"]["p50"],
            c["latency_ms"]["p95"],
            c["latency_ms"]["p99"],
            c["server_elapsed_ms"]["p50"],
            (c["server_metrics"] or {}).get("questions_per_pass"),
            (c["server_metrics"] or {}).get("tokens_per_sequence"),
            ", ".join(f"{k}: {v}" for k, v in c["statuses"].items() if k != "200") or None,
        )
        for c in report["cells"]
    ]
    env, server = report["environment"], report["server"]
    return (
        f"POST /answer on {env['card']} (server device {server['device']}), model {report['model']}, "
        f"adapters {', '.join(server['adapters']) or 'none'}, {report['new_tokens']} new tokens at most, "
        f"ready in {server['ready_seconds']} s, {env['date']}\n\n"
        + markdown_table(
            (
                "kind",
                "concurrency",
                "requests",
                "ok",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "server p50 ms",
                "questions/pass",
                "tokens/seq",
                "other statuses",
            ),
            rows,
        )
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_base_args(parser)
    parser.add_argument("--adapters-dir", type=Path, help="QA_ADAPTERS_DIR (default: --n-adapters random)")
    parser.add_argument("--n-adapters", type=int, default=3, help="random adapters when no --adapters-dir")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--quantization", default="auto", choices=("auto", "4bit", "none"))
    parser.add_argument("--split", default="eval", choices=("eval", "train", "all"))
    parser.add_argument("--questions", type=int, default=64, help="distinct questions, cycled")
    parser.add_argument("--kinds", default="ensemble,greedy")
    parser.add_argument(
        "--prompts", default="zero-shot,principled", help="the ensemble's (greedy: the first)"
    )
    parser.add_argument("--greedy-member", help="adapter (or 'base') of the greedy kind; default: the first")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per cell, at most")
    parser.add_argument(
        "--cell-seconds", type=float, default=12.0, help="no request starts later in a cell (0: no limit)"
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="unmeasured rounds of `concurrency` requests before each cell"
    )
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--server-env", action="append", default=[], metavar="QA_NAME=VALUE")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--server-log", type=Path, help="keep the server's log there (default: dropped)")
    parser.add_argument("--out", type=Path, help="default: bench/results/<date>-http-latency/")
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the CPU, a few requests")
    args = parser.parse_args(argv)
    if args.smoke:  # smoke defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:  # progress on stderr when run as a script
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    extra = dict(item.split("=", 1) for item in args.server_env)
    if any(not key.startswith("QA_") for key in extra):
        raise SystemExit("--server-env takes QA_NAME=VALUE pairs")
    out = args.out or default_out("http-latency")
    started_at = datetime.now(UTC)
    questions = load_questions(args.data, split=args.split, count=args.questions)
    log_file = args.server_log.open("w+b") if args.server_log else tempfile.TemporaryFile()
    with tempfile.TemporaryDirectory(prefix="http-latency-") as tmp, log_file as log:
        scratch = Path(tmp)
        cache = scratch / "cache" if args.smoke else args.cache_dir
        init_device = "cuda" if args.device != "cpu" and _cuda() else "cpu"
        base = resolve_base(args.model, args.random_init, scratch, cache, device=init_device)
        adapters_dir = args.adapters_dir
        if adapters_dir is None and args.n_adapters > 0:
            adapters_dir = scratch / "adapters"
            names = [f"bench-lora-{i:02d}" for i in range(1, args.n_adapters + 1)]
            make_lora_adapters(base, adapters_dir, names, r=args.lora_r, alpha=args.lora_alpha)
        env = {
            "QA_MODEL": args.model if args.random_init is None else str(base.path),
            "QA_CACHE_DIR": str(cache),
            "QA_JOBS_DIR": str(scratch / "jobs"),
            "QA_DEVICE": args.device,
            "QA_QUANTIZATION": args.quantization,
            "QA_LOAD_IN_BACKGROUND": "true",
            "QA_LOG_LEVEL": "warning",
            "QA_MAX_QUEUE": str(max(64, 2 * max(concurrencies))),
            "QA_REQUEST_TIMEOUT_S": "900",
            "QA_MAX_NEW_TOKENS_LIMIT": str(max(128, args.new_tokens)),
            **({"QA_ADAPTERS_DIR": str(adapters_dir)} if adapters_dir is not None else {}),
            **extra,
        }
        started = time.perf_counter()
        server = Server(env, log)
        logger.info("qa-serve starting on %s (model %s)", server.url, env["QA_MODEL"])
        try:
            ready = server.wait_ready(args.ready_timeout)
            ready_s = time.perf_counter() - started
            logger.info("qa-serve ready in %.1f s on %s", ready_s, ready.get("device"))
            adapters = list(ready.get("adapters") or [])
            cells = measure(server, questions, adapters, args, kinds, concurrencies)
        except BaseException:
            sys.stderr.write(server.tail())
            raise
        finally:
            exit_code = server.stop()
    report = {
        "environment": environment(
            "cuda" if str(ready.get("device", "")).startswith("cuda") else "cpu", started_at
        ),
        "model": args.model if args.random_init is None else f"random init of {args.random_init}",
        "base_key": base.key,
        "data": {"path": str(args.data), "split": args.split, "questions": len(questions)},
        "new_tokens": args.new_tokens,
        "settings": {
            "kinds": kinds,
            "concurrency": concurrencies,
            "requests": args.requests,
            "cell_seconds": args.cell_seconds,
            "warmup": args.warmup,
            "prompts": args.prompts,
            "greedy_member": args.greedy_member,
        },
        "server": {
            "device": ready.get("device"),
            "adapters": adapters,
            "ready_seconds": round(ready_s, 1),
            "exit_code": exit_code,
            "env": {k: v for k, v in env.items() if "KEY" not in k},
        },
        "cells": cells,
    }
    text = table(report)
    write_json(out / "http_latency.json", report)
    (out / "http_latency.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text + f"wrote {out / 'http_latency.json'}\n")
    return 0 if all(c["ok"] == c["requests"] for c in cells) else 1


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    raise SystemExit(main())
