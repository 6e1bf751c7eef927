# Change maps kept by an older controller, one file per device, are moved into the one file
# per controller at start: a resume after the restart copies exactly the tracks written while
# the pair was suspended, and the old files are gone.
from __future__ import annotations

import time

from mirror_world import all_ok, build, channel, establish, stop

from remcopy.controller.changemap import FILE_NAME, ChangeMap, ChangeMapFile
from remcopy.groups.model import MARGIN_S_DEFAULT
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp

TRACK = 65536


async def test_per_device_maps_are_migrated_at_start_and_their_bits_copied(tmp_path):
    world = await build(tmp_path, volumes=3, size_bytes=8 * TRACK)
    primary = world.primaries[0]
    items = world.pair_items(0, CopyMode.SYNC)
    folder = tmp_path / "cntla0" / "changemaps"
    try:
        await establish(world, 0, CopyMode.SYNC)
        async with channel(primary) as ch:
            at_ns = time.time_ns() + int(MARGIN_S_DEFAULT * 1e9)
            all_ok(await ch.pair_op(PairOp.SUSPEND, items, at_ns=at_ns))
            await ch.write(items[0].device, 3 * TRACK, b"a" * 4096)
            await ch.write(items[2].device, 5 * TRACK, b"c" * 4096)
        await primary.stop()
        # What an older controller left: one file per device, same bits, no controller.map.
        maps = ChangeMapFile(folder, {item.device: (8, TRACK) for item in items})
        bits = {key: list(one.dirty_tracks()) for key, one in maps.maps.items()}
        maps.close()
        assert bits == {items[0].device: [3], items[1].device: [], items[2].device: [5]}
        (folder / FILE_NAME).unlink()
        for key, tracks in bits.items():
            own = ChangeMap(folder / f"{key:04X}.map", 8, TRACK)
            for track in tracks:
                own.mark(track * TRACK, 1)
            own.close()
        await primary.start()
        assert sorted(p.name for p in folder.iterdir()) == [FILE_NAME]
        assert "change maps: 3 moved from their own files" in primary.log_text()
        async with channel(primary) as ch:
            events = await ch.subscribe()
            before = (await ch.status())["counters"]["tracks_copied"]
            all_ok(await ch.pair_op(PairOp.RESUME, items))
            statuses = await ch.query(tuple(item.device for item in items))
            while {s.state for s in statuses} != {PairState.DUPLEX}:
                await events.wait_for(r"-> DUPLEX")
                statuses = await ch.query(tuple(item.device for item in items))
            assert (await ch.status())["counters"]["tracks_copied"] - before == 2
        assert world.secondary is not None
        async with channel(world.secondary) as sec:
            assert await sec.read(items[0].peer_device, 3 * TRACK, 4096) == b"a" * 4096
            assert await sec.read(items[2].peer_device, 5 * TRACK, 4096) == b"c" * 4096
    finally:
        await stop(world)
