# The replication link from a primary controller to one peer (secondary) controller.
#
# Why: updates must reach the secondary in the order the primary produced them, because
# order is what makes the copy correct (a track copy read before a host write to that track
# must also arrive before the write's update). One authenticated channel in the peer role,
# one TCP connection, frames written in call order and applied by the secondary in that order.
#
# Rules this module keeps:
# - `push` never blocks: updates queued in one loop step travel as one UpdateBatch frame.
# - Every update's future is settled exactly once: confirmed, or failed with the link's error.
# - A failure (link lost, negative acknowledgement, no confirmation within ack_timeout_s) is
#   reported to the replicator once, through `mark_broken`.
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Final

from remcopy.controller.config import PeerSection
from remcopy.controller.journal import Journal
from remcopy.errors import BrokenResourceError, RemcopyError
from remcopy.host.channel import Channel
from remcopy.wire import native
from remcopy.wire.native import PairOpReply, PairOpRequest

log = logging.getLogger("remcopy.replication")

# Updates waiting for one batch frame; more are sent in the next batch.
BATCH_UPDATES_MAX: Final = 256
BATCH_BYTES_MAX: Final = 4 * 1024 * 1024
# Confirmation deadline for an update batch; past it the link counts as failed.
ACK_TIMEOUT_S_DEFAULT: Final = 5.0


class PeerLink:
    """The ordered, batched replication link from this controller to one peer controller."""

    def __init__(
        self,
        peer: PeerSection,
        *,
        local_name: str,
        journal: Journal,
        on_broken: Callable[[PeerLink, RemcopyError], None],
        on_up: Callable[[PeerLink], None] | None = None,
        ack_timeout_s: float = ACK_TIMEOUT_S_DEFAULT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.peer = peer
        self.journal = journal
        self.replayed = asyncio.Event()
        self.replayed.set()
        self.serial = peer.serial
        self.local_name = local_name
        self._tls = tls
        self._channel_peer = peer  # the settings self.channel connects with
        self.channel = self._channel(peer)
        self._on_broken = on_broken
        self._on_up = on_up
        self._queue: list[tuple[native.Update, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Lock = asyncio.Lock()
        self.broken: RemcopyError | None = None
        self.batches_sent = 0
        self.bytes_sent = 0
        self.updates_sent = 0
        self.heartbeats_sent = 0
        self.connected_once = False
        """Whether the link ever connected since this controller started."""
        self.heartbeat_rtt_ns = 0
        self.stamp_ns = 0
        """The last stamp given to an update queued here, or W sent, whichever is later:
        every later update is stamped above it (consistency.py)."""
        self.watermarks_sent = 0
        self.heartbeat_lost = False
        """The last failure was a heartbeat not answered in time."""
        self._answered_ns = 0
        """time.monotonic_ns() of the last answer on this link (a batch, heartbeat or W)."""

    def __repr__(self) -> str:
        return (
            f"<PeerLink {self.peer.name} serial={self.serial} queued={len(self._queue)} "
            f"batches={self.batches_sent} broken={self.broken is not None}>"
        )

    async def ensure_connected(self) -> None:
        """Connect if needed; a link that failed while its TCP connection stayed up (ack
        timeout, negative acknowledgement) is dropped and opened afresh."""
        async with self._connecting:
            if self.channel.connected and self.broken is None:
                return
            if self.channel.connected:
                await self.channel.disconnect(f"after a failure: {self.broken}")
            if self._channel_peer != self.peer:  # a reload changed its address or secret
                old, self._channel_peer = self.channel, self.peer
                self.channel = self._channel(self.peer)
                await old.close()
            await self.channel.connect()
            self.broken = None
            self.heartbeat_lost = False
            self.connected_once = True
            if self._on_up is not None:
                self._on_up(self)

    def _channel(self, peer: PeerSection) -> Channel:
        return Channel(
            peer.address,
            name=self.local_name,
            secret=peer.secret,
            role=native.PeerRole.PEER,
            tls=self._tls,
            server_name=peer.name,
            timeout_s=self.ack_timeout_s,
        )

    def reconfigure(self, peer: PeerSection) -> None:
        """A reload changed this peer's address or secret: used from the next connection (a
        connection up now stays up)."""
        self.peer = peer

    # Updates...

    def push(self, update: native.Update) -> asyncio.Future[None]:
        """Queue an update for the next batch, in call order; the future is its confirmation.
        The update is stamped as it is queued: max(its host stamp, this clock, the last stamp
        + 1), so stamps rise along the link and a watermark is simply the clock."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken is not None or not self.channel.connected:
            future.set_exception(
                self.broken
                or BrokenResourceError(f"replication link to {self.peer.name} is not connected")
            )
            return future
        self.stamp_ns = max(update.timestamp_ns, time.time_ns(), self.stamp_ns + 1)
        if update.timestamp_ns != self.stamp_ns:  # (built anew: dataclasses.replace is slow)
            update = native.Update(
                device=update.device,
                timestamp_ns=self.stamp_ns,
                offset=update.offset,
                data=update.data,
                flags=update.flags,
            )
        self._queue.append((update, future))
        self.updates_sent += 1
        self.bytes_sent += len(update.data)
        if len(self._queue) >= BATCH_UPDATES_MAX:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        at = 0
        while at < len(queue):
            # A batch never passes BATCH_BYTES_MAX, so a frame never passes its limit.
            end, size = at, 0
            while end < len(queue) and end - at < BATCH_UPDATES_MAX:
                length = len(queue[end][0].data)
                if end > at and size + length > BATCH_BYTES_MAX:
                    break
                size += length
                end += 1
            batch, at = queue[at:end], end
            futures = [f for _, f in batch]
            msg = native.UpdateBatch(updates=tuple(u for u, _ in batch))
            try:
                # One writelines: the frame's fields, and each update's data as it is.
                reply = self.channel.send_nowait(msg)
            except RemcopyError as exc:
                self._fail(futures, exc)
                continue
            self.batches_sent += 1
            timer = asyncio.get_running_loop().call_later(
                self.ack_timeout_s, self._check_timeout, reply
            )
            reply.add_done_callback(
                lambda r, fs=futures, t=timer: self._acked(r, fs, t)  # type: ignore[misc]
            )

    def _answered(self) -> None:
        self._answered_ns = time.monotonic_ns()

    def _rearm(self, timeout_s: float, again: Callable[[], None]) -> bool:
        """A request unanswered after timeout_s while the peer answered others within the
        last timeout_s waits on: it is queued behind a backlog that drains (a deep async
        backlog on a slow link), not lost. True when rearmed for the rest of that time."""
        left_s = timeout_s - (time.monotonic_ns() - self._answered_ns) / 1e9
        if self._answered_ns == 0 or left_s <= 0:
            return False
        asyncio.get_running_loop().call_later(left_s, again)
        return True

    def _check_timeout(self, reply: asyncio.Future[native.Message]) -> None:
        if not reply.done() and not self._rearm(
            self.ack_timeout_s, lambda: self._check_timeout(reply)
        ):
            reply.set_exception(
                BrokenResourceError(
                    f"replication link to {self.peer.name}: no confirmation within "
                    f"{self.ack_timeout_s} s"
                )
            )

    def _acked(
        self,
        reply: asyncio.Future[native.Message],
        futures: list[asyncio.Future[None]],
        timer: asyncio.TimerHandle,
    ) -> None:
        timer.cancel()
        exc: RemcopyError | None = None
        if reply.cancelled():
            exc = BrokenResourceError(f"replication link to {self.peer.name} was closed")
        elif reply.exception() is not None:
            err = reply.exception()
            exc = err if isinstance(err, RemcopyError) else BrokenResourceError(str(err))
        elif not isinstance(reply.result(), native.UpdateAck):
            exc = BrokenResourceError(
                f"{self.peer.name} answered an update batch with {type(reply.result()).__name__}"
            )
        if exc is None:
            self._answered()
            for f in futures:
                if not f.done():
                    f.set_result(None)
            return
        self._fail(futures, exc)

    def _fail(self, futures: list[asyncio.Future[None]], exc: RemcopyError) -> None:
        for f in futures:
            if not f.done():
                f.set_exception(exc)
        self.mark_broken(exc)

    def mark_broken(self, exc: RemcopyError) -> None:
        """Record the link as failed and tell the replicator, once per failure."""
        if self.broken is None:
            self.broken = exc
            log.warning("replication link to %s failed: %s", self.peer.name, exc)
            self._on_broken(self, exc)

    # Heartbeats...

    def heartbeat(self, timeout_s: float) -> asyncio.Future[native.Message] | None:
        """Send an empty update batch behind everything queued; no answer within timeout_s
        marks the link broken (a dead or stopped peer is found with no host write). Its
        answer also says the peer applied every update sent before it. None when the link
        is not connected or already failed."""
        if self.broken is not None or not self.channel.connected:
            return None
        self._flush()
        try:
            reply = self.channel.send_nowait(native.UpdateBatch(updates=()))
        except RemcopyError as exc:
            self.mark_broken(exc)
            return None
        self.heartbeats_sent += 1
        sent_ns = time.perf_counter_ns()

        def expired() -> None:
            if not reply.done() and not self._rearm(timeout_s, expired):
                self.heartbeat_lost = self.broken is None
                reply.set_exception(
                    BrokenResourceError(
                        f"replication link to {self.peer.name}: no heartbeat answer within "
                        f"{timeout_s} s"
                    )
                )

        timer = asyncio.get_running_loop().call_later(timeout_s, expired)

        def answered(r: asyncio.Future[native.Message]) -> None:
            timer.cancel()
            if r.cancelled() or r.exception() is not None:
                err = None if r.cancelled() else r.exception()
                self.mark_broken(
                    err
                    if isinstance(err, RemcopyError)
                    else BrokenResourceError(f"replication link to {self.peer.name} was closed")
                )
            else:
                self._answered()
                self.heartbeat_rtt_ns = time.perf_counter_ns() - sent_ns

        reply.add_done_callback(answered)
        return reply

    def send_watermark(self) -> None:
        """Send W behind everything queued: every update stamped < W that this link will
        ever ship has been sent (later pushes are stamped >= W). Nothing when not connected
        or failed: the secondaries' C then waits, as it must."""
        if self.broken is not None or not self.channel.connected:
            return
        self._flush()
        self.stamp_ns = max(time.time_ns(), self.stamp_ns + 1)
        try:
            reply = self.channel.send_nowait(native.Watermark(watermark_ns=self.stamp_ns))
        except RemcopyError as exc:
            self.mark_broken(exc)
            return
        self.watermarks_sent += 1

        def answered(r: asyncio.Future[native.Message]) -> None:
            if r.cancelled():
                return
            err = r.exception()
            if err is not None:
                self.mark_broken(
                    err if isinstance(err, RemcopyError) else BrokenResourceError(str(err))
                )
            else:
                self._answered()

        reply.add_done_callback(answered)

    # Peer operations (ordered with the updates)...

    async def operate(self, request: PairOpRequest) -> PairOpReply:
        await self.ensure_connected()
        self._flush()
        future = self.channel.send_nowait(request)
        return await self.channel.wait_reply(future, request, PairOpReply)

    async def close(self) -> None:
        await self.channel.close()
        self.journal.close()
