# Shared fixtures: worlds of real controller processes on 127.0.0.1 in a temporary folder.
from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common import HOST, SECRET, MiB, Start, controller_spec, use_site  # noqa: F401
from remcopy.controller.process import (
    ControllerProcess,
    ControllerSpec,
    kill_left_running,
    started_pids,
    use_listen_ports,
)
from remcopy.pki import Site


@pytest.fixture(scope="session", autouse=True)
def _site_certificates(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One site CA per test session; certificates are issued once per name, on demand."""
    use_site(Site(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session", autouse=True)
def _own_listen_ports() -> None:
    """Each pytest-xdist worker names its worlds' ports from its own part of 20000-29999:
    two workers never pick the same port that both found free before either bound it (a
    campaign failed so at -n 4). A demo a test starts picks from 20000-31999 at random.
    Each worker starts at a random place in its part: two test runs on one machine (each with
    its own gw0) do not walk the same ports in step."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = 10_000 // count
    ports = range(20_000 + index * size, 20_000 + (index + 1) * size)
    use_listen_ports(ports, first=random.choice(ports))


@pytest.fixture(autouse=True)
def _no_controller_left_running() -> Iterator[None]:
    """Every controller process a test started and left running is killed by pid when the
    test ends: a test stopped by its timeout (pytest-timeout raises inside the event loop)
    never reaches its own cleanup. Synchronous, so it runs whatever state the loop is in."""
    before = started_pids()
    yield
    killed = kill_left_running(started_pids() - before)
    if killed:
        print(f"killed controller processes left running: {killed}")


@pytest.fixture
async def start_controller(tmp_path: Path) -> AsyncIterator[Start]:
    """Start controller processes from specs; every one is stopped at teardown. Pass
    extra_env=TESTING_ENV only for a spec with test-only keys (never for all: a test shows
    that without it such a key is refused)."""
    started: list[ControllerProcess] = []

    async def start(
        spec: ControllerSpec, *, extra_env: dict[str, str] | None = None
    ) -> ControllerProcess:
        proc = ControllerProcess(spec.write(tmp_path / f"{spec.name}.toml"), extra_env=extra_env)
        started.append(proc)
        return await proc.start()

    yield start
    for proc in started:
        if proc.running:
            await proc.kill()


# Figures a test records (record_property("figures", line), e.g. the fault campaigns') are
# printed in one section at the end of the run. The hooks live here, not in a subfolder's
# conftest, so that the pytest-xdist controller process, which collects nothing, has them too.
_FIGURES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _FIGURES.extend(str(value) for name, value in report.user_properties if name == "figures")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault campaigns")
        for line in _FIGURES:
            terminalreporter.write_line(line)
