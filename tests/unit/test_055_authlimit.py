# FailureLimiter: failed handshakes counted per address within a window (a fake clock).
from __future__ import annotations

from remcopy.controller.authlimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_failures_max_within_the_window_then_allowed() -> None:
    clock = Clock()
    limiter = FailureLimiter(failures_max=3, window_s=60, clock=clock)
    for _ in range(2):
        limiter.failed("192.0.2.7")
        clock.now += 1
    assert limiter.blocked("192.0.2.7") == 0.0
    limiter.failed("192.0.2.7")
    assert limiter.blocked("192.0.2.7") == 58.0  # until the first failure ages out
    assert limiter.blocked("192.0.2.8") == 0.0  # another address is not affected
    assert limiter.first_refusal("192.0.2.7") and not limiter.first_refusal("192.0.2.7")
    clock.now += 58
    assert limiter.blocked("192.0.2.7") == 0.0
    limiter.failed("192.0.2.7")  # three within the window again (1001, 1002, 1060)
    assert limiter.blocked("192.0.2.7") == 1.0
    clock.now += 61  # all aged out: the address is forgotten, a new period is logged again
    assert limiter.blocked("192.0.2.7") == 0.0
    for _ in range(3):
        limiter.failed("192.0.2.7")
    assert limiter.first_refusal("192.0.2.7")


def test_old_failures_age_out() -> None:
    clock = Clock()
    limiter = FailureLimiter(failures_max=2, window_s=10, clock=clock)
    limiter.failed("a")
    clock.now += 11
    limiter.failed("a")
    assert limiter.blocked("a") == 0.0


def test_memory_is_bounded_by_addresses_max() -> None:
    limiter = FailureLimiter(failures_max=1, window_s=60, clock=Clock(), addresses_max=100)
    for i in range(10_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100
    assert limiter.blocked("10.0.39.15") > 0  # the most recent are remembered
    assert limiter.blocked("10.0.0.0") == 0.0  # the oldest were forgotten
