# Remote copy between real controllers: establish, mirror under load, identical volumes.
from __future__ import annotations

import asyncio
import random

import pytest
from mirror_world import all_ok, build, channel, digest, stop

from remcopy.errors import WriteProtected
from remcopy.states import CopyMode, PairRole, PairState
from remcopy.wire.native import PairOp
from suspend_at import suspend_soon


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path)
    yield w
    await stop(w)


async def _random_load(ch, devices, size, rng, writes):
    async def one():
        device = rng.choice(devices)
        length = rng.randint(1, 150_000)
        offset = rng.randrange(0, size - length)
        await ch.write(device, offset, rng.randbytes(length))

    await asyncio.gather(*(one() for _ in range(writes)))


@pytest.mark.parametrize("mode", [CopyMode.SYNC, CopyMode.ASYNC, CopyMode.SEMISYNC])
async def test_every_mode_makes_identical_volumes_under_load(world, mode):
    """Data written during and after the initial copy is on the secondary, byte for byte."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    primary = world.primaries[0]
    devices = [0x0A00 + c for c in range(world.volumes)]
    async with channel(primary) as ch:
        # Some data before the pair exists, to be moved by the initial copy.
        await _random_load(ch, devices, world.size_bytes, rng, 40)
        events = await ch.subscribe()
        all_ok(await ch.pair_op(PairOp.ESTABLISH, world.pair_items(0, mode)))
        load = asyncio.create_task(_random_load(ch, devices, world.size_bytes, rng, 200))
        duplex = set()
        while len(duplex) < world.volumes:
            duplex.add((await events.wait_until(lambda e: e.new is PairState.DUPLEX)).device)
        await load
        await _random_load(ch, devices, world.size_bytes, rng, 100)
        statuses = await ch.query(tuple(devices))
        assert {s.state for s in statuses} == {PairState.DUPLEX}
        assert {s.role for s in statuses} == {PairRole.PRIMARY}
        # Wait for the last updates to be confirmed: a suspend at T drains everything < T.
        await suspend_soon(ch, world.pair_items(0, mode))
        primary_digests = [await digest(ch, d, world.size_bytes) for d in devices]
    async with channel(world.secondary) as sec:
        secondary_digests = [
            await digest(sec, world.secondary_device(0, c), world.size_bytes)
            for c in range(world.volumes)
        ]
        statuses = await sec.query(
            tuple(world.secondary_device(0, c) for c in range(world.volumes))
        )
        assert {s.state for s in statuses} == {PairState.SUSPENDED}
        assert {s.role for s in statuses} == {PairRole.SECONDARY}
        with pytest.raises(WriteProtected, match="secondary of a pair in SUSPENDED"):
            await sec.write(world.secondary_device(0, 0), 0, b"x")
    assert primary_digests == secondary_digests


async def test_establish_refuses_bad_pairs_and_keeps_the_rest(world):
    """A too-small or already-paired secondary is refused per pair; the others establish."""
    async with channel(world.primaries[0]) as ch:
        items = list(world.pair_items(0, CopyMode.SYNC))
        all_ok(await ch.pair_op(PairOp.ESTABLISH, (items[0],)))
        # Item 1 names a secondary device that does not exist; item 2 a secondary already used.
        items[1] = type(items[1])(
            device=items[1].device,
            peer_serial=items[1].peer_serial,
            peer_device=0x2077,
            mode=CopyMode.SYNC,
        )
        items[2] = type(items[2])(
            device=items[2].device,
            peer_serial=items[2].peer_serial,
            peer_device=items[0].peer_device,
            mode=CopyMode.SYNC,
        )
        reply = await ch.pair_op(PairOp.ESTABLISH, tuple(items[1:]))
        by_device = {r.device: r for r in reply.results}
        assert "no device" in by_device[0x0A01].message
        assert "cannot establish" in by_device[0x0A02].message
        assert "pair is PENDING" in by_device[0x0A02].message or "DUPLEX" in (
            by_device[0x0A02].message
        )
        assert by_device[0x0A03].code == 0
        statuses = {s.device: s.state for s in await ch.query((0x0A01, 0x0A02))}
        assert statuses == {0x0A01: PairState.SIMPLEX, 0x0A02: PairState.SIMPLEX}
