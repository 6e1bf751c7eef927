# The secondary journal of an async consistency group is a run of segment files
# (controller/sjournal.py, segmentlog.py): under a steady stream old segments are deleted whole
# once nothing in them waits, and what is left still replays after a kill -9.
# Real controllers: more than a segment's worth of updates goes through one async group.
from __future__ import annotations

import asyncio
from pathlib import Path

from remcopy.controller.segmentlog import SEGMENT_BYTES_DEFAULT, segment_numbers
from remcopy.states import CopyMode
from remcopy.wire.native import PairOp
from remcopy.workload.faultworld import VOLUME_BYTES, Shape, World, digest, world

BLOCK = 64 * 1024


async def _cut(w: World) -> dict[str, int]:
    reply = await w.session.channels["cntlb"].pair_op(
        PairOp.GROUP_CUT, (), options={"group": w.group.name}
    )
    return reply.document


async def _nothing_waits(w: World) -> dict[str, int]:
    """Until C passed every update that arrived (each round a real GROUP_CUT)."""
    for _ in range(10_000):
        cut = await _cut(w)
        if cut["waiting"] == 0 and cut["applied_ns"] > 0:
            return cut
    raise AssertionError(f"updates still wait for C: {cut}")


async def _retired(w: World, at_least: int) -> int:
    """Until the secondary counted `at_least` retired segments (each round a real STATUS)."""
    for _ in range(10_000):
        counters = (await w.session.channels["cntlb"].status())["counters"]
        if int(counters.get("async_segments_retired", 0)) >= at_least:
            return int(counters["async_segments_retired"])
    raise AssertionError(f"segments not retired: {counters}")


async def test_old_segments_are_deleted_and_what_is_left_replays_after_kill_9(tmp_path: Path):
    shape = Shape(primaries=1, volumes=1, mode=CopyMode.ASYNC)
    async with world(tmp_path, shape) as w:
        pair = w.group.pairs[0]
        ch = w.session.channels[pair.primary_controller]
        device = pair.primary.device_key
        total = SEGMENT_BYTES_DEFAULT * 5 // 2  # two and a half segments of updates
        offsets = [(i * BLOCK) % VOLUME_BYTES for i in range(total // BLOCK)]
        pending = iter(offsets)

        async def writer() -> None:
            for offset in pending:
                await ch.write(device, offset, offset.to_bytes(8, "big") * (BLOCK // 8))

        await asyncio.gather(*(writer() for _ in range(16)))
        await _nothing_waits(w)
        assert await _retired(w, 2) >= 2
        folder = tmp_path / "cntlb" / "sjournal"
        stem = w.group.name.encode().hex()
        kept = segment_numbers(folder, stem)
        assert kept and kept[0] >= 3, kept  # the first two segments are gone
        assert sum((folder / f"{stem}.{n:08d}.jnl").stat().st_size for n in kept) <= (
            SEGMENT_BYTES_DEFAULT + 2 * BLOCK
        )
        before = await _cut(w)
        await w.secondaries[0].kill()  # SIGKILL: the kept segments are all a restart has
        await w.secondaries[0].start()
        after = await _cut(w)
        assert after["applied_ns"] >= before["applied_ns"]  # C is in a kept segment
        await _nothing_waits(w)
        primary = await digest(ch, pair.primary)
        secondary = await digest(w.session.channels["cntlb"], pair.secondary)
        assert primary == secondary
