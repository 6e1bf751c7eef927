# FLUSH and FUA reach the disk: the controller process, watched by strace, calls fdatasync on
# the volume's file for a host FLUSH and for a write with FUA, and msync on the change map of
# a suspended pair (whose bits are what a resume copies after a power loss); a plain write
# calls neither. Syscalls are what a test can see of durability: kill -9 keeps the page cache,
# so only a power loss would show a missing fdatasync.
from __future__ import annotations

import re
from pathlib import Path

from mirror_world import World, build, channel, establish, stop

from remcopy.controller.process import ControllerProcess
from remcopy.states import CopyMode, PairState
from suspend_at import suspend_soon
from syscalls import syscalls


def _count(lines: list[str], call: str, path: str) -> int:
    """Calls of `call` on the file descriptor of `path` (strace -y names it)."""
    pattern = re.compile(rf"\b{call}\(\d+<([^>]*)>")
    return sum(1 for line in lines if (m := pattern.search(line)) and m.group(1) == path)


def _msyncs(lines: list[str], mapped: range) -> int:
    """msync calls of pages inside the mapping `mapped` (start to end address)."""
    pattern = re.compile(r"\bmsync\((0x[0-9a-f]+),")
    return sum(1 for line in lines if (m := pattern.search(line)) and int(m.group(1), 16) in mapped)


def _mapped_at(proc: ControllerProcess, path: str) -> range:
    """Where the controller mapped `path` (the change-map file), from /proc/PID/maps."""
    assert proc.process is not None
    for line in Path(f"/proc/{proc.process.pid}/maps").read_text().splitlines():
        if line.endswith(path):
            start, end = line.split()[0].split("-")
            return range(int(start, 16), int(end, 16))
    raise AssertionError(f"{path} is not mapped")


async def test_flush_and_fua_call_fdatasync_and_msync_the_change_map(tmp_path):
    """FLUSH: fdatasync of the volume and msync of its change map; FUA: fdatasync; a plain
    write: neither."""
    world: World = await build(tmp_path, volumes=1)
    try:
        primary = world.primaries[0]
        await establish(world, 0, CopyMode.SYNC)
        volume = str(tmp_path / "cntla0" / "volumes" / "P00000.vol")
        changemap = _mapped_at(primary, str(tmp_path / "cntla0" / "changemaps" / "controller.map"))
        async with channel(primary) as ch:
            await suspend_soon(ch, world.pair_items(0, CopyMode.SYNC))
            assert (await ch.query((0x0A00,)))[0].state is PairState.SUSPENDED
            async with syscalls(primary, tmp_path / "plain.trace") as plain:
                await ch.write(0x0A00, 0, b"p" * 4096)
            async with syscalls(primary, tmp_path / "flush.trace") as flushed:
                await ch.write(0x0A00, 65536, b"f" * 4096)
                await ch.flush((0x0A00,))
            async with syscalls(primary, tmp_path / "fua.trace") as fua:
                await ch.write(0x0A00, 131072, b"u" * 4096, fua=True)
    finally:
        await stop(world)
    assert _count(plain, "fdatasync", volume) == 0, plain
    assert _count(flushed, "fdatasync", volume) >= 1, flushed
    assert _msyncs(plain, changemap) == 0, plain
    assert _msyncs(flushed, changemap) >= 1, flushed
    assert _count(fua, "fdatasync", volume) >= 1, fua
