# max_lag_s: a host write to an async device whose oldest unconfirmed update is older than the
# limit waits a short while for the lag to fall, then is answered busy (nothing written); the
# host channel asks again and is served once the secondary has caught up.
from __future__ import annotations

import asyncio

import pytest
from mirror_world import channel, one_pair_over_a_fault_link

from remcopy.errors import DeviceBusy
from remcopy.states import CopyMode, PairState
from remcopy.wire import native

SLOT = 4096
MAX_LAG_S = 0.2


@pytest.fixture
async def lagging_world(tmp_path):
    """One async pair with max_lag_s whose replication link goes through a fault link."""
    settings: dict[str, object] = {
        "ack_timeout_s": 60.0,
        "heartbeat_timeout_s": 60.0,
        "max_lag_s": MAX_LAG_S,
    }
    async with one_pair_over_a_fault_link(tmp_path, CopyMode.ASYNC, seed=11, settings=settings) as (
        world,
        link,
    ):
        yield world, link


async def _until_lag_over_limit(ch) -> None:
    """Queries until the controller itself reports the device's lag past max_lag_s."""
    while True:
        (status,) = await ch.query((0x0A00,))
        if status.lag_ns > MAX_LAG_S * 1e9:
            return


async def test_a_write_past_max_lag_is_answered_busy_and_changes_nothing(lagging_world):
    world, link = lagging_world
    first = b"first".ljust(SLOT, b".")
    second = b"second".ljust(SLOT, b".")
    async with channel(world.primaries[0]) as ch:
        link.stall()  # the first write's update is sent, never confirmed
        await ch.write(0x0A00, 0, first)  # async: acknowledged after the local write
        await _until_lag_over_limit(ch)
        request = native.WriteRequest(device=0x0A00, offset=SLOT, data=second, timestamp_ns=1)
        with pytest.raises(DeviceBusy, match=r"more than 0.2 s behind \(max_lag_s\)"):
            await ch.request(request, native.WriteReply)
        assert await ch.read(0x0A00, SLOT, SLOT) == bytes(SLOT)  # nothing written
        counters = (await ch.status())["counters"]
        assert counters["lag_busy_writes"] == 1
        assert counters["busy_writes"] == 0
        link.heal()
        (status,) = await ch.query((0x0A00,))
        assert status.state is PairState.DUPLEX


async def test_the_host_channel_is_served_once_the_lag_falls(lagging_world):
    world, link = lagging_world
    first = b"first".ljust(SLOT, b".")
    second = b"second".ljust(SLOT, b".")
    async with channel(world.primaries[0]) as ch:
        link.stall()
        await ch.write(0x0A00, 0, first)
        await _until_lag_over_limit(ch)
        retried = asyncio.create_task(ch.write(0x0A00, SLOT, second))
        async with channel(world.primaries[0]) as watcher:
            while (await watcher.status())["counters"]["lag_busy_writes"] < 2:
                assert not retried.done(), "accepted while the lag was over max_lag_s"
        assert ch.busy_retries >= 2
        link.heal()
        await retried
        # Below the limit again: a write is served at once.
        await ch.write(0x0A00, 2 * SLOT, b"third".ljust(SLOT, b"."))
    assert world.secondary is not None
    async with channel(world.secondary) as sec:
        sdev = world.secondary_device(0, 0)
        while await sec.read(sdev, 2 * SLOT, SLOT) != b"third".ljust(SLOT, b"."):
            pass  # async: the secondary applies what arrives; read until the last is there
        assert await sec.read(sdev, 0, SLOT) == first
        assert await sec.read(sdev, SLOT, SLOT) == second
