"""Prometheus metrics: requests, latency per pipeline step, intents (what the gate saves)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import DOMAINS
from ..results import SearchResult
from .guard import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Catalogue(Collector):
    """Products and images per domain, read from the store at scrape time."""

    def __init__(self, counts: Callable[[], tuple[int, dict[str, int]]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        products, images = self.counts()
        yield GaugeMetricFamily("shoplens_products", "Products in the catalogue", value=products)
        g = GaugeMetricFamily("shoplens_images", "Indexed product images per domain", labels=["domain"])
        for domain, n in images.items():
            g.add_metric([domain], n)
        yield g


class Metrics:
    """The server's metrics, in a registry of its own (several apps may live in one process)."""

    def __init__(self, counts: Callable[[], tuple[int, dict[str, int]]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shoplens_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r)
        self.latency = Histogram("shoplens_http_request_duration_seconds", "HTTP request latency", ["method", "route"], buckets=_LATENCY, registry=r)
        self.steps = Histogram("shoplens_search_step_seconds", "Time of each pipeline step of a search (timings_ms)", ["step"], buckets=_LATENCY, registry=r)
        self.searches = Counter(
            "shoplens_searches", "Searches by intent: non_product ones stop after the intent step (no detection, embedding or index search)", ["intent"], registry=r
        )
        self.search_time = Histogram("shoplens_search_duration_seconds", "Pipeline time of a search by intent (what the gate saves)", ["intent"], buckets=_LATENCY, registry=r)
        self.regions = Counter("shoplens_search_regions", "Regions searched in the index (garments, or whole photos)", ["domain"], registry=r)
        self.writes = Counter("shoplens_catalogue_writes", "Catalogue writes by operation", ["op"], registry=r)
        self.bad_images = Counter("shoplens_bad_images", "Uploaded photos refused as unreadable or too large", registry=r)
        r.register(_Catalogue(counts))
        for intent in ("apparel", "other_product", "non_product"):
            self.searches.labels(intent)  # present at 0 from the start
        for domain in DOMAINS:
            self.regions.labels(domain)

    def observe_search(self, result: SearchResult) -> None:
        self.searches.labels(result.intent).inc()
        self.search_time.labels(result.intent).observe(result.timings_ms.get("total", 0.0) / 1000.0)
        for step, ms in result.timings_ms.items():
            if step != "total":
                self.steps.labels(step).observe(ms / 1000.0)
        if result.regions:
            self.regions.labels(result.intent).inc(len(result.regions))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every response (those of the guard too) under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = self.route_of(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
