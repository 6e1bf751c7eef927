# Pair-state commits run off the event loop: while a commit of many devices is held open on
# the writer thread (the test-only commit_pause_dir), host writes to a device outside it are
# served; writes to the devices a resume changes wait for the commit; writes to devices being
# sealed do not (armed at T and SUSPENDED at T treat them alike). Asserted by order, with the
# commit held until the test lets it go.
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from mirror_world import all_ok, build, channel, establish, stop

from remcopy.groups.model import MARGIN_S_DEFAULT
from remcopy.states import CopyMode, PairState
from remcopy.wire import native
from remcopy.wire.native import PairOp

BLOCK = 4096


def _read_line(path: Path) -> str:
    with path.open() as fifo:
        return fifo.readline().strip()


def _write_line(path: Path, line: str) -> None:
    with path.open("w") as fifo:
        fifo.write(line + "\n")


class CommitGate:
    """The test's side of commit_pause_dir: holds the primary's commits one at a time."""

    def __init__(self, folder: Path) -> None:
        self.paused = folder / "paused"
        self.release_fifo = folder / "release"

    def close(self) -> None:
        os.mkfifo(self.release_fifo)
        os.mkfifo(self.paused)

    async def held(self, wanted: str) -> str:
        """Let commits through until one whose summary names `wanted`; it stays held."""
        while True:
            line = await asyncio.to_thread(_read_line, self.paused)
            if wanted in line:
                return line
            await self.release()

    async def release(self) -> None:
        await asyncio.to_thread(_write_line, self.release_fifo, "go")

    async def open(self) -> None:
        """Release the held commit and hold no more."""
        self.paused.unlink()
        await self.release()
        self.release_fifo.unlink()


@pytest.mark.parametrize("volumes", [4, 1000])
async def test_host_writes_outside_a_held_commit_are_served(tmp_path, volumes):
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    world = await build(
        tmp_path,
        volumes=volumes,
        size_bytes=16 * BLOCK,
        primary_settings={"commit_pause_dir": str(pause_dir)},
        testing=True,
    )
    primary = world.primaries[0]
    gate = CommitGate(pause_dir)
    items = world.pair_items(0, CopyMode.SYNC)
    changed, outside = items[:-1], items[-1].device
    first = changed[0].device
    try:
        await establish(world, 0, CopyMode.SYNC)
        async with channel(primary) as ch:
            # A suspend of every device but one: its seal commit is held open.
            gate.close()
            at_ns = time.time_ns() + int(MARGIN_S_DEFAULT * 1e9)
            suspend = asyncio.create_task(ch.pair_op(PairOp.SUSPEND, changed, at_ns=at_ns))
            held = await gate.held("SUSPENDED:")
            assert held == f"devices={len(changed)} states=SUSPENDED:{len(changed)}"
            # Sent first: a write stamped after T to a device being sealed is recorded, not
            # held; then a mirrored write to the device outside the commit.
            sealed_write = ch.send_nowait(
                native.WriteRequest(device=first, offset=0, data=b"s" * BLOCK, timestamp_ns=at_ns)
            )
            await ch.write(outside, 0, b"o" * BLOCK)
            await asyncio.wait_for(asyncio.shield(sealed_write), 60)
            assert not suspend.done()
            await gate.open()
            reply = await suspend
            all_ok(reply)
            assert {r.state for r in reply.results} == {PairState.SUSPENDED}

            # A resume: the devices it changes wait for its commit, the one outside does not.
            gate.close()
            resume = asyncio.create_task(ch.pair_op(PairOp.RESUME, changed))
            held = await gate.held("PENDING:")
            # One transaction: the device written after T copies (PENDING); the others had
            # nothing to copy and go straight to DUPLEX (RESUME and COPY_DONE together).
            rest = len(changed) - 1
            assert held == f"devices={len(changed)} states=DUPLEX:{rest},PENDING:1"
            waiting = ch.send_nowait(
                native.WriteRequest(
                    device=first, offset=BLOCK, data=b"w" * BLOCK, timestamp_ns=time.time_ns()
                )
            )
            await ch.write(outside, BLOCK, b"p" * BLOCK)
            # Sent before the write just acknowledged, and still waiting for the commit.
            assert not waiting.done()
            assert not resume.done()
            assert (await ch.status())["counters"]["commit_waits"] == 1
            await gate.open()
            await asyncio.wait_for(asyncio.shield(waiting), 60)
            all_ok(await resume)
        assert world.secondary is not None
        async with channel(world.secondary) as sec:
            assert await sec.read(world.secondary_device(0, volumes - 1), 0, BLOCK) == b"o" * BLOCK
            assert await sec.read(world.secondary_device(0, volumes - 1), BLOCK, BLOCK) == (
                b"p" * BLOCK
            )
    finally:
        await stop(world)


async def test_a_resume_with_nothing_to_copy_goes_to_DUPLEX_in_one_transaction_a_side(tmp_path):
    """Suspended with no write since, a resume answers DUPLEX on both sides at once: each
    controller's RESUME and COPY_DONE share one durable transaction, and no copy runs."""
    world = await build(tmp_path, volumes=2, size_bytes=16 * BLOCK)
    primary, secondary = world.primaries[0], world.secondary
    assert secondary is not None
    items = world.pair_items(0, CopyMode.SYNC)
    try:
        await establish(world, 0, CopyMode.SYNC)
        async with channel(primary) as ch, channel(secondary) as sec:
            at_ns = time.time_ns() + int(MARGIN_S_DEFAULT * 1e9)
            all_ok(await ch.pair_op(PairOp.SUSPEND, items, at_ns=at_ns))
            ours = (await ch.status())["counters"]
            theirs = (await sec.status())["counters"]
            reply = await ch.pair_op(PairOp.RESUME, items)
            all_ok(reply)
            assert {r.state for r in reply.results} == {PairState.DUPLEX}
            statuses = await sec.query(tuple(item.peer_device for item in items))
            assert {s.state for s in statuses} == {PairState.DUPLEX}
            after_ours = (await ch.status())["counters"]
            after_theirs = (await sec.status())["counters"]
            assert after_ours["state_transactions"] - ours["state_transactions"] == 1
            assert after_theirs["state_transactions"] - theirs["state_transactions"] == 1
            assert after_ours["state_commits"] - ours["state_commits"] == 2  # RESUME, COPY_DONE
            assert after_ours["tracks_copied"] == ours["tracks_copied"]
    finally:
        await stop(world)
