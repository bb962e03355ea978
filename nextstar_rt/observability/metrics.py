"""Prometheus series, all named ``nextstar_*``, in a registry per server."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

__all__ = ["Metrics", "BrokerCollector"]


class Metrics:
    """The server's counters, gauges and histograms.

    Each server instance owns its registry, so that several servers in one
    process (as in the tests) do not share or clash over series.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge(
            "nextstar_connections", "Open WebSocket sessions.", registry=registry
        )
        self.signed_in = Gauge(
            "nextstar_sessions_signed_in",
            "Sessions that have signed in.",
            registry=registry,
        )
        self.errors = Counter(
            "nextstar_errors",
            "Error replies, by method and code.",
            ["method", "code"],
            registry=registry,
        )
        self.delivery_latency = LatencyHistogram(LATENCY_BUCKETS)
        self.slow_consumers = Counter(
            "nextstar_slow_consumers",
            "Sessions whose send buffer overflowed.",
            registry=registry,
        )
        self.resyncs = Counter(
            "nextstar_resyncs", "Resync notices sent to sessions.", registry=registry
        )
        # Counted per message or request: plain integers, which cost a fraction
        # of a locked Prometheus counter, turned into series at scrape time.
        self.requests: dict[str, int] = {}
        self.messages_stored = 0
        self.deliveries = 0
        registry.register(_HotCounters(self))

    def request(self, method: str) -> None:
        requests = self.requests
        requests[method] = requests.get(method, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HotCounters(Collector):
    """Series for the counters :class:`Metrics` keeps as plain integers."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "nextstar_requests", "Requests handled, by method.", labels=["method"]
        )
        for method, count in sorted(metrics.requests.items()):
            requests.add_metric([method], float(count))
        yield requests
        yield CounterMetricFamily(
            "nextstar_messages_stored",
            "Messages committed by this node.",
            value=float(metrics.messages_stored),
        )
        yield CounterMetricFamily(
            "nextstar_deliveries",
            "Frames pushed to local sessions.",
            value=float(metrics.deliveries),
        )
        latency = metrics.delivery_latency
        family = HistogramMetricFamily(
            "nextstar_delivery_latency_seconds",
            "Time from publish to the write to the first local session.",
        )
        family.add_metric([], latency.cumulative(), latency.total)
        yield family


LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class LatencyHistogram:
    """A histogram without a lock, for the event loop thread alone.

    Prometheus' own Histogram takes a lock on every observation, which costs
    more than the rest of the bookkeeping of a delivery.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Return ``(le, count)`` pairs as the exposition format wants them."""
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            buckets.append(
                ("+Inf" if bound == float("inf") else repr(bound), float(running))
            )
        return buckets


class BrokerCollector(Collector):
    """Per-shard broker series, read from ``Broker.stats()`` at scrape time.

    The broker keeps plain integer counters on its hot path; turning them into
    series only when scraped costs nothing per publish.
    """

    _COUNTERS = (
        ("published", "nextstar_broker_published", "Payloads published."),
        ("publish_errors", "nextstar_broker_publish_errors", "Publishes that failed."),
        (
            "dropped",
            "nextstar_broker_dropped",
            "Payloads dropped while a shard was down.",
        ),
        ("reconnects", "nextstar_broker_reconnects", "Reconnects to the shard."),
    )
    _GAUGES = (
        ("subscribed", "nextstar_broker_subscriptions", "Channels subscribed."),
        ("up", "nextstar_broker_shard_up", "1 while the shard is reachable."),
    )

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        shards: Any = self._stats().get("shards", {})  # url -> that shard's figures
        for key, name, documentation in self._COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["shard"])
            for shard, figures in shards.items():
                family.add_metric([shard], float(figures.get(key, 0)))
            yield family
        for key, name, documentation in self._GAUGES:
            gauge = GaugeMetricFamily(name, documentation, labels=["shard"])
            for shard, figures in shards.items():
                gauge.add_metric([shard], float(figures.get(key, 0)))
            yield gauge
