"""Latency recording in HDR histograms, merged across load processes.

A load process records a value per delivery, up to a few hundred thousand a
second, so :class:`Recorder` counts exact microsecond values in a dict (one
dict update) and turns them into an HDR histogram only when asked. Histograms
travel between processes in HdrHistogram's compressed base64 encoding and
are merged with ``add``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "HIGHEST_US",
    "LOWEST_US",
    "PERCENTILES",
    "Recorder",
    "merge",
    "new_histogram",
    "percentile_curve",
    "summary",
]

LOWEST_US = 1
HIGHEST_US = 600_000_000  # ten minutes: longer than any scenario may run
SIGNIFICANT_DIGITS = 3

#: Reported percentiles, with the key each gets in the JSON result.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def new_histogram() -> HdrHistogram:
    """Return an empty histogram of microseconds, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class Recorder:
    """Count latencies in whole microseconds; cheap enough for every frame."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def record_seconds(self, seconds: float) -> None:
        """Record one latency given in seconds (clamped into the range)."""
        value = int(seconds * 1_000_000)
        if value < LOWEST_US:
            value = LOWEST_US
        elif value > HIGHEST_US:
            value = HIGHEST_US
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1
        self.total += 1

    def histogram(self) -> HdrHistogram:
        """Return an HDR histogram of everything recorded so far."""
        histogram = new_histogram()
        for value, count in self.counts.items():
            histogram.record_value(value, count)
        return histogram

    def encode(self) -> bytes:
        """Return the histogram in HdrHistogram's compressed base64 form."""
        return self.histogram().encode()

    def reset(self) -> None:
        self.counts = {}
        self.total = 0


def merge(encoded: Iterable[bytes | HdrHistogram]) -> HdrHistogram:
    """Add up histograms, given encoded (from other processes) or decoded.

    Raises:
        ValueError: when an encoded histogram cannot be decoded.
    """
    total = new_histogram()
    for item in encoded:
        if isinstance(item, HdrHistogram):
            total.add(item)
            continue
        try:
            decoded = HdrHistogram.decode(item)
        except Exception as exc:  # the library raises several unrelated types
            raise ValueError(f"cannot decode histogram: {exc}") from exc
        total.add(decoded)
    return total


def summary(histogram: HdrHistogram) -> dict[str, Any]:
    """Return count, mean, the reported percentiles and max, in microseconds.

    An empty histogram gives a count of 0 and ``None`` for every figure, so
    that a result never shows a latency that was not measured.
    """
    count = histogram.get_total_count()
    figures: dict[str, Any] = {"count": count}
    if count == 0:
        figures.update({key: None for key, _ in PERCENTILES})
        figures.update(mean=None, max=None)
        return figures
    for key, percentile in PERCENTILES:
        figures[key] = histogram.get_value_at_percentile(percentile)
    figures["mean"] = round(histogram.get_mean_value(), 1)
    figures["max"] = histogram.get_max_value()
    return figures


def percentile_curve(histogram: HdrHistogram) -> tuple[list[float], list[float]]:
    """Return (percentile, value in ms) points for a latency-by-percentile chart."""
    points: list[float] = []
    values: list[float] = []
    if histogram.get_total_count() == 0:
        return points, values
    for percentile in _curve_percentiles():
        points.append(percentile)
        values.append(histogram.get_value_at_percentile(percentile) / 1000.0)
    return points, values


def _curve_percentiles() -> list[float]:
    # Evenly spaced in "nines", the usual HDR view: 0, 90, 99, 99.9, ...
    steps: list[float] = []
    for i in range(501):
        nines = i / 100.0  # 0 .. 5 nines
        steps.append(100.0 * (1.0 - 10.0 ** (-nines)))
    return steps
