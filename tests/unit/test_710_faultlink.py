# The fault link (workload/faultlink.py) over real TCP on 127.0.0.1: bytes arrive whole and in
# order in every mode; in latency mode no chunk arrives before the latency has passed since
# the link read it, the link goes on reading while chunks wait (they are in flight together),
# and a retune delivers what waits; a stall holds everything, a heal delivers it; a cut ends
# the connection. (That a latency link carries more than one chunk per latency is a rate:
# bench/mirror.py measures it, `async_delay30_drained_mib_s`.)
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from remcopy.workload.faultlink import FaultLink

LATENCY_S = 0.05
CHUNKS = 8


@asynccontextmanager
async def linked() -> AsyncIterator[
    tuple[FaultLink, asyncio.StreamWriter, asyncio.Queue[tuple[float, bytes]]]
]:
    """A sink server behind a fault link; the client's writer; what the sink received, with
    when (time.monotonic) each read returned."""
    received: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.put_nowait((time.monotonic(), data))
        received.put_nowait((time.monotonic(), b""))
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    async with server, FaultLink(server.sockets[0].getsockname()[:2]) as link:
        _, writer = await asyncio.open_connection(*link.address)
        try:
            yield link, writer, received
        finally:
            writer.close()


async def _collect(received: asyncio.Queue[tuple[float, bytes]], size: int) -> list[float]:
    """Read until `size` bytes came; the arrival time of every byte's read, per byte offset
    of each chunk's first byte, and check the bytes are the ones sent."""
    got = b""
    times: list[float] = []
    while len(got) < size:
        at, data = await received.get()
        assert data, "the link ended the stream early"
        times.extend([at] * len(data))
        got += data
    assert got == _payload(size)
    return times


def _payload(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


async def test_latency_delivers_every_chunk_in_order_no_earlier_than_its_latency():
    async with linked() as (link, writer, received):
        link.latency(LATENCY_S)
        chunk = 4096
        sent: list[float] = []
        data = _payload(chunk * CHUNKS)
        for i in range(CHUNKS):
            sent.append(time.monotonic())
            writer.write(data[i * chunk : (i + 1) * chunk])
            await writer.drain()
        arrived = await _collect(received, len(data))
    for i in range(CHUNKS):
        # The link read chunk i after it was sent: it cannot arrive before sent + latency.
        assert arrived[i * chunk] >= sent[i] + LATENCY_S
    assert link.stats.bytes_forwarded == len(data)


async def test_latency_keeps_chunks_in_flight_together_and_a_heal_delivers_them():
    """Chunks written one after another, each after the link read the one before, are all
    waiting in the link at once; a heal delivers them without waiting out the latency."""
    async with linked() as (link, writer, received):
        link.latency(3600.0)  # nothing is delivered during this test
        for i in range(CHUNKS):
            writer.write(_payload(1024))
            await writer.drain()
            await link.until_read((i + 1) * 1024)
        assert link.stats.bytes_forwarded == 0
        assert link.in_flight_bytes == CHUNKS * 1024
        link.heal()
        await _collect_all(received, CHUNKS * 1024)


async def _collect_all(received: asyncio.Queue[tuple[float, bytes]], size: int) -> None:
    got = 0
    while got < size:
        _, data = await received.get()
        assert data
        got += len(data)


async def test_a_stall_holds_the_bytes_and_a_heal_delivers_them_in_order():
    async with linked() as (link, writer, received):
        link.stall()
        data = _payload(300_000)
        writer.write(data)
        await writer.drain()
        await link.until_read(len(data))
        assert received.empty() and link.stats.bytes_forwarded == 0
        link.heal()
        await _collect(received, len(data))


async def test_a_cut_ends_the_connection():
    async with linked() as (link, writer, received):
        writer.write(b"before")
        await writer.drain()
        assert (await received.get())[1] == b"before"
        link.cut()
        assert (await received.get())[1] == b""  # the sink saw the end of the stream
