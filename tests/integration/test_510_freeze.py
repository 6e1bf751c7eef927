# Freeze: a consistency group whose one replication link is cut during a dependent-write
# load ends suspended at one T, and every secondary image is a consistent cut.
from __future__ import annotations

import asyncio
import random

import pytest
from mirror_world import build, stop
from test_500_group_ops import _group, _session

from remcopy.errors import LateWrite
from remcopy.groups import run_operation
from remcopy.groups.freeze import watch_and_freeze
from remcopy.states import PairState
from remcopy.wire.native import PairOp
from remcopy.workload.faultlink import FaultLink

SLOT = 4096


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_freeze_after_a_link_fault_leaves_consistent_secondaries(tmp_path, fault):
    """Chains that span two controllers are prefix-closed on the secondaries after a freeze."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    async with FaultLink(("127.0.0.1", 0), seed=seed) as link:
        world = await build(
            tmp_path,
            primaries=2,
            volumes=2,
            peer_address={0: link.endpoint},
            primary_settings={"ack_timeout_s": 1.0, "hold_s": 5.0},
        )
        link.target = world.secondary.address
        try:
            group = _group(world)
            assert group.options.consistency_group
            async with _session(world) as session:
                subs = [await session.channels[p.name].subscribe() for p in world.primaries]
                report = await run_operation(session, group, PairOp.ESTABLISH)
                assert not report.failed
                for sub in subs:
                    for _ in range(world.volumes):
                        await sub.wait_for(r"-> DUPLEX")
                ready = asyncio.Event()
                watcher = asyncio.create_task(watch_and_freeze(session, group, ready=ready))
                await ready.wait()
                chains: dict[int, list[tuple[int, int, int, bytes, bool]]] = {}
                acked = 0
                enough = asyncio.Event()
                stop_writing = asyncio.Event()

                async def chain(c: int) -> None:
                    nonlocal acked
                    log = chains.setdefault(c, [])
                    for seq in range(1, 150):
                        if stop_writing.is_set():
                            return
                        primary = world.primaries[seq % 2]  # alternate controllers
                        device = 0x0A00 + rng.randrange(world.volumes)
                        offset = (c * 150 + seq) % 1024 * SLOT
                        data = f"chain={c} seq={seq} ".encode().ljust(SLOT, b".")
                        while True:
                            try:
                                await session.channels[primary.name].write(device, offset, data)
                                break
                            except LateWrite:
                                continue
                        log.append((seq % 2, device, offset, data, True))
                        acked += 1
                        if acked >= 200:
                            enough.set()

                writers = [asyncio.create_task(chain(c)) for c in range(6)]
                await enough.wait()
                link.cut() if fault == "cut" else link.stall()
                freeze = await watcher
                stop_writing.set()
                await asyncio.gather(*writers)
                link.heal()
            assert freeze.consistent, (freeze.to_json()["failures"], freeze.seal)
            states = {p.pair.primary_controller: set() for p in freeze.pairs}
            for p in freeze.pairs:
                states[p.pair.primary_controller].add(p.state)
            assert states["cntla0"] == {PairState.SUSPENDED_ERROR}  # frozen in error
            assert states["cntla1"] == {PairState.SUSPENDED}
            # The frozen controller held host writes from the link's failure to the freeze.
            assert freeze.seal["cntla0"]["frozen_in_error"] == 2
            frozen = freeze.seal["cntla0"]
            assert frozen["host_io_held_ms"] > frozen["seal_commit_ms"] + frozen["arm_commit_ms"]
            assert freeze.to_json()["host_io_held_ms"] >= freeze.seal["cntla0"]["host_io_held_ms"]
            async with _session(world) as session:
                secondary = session.channels["cntlb"]
                for c, log in chains.items():
                    present = []
                    for index, device, offset, data, _acked in log:
                        sdev = world.secondary_device(index, device & 0xFF)
                        present.append(await secondary.read(sdev, offset, SLOT) == data)
                    # Prefix-closed: once a write is missing, every later one is missing.
                    if False in present:
                        first_gap = present.index(False)
                        assert not any(present[first_gap:]), (
                            f"seed={seed} chain {c}: seq {first_gap + 1} missing but a later "
                            "write of the chain reached a secondary"
                        )
        finally:
            await stop(world)
