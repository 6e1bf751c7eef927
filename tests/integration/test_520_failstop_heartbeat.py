# Liveness and fail-stop: heartbeats find a dead or stopped secondary with no host write; a
# background task that fails stops the controller loudly; armed suspends survive kill -9 on
# any number of devices and still seal at T.
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from mirror_world import all_ok, build, channel, digest, establish, stop

from remcopy.errors import RemcopyError
from remcopy.events import EventKind
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp

FAST_HEARTBEAT = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.0}


async def test_a_background_task_that_fails_stops_the_controller_with_one_line(tmp_path):
    """A failed background task makes the controller exit 1, naming the task and the cause."""
    world = await build(
        tmp_path,
        volumes=1,
        primary_settings={"planted_bugs": ["crash_background"], "planted_bug_every": 1},
        testing=True,
    )
    try:
        primary = world.primaries[0]
        assert primary.process is not None
        async with asyncio.timeout(30):
            code = await primary.process.wait()
        assert code == 1
        lines = [ln for ln in primary.log_text().splitlines() if "failed" in ln]
        assert len(lines) == 1, primary.log_tail()
        assert "background task 'heartbeats' failed: RuntimeError: planted bug" in lines[0]
        assert "Traceback" not in primary.log_text()
    finally:
        await stop(world)


@pytest.mark.parametrize("fault", ["sigstop", "kill"])
async def test_a_dead_or_stopped_secondary_is_found_without_host_writes(tmp_path, fault):
    """With no host write, every pair leaves DUPLEX once the secondary stops answering."""
    world = await build(tmp_path, volumes=2, primary_settings=FAST_HEARTBEAT)
    try:
        await establish(world, 0, CopyMode.SYNC)
        async with channel(world.primaries[0]) as ch:
            events = await ch.subscribe()
            assert world.secondary is not None
            if fault == "sigstop":
                world.secondary.pause()
            else:
                await world.secondary.kill()
            left = set()
            while len(left) < world.volumes:
                event = await events.wait_until(lambda e: e.new is PairState.SUSPENDED_ERROR)
                assert event.old is PairState.DUPLEX
                left.add(event.device)
            # The link's failure is an event of its own, before the pairs' state changes.
            failed = [
                e for e in events.seen if e.kind in (EventKind.LINK_DOWN, EventKind.HEARTBEAT_LOSS)
            ]
            assert failed and failed[0].peer == "cntlb", events.seen
            assert failed[0].seq < min(e.seq for e in events.seen if e.kind is EventKind.STATE)
            if fault == "sigstop":  # alive but silent: only the heartbeat finds it
                assert failed[0].kind is EventKind.HEARTBEAT_LOSS
            statuses = await ch.query((0x0A00, 0x0A01))
            assert {s.state for s in statuses} == {PairState.SUSPENDED_ERROR}
            counters = (await ch.status())["counters"]
            assert counters["writes"] == 0  # found by heartbeats alone
    finally:
        if world.secondary is not None:
            world.secondary.unpause()
        await stop(world)


def _record(device: int, slot: int, stamp: int) -> bytes:
    return f"dev={device:04X} slot={slot} stamp={stamp} ".encode().ljust(4096, b"#")


@pytest.mark.parametrize(
    ("volumes", "restart"),
    [(1, "before_T"), (2, "before_T"), (2, "after_T"), (2, "at_seal"), (1000, "after_T")],
)
async def test_an_armed_suspend_survives_kill_9_and_seals_at_T(tmp_path, volumes, restart):
    """Armed on 1, 2 or 1,000 devices, kill -9 before T or as the seal commits, restart
    before or after T: every device is SUSPENDED at T, writes stamped < T are on the
    secondary and none stamped >= T, and the pairs mirror again after a resume."""
    size = 4 * 65536 if volumes > 8 else 1024 * 1024
    world = await build(tmp_path, volumes=volumes, size_bytes=size)
    primary = world.primaries[0]
    devices = tuple(0x0A00 + c for c in range(volumes))
    written = devices[:4]
    items = world.pair_items(0, CopyMode.SYNC)
    try:
        await establish(world, 0, CopyMode.SYNC)
        before: list[tuple[int, int, bytes]] = []
        async with channel(primary) as ch:
            for slot, device in enumerate(written):
                data = _record(device, slot, time.time_ns())
                await ch.write(device, slot * 4096, data)
                before.append((device, slot * 4096, data))
            events = await ch.subscribe()
            # T far enough ahead that the kill and, for after_T, the restart come before it.
            lead_s = 20.0 if restart == "after_T" else 3.0
            at_ns = time.time_ns() + int(lead_s * 1e9)
            suspend = asyncio.create_task(ch.pair_op(PairOp.SUSPEND, items, at_ns=at_ns))
            await events.wait_for(rf"armed suspend at={at_ns} devices={volumes}\b")
            if restart == "at_seal":
                # Killed as the seal commits: the secondaries may not have been told yet.
                await events.wait_for(r"-> SUSPENDED\b", timeout_s=lead_s + 30)
            await primary.kill()
            if restart == "at_seal":
                # The answer may have left just before the kill, or died with it.
                with contextlib.suppress(RemcopyError):
                    await suspend
            else:
                with pytest.raises(RemcopyError):  # the connection died with the controller
                    await suspend
        if restart == "before_T":
            # T passes while the controller is down: it must still seal at T when it returns.
            await asyncio.sleep(max(0.0, (at_ns - time.time_ns()) / 1e9))
            assert time.time_ns() > at_ns
        await primary.start(ready_timeout_s=60)
        async with channel(primary) as ch:
            events = await ch.subscribe()
            statuses = await ch.query(devices)
            if time.time_ns() < at_ns - 100_000_000:
                # Still armed after the restart, with T kept.
                assert {s.state for s in statuses} == {PairState.DUPLEX}, statuses
                assert {s.suspend_at_ns for s in statuses} == {at_ns}
                await events.wait_for(r"-> SUSPENDED\b", timeout_s=lead_s + 30)
                statuses = await ch.query(devices)
            while {s.state for s in statuses} != {PairState.SUSPENDED}:
                await events.wait_for(r"-> SUSPENDED\b", timeout_s=30)
                statuses = await ch.query(devices)
            assert {s.suspend_at_ns for s in statuses} == {at_ns}
            after: list[tuple[int, int, bytes]] = []
            for slot, device in enumerate(written):
                stamp = time.time_ns()
                assert stamp >= at_ns
                offset = size // 2 + slot * 4096
                data = _record(device, offset // 4096, stamp)
                await ch.write(device, offset, data)
                after.append((device, offset, data))
        assert world.secondary is not None
        async with channel(world.secondary) as sec:
            for device, offset, data in before:
                sdev = world.secondary_device(0, device & 0xFF)
                assert await sec.read(sdev, offset, 4096) == data
            for device, offset, _data in after:
                sdev = world.secondary_device(0, device & 0xFF)
                assert await sec.read(sdev, offset, 4096) == bytes(4096)
        async with channel(primary) as ch:
            events = await ch.subscribe()
            all_ok(await ch.pair_op(PairOp.RESUME, items))
            duplex: set[str] = set()
            while len(duplex) < volumes:
                event = await events.wait_until(lambda e: e.new is PairState.DUPLEX, timeout_s=60)
                duplex.add(event.device)
            ours = [await digest(ch, d, size) for d in written]
        async with channel(world.secondary) as sec:
            theirs = [await digest(sec, world.secondary_device(0, d & 0xFF), size) for d in written]
        assert ours == theirs
    finally:
        await stop(world)


@pytest.mark.parametrize("grace_s", [30.0, 0.0])
async def test_a_primary_started_before_its_secondary_waits_out_the_start_grace(tmp_path, grace_s):
    """Started while its secondary is down, a primary retries the link during
    link_start_grace_s and keeps its pairs DUPLEX until the secondary is up; with no grace its
    pairs fail at the first heartbeat."""
    settings = {**FAST_HEARTBEAT, "link_start_grace_s": grace_s}
    world = await build(tmp_path, volumes=1, primary_settings=settings)
    primary, secondary = world.primaries[0], world.secondary
    assert secondary is not None
    try:
        await establish(world, 0, CopyMode.SYNC)
        await primary.stop()
        await secondary.stop()
        await primary.start()
        async with channel(primary) as ch:
            events = await ch.subscribe()
            if grace_s == 0.0:
                await events.wait_for(r"DUPLEX -> SUSPENDED_ERROR")
                return
            for _ in range(2):  # two heartbeats found the secondary down and kept waiting
                await events.wait_for(r"^link cntlb not up yet: retrying")
            (status,) = await ch.query((0x0A00,))
            assert status.state is PairState.DUPLEX
            await secondary.start()
            data = b"after the start".ljust(4096, b".")
            await ch.write(0x0A00, 0, data)  # sync: acknowledged once the secondary has it
            (status,) = await ch.query((0x0A00,))
            assert status.state is PairState.DUPLEX
        async with channel(secondary) as sec:
            assert await sec.read(world.secondary_device(0, 0), 0, 4096) == data
    finally:
        await stop(world)
