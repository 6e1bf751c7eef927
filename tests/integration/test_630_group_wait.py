# `remcopy group wait`: exit 0 once every pair of a group is in a state, 1 at the timeout naming
# the pairs still away; driven by the controllers' event streams, reading pairs again only when
# an event names one of them. Real controller processes; the waiting command is a real process
# whose "waiting for" line (stream live, first read done) is awaited before anything changes.
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mirror_world import build, stop, two_group_catalog

from common import HOST, run_remcopy

WAITING_TIMEOUT_S = 120.0


def cli(*args: str, catalog: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_remcopy(*args, catalog=catalog, code=code)


class Waiter:
    """`remcopy group wait ...` running in the background, once it says it is waiting."""

    def __init__(self, *args: str, catalog: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remcopy", "group", "wait", *args, "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, REMCOPY_CATALOG=str(catalog)),
        )
        self.stderr = b""

    def wait_until_waiting(self) -> str:
        """The 'waiting for' line: the event streams are live and the first read is done."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + WAITING_TIMEOUT_S
        while b"waiting for" not in self.stderr or not self.stderr.endswith(b"\n"):
            ready, _, _ = select.select([self.process.stderr], [], [], deadline - time.monotonic())
            assert ready, f"no 'waiting for' line: {self.stderr!r}"
            chunk = os.read(self.process.stderr.fileno(), 4096)
            assert chunk, f"group wait ended before waiting: {self.stderr!r}"
            self.stderr += chunk
        return self.stderr.decode()

    def result(self) -> tuple[int, dict, str]:  # type: ignore[type-arg]
        out, err = self.process.communicate(timeout=180)
        text = (self.stderr + err).decode()
        assert "Traceback" not in text, text
        return self.process.returncode, json.loads(out), text

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


@pytest.fixture
def catalog(world, tmp_path) -> Path:
    """Two groups of 4 pairs: PAYROLL on cntla0, OTHER on cntla1, both to cntlb; DUPLEX."""
    return two_group_catalog(tmp_path, world)


async def test_group_wait_returns_at_once_when_every_pair_is_there(catalog):
    """Every pair already in the state: exit 0 after the first read, with no re-read."""
    run = cli("group", "wait", "PAYROLL", "--host", HOST, "--state", "duplex", "--json",
              catalog=catalog)  # fmt: skip
    report = json.loads(run.stdout)
    assert (report["reached"], report["pairs"], report["away"]) == (True, 4, [])
    assert (report["events"], report["requeries"]) == (0, 0)
    assert (report["state"], report["schema"]) == ("DUPLEX", 1)
    assert "waiting for" not in run.stderr


async def test_group_wait_follows_the_events_of_its_own_pairs(catalog):
    """Waiting on PAYROLL: OTHER's suspend (the same secondary controller) causes no re-read;
    PAYROLL's suspend ends the wait with exit 0, each event counted having named its pairs."""
    waiter = Waiter("PAYROLL", "--host", HOST, "--state", "SUSPENDED", catalog=catalog)
    try:
        said = waiter.wait_until_waiting()
        assert "waiting for 4 of 4 pairs of PAYROLL to be SUSPENDED" in said
        cli("group", "suspend", "OTHER", "--host", HOST, catalog=catalog)
        assert waiter.process.poll() is None
        cli("group", "suspend", "PAYROLL", "--host", HOST, catalog=catalog)
        code, report, text = waiter.result()
    finally:
        waiter.kill()
    assert code == 0, text
    assert (report["reached"], report["away"]) == (True, [])
    # A suspend is announced by the primaries' controllers, a line per pair: PAYROLL's 4 are
    # counted, OTHER's 4 (before them, on the same streams) named none of its pairs.
    assert report["events"] == 4
    assert 1 <= report["requeries"] <= 4


async def test_group_wait_times_out_naming_the_pairs_away_without_polling(catalog):
    """Nothing changes: exit 1 at the timeout, every pair named with its state, no re-read."""
    run = cli("group", "wait", "PAYROLL", "--host", HOST, "--state", "RECOVERED",
              "--timeout", "1", "--json", catalog=catalog, code=1)  # fmt: skip
    report = json.loads(run.stdout)  # the report only: no error document after it
    assert report["reached"] is False
    assert report["elapsed_s"] >= 1.0
    assert (report["events"], report["requeries"]) == (0, 0)
    assert [(p["pair"], p["state"]) for p in report["away"]] == [
        (f"P0{c:04X}", "DUPLEX") for c in range(4)
    ]
    message = " ".join(run.stderr.split())
    assert "group PAYROLL: wait for RECOVERED: 4 pairs still away after 1 s: P00000 DUPLEX" in (
        message
    )


async def test_group_wait_human_output(catalog):
    """Without --json: one line when reached; at the timeout a table of the pairs away."""
    done = cli("group", "wait", "OTHER", "--host", HOST, "--state", "DUPLEX", catalog=catalog)
    assert done.stdout.startswith("group OTHER: all 4 pairs DUPLEX after ")
    late = cli("group", "wait", "OTHER", "--host", HOST, "--state", "SIMPLEX", "--timeout",
               "0.5", catalog=catalog, code=1)  # fmt: skip
    assert "group OTHER: 4 of 4 pairs not SIMPLEX after" in late.stdout
    assert "pairs still away" in late.stdout and "P10003" in late.stdout
