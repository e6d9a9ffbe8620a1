"""Prometheus metrics, one registry per application (so tests and reloads never clash).

The per-request series (requests, latency, cache hits and misses) are plain counters
that only the event loop touches, exported by a custom collector when ``/metrics`` is
scraped. prometheus-client's own Counter and Histogram take a lock on every update,
which cost /ping about 12 % of its throughput; everything else uses them as usual.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Latency buckets for a service whose answers take from tens of µs to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _RequestSeries(Collector):
    """Requests by (route, method, status), latency by route, cache hits/misses by tier.

    Updated from the event loop only, without locks; read when scraped (on the loop too).
    A request touches one list, its (route, method, status)'s latency buckets: the
    request counts and each route's histogram are summed from them when scraped.
    """

    def __init__(self) -> None:
        # per (route, method, status): counts per bucket (the last is +Inf), then the sum of seconds
        self.latency: dict[tuple[str, str, int], list[float]] = {}
        self.hits = {"1": 0, "2": 0}
        self.misses = {"1": 0, "2": 0}
        self.in_flight = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        series = self.latency.get(key)
        if series is None:
            series = self.latency[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le is inclusive
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "timbral_requests", "HTTP requests answered, by route, method and status.",
            labels=("route", "method", "status"))
        by_route: dict[str, list[float]] = {}
        for (route, method, status), series in sorted(self.latency.items()):
            requests.add_metric((route, method, str(status)), sum(series[:-1]))
            total = by_route.setdefault(route, [0.0] * len(series))
            total[:] = map(sum, zip(total, series, strict=True))
        yield requests
        latency = HistogramMetricFamily(
            "timbral_request_duration_seconds", "Time to answer an HTTP request, by route.",
            labels=("route",))
        for route, series in by_route.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), series[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric((route,), buckets, series[-1])
        yield latency
        yield GaugeMetricFamily("timbral_requests_in_flight", "Requests being answered now.",
                                value=self.in_flight)
        for name, counts, what in (("timbral_cache_hits", self.hits, "hits"),
                                   ("timbral_cache_misses", self.misses, "misses")):
            family = CounterMetricFamily(name, f"Recommendation cache {what}, by tier.",
                                         labels=("tier",))
            for tier, count in counts.items():
                family.add_metric((tier,), count)
            yield family


class Metrics:
    """Every metric the service exports, registered on its own ``CollectorRegistry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._series = _RequestSeries()
        r.register(self._series)
        self.cache_hit_rate = Gauge(
            "timbral_cache_hit_rate",
            "Share of cacheable recommendation requests answered from any cache tier since start.",
            registry=r)
        self.cache_hit_rate.set_function(self._hit_rate)
        # read from the tier-1 cache when scraped (set_function, in create_app)
        self.cache_bytes = Gauge("timbral_cache_bytes",
                                 "Bytes held by the in-process cache (tier 1), keys and values.",
                                 registry=r)
        self.cache_entries = Gauge("timbral_cache_entries",
                                   "Entries in the in-process cache (tier 1).", registry=r)
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
        self._lookups = 0
        self._hits = 0

    def _hit_rate(self) -> float:
        return self._hits / self._lookups if self._lookups else 0.0

    @property
    def requests(self) -> _RequestSeries:
        """The per-request series: ``observe(...)`` and the ``in_flight`` count."""
        return self._series

    def cache_lookup(self, hit_tier: str | None, tiers_missed: tuple[str, ...]) -> None:
        """Count one cacheable request: the tiers it missed and the tier it hit, if any."""
        self._lookups += 1
        for tier in tiers_missed:
            self._series.misses[tier] += 1
        if hit_tier is not None:
            self._hits += 1
            self._series.hits[hit_tier] += 1

    def cache_hits(self, tier: str) -> int:
        """Hits of cache tier "1" or "2" since start."""
        return self._series.hits[tier]

    def observe_batch(self, size: int, seconds: float) -> None:
        """One scoring call of the micro-batcher, told from its scorer thread: these two
        are prometheus-client Histograms, which lock, unlike the loop-only series."""
        self.batch_size.observe(size)
        self._batch_scoring.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

