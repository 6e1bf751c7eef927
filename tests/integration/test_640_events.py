# `remcopy events`: the controllers' typed events as JSON lines, recent or followed; a follower
# carries on across a controller's restart with no event lost or printed twice (each
# controller numbers its events). Real controller processes, the command as a real process.
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mirror_world import build, stop, two_group_catalog

from common import HOST, SECRET, run_remcopy
from remcopy.events import EventKind

LINE_TIMEOUT_S = 60.0


def cli(*args: str, catalog: Path, code: int = 0) -> str:
    return run_remcopy(*args, catalog=catalog, code=code).stdout


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


@pytest.fixture
def catalog(world, tmp_path) -> Path:
    """Two groups of 4 pairs: PAYROLL on cntla0, OTHER on cntla1, both to cntlb; DUPLEX."""
    return two_group_catalog(tmp_path, world)


def _by_serial(events: list[dict[str, Any]], serial: int) -> list[dict[str, Any]]:
    return [e for e in events if e["serial"] == serial]


def _numbered_without_holes(events: list[dict[str, Any]]) -> bool:
    seqs = [e["seq"] for e in events]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_events_lists_a_suspend_in_order_with_numbers(world, catalog):
    """After a suspend, `events` lists each primary's STATE events DUPLEX -> SUSPENDED at
    one T, after the suspend was armed, numbered one after another; --group shows only that
    group's pairs."""
    cli("group", "suspend", "PAYROLL", "--host", HOST, catalog=catalog)
    found = lines(cli("events", catalog=catalog))
    assert all(e["schema"] == 1 for e in found)
    p0 = _by_serial(found, world.primaries[0].serial)
    assert _numbered_without_holes(p0)
    kinds = [e["kind"] for e in p0]
    assert kinds[0] == "start"
    armed = kinds.index("armed")
    suspended = [e for e in p0[armed:] if e["kind"] == "state" and e["new"] == "SUSPENDED"]
    assert [(e["device"], e["old"]) for e in suspended] == [
        (f"64015:1A00:0A:{c:02X}", "DUPLEX") for c in range(4)
    ]
    assert len({e["at_ns"] for e in suspended}) == 1
    assert suspended[0]["at_ns"] == p0[armed]["at_ns"]
    assert all(e["controller"] == "cntla0" and e["cause"] == "suspend" for e in suspended)
    assert "DUPLEX -> SUSPENDED" in suspended[0]["text"]
    # Every controller the catalog knows answered: the secondary's followers too.
    assert {e["serial"] for e in found} == {64015, 64016, world.secondary.serial}

    payroll = lines(cli("events", "--group", "PAYROLL", catalog=catalog))
    devices = {e["device"] for e in payroll if e.get("device")}
    ends = {f"64015:1A00:0A:{c:02X}" for c in range(4)}
    ends |= {f"{world.secondary.serial}:2B00:20:{c:02X}" for c in range(4)}
    assert devices <= ends
    # Both ends of each PAYROLL pair were suspended (the secondary follows its primary).
    assert {e["device"] for e in payroll if e.get("new") == "SUSPENDED"} == ends
    last = lines(cli("events", "--last", "2", catalog=catalog))
    assert [len(_by_serial(last, s)) for s in (64015, 64016)] == [2, 2]
    assert _by_serial(last, 64015) == p0[-2:]


async def test_events_refuses_when_a_controller_cannot_be_asked(world, catalog):
    """A stopped controller: the others' events are printed, the missing one is named, exit 1."""
    await world.primaries[1].stop()
    run = run_remcopy("events", catalog=catalog, code=1)
    assert {e["serial"] for e in lines(run.stdout)} == {64015, world.secondary.serial}
    assert "1 of 3 controllers not asked: cntla1" in " ".join(run.stderr.split())


class Follower:
    """`remcopy events --follow` running in the background; its lines as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, catalog: Path, *args: str) -> Follower:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "remcopy", "events", "--follow", *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, REMCOPY_CATALOG=str(catalog)),
        )  # fmt: skip
        return cls(process)

    async def until(self, met: Any) -> dict[str, Any]:
        """Read lines until one meets `met`; that one."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(LINE_TIMEOUT_S):
                while True:
                    line = await self.process.stdout.readline()
                    assert line, f"follower ended: {await self.stop()}"
                    event = json.loads(line)
                    self.events.append(event)
                    if met(event):
                        return event
        except TimeoutError:
            said = await self.stop()
            shown = [(e["serial"], e["seq"], e["text"]) for e in self.events[-10:]]
            raise AssertionError(f"no such event: last ones {shown}: stderr {said}") from None

    async def stop(self) -> str:
        if self.process.returncode is None:
            self.process.terminate()
        _, err = await self.process.communicate()
        return err.decode()


async def test_events_follow_resumes_after_a_controller_restart(world, catalog):
    """Following: a suspend's state changes appear in order; the primary is killed (-9) and
    started again; the follower says it reconnects, and every event of that controller, from
    before the kill to after the restart, appears once, numbered without a hole."""
    p0 = world.primaries[0]
    before = _by_serial(lines(cli("events", catalog=catalog)), p0.serial)
    follower = await Follower.start(catalog)
    try:
        # The kept events come first: once the last one known is printed, the stream is live.
        await follower.until(lambda e: (e["serial"], e["seq"]) == (p0.serial, before[-1]["seq"]))
        cli("group", "suspend", "PAYROLL", "--host", HOST, catalog=catalog)
        for c in range(4):
            event = await follower.until(
                lambda e: e["serial"] == p0.serial and e["kind"] == "state"
            )
            assert (event["device"], event["old"], event["new"]) == (
                f"64015:1A00:0A:{c:02X}",
                "DUPLEX",
                "SUSPENDED",
            )
        await p0.kill()
        await p0.start()
        await follower.until(lambda e: e["serial"] == p0.serial and e["kind"] == "start")
        cli("group", "resume", "PAYROLL", "--host", HOST, "--wait", catalog=catalog)
        for c in range(4):
            await follower.until(
                lambda e, c=c: (
                    e.get("device") == f"64015:1A00:0A:{c:02X}" and e.get("new") == "DUPLEX"
                )
            )
        # A stop with SIGTERM is told before the stream ends, and the restart after it.
        p1 = world.primaries[1]
        await p1.stop()
        await p1.start()
        await follower.until(lambda e: e["serial"] == p1.serial and e["kind"] == "start")
    finally:
        said = await follower.stop()
    assert "Traceback" not in said
    assert "events: cntla0:" in said and "connecting again" in said
    mine = _by_serial(follower.events, p0.serial)
    assert [e["seq"] for e in mine] == list(range(1, mine[-1]["seq"] + 1))
    assert [e["seq"] for e in mine[: len(before)]] == [e["seq"] for e in before]
    starts = [e for e in mine if e["kind"] == "start"]
    assert len(starts) == 2  # the first start, and the one after the kill
    after = mine[mine.index(starts[1]) :]
    resumed = [e["device"] for e in after if e["kind"] == "state" and e["old"] == "SUSPENDED"]
    assert resumed == [f"64015:1A00:0A:{c:02X}" for c in range(4)]
    other = _by_serial(follower.events, world.primaries[1].serial)
    assert _numbered_without_holes(other)
    kinds = [e["kind"] for e in other]
    # The stop is told, then the start is the last; between them only what its own shutdown
    # did (closing its replication link may hold a consistency-group device on the way out).
    assert kinds[-1] == "start" and "stop" in kinds
    stopped = len(kinds) - 1 - kinds[::-1].index("stop")
    assert set(kinds[stopped + 1 : -1]) <= {"hold", "link_down"}, kinds[stopped:]


async def test_subscribe_past_the_last_number_is_told_a_gap(world):
    """A subscriber resuming after a number the controller never reached (its event log
    lost its end) gets a GAP naming the controller's last number, then the live stream."""
    p0 = world.primaries[0]
    async with p0.channel(name=HOST, secret=SECRET) as channel:
        subscription = await channel.subscribe(after_seq=10**12)
        (gap,) = subscription.take_replayed()
        assert (gap.kind, gap.serial, gap.controller) == (EventKind.GAP, p0.serial, "cntla0")
        assert gap.seq == subscription.live_after_seq >= 1  # its start, at least
        assert gap.detail == {"lost_from": gap.seq + 1, "asked_after": 10**12}
        assert gap.time_ns > 0
        resumed = await channel.subscribe(after_seq=gap.seq - 1)
        assert [e.seq for e in resumed.take_replayed()] == [gap.seq]
