"""Prometheus metrics, one registry per application (so tests and reloads never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets for a service whose answers take from tens of µs to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every metric the service exports, registered on its own ``CollectorRegistry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "timbral_requests", "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"), registry=r)
        self.duration = Histogram(
            "timbral_request_duration_seconds", "Time to answer an HTTP request, by route.",
            ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("timbral_requests_in_flight", "Requests being answered now.",
                               registry=r)
        self.cache_hits = Counter("timbral_cache_hits", "Recommendation cache hits, by tier.",
                                  ("tier",), registry=r)
        self.cache_misses = Counter("timbral_cache_misses", "Recommendation cache misses, by tier.",
                                    ("tier",), registry=r)
        self.cache_hit_rate = Gauge(
            "timbral_cache_hit_rate",
            "Share of cacheable recommendation requests answered from any cache tier since start.",
            registry=r)
        self.cache_hit_rate.set_function(self._hit_rate)
        self.active_models = Gauge("timbral_active_models",
                                   "Models loaded in memory (2 while a reload swaps).", registry=r)
        self.model_reloads = Counter("timbral_model_reloads", "Model reload attempts, by outcome.",
                                     ("outcome",), registry=r)
        self.redis_errors = Counter("timbral_redis_errors",
                                    "Redis calls that failed or timed out, by operation.",
                                    ("operation",), registry=r)
        self.redis_breaker_open = Gauge(
            "timbral_redis_circuit_open", "1 while Redis is skipped after repeated failures.",
            registry=r)
        self.scoring_seconds = Histogram(
            "timbral_scoring_seconds", "Time spent scoring in the executor, by operation.",
            ("operation",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "timbral_scoring_batch_size", "Single-user requests scored together (micro-batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self._batch_scoring = self.scoring_seconds.labels("recommend")
        # Label lookups cost more than the increments; keep the children.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.hits_by_tier = {tier: self.cache_hits.labels(tier) for tier in ("1", "2")}
        self.misses_by_tier = {tier: self.cache_misses.labels(tier) for tier in ("1", "2")}
        self._lookups = 0
        self._hits = 0

    def _hit_rate(self) -> float:
        return self._hits / self._lookups if self._lookups else 0.0

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.duration.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def cache_lookup(self, hit_tier: str | None, tiers_missed: tuple[str, ...]) -> None:
        """Count one cacheable request: the tiers it missed and the tier it hit, if any."""
        self._lookups += 1
        for tier in tiers_missed:
            self.misses_by_tier[tier].inc()
        if hit_tier is not None:
            self._hits += 1
            self.hits_by_tier[hit_tier].inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self._batch_scoring.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

