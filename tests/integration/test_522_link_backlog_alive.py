# A link whose peer answers steadily is alive however deep its backlog: an async pair on a slow
# link builds more backlog than the heartbeat and acknowledgement timeouts, and stays DUPLEX
# (a heartbeat or batch waits behind the backlog while answers come; a silent peer still fails
# the link within the timeout of its last answer, test_520).
from __future__ import annotations

import asyncio

import pytest
from mirror_world import channel, digest, one_pair_over_a_fault_link

from remcopy.states import CopyMode, PairState

TIMEOUT_S = 1.0
WRITE = 64 * 1024


@pytest.fixture
async def slow_world(tmp_path):
    settings: dict[str, object] = {
        "ack_timeout_s": TIMEOUT_S,
        "heartbeat_timeout_s": TIMEOUT_S,
    }
    async with one_pair_over_a_fault_link(tmp_path, CopyMode.ASYNC, seed=5, settings=settings) as (
        world,
        link,
    ):
        yield world, link


async def test_a_backlog_deeper_than_the_timeouts_keeps_the_pair_duplex(slow_world):
    world, link = slow_world
    link.delay(0.02)  # about 12 MiB/s, each 4 MiB batch answered within a fraction of 1 s
    slots = world.size_bytes // WRITE
    deepest_ns = 0
    async with channel(world.primaries[0]) as ch:
        n = 0
        while deepest_ns <= 2.5 * TIMEOUT_S * 1e9:
            await asyncio.gather(
                *(
                    ch.write(0x0A00, ((n + i) % slots) * WRITE, bytes([(n + i) % 251]) * WRITE)
                    for i in range(16)
                )
            )
            n += 16
            (status,) = await ch.query((0x0A00,))
            assert status.state is PairState.DUPLEX, status
            deepest_ns = max(deepest_ns, status.lag_ns)
        link.heal()
        while True:
            (status,) = await ch.query((0x0A00,))
            assert status.state is PairState.DUPLEX, status
            if status.lag_bytes == 0:
                break
        primary = await digest(ch, 0x0A00, world.size_bytes)
        counters = (await ch.status())["counters"]
    assert world.secondary is not None
    async with channel(world.secondary) as sec:
        assert await digest(sec, world.secondary_device(0, 0), world.size_bytes) == primary
    assert counters["link_errors"] == 0, counters
