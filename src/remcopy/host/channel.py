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
# - The channel owns its reader task; `close()` (or leaving `async with`) ends it.
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Final, TypeVar

from remcopy.errors import (
    AuthenticationFailed,
    BrokenResourceError,
    ClosedResourceError,
    RemcopyError,
    RemoteProtocolError,
    RequestTimeout,
    error_from_wire,
)
from remcopy.wire import auth, native

CONNECT_TIMEOUT_S_DEFAULT: Final = 5.0
REQUEST_TIMEOUT_S_DEFAULT: Final = 30.0
READ_CHUNK_BYTES: Final = 1024 * 1024
EVENT_QUEUE_MAX: Final = 100_000

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
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
    ) -> None:
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
        self._events: dict[int, asyncio.Queue[str | None]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._codec: native.Connection | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False
        self.requests_sent = 0
        self.reconnects = 0

    def __repr__(self) -> str:
        host, port = self.address
        state = "closed" if self._closed else ("open" if self._writer else "idle")
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
            if self._writer is not None and not self._writer.is_closing():
                return
            if self._writer is not None:
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
        reader, writer = await asyncio.open_connection(*self.address, limit=READ_CHUNK_BYTES)
        codec = native.Connection(native.Side.CLIENT)
        try:
            nonce = os.urandom(auth.NONCE_SIZE_BYTES)
            writer.write(codec.send(native.Hello(role=self.role, name=self.name, nonce=nonce)))
            challenge = await _receive(codec, reader)
            if isinstance(challenge, native.ErrorReply):
                raise error_from_wire(challenge.code, challenge.message)
            if not isinstance(challenge, native.Challenge):
                raise RemoteProtocolError(f"{self._where()}: expected a challenge")
            names = auth.Transcript(
                role=int(self.role),
                client=self.name,
                server=challenge.name,
                client_nonce=nonce,
                server_nonce=challenge.nonce,
            )
            if not auth.proofs_equal(challenge.proof, auth.server_proof(self._secret, names)):
                raise AuthenticationFailed(
                    f"controller at {self._where()} could not prove it "
                    "knows the secret: wrong secret on one side"
                )
            writer.write(codec.send(native.Proof(proof=auth.client_proof(self._secret, names))))
            welcome = await _receive(codec, reader)
            if isinstance(welcome, native.ErrorReply):
                raise error_from_wire(welcome.code, welcome.message)
            if not isinstance(welcome, native.Welcome):
                raise RemoteProtocolError(f"{self._where()}: expected WELCOME")
        except BaseException:
            writer.close()
            raise
        self.controller_name, self.controller_serial = welcome.name, welcome.serial
        self._writer, self._codec = writer, codec
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(reader, codec), name=f"channel-reader {self._where()}"
        )

    async def close(self) -> None:
        self._closed = True
        await self._drop(ClosedResourceError(f"channel to {self._where()} was closed"))

    async def disconnect(self, reason: str) -> None:
        """Drop the connection (pending requests fail); the next request reconnects."""
        await self._drop(BrokenResourceError(f"link to {self._where()} dropped: {reason}"))

    async def _drop(self, exc: RemcopyError) -> None:
        writer, task = self._writer, self._reader_task
        self._writer, self._codec, self._reader_task = None, None, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_pending(exc)
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

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

    async def _read_loop(self, reader: asyncio.StreamReader, codec: native.Connection) -> None:
        cause: BaseException | None = None
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                codec.receive_data(data)
                while True:
                    event = codec.next_event()
                    if event is native.NEED_DATA:
                        break
                    if event is native.CLOSED:
                        raise ConnectionResetError("controller closed the connection")
                    assert isinstance(event, native.Message)
                    self._dispatch(event)
        except asyncio.CancelledError:
            raise
        except (OSError, RemcopyError) as exc:
            cause = exc
        err = BrokenResourceError(f"link to {self._where()} broke: {cause}")
        err.__cause__ = cause
        if self._writer is not None:
            self._writer.close()
        self._writer, self._codec, self._reader_task = None, None, None
        self._fail_pending(err)

    def _dispatch(self, msg: native.Message) -> None:
        if isinstance(msg, native.EventNotice):
            queue = self._events.get(msg.request_id)
            if queue is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(msg.line)
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
        return self._writer is not None and not self._writer.is_closing()

    def send_nowait(self, msg: native.Message) -> asyncio.Future[native.Message]:
        """Write a request now, in call order, and return the future of its answer.

        The link must be connected. Frames written by successive calls reach the controller in
        the order of the calls: replication relies on this.
        """
        if self._writer is None or self._writer.is_closing() or self._codec is None:
            raise BrokenResourceError(f"link to {self._where()} is not connected")
        rid = next(self._ids)
        msg = _with_id(msg, rid)
        future: asyncio.Future[native.Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._writer.write(self._codec.send(msg))
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
        writer = self._writer
        if writer is not None and writer.transport.get_write_buffer_size() > 4 * 1024 * 1024:
            await writer.drain()
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
        """Write; returns the timestamp the write was stamped with (its issue time)."""
        stamp = time.time_ns() if timestamp_ns is None else timestamp_ns
        await self.request(
            native.WriteRequest(
                device=device, offset=offset, data=data, timestamp_ns=stamp, fua=fua
            ),
            native.WriteReply,
        )
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
    ) -> native.PairOpReply:
        """One pair operation on a batch of this controller's devices; results per device."""
        request = native.PairOpRequest(op=op, items=items, at_ns=at_ns, options=options or {})
        return await self.request(request, native.PairOpReply, timeout_s=timeout_s)

    async def status(self) -> dict[str, Any]:
        reply = await self.request(native.StatusRequest(), native.StatusReply)
        return reply.document

    async def subscribe(self) -> Subscription:
        """Subscribe to the controller's state-change lines; live when this returns."""
        if self._writer is None or self._writer.is_closing():
            await self.connect()
        assert self._writer is not None
        assert self._codec is not None
        rid = next(self._ids)
        queue: asyncio.Queue[str | None] = asyncio.Queue(EVENT_QUEUE_MAX)
        self._events[rid] = queue
        self._writer.write(self._codec.send(native.SubscribeRequest(request_id=rid)))
        async with asyncio.timeout(self.timeout_s):
            first = await queue.get()  # "subscribed NAME": the stream is live from here on
        if first is None:
            raise BrokenResourceError(f"subscribe to {self._where()}: link closed")
        return Subscription(queue)


class Subscription:
    """A live stream of event lines from one controller."""

    def __init__(self, queue: asyncio.Queue[str | None]) -> None:
        self._queue = queue
        self.seen: list[str] = []

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            line = await self._queue.get()
            if line is None:
                return
            self.seen.append(line)
            yield line

    async def wait_for(self, pattern: str, *, timeout_s: float = 30.0) -> str:
        """The first line (from now on) that matches the regular expression."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout_s):
            async for line in self:
                if regex.search(line):
                    return line
        raise BrokenResourceError(f"event stream ended before a line matched {pattern!r}")


def _with_id(msg: native.Message, rid: int) -> native.Message:
    from dataclasses import replace

    return replace(msg, request_id=rid)


async def _receive(codec: native.Connection, reader: asyncio.StreamReader) -> native.Message:
    while True:
        event = codec.next_event()
        if isinstance(event, native.Message):
            return event
        if event is native.CLOSED:
            raise BrokenResourceError("controller closed the connection during the handshake")
        codec.receive_data(await reader.read(READ_CHUNK_BYTES))
