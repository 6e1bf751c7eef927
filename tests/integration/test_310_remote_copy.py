# The remote-copy contract (DESIGN.md section 2) against real controllers: what reaches the
# secondary, what is recorded, what survives a crash, and what every operation refuses.
from __future__ import annotations

import asyncio
import random
import re
import time

import pytest
from mirror_world import (
    SlotLoad,
    all_ok,
    build,
    channel,
    digest,
    establish,
    stop,
    wait_settled,
)

from remcopy.errors import SuspendTimeInPast
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairItem, PairOp
from suspend_at import suspend_at_next_t, suspend_soon


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path)
    yield w
    await stop(w)


async def _secondary_slot(sec, world, index, write) -> bytes:
    cca = write.device & 0xFF
    return await sec.read(world.secondary_device(index, cca), write.offset, len(write.data))


async def test_sync_kill_9_of_primary_loses_no_acknowledged_write(world):
    """Every write acknowledged in sync mode is on the secondary after the primary dies."""
    await establish(world, 0, CopyMode.SYNC)
    primary = world.primaries[0]
    enough = asyncio.Event()
    async with channel(primary) as ch:
        load = SlotLoad(
            ch,
            [0x0A00 + c for c in range(world.volumes)],
            world.size_bytes,
            seed=random.randrange(1 << 32),
        )
        runner = asyncio.create_task(load.run_until(enough))
        await load.wait_acked(random.randint(100, 600))
        await primary.kill()
        enough.set()
        await runner
    acked = [w for w in load.writes if w.acked]
    assert acked
    async with channel(world.secondary) as sec:
        for write in acked:
            assert await _secondary_slot(sec, world, 0, write) == write.data, (
                f"acknowledged write at {write.device:04X}+{write.offset} is missing"
            )


async def test_prospective_suspend_across_three_controllers_splits_at_T(tmp_path):
    """Writes stamped < T are on the secondary, none stamped >= T; every device reports T."""
    world = await build(tmp_path, primaries=3, volumes=2)
    try:
        for i in range(3):
            await establish(world, i, CopyMode.SYNC)
        channels = [channel(p) for p in world.primaries]
        for ch in channels:
            await ch.connect()
        stop_load = asyncio.Event()
        loads = [
            SlotLoad(ch, [0x0A00, 0x0A01], world.size_bytes, writers=4, seed=i)
            for i, ch in enumerate(channels)
        ]
        runners = [asyncio.create_task(load.run_until(stop_load)) for load in loads]
        for load in loads:
            await load.wait_acked(30)
        at_ns, replies = await suspend_at_next_t(
            [(ch, world.pair_items(i, CopyMode.SYNC)) for i, ch in enumerate(channels)]
        )
        stop_load.set()
        await asyncio.gather(*runners)
        for reply in replies:
            all_ok(reply)
            assert {r.state for r in reply.results} == {PairState.SUSPENDED}
            assert {r.at_ns for r in reply.results} == {at_ns}
        before = after = 0
        async with channel(world.secondary) as sec:
            for i, load in enumerate(loads):
                assert not load.errors, load.errors
                for write in load.writes:
                    on_secondary = await _secondary_slot(sec, world, i, write)
                    if write.stamp < at_ns and write.acked:
                        assert on_secondary == write.data, f"write stamped {write.stamp} < T lost"
                        before += 1
                    elif write.stamp >= at_ns:
                        assert on_secondary == bytes(len(write.data)), (
                            f"write stamped {write.stamp} >= T={at_ns} reached the secondary"
                        )
                        after += 1
        assert before > 0
        assert after > 0
        for ch in channels:
            await ch.close()
    finally:
        await stop(world)


async def test_suspend_with_T_in_the_past_is_refused_and_changes_nothing(world):
    """A suspend whose time has passed is refused whole; every pair stays DUPLEX."""
    await establish(world, 0, CopyMode.SYNC)
    async with channel(world.primaries[0]) as ch:
        with pytest.raises(SuspendTimeInPast, match="has passed"):
            await ch.pair_op(
                PairOp.SUSPEND, world.pair_items(0, CopyMode.SYNC), at_ns=time.time_ns() - 1_000_000
            )
        assert {s.state for s in await ch.query()} == {PairState.DUPLEX}
        assert {s.suspend_at_ns for s in await ch.query()} == {0}


async def test_a_device_named_twice_in_one_request_is_refused_once_the_first_acts(world):
    """The second naming of a device is refused ("named twice") and changes nothing; the
    first naming and the other devices are carried out as if it were not there."""
    items = world.pair_items(0, CopyMode.SYNC)
    async with channel(world.primaries[0]) as ch:
        reply = await ch.pair_op(PairOp.ESTABLISH, (*items, items[0]))
        assert len(reply.results) == len(items) + 1
        refused = [r for r in reply.results if r.code]
        assert [r.device for r in refused] == [items[0].device]
        assert "named twice in one request" in refused[0].message
        assert sum(1 for r in reply.results if r.device == items[0].device and not r.code) == 1
        states = {s.device: s.state for s in await ch.query()}
        assert all(states[i.device] in (PairState.PENDING, PairState.DUPLEX) for i in items)


async def test_changes_while_suspended_survive_kill_9_and_resume_copies_only_them(world):
    """Change-map bits survive kill -9; resume copies about the changed share, then identical."""
    await establish(world, 0, CopyMode.SYNC)
    primary = world.primaries[0]
    items = world.pair_items(0, CopyMode.SYNC)
    tracks = world.size_bytes // 65536
    async with channel(primary) as ch:
        await suspend_soon(ch, items)
        rng = random.Random(7)
        changed = rng.sample(range(tracks), max(1, tracks // 10))
        for track in changed:
            await ch.write(0x0A00, track * 65536 + 100, rng.randbytes(1000))
        before = (await ch.status())["counters"]["bytes_copied"]
    await primary.kill()
    await primary.start()
    async with channel(primary) as ch:
        statuses = {s.device: s for s in await ch.query()}
        assert statuses[0x0A00].state is PairState.SUSPENDED
        assert statuses[0x0A00].dirty_tracks == len(changed)
        events = await ch.subscribe()
        all_ok(await ch.pair_op(PairOp.RESUME, items))
        duplex = set()
        while len(duplex) < world.volumes:
            duplex.add((await events.wait_until(lambda e: e.new is PairState.DUPLEX)).device)
        copied = (await ch.status())["counters"]["bytes_copied"]
        assert copied == len(changed) * 65536, "resume copied more than the changed tracks"
        del before
        await suspend_soon(ch, items)
        primary_digest = await digest(ch, 0x0A00, world.size_bytes)
    async with channel(world.secondary) as sec:
        assert await digest(sec, world.secondary_device(0, 0), world.size_bytes) == primary_digest


async def test_link_loss_suspends_with_error_and_resume_repairs(world):
    """Stopping the secondary makes pairs SUSPENDED_ERROR; writes go on; resume makes them equal."""
    await establish(world, 0, CopyMode.SYNC)
    primary = world.primaries[0]
    items = world.pair_items(0, CopyMode.SYNC)
    async with channel(primary) as ch:
        events = await ch.subscribe()
        await world.secondary.kill()
        await ch.write(0x0A00, 0, b"A" * 70000)  # fails to mirror: acknowledged, recorded
        await events.wait_for(r"0A:00 DUPLEX -> SUSPENDED_ERROR")
        await ch.write(0x0A00, 200000, b"B" * 5000)  # change-recorded directly
        status = {s.device: s for s in await ch.query()}
        assert status[0x0A00].state is PairState.SUSPENDED_ERROR
        assert status[0x0A00].dirty_tracks >= 3
        await world.secondary.start()
        reply = await ch.pair_op(PairOp.RESUME, (items[0],))
        all_ok(reply)
        await events.wait_for(r"0A:00 PENDING -> DUPLEX")
        await suspend_soon(ch, (items[0],))
        primary_digest = await digest(ch, 0x0A00, world.size_bytes)
    async with channel(world.secondary) as sec:
        assert await digest(sec, world.secondary_device(0, 0), world.size_bytes) == primary_digest


async def test_consistency_group_device_holds_writes_during_the_error(world):
    """A consistency-group device holds a write after a link error until the hold expires."""
    await establish(world, 0, CopyMode.SYNC, consistency_group=True)
    async with channel(world.primaries[0]) as ch:
        events = await ch.subscribe()
        await world.secondary.kill()
        first = asyncio.create_task(ch.write(0x0A00, 0, b"x" * 100))
        await events.wait_for(r"^hold 65015|^hold \S+:1A00:0A:00")
        held = asyncio.create_task(ch.write(0x0A01, 0, b"y" * 100))
        status = {s.device: s for s in await ch.query((0x0A01,))}
        assert status[0x0A01].flags & 2, "device should report held"
        assert status[0x0A01].state is PairState.DUPLEX
        # Events and replies share one connection, so this order is the controller's order.
        await events.wait_for(r"0A:01 DUPLEX -> SUSPENDED_ERROR")
        assert not held.done(), "the held write was answered before the hold ended"
        await first
        await held


async def test_recover_then_failback_copies_only_changed_tracks(world):
    """Recover the secondary, write there, fail back: equal volumes, changed tracks copied."""
    await establish(world, 0, CopyMode.SYNC)
    primary, secondary = world.primaries[0], world.secondary
    sdev = world.secondary_device(0, 0)
    await primary.kill()  # the primary site is lost
    async with channel(secondary) as sec:
        events = await sec.subscribe()
        all_ok(await sec.pair_op(PairOp.RECOVER, (PairItem(device=sdev),)))
        assert (await sec.query((sdev,)))[0].state is PairState.RECOVERED
        for track in (3, 9, 20):
            await sec.write(sdev, track * 65536, b"R" * 65536)
        await primary.start()
        reply = await sec.pair_op(PairOp.FAILBACK, (PairItem(device=sdev),))
        all_ok(reply)
        assert reply.results[0].tracks == 3
        await events.wait_for(r"PENDING -> DUPLEX")
        recovered_digest = await digest(sec, sdev, world.size_bytes)
        copied = (await sec.status())["counters"]["bytes_copied"]
        assert copied == 3 * 65536
    async with channel(primary) as ch:
        assert await digest(ch, 0x0A00, world.size_bytes) == recovered_digest
        assert (await ch.query((0x0A00,)))[0].state is PairState.DUPLEX


async def test_failback_of_many_pairs_costs_the_old_primary_two_state_commits(world):
    """The old primary follows a failback of all its pairs in one durable write per step
    (fail, then resume as the secondary), however many pairs: not one per pair per step.
    The copies' ends are confirmed together too, as they finish."""
    await establish(world, 0, CopyMode.SYNC)
    primary, secondary = world.primaries[0], world.secondary
    devices = tuple(world.secondary_device(0, c) for c in range(world.volumes))
    items = tuple(PairItem(device=d) for d in devices)
    await primary.kill()
    async with channel(secondary) as sec:
        all_ok(await sec.pair_op(PairOp.RECOVER, items))
        await primary.start()
        async with channel(primary) as ch:
            events = await ch.subscribe()
            before = (await ch.status())["counters"]["state_commits"]
            all_ok(await sec.pair_op(PairOp.FAILBACK, items))
            for _ in devices:
                await events.wait_for(r"PENDING -> DUPLEX cause=copy_done")
            after = (await ch.status())["counters"]["state_commits"]
    # 2 steps, then the copies' ends: one commit for all that finished together, at most
    # one per pair (the old way was 2 per pair, plus 1 per pair).
    assert 3 <= after - before <= 2 + len(devices)


async def test_shadow_copy_equals_the_suspended_secondary_and_blocks_resume(tmp_path):
    """A shadow copy equals the secondary as of the suspend; resume waits for it."""
    world = await build(tmp_path, volumes=1, size_bytes=64 * 1024 * 1024)
    try:
        await establish(world, 0, CopyMode.SYNC)
        items = world.pair_items(0, CopyMode.SYNC)
        async with channel(world.primaries[0]) as ch, channel(world.secondary) as sec:
            await ch.write(0x0A00, 12345, b"before-T" * 1000)
            await suspend_soon(ch, items)
            await ch.write(0x0A00, 12345, b"after--T" * 1000)
            events = await sec.subscribe()
            sdev, tdev = world.secondary_device(0, 0), world.tertiary_device(0, 0)
            all_ok(await sec.pair_op(PairOp.SHADOW, (PairItem(device=sdev, peer_device=tdev),)))
            refused = await ch.pair_op(PairOp.RESUME, items)
            assert refused.results[0].code != 0
            assert "shadow copy" in refused.results[0].message
            assert (await ch.query((0x0A00,)))[0].state is PairState.SUSPENDED
            await events.wait_for(r"^shadow .* done")
            assert await digest(sec, tdev, world.size_bytes) == await digest(
                sec, sdev, world.size_bytes
            )
            assert await sec.read(tdev, 12345, 8) == b"before-T"
            all_ok(await ch.pair_op(PairOp.RESUME, items))
    finally:
        await stop(world)


async def test_secondary_refuses_host_writes_and_wrong_peer_secret(world, tmp_path):
    """A secondary takes host writes only once RECOVERED; a peer with a bad secret is refused."""
    from remcopy.errors import AuthenticationFailed, WriteProtected
    from remcopy.wire.native import PeerRole

    await establish(world, 0, CopyMode.SYNC)
    async with channel(world.secondary) as sec:
        with pytest.raises(WriteProtected):
            await sec.write(world.secondary_device(0, 1), 0, b"no")
    with pytest.raises(AuthenticationFailed):
        async with world.secondary.channel(
            name="cntla0", secret="wrong-link-secret", role=PeerRole.PEER
        ):
            pass
    async with channel(world.secondary) as sec:
        # The controller notices the peer left when it reads the end of that connection:
        # wait for its counter (a state), not for a time.
        async with asyncio.timeout(10):
            while (await sec.status())["counters"]["auth_refused"] < 1:
                pass
    # The peer proves first: the secondary refuses its proof (and never proved anything).
    assert "(peer cntla0): peer cntla0: wrong secret" in world.secondary.log_text()


async def test_async_kill_9_of_primary_ships_the_journal_after_restart(world):
    """Async writes acknowledged before kill -9 reach the secondary once the primary restarts."""
    await establish(world, 0, CopyMode.ASYNC)
    primary = world.primaries[0]
    enough = asyncio.Event()
    async with channel(primary) as ch:
        load = SlotLoad(
            ch,
            [0x0A00 + c for c in range(world.volumes)],
            world.size_bytes,
            seed=random.randrange(1 << 32),
        )
        runner = asyncio.create_task(load.run_until(enough))
        await load.wait_acked(random.randint(50, 300))
        world.secondary.pause()  # updates pile up unconfirmed in the primary's journal
        await load.wait_acked(load.acked + 200)
        await primary.kill()
        world.secondary.unpause()
        enough.set()
        await runner
    await primary.start()
    async with channel(primary) as ch:
        await wait_settled(ch, tuple(0x0A00 + c for c in range(world.volumes)))
        # A suspend at T drains every update stamped before T, replayed ones included.
        await suspend_soon(ch, world.pair_items(0, CopyMode.ASYNC))
    acked = [w for w in load.writes if w.acked]
    async with channel(world.secondary) as sec:
        for write in acked:
            assert await _secondary_slot(sec, world, 0, write) == write.data, (
                f"acknowledged async write at {write.device:04X}+{write.offset} is missing"
            )
    assert re.search(r"replayed [1-9]\d* journaled updates", primary.log_text())


async def test_a_write_stamped_before_T_after_the_seal_is_refused_and_changes_nothing(world):
    """Once sealed at T, a write stamped < T is refused (retryable) and not written anywhere."""
    from remcopy.errors import LateWrite

    await establish(world, 0, CopyMode.SYNC)
    async with channel(world.primaries[0]) as ch:
        at_ns = await suspend_soon(ch, world.pair_items(0, CopyMode.SYNC))
        with pytest.raises(LateWrite, match="before the suspend time") as caught:
            await ch.write(0x0A00, 0, b"late" * 100, timestamp_ns=at_ns - 1)
        assert caught.value.retryable
        assert await ch.read(0x0A00, 0, 400) == bytes(400)
        assert (await ch.query((0x0A00,)))[0].dirty_tracks == 0
        await ch.write(0x0A00, 0, b"new!" * 100)  # reissued with a fresh stamp: recorded
        assert (await ch.query((0x0A00,)))[0].dirty_tracks == 1


async def test_fence_data_refuses_host_writes_while_the_secondary_cannot_be_updated(world):
    """With fence data, writes are refused once the link is lost, and none is written after."""
    from remcopy.errors import WriteProtected
    from remcopy.states import FencePolicy

    await establish(world, 0, CopyMode.SYNC, fence=FencePolicy.DATA)
    async with channel(world.primaries[0]) as ch:
        events = await ch.subscribe()
        await world.secondary.kill()
        with pytest.raises(WriteProtected, match="fence is data"):
            await ch.write(0x0A00, 0, b"1" * 100)  # never acknowledged
        await events.wait_for(r"0A:00 DUPLEX -> SUSPENDED_ERROR")
        with pytest.raises(WriteProtected, match="fence is data"):
            await ch.write(0x0A00, 4096, b"2" * 100)
        assert await ch.read(0x0A00, 4096, 100) == bytes(100)  # refused before writing


async def test_sync_primary_restarted_after_kill_9_resyncs_to_identical_volumes(world):
    """Updates in flight at kill -9 left their bits: the restarted primary resyncs them."""
    await establish(world, 0, CopyMode.SYNC)
    primary = world.primaries[0]
    enough = asyncio.Event()
    devices = [0x0A00 + c for c in range(world.volumes)]
    async with channel(primary) as ch:
        load = SlotLoad(ch, devices, world.size_bytes, seed=random.randrange(1 << 32))
        runner = asyncio.create_task(load.run_until(enough))
        await load.wait_acked(random.randint(100, 400))
        await primary.kill()
        enough.set()
        await runner
    await primary.start()
    async with channel(primary) as ch:
        events = await ch.subscribe()
        states = {s.device: s.state for s in await ch.query(tuple(devices))}
        waiting = [d for d, st in states.items() if st is not PairState.DUPLEX]
        for _ in waiting:
            await events.wait_for(r"PENDING -> DUPLEX")
        assert {s.state for s in await ch.query(tuple(devices))} == {PairState.DUPLEX}
        await suspend_soon(ch, world.pair_items(0, CopyMode.SYNC))
        primary_digests = [await digest(ch, d, world.size_bytes) for d in devices]
    async with channel(world.secondary) as sec:
        secondary_digests = [
            await digest(sec, world.secondary_device(0, c), world.size_bytes)
            for c in range(world.volumes)
        ]
    assert primary_digests == secondary_digests
