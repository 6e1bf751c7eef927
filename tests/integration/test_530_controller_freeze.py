# Freeze with only the controllers running: a consistency group over three primary
# controllers, dependent writes across them, then one fault (a link stalled past the ack
# timeout and the hold, a link cut, the secondary SIGSTOPped). No management process watches:
# the controllers freeze the group themselves, every pair ends SUSPENDED or SUSPENDED_ERROR at
# one T, and every chain of dependent writes is prefix-closed on the secondary.
from __future__ import annotations

import asyncio
import random
import time

import pytest
from mirror_world import build, stop
from test_500_group_ops import _group, _session

from common import HOST, SECRET
from remcopy.errors import LateWrite, RemcopyError, WriteProtected
from remcopy.events import EventKind
from remcopy.groups import run_operation
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairItem, PairOp
from remcopy.workload.faultlink import FaultLink

SLOT = 4096
PRIMARIES = 3
VOLUMES = 2
SETTINGS = {
    "ack_timeout_s": 1.0,
    "hold_s": 5.0,
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 1.0,
}


@pytest.mark.parametrize("fault", ["stall", "cut", "sigstop"])
async def test_the_controllers_freeze_a_group_alone_and_the_secondary_is_a_consistent_cut(
    tmp_path, fault
):
    """A fault on one link (or the whole secondary) ends with the group frozen at one T by
    the controllers alone, and dependent writes across controllers prefix-closed."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed} fault={fault}")
    rng = random.Random(seed)
    async with FaultLink(("127.0.0.1", 0), seed=seed) as link:
        world = await build(
            tmp_path,
            primaries=PRIMARIES,
            volumes=VOLUMES,
            peer_address={0: link.endpoint},
            primary_settings=SETTINGS,
        )
        assert world.secondary is not None
        link.target = world.secondary.address
        try:
            group = _group(world)
            async with _session(world) as session:
                subs = [await session.channels[p.name].subscribe() for p in world.primaries]
                report = await run_operation(session, group, PairOp.ESTABLISH)
                assert not report.failed, report.to_json()["failures"]
                for sub in subs:
                    for _ in range(VOLUMES):
                        await sub.wait_for(r"-> DUPLEX")
            # From here on nothing but the controllers (and the fault link) runs: the host
            # below only writes.
            chains: dict[int, list[tuple[int, int, int, bytes]]] = {}
            acked = 0
            enough = asyncio.Event()
            stop_writing = asyncio.Event()
            channels = [p.channel(name=HOST, secret=SECRET) for p in world.primaries]
            for ch in channels:
                await ch.connect()
            events = [await ch.subscribe() for ch in channels]

            async def chain(c: int) -> None:
                nonlocal acked
                log = chains.setdefault(c, [])
                for seq in range(1, 400):
                    if stop_writing.is_set():
                        return
                    index = (c + seq) % PRIMARIES  # each write on another controller
                    device = 0x0A00 + rng.randrange(VOLUMES)
                    offset = (c * 400 + seq) % 1024 * SLOT
                    data = f"chain={c} seq={seq} ".encode().ljust(SLOT, b".")
                    while True:
                        try:
                            await channels[index].write(device, offset, data)
                            break
                        except LateWrite:
                            continue
                        except (WriteProtected, RemcopyError):
                            return  # the pair refused: the chain ends here (never acked)
                    log.append((index, device, offset, data))
                    acked += 1
                    if acked >= 150:
                        enough.set()

            writers = [asyncio.create_task(chain(c)) for c in range(6)]
            await enough.wait()
            faulted_ns = time.time_ns()
            if fault == "stall":
                link.stall()
            elif fault == "cut":
                link.cut()
            else:
                world.secondary.pause()
            # Wait until every pair of every primary left DUPLEX: the controllers froze.
            for sub in events:
                for _ in range(VOLUMES):
                    await sub.wait_for(r"DUPLEX -> SUSPENDED", timeout_s=60)
            stop_writing.set()
            await asyncio.gather(*writers)
            statuses = [
                await ch.query(tuple(0x0A00 + v for v in range(VOLUMES))) for ch in channels
            ]
            for ch in channels:
                await ch.close()
            if fault == "sigstop":
                world.secondary.unpause()
            else:
                link.heal()
            states = {s.state for batch in statuses for s in batch}
            stamps = {s.suspend_at_ns for batch in statuses for s in batch}
            assert states <= {PairState.SUSPENDED, PairState.SUSPENDED_ERROR}, statuses
            assert len(stamps) == 1, f"seed={seed}: frozen at several T: {stamps}"
            (at_ns,) = stamps
            assert at_ns > faulted_ns
            # The failed side is in error at T; a healthy sibling is SUSPENDED at T.
            if fault != "sigstop":
                assert {s.state for s in statuses[0]} == {PairState.SUSPENDED_ERROR}
                assert {s.state for s in statuses[1]} == {PairState.SUSPENDED}
            logs = "\n".join(p.log_text() for p in world.primaries)
            assert "freeze-incomplete" not in logs
            assert f"at={at_ns} confirmed=" in logs  # the controllers froze, nobody else
            async with world.secondary.channel(name=HOST, secret=SECRET) as sec:
                for c, log in chains.items():
                    present = []
                    for index, device, offset, data in log:
                        sdev = world.secondary_device(index, device & 0xFF)
                        present.append(await sec.read(sdev, offset, SLOT) == data)
                    if False in present:
                        first_gap = present.index(False)
                        assert not any(present[first_gap:]), (
                            f"seed={seed} chain {c}: seq {first_gap + 1} missing but a later "
                            "write of the chain reached the secondary"
                        )
        finally:
            if world.secondary is not None:
                world.secondary.unpause()
            await stop(world)


async def test_an_establish_naming_a_member_that_is_not_a_peer_is_refused_whole(tmp_path):
    """A consistency group whose members are not all configured peers cannot be frozen by the
    controllers: its establish is refused naming the missing controller, and nothing changes."""
    world = await build(tmp_path, primaries=1, volumes=2)
    try:
        items = world.pair_items(0, CopyMode.SYNC)
        items = tuple(
            PairItem(
                device=i.device,
                peer_serial=i.peer_serial,
                peer_device=i.peer_device,
                mode=i.mode,
                consistency_group=True,
            )
            for i in items
        )
        async with world.primaries[0].channel(name=HOST, secret=SECRET) as ch:
            with pytest.raises(
                RemcopyError, match=r"99999 not in controller cntla0's \[\[peers\]\]"
            ):
                await ch.pair_op(
                    PairOp.ESTABLISH, items, options={"group": "PAY", "members": [64015, 99999]}
                )
            statuses = await ch.query((0x0A00, 0x0A01))
            assert {s.state for s in statuses} == {PairState.SIMPLEX}
    finally:
        await stop(world)


@pytest.mark.parametrize("policy", ["go", "stop"])
async def test_a_sibling_that_cannot_be_reached_within_the_hold_is_reported(tmp_path, policy):
    """A freeze whose sibling is stopped: after the hold, "go" accepts the held write (change-
    recorded) and "stop" refuses it; both announce the freeze incomplete, naming the sibling."""
    async with FaultLink(("127.0.0.1", 0), seed=1) as link:
        world = await build(
            tmp_path,
            primaries=2,
            volumes=1,
            peer_address={0: link.endpoint},
            primary_settings={**SETTINGS, "hold_s": 1.5, "freeze_unreachable": policy},
        )
        assert world.secondary is not None
        link.target = world.secondary.address
        try:
            group = _group(world)
            async with _session(world) as session:
                sub = await session.channels["cntla0"].subscribe()
                assert not (await run_operation(session, group, PairOp.ESTABLISH)).failed
                await sub.wait_for(r"-> DUPLEX")
                world.primaries[1].pause()  # the sibling cannot answer
                link.cut()
                write = session.channels["cntla0"].write(0x0A00, 0, b"held".ljust(SLOT, b"."))
                if policy == "go":
                    await write
                else:
                    with pytest.raises(WriteProtected, match="freeze_unreachable is stop"):
                        await write
                event = await sub.wait_until(
                    lambda e: e.kind is EventKind.FREEZE and e.detail["phase"] == "incomplete"
                )
                assert event.detail["unconfirmed"] == "64016"
                assert event.detail["policy"] == policy
                (status,) = await session.channels["cntla0"].query((0x0A00,))
                assert status.state is PairState.SUSPENDED_ERROR
        finally:
            world.primaries[1].unpause()
            await stop(world)
