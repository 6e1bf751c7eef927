# Latency histograms kept on the controller's event loop: a count per bucket and a sum.
#
# Why: /metrics (controller/metrics.py) exports host I/O and state-commit latency as
# Prometheus histograms. The hot paths only add to a list here (a bisect and two additions,
# well under a microsecond); the metrics endpoint reads the counts on the same loop when
# scraped. No lock and no thread: one loop owns the numbers.
from __future__ import annotations

from bisect import bisect_left
from typing import Final

LATENCY_BUCKETS_S: Final = (
    0.00005,
    0.0001,
    0.00025,
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
    5.0,
)
"""Upper bounds (seconds): a loopback hop is ~100 µs, a sync write one or two, a held write
up to the hold (2 s by default)."""


class Latency:
    """Observations counted by bucket (upper bounds in seconds; the last bucket is +Inf)."""

    __slots__ = ("bounds", "counts", "sum_s")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum_s = 0.0

    def __repr__(self) -> str:
        return f"<Latency count={self.count} sum={self.sum_s:.6f}s>"

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) per bucket, "+Inf" last: the form
        Prometheus histograms take."""
        out, total = [], 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


__all__ = ["LATENCY_BUCKETS_S", "Latency"]
