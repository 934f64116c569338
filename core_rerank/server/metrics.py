"""Prometheus metrics of one app, in a registry of its own (several apps in one process never share counters).

Names (all prefixed ``core_rerank_``): ``requests_total{endpoint,status}``, ``request_failures_total{endpoint,
reason}`` (reason = the answer's ``error_type``), ``queue_depth`` and ``requests_running`` (gauges read at scrape
time), ``queue_duration_seconds``, ``inference_duration_seconds`` and ``request_duration_seconds{endpoint}``
(histograms), ``batch_size`` (requests each run on a worker answered: 1 alone, more for requests sharing their
documents), ``documents_total`` and ``document_tokens_total`` (documents and their tokens scored),
``model_ready`` (0 while loading) and ``model_info`` (model, heads, dtype, device); the document KV cache of
``attention="block"`` (read from the cache at scrape time): ``kv_cache_hits_total``, ``kv_cache_misses_total``,
``kv_cache_evictions_total`` (counters), ``kv_cache_entries``, ``kv_cache_bytes`` and ``kv_cache_capacity_bytes``
(gauges).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..kv_cache import KVCacheStats

__all__ = ["CONTENT_TYPE_LATEST", "ENDPOINTS", "Metrics"]

ENDPOINTS = ("/rerank", "/v1/rerank", "/v2/rerank", "/health", "/info", "/metrics")
"""Paths with a label of their own; any other path is counted as ``other`` (labels stay few)."""

# Seconds: a forward pass of a 20-document list takes ~0.1 s on a GPU and 1-5 s on a small CPU.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class KVCacheCollector(Collector):
    """The document KV cache's own counters, read when scraped (zeros before the model is loaded)."""

    def __init__(self, stats: Callable[[], KVCacheStats | None]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats() or KVCacheStats(0, 0, 0, 0, 0, 0)
        for name, doc, value in (
            ("hits", "Block-attention documents whose keys and values came from the cache", s.hits),
            ("misses", "Block-attention documents encoded because the cache did not hold them", s.misses),
            ("evictions", "Documents dropped from the KV cache to stay within kv_cache_mb", s.evictions),
        ):
            yield CounterMetricFamily(f"core_rerank_kv_cache_{name}", doc, value=value)
        for name, doc, value in (
            ("entries", "Documents the KV cache holds", s.entries),
            ("bytes", "Bytes of keys and values the KV cache holds", s.bytes),
            ("capacity_bytes", "Most bytes the KV cache may hold (kv_cache_mb)", s.capacity_bytes),
        ):
            yield GaugeMetricFamily(f"core_rerank_kv_cache_{name}", doc, value=value)


class Metrics:
    """The app's collectors; ``render()`` gives the Prometheus text exposition."""

    def __init__(
        self,
        queue_depth: Callable[[], float],
        running: Callable[[], float],
        kv_cache: Callable[[], KVCacheStats | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        ProcessCollector(registry=reg)
        reg.register(KVCacheCollector(kv_cache))
        self.requests = Counter(
            "core_rerank_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=reg,
        )
        self.failures = Counter(
            "core_rerank_request_failures",
            "Requests answered with an error, by endpoint and error_type",
            ["endpoint", "reason"],
            registry=reg,
        )
        Gauge("core_rerank_queue_depth", "Requests waiting for a worker", registry=reg).set_function(queue_depth)
        Gauge("core_rerank_requests_running", "Requests being scored", registry=reg).set_function(running)
        self.queue_time = Histogram(
            "core_rerank_queue_duration_seconds",
            "Time admitted requests waited for a worker",
            buckets=_BUCKETS,
            registry=reg,
        )
        self.inference_time = Histogram(
            "core_rerank_inference_duration_seconds",
            "Time scoring a request took on its worker",
            buckets=_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "core_rerank_batch_size",
            "Requests each run on a worker answered (1: alone; more: requests sharing their documents, batched)",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.request_time = Histogram(
            "core_rerank_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.documents = Counter("core_rerank_documents", "Documents scored", registry=reg)
        self.tokens = Counter(
            "core_rerank_document_tokens", "Document tokens scored (after per-document truncation)", registry=reg
        )
        self.ready = Gauge("core_rerank_model_ready", "1 once the model is loaded and serving", registry=reg)
        self.model = Info("core_rerank_model", "The model this process serves", registry=reg)

    @staticmethod
    def endpoint(path: str) -> str:
        return path if path in ENDPOINTS else "other"

    def observe_request(self, path: str, status: int, seconds: float, error_type: str | None) -> None:
        endpoint = self.endpoint(path)
        self.requests.labels(endpoint, str(status)).inc()
        self.request_time.labels(endpoint).observe(seconds)
        if error_type is not None:
            self.failures.labels(endpoint, error_type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
