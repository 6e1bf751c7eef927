# The caps on unauthenticated connections (controller/admission.py): pure counting, with a
# clock the test moves by hand.
from __future__ import annotations

import logging

import pytest

from remcopy.controller.admission import LOG_INTERVAL_S, Admission, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admission_counts_per_address_and_in_total() -> None:
    admission = Admission("native", total_max=3, per_address_max=2, clock=Clock())
    assert admission.admit("10.0.0.1", "10.0.0.1:1") is None
    assert admission.admit("::ffff:10.0.0.1", "[::ffff:10.0.0.1]:2") is None  # the same address
    refused = admission.admit("10.0.0.1", "10.0.0.1:3")
    assert refused == "2 connections from 10.0.0.1 have not authenticated (the limit per address)"
    assert admission.admit("10.0.0.2", "10.0.0.2:1") is None
    assert admission.admit("10.0.0.3", "10.0.0.3:1") == (
        "3 connections have not authenticated (the limit)"
    )
    admission.release("10.0.0.1")
    assert admission.by_address == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert admission.admit("10.0.0.3", "10.0.0.3:2") is None
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        admission.release(host)
    assert (admission.pending, admission.by_address, admission.refused_total) == (0, {}, 2)


def test_admission_logs_refusals_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    admission = Admission("nbd", total_max=1, per_address_max=1, clock=clock)
    admission.admit("10.0.0.1", "10.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="remcopy.controller"):
        for port in range(2, 1002):
            assert admission.admit("10.0.0.1", f"10.0.0.1:{port}") is not None
        clock.now += LOG_INTERVAL_S
        admission.admit("10.0.0.1", "10.0.0.1:9999")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("nbd: refused 10.0.0.1:2: 1 connections have not authenticated")
    assert "(999 more refused since the last such line)" in lines[1]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key
