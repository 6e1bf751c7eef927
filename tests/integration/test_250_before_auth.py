# Before authentication (DESIGN.md section 6, docs/security.md) against a real controller: caps
# on connections that have not authenticated, per listener and per address, on the native and
# the NBD port; the handshake deadline; and a flood of 1,000 hostile connections (half-open,
# slow, garbage) with the controller's memory bounded while a legitimate host is served.
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from common import HOST, SECRET, Start, controller_spec
from helpers import RawClient
from remcopy.controller.admission import LOG_INTERVAL_S
from remcopy.controller.process import ControllerProcess
from remcopy.errors import TooManyConnections
from remcopy.wire import native

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _rss_kib(proc: ControllerProcess) -> int:
    """The controller's resident memory (VmRSS in /proc/PID/status), KiB."""
    for line in Path(f"/proc/{proc.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@asynccontextmanager
async def _held(conns: list[Conn]) -> AsyncIterator[list[Conn]]:
    try:
        yield conns
    finally:
        for _, writer in conns:
            _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()
    writer.close()


async def _connect(address: tuple[str, int], source: str) -> Conn:
    return await asyncio.open_connection(*address, local_addr=(source, 0))


async def _serves(proc: ControllerProcess) -> None:
    """A legitimate host (over TLS when the controller speaks it) authenticates, writes and
    reads back."""
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        await channel.write(0x0A00, 0, b"\x5a" * 4096)
        assert await channel.read(0x0A00, 0, 4096) == b"\x5a" * 4096


async def _authenticate(conn: Conn) -> None:
    """A held connection completes the handshake as the host: WELCOME is sent after its
    place among the unauthenticated ones was freed."""
    client = RawClient(*conn)
    challenge = await client.hello(HOST)
    assert isinstance(challenge, native.Challenge)
    assert isinstance(await client.prove(SECRET.encode(), challenge), native.Welcome)


async def _serves_from(proc: ControllerProcess, source: str) -> None:
    client = RawClient(*await _connect(proc.address, source))
    try:
        challenge = await client.hello(HOST)
        assert isinstance(challenge, native.Challenge), challenge
        assert isinstance(await client.prove(SECRET.encode(), challenge), native.Welcome)
    finally:
        _close(client.writer)


async def _refusal(conn: Conn) -> native.Message | None:
    """The one frame a refused connection gets before the controller closes it (then closed
    here too)."""
    reader, writer = conn
    codec = native.Connection(native.Side.CLIENT)
    try:
        while True:
            event = codec.next_event()
            if isinstance(event, native.Message):
                return event
            if event is native.CLOSED:
                return None
            codec.receive_data(await reader.read(65536))
    finally:
        _close(writer)


CAPS = [
    # (setting, held connections' sources, the next one's source, its refusal)
    (
        "unauthenticated_per_address_max",
        ["127.0.0.2"] * 4,
        "127.0.0.2",
        "4 connections from 127.0.0.2 have not authenticated (the limit per address)",
    ),
    (
        "unauthenticated_max",
        [f"127.0.0.{n}" for n in range(2, 6)],
        "127.0.0.9",
        "4 connections have not authenticated (the limit)",
    ),
]
EACH_CAP = pytest.mark.parametrize(
    ("setting", "held_from", "next_from", "message"), CAPS, ids=["per-address", "per-listener"]
)


@EACH_CAP
async def test_a_cap_refuses_the_next_connection_and_a_host_is_still_served(
    tmp_path: Path,
    start_controller: Start,
    setting: str,
    held_from: list[str],
    next_from: str,
    message: str,
) -> None:
    spec = controller_spec(tmp_path, "cntla", 64015, plain_tcp=True)
    spec.settings[setting] = 4
    proc = await start_controller(spec)
    async with _held([await _connect(proc.address, source) for source in held_from]) as held:
        for _ in range(2):  # the second is counted, not logged (at most a line per 10 s)
            refused = await _refusal(await _connect(proc.address, next_from))
            assert isinstance(refused, native.ErrorReply)
            assert (refused.code, refused.message) == (TooManyConnections.code, message)
        if setting == "unauthenticated_per_address_max":
            await _serves(proc)  # from 127.0.0.1: its own count
        await _authenticate(held[0])  # one proves who it is: its place is free again
        await _serves_from(proc, next_from)
    # One line for the burst (two if the refusals fell in two intervals on a slow machine;
    # tests/unit/test_065_admission.py checks the interval itself).
    assert 1 <= proc.log_text().count(f"{message}; the next are logged at most") <= 2


async def test_a_connection_that_does_not_authenticate_in_time_is_closed(
    tmp_path: Path, start_controller: Start
) -> None:
    spec = controller_spec(tmp_path, "cntla", 64015, plain_tcp=True)
    spec.settings["handshake_timeout_s"] = 1.0
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    spec.nbd_allow = ["127.0.0.0/8"]
    proc = await start_controller(spec)
    assert proc.nbd_address is not None
    native_conn = await _connect(proc.address, "127.0.0.2")
    nbd_reader, nbd_writer = await _connect(proc.nbd_address, "127.0.0.2")
    refused = await _refusal(native_conn)
    assert isinstance(refused, native.ErrorReply)
    assert "no answer within 1.0 s" in refused.message
    await nbd_reader.read(18)  # the greeting; then nothing more from us
    assert await nbd_reader.read() == b""  # closed at the deadline
    _close(nbd_writer)
    assert "refused: no export chosen within 1.0 s" in proc.log_text()


FLOOD = 1000
# Three hostile addresses (never the host's 127.0.0.1): at most 3 x 16 of them are held on the
# native port (under its 64) and 3 x 4 on the NBD port (under its 16), so the host keeps its
# places.
SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


async def _hostile(address: tuple[str, int], index: int) -> Conn | None:
    """Half-open (nothing), slow (the start of a frame) or garbage; None if refused at once."""
    try:
        conn = await _connect(address, SOURCES[index % len(SOURCES)])
    except OSError:
        return None
    kind = index % 3
    if kind == 1:
        conn[1].write(b"RC")  # a frame that never comes
    elif kind == 2:
        conn[1].write(os.urandom(64))
    return conn


@pytest.mark.parametrize("listener", ["plain", "tls"])
async def test_a_thousand_hostile_connections_hold_bounded_memory_while_a_host_is_served(
    tmp_path: Path, start_controller: Start, listener: str
) -> None:
    """Half to the native port (plain TCP, or TLS: the hostile ones never finish a TLS
    handshake), half to NBD; the host is served over the same kind of link meanwhile."""
    spec = controller_spec(tmp_path, "cntla", 64015, plain_tcp=listener == "plain")
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    spec.nbd_allow = ["127.0.0.0/8"]  # the hostile addresses meet the caps, not the fence
    proc = await start_controller(spec)
    assert proc.nbd_address is not None
    await _serves(proc)
    started = time.monotonic()
    before = _rss_kib(proc)
    targets = [proc.address, proc.nbd_address]
    conns = [await _hostile(targets[i % 2], i) for i in range(FLOOD)]
    async with _held([c for c in conns if c is not None]):
        await _serves(proc)  # during the flood, from its own address
        host, port = proc.nbd_address
        info = await asyncio.create_subprocess_exec(
            "nbdinfo", "--size", f"nbd://{host}:{port}/CN0000", stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await info.communicate()
        assert (info.returncode, stdout) == (0, b"4194304\n")
        during = _rss_kib(proc)
    await _serves(proc)
    growth_mib = (during - before) / 1024
    # Before the caps, 1,000 half-open handshakes held 65 MB; now at most
    # 2 listeners x 64 connections are held at once, each a socket and a small buffer.
    assert growth_mib < 32, f"controller RSS grew {growth_mib:.1f} MiB under the flood"
    log = proc.log_text()
    # At most one line per listener per LOG_INTERVAL_S while refusing.
    intervals = int((time.monotonic() - started) / LOG_INTERVAL_S) + 1
    assert 1 <= log.count("the next are logged at most every") <= 2 * intervals, log
    print(f"controller VmRSS {before} KiB before, {during} KiB during {FLOOD} connections")


# The same caps on the TLS listener: a stranger's TLS handshake counts from the accept ---------

# The start of a TLS record holding a ClientHello, and no more: a handshake that never ends.
TLS_RECORD_START = b"\x16\x03\x01\x02\x00"


async def _half_open_tls(address: tuple[str, int], source: str, index: int) -> Conn:
    """A stranger that connects to the TLS listener and leaves its handshake half done:
    nothing at all, or the first bytes of a ClientHello."""
    conn = await _connect(address, source)
    if index % 2:
        conn[1].write(TLS_RECORD_START)
        await conn[1].drain()
    return conn


async def _closed_by_controller(conn: Conn) -> bool:
    """Whether the controller closed the connection without a byte of TLS (read to EOF)."""
    reader, writer = conn
    try:
        return await reader.read(65536) == b""
    except ConnectionResetError:
        return True
    finally:
        _close(writer)


async def _tls_authenticate(proc: ControllerProcess, conn: Conn) -> None:
    """A held connection finishes its TLS handshake as the host, then authenticates."""
    site = proc.site()
    assert site is not None
    reader, writer = conn
    await writer.start_tls(site.client(HOST, "host"), server_hostname=proc.name)
    await _authenticate((reader, writer))


async def _tls_serves_from(proc: ControllerProcess, source: str) -> None:
    await _tls_authenticate(proc, await _connect(proc.address, source))


@EACH_CAP
async def test_half_open_tls_handshakes_count_against_the_caps(
    tmp_path: Path,
    start_controller: Start,
    setting: str,
    held_from: list[str],
    next_from: str,
    message: str,
) -> None:
    """Strangers hold the cap with half-done TLS handshakes: the next connection is closed
    at its accept (no TLS to speak in yet), logged once; a host from its own address is
    served over TLS meanwhile (per address); once a held one completes TLS and
    authenticates, its place is free again."""
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.settings[setting] = 4
    proc = await start_controller(spec)
    assert proc.site() is not None  # the listener speaks TLS
    conns = [await _half_open_tls(proc.address, s, i) for i, s in enumerate(held_from)]
    async with _held(conns) as held:
        for _ in range(2):
            assert await _closed_by_controller(await _connect(proc.address, next_from))
        if setting == "unauthenticated_per_address_max":
            await _serves(proc)
        await _tls_authenticate(proc, held[0])  # nothing sent yet on held[0]: TLS from here
        await _tls_serves_from(proc, next_from)
    assert 1 <= proc.log_text().count(f"{message}; the next are logged at most") <= 2


async def test_a_tls_handshake_not_done_in_time_is_closed_and_frees_its_place(
    tmp_path: Path, start_controller: Start
) -> None:
    """With one place per address, a stranger's half-done TLS handshake holds it until
    handshake_timeout_s: then the controller closes it (logged as a failed handshake), and
    the next connection from that address is served."""
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.settings["handshake_timeout_s"] = 1.0
    spec.settings["unauthenticated_per_address_max"] = 1
    proc = await start_controller(spec)
    stranger = await _half_open_tls(proc.address, "127.0.0.2", 1)
    assert await _closed_by_controller(await _connect(proc.address, "127.0.0.2"))  # held
    assert await _closed_by_controller(stranger)  # at the deadline, by the controller
    await _tls_serves_from(proc, "127.0.0.2")
    log = proc.log_text()
    assert log.count("refused 127.0.0.2:") == 2  # the one over the cap; the stranger's
    assert log.count("TLS handshake failed: no TLS handshake in time") == 1
