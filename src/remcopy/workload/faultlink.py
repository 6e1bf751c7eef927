# A fault-injecting link: a small asyncio TCP proxy to put between two controllers.
#
# Why: there is no tc/netem here (DESIGN.md section 9), and a consistency proof is only as
# good as the faults it survived. A primary's peer address points at the proxy; the proxy
# forwards to the secondary and, on command or on a seeded random schedule, delays, stalls
# (holds the bytes: the TCP connection stays up but nothing arrives — an ack timeout), or
# cuts (closes every connection and refuses new ones). Traffic stays on 127.0.0.1.
#
# Two kinds of delay:
# - `delay(s)`: a slow link. Each chunk (up to CHUNK_BYTES) waits s before it is forwarded,
#   one chunk at a time per direction, so the link also carries at most CHUNK_BYTES / s.
# - `latency(s)`: a long link. Each chunk is delivered s after it was read, however many are
#   in flight (a time-ordered queue per direction and one task delivering from it): the bytes
#   are late, the bandwidth is the proxy's. What a WAN's distance does.
#
# Theory of operation: per connection, one TaskGroup; per direction, a reading task puts the
# chunks it reads, stamped with the time read, on a queue, and a delivering task forwards them
# in order as the mode says (at once; after s each, one at a time; at read time + s; not while
# stalled).
#
# Rules this module keeps:
# - Every task belongs to a TaskGroup of its connection, and `close()` ends them all.
# - Bytes are never reordered or altered: a link either delivers in order, late, or not at
#   all — the faults a real network gives a TCP stream.
# - Bounded: a direction holds at most STALL_BUFFER_MAX_BYTES read and not yet delivered,
#   then stops reading (TCP pushes back on the sender).
from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

STALL_BUFFER_MAX_BYTES: Final = 64 * 1024 * 1024
CHUNK_BYTES: Final = 256 * 1024


class LinkMode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    LATENCY = "latency"
    STALL = "stall"
    CUT = "cut"


@dataclass
class LinkStatistics:
    connections: int = 0
    bytes_forwarded: int = 0
    bytes_read: int = 0
    cuts: int = 0
    stalls: int = 0
    delays: int = 0
    faults: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Direction:
    """The chunks one direction read and has not delivered yet, oldest first."""

    chunks: deque[tuple[float, bytes]] = field(default_factory=deque)
    """(when read, time.monotonic(); the bytes); b"" ends the direction."""
    held_bytes: int = 0
    delivering: bool = True
    """False once the delivering task ended (the reader stops too)."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, at: float, data: bytes) -> None:
        self.chunks.append((at, data))
        self.held_bytes += len(data)
        self.arrived.set()
        if self.held_bytes >= STALL_BUFFER_MAX_BYTES:
            self.room.clear()

    def take(self, limit: int) -> bytes:
        """The oldest chunks, joined, up to `limit` bytes (at least one chunk); never b""
        (the end stays queued)."""
        parts: list[bytes] = []
        size = 0
        while (
            self.chunks
            and self.chunks[0][1]
            and (not parts or size + len(self.chunks[0][1]) <= limit)
        ):
            data = self.chunks.popleft()[1]
            parts.append(data)
            size += len(data)
        self.held_bytes -= size
        if self.held_bytes < STALL_BUFFER_MAX_BYTES:
            self.room.set()
        return b"".join(parts)


class FaultLink:
    """`async with FaultLink(target) as link:` listens on `link.address` and forwards."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int | None = None,
    ) -> None:
        self.target = target
        self._listen = listen
        self.mode = LinkMode.PASS
        self.delay_s = 0.0
        self.latency_s = 0.0
        self.rng = random.Random(seed)
        self.seed = seed
        self.stats = LinkStatistics()
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._directions: set[_Direction] = set()
        self._read_more = asyncio.Event()
        self._retuned = asyncio.Event()
        """Set at every change of mode: a chunk waiting for its latency looks again."""

    def __repr__(self) -> str:
        return (
            f"<FaultLink {self.address} -> {self.target} {self.mode.value} "
            f"connections={self.stats.connections} bytes={self.stats.bytes_forwarded}>"
        )

    async def __aenter__(self) -> FaultLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def endpoint(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self._listen)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def in_flight_bytes(self) -> int:
        """Bytes the link read and has not delivered yet, every connection and direction."""
        return sum(d.held_bytes for d in self._directions)

    async def until_read(self, total_bytes: int) -> None:
        """Return once the link has read `total_bytes` from its senders (all connections)."""
        while self.stats.bytes_read < total_bytes:
            self._read_more.clear()
            await self._read_more.wait()

    # Faults, on command...

    def cut(self) -> None:
        """Close every connection and refuse new ones until `heal()`."""
        self._retuned.set()
        self.mode = LinkMode.CUT
        self.stats.cuts += 1
        self.stats.faults.append("cut")
        self._close_all()

    def stall(self) -> None:
        """Keep connections up but deliver nothing until `heal()`."""
        self._retuned.set()
        self.mode = LinkMode.STALL
        self.stats.stalls += 1
        self.stats.faults.append("stall")
        self._flowing.clear()

    def delay(self, seconds: float) -> None:
        """A slow link: each chunk waits `seconds`, one chunk at a time per direction."""
        self._retuned.set()
        self.mode = LinkMode.DELAY
        self.delay_s = seconds
        self.latency_s = 0.0
        self.stats.delays += 1
        self.stats.faults.append(f"delay {seconds * 1e3:.1f} ms")

    def latency(self, seconds: float) -> None:
        """A long link: each chunk is delivered `seconds` after it was read, many in flight."""
        self._retuned.set()
        self.mode = LinkMode.LATENCY
        self.latency_s = seconds
        self.delay_s = 0.0
        self.stats.delays += 1
        self.stats.faults.append(f"latency {seconds * 1e3:.1f} ms")

    def heal(self) -> None:
        self._retuned.set()
        self.mode = LinkMode.PASS
        self.delay_s = 0.0
        self.latency_s = 0.0
        self._flowing.set()

    def random_fault(self) -> str:
        """One fault chosen with the link's seeded generator; returns its name."""
        choice = self.rng.choice(["cut", "stall", "delay"])
        if choice == "cut":
            self.cut()
        elif choice == "stall":
            self.stall()
        else:
            self.delay(self.rng.uniform(0.001, 0.05))
        return choice

    # Forwarding...

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is LinkMode.CUT:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.stats.connections += 1
        self._writers.update((writer, up_writer))
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # close() cancels the connection, its TaskGroup with it
        try:
            async with asyncio.TaskGroup() as tasks:
                for src, dst in ((reader, up_writer), (up_reader, writer)):
                    direction = _Direction()
                    direction.room.set()
                    self._directions.add(direction)
                    tasks.create_task(self._read(src, direction))
                    tasks.create_task(self._deliver(direction, dst))
        finally:
            self._tasks.discard(task)
            self._directions.difference_update(
                d for d in list(self._directions) if not d.delivering
            )

    async def _read(self, src: asyncio.StreamReader, direction: _Direction) -> None:
        try:
            while True:
                await direction.room.wait()
                if not direction.delivering:
                    return
                data = await src.read(CHUNK_BYTES)
                direction.put(time.monotonic(), data)
                self.stats.bytes_read += len(data)
                self._read_more.set()
                if not data:
                    return
        except (ConnectionError, OSError):
            direction.put(time.monotonic(), b"")

    async def _latency_passed(self, read_at: float) -> bool:
        """Return once the latency has passed since `read_at` (True), or the link was retuned
        to another mode (False). (A loop's timer may fire a little early: the time is checked
        again after it.)"""
        while (
            self.mode is LinkMode.LATENCY
            and (left := read_at + self.latency_s - time.monotonic()) > 0
        ):
            self._retuned.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._retuned.wait()
        return self.mode is LinkMode.LATENCY

    async def _deliver(self, direction: _Direction, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                while not direction.chunks:
                    direction.arrived.clear()
                    await direction.arrived.wait()
                await self._flowing.wait()
                if self.mode is LinkMode.CUT:
                    break
                read_at, first = direction.chunks[0]
                if not first:
                    break  # the sender finished: so does this direction
                if self.mode is LinkMode.LATENCY:
                    # Each chunk at its own time: the ones behind it are in flight meanwhile.
                    if not await self._latency_passed(read_at):
                        continue  # retuned meanwhile: deliver (or hold) as the link is now
                    data = direction.take(len(first))
                else:
                    data = direction.take(CHUNK_BYTES)
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)  # the fault itself: a slow link
                if dst.is_closing():  # cut meanwhile: uvloop raises on a closed transport
                    break
                dst.write(data)
                self.stats.bytes_forwarded += len(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            direction.delivering = False
            direction.room.set()  # a reader waiting for room ends
            dst.close()
            self._writers.discard(dst)
