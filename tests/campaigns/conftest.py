# Fault campaigns: a seed per test run (REMCOPY_CAMPAIGN_SEED replays one), and the campaigns'
# figures gathered from every test (also from xdist workers) into one section at the end.
from __future__ import annotations

import os
import random

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def campaign_seed() -> int:
    """The seed of this test's schedule: REMCOPY_CAMPAIGN_SEED, or a fresh random one."""
    text = os.environ.get("REMCOPY_CAMPAIGN_SEED")
    seed = int(text) if text else random.randrange(1 << 32)
    print(f"campaign seed {seed} (replay: REMCOPY_CAMPAIGN_SEED={seed})")
    return seed


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _FIGURES.extend(str(value) for name, value in report.user_properties if name == "figures")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault campaigns")
        for line in _FIGURES:
            terminalreporter.write_line(line)
