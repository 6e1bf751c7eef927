# A fault-injecting link: a small asyncio TCP proxy to put between two controllers.
#
# Why: there is no tc/netem here (DESIGN.md section 9), and a consistency proof is only as
# good as the faults it survived. A primary's peer address points at the proxy; the proxy
# forwards to the secondary and, on command or on a seeded random schedule, delays, stalls
# (holds the bytes: the TCP connection stays up but nothing arrives — an ack timeout), or
# cuts (closes every connection and refuses new ones). Traffic stays on 127.0.0.1.
#
# Rules this module keeps:
# - Every task belongs to the proxy's TaskGroup; `close()` ends them all.
# - Bytes are never reordered or altered: a link either delivers in order, late, or not at
#   all — the faults a real network gives a TCP stream.
# - Bounded: a stalled direction holds at most STALL_BUFFER_MAX_BYTES, then stops reading.
from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from dataclasses import dataclass, field
from typing import Final

STALL_BUFFER_MAX_BYTES: Final = 64 * 1024 * 1024
CHUNK_BYTES: Final = 256 * 1024


class LinkMode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    STALL = "stall"
    CUT = "cut"


@dataclass
class LinkStatistics:
    connections: int = 0
    bytes_forwarded: int = 0
    cuts: int = 0
    stalls: int = 0
    delays: int = 0
    faults: list[str] = field(default_factory=list)


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
        self.rng = random.Random(seed)
        self.seed = seed
        self.stats = LinkStatistics()
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

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

    # Faults, on command...

    def cut(self) -> None:
        """Close every connection and refuse new ones until `heal()`."""
        self.mode = LinkMode.CUT
        self.stats.cuts += 1
        self.stats.faults.append("cut")
        self._close_all()

    def stall(self) -> None:
        """Keep connections up but deliver nothing until `heal()`."""
        self.mode = LinkMode.STALL
        self.stats.stalls += 1
        self.stats.faults.append("stall")
        self._flowing.clear()

    def delay(self, seconds: float) -> None:
        self.mode = LinkMode.DELAY
        self.delay_s = seconds
        self.stats.delays += 1
        self.stats.faults.append(f"delay {seconds * 1e3:.1f} ms")

    def heal(self) -> None:
        self.mode = LinkMode.PASS
        self.delay_s = 0.0
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
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(CHUNK_BYTES)
                if not data:
                    break
                await self._flowing.wait()
                if self.mode is LinkMode.CUT:
                    break
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
            dst.close()
            self._writers.discard(dst)
