# Group operations over several primary controllers: one request per controller, and a
# suspend that is consistent at one T while a workload writes.
from __future__ import annotations

import asyncio
import random

from mirror_world import SECONDARY_LSS, SECONDARY_SERIAL, SlotLoad, build, primary_serial, stop

from common import HOST, SECRET
from remcopy.groups import Group, GroupOptions, GroupPair, run_operation, suspend
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
        {"host": {"name": HOST, "secret": SECRET}, "controllers": controllers, "paths": paths},
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
            stop_load.set()
            await asyncio.gather(*runners)
        assert report.consistent, report.to_json()
        assert report.requests == {p.name: 1 for p in world.primaries}
        assert {p.at_ns for p in report.pairs} == {report.at_ns}
        assert report.margin_s >= 0.05
        secondary_channel = _session(world).channels["cntlb"]
        async with secondary_channel:
            for i, load in enumerate(loads):
                for write in load.writes:
                    sdev = world.secondary_device(i, write.device & 0xFF)
                    got = await secondary_channel.read(sdev, write.offset, len(write.data))
                    if write.stamp < report.at_ns and write.acked:
                        assert got == write.data
                    elif write.stamp >= report.at_ns:
                        assert got == bytes(len(write.data))
    finally:
        await stop(world)


async def test_group_dry_run_sends_nothing(tmp_path):
    """A dry run plans one batch per controller and sends no request (controller counters)."""
    world = await build(tmp_path, primaries=2, volumes=2)
    try:
        group = _group(world)
        async with _session(world) as session:
            before = [
                (await session.channels[p.name].status())["counters"]["requests"]
                for p in world.primaries
            ]
            report = await run_operation(session, group, PairOp.ESTABLISH, dry_run=True)
            after = [
                (await session.channels[p.name].status())["counters"]["requests"]
                for p in world.primaries
            ]
            statuses = await session.channels[world.primaries[0].name].query()
        assert report.requests == {p.name: 0 for p in world.primaries}
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]  # the status call
        assert {s.state for s in statuses} == {PairState.SIMPLEX}
    finally:
        await stop(world)
