# The controller's NBD export: an asyncio shell around the sans-I/O codec in wire/nbd.py.
#
# Why: storage administrators test and use volumes with standard tools (qemu-img, qemu-io,
# nbdcopy, nbdinfo, fio). Every volume of the controller is exported on `nbd_listen` under
# its volser. The codec speaks the protocol; this file moves bytes and does the I/O, and
# nothing else (docs/nbd.md).
#
# Theory of operation
# - One asyncio BufferedProtocol per connection. Each socket read (up to READ_CHUNK_BYTES)
#   is fed to the codec and its events are drained at once: reads, and writes the replicator
#   finishes on the spot (SIMPLEX, suspended, async mirroring), are answered in the same loop
#   step, and their replies leave in one send. Work that waits (sync mirroring, a
#   held write, fdatasync for FLUSH and FUA) becomes a task in the connection's TaskGroup, so
#   requests are pipelined and replies may leave out of order, as NBD allows.
# - Writes take THE write path: `Replicator.host_write` with a native WriteRequest stamped
#   by the controller at arrival (`time.time_ns()`), so an NBD write is mirrored per the
#   pair's mode, change-recorded when suspended, held or refused exactly like a native one.
#   WRITE_ZEROES goes the same way (a zero write is mirrored too); TRIM is a hint and changes
#   nothing.
# - A secondary's export is advertised read-only at GO unless it is RECOVERED; if its state
#   changes afterwards, host_write still refuses the write (EPERM), so the check is made
#   again on every write.
# - Who may connect: a connection from an address outside `nbd_allow` (CIDR list, default
#   127.0.0.1 and ::1) is closed before the greeting, and logged. When TLS is required
#   (controller.nbd_tls: unless the config says plain_tcp or nbd_tls = "off", both loopback
#   only), the codec takes nothing but STARTTLS; the
#   socket is then upgraded with `loop.start_tls` (TLS 1.3, a client certificate signed by
#   [tls] ca), and the certificate's name must be a [[hosts]] name: that host's grant is the
#   list of exports it sees and may open. Without TLS (loopback only) every volume is
#   exported to anyone who connects from an allowed address.
# - Before the client is known (TLS: until its certificate was checked; plain: until it chose
#   an export) it counts against the listener's Admission caps and must finish within
#   controller.handshake_timeout_s.
#
# Rules this module keeps:
# - Bounded per connection: at most IN_FLIGHT_MAX requests (IN_FLIGHT_BYTES_MAX of payload)
#   wait on slow work; past that, or when replies pile up past WRITE_BUFFER_HIGH_BYTES, no
#   request is decoded and the socket is not read (TCP slows the client). The codec holds at
#   most one read chunk plus one request. At most CONNECTIONS_MAX connections.
# - No fire-and-forget: connection drivers belong to the server's TaskGroup, request tasks to
#   their connection's; a connection's transport is closed in `finally`.
# - A write is acknowledged only after host_write's acknowledgement condition (and fdatasync
#   for FUA); on shutdown or a client that vanishes, in-flight requests still finish.
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from remcopy.configfile import format_address
from remcopy.controller.admission import Admission
from remcopy.controller.config import ControllerConfig, IpNetwork
from remcopy.controller.core import Controller, Device, HostGrant
from remcopy.controller.logsafe import escape_name
from remcopy.controller.tlscontext import certificate_name
from remcopy.errors import (
    InputError,
    LateWrite,
    OutOfRange,
    RemcopyError,
    ShuttingDown,
    WriteProtected,
)
from remcopy.ids import Volser
from remcopy.states import PairRole, PairState
from remcopy.wire import native
from remcopy.wire.nbd import (
    NEED_DATA,
    ConnectionClosed,
    Disconnect,
    Event,
    ExportChosen,
    ExportInfo,
    FlushRequest,
    NbdServerConnection,
    ReadRequest,
    RequestRejected,
    StartTls,
    TrimRequest,
    WriteRequest,
    WriteZeroesRequest,
)

log = logging.getLogger("remcopy.nbd")


class HostWrites(Protocol):
    """What NBD needs of the replicator (replication.Replicator): the one host write path
    and the change maps' flush. Declared here so that this front door does not import the
    replicator: the server that builds both hands it in."""

    def host_write(
        self, grant: HostGrant, msg: native.WriteRequest, *, busy_waits: bool = False
    ) -> Awaitable[None] | None: ...

    def flush_changemaps(self, keys: list[int]) -> None: ...


# Requests per connection whose answer waits on something slower than memory (a sync
# mirror's confirmation, fdatasync). nbdcopy keeps 64 requests in flight per connection and
# qemu 16; 64 lets a sync-mirrored stream fill the link without queueing in the codec.
IN_FLIGHT_MAX: Final = 64
# ...and the write payload they may hold (a sync mirror keeps it until the secondary confirms):
# 64 nbdcopy writes of 256 KiB, or two 32 MiB writes.
IN_FLIGHT_BYTES_MAX: Final = 64 * 1024 * 1024
# Connections at once; more are closed at accept and logged. nbdcopy opens 4, qemu-img and
# qemu-io 1 (up to 16 with multi-conn); each costs a read buffer plus at most one request.
CONNECTIONS_MAX: Final = 32
# One socket read takes up to this much: several requests per wake-up (nbdcopy sends 256 KiB
# writes, 64 in flight), so their replies leave in one send instead of one each.
READ_CHUNK_BYTES: Final = 4 * 1024 * 1024
# ...but a client not known yet (before its TLS identity, or its export) gets a buffer for
# the handshake only: a flood of strangers must not cost 4 MiB each. An option is at most
# OPTION_SIZE_MAX_BYTES; a longer read only takes more steps.
HANDSHAKE_READ_BYTES: Final = 64 * 1024
# Replies queued for a slow reader beyond this stop reading requests (8 x 256 KiB nbdcopy
# reads, 2 x 2 MiB qemu-img reads); the low mark resumes it.
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024
WRITE_BUFFER_LOW_BYTES: Final = 1024 * 1024
# An NBD write may be 32 MiB, but a replication frame holds at most 16 MiB (wire/native.py)
# and the link batches up to 4 MiB of updates per frame (peerlink.BATCH_BYTES_MAX): pieces of
# 4 MiB fit any batch. Write-zeroes ranges (no payload, any length) go in the same pieces,
# one at a time, so zeroing a whole volume never queues more than one piece on the link.
WRITE_PIECE_MAX_BYTES: Final = 4 * 1024 * 1024
_ZEROES: Final = bytes(WRITE_PIECE_MAX_BYTES)
# A write refused as late (stamped before a suspend time the controller sealed while the write
# was held) is stamped again and reissued: it was never acknowledged, so no write depends on
# it. Twice is enough: a fresh stamp is after T.
LATE_WRITE_RETRY_MAX: Final = 2


def export_uri(address: tuple[str, int], volser: str, *, tls: bool = False) -> str:
    """The nbd:// (nbds:// with TLS) URI of export `volser` at `address` (libnbd and qemu
    read it; a TLS client adds its certificates, e.g. `?tls-certificates=DIR` for libnbd).

    '#' is percent-encoded (it would start a URI fragment); '@' and '$' may stay.
    """
    scheme = "nbds" if tls else "nbd"
    return f"{scheme}://{format_address(address)}/{urllib.parse.quote(volser, safe='@$')}"


def configured_export_uri(
    config: ControllerConfig, volser: str, *, source: str, host: str | None = None
) -> tuple[str, tuple[str, int]]:
    """The URI (and address) of a volume as the controller a config describes exports it.

    `host` replaces the configured host, which must be given when nbd_listen is a wildcard
    address (0.0.0.0, ::): the URI must name an address clients can reach.
    """
    name = str(Volser.parse(volser))
    section = config.controller
    if section.nbd_listen is None:
        raise InputError(
            f"{source}: controller.nbd_listen is not set: this controller exports no volume "
            f'over NBD: hint: add nbd_listen = "127.0.0.1:10809" to [controller]'
        )
    known = [v.volser for v in config.volumes]
    if name not in known:
        raise InputError(
            f"{source}: no volume {name} in [[volumes]]: volsers={','.join(known) or 'none'}"
        )
    listen_host, port = section.nbd_listen
    if port == 0:
        raise InputError(
            f"{source}: controller.nbd_listen port is 0: the port is chosen when the "
            f"controller starts and shown in its ready line as nbd=HOST:PORT: hint: set a "
            f"fixed port to have a stable URI"
        )
    if host is None:
        if listen_host in ("", "0.0.0.0", "::"):
            raise InputError(
                f"{source}: controller.nbd_listen is the wildcard address {listen_host!r}: "
                f"hint: pass --host with the name or address clients use"
            )
        host = listen_host
    address = (host, port)
    return export_uri(address, name, tls=config.nbd_tls_required()), address


@dataclass(frozen=True, slots=True, kw_only=True)
class NbdServerStatistics:
    """A snapshot of the NBD server's counters."""

    connections: int
    """Connections open now."""
    accepted_total: int
    """Connections accepted from allowed addresses."""
    refused_total: int
    """Connections closed because the address is not in nbd_allow."""
    requests_total: int
    """Requests handed to the volume or the replicator."""
    errors_total: int
    """Requests answered with an error (by the codec or by us)."""


class NbdServer:
    """Serves every volume of a controller over NBD; export name = volser."""

    def __init__(
        self,
        controller: Controller,
        replicator: HostWrites,
        *,
        listen: tuple[str, int],
        allow: list[IpNetwork],
        multi_conn: bool,
        grace_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: clients must STARTTLS with a certificate naming a [[hosts]] entry, and see
        only that host's grant; None: plain NBD, every volume to every allowed client."""
        self.controller = controller
        self.tls = tls
        section = controller.config.controller
        self.handshake_timeout_s = section.handshake_timeout_s
        # Below CONNECTIONS_MAX, so strangers never take every place from known clients; 4 from
        # one address at once is what nbdcopy opens.
        self.admission = Admission(
            "nbd",
            total_max=min(section.unauthenticated_max, CONNECTIONS_MAX // 2),
            per_address_max=min(section.unauthenticated_per_address_max, CONNECTIONS_MAX // 8),
        )
        self.replicator = replicator
        self.listen = listen
        self.allow = tuple(allow)
        # Multi-conn is safe: FLUSH and FUA are fdatasync of the one file every connection
        # writes through (plus the change maps and journal), so a flush on any connection
        # covers writes completed on all. Whether it pays is measured by bench/nbd.py.
        self.multi_conn = multi_conn
        self.grace_s = grace_s
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._connections: set[_NbdConnection] = set()
        self._drivers: set[asyncio.Task[None]] = set()
        self._early: list[_NbdConnection] = []  # accepted before serve() owned a TaskGroup
        self._stopping = asyncio.Event()
        self._by_volser: dict[str, Device] = {}
        self.accepted_total = 0
        self.refused_total = 0
        self.requests_total = 0
        self.errors_total = 0

    def __repr__(self) -> str:
        where = format_address(self.address) if self.address else "not listening"
        return (
            f"<NbdServer {self.controller.name} {where} connections={len(self._connections)} "
            f"requests={self.requests_total}>"
        )

    def statistics(self) -> NbdServerStatistics:
        return NbdServerStatistics(
            connections=len(self._connections),
            accepted_total=self.accepted_total,
            refused_total=self.refused_total,
            requests_total=self.requests_total,
            errors_total=self.errors_total,
        )

    # Listening...

    async def start(self) -> tuple[str, int]:
        """Listen (OSError if it cannot) and return the address. Clients that connect before
        serve() runs wait for it (the listen backlog, then the queue of accepted ones)."""
        host, port = self.listen
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _NbdConnection(self), host, port, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        return self.address

    async def serve(self) -> None:
        """Accept until stop(); then finish the requests already read, within grace_s."""
        assert self._server is not None, "start() first"
        server = self._server
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            early, self._early = self._early, []
            for connection in early:
                self._drive(connection)
            log.info(
                "nbd: serving %d volumes on %s to %s",
                len(self.controller.devices),
                format_address(self.address or self.listen),
                ", ".join(str(n) for n in self.allow) or "nobody",
            )
            await self._stopping.wait()
            server.close()
            for connection in list(self._connections):
                connection.shut_down()
            drivers = list(self._drivers)
            if drivers:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.grace_s):
                        await asyncio.wait(drivers)
            for driver in self._drivers:
                driver.cancel()
        self._tasks = None

    def stop(self) -> None:
        self._stopping.set()

    # What the codec asks...

    def allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow)

    def device_for(self, volser: str) -> Device | None:
        device = self._by_volser.get(volser)
        if device is None or str(device.volume.volser) != volser:
            self._by_volser = {str(d.volume.volser): d for d in self.controller.devices.values()}
            device = self._by_volser.get(volser)
        return device

    def export_info(self, volser: str, grant: HostGrant) -> ExportInfo | None:
        device = self.device_for(volser)
        if device is None or not grant.allows(device.key):
            return None  # outside the grant: as unknown as a volser that does not exist
        pair = device.pair
        protected = pair.role is PairRole.SECONDARY and pair.state is not PairState.RECOVERED
        role = f"{pair.role.value} " if pair.role is not PairRole.NONE else ""
        return ExportInfo(
            name=volser,
            size_bytes=device.volume.capacity_bytes,
            read_only=protected or device.volume.read_only,
            description=f"remcopy volume {volser} at {device.address}, {role}{pair.state.name}",
            can_flush=True,
            can_fua=True,
            can_trim=True,
            can_zero=True,
            can_multi_conn=self.multi_conn,
        )

    def export_names(self, grant: HostGrant) -> list[str]:
        return sorted(
            str(d.volume.volser) for d in self.controller.devices.values() if grant.allows(d.key)
        )

    def grant_for(self, name: str | None) -> HostGrant | None:
        """The [[hosts]] grant a verified certificate's name maps to, or None."""
        return self.controller.hosts.get(name) if name is not None else None

    # Connections...

    def _accepted(self, connection: _NbdConnection) -> None:
        self.accepted_total += 1
        self._connections.add(connection)
        if self._tasks is None:
            self._early.append(connection)
        else:
            self._drive(connection)

    def _drive(self, connection: _NbdConnection) -> None:
        assert self._tasks is not None
        driver = self._tasks.create_task(connection.run(), name=f"nbd {connection.peer}")
        self._drivers.add(driver)
        driver.add_done_callback(self._drivers.discard)

    def _refused(self, peer: str, reason: str | None) -> None:
        self.refused_total += 1
        if reason is None:
            allowed = ", ".join(str(n) for n in self.allow) or "empty"
            reason = f"not in controller.nbd_allow ({allowed})"
        log.warning("nbd: refused %s: %s", peer, reason)

    def _closed(self, connection: _NbdConnection) -> None:
        connection.known()
        self._connections.discard(connection)


class _NbdConnection(asyncio.BufferedProtocol):
    """One client: its codec, its transport, and the requests waiting on slow work."""

    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self.codec = NbdServerConnection(
            lookup=self._lookup,
            list_exports=lambda: server.export_names(self.grant),
            tls=server.tls is not None,
        )
        self.peer = "?"
        self.host = "?"
        # Plain NBD: every device. With TLS: nothing until the certificate named a host.
        self.grant = HostGrant(
            name="nbd", secret=b"", lss=None if server.tls is None else frozenset()
        )
        self._admitted = False  # counted by the server's Admission until known()
        self._deadline: asyncio.TimerHandle | None = None
        self._upgrading = False  # STARTTLS answered, the TLS handshake under way
        self._refused_names: set[str] = set()  # export names refused (logged once each)
        self._transport: asyncio.Transport | None = None
        self._device: Device | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._lost = asyncio.get_running_loop().create_future()
        self._waiting = 0  # request tasks not finished
        self._waiting_bytes = 0  # write payload those tasks hold
        self._ending = False  # Disconnect, ConnectionClosed or shutdown: read no more requests
        self._reading_paused = False
        self._writing_paused = False
        self._read_buffer: memoryview | None = None  # allocated once the client is allowed
        self._unsent_bytes = 0  # read data answered since the last _send

    def __repr__(self) -> str:
        return (
            f"<_NbdConnection {self.peer} waiting={self._waiting} "
            f"waiting_bytes={self._waiting_bytes} {self.codec!r}>"
        )

    # Protocol callbacks...

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.peer = format_address((host, peer[1])) if isinstance(peer, tuple) else str(peer)
        self.host = host
        if self.server.tls is None:
            self.grant = HostGrant(name=f"nbd {self.peer}", secret=b"", lss=None)
        if not self.server.allowed(host):
            self.server._refused(self.peer, None)
            self._ending = True
            transport.abort()
            return
        if self.server._stopping.is_set():
            self._ending = True
            transport.close()
            return
        if len(self.server._connections) >= CONNECTIONS_MAX:
            self.server._refused(self.peer, f"already {CONNECTIONS_MAX} connections (the limit)")
            self._ending = True
            transport.abort()
            return
        if self.server.admission.admit(host, self.peer) is not None:
            self.server.refused_total += 1  # logged once per burst by the Admission
            self._ending = True
            transport.abort()
            return
        self._admitted = True
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES, low=WRITE_BUFFER_LOW_BYTES)
        self._read_buffer = memoryview(bytearray(HANDSHAKE_READ_BYTES))  # until known()
        self.server._accepted(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._read_buffer is None:  # a refused client: what it sent is thrown away
            self._read_buffer = memoryview(bytearray(4096))
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._ending or self._read_buffer is None:
            return
        # The codec copies what it is given into its own buffer (bytearray +=) before this
        # buffer is read into again, so the view is passed without a copy of its own.
        self.codec.receive_data(cast(bytes, self._read_buffer[:nbytes]))
        self._process()

    def eof_received(self) -> bool:
        if not self._ending:
            self.codec.receive_data(b"")
            self._process()
        # We close, after answering what is in flight (TLS closes on EOF whatever we say).
        return not self.codec.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self._ending = True
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._process()

    # Driving...

    async def run(self) -> None:
        """Own the connection's request tasks until it is closed and they are done."""
        assert self._transport is not None
        transport = self._transport
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._deadline = asyncio.get_running_loop().call_later(
                    self.server.handshake_timeout_s, self._handshake_expired
                )
                self._send()  # the greeting
                self._process()  # bytes that came with the connection
                await self._lost
        except Exception:
            log.exception("nbd %s: internal error, this should never happen", self.peer)
        finally:
            self._tasks = None
            self.server._closed(self)
            transport = self._transport or transport  # the TLS one after an upgrade
            if not transport.is_closing():
                transport.abort()

    def shut_down(self) -> None:
        """Stop reading requests; close once those already read are answered."""
        self._ending = True
        self._update_reading()
        self._close_when_idle()

    def _process(self) -> None:
        """Turn buffered bytes into requests and act on them, within the in-flight bound."""
        if self._tasks is None:
            return  # not driven yet (run() processes on start) or already over
        codec = self.codec
        try:
            while not self._ending and not self._busy():
                event = codec.next_event()
                if event is NEED_DATA:
                    break
                self._dispatch(event)
                if self._unsent_bytes >= WRITE_BUFFER_HIGH_BYTES:
                    # Reads are answered at once: hand them to the transport now, so a client
                    # that pipelines reads and does not take the replies meets pause_writing.
                    self._send()
        except Exception:
            # Our bug (the codec turns every peer mistake into an event): drop this client only.
            log.exception("nbd %s: internal error, this should never happen", self.peer)
            self._ending = True
            if self._transport is not None:
                self._transport.abort()
            return
        self._send()
        self._update_reading()
        self._close_when_idle()

    def _busy(self) -> bool:
        """Back-pressure: take no more requests until replies drain or slow work finishes."""
        return (
            self._writing_paused
            or self._waiting >= IN_FLIGHT_MAX
            or self._waiting_bytes >= IN_FLIGHT_BYTES_MAX
        )

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._ending or self._upgrading or self._busy()
        if pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _send(self) -> None:
        self._unsent_bytes = 0
        parts = self.codec.parts_to_send()
        transport = self._transport
        if parts and transport is not None and not transport.is_closing():
            # One call with the read replies' data as they came from pread: no copy into a
            # joined buffer (a writev on plain TCP; with TLS, records straight from them).
            transport.writelines(parts)

    def _close_when_idle(self) -> None:
        transport = self._transport
        if self._ending and not self._waiting and transport is not None:
            self._send()
            if not transport.is_closing():
                transport.close()  # sends what is buffered first

    # Acting on events...

    def _dispatch(self, event: Event) -> None:
        codec = self.codec
        match event:
            case ReadRequest(handle=handle, offset=offset, length=length):
                device = self._chosen()
                self.server.requests_total += 1
                try:
                    data = self.server.controller.read(self.grant, device.key, offset, length)
                except RemcopyError as exc:
                    self._reply_error(handle, exc)
                else:
                    codec.reply_read(handle, data)
                    self._unsent_bytes += length
            case WriteRequest():
                self.server.requests_total += 1
                self._write(event)
            case WriteZeroesRequest(handle=handle):
                self.server.requests_total += 1
                self._spawn(handle, self._zeroed(event))
            case FlushRequest(handle=handle):
                self.server.requests_total += 1
                self._spawn(handle, self._flushed())
            case TrimRequest(handle=handle, fua=fua):
                # A hint: the data may stay. Refused like a write where writes are refused.
                self.server.requests_total += 1
                try:
                    self.server.controller.check_writable(self._chosen())
                except RemcopyError as exc:
                    self._reply_error(handle, exc)
                    return
                if fua:
                    self._spawn(handle, self._flushed())
                else:
                    codec.reply_ok(handle)
            case StartTls():
                self._upgrading = True
                self._update_reading()
                self._send()  # the ACK, in plain text, before the TLS handshake
                assert self._tasks is not None
                self._tasks.create_task(self._start_tls())
            case ExportChosen(info=info):
                self._device = self.server.device_for(info.name)
                self.known()
                log.info(
                    "nbd %s: export %s%s%s",
                    self.peer,
                    escape_name(info.name),
                    " (read-only)" if info.read_only else "",
                    f" for host {escape_name(self.grant.name)}" if self.server.tls else "",
                )
            case RequestRejected(message=message):
                self.server.errors_total += 1
                log.info("nbd %s: %s", self.peer, escape_name(message))
            case Disconnect():
                self._ending = True
            case ConnectionClosed(reason=reason, error=error):
                self._ending = True
                self._refused_without_tls()
                if error is not None:
                    log.warning("nbd %s: closed: %s", self.peer, escape_name(reason))
                else:
                    log.info("nbd %s: %s", self.peer, escape_name(reason))
            case _:
                raise AssertionError(f"unknown nbd event {event!r}")

    # Who the client is...

    def _lookup(self, volser: str) -> ExportInfo | None:
        info = self.server.export_info(volser, self.grant)
        if info is None and volser not in self._refused_names:
            self._refused_names.add(volser)  # a client asks with INFO, then GO: one line
            log.warning(
                "nbd %s: refused export '%s'%s: no such volume, or not in the host's grant",
                self.peer,
                escape_name(volser),
                f" for host {escape_name(self.grant.name)}" if self.server.tls else "",
            )
        return info

    def known(self) -> None:
        """The client is known (TLS identity checked, or an export chosen) or gone: it no
        longer counts as unauthenticated, and the handshake deadline is off."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._admitted:
            self._admitted = False
            self.server.admission.release(self.host)
            if not self._ending:
                self._read_buffer = memoryview(bytearray(READ_CHUNK_BYTES))

    def _refused_without_tls(self) -> None:
        if self.server.tls is not None and not self.codec.tls_active and not self._upgrading:
            log.warning(
                "nbd %s: refused: this server requires TLS (STARTTLS with a client "
                "certificate) and the client did not start it",
                self.peer,
            )

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self._device is None and not self._ending:
            log.warning(
                "nbd %s: refused: no export chosen within %s s",
                self.peer,
                self.server.handshake_timeout_s,
            )
            self._abort()

    def _abort(self) -> None:
        self._ending = True
        if self._transport is not None:
            self._transport.abort()
        if not self._lost.done():
            self._lost.set_result(None)

    async def _start_tls(self) -> None:
        """Upgrade the socket after STARTTLS's ACK; map the certificate to a host."""
        assert self._transport is not None and self.server.tls is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport,
                self,
                self.server.tls,
                server_side=True,
                ssl_handshake_timeout=self.server.handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            if not self._ending:  # not already refused at the handshake deadline
                log.warning(
                    "nbd %s: refused: TLS handshake failed: %s", self.peer, _tls_reason(exc)
                )
            self._abort()
            return
        if transport is None:  # the connection went away during the handshake
            self._abort()
            return
        self._transport = transport
        self._reading_paused = False  # start_tls resumed reading under the TLS layer
        ssl_object = transport.get_extra_info("ssl_object")
        name = certificate_name(ssl_object.getpeercert() if ssl_object is not None else None)
        grant = self.server.grant_for(name)
        if grant is None:
            shown = "no single common name" if name is None else f"name {escape_name(name)!r}"
            log.warning(
                "nbd %s: refused: the client certificate (%s) is not a [[hosts]] name of "
                "controller %s",
                self.peer,
                shown,
                self.server.controller.name,
            )
            self._abort()
            return
        self.grant = grant
        self._upgrading = False
        self.codec.tls_started()
        self.known()
        log.info("nbd %s: TLS: host %s", self.peer, escape_name(grant.name))
        self._process()

    def _chosen(self) -> Device:
        assert self._device is not None, "a request before ExportChosen"
        return self._device

    def _write(self, event: WriteRequest) -> None:
        device = self._chosen()
        try:
            pending = self._host_write(device, event.offset, event.data, fua=event.fua)
        except LateWrite:
            pending = self._rewrite(device, event.offset, event.data, fua=event.fua)
        except RemcopyError as exc:
            self._reply_error(event.handle, exc)
            return
        if pending is None and not event.fua:
            self.codec.reply_ok(event.handle)
            return
        self._spawn(event.handle, self._written(device, event, pending), len(event.data))

    def _host_write(
        self, device: Device, offset: int, data: bytes, *, fua: bool
    ) -> Awaitable[None] | None:
        """Stamp now and write through the replicator, in pieces the link can carry."""
        stamp = time.time_ns()
        if len(data) <= WRITE_PIECE_MAX_BYTES:
            return self.server.replicator.host_write(
                self.grant,
                native.WriteRequest(
                    device=device.key, offset=offset, timestamp_ns=stamp, fua=fua, data=data
                ),
                busy_waits=True,  # NBD cannot say busy without an error fatal to filesystems
            )
        # Every piece in this loop step, with one stamp: all on the same side of a suspend T.
        waits: list[Awaitable[None]] = []
        view = memoryview(data)
        for start in range(0, len(data), WRITE_PIECE_MAX_BYTES):
            piece = bytes(view[start : start + WRITE_PIECE_MAX_BYTES])
            follow = self.server.replicator.host_write(
                self.grant,
                native.WriteRequest(
                    device=device.key, offset=offset + start, timestamp_ns=stamp, data=piece
                ),
                busy_waits=True,
            )
            if follow is not None:
                waits.append(follow)
        return _all(waits) if waits else None

    async def _rewrite(self, device: Device, offset: int, data: bytes, *, fua: bool) -> None:
        """Reissue a write refused as late, stamped again (never acknowledged before)."""
        for attempt in range(LATE_WRITE_RETRY_MAX):
            try:
                pending = self._host_write(device, offset, data, fua=fua)
                if pending is not None:
                    await pending
                return
            except LateWrite:
                if attempt + 1 == LATE_WRITE_RETRY_MAX:
                    raise

    async def _written(
        self, device: Device, event: WriteRequest, pending: Awaitable[None] | None
    ) -> None:
        if pending is not None:
            try:
                await pending
            except LateWrite:
                await self._rewrite(device, event.offset, event.data, fua=event.fua)
        if event.fua:
            await self._durable(device)

    async def _zeroed(self, event: WriteZeroesRequest) -> None:
        # Zeroes are data: they go through host_write like any write, so a mirror sees them.
        device = self._chosen()
        done = 0
        while done < event.length:
            step = min(WRITE_PIECE_MAX_BYTES, event.length - done)
            piece = _ZEROES if step == WRITE_PIECE_MAX_BYTES else _ZEROES[:step]
            try:
                pending = self._host_write(device, event.offset + done, piece, fua=False)
                if pending is not None:
                    await pending
            except LateWrite:
                await self._rewrite(device, event.offset + done, piece, fua=False)
            done += step
        if event.fua:
            await self._durable(device)

    async def _flushed(self) -> None:
        await self._durable(self._chosen())

    async def _durable(self, device: Device) -> None:
        # Change-map bits (write intent) and the async journal first, then the data.
        self.server.replicator.flush_changemaps([device.key])
        await asyncio.to_thread(device.volume.flush)
        self.server.controller.counters["flushes"] += 1

    def _spawn(self, handle: int, work: Coroutine[Any, Any, None], size_bytes: int = 0) -> None:
        assert self._tasks is not None
        self._waiting += 1
        self._waiting_bytes += size_bytes
        self._tasks.create_task(self._answer(handle, work, size_bytes))

    async def _answer(self, handle: int, work: Coroutine[Any, Any, None], size_bytes: int) -> None:
        try:
            await work
        except RemcopyError as exc:
            self._reply_error(handle, exc)
        else:
            self.codec.reply_ok(handle)
        finally:
            self._waiting -= 1
            self._waiting_bytes -= size_bytes
        self._process()

    def _reply_error(self, handle: int, exc: RemcopyError) -> None:
        self.server.errors_total += 1
        if not exc.retryable:
            log.warning("nbd %s: refused request: %s", self.peer, exc)
        self.codec.reply_error(handle, _errno_for(exc), str(exc))


def _tls_reason(exc: BaseException) -> str:
    """A TLS failure in one line: the verification message when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    return str(exc) or type(exc).__name__


def _errno_for(exc: RemcopyError) -> str:
    """The errno an NBD client gets for a refused request (the codec maps EROFS to EPERM)."""
    if isinstance(exc, WriteProtected):
        return "EROFS"
    if isinstance(exc, OutOfRange):
        return "EINVAL"
    if isinstance(exc, ShuttingDown):
        return "ESHUTDOWN"
    return "EIO"


async def _all(waits: list[Awaitable[None]]) -> None:
    for wait in waits:
        await wait
