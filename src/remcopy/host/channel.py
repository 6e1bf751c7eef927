# A host's channel to one controller: the async client of the native protocol.
#
# Why: scan, group operations, the workload and the CLI all talk to controllers through this
# one class. It authenticates, pipelines (many requests in flight on one connection, answers
# matched by request id in any order), bounds every request by a timeout, and reconnects on
# the next request after the link broke.
#
# Rules this module keeps:
# - A request whose link breaks fails with BrokenResourceError (retryable: the caller decides);
#   a request with no answer in time fails with RequestTimeout. The channel never retries by
#   itself: retrying a write is a decision for the I/O engine, which knows the ordering rules.
# - Error frames become the same typed error on this side (errors.error_from_wire).
# - Receiving copies as little as it can: an asyncio BufferedProtocol reads the socket straight
#   into the codec's buffer and settles each reply's future in the transport's callback (no
#   reader task, no bytes object per read). Sending writes a frame's parts with writelines, so
#   a payload (write data, update data) is never copied on its way to the socket.
# - `close()` (or leaving `async with`) closes the transport; nothing runs after it.
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar, cast

from remcopy.errors import (
    AuthenticationFailed,
    BrokenResourceError,
    ClosedResourceError,
    DeviceBusy,
    RemcopyError,
    RemoteProtocolError,
    RequestTimeout,
    error_from_wire,
)
from remcopy.events import Event, EventKind
from remcopy.tls import failure_reason as tls_reason
from remcopy.wire import auth, native

CONNECT_TIMEOUT_S_DEFAULT: Final = 5.0
REQUEST_TIMEOUT_S_DEFAULT: Final = 30.0
# A busy device is asked again at once, then after a pause that doubles up to the max: the
# secondary's confirmation usually comes within a round trip, but a stalled link keeps the
# device busy until the primary's ack timeout fails it.
BUSY_BACKOFF_FIRST_S: Final = 0.0005
BUSY_BACKOFF_MAX_S: Final = 0.05
EVENT_QUEUE_MAX: Final = 100_000
# Requests queued for a controller that does not take them beyond this make the next caller
# wait for the socket (the transport's high-water mark; the low one is a quarter).
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024

ReplyT = TypeVar("ReplyT", bound=native.Message)


class Channel:
    """An authenticated, pipelined connection to one controller."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        name: str,
        secret: str | bytes,
        role: native.PeerRole = native.PeerRole.HOST,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
    ) -> None:
        """`tls`: a client context (remcopy.tls.client_context) whose certificate names this
        host or controller; None speaks plain TCP (a controller with plain_tcp, loopback only).
        `server_name`: the controller's name, which its certificate must carry (TLS only)."""
        if tls is not None and not server_name:
            raise ValueError("a TLS channel needs the controller's name (server_name)")
        self.tls = tls
        self.server_name = server_name
        self.address = address
        self.name = name
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.role = role
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.controller_name = ""
        self.controller_serial = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[native.Message]] = {}
        self._events: dict[int, asyncio.Queue[Event | None]] = {}
        self._transport: asyncio.Transport | None = None
        self._protocol: _ChannelProtocol | None = None
        self._codec: native.Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False
        self.requests_sent = 0
        self.reconnects = 0
        self.busy_retries = 0

    def __repr__(self) -> str:
        host, port = self.address
        state = "closed" if self._closed else ("open" if self._transport else "idle")
        return (
            f"<Channel {self.name}->{self.controller_name or '?'} {host}:{port} {state} "
            f"in_flight={len(self._pending)} sent={self.requests_sent}>"
        )

    async def __aenter__(self) -> Channel:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Connecting...

    async def connect(self) -> None:
        """Open and authenticate the connection if it is not open."""
        if self._closed:
            raise ClosedResourceError(f"channel to {self._where()} was closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:
                return
            if self._transport is not None:
                self.reconnects += 1
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await self._open()
            except TimeoutError:
                raise RequestTimeout(
                    f"connect to {self._where()}: no answer within {self.connect_timeout_s} s"
                ) from None
            except OSError as exc:
                raise BrokenResourceError(
                    f"connect to {self._where()}: {exc.strerror or exc}"
                ) from exc

    async def _open(self) -> None:
        codec = native.Connection(native.Side.CLIENT)
        try:
            transport, protocol = await asyncio.get_running_loop().create_connection(
                lambda: _ChannelProtocol(codec),
                *self.address,
                ssl=self.tls,
                server_hostname=self.server_name if self.tls is not None else None,
            )
        except ssl.SSLError as exc:
            raise AuthenticationFailed(
                f"TLS handshake with controller {self.server_name} at {self._where()} failed: "
                f"{tls_reason(exc)}"
            ) from None
        except ConnectionResetError as exc:
            if self.tls is None:
                raise
            raise self._tls_refused(tls_reason(exc)) from None
        try:
            # The client proves first (wire/auth.py): HELLO, CHALLENGE, PROOF, then WELCOME
            # with the controller's proof, checked here.
            nonce = os.urandom(auth.NONCE_SIZE_BYTES)
            transport.writelines(
                codec.send_parts(native.Hello(role=self.role, name=self.name, nonce=nonce))
            )
            challenge = await self._handshake_reply(protocol)
            if not isinstance(challenge, native.Challenge):
                raise RemoteProtocolError(f"{self._where()}: expected a challenge")
            names = auth.Transcript(
                role=int(self.role),
                client=self.name,
                server=challenge.name,
                client_nonce=nonce,
                server_nonce=challenge.nonce,
            )
            transport.writelines(
                codec.send_parts(native.Proof(proof=auth.client_proof(self._secret, names)))
            )
            welcome = await self._handshake_reply(protocol)
            if not isinstance(welcome, native.Welcome):
                raise RemoteProtocolError(f"{self._where()}: expected WELCOME")
            if not auth.proofs_equal(welcome.proof, auth.server_proof(self._secret, names)):
                raise AuthenticationFailed(
                    f"controller at {self._where()} could not prove it "
                    "knows the secret: wrong secret on one side"
                )
        except BaseException:
            transport.close()
            raise
        self.controller_name, self.controller_serial = welcome.name, welcome.serial
        self._transport, self._protocol, self._codec = transport, protocol, codec
        protocol.attach(self._dispatch, lambda cause: self._broken(protocol, cause))

    async def _handshake_reply(self, protocol: _ChannelProtocol) -> native.Message:
        """The controller's next handshake frame; an error frame or a close becomes an error
        that says what likely happened."""
        try:
            reply = await protocol.receive()
        except BrokenResourceError as exc:
            if self.tls is not None:
                raise self._tls_refused(str(exc.__cause__ or exc)) from exc
            raise BrokenResourceError(
                f"{self._where()} closed the connection during the handshake (a TLS "
                "controller closes a plain-TCP client at once: give the host its [tls])"
            ) from exc
        except (ssl.SSLError, ConnectionResetError) as exc:
            if self.tls is None:
                raise
            # The controller refused our certificate: a TLS alert, or a reset.
            raise self._tls_refused(tls_reason(exc)) from None
        if isinstance(reply, native.ErrorReply):
            error = error_from_wire(reply.code, reply.message)
            if isinstance(error, AuthenticationFailed):  # say which controller refused
                name = f"controller {self.server_name}" if self.server_name else self._where()
                raise AuthenticationFailed(f"{name}: {reply.message}")
            raise error
        return reply

    def _tls_refused(self, reason: str) -> AuthenticationFailed:
        """TLS 1.3 ends the client's handshake before the controller checked its certificate:
        a refusal shows as a close (or an alert) at the first reply."""
        return AuthenticationFailed(
            f"controller {self.server_name} at {self._where()} did not accept this TLS client "
            f"({reason}): its certificate is expired, from another CA or missing, or this "
            "address failed too many handshakes; the controller's log says which"
        )

    async def close(self) -> None:
        self._closed = True
        await self._drop(ClosedResourceError(f"channel to {self._where()} was closed"))

    async def disconnect(self, reason: str) -> None:
        """Drop the connection (pending requests fail); the next request reconnects."""
        await self._drop(BrokenResourceError(f"link to {self._where()} dropped: {reason}"))

    async def _drop(self, exc: RemcopyError) -> None:
        transport, protocol = self._transport, self._protocol
        self._transport, self._protocol, self._codec = None, None, None
        self._fail_pending(exc)
        if transport is not None and protocol is not None:
            transport.close()
            with contextlib.suppress(Exception):
                await protocol.wait_closed()

    def _broken(self, protocol: _ChannelProtocol, cause: BaseException) -> None:
        """The link failed under us (EOF, reset, garbage): fail what waits on it."""
        if self._protocol is not protocol:
            return  # dropped on purpose already
        err = BrokenResourceError(f"link to {self._where()} broke: {cause}")
        err.__cause__ = cause
        transport = self._transport
        self._transport, self._protocol, self._codec = None, None, None
        if transport is not None:
            transport.close()
        self._fail_pending(err)

    def _fail_pending(self, exc: RemcopyError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
        events, self._events = self._events, {}
        for queue in events.values():
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _where(self) -> str:
        host, port = self.address
        return f"{self.controller_name or 'controller'} {host}:{port}"

    # Receiving...

    def _dispatch(self, msg: native.Message) -> None:
        if isinstance(msg, native.EventNotice):
            queue = self._events.get(msg.request_id)
            if queue is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(msg.event)
            return
        future = self._pending.pop(msg.request_id, None)
        if future is None or future.done():
            return  # answer to a request that timed out: dropped
        if isinstance(msg, native.ErrorReply):
            future.set_exception(error_from_wire(msg.code, msg.message))
        else:
            future.set_result(msg)

    # Requests...

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send_nowait(self, msg: native.Message) -> asyncio.Future[native.Message]:
        """Write a request now, in call order, and return the future of its answer.

        The link must be connected. Frames written by successive calls reach the controller in
        the order of the calls: replication relies on this.
        """
        transport, codec = self._transport, self._codec
        if transport is None or transport.is_closing() or codec is None:
            raise BrokenResourceError(f"link to {self._where()} is not connected")
        rid = next(self._ids)
        msg = _with_id(msg, rid)
        parts = codec.send_parts(msg)  # first: a message that cannot be encoded waits for nothing
        future: asyncio.Future[native.Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        transport.writelines(parts)
        self.requests_sent += 1
        future.add_done_callback(lambda f: self._settled(rid, f))
        return future

    def _settled(self, rid: int, future: asyncio.Future[native.Message]) -> None:
        self._pending.pop(rid, None)
        if not future.cancelled():
            future.exception()  # retrieved: a caller that gave up must not cause a warning

    async def request(
        self, msg: native.Message, reply_type: type[ReplyT], *, timeout_s: float | None = None
    ) -> ReplyT:
        """Send a request (its request_id is assigned here) and wait for its answer."""
        if not self.connected:
            await self.connect()
        future = self.send_nowait(msg)
        return await self.wait_reply(future, msg, reply_type, timeout_s=timeout_s)

    async def wait_reply(
        self,
        future: asyncio.Future[native.Message],
        msg: native.Message,
        reply_type: type[ReplyT],
        *,
        timeout_s: float | None = None,
    ) -> ReplyT:
        limit = timeout_s if timeout_s is not None else self.timeout_s
        try:
            async with asyncio.timeout(limit):
                reply = await asyncio.shield(future)
        except TimeoutError:
            future.cancel()
            raise RequestTimeout(
                f"{type(msg).__name__} to {self._where()}: no answer within {limit} s"
            ) from None
        if not isinstance(reply, reply_type):
            raise RemoteProtocolError(
                f"{self._where()}: answered {type(reply).__name__} to {type(msg).__name__}"
            )
        protocol = self._protocol
        if protocol is not None:
            await protocol.wait_writable()
        return reply

    async def identify(self, devices: tuple[int, ...] = ()) -> tuple[native.DeviceIdentity, ...]:
        reply = await self.request(
            native.IdentifyRequest(devices=tuple(devices)), native.IdentifyReply
        )
        return reply.identities

    async def query(self, devices: tuple[int, ...] = ()) -> tuple[native.DeviceStatus, ...]:
        reply = await self.request(native.QueryRequest(devices=tuple(devices)), native.QueryReply)
        return reply.statuses

    async def read(self, device: int, offset: int, length: int) -> bytes:
        reply = await self.request(
            native.ReadRequest(device=device, offset=offset, length=length), native.ReadReply
        )
        return reply.data

    async def write(
        self,
        device: int,
        offset: int,
        data: bytes,
        *,
        timestamp_ns: int | None = None,
        fua: bool = False,
    ) -> int:
        """Write; returns the timestamp the write was stamped with (its issue time).

        A device that answers busy (a semisync pair whose previous update the secondary has
        not confirmed: nothing was written) is asked again with the same stamp, as a host
        channel retries a busy device, until it accepts or `timeout_s` has passed."""
        stamp = time.time_ns() if timestamp_ns is None else timestamp_ns
        request = native.WriteRequest(
            device=device, offset=offset, data=data, timestamp_ns=stamp, fua=fua
        )
        deadline = time.monotonic() + self.timeout_s
        pause_s = 0.0
        while True:
            try:
                await self.request(request, native.WriteReply)
            except DeviceBusy:
                self.busy_retries += 1
                if time.monotonic() >= deadline:
                    raise
                if pause_s:
                    await asyncio.sleep(pause_s)
                pause_s = min(BUSY_BACKOFF_MAX_S, max(BUSY_BACKOFF_FIRST_S, 2 * pause_s))
                continue
            return stamp

    async def flush(self, devices: tuple[int, ...] = ()) -> None:
        await self.request(native.FlushRequest(devices=tuple(devices)), native.FlushReply)

    async def pair_op(
        self,
        op: native.PairOp,
        items: tuple[native.PairItem, ...],
        *,
        at_ns: int = 0,
        options: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        packed: bytes = b"",
    ) -> native.PairOpReply:
        """One pair operation on a batch of this controller's devices; results per device.
        `packed`: `native.pack_items(items)` made earlier (else packed here)."""
        request = native.PairOpRequest(
            op=op, items=items, at_ns=at_ns, options=options or {}, packed=packed
        )
        return await self.request(request, native.PairOpReply, timeout_s=timeout_s)

    async def status(self) -> dict[str, Any]:
        reply = await self.request(native.StatusRequest(), native.StatusReply)
        return reply.document

    async def subscribe(self, *, after_seq: int | None = None) -> Subscription:
        """Follow the controller's events; the stream is live when this returns.

        With `after_seq`, the events the controller kept that are numbered after it come
        first (after a GAP event when some of them are no longer kept): a reader that saw up
        to `after_seq` misses nothing and sees nothing twice."""
        if not self.connected:
            await self.connect()
        assert self._transport is not None
        assert self._codec is not None
        rid = next(self._ids)
        queue: asyncio.Queue[Event | None] = asyncio.Queue(EVENT_QUEUE_MAX)
        self._events[rid] = queue
        request = native.SubscribeRequest(
            request_id=rid, replay=after_seq is not None, after_seq=after_seq or 0
        )
        self._transport.writelines(self._codec.send_parts(request))
        replayed: list[Event] = []
        async with asyncio.timeout(self.timeout_s):
            while True:
                event = await queue.get()
                if event is None:
                    raise BrokenResourceError(f"subscribe to {self._where()}: link closed")
                if event.kind is EventKind.SUBSCRIBED:
                    return Subscription(queue, replayed=replayed, live_after_seq=event.seq)
                replayed.append(event)


class Subscription:
    """A live stream of one controller's events (remcopy.events), replayed ones first."""

    def __init__(
        self,
        queue: asyncio.Queue[Event | None],
        *,
        replayed: list[Event] | None = None,
        live_after_seq: int = 0,
    ) -> None:
        self._queue = queue
        self._replayed = collections.deque(replayed or ())
        self.live_after_seq = live_after_seq
        """The controller's last event number when the stream went live."""
        self.seen: list[Event] = []

    def __repr__(self) -> str:
        return f"<Subscription live_after={self.live_after_seq} seen={len(self.seen)}>"

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    def take_replayed(self) -> list[Event]:
        """The events the controller replayed before going live (a GAP first if some were
        gone), taken out of the stream: iterating goes on with the live ones."""
        replayed, self._replayed = list(self._replayed), collections.deque()
        self.seen.extend(replayed)
        return replayed

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            if self._replayed:
                event: Event | None = self._replayed.popleft()
            else:
                event = await self._queue.get()
            if event is None:
                return
            self.seen.append(event)
            yield event

    async def wait_for(self, pattern: str, *, timeout_s: float = 30.0) -> Event:
        """The first event (from now on) whose text matches the regular expression."""
        regex = re.compile(pattern)
        return await self.wait_until(
            lambda e: regex.search(e.text) is not None, timeout_s=timeout_s
        )

    async def wait_until(self, met: Callable[[Event], bool], *, timeout_s: float = 30.0) -> Event:
        """The first event (from now on) for which `met` is true."""
        async with asyncio.timeout(timeout_s):
            async for event in self:
                if met(event):
                    return event
        raise BrokenResourceError("event stream ended before an awaited event came")


def _with_id(msg: native.Message, rid: int) -> native.Message:
    from dataclasses import replace

    return replace(msg, request_id=rid)


class _ChannelProtocol(asyncio.BufferedProtocol):
    """The transport's side of a channel: reads into the codec, hands out whole messages.

    During the handshake, messages wait in an inbox for `receive`; after it (`attach`), each
    is dispatched in the transport's callback, and the first failure is reported once.
    """

    def __init__(self, codec: native.Connection) -> None:
        self.codec = codec
        self.transport: asyncio.Transport | None = None
        self._inbox: list[native.Message] = []
        self._arrived: asyncio.Future[None] | None = None  # receive() waits on it
        self._dispatch: Callable[[native.Message], None] | None = None
        self._on_broken: Callable[[BaseException], None] | None = None
        self._failure: BaseException | None = None
        self._peer_closed = False  # the failure is the controller's EOF on a frame boundary
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writing_paused = False
        self._writable: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<_ChannelProtocol failed={self._failure is not None} {self.codec!r}>"

    # Protocol callbacks...

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.codec.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.codec.buffer_updated(nbytes)
        self._drain_codec()

    def eof_received(self) -> bool:
        self.codec.receive_data(b"")
        self._drain_codec()
        return False  # the controller is done with us: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection lost"))
        self._set_writable()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._set_writable()

    # For the channel...

    async def receive(self) -> native.Message:
        """The next message during the handshake."""
        while not self._inbox:
            if self._failure is not None:
                if self._peer_closed:
                    raise BrokenResourceError(
                        "controller closed the connection during the handshake"
                    )
                raise self._failure  # a protocol error, or an OSError connect() translates
            self._arrived = asyncio.get_running_loop().create_future()
            try:
                await self._arrived
            finally:
                self._arrived = None
        return self._inbox.pop(0)

    def attach(
        self,
        dispatch: Callable[[native.Message], None],
        on_broken: Callable[[BaseException], None],
    ) -> None:
        """From now on, dispatch every message at once and report the first failure."""
        self._dispatch, self._on_broken = dispatch, on_broken
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            dispatch(msg)
        if self._failure is not None:
            on_broken(self._failure)

    async def wait_writable(self) -> None:
        """Wait while the transport holds more than WRITE_BUFFER_HIGH_BYTES unsent."""
        while self._writing_paused and self._failure is None:
            if self._writable is None or self._writable.done():  # one future for all waiters
                self._writable = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._writable)

    async def wait_closed(self) -> None:
        await self._closed

    def _drain_codec(self) -> None:
        while self._failure is None:
            try:
                event = self.codec.next_event()
            except RemcopyError as exc:
                self._fail(exc)
                return
            if event is native.NEED_DATA:
                return
            if event is native.CLOSED:
                self._peer_closed = True
                self._fail(ConnectionResetError("controller closed the connection"))
                return
            assert isinstance(event, native.Message)
            if self._dispatch is not None:
                self._dispatch(event)
            else:
                self._inbox.append(event)
                if self._arrived is not None and not self._arrived.done():
                    self._arrived.set_result(None)

    def _fail(self, cause: BaseException) -> None:
        if self._failure is not None:
            return
        self._failure = cause
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if self._on_broken is not None:
            self._on_broken(cause)
        elif self.transport is not None:
            self.transport.close()

    def _set_writable(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
