"""The lock-free latency histogram behind nextstar_delivery_latency_seconds."""

from __future__ import annotations

from nextstar_rt.observability.metrics import LatencyHistogram, Metrics


def test_observations_land_in_the_first_bucket_at_or_above_them():
    histogram = LatencyHistogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.002, 0.05, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [
        ("0.001", 2.0), ("0.01", 3.0), ("0.1", 4.0), ("+Inf", 5.0)]
    assert abs(histogram.total - 3.0535) < 1e-9


def test_the_histogram_is_exported_in_prometheus_form():
    metrics = Metrics()
    metrics.delivery_latency.observe(0.003)
    text = metrics.render().decode()
    assert 'nextstar_delivery_latency_seconds_bucket{le="0.0025"} 0.0' in text
    assert 'nextstar_delivery_latency_seconds_bucket{le="0.005"} 1.0' in text
    assert "nextstar_delivery_latency_seconds_count 1.0" in text
