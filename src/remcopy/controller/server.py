# The controller's asyncio shell: accept connections, authenticate, move frames, answer.
#
# Why: this is the only place where the controller touches sockets. It reads bytes, feeds the
# native codec, hands each request to the core (core.py), and writes the codec's answer.
# Decisions belong to the core; this file decides only *when* things happen.
#
# Rules this module keeps:
# - Nothing is done for a connection before it authenticated: the handshake runs first, under
#   a deadline, and the codec itself refuses request frames before WELCOME.
# - One task per connection; every task a connection starts belongs to that connection's
#   TaskGroup (no fire-and-forget), and the connection's stream is closed in `finally`.
# - Bounded memory per connection: requests are decoded only after the previous batch was
#   handled, slow work (flush) is bounded by IN_FLIGHT_MAX, and replies wait for the socket
#   to drain past WRITE_BUFFER_HIGH_BYTES. A host that sends faster than the disk writes is
#   slowed by TCP, not buffered.
# - A refused connection (unknown host, wrong secret, replayed or reflected nonce, version
#   mismatch, garbage) gets one error frame naming the reason, a log line, and is closed; the
#   controller goes on serving everyone else.
# - SIGTERM: stop accepting, stop reading, finish the requests already read, close, flush
#   every volume. A write is acknowledged only after it is in the volume file, so nothing
#   half-written is ever acknowledged.
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

from remcopy.configfile import format_address
from remcopy.controller.core import Controller, EventSink, HostGrant
from remcopy.controller.nbd_server import NbdServer
from remcopy.controller.replication import Replicator
from remcopy.controller.volume import Volume
from remcopy.errors import (
    AuthenticationFailed,
    DeviceNotAllowed,
    ProtocolError,
    RemcopyError,
    RemcopyInternalError,
    ShuttingDown,
)
from remcopy.wire import auth, native
from remcopy.wire.native import Side

log = logging.getLogger("remcopy.controller")

HANDSHAKE_TIMEOUT_S: Final = 10.0
# One read takes up to 1 MiB off the socket: sixteen 64 KiB writes per wake-up.
READ_CHUNK_BYTES: Final = 1024 * 1024
# Requests that wait on something slower than memory (fdatasync, later a peer) at once.
IN_FLIGHT_MAX: Final = 64
# Replies queued for a slow reader beyond this make the connection wait for the socket.
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024
# An event subscriber that falls this far behind is dropped rather than buffered.
SUBSCRIBER_BUFFER_MAX_BYTES: Final = 8 * 1024 * 1024


class _Link:
    """One accepted connection: its codec, its stream, and who is on the other end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = native.Connection(Side.SERVER)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client = "?"
        self.sinks: list[EventSink] = []
        """Event sinks of this connection's subscriptions, removed when it ends."""

    def send(self, msg: native.Message) -> None:
        if self.codec.phase is native.Phase.CLOSED and msg.KIND in native.REPLY_KINDS:
            # The peer sent EOF (or garbage) after requests we already read: still answer them.
            self.writer.write(native.encode(msg))
            return
        self.writer.write(self.codec.send(msg))

    async def receive(self) -> native.Message | None:
        """The next message, or None at end of stream."""
        while True:
            event = self.codec.next_event()
            if isinstance(event, native.Message):
                return event
            if event is native.CLOSED:
                return None
            data = await self.reader.read(READ_CHUNK_BYTES)
            self.codec.receive_data(data)

    def stop_reading(self) -> None:
        """Turn the stream's end into an EOF so the loop ends after what it already read."""
        transport = self.writer.transport
        if not transport.is_closing() and isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        if not self.reader.at_eof():
            self.reader.feed_eof()


class ControllerServer:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._links: set[_Link] = set()
        self._stopping = asyncio.Event()
        self._server_nonces = auth.NonceLedger()
        self._client_nonces = auth.NonceLedger()
        self.address: tuple[str, int] | None = None
        self.replicator = Replicator(controller)
        self.nbd: NbdServer | None = None  # the NBD export, when nbd_listen is configured
        self.nbd_address: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"<ControllerServer {self.controller.name} links={len(self._links)}>"

    async def serve(self, *, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
        """Serve until stop() is called; calls ready(address) once listening."""
        host, port = self.controller.config.controller.listen
        try:
            server = await asyncio.start_server(
                self._handle, host, port, limit=READ_CHUNK_BYTES, reuse_address=True
            )
        except OSError as exc:
            raise ListenError(
                f"controller.listen: cannot listen on "
                f"{format_address((host, port))}: {exc.strerror}"
            ) from exc
        sockname = server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        try:
            await self._start_nbd()  # --- NBD export ---
        except ListenError:
            server.close()
            raise
        if ready is not None:
            ready(self.address)
        replication = asyncio.get_running_loop().create_task(self.replicator.run())
        # --- NBD export: served next to the native server, stopped with it ---
        nbd_serving = (
            asyncio.get_running_loop().create_task(self.nbd.serve())
            if self.nbd is not None
            else None
        )
        async with server:
            await self._stopping.wait()
            server.close()
            if self.nbd is not None:
                self.nbd.stop()
            for link in list(self._links):
                link.stop_reading()
            grace = self.controller.config.controller.shutdown_grace_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await server.wait_closed()
        if nbd_serving is not None:
            await nbd_serving  # bounded by its own grace; before the replicator stops
        replication.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await replication
        self._flush_all()
        self.replicator.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _start_nbd(self) -> None:
        # --- NBD export (controller/nbd_server.py, docs/nbd.md) ---
        section = self.controller.config.controller
        if section.nbd_listen is None:
            return
        self.nbd = NbdServer(
            self.controller,
            self.replicator,
            listen=section.nbd_listen,
            allow=section.nbd_allow,
            multi_conn=section.nbd_multi_conn,
            grace_s=section.shutdown_grace_s,
        )
        try:
            self.nbd_address = await self.nbd.start()
        except OSError as exc:
            raise ListenError(
                f"controller.nbd_listen: cannot listen on "
                f"{format_address(section.nbd_listen)}: {exc.strerror}"
            ) from exc

    def _flush_all(self) -> None:
        for device in self.controller.devices.values():
            try:
                device.volume.flush()
            except RemcopyError as exc:
                log.error("shutdown flush failed: %s", exc)

    # Accepting a connection...

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(reader, writer)
        self._links.add(link)
        self.controller.counters["connections"] += 1
        try:
            if self._stopping.is_set():
                link.send(
                    native.ErrorReply(code=ShuttingDown.code, message="controller is shutting down")
                )
                return
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    grant = await self._handshake(link)
            except TimeoutError:
                self._refuse(
                    link,
                    AuthenticationFailed(
                        f"handshake from {link.peer}: no answer within {HANDSHAKE_TIMEOUT_S} s"
                    ),
                )
                return
            if grant is None:
                return
            await self._serve_requests(link, grant)
        except ProtocolError as exc:
            self._refuse(link, exc)
        except (ConnectionError, OSError):
            pass  # the peer went away; nothing was half-acknowledged
        finally:
            self._links.discard(link)
            for sink in link.sinks:  # a subscriber that left is forgotten at once
                self.controller.remove_sink(sink)
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    def _refuse(self, link: _Link, exc: RemcopyError) -> None:
        self.controller.counters["auth_refused"] += isinstance(exc, AuthenticationFailed)
        log.warning("refused %s (%s): %s", link.peer, link.client, exc)
        with contextlib.suppress(Exception):
            link.send(native.ErrorReply(code=exc.code, message=str(exc)))

    async def _handshake(self, link: _Link) -> HostGrant | None:
        hello = await link.receive()
        if hello is None:
            return None
        assert isinstance(hello, native.Hello)  # the codec accepts nothing else first
        link.client = f"{hello.role.name.lower()} {hello.name}"
        secret = self._secret_for(hello)
        if secret is None:
            kind = "host" if hello.role is native.PeerRole.HOST else "peer"
            raise AuthenticationFailed(
                f"{kind} {hello.name!r} is not in controller {self.controller.name}'s config"
            )
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
        link.send(
            native.Challenge(
                name=self.controller.name,
                nonce=server_nonce,
                proof=auth.server_proof(secret, names),
            )
        )
        proof = await link.receive()
        if proof is None:
            self.controller.counters["auth_refused"] += 1
            log.warning(
                "refused %s (%s): it left after the challenge: it could not verify "
                "this controller's proof: wrong secret on one side",
                link.peer,
                link.client,
            )
            return None
        assert isinstance(proof, native.Proof)
        if not auth.proofs_equal(proof.proof, auth.client_proof(secret, names)):
            raise AuthenticationFailed(f"{link.client}: wrong secret")
        link.send(native.Welcome(serial=self.controller.serial, name=self.controller.name))
        log.info("authenticated %s from %s", link.client, link.peer)
        if hello.role is native.PeerRole.HOST:
            return self.controller.hosts[hello.name]
        peer = self.controller.peers[hello.name]
        return HostGrant(name=hello.name, secret=secret, lss=None, is_peer=True, serial=peer.serial)

    def _secret_for(self, hello: native.Hello) -> bytes | None:
        if hello.role is native.PeerRole.HOST:
            grant = self.controller.hosts.get(hello.name)
            return grant.secret if grant else None
        peer = self.controller.peers.get(hello.name)
        return peer.secret.encode() if peer else None

    # Serving requests...

    async def _serve_requests(self, link: _Link, grant: HostGrant) -> None:
        slots = asyncio.Semaphore(IN_FLIGHT_MAX)
        transport = link.writer.transport
        failure: Exception | None = None  # raised bare, after the TaskGroup: not in a group
        async with asyncio.TaskGroup() as tasks:
            while True:
                try:
                    msg = await link.receive()
                except (ProtocolError, ConnectionError, OSError) as exc:
                    failure = exc
                    break
                if msg is None:
                    return
                self.controller.counters["requests"] += 1
                slow = self._answer(link, grant, msg)
                if slow is not None:
                    await slots.acquire()
                    tasks.create_task(self._answer_slow(link, msg, slow, slots))
                if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH_BYTES:
                    await link.writer.drain()
        if failure is not None:
            raise failure  # _handle answers a protocol error with an error frame

    def _answer(
        self, link: _Link, grant: HostGrant, msg: native.Message
    ) -> Awaitable[native.Message] | None:
        """Answer at once, or return the awaitable whose result is the answer."""
        core = self.controller
        rid = msg.request_id
        try:
            match msg:
                case native.WriteRequest():
                    if grant.is_peer:
                        raise DeviceNotAllowed(
                            f"{grant.name}: a peer controller sends updates, not host writes"
                        )
                    pending = self.replicator.host_write(grant, msg)
                    if pending is not None or msg.fua:
                        return self._write_done(grant, msg, pending)
                    reply: native.Message = native.WriteReply(request_id=rid)
                case native.UpdateBatch():
                    if not grant.is_peer:
                        raise DeviceNotAllowed(
                            f"{grant.name}: only peer controllers send replication updates"
                        )
                    reply = replace(
                        self.replicator.apply_updates(grant.serial, msg), request_id=rid
                    )
                case native.PairOpRequest():
                    if grant.is_peer:
                        reply = replace(self.replicator.peer_op(grant.serial, msg), request_id=rid)
                    else:
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
                    reply = native.StatusReply(request_id=rid, document=core.status())
                case native.SubscribeRequest():
                    self._subscribe(link, rid)
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
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            reply = await work
        except RemcopyError as exc:
            reply = self._error_reply(link, msg.request_id, exc)
        except Exception as exc:  # our bug: answer it, log it, keep serving everyone
            log.exception("internal error answering %s from %s", type(msg).__name__, link.client)
            reply = self._error_reply(
                link,
                msg.request_id,
                RemcopyInternalError(
                    f"internal error: this should never happen; please report it: "
                    f"{type(exc).__name__}: {exc}"
                ),
            )
        finally:
            slots.release()
        if not link.writer.is_closing():
            link.send(reply)

    def _error_reply(self, link: _Link, rid: int, exc: RemcopyError) -> native.ErrorReply:
        self.controller.counters["errors"] += 1
        if not exc.retryable:
            log.warning("refused request from %s: %s", link.client, exc)
        return native.ErrorReply(request_id=rid, code=exc.code, message=str(exc))

    def _subscribe(self, link: _Link, rid: int) -> None:
        transport = link.writer.transport

        def sink(line: str) -> None:
            if transport.is_closing():
                self.controller.remove_sink(sink)
            elif transport.get_write_buffer_size() > SUBSCRIBER_BUFFER_MAX_BYTES:
                log.warning("dropped slow event subscriber %s", link.client)
                self.controller.remove_sink(sink)
                transport.close()
            else:
                link.send(native.EventNotice(request_id=rid, line=line))

        link.sinks.append(sink)
        self.controller.add_sink(sink)
        link.send(native.EventNotice(request_id=rid, line=f"subscribed {self.controller.name}"))


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

    def ready(address: tuple[str, int]) -> None:
        if announce_ready:
            nbd = f" nbd={format_address(server.nbd_address)}" if server.nbd_address else ""
            print(
                f"remcopy controller {controller.name} ready serial={controller.serial} "
                f"listen={format_address(address)} volumes={len(controller.devices)}{nbd}",
                flush=True,
            )

    try:
        await server.serve(ready=ready)
    finally:
        controller.close()
        log.info("controller %s stopped", controller.name)
        sys.stdout.flush()
