"""Prometheus metrics: `GET /metrics` in the text exposition format, through `prometheus_client`.

Three sources, so nothing is counted twice and nothing is stale:
- `MetricsMiddleware` (pure ASGI) counts requests and observes latency by route template, method and status;
- the service reports what only it sees as it happens: each generation pass of the micro-batcher
  (`observe_batch`: questions per pass, queue wait, duration) and each answer's vote (`observe_vote`:
  candidates, confidence, per-adapter agreement with the winning answer);
- a collector reads live state at scrape time: admission queue and running requests, micro-batcher queue,
  resident adapters, the generator's token and time totals (tokens/s is `rate()` of the two), and on CUDA the
  accelerator memory allocated, reserved and peak.
Each app owns its own `CollectorRegistry` (no process-global state), so tests can build many apps. The route
label is the route's path template (`/batch/{job_id}`), never the raw path, so ids do not explode the series;
a path no route matches is `unmatched` and a method outside HTTP's standard ones `other`, so made-up
requests (each a 404, 405 or 401) cannot grow the series without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.batcher import BatchRecord
from ensemble.vote import Vote

if TYPE_CHECKING:
    from app.admission import Admission
    from app.service import QAService

BASE_LABEL = "base"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
"""Methods that keep their own label; any other is counted as `other`."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The metric objects of one app and the hooks that feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "qa_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "qa_http_request_duration_seconds",
            "HTTP request latency by route and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "qa_batch_size",
            "Questions answered together in one generation pass (micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "qa_batch_queue_wait_seconds",
            "How long the oldest question of a pass waited for it.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "qa_batch_duration_seconds",
            "Duration of a generation pass (generate, clean, vote).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter(
            "qa_batch_failures",
            "Passes that failed as a whole; their questions were answered one by one.",
            registry=r,
        )
        self.candidates = Histogram(
            "qa_candidates_per_answer",
            "Candidates voted on per answered question.",
            buckets=(1, 2, 3, 6, 9, 12, 18, 24, 36, 48, 96),
            registry=r,
        )
        self.confidence = Histogram(
            "qa_answer_confidence",
            "Share of the candidate weight behind the winning answer.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.agreement = Histogram(
            "qa_adapter_agreement",
            "Per adapter and answer: share of its weight on the winning answer.",
            ["adapter"],
            buckets=(0.0, 0.25, 0.5, 0.75, 1.0),
            registry=r,
        )
        self._live: Callable[[], Iterator[Any]] | None = None
        r.register(_LiveCollector(self))

    # -- hooks ---------------------------------------------------------------------------------------------
    def observe_batch(self, record: BatchRecord) -> None:
        self.batch_size.observe(record.size)
        self.batch_wait.observe(record.waited_ms / 1000)
        self.batch_seconds.observe(record.seconds)
        if record.failed:
            self.batch_failures.inc()

    def observe_vote(self, vote: Vote) -> None:
        self.candidates.observe(len(vote.candidates))
        self.confidence.observe(vote.confidence)
        for adapter, share in vote.adapter_agreement.items():
            self.agreement.labels(adapter or BASE_LABEL).observe(share)

    def bind(self, service: QAService, admission: Admission) -> None:
        """What the scrape-time collector reads (set in the lifespan, once both exist)."""
        self._live = lambda: _live_metrics(service, admission)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        if self.metrics._live is not None:
            yield from self.metrics._live()

    def describe(self) -> Iterator[Any]:
        return iter(())  # values exist only once the service runs; nothing to check at registration


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _live_metrics(service: QAService, admission: Admission) -> Iterator[Any]:
    yield _gauge("qa_ready", "1 when the model is loaded and answering.", float(service.status == "ready"))
    yield _gauge("qa_requests_running", "Answer requests admitted and not finished.", admission.running)
    yield _gauge("qa_requests_queued", "Answer requests waiting for admission.", admission.waiting)
    batcher = service.batcher
    yield _gauge(
        "qa_batch_queue_depth", "Questions waiting for a generation pass.", batcher.waiting if batcher else 0
    )
    if service.status != "ready":
        return
    generator = service.engine().generator
    resident = GaugeMetricFamily(
        "qa_adapter_resident", "1 per adapter resident on the model.", labels=["adapter"]
    )
    for name in generator.resident_adapters:
        resident.add_metric([name], 1)
    yield resident
    faulty = GaugeMetricFamily(
        "qa_adapter_faulty", "1 per adapter taken out of service because its rows failed.", labels=["adapter"]
    )
    for name in generator.faulty_adapters:
        faulty.add_metric([name], 1)
    yield faulty
    yield _gauge("qa_adapters_served", "Adapters requests may name.", len(generator.adapter_names))
    stats = generator.stats
    for name, doc, value in (
        ("qa_generated_tokens", "Tokens generated (to each sequence's stop).", stats.new_tokens),
        ("qa_generated_sequences", "Output sequences generated.", stats.sequences),
        ("qa_generate_calls", "Batched generate calls.", stats.calls),
        (
            "qa_generate_seconds",
            "Seconds spent in generate calls; tokens/s = rate(tokens) / rate(seconds).",
            stats.seconds,
        ),
    ):
        yield CounterMetricFamily(name, doc, value=value)
    yield from _accelerator_memory(generator.device)


def _accelerator_memory(device: str) -> Iterator[Any]:
    if not device.startswith("cuda"):
        return
    import torch

    index = torch.device(device).index or 0
    for name, doc, value in (
        (
            "qa_gpu_memory_allocated_bytes",
            "Accelerator memory held by tensors.",
            torch.cuda.memory_allocated(index),
        ),
        (
            "qa_gpu_memory_reserved_bytes",
            "Accelerator memory reserved by the allocator.",
            torch.cuda.memory_reserved(index),
        ),
        (
            "qa_gpu_memory_peak_bytes",
            "Peak accelerator memory held by tensors.",
            torch.cuda.max_memory_allocated(index),
        ),
    ):
        yield _gauge(name, doc, value)


class MetricsMiddleware:
    """Counts every request and observes its latency; the route label is the matched path template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - started)


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format."""
    service_metrics: ServiceMetrics = request.app.state.metrics
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
