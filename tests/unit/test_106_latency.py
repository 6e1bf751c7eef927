# The controller's latency histograms: Prometheus' `le` buckets (at or below each bound).
from __future__ import annotations

from remcopy.controller.latency import Latency


def test_Latency_counts_each_observation_in_the_first_bucket_at_or_above_it() -> None:
    """A value equal to a bound counts in that bound's bucket; past the last bound, +Inf;
    the cumulative counts are what a Prometheus histogram exports."""
    latency = Latency((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 3.0):
        latency.observe(seconds)
    assert latency.counts == [2, 2, 1]
    assert latency.cumulative() == [("0.001", 2), ("0.01", 4), ("+Inf", 5)]
    assert latency.count == 5
    assert abs(latency.sum_s - 3.0135) < 1e-12
