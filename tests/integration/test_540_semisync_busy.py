# Semi-sync as the seed says: a write to a device whose previous update the secondary has not
# confirmed is answered busy at once on the native protocol (nothing written), and the host
# channel asks again until the confirmation came.
from __future__ import annotations

import asyncio

import pytest
from mirror_world import channel, one_pair_over_a_fault_link

from remcopy.errors import DeviceBusy
from remcopy.states import CopyMode, PairState
from remcopy.wire import native

SLOT = 4096


@pytest.fixture
async def stalled_world(tmp_path):
    """One semisync pair whose replication link goes through a fault link."""
    settings: dict[str, object] = {"ack_timeout_s": 30.0, "heartbeat_timeout_s": 30.0}
    async with one_pair_over_a_fault_link(
        tmp_path, CopyMode.SEMISYNC, seed=7, settings=settings
    ) as (world, link):
        yield world, link


async def test_a_semisync_write_behind_an_unconfirmed_one_is_answered_busy_at_once(
    stalled_world,
):
    """The second write is refused busy while the first is unconfirmed (a controller that
    waited would not answer until the link healed), and it changed nothing."""
    world, link = stalled_world
    first = b"first".ljust(SLOT, b".")
    second = b"second".ljust(SLOT, b".")
    async with channel(world.primaries[0]) as ch:
        link.stall()  # the first write's update is sent, never confirmed
        await ch.write(0x0A00, 0, first)  # semisync: acknowledged after the local write
        request = native.WriteRequest(device=0x0A00, offset=SLOT, data=second, timestamp_ns=1)
        with pytest.raises(DeviceBusy, match="has not confirmed the previous write"):
            await ch.request(request, native.WriteReply)
        assert await ch.read(0x0A00, SLOT, SLOT) == bytes(SLOT)  # nothing written
        assert (await ch.status())["counters"]["busy_writes"] == 1
        link.heal()
        (status,) = await ch.query((0x0A00,))
        assert status.state is PairState.DUPLEX


async def test_the_host_channel_retries_a_busy_device_until_it_accepts(stalled_world):
    """Channel.write asks again while the device is busy and succeeds once the previous
    update is confirmed; both writes reach the secondary in order."""
    world, link = stalled_world
    first = b"first".ljust(SLOT, b".")
    second = b"second".ljust(SLOT, b".")
    async with channel(world.primaries[0]) as ch:
        link.stall()
        await ch.write(0x0A00, 0, first)
        retried = asyncio.create_task(ch.write(0x0A00, SLOT, second))
        async with channel(world.primaries[0]) as watcher:
            # Each round a real query: the controller refused the write busy twice or more.
            for _ in range(10_000):
                if (await watcher.status())["counters"]["busy_writes"] >= 2:
                    break
                assert not retried.done(), "accepted while its predecessor was unconfirmed"
            assert not retried.done()
        assert ch.busy_retries >= 2
        link.heal()
        await retried
        (status,) = await ch.query((0x0A00,))
        assert status.state is PairState.DUPLEX
    async with channel(world.primaries[0]) as ch:
        # A third write: accepted once the second's update is confirmed too.
        await ch.write(0x0A00, 2 * SLOT, b"third".ljust(SLOT, b"."))
    assert world.secondary is not None
    async with channel(world.secondary) as sec:
        sdev = world.secondary_device(0, 0)
        assert await sec.read(sdev, 0, SLOT) == first
        assert await sec.read(sdev, SLOT, SLOT) == second
