# Group operations over several primary controllers: one request per controller, and a
# suspend that is consistent at one T while a workload writes.
from __future__ import annotations

import asyncio
import random

from mirror_world import SECONDARY_LSS, SECONDARY_SERIAL, SlotLoad, build, primary_serial, stop

from common import HOST, SECRET, host_tls
from remcopy.groups import (
    Group,
    GroupOptions,
    GroupPair,
    OperationProgress,
    follow_copies,
    run_operation,
    suspend,
)
from remcopy.host.definition import parse_host_definition
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp


def _session(world) -> HostSession:
    controllers = [{"name": p.name, "address": p.endpoint} for p in world.primaries]
    controllers.append({"name": "cntlb", "address": world.secondary.endpoint})
    paths = [
        {
            "devices": f"{0x1000 * (i + 1):04X}-{0x1000 * (i + 1) + world.volumes - 1:04X}",
            "controller": p.name,
            "ssid": "1A00",
            "lss": "0A",
            "cca": "00",
        }
        for i, p in enumerate(world.primaries)
    ]
    definition = parse_host_definition(
        {
            "tls": host_tls(HOST),
            "host": {"name": HOST, "secret": SECRET},
            "controllers": controllers,
            "paths": paths,
        },
        source="test",
    )
    return HostSession(definition)


def _group(world, mode=CopyMode.SYNC) -> Group:
    pairs = []
    for i, proc in enumerate(world.primaries):
        for cca in range(world.volumes):
            sdev = world.secondary_device(i, cca)
            pairs.append(
                GroupPair(
                    volser=f"P{i}{cca:04X}",
                    primary=HardwareAddress.of(
                        serial=primary_serial(i), ssid=0x1A00, lss=0x0A, cca=cca
                    ),
                    secondary=HardwareAddress.of(
                        serial=SECONDARY_SERIAL, ssid=0x2B00, lss=SECONDARY_LSS, cca=sdev & 0xFF
                    ),
                    primary_controller=proc.name,
                    secondary_controller="cntlb",
                )
            )
    return Group(name="PAYROLL", options=GroupOptions(mode=mode), pairs=tuple(pairs))


async def test_group_suspend_is_consistent_at_one_T_across_four_controllers(tmp_path):
    """Every pair reports SUSPENDED at the same T; the secondaries hold exactly writes < T."""
    world = await build(tmp_path, primaries=4, volumes=2)
    try:
        group = _group(world)
        async with _session(world) as session:
            events = [await session.channels[p.name].subscribe() for p in world.primaries]
            report = await run_operation(session, group, PairOp.ESTABLISH)
            assert not report.failed, report.to_json()
            assert report.requests == {p.name: 1 for p in world.primaries}
            for sub in events:
                for _ in range(world.volumes):
                    await sub.wait_for(r"-> DUPLEX")
            stop_load = asyncio.Event()
            loads = [
                SlotLoad(
                    session.channels[p.name],
                    [0x0A00, 0x0A01],
                    world.size_bytes,
                    writers=3,
                    seed=random.randrange(1 << 32),
                )
                for p in world.primaries
            ]
            runners = [asyncio.create_task(load.run_until(stop_load)) for load in loads]
            for load in loads:
                await load.wait_acked(20)
            report = await suspend(session, group, margin_s=0.05)
            # Each seal made the commit planned when it armed, and so did the secondary for
            # each primary (asked to plan it during the margin).
            planned = {
                name: (await session.channels[name].status())["counters"]["suspends_as_planned"]
                for name in [*(p.name for p in world.primaries), "cntlb"]
            }
            assert planned == {**{p.name: 1 for p in world.primaries}, "cntlb": 4}, planned
            for load in loads:  # writes after T too: the check below must see both sides
                await load.wait_acked(load.acked + 10)
            stop_load.set()
            await asyncio.gather(*runners)
        assert not any(load.errors for load in loads), [load.errors for load in loads]
        assert report.consistent, report.to_json()
        assert report.requests == {p.name: 1 for p in world.primaries}
        assert {p.at_ns for p in report.pairs} == {report.at_ns}
        assert report.margin_s >= 0.05
        secondary_channel = _session(world).channels["cntlb"]
        before_t = after_t = 0
        async with secondary_channel:
            for i, load in enumerate(loads):
                for write in load.writes:
                    sdev = world.secondary_device(i, write.device & 0xFF)
                    got = await secondary_channel.read(sdev, write.offset, len(write.data))
                    if write.stamp < report.at_ns and write.acked:
                        assert got == write.data
                        before_t += 1
                    elif write.stamp >= report.at_ns:
                        assert got == bytes(len(write.data))
                        after_t += write.acked
        # Each load had 20 writes acknowledged before the suspend was asked for, and 10 more
        # after it was done (after T): both rules were checked on real writes.
        assert before_t >= 20 * len(loads), before_t
        assert after_t >= 10 * len(loads), after_t
    finally:
        await stop(world)


async def test_group_dry_run_sends_only_reads(tmp_path):
    """A dry run sends each controller one query and one identify (to read states and
    sizes) and no pair operation (controller counters); nothing changes."""
    world = await build(tmp_path, primaries=2, volumes=2)
    kinds = ("pair_ops", "queries", "identifies")
    try:
        group = _group(world)
        async with _session(world) as session:
            names = [p.name for p in world.primaries]
            before = [(await session.channels[n].status())["counters"] for n in names]
            report = await run_operation(session, group, PairOp.ESTABLISH, dry_run=True)
            after = [(await session.channels[n].status())["counters"] for n in names]
            statuses = await session.channels[world.primaries[0].name].query()
        assert report.requests == {p.name: 0 for p in world.primaries}
        assert [{k: a[k] - b[k] for k in kinds} for a, b in zip(after, before, strict=True)] == [
            {"pair_ops": 0, "queries": 1, "identifies": 1}
        ] * 2
        assert {s.state for s in statuses} == {PairState.SIMPLEX}
    finally:
        await stop(world)


async def _pair_ops(session: HostSession, names: list[str]) -> dict[str, int]:
    return {n: (await session.channels[n].status())["counters"]["pair_ops"] for n in names}


async def test_group_dry_runs_plan_every_operation_and_send_no_pair_operation(tmp_path):
    """Each dry run shows moves, refusals and the tracks a copy would move, from the
    controllers' states and change maps; no controller counts a pair operation for it."""
    world = await build(tmp_path, primaries=2, volumes=2)
    try:
        group = _group(world)
        names = [p.name for p in world.primaries] + ["cntlb"]
        tracks_per_volume = world.size_bytes // (64 * 1024)
        async with _session(world) as session:
            start = await _pair_ops(session, names)
            dry = await run_operation(session, group, PairOp.ESTABLISH, dry_run=True)
            assert {r.move() for r in dry.plan} == {"SIMPLEX -> PENDING"}
            assert [r.tracks for r in dry.plan] == [tracks_per_volume] * 4
            assert await _pair_ops(session, names) == start
            seen: list[OperationProgress] = []
            established = await run_operation(session, group, PairOp.ESTABLISH)
            duplex = await follow_copies(session, established, seen.append, interval_s=0.01)
            assert duplex.done
            assert established.counts() == {"DUPLEX": 4}
            mid = await _pair_ops(session, names)
            refused = await run_operation(session, group, PairOp.ESTABLISH, dry_run=True)
            assert all(r.refused for r in refused.plan)
            assert "pair is DUPLEX: the pair must be SIMPLEX" in refused.plan[0].reason
            planned = await suspend(session, group, margin_s=0.05, dry_run=True)
            assert {r.move() for r in planned.plan} == {"DUPLEX -> SUSPENDED"}
            assert planned.requests == {p.name: 0 for p in world.primaries}
            assert await _pair_ops(session, names) == mid
            real = await suspend(session, group, margin_s=0.05)
            assert real.consistent, real.to_json()
            # Change 3 tracks of the first pair and 1 of the last while suspended.
            first, last = group.pairs[0], group.pairs[-1]
            track = 64 * 1024
            for device, controller, offsets in (
                (first.primary, first.primary_controller, (0, 5 * track, 9 * track)),
                (last.primary, last.primary_controller, (2 * track,)),
            ):
                for offset in offsets:
                    await session.channels[controller].write(device.device_key, offset, b"x" * 512)
            after_suspend = await _pair_ops(session, names)
            resume = await run_operation(session, group, PairOp.RESUME, dry_run=True)
            assert [r.tracks for r in resume.plan] == [3, 0, 0, 1]
            assert {r.move() for r in resume.plan} == {"SUSPENDED -> PENDING"}
            recover = await run_operation(session, group, PairOp.RECOVER, dry_run=True)
            assert {r.move() for r in recover.plan} == {"SUSPENDED -> RECOVERED"}
            assert {r.controller for r in recover.plan} == {"cntlb"}
            failback = await run_operation(session, group, PairOp.FAILBACK, dry_run=True)
            assert all(r.refused for r in failback.plan)
            assert "the pair must be RECOVERED" in failback.plan[0].reason
            terminate = await run_operation(session, group, PairOp.TERMINATE, dry_run=True)
            assert {r.move() for r in terminate.plan} == {"SUSPENDED -> SIMPLEX"}
            assert await _pair_ops(session, names) == after_suspend
            # Recover for real, change a track at the secondary site: a failback copies the
            # tracks changed on either side (the sum is an upper bound when both changed).
            await run_operation(session, group, PairOp.RECOVER)
            await session.channels["cntlb"].write(first.secondary.device_key, 7 * track, b"y")
            before = await _pair_ops(session, names)
            failback = await run_operation(session, group, PairOp.FAILBACK, dry_run=True)
            assert [r.tracks for r in failback.plan] == [4, 0, 0, 1]
            assert [r.tracks_exact for r in failback.plan] == [False, True, True, True]
            assert {r.move() for r in failback.plan} == {"RECOVERED -> PENDING"}
            assert await _pair_ops(session, names) == before
            doc = failback.to_json()
            assert doc["plan"]["controllers"]["cntlb"]["tracks"] == 5
            assert doc["requests_per_controller"] == {"cntlb": 0}
        totals = [p.copied_tracks for p in seen]
        assert totals == sorted(totals)
        assert seen[-1].copied_tracks == seen[-1].total_tracks == 4 * tracks_per_volume
        assert all(p.done and p.state is PairState.DUPLEX for p in seen[-1].pairs)
    finally:
        await stop(world)
