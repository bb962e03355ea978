"""Prometheus series, all named ``nextstar_*``, in a registry per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["Metrics"]


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
            "nextstar_sessions_signed_in", "Sessions that have signed in.",
            registry=registry,
        )
        self.requests = Counter(
            "nextstar_requests", "Requests handled, by method.", ["method"],
            registry=registry,
        )
        self.errors = Counter(
            "nextstar_errors", "Error replies, by method and code.",
            ["method", "code"], registry=registry,
        )
        self.messages_stored = Counter(
            "nextstar_messages_stored", "Messages committed by this node.",
            registry=registry,
        )
        self.deliveries = Counter(
            "nextstar_deliveries", "Frames pushed to local sessions.",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "nextstar_delivery_latency_seconds",
            "Time from publish to the write to the first local session.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1.0, 2.5),
            registry=registry,
        )
        self.slow_consumers = Counter(
            "nextstar_slow_consumers", "Sessions whose send buffer overflowed.",
            registry=registry,
        )
        self.resyncs = Counter(
            "nextstar_resyncs", "Resync notices sent to sessions.", registry=registry
        )
        self.broker_published = Counter(
            "nextstar_broker_published", "Payloads published, by shard.", ["shard"],
            registry=registry,
        )
        self.broker_errors = Counter(
            "nextstar_broker_errors", "Publish errors, by shard.", ["shard"],
            registry=registry,
        )
        self.broker_reconnects = Counter(
            "nextstar_broker_reconnects", "Shard reconnects, by shard.", ["shard"],
            registry=registry,
        )
        self.broker_subscriptions = Gauge(
            "nextstar_broker_subscriptions", "Channels subscribed, by shard.",
            ["shard"], registry=registry,
        )
        self.broker_up = Gauge(
            "nextstar_broker_shard_up", "1 while the shard is reachable.", ["shard"],
            registry=registry,
        )
        self._per_method: dict[str, Counter] = {}

    def request(self, method: str) -> None:
        counter = self._per_method.get(method)
        if counter is None:
            counter = self._per_method[method] = self.requests.labels(method)
        counter.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
