# The controller's asyncio shell: accept connections, authenticate, move frames, answer.
#
# Why: this is the only place where the controller touches sockets. It reads bytes, feeds the
# native codec, hands each request to the core (core.py), and writes the codec's answer.
# Decisions belong to the core; this file decides only *when* things happen.
#
# Theory of operation
# - One asyncio BufferedProtocol per connection (`_Link`), as the NBD export does. The socket
#   is read straight into the codec's receive buffer (no bytes object per read), and the
#   frames of each read are decoded and acted on at once, in the transport's callback:
#   requests the core answers on the spot (local writes, reads, replication updates) are
#   answered in the same loop step. Work that waits (sync mirroring, fdatasync, pair
#   operations) becomes a task in the connection's TaskGroup; its reply leaves when it is done.
# - Replies are queued, not written one by one: everything queued in one loop step leaves in
#   one `transport.writelines`, payloads (read data) as parts of their own, never copied.
# - The handshake runs on the same path, under a deadline timer armed at accept.
#
# Rules this module keeps:
# - Nothing is done for a connection before it authenticated: the handshake runs first, under
#   a deadline, and the codec itself refuses request frames before WELCOME.
# - Every connection is driven by a task of the server's TaskGroup, and every task a
#   connection starts belongs to that connection's TaskGroup (no fire-and-forget); the
#   connection's transport is closed in `finally`.
# - Bounded memory per connection: requests are decoded only while fewer than IN_FLIGHT_MAX
#   wait on slow work and the replies not yet taken by the socket stay under
#   WRITE_BUFFER_HIGH_BYTES; otherwise the socket is not read, and the codec holds at most one
#   read plus one frame. A host that sends faster than the disk writes is slowed by TCP, not
#   buffered.
# - A refused connection (unknown host, wrong secret, replayed or reflected nonce, version
#   mismatch, garbage) gets one error frame naming the reason, a log line, and is closed; the
#   controller goes on serving everyone else.
# - SIGTERM: stop accepting, stop reading, finish the requests already read, close, flush
#   every volume. A write is acknowledged only after it is in the volume file, so nothing
#   half-written is ever acknowledged.
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, cast

from remcopy import logformat, tls
from remcopy.configfile import format_address
from remcopy.controller.admission import Admission
from remcopy.controller.authlimit import FailureLimiter
from remcopy.controller.config import load_controller_config
from remcopy.controller.core import Controller, EventSink, HostGrant
from remcopy.controller.eventscope import visible_to
from remcopy.controller.latency import Latency
from remcopy.controller.logsafe import escape_name
from remcopy.controller.nbd_server import NbdServer
from remcopy.controller.notify import ServiceNotifier
from remcopy.controller.reload import plan_reload
from remcopy.controller.replication import Replicator
from remcopy.controller.tlscontext import server_context
from remcopy.controller.volume import Volume
from remcopy.errors import (
    AuthenticationFailed,
    ConfigError,
    ControllerFailed,
    DeviceNotAllowed,
    NotOffered,
    ProtocolError,
    RemcopyError,
    RemcopyInternalError,
    ShuttingDown,
    TooManyConnections,
)

__all__ = ["ControllerServer", "ListenError", "escape_name", "run_controller"]
from remcopy.events import Event, EventKind
from remcopy.wire import auth, native
from remcopy.wire.native import Side

if TYPE_CHECKING:
    from remcopy.controller.metrics import MetricsEndpoint

log = logging.getLogger("remcopy.controller")


AUTH_FAILED_MESSAGE: Final = (
    "authentication failed: this controller does not accept that name, certificate and secret"
)
# Requests that wait on something slower than memory (fdatasync, a peer) at once.
IN_FLIGHT_MAX: Final = 64
# Replies queued for a slow reader beyond this make the connection stop taking requests until
# the socket drained; it is the transport's high-water mark (the low one is a quarter).
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024
# What a peer controller may send once authenticated: it acts on pairs, never as a host
# (host verbs name devices by grant; a peer's reach is its pairs and its offer, peerops.py).
_PEER_KINDS: Final = (
    native.UpdateBatch,
    native.Watermark,
    native.PairOpRequest,
    native.SubscribeRequest,
)
# An event subscriber that falls this far behind is dropped rather than buffered.
SUBSCRIBER_BUFFER_MAX_BYTES: Final = 8 * 1024 * 1024


@dataclass(slots=True)
class _Handshake:
    """What a connection between CHALLENGE and PROOF remembers."""

    hello: native.Hello
    secret: bytes | None
    """None: the name is not configured (the proof is checked against nothing and fails, so
    the client learns no more than from a wrong secret)."""
    names: auth.Transcript


class _Link(asyncio.BufferedProtocol):
    """One accepted connection: its codec, its transport, and who is on the other end."""

    def __init__(self, server: ControllerServer, *, admitted: bool = False) -> None:
        self.server = server
        self.codec = native.Connection(Side.SERVER)
        self.peer = "?"
        self.client = "?"
        self.admitted = admitted  # counted by the listener's Admission until authenticated
        self.sinks: list[EventSink] = []
        """Event sinks of this connection's subscriptions, removed when it ends."""
        self.grant: HostGrant | None = None  # set once authenticated
        self.handshake: _Handshake | None = None  # set while a challenge is outstanding
        self.cert: tls.CertIdentity | None = None  # the verified client certificate (TLS)
        self.address = "?"  # the client's IP address (failed handshakes are counted by it)
        self.secure = False  # over TLS
        self._first_read: memoryview | None = None
        self.tls_hello: bool | None = None  # the first bytes were a TLS client hello
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: asyncio.TaskGroup | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # frames queued for the next writelines
        self._out_bytes = 0
        self._flush_scheduled = False
        self._waiting = 0  # requests whose answer is a task that has not finished
        self._reading_stopped = False  # EOF, or shutdown: the socket is read no more
        self._ending = False  # no more requests: close once the waiting ones are answered
        self._reading_paused = False
        self._writing_paused = False
        self._scratch: memoryview | None = None  # reads after the end land here, unused

    def __repr__(self) -> str:
        return (
            f"<_Link {self.peer} {self.client} waiting={self._waiting} "
            f"ending={self._ending} {self.codec!r}>"
        )

    # Protocol callbacks...

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.secure = transport.get_extra_info("ssl_object") is not None
        if self.secure:
            self.cert = tls.identity(transport.get_extra_info("peercert"))
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        self.server._accepted(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._reading_stopped:  # cannot happen while paused; thrown away if it does
            if self._scratch is None:
                self._scratch = memoryview(bytearray(4096))
            return self._scratch
        view = self.codec.get_buffer(sizehint)
        if self.tls_hello is None and not self.secure:
            self._first_read = view  # looked at once, then dropped (the codec may resize)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if self._reading_stopped:
            return
        first, self._first_read = self._first_read, None
        if first is not None and self.tls_hello is None:
            # A TLS record of type handshake (0x16, then version 3.x) where a plain frame's
            # length should be: a TLS client at a plain_tcp controller; the refusal says so.
            self.tls_hello = nbytes >= 2 and first[0] == 0x16 and first[1] == 0x03
        self.codec.buffer_updated(nbytes)
        self.process()

    def eof_received(self) -> bool:
        self._stop_reading()
        self.process()
        # Keep writing: requests already read are still answered (TLS has no half-close).
        return not self.secure

    def connection_lost(self, exc: Exception | None) -> None:
        self._reading_stopped = self._ending = True
        self._writing_paused = False
        if self._deadline is not None:
            self._deadline.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.process()

    # Driving...

    async def run(self) -> None:
        """Own the connection's request tasks until it is closed and they are finished."""
        assert self.transport is not None
        transport = self.transport
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._deadline = asyncio.get_running_loop().call_later(
                    self.server.controller.config.controller.handshake_timeout_s,
                    self._handshake_expired,
                )
                self.process()  # bytes that came before this task ran
                await self.lost
        except Exception:
            log.exception("internal error on the connection from %s (%s)", self.peer, self.client)
        finally:
            self._tasks = None
            self.server._closed(self)
            if not transport.is_closing():
                transport.abort()

    def process(self) -> None:
        """Decode the buffered frames and act on them, within the bounds; then write."""
        if self._tasks is None:
            return  # not driven yet (run() processes on start) or already over
        codec = self.codec
        scheduled, self._flush_scheduled = self._flush_scheduled, True  # flushed below
        try:
            while not self._ending and not self._busy():
                try:
                    event = codec.next_event()
                except ProtocolError as exc:
                    self.server._refuse(self, exc)
                    break
                if event is native.NEED_DATA:
                    break
                if isinstance(event, native.Message):
                    self.server._on_message(self, event)
                    if self._out_bytes >= WRITE_BUFFER_HIGH_BYTES:
                        self.flush()  # a client that pipelines reads meets pause_writing
                    continue
                self._ending = True  # CLOSED: the peer finished sending
                self.server._on_closed(self)
        except ProtocolError as exc:  # a reply we cannot encode: our bug, told to the peer
            self.server._refuse(self, exc)
        except Exception:
            # Our bug (the core answers its own errors in a reply): drop this client only.
            log.exception("internal error on the connection from %s (%s)", self.peer, self.client)
            self.abort()
            return
        finally:
            self._flush_scheduled = scheduled
        self.flush()
        self._update_reading()
        self._close_when_idle()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Answer a request from a task of this connection; it counts as waiting until done."""
        assert self._tasks is not None
        self._waiting += 1
        self._tasks.create_task(work)

    def settled(self) -> None:
        """A spawned answer finished (its reply is queued)."""
        busy = self._busy()
        self._waiting -= 1
        if busy and not self._busy():
            self.process()  # takes requests again
        else:
            self._close_when_idle()

    def send(self, msg: native.Message) -> None:
        """Queue a frame; what one loop step queues leaves in one writelines."""
        if self.codec.phase is native.Phase.CLOSED and msg.KIND in native.REPLY_KINDS:
            # The peer sent EOF (or garbage) after requests we already read: still answer them.
            parts = [native.encode(msg)]
        else:
            parts = self.codec.send_parts(msg)
        self._out += parts
        self._out_bytes += sum(len(part) for part in parts)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(out)

    def end(self) -> None:
        """Take no more requests; close once those already taken are answered."""
        self._ending = True
        self._update_reading()

    def shut_down(self) -> None:
        """SIGTERM: read no more; answer the requests already read, then close."""
        self._stop_reading()
        self._update_reading()
        self.process()

    def abort(self) -> None:
        self._reading_stopped = self._ending = True
        if self.transport is not None:
            self.transport.abort()

    def _stop_reading(self) -> None:
        if not self._reading_stopped:
            self._reading_stopped = True
            self.codec.receive_data(b"")  # an EOF: decoding ends after what is buffered

    def _busy(self) -> bool:
        """Back-pressure: take no more requests until replies drain or slow work finishes."""
        return self._writing_paused or self._waiting >= IN_FLIGHT_MAX

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self._reading_stopped or self._ending or self._busy()
        if pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _close_when_idle(self) -> None:
        transport = self.transport
        if self._ending and not self._waiting and transport is not None:
            self.flush()
            if not transport.is_closing():
                transport.close()  # sends what is buffered first

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self.grant is None and not self._ending:
            self.server._refuse(
                self,
                AuthenticationFailed(
                    f"handshake from {self.peer}: no answer within "
                    f"{self.server.controller.config.controller.handshake_timeout_s} s"
                ),
            )
            self._close_when_idle()

    def authenticated(self, grant: HostGrant) -> None:
        self.grant, self.handshake = grant, None
        self.server._admitted_done(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _TlsListener:
    """The TLS listener: its own accept loop, so that each connection's TLS handshake is a
    task the server sees fail (a refused certificate is logged and counted, never silent)."""

    def __init__(self, server: ControllerServer, host: str, port: int) -> None:
        self.server = server
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=1024)
        self.sock.setblocking(False)
        self.accepting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<_TlsListener {self.sock.getsockname()}>"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self.sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.server._accepted_tls(sock, peer)

    async def __aenter__(self) -> _TlsListener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting (the listening socket is closed)."""
        if self.accepting is not None:
            self.accepting.cancel()
        self.sock.close()


class ControllerServer:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._links: set[_Link] = set()
        self._drivers: set[asyncio.Task[None]] = set()
        self._early: list[_Link] = []  # accepted before serve() owned a TaskGroup
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self._server_nonces = auth.NonceLedger()
        self._client_nonces = auth.NonceLedger()
        files = controller.config.tls_files()
        self.tls_context = None if files is None else tls.server_context(files)
        """None: plain TCP (plain_tcp = true, loopback only)."""
        section = controller.config.controller
        self.limiter = FailureLimiter(
            failures_max=section.auth_failures_max, window_s=section.auth_failures_window_s
        )
        self.address: tuple[str, int] | None = None
        self.replicator = Replicator(controller)
        self.nbd: NbdServer | None = None  # the NBD export, when nbd_listen is configured
        self.nbd_address: tuple[str, int] | None = None
        section = controller.config.controller
        self.admission = Admission(
            "native",
            total_max=section.unauthenticated_max,
            per_address_max=section.unauthenticated_per_address_max,
        )
        self._io_latency: dict[type[native.Message], Latency] = {
            native.ReadRequest: controller.io_latency["read"],
            native.WriteRequest: controller.io_latency["write"],
        }
        self.metrics: MetricsEndpoint | None = None  # /metrics, when metrics_listen is set
        self.metrics_address: tuple[str, int] | None = None
        self.notifier = ServiceNotifier()  # systemd's sd_notify, when NOTIFY_SOCKET is set

    def __repr__(self) -> str:
        return f"<ControllerServer {self.controller.name} links={len(self._links)}>"

    async def serve(self, *, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
        """Serve until stop() is called; calls ready(address) once listening."""
        host, port = self.controller.config.controller.listen
        loop = asyncio.get_running_loop()
        try:
            server: asyncio.Server | _TlsListener
            if self.tls_context is None:
                plain = await loop.create_server(
                    lambda: _Link(self), host, port, reuse_address=True
                )
                server, sockets = plain, list(plain.sockets)
            else:
                server = _TlsListener(self, host, port)
                sockets = [server.sock]
        except OSError as exc:
            raise ListenError(
                f"controller.listen: cannot listen on "
                f"{format_address((host, port))}: {exc.strerror}"
            ) from exc
        sockname = sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        try:
            await self._start_metrics()
            await self._start_nbd()  # --- NBD export ---
        except ListenError:
            server.close()
            if self.metrics is not None:
                self.metrics.close()
            raise
        self.controller.emit(
            EventKind.START,
            f"controller {self.controller.name} started serial={self.controller.serial} "
            f"listen={format_address(self.address)}",
        )
        if ready is not None:
            ready(self.address)
        self.notifier.ready(
            f"serving {len(self.controller.devices)} volumes on {format_address(self.address)}"
        )
        # Fail-stop: the replicator and the NBD export run in the server's TaskGroup. If one
        # fails, the group cancels everything else and serve() raises ControllerFailed: the
        # controller exits non-zero (a service manager restarts it); it never goes on serving
        # with replication dead.
        try:
            async with server, asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                # The pair-state writer first: commits made from here on leave the loop.
                writer = tasks.create_task(self.controller.writer.run(), name="pair state")
                replication = tasks.create_task(self.replicator.run(), name="replication")
                # --- NBD export: served next to the native server, stopped with it ---
                nbd_serving = (
                    tasks.create_task(self.nbd.serve(), name="nbd")
                    if self.nbd is not None
                    else None
                )
                # /metrics: answered on this loop, stopped with the native server.
                if self.metrics is not None:
                    tasks.create_task(self.metrics.serve(), name="metrics")
                # --- service manager: WATCHDOG=1 while the loop turns ---
                watchdog = tasks.create_task(self.notifier.keep_alive(), name="watchdog")
                early, self._early = self._early, []
                for link in early:
                    self._drive(link)
                if isinstance(server, _TlsListener):
                    server.accepting = tasks.create_task(server.run(), name="tls accept")
                await self._stopping.wait()
                if self.metrics is not None:
                    self.metrics.stop()
                await self._shut_down(server)
                if nbd_serving is not None:
                    await nbd_serving  # bounded by its own grace; before the replicator stops
                replication.cancel()
                await asyncio.wait([replication])
                writer.cancel()  # it commits what is still queued first
                watchdog.cancel()
        except BaseExceptionGroup as group:
            raise _failure_of(group) from None  # the CLI prints it: one line, exit 1
        finally:
            self._tasks = None
            self._flush_all()
            self.replicator.close()
            self.notifier.close()

    async def _shut_down(self, server: asyncio.Server | _TlsListener) -> None:
        """SIGTERM: stop accepting, answer what was read (within the grace), then close."""
        server.close()
        self.notifier.stopping()
        # Subscribers see it before their connection ends: it is handed out at the end of
        # this loop step, so let that step end first.
        self.controller.emit(EventKind.STOP, f"controller {self.controller.name} stopping")
        await asyncio.sleep(0)
        if self.nbd is not None:
            self.nbd.stop()
        for link in list(self._links):
            link.shut_down()
        drivers = list(self._drivers)
        if drivers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.controller.config.controller.shutdown_grace_s):
                    await asyncio.wait(drivers)
        for link in list(self._links):  # past the grace: what is left is dropped
            link.abort()
        for driver in self._drivers:
            driver.cancel()

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        """SIGHUP: read the config again; apply what changes live, say in the log (a line
        each) what changed and what needs a restart; a config that does not load is refused
        whole, the running one kept (controller/reload.py)."""
        core = self.controller
        path = core.config_path
        if path is None:
            log.warning("reload: this controller was not started from a config file: nothing to do")
            return
        self.notifier.reloading()
        try:
            try:
                new = load_controller_config(path)
            except ConfigError as exc:
                log.error("reload: %s refused, the running config is kept: %s", path, exc)
                return
            plan = plan_reload(core.config, new)
            core.reconfigure(plan.config)
            for link in list(self._links):
                grant = link.grant
                if grant is None or grant.is_peer:
                    continue
                if grant.name in plan.hosts_closed:
                    link.abort()
                elif grant.name in plan.hosts_regranted:
                    link.grant = core.hosts[grant.name]
            self.replicator.peers_reloaded()
            logformat.use(plan.config.controller.log_format)
            for line in plan.applied:
                log.info("reload: %s", line)
            for line in plan.restart:
                log.warning("reload: %s", line)
            log.info(
                "reload: %s: %d changes applied, %d need a restart",
                path,
                len(plan.applied),
                len(plan.restart),
            )
        finally:
            self.notifier.ready(f"serving {len(core.devices)} volumes (reloaded)")

    async def _start_nbd(self) -> None:
        # --- NBD export (controller/nbd_server.py, docs/nbd.md) ---
        section = self.controller.config.controller
        if section.nbd_listen is None:
            return
        config = self.controller.config
        tls = config.tls if config.nbd_tls_required() else None
        self.nbd = NbdServer(
            self.controller,
            self.replicator,
            listen=section.nbd_listen,
            allow=section.nbd_allow,
            multi_conn=section.nbd_multi_conn,
            grace_s=section.shutdown_grace_s,
            tls=None if tls is None else server_context(tls),
        )
        try:
            self.nbd_address = await self.nbd.start()
        except OSError as exc:
            raise ListenError(
                f"controller.nbd_listen: cannot listen on "
                f"{format_address(section.nbd_listen)}: {exc.strerror}"
            ) from exc
        log.info(
            "NBD on %s: %s",
            format_address(self.nbd_address),
            "TLS 1.3 with client certificates, each host its grant"
            if tls is not None
            else "plain, no identity: every volume to any allowed address (loopback only)",
        )

    async def _start_metrics(self) -> None:
        listen = self.controller.config.controller.metrics_listen
        if listen is None:
            return
        from remcopy.controller.metrics import MetricsEndpoint  # prometheus-client, when used

        self.metrics = MetricsEndpoint(self.controller, self.replicator, listen)
        try:
            self.metrics_address = await self.metrics.start()
        except OSError as exc:
            raise ListenError(
                f"controller.metrics_listen: cannot listen on {format_address(listen)}: "
                f"{exc.strerror}"
            ) from exc

    def _flush_all(self) -> None:
        for device in self.controller.devices.values():
            try:
                device.volume.flush()
            except RemcopyError as exc:
                log.error("shutdown flush failed: %s", exc)

    # Accepting a connection...

    def _accepted_tls(self, sock: socket.socket, peer: Any) -> None:
        """A TCP connection to the TLS listener: refuse a blocked address, else handshake."""
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if self._stopping.is_set() or self._limited(address):
            sock.close()
            return
        # A stranger's TLS handshake is paid for before its _Link exists: it counts against
        # the listener's caps from the accept, and its _Link takes the place over.
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.admission.admit(address, where) is not None:
            sock.close()
            return
        assert self._tasks is not None
        driver = self._tasks.create_task(self._handshake_tls(sock, peer), name="tls accept")
        self._drivers.add(driver)
        driver.add_done_callback(self._drivers.discard)

    async def _handshake_tls(self, sock: socket.socket, peer: Any) -> None:
        """The TLS handshake of one accepted connection; its _Link takes over when it passed.

        A failed handshake (no, expired or other-CA certificate, a plain-TCP client) is logged
        once, counted against the address, and the socket is closed."""
        assert self.tls_context is not None
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        address = str(peer[0]) if isinstance(peer, tuple) else where
        made: list[_Link] = []

        def link() -> _Link:
            # Counted already (from the accept): the place passes to the link, which frees it
            # when it authenticates or closes. Admitting it anew would count it twice.
            made.append(_Link(self, admitted=True))
            return made[-1]

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                link,
                sock,
                ssl=self.tls_context,
                ssl_handshake_timeout=self.controller.config.controller.handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            sock.close()
            self.controller.counters["auth_refused"] += 1
            self.controller.counters["tls_refused"] = (
                self.controller.counters.get("tls_refused", 0) + 1
            )
            self.limiter.failed(address)
            log.warning(
                "refused %s: TLS handshake failed: %s", where, escape_name(tls.failure_reason(exc))
            )
        finally:
            if not made or made[0].transport is None:  # no link took the place over
                self.admission.release(address)

    def _limited(self, address: str) -> bool:
        """Whether `address` failed too many handshakes lately (logged once per period)."""
        wait_s = self.limiter.blocked(address)
        if not wait_s:
            return False
        self.controller.counters["rate_limited"] = (
            self.controller.counters.get("rate_limited", 0) + 1
        )
        if self.limiter.first_refusal(address):
            log.warning(
                "refusing connections from %s for %.0f s: %d failed handshakes within %g s",
                escape_name(address),
                wait_s,
                self.limiter.failures_max,
                self.limiter.window_s,
            )
        return True

    def _accepted(self, link: _Link) -> None:
        self.controller.counters["connections"] += 1
        if self.tls_context is None and self._limited(link.address):
            link.end()
            if link.transport is not None:
                link.transport.abort()
            return
        if self._stopping.is_set():
            link.send(
                native.ErrorReply(code=ShuttingDown.code, message="controller is shutting down")
            )
            link.end()
            link.flush()
            if link.transport is not None:
                link.transport.close()
            return
        refused = None if link.admitted else self.admission.admit(link.address, link.peer)
        if refused is not None:
            # One short error frame and close: nothing is kept for the connection.
            link.send(native.ErrorReply(code=TooManyConnections.code, message=refused))
            link.end()
            link.flush()
            if link.transport is not None:
                link.transport.close()
            return
        link.admitted = True
        self._links.add(link)
        if self._tasks is None:
            self._early.append(link)
        else:
            self._drive(link)

    def _drive(self, link: _Link) -> None:
        assert self._tasks is not None
        driver = self._tasks.create_task(link.run(), name=f"native {link.peer}")
        self._drivers.add(driver)
        driver.add_done_callback(self._drivers.discard)

    def _admitted_done(self, link: _Link) -> None:
        """The link authenticated or closed: it no longer counts as unauthenticated."""
        if link.admitted:
            link.admitted = False
            self.admission.release(link.address)

    def _closed(self, link: _Link) -> None:
        self._admitted_done(link)
        self._links.discard(link)
        for sink in link.sinks:  # a subscriber that left is forgotten at once
            self.controller.remove_sink(sink)

    def _refuse(self, link: _Link, exc: RemcopyError, *, told: str | None = None) -> None:
        """Log why (escaped), tell the client `told` (default: the reason), close.

        A refusal before authentication counts against the client's address."""
        self.controller.counters["auth_refused"] += isinstance(exc, AuthenticationFailed)
        if link.grant is None:
            self.limiter.failed(link.address)
        hint = (
            " (a TLS client hello: this controller runs with plain_tcp)" if link.tls_hello else ""
        )
        log.warning("refused %s (%s): %s%s", link.peer, link.client, escape_name(str(exc)), hint)
        with contextlib.suppress(Exception):
            link.send(native.ErrorReply(code=exc.code, message=told or str(exc)))
        link.end()

    def _on_message(self, link: _Link, msg: native.Message) -> None:
        grant = link.grant
        if grant is not None:
            self.controller.counters["requests"] += 1
            # Host I/O latency (for /metrics): request read to answer queued.
            timed = self._io_latency.get(type(msg))
            started = time.perf_counter() if timed is not None else 0.0
            slow = self._answer(link, grant, msg)
            if slow is not None:
                link.spawn(self._answer_slow(link, msg, slow, timed, started))
            elif timed is not None:
                timed.observe(time.perf_counter() - started)
            return
        # The handshake: the codec lets nothing but HELLO, then PROOF, through before WELCOME.
        try:
            if isinstance(msg, native.Hello):
                self._on_hello(link, msg)
            else:
                assert isinstance(msg, native.Proof)
                self._on_proof(link, msg)
        except AuthenticationFailed as exc:
            # The log says why; the client learns only that it failed (names no valid host).
            self._refuse(link, exc, told=AUTH_FAILED_MESSAGE)
        except ProtocolError as exc:
            self._refuse(link, exc)

    def _on_closed(self, link: _Link) -> None:
        """The peer finished sending (EOF on a frame boundary)."""
        if link.handshake is None:
            return
        self.controller.counters["auth_refused"] += 1
        self.limiter.failed(link.address)
        log.warning(
            "refused %s (%s): it left after the challenge without a proof", link.peer, link.client
        )

    def _on_hello(self, link: _Link, hello: native.Hello) -> None:
        # link.client is in every later log line and error about this connection: the name is
        # the client's, so it is escaped (a newline in it must not forge a log line).
        link.client = f"{hello.role.name.lower()} {escape_name(hello.name)}"
        if self.tls_context is not None:
            self._check_certificate(link, hello)
        if hello.nonce in self._server_nonces:
            raise AuthenticationFailed(f"{link.client}: reflected challenge refused")
        if hello.nonce in self._client_nonces:
            raise AuthenticationFailed(f"{link.client}: replayed challenge refused")
        self._client_nonces.add(hello.nonce)
        server_nonce = os.urandom(auth.NONCE_SIZE_BYTES)
        self._server_nonces.add(server_nonce)
        names = auth.Transcript(
            role=int(hello.role),
            client=hello.name,
            server=self.controller.name,
            client_nonce=hello.nonce,
            server_nonce=server_nonce,
        )
        # The client proves first: the challenge carries nothing computed from the secret, and
        # an unknown name gets the same challenge as a known one (errors name no valid host).
        link.handshake = _Handshake(hello=hello, secret=self._secret_for(hello), names=names)
        link.send(native.Challenge(name=self.controller.name, nonce=server_nonce))

    def _check_certificate(self, link: _Link, hello: native.Hello) -> None:
        """The verified client certificate must name the HELLO's name and kind."""
        cert = link.cert
        kind = tls.KIND_HOST if hello.role is native.PeerRole.HOST else tls.KIND_CONTROLLER
        if cert is None:
            raise AuthenticationFailed(f"{link.client}: no client certificate")
        if cert.name != hello.name or cert.kind != kind:
            raise AuthenticationFailed(
                f"{link.client}: certificate names {cert.kind} {cert.name!r}, "
                f"not {kind} {hello.name!r}"
            )
        known = self.controller.hosts if kind == tls.KIND_HOST else self.controller.peers
        if hello.name not in known:
            raise AuthenticationFailed(
                f"{link.client}: the certificate's name is not in controller "
                f"{self.controller.name}'s config"
            )

    def _on_proof(self, link: _Link, proof: native.Proof) -> None:
        handshake = link.handshake
        assert handshake is not None  # the codec accepts PROOF only after our CHALLENGE
        link.handshake = None
        hello = handshake.hello
        secret = handshake.secret
        expected = auth.client_proof(secret or os.urandom(32), handshake.names)
        if not auth.proofs_equal(proof.proof, expected) or secret is None:
            why = "unknown name" if secret is None else "wrong secret"
            raise AuthenticationFailed(f"{link.client}: {why}")
        link.send(
            native.Welcome(
                serial=self.controller.serial,
                name=self.controller.name,
                proof=auth.server_proof(secret, handshake.names),
            )
        )
        log.info(
            "authenticated %s from %s over %s",
            link.client,
            link.peer,
            "TLS" if link.secure else "plain TCP",
        )
        if hello.role is native.PeerRole.HOST:
            link.authenticated(self.controller.hosts[hello.name])
            return
        peer = self.controller.peers[hello.name]
        link.authenticated(
            HostGrant(name=hello.name, secret=secret, lss=None, is_peer=True, serial=peer.serial)
        )

    def _secret_for(self, hello: native.Hello) -> bytes | None:
        if hello.role is native.PeerRole.HOST:
            grant = self.controller.hosts.get(hello.name)
            return grant.secret if grant else None
        peer = self.controller.peers.get(hello.name)
        return peer.secret.encode() if peer else None

    # Serving requests...

    def _answer(
        self, link: _Link, grant: HostGrant, msg: native.Message
    ) -> Awaitable[native.Message] | None:
        """Answer at once, or return the awaitable whose result is the answer."""
        core = self.controller
        rid = msg.request_id
        try:
            if grant.is_peer and not isinstance(msg, _PEER_KINDS):
                raise NotOffered(
                    f"controller {grant.name}: a peer controller sends pair operations and "
                    f"replication updates, not {type(msg).__name__}"
                )
            match msg:
                case native.WriteRequest():
                    pending = self.replicator.host_write(grant, msg)
                    if pending is not None or msg.fua:
                        return self._write_done(grant, msg, pending)
                    reply: native.Message = native.WriteReply(request_id=rid)
                case native.UpdateBatch():
                    if not grant.is_peer:
                        raise DeviceNotAllowed(
                            f"{grant.name}: only peer controllers send replication updates"
                        )
                    ack, durable = self.replicator.apply_updates(grant.serial, msg)
                    reply = replace(ack, request_id=rid)
                    if durable is not None:
                        # Journaled at the secondary: told only once it is on disk.
                        return _after(asyncio.shield(durable), reply)
                case native.Watermark():
                    if not grant.is_peer:
                        raise DeviceNotAllowed(
                            f"{grant.name}: only peer controllers send replication watermarks"
                        )
                    reply = replace(self.replicator.watermark(grant.serial, msg), request_id=rid)
                case native.PairOpRequest():
                    if grant.is_peer:
                        reply = replace(self.replicator.peer_op(grant.serial, msg), request_id=rid)
                        if not self.controller.writer.idle:
                            # Answered once the states it changed are durable.
                            return _after(self.controller.settled(), reply)
                    else:
                        core.counters["pair_ops"] += 1
                        return _with_rid(self.replicator.pair_op(grant, msg), rid)
                case native.ReadRequest():
                    reply = native.ReadReply(
                        request_id=rid, data=core.read(grant, msg.device, msg.offset, msg.length)
                    )
                case native.IdentifyRequest():
                    if core.config.controller.identify_delay_s:
                        return self._identify_slowly(grant, msg)
                    reply = native.IdentifyReply(
                        request_id=rid, identities=tuple(core.identify(grant, msg.devices))
                    )
                case native.QueryRequest():
                    statuses = self.replicator.query(core.query(grant, msg.devices))
                    reply = native.QueryReply(request_id=rid, statuses=tuple(statuses))
                case native.FlushRequest():
                    volumes = core.flush_targets(grant, msg.devices)
                    self.replicator.flush_changemaps(core.host_devices(grant, msg.devices))
                    core.counters["flushes"] += 1
                    return _after(
                        asyncio.to_thread(_flush_volumes, volumes),
                        native.FlushReply(request_id=rid),
                    )
                case native.StatusRequest():
                    reply = native.StatusReply(request_id=rid, document=core.status(grant))
                case native.SubscribeRequest():
                    self._subscribe(link, grant, msg)
                    return None
                case _:
                    raise RemcopyInternalError(f"no handler for {type(msg).__name__}")
        except RemcopyError as exc:
            reply = self._error_reply(link, rid, exc)
        except Exception as exc:  # our bug: answer it, log it, keep serving everyone
            log.exception("internal error answering %s from %s", type(msg).__name__, link.client)
            reply = self._error_reply(
                link,
                rid,
                RemcopyInternalError(
                    f"internal error: this should never happen; please report it: "
                    f"{type(exc).__name__}: {exc}"
                ),
            )
        link.send(reply)
        return None

    async def _identify_slowly(
        self, grant: HostGrant, msg: native.IdentifyRequest
    ) -> native.Message:
        """The slow-controller testing aid; counts how many identifies overlap."""
        counters = self.controller.counters
        counters["identify_in_flight"] = counters.get("identify_in_flight", 0) + 1
        counters["identify_in_flight_peak"] = max(
            counters.get("identify_in_flight_peak", 0), counters["identify_in_flight"]
        )
        try:
            await asyncio.sleep(self.controller.config.controller.identify_delay_s)
            identities = tuple(self.controller.identify(grant, msg.devices))
        finally:
            counters["identify_in_flight"] -= 1
        return native.IdentifyReply(request_id=msg.request_id, identities=identities)

    async def _write_done(
        self, grant: HostGrant, msg: native.WriteRequest, pending: Awaitable[None] | None
    ) -> native.Message:
        if pending is not None:
            await pending
        if msg.fua:
            device = self.controller.device(msg.device)
            await asyncio.to_thread(device.volume.flush)
            self.replicator.flush_changemaps([msg.device])
        return native.WriteReply(request_id=msg.request_id)

    async def _answer_slow(
        self,
        link: _Link,
        msg: native.Message,
        work: Awaitable[native.Message],
        timed: Latency | None = None,
        started: float = 0.0,
    ) -> None:
        try:
            try:
                reply = await work
            except RemcopyError as exc:
                reply = self._error_reply(link, msg.request_id, exc)
            except Exception as exc:  # our bug: answer it, log it, keep serving everyone
                log.exception(
                    "internal error answering %s from %s", type(msg).__name__, link.client
                )
                reply = self._error_reply(
                    link,
                    msg.request_id,
                    RemcopyInternalError(
                        f"internal error: this should never happen; please report it: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                )
            link.send(reply)
            if timed is not None:
                timed.observe(time.perf_counter() - started)
        finally:
            link.settled()  # after the reply is queued: settling may close an ending link

    def _error_reply(self, link: _Link, rid: int, exc: RemcopyError) -> native.ErrorReply:
        self.controller.counters["errors"] += 1
        if not exc.retryable:
            log.warning("refused request from %s: %s", link.client, exc)
        return native.ErrorReply(request_id=rid, code=exc.code, message=str(exc))

    def _subscribe(self, link: _Link, grant: HostGrant, request: native.SubscribeRequest) -> None:
        """Replay what the subscriber missed (if asked), say SUBSCRIBED, then go live. All in
        one loop step, so no event falls between the replay and the live stream. Only the
        events its grant reaches are sent (controller/eventscope.py), each with the number
        it follows on from (`prev_seq`), so the holes the filter makes are not losses."""
        transport = link.transport
        assert transport is not None
        rid = request.request_id
        core = self.controller
        # The subscriber's position: the number of the last event sent to it, or where it
        # resumed, or the number it went live at.
        position = min(request.after_seq, core.event_log.last_seq) if request.replay else 0

        def send(event: Event) -> None:
            nonlocal position
            link.send(native.EventNotice(request_id=rid, event=replace(event, prev_seq=position)))
            position = event.seq

        def sink(event: Event) -> None:
            if transport.is_closing():
                core.remove_sink(sink)
            elif transport.get_write_buffer_size() > SUBSCRIBER_BUFFER_MAX_BYTES:
                log.warning("dropped slow event subscriber %s", link.client)
                core.remove_sink(sink)
                transport.close()
            elif visible_to(core, link.grant or grant, event):  # a reload may change the grant
                send(event)

        if request.replay:
            for event in core.event_log.since(request.after_seq):
                if not event.numbered:  # a GAP: told as this controller's, now
                    event = replace(
                        event, serial=core.serial, controller=core.name, time_ns=time.time_ns()
                    )
                elif not visible_to(core, grant, event):
                    continue
                send(event)
        link.sinks.append(sink)
        core.add_sink(sink)
        last = core.event_log.last_seq
        send(
            Event(
                kind=EventKind.SUBSCRIBED,
                seq=last,
                serial=core.serial,
                controller=core.name,
                time_ns=time.time_ns(),
                text=f"subscribed {core.name} last={last}",
            )
        )


def _failure_of(group: BaseExceptionGroup[BaseException]) -> RemcopyError:
    """What stopped the server's TaskGroup, as one error to log and exit with."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _failure_of(exc)
        if isinstance(exc, ControllerFailed):
            return exc
        if isinstance(exc, RemcopyError):
            return ControllerFailed(f"controller stopped: {exc}")
    first = group.exceptions[0]
    return ControllerFailed(f"controller stopped: {type(first).__name__}: {first}")


class ListenError(RemcopyError):
    """the controller cannot listen on its configured address"""

    code = 14
    exit_code = 2


async def _with_rid(work: Awaitable[native.PairOpReply], rid: int) -> native.Message:
    return replace(await work, request_id=rid)


async def _after(work: Awaitable[object], reply: native.Message) -> native.Message:
    await work
    return reply


def _flush_volumes(volumes: list[Volume]) -> None:
    for volume in volumes:
        volume.flush()


async def run_controller(controller: Controller, *, announce_ready: bool = True) -> None:
    """Serve a controller until SIGTERM or SIGINT; prints one ready line on stdout."""
    server = ControllerServer(controller)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload)

    def ready(address: tuple[str, int]) -> None:
        # What the controller built to start (devices, pair state, change maps: hundreds of
        # thousands of objects at 10,000 devices) lives as long as it does: out of the
        # collector's sight (gc.freeze), so a full collection does not walk all of it while
        # host I/O waits. (The collection thresholds stay Python's: collected less often, the
        # cyclic garbage of 2,000 clients that came and went grew the RSS by 55 MiB.)
        gc.freeze()
        if announce_ready:
            nbd = f" nbd={format_address(server.nbd_address)}" if server.nbd_address else ""
            if server.metrics_address:
                nbd += f" metrics={format_address(server.metrics_address)}"
            print(
                f"remcopy controller {controller.name} ready serial={controller.serial} "
                f"listen={format_address(address)} volumes={len(controller.devices)}{nbd} "
                f"links={controller.links}",
                flush=True,
            )
        log.info(
            "controller %s listening on %s: links are %s",
            controller.name,
            format_address(address),
            "TLS 1.3 with client certificates"
            if controller.links == "tls"
            else "plain TCP (plain_tcp = true, loopback only)",
        )

    try:
        await server.serve(ready=ready)
    finally:
        controller.close()
        log.info("controller %s stopped", controller.name)
        sys.stdout.flush()
