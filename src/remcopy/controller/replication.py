# Remote copy: mirroring host writes to the secondary controller, and the pair operations.
#
# Why: this is the heart of the system (DESIGN.md section 2). It decides, for every host write
# to a primary, whether it is mirrored, change-recorded, held or refused; it runs the copies
# (initial copy, resync, failback, shadow); and it carries out the pair operations, on the
# primary and — through the peer link — on the secondary.
#
# Theory of operation
# - One PeerLink per secondary controller: an authenticated channel (peer role) on which
#   updates and peer operations are written in call order, on one TCP connection, and applied
#   by the secondary in that order. Order is what makes the copy correct: a track copy read
#   before a host write to that track is also sent before the write's update.
# - A host write to a DUPLEX or PENDING primary is written locally, then its update is pushed
#   on the link (in the same loop step, so nothing can come between). sync: the host is
#   acknowledged when the secondary confirmed. async: when the update is in the journal.
#   semisync: at once, but the next write to the device waits for the previous confirmation.
# - Write-intent change recording: in SUSPENDED, SUSPENDED_ERROR and RECOVERED the change-map
#   bits are set before the local write. An update that was never confirmed (link lost) has
#   its tracks marked when the error is handled, before the device is reported failed.
# - Prospective suspend at T: armed devices mirror writes stamped < T and change-record writes
#   stamped >= T. At T the device is sealed (a write stamped < T arriving now is refused with
#   LateWrite, retryable), in-flight updates stamped < T are awaited, then the state commits
#   to SUSPENDED at T on both sides.
# - A link error (lost, negative acknowledgement, ack timeout) suspends every affected pair
#   with SUSPENDED_ERROR; a consistency-group device first holds host writes (bounded) so the
#   management layer can freeze the whole group.
#
# Rules this module keeps:
# - State changes go through Controller.commit_states (pure table, persisted, announced).
# - Every background task belongs to the Replicator's TaskGroup (owned by the server).
# - Nothing acknowledged to a host is ever lost: a host is acknowledged only after the local
#   write, and in sync mode only after the secondary's confirmation.
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from remcopy.controller.changemap import ChangeMap
from remcopy.controller.config import PeerSection
from remcopy.controller.core import Controller, Device, HostGrant, PairInfo
from remcopy.controller.journal import Journal
from remcopy.errors import (
    BrokenResourceError,
    DeviceBusy,
    IllegalTransition,
    InputError,
    LateWrite,
    RemcopyError,
    SuspendTimeInPast,
    WriteProtected,
)
from remcopy.host.channel import Channel
from remcopy.states import (
    OPERATION_PERMITTED,
    CopyMode,
    PairAction,
    PairRole,
    PairState,
    next_state,
)
from remcopy.wire import native
from remcopy.wire.native import PairItem, PairOp, PairOpReply, PairOpRequest, PairResult

log = logging.getLogger("remcopy.replication")

# Updates waiting for one batch frame; more are sent in the next batch.
BATCH_UPDATES_MAX: Final = 256
BATCH_BYTES_MAX: Final = 4 * 1024 * 1024
# Confirmation deadline for an update batch; past it the link counts as failed.
ACK_TIMEOUT_S: Final = 10.0
# Track copies in flight per device and per controller.
COPY_IN_FLIGHT_PER_DEVICE: Final = 8
COPY_IN_FLIGHT_MAX: Final = 64
# How long a consistency-group device holds host writes after a replication error.
HOLD_S_DEFAULT: Final = 2.0
# How long a semisync write waits for its predecessor's confirmation before answering busy.
SEMISYNC_WAIT_S: Final = 10.0


@dataclass(eq=False)
class DeviceRun:
    """What the replicator keeps in memory about one device (not persisted)."""

    device: Device
    changemap: ChangeMap
    in_flight: set[asyncio.Future[None]] = field(default_factory=set)
    sealed_at_ns: int = 0
    copier: asyncio.Task[None] | None = None
    tracks_copied: int = 0
    last_update: asyncio.Future[None] | None = None
    held: asyncio.Event | None = None
    shadow_running: bool = False
    shadow_done: int = 0
    shadow_total: int = 0
    bytes_sent: int = 0
    lag_bytes: int = 0


class PeerLink:
    """The ordered, batched replication link from this controller to one peer controller."""

    def __init__(
        self,
        peer: PeerSection,
        *,
        local_name: str,
        journal: Journal,
        on_broken: Callable[[PeerLink, RemcopyError], None],
    ) -> None:
        self.peer = peer
        self.journal = journal
        self.replayed = asyncio.Event()
        self.replayed.set()
        self.serial = peer.serial
        self.channel = Channel(
            peer.address,
            name=local_name,
            secret=peer.secret,
            role=native.PeerRole.PEER,
            timeout_s=ACK_TIMEOUT_S,
        )
        self._on_broken = on_broken
        self._queue: list[tuple[native.Update, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Lock = asyncio.Lock()
        self.broken: RemcopyError | None = None
        self.batches_sent = 0
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return (
            f"<PeerLink {self.peer.name} serial={self.serial} queued={len(self._queue)} "
            f"batches={self.batches_sent} broken={self.broken is not None}>"
        )

    async def ensure_connected(self) -> None:
        async with self._connecting:
            if self.channel.connected:
                return
            await self.channel.connect()
            self.broken = None

    # Updates...

    def push(self, update: native.Update) -> asyncio.Future[None]:
        """Queue an update for the next batch, in call order; the future is its confirmation."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken is not None or not self.channel.connected:
            future.set_exception(
                self.broken
                or BrokenResourceError(f"replication link to {self.peer.name} is not connected")
            )
            return future
        self._queue.append((update, future))
        self.bytes_sent += len(update.data)
        if len(self._queue) >= BATCH_UPDATES_MAX:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queue:
            batch: list[tuple[native.Update, asyncio.Future[None]]] = []
            size = 0
            while self._queue and len(batch) < BATCH_UPDATES_MAX and size < BATCH_BYTES_MAX:
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item[0].data)
            msg = native.UpdateBatch(updates=tuple(u for u, _ in batch))
            try:
                reply = self.channel.send_nowait(msg)
            except RemcopyError as exc:
                self._fail([f for _, f in batch], exc)
                continue
            self.batches_sent += 1
            futures = [f for _, f in batch]
            reply.add_done_callback(lambda r, fs=futures: self._acked(r, fs))  # type: ignore[misc]
            asyncio.get_running_loop().call_later(ACK_TIMEOUT_S, self._check_timeout, reply)

    def _check_timeout(self, reply: asyncio.Future[native.Message]) -> None:
        if not reply.done():
            reply.set_exception(
                BrokenResourceError(
                    f"replication link to {self.peer.name}: no confirmation within "
                    f"{ACK_TIMEOUT_S} s"
                )
            )

    def _acked(
        self, reply: asyncio.Future[native.Message], futures: list[asyncio.Future[None]]
    ) -> None:
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

    # Peer operations (ordered with the updates)...

    async def operate(self, request: PairOpRequest) -> PairOpReply:
        await self.ensure_connected()
        self._flush()
        future = self.channel.send_nowait(request)
        return await self.channel.wait_reply(future, request, PairOpReply)

    async def close(self) -> None:
        await self.channel.close()
        self.journal.close()


def _ok(device: Device, *, at_ns: int = 0, tracks: int = 0) -> PairResult:
    return PairResult(
        device=device.key,
        state=device.pair.state,
        role=device.pair.role,
        at_ns=at_ns or device.pair.suspend_at_ns,
        tracks=tracks,
    )


def _refused(key: int, exc: RemcopyError, device: Device | None = None) -> PairResult:
    pair = device.pair if device is not None else PairInfo()
    return PairResult(device=key, code=exc.code, state=pair.state, role=pair.role, message=str(exc))


class Replicator:
    """Mirroring and pair operations for one controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.runs: dict[int, DeviceRun] = {}
        for key, device in controller.devices.items():
            volume = device.volume
            path = controller.data_dir / "changemaps" / f"{key:04X}.map"
            self.runs[key] = DeviceRun(
                device=device, changemap=ChangeMap(path, volume.tracks, volume.track_size_bytes)
            )
        self.links: dict[int, PeerLink] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._copy_slots = asyncio.Semaphore(COPY_IN_FLIGHT_MAX)
        self._timers: list[asyncio.TimerHandle] = []
        self.counters = controller.counters
        for name in (
            "updates_sent",
            "updates_applied",
            "late_writes",
            "change_recorded",
            "tracks_copied",
            "bytes_copied",
            "link_errors",
            "held_writes",
        ):
            self.counters.setdefault(name, 0)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for run in self.runs.values():
            run.changemap.close()

    async def run(self) -> None:
        """Own the background tasks (copies, seals) until cancelled; resume unfinished work."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self._resume_after_restart()
            try:
                await asyncio.Event().wait()
            finally:
                for link in self.links.values():
                    await link.close()

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        assert self._tasks is not None, "replicator not running"
        return self._tasks.create_task(coro, name=name)  # type: ignore[arg-type]

    def _replay_journals(self) -> None:
        """Ship again what async pairs acknowledged before a crash, before any new write."""
        for peer in self.controller.peers.values():
            path = self.controller.data_dir / "journal" / f"{peer.serial}.jnl"
            if not path.exists() or path.stat().st_size == 0:
                continue
            link = self.link(peer.serial)
            updates = link.journal.replay()
            if updates:
                link.replayed.clear()
                self._spawn(self._replay(link, updates), name=f"replay {peer.name}")

    async def _replay(self, link: PeerLink, updates: list[native.Update]) -> None:
        targets = {
            (r.device.pair.peer_serial, r.device.pair.peer_device): r
            for r in self.runs.values()
            if r.device.pair.role is PairRole.PRIMARY
        }
        try:
            await link.ensure_connected()
        except RemcopyError as exc:
            link.mark_broken(exc)
        for update in updates:
            run = targets.get((link.serial, update.device))
            if run is None:
                link.journal.settled()
                continue
            if run.device.pair.state not in (PairState.DUPLEX, PairState.PENDING):
                run.changemap.mark(update.offset, len(update.data))
                link.journal.settled()
                continue
            confirmed = link.push(update)
            self._track(run, link, confirmed, update.offset, len(update.data), journaled=True)
        log.info("replayed %d journaled updates to %s", len(updates), link.peer.name)
        link.replayed.set()

    def _resume_after_restart(self) -> None:
        self._replay_journals()
        now = time.time_ns()
        for run in self.runs.values():
            pair = run.device.pair
            if pair.role is not PairRole.PRIMARY:
                continue
            if pair.state in (PairState.DUPLEX, PairState.PENDING) and pair.suspend_at_ns:
                if pair.suspend_at_ns <= now:
                    # T passed while we were down: nothing was written after T, seal now.
                    self._commit(run, PairAction.SUSPEND, cause="suspend", at_ns=pair.suspend_at_ns)
                else:
                    self._arm_timer([run], pair.suspend_at_ns)
            if pair.state is PairState.PENDING:
                self._start_copier(run)

    # Links...

    def link(self, serial: int) -> PeerLink:
        link = self.links.get(serial)
        if link is None:
            peer = next((p for p in self.controller.peers.values() if p.serial == serial), None)
            if peer is None:
                raise InputError(
                    f"controller {self.controller.name}: no peer with serial "
                    f"{serial} in its config ([[peers]])"
                )
            journal = Journal(self.controller.data_dir / "journal" / f"{serial}.jnl")
            link = PeerLink(
                peer,
                local_name=self.controller.name,
                journal=journal,
                on_broken=self._link_broken,
            )
            self.links[serial] = link
        return link

    def _link_broken(self, link: PeerLink, exc: RemcopyError) -> None:
        self.counters["link_errors"] += 1
        for run in self.runs.values():
            pair = run.device.pair
            if (
                pair.role is PairRole.PRIMARY
                and pair.peer_serial == link.serial
                and pair.state in (PairState.DUPLEX, PairState.PENDING)
            ):
                self._device_failed(run, exc)

    def _device_failed(self, run: DeviceRun, exc: RemcopyError) -> None:
        """A replication error: hold (consistency group) or go SUSPENDED_ERROR at once."""
        pair = run.device.pair
        if pair.state not in (PairState.DUPLEX, PairState.PENDING) or run.held is not None:
            return
        if pair.consistency_group:
            run.held = asyncio.Event()
            self.controller.announce(
                f"hold {run.device.address} cause=replication-error "
                f'hold_s={HOLD_S_DEFAULT} error="{exc}"'
            )
            handle = asyncio.get_running_loop().call_later(
                HOLD_S_DEFAULT, self._hold_expired, run, exc
            )
            self._timers.append(handle)
            return
        self._to_error(run, exc)

    def _hold_expired(self, run: DeviceRun, exc: RemcopyError) -> None:
        if run.held is not None:
            self._to_error(run, exc)

    def _to_error(self, run: DeviceRun, exc: RemcopyError) -> None:
        if run.device.pair.state in (PairState.DUPLEX, PairState.PENDING):
            self._commit(run, PairAction.FAIL, cause="replication-error")
        if run.held is not None:
            run.held.set()
            run.held = None
        if run.copier is not None:
            run.copier.cancel()

    def _commit(
        self,
        run: DeviceRun,
        action: PairAction,
        *,
        cause: str,
        at_ns: int | None = None,
        update: Callable[[PairInfo], None] | None = None,
    ) -> None:
        self.controller.commit_states({run.device.key: (action, update)}, cause=cause, at_ns=at_ns)

    # Host writes...

    def host_write(self, grant: HostGrant, msg: native.WriteRequest) -> Awaitable[None] | None:
        """Do a host write; returns what the acknowledgement must wait for, or None."""
        device = self.controller.device_for_host(grant, msg.device)
        run = self.runs[device.key]
        pair = device.pair
        if pair.role is PairRole.NONE:
            self._write_local(device, msg)
            return None
        if pair.role is PairRole.SECONDARY:
            if pair.state is not PairState.RECOVERED:
                self.controller.check_writable(device)
            run.changemap.mark(msg.offset, len(msg.data))
            self._write_local(device, msg)
            return None
        if run.held is not None:
            return self._held_write(run, grant, msg)
        if pair.state in (PairState.SUSPENDED, PairState.SUSPENDED_ERROR):
            self._change_recorded(run, msg)
            return None
        # DUPLEX or PENDING: mirror, unless an armed suspend says otherwise.
        armed_at = pair.suspend_at_ns
        if armed_at:
            if msg.timestamp_ns >= armed_at:
                self._change_recorded(run, msg)
                return None
            if run.sealed_at_ns:
                self.counters["late_writes"] += 1
                raise LateWrite(
                    f"write to {device.address} stamped {msg.timestamp_ns} is before the "
                    f"suspend time {armed_at} the controller already sealed: reissue it"
                )
        if (
            pair.mode is CopyMode.SEMISYNC
            and run.last_update is not None
            and not run.last_update.done()
        ):
            return self._semisync_after(run, grant, msg, run.last_update)
        return self._mirror(run, msg)

    def _write_local(self, device: Device, msg: native.WriteRequest) -> None:
        device.volume.pwrite(msg.offset, msg.data)
        self.counters["writes"] += 1

    def _change_recorded(self, run: DeviceRun, msg: native.WriteRequest) -> None:
        run.changemap.mark(msg.offset, len(msg.data))  # write-intent: the bit first
        self._write_local(run.device, msg)
        self.counters["change_recorded"] += 1

    def _mirror(self, run: DeviceRun, msg: native.WriteRequest) -> Awaitable[None] | None:
        device, pair = run.device, run.device.pair
        self._write_local(device, msg)
        link = self.link(pair.peer_serial)
        if (not link.channel.connected and link.broken is None) or not link.replayed.is_set():
            return self._connect_then_push(run, link, msg)
        return self._push(run, link, msg)

    async def _connect_then_push(
        self, run: DeviceRun, link: PeerLink, msg: native.WriteRequest
    ) -> None:
        await link.replayed.wait()
        if not link.channel.connected:
            try:
                await link.ensure_connected()
            except RemcopyError as exc:
                link.mark_broken(exc)
        follow = self._push(run, link, msg)
        if follow is not None:
            await follow

    def _push(
        self, run: DeviceRun, link: PeerLink, msg: native.WriteRequest
    ) -> Awaitable[None] | None:
        pair = run.device.pair
        update = native.Update(
            device=pair.peer_device, timestamp_ns=msg.timestamp_ns, offset=msg.offset, data=msg.data
        )
        if pair.mode is CopyMode.ASYNC:
            link.journal.append(update)  # in the file before the host is acknowledged
        confirmed = link.push(update)
        self.counters["updates_sent"] += 1
        self._track(
            run, link, confirmed, msg.offset, len(msg.data), journaled=pair.mode is CopyMode.ASYNC
        )
        if pair.mode is CopyMode.SYNC:
            return self._confirmed_or_recorded(run, confirmed)
        run.last_update = confirmed
        return None

    def _track(
        self,
        run: DeviceRun,
        link: PeerLink,
        confirmed: asyncio.Future[None],
        offset: int,
        length: int,
        *,
        journaled: bool,
    ) -> None:
        run.in_flight.add(confirmed)
        run.lag_bytes += length

        def done(future: asyncio.Future[None]) -> None:
            run.lag_bytes -= length
            if journaled:
                link.journal.settled()
            self._update_done(run, offset, length, future)

        confirmed.add_done_callback(done)

    def _update_done(
        self, run: DeviceRun, offset: int, length: int, future: asyncio.Future[None]
    ) -> None:
        run.in_flight.discard(future)
        if future.cancelled() or future.exception() is not None:
            # Never confirmed: the tracks may differ. Record them before anyone reports the
            # device failed (write-intent, after the fact but before any resume can run).
            run.changemap.mark(offset, length)
            exc = future.exception() if not future.cancelled() else None
            self._device_failed(
                run,
                exc
                if isinstance(exc, RemcopyError)
                else BrokenResourceError("replication update failed"),
            )

    async def _confirmed_or_recorded(self, run: DeviceRun, confirmed: asyncio.Future[None]) -> None:
        try:
            await asyncio.shield(confirmed)
        except RemcopyError as exc:
            await self._after_error(run, exc)

    async def _after_error(self, run: DeviceRun, exc: RemcopyError) -> None:
        """A write whose update failed: its tracks are marked; wait out a hold, apply fence."""
        if run.held is not None:
            self.counters["held_writes"] += 1
            await run.held.wait()
        if run.device.pair.fence.value == "data":
            raise WriteProtected(
                f"write to {run.device.address}: the secondary cannot be "
                f"updated and the pair's fence is data: {exc}"
            )

    async def _held_write(self, run: DeviceRun, grant: HostGrant, msg: native.WriteRequest) -> None:
        assert run.held is not None
        self.counters["held_writes"] += 1
        await run.held.wait()
        follow = self.host_write(grant, msg)
        if follow is not None:
            await follow

    async def _semisync_after(
        self,
        run: DeviceRun,
        grant: HostGrant,
        msg: native.WriteRequest,
        previous: asyncio.Future[None],
    ) -> None:
        try:
            async with asyncio.timeout(SEMISYNC_WAIT_S):
                await asyncio.shield(previous)
        except TimeoutError:
            raise DeviceBusy(
                f"{run.device.address}: the previous write is not confirmed by "
                "the secondary yet: retry"
            ) from None
        except RemcopyError:
            pass  # the error path already recorded it; this write goes by the new state
        follow = self.host_write(grant, msg)
        if follow is not None:
            await follow

    # Pair operations from hosts (one request carries a batch of devices)...

    async def pair_op(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        op = request.op
        if op is PairOp.ESTABLISH:
            return await self._establish(grant, request)
        if op is PairOp.SUSPEND:
            return await self._suspend(grant, request)
        if op is PairOp.RESUME:
            return await self._resume(grant, request)
        if op is PairOp.RECOVER:
            return self._recover(grant, request)
        if op is PairOp.FAILBACK:
            return await self._failback(grant, request)
        if op is PairOp.TERMINATE:
            return await self._terminate(grant, request)
        if op is PairOp.SHADOW:
            return self._shadow(grant, request)
        raise InputError(f"pair operation {op.name} is for controllers, not hosts")

    def _devices(
        self, grant: HostGrant, request: PairOpRequest
    ) -> tuple[list[tuple[PairItem, DeviceRun]], list[PairResult]]:
        """Resolve the items; unknown, not allowed and armed devices are refused here."""
        good: list[tuple[PairItem, DeviceRun]] = []
        refused: list[PairResult] = []
        seen: set[int] = set()
        for item in request.items:
            try:
                if item.device in seen:
                    raise InputError(f"device {item.device:04X} is named twice in one request")
                seen.add(item.device)
                device = self.controller.device_for_host(grant, item.device)
                run = self.runs[device.key]
                armed = device.pair.suspend_at_ns
                if armed and device.pair.state in (PairState.DUPLEX, PairState.PENDING):
                    raise DeviceBusy(
                        f"{device.address}: a suspend is armed for {armed}: other "
                        "state changes wait until it has passed"
                    )
            except RemcopyError as exc:
                known = self.controller.devices.get(item.device)
                refused.append(_refused(item.device, exc, known))
                continue
            good.append((item, run))
        return good, refused

    def _check(self, run: DeviceRun, action: PairAction) -> None:
        next_state(run.device.pair.state, action, device=str(run.device.address))

    async def _establish(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results = self._devices(grant, request)
        by_peer: dict[int, list[tuple[PairItem, DeviceRun]]] = {}
        secondaries: set[tuple[int, int]] = set()
        for item, run in good:
            try:
                self._check(run, PairAction.ESTABLISH)
                if (item.peer_serial, item.peer_device) in secondaries:
                    raise InputError(
                        f"establish {run.device.address}: secondary "
                        f"{item.peer_serial}:{item.peer_device:04X} is named by "
                        "another pair of this request"
                    )
                secondaries.add((item.peer_serial, item.peer_device))
                if item.mode is None:
                    raise InputError(
                        f"establish {run.device.address}: a mode is required "
                        "(sync, async or semisync)"
                    )
                if item.peer_serial == self.controller.serial:
                    raise InputError(
                        f"establish {run.device.address}: primary and secondary "
                        "are on the same controller"
                    )
                self.link(item.peer_serial)
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            by_peer.setdefault(item.peer_serial, []).append((item, run))
        for serial, items in by_peer.items():
            results.extend(await self._establish_on(serial, items))
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _establish_on(
        self, serial: int, items: list[tuple[PairItem, DeviceRun]]
    ) -> list[PairResult]:
        link = self.link(serial)
        peer_items = tuple(
            PairItem(
                device=item.peer_device,
                peer_serial=self.controller.serial,
                peer_device=run.device.key,
                mode=item.mode,
                fence=item.fence,
                consistency_group=item.consistency_group,
                size_bytes=run.device.volume.capacity_bytes,
            )
            for item, run in items
        )
        try:
            reply = await link.operate(PairOpRequest(op=PairOp.PEER_ESTABLISH, items=peer_items))
        except RemcopyError as exc:
            return [_refused(item.device, exc, run.device) for item, run in items]
        answers = {r.device: r for r in reply.results}
        results = []
        accepted: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for item, run in items:
            answer = answers.get(item.peer_device)
            if answer is None or answer.code:
                reason = answer.message if answer else "the secondary did not answer for it"
                results.append(
                    PairResult(
                        device=item.device,
                        code=answer.code if answer else 1,
                        state=run.device.pair.state,
                        role=run.device.pair.role,
                        message=f"secondary {serial}:{item.peer_device:04X}: {reason}",
                    )
                )
                continue
            accepted[run.device.key] = (PairAction.ESTABLISH, _as_primary(item))
        if accepted:
            self.controller.commit_states(accepted, cause="establish")
        for _item, run in items:
            if run.device.key in accepted:
                run.changemap.mark_all()
                results.append(_ok(run.device, tracks=run.device.volume.tracks))
                self._start_copier(run)
        return results

    async def _suspend(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        at_ns = request.at_ns
        now = time.time_ns()
        if at_ns <= now:
            raise SuspendTimeInPast(
                f"suspend at {at_ns}: that time has passed on controller {self.controller.name} "
                f"(now {now}, {(now - at_ns) / 1e6:.3f} ms late): choose a later time or a "
                "larger margin"
            )
        good, results = self._devices(grant, request)
        armed: list[DeviceRun] = []
        for item, run in good:
            try:
                self._check(run, PairAction.SUSPEND)
                if run.device.pair.role is not PairRole.PRIMARY:
                    raise IllegalTransition(
                        f"cannot suspend {run.device.address}: it is not "
                        "the primary of a pair: suspend at the primary"
                    )
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            armed.append(run)
        if not armed:
            return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))
        # Arm: persisted, so a restart before T still suspends at T.
        self.controller.commit_armed({r.device.key: at_ns for r in armed})
        self.controller.announce(f"armed suspend at={at_ns} devices={len(armed)}")
        sealed = self._arm_timer(armed, at_ns)
        document = await sealed
        for run in armed:
            pair = run.device.pair
            if pair.state is PairState.SUSPENDED and pair.suspend_at_ns == at_ns:
                results.append(_ok(run.device, at_ns=at_ns))
            else:
                results.append(
                    PairResult(
                        device=run.device.key,
                        code=IllegalTransition.code,
                        state=pair.state,
                        role=pair.role,
                        message=f"{run.device.address} did not suspend at T: it is "
                        f"{pair.state.name}",
                    )
                )
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)), document=document
        )

    def _arm_timer(self, runs: list[DeviceRun], at_ns: int) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        delay_s = max(0.0, (at_ns - time.time_ns()) / 1e9)

        def fire() -> None:
            self._spawn(self._seal(runs, at_ns, done), name=f"seal {at_ns}")

        self._timers.append(loop.call_later(delay_s, fire))
        return done

    async def _seal(
        self, runs: list[DeviceRun], at_ns: int, done: asyncio.Future[dict[str, Any]]
    ) -> None:
        """At T: refuse late writes, wait for updates stamped < T, then commit SUSPENDED."""
        sealed_ns = time.time_ns()
        late_before = self.counters["late_writes"]
        for run in runs:
            run.sealed_at_ns = sealed_ns
        pending = [f for run in runs for f in run.in_flight]
        if pending:
            await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)
        drained_ns = time.time_ns()
        by_peer: dict[int, list[DeviceRun]] = {}
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for run in runs:
            run.sealed_at_ns = 0
            if run.device.pair.state in (PairState.DUPLEX, PairState.PENDING):
                if run.copier is not None:
                    run.copier.cancel()
                changes[run.device.key] = (PairAction.SUSPEND, None)
                by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        if changes:
            self.controller.commit_states(changes, cause="suspend", at_ns=at_ns)
        for serial, peer_runs in by_peer.items():
            await self._tell_peer(serial, peer_runs, "suspend", at_ns=at_ns)
        if not done.done():
            done.set_result(
                {
                    "at_ns": at_ns,
                    "sealed_ns": sealed_ns,
                    "drained_ns": drained_ns,
                    "late_writes": self.counters["late_writes"] - late_before,
                    "in_flight_at_seal": len(pending),
                }
            )

    async def _tell_peer(
        self, serial: int, runs: list[DeviceRun], action: str, *, at_ns: int = 0
    ) -> list[PairResult]:
        """Make the secondaries follow a state change; a dead link is logged, not fatal."""
        items = tuple(PairItem(device=r.device.pair.peer_device) for r in runs)
        try:
            reply = await self.link(serial).operate(
                PairOpRequest(
                    op=PairOp.PEER_STATE, at_ns=at_ns, items=items, options={"action": action}
                )
            )
        except RemcopyError as exc:
            log.warning("could not tell peer %s to %s: %s", serial, action, exc)
            return [_refused(r.device.pair.peer_device, exc) for r in runs]
        return list(reply.results)

    async def _resume(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results = self._devices(grant, request)
        by_peer: dict[int, list[DeviceRun]] = {}
        for item, run in good:
            try:
                self._check(run, PairAction.RESUME)
                if run.device.pair.role is not PairRole.PRIMARY:
                    raise IllegalTransition(
                        f"cannot resume {run.device.address}: it is not the "
                        "primary of a pair: resume at the primary"
                    )
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            answers = {r.device: r for r in await self._tell_peer(serial, runs, "resume")}
            changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
            for run in runs:
                answer = answers.get(run.device.pair.peer_device)
                if answer is None or answer.code:
                    reason = answer.message if answer else "no answer"
                    results.append(
                        PairResult(
                            device=run.device.key,
                            code=answer.code if answer else 1,
                            state=run.device.pair.state,
                            role=run.device.pair.role,
                            message=f"cannot resume {run.device.address}: secondary refused: "
                            f"{reason}",
                        )
                    )
                    continue
                changes[run.device.key] = (PairAction.RESUME, _clear_armed)
            if changes:
                self.controller.commit_states(changes, cause="resume")
            for run in runs:
                if run.device.key in changes:
                    results.append(_ok(run.device, tracks=run.changemap.count()))
                    self._start_copier(run)
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    def _recover(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results = self._devices(grant, request)
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for item, run in good:
            try:
                if run.device.pair.role is not PairRole.SECONDARY:
                    raise IllegalTransition(
                        f"cannot recover {run.device.address}: it is not the "
                        "secondary of a pair: recover at the secondary"
                    )
                self._check(run, PairAction.RECOVER)
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            changes[run.device.key] = (PairAction.RECOVER, None)
        if changes:
            for key in changes:
                self.runs[key].changemap.clear_all()
            self.controller.commit_states(changes, cause="recover")
        results.extend(_ok(self.runs[key].device) for key in changes)
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _failback(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """On the recovered secondary: reverse the pair, copy tracks changed on either side."""
        good, results = self._devices(grant, request)
        for item, run in good:
            pair = run.device.pair
            try:
                self._check(run, PairAction.FAILBACK)
                link = self.link(pair.peer_serial)
                bits = await link.operate(
                    PairOpRequest(
                        op=PairOp.PEER_CHANGEMAP, items=(PairItem(device=pair.peer_device),)
                    )
                )
                answer = bits.results[0] if bits.results else None
                if answer is None or answer.code:
                    raise BrokenResourceError(
                        f"old primary refused: {answer.message if answer else 'no answer'}"
                    )
                run.changemap.merge(bits.data)
                reverse = await link.operate(
                    PairOpRequest(
                        op=PairOp.PEER_FAILBACK,
                        items=(
                            PairItem(
                                device=pair.peer_device,
                                peer_serial=self.controller.serial,
                                peer_device=run.device.key,
                                size_bytes=run.device.volume.capacity_bytes,
                            ),
                        ),
                    )
                )
                answer = reverse.results[0] if reverse.results else None
                if answer is None or answer.code:
                    raise BrokenResourceError(
                        f"old primary refused to become the secondary: "
                        f"{answer.message if answer else 'no answer'}"
                    )
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            self._commit(run, PairAction.FAILBACK, cause="failback", update=_swap_to_primary)
            results.append(_ok(run.device, tracks=run.changemap.count()))
            self._start_copier(run)
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _terminate(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results = self._devices(grant, request)
        by_peer: dict[int, list[DeviceRun]] = {}
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for item, run in good:
            try:
                self._check(run, PairAction.TERMINATE)
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            changes[run.device.key] = (PairAction.TERMINATE, _to_simplex)
            if run.device.pair.role is PairRole.PRIMARY:
                by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            await self._tell_peer(serial, runs, "terminate")
        for key in changes:
            run = self.runs[key]
            if run.copier is not None:
                run.copier.cancel()
            run.changemap.clear_all()
        if changes:
            self.controller.commit_states(changes, cause="terminate")
        results.extend(_ok(self.runs[key].device) for key in changes)
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    def _shadow(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """On the secondary's controller: copy a SUSPENDED secondary onto a tertiary volume."""
        good, results = self._devices(grant, request)
        for item, run in good:
            try:
                pair = run.device.pair
                if (
                    pair.role is not PairRole.SECONDARY
                    or pair.state not in OPERATION_PERMITTED["shadow"]
                ):
                    raise IllegalTransition(
                        f"cannot shadow {run.device.address}: pair is {pair.state.name} "
                        f"({pair.role.value}): a shadow copy needs a SUSPENDED secondary"
                    )
                if run.shadow_running:
                    raise DeviceBusy(f"{run.device.address}: a shadow copy is already running")
                target = self.controller.device_for_host(grant, item.peer_device)
                if target.pair.role is not PairRole.NONE or target.key == run.device.key:
                    raise InputError(
                        f"shadow target {target.address} is in a pair: the "
                        "tertiary must be a simplex volume"
                    )
                if target.volume.capacity_bytes < run.device.volume.capacity_bytes:
                    raise InputError(
                        f"shadow target {target.address} is smaller than {run.device.address}"
                    )
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            run.shadow_running = True
            run.shadow_done, run.shadow_total = 0, run.device.volume.tracks
            self._spawn(self._shadow_copy(run, target), name=f"shadow {run.device.address}")
            results.append(_ok(run.device, tracks=run.shadow_total))
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _shadow_copy(self, run: DeviceRun, target: Device) -> None:
        source = run.device.volume
        self.controller.announce(
            f"shadow {run.device.address} -> {target.address} started tracks={source.tracks}"
        )
        try:
            for track in range(source.tracks):
                data = await asyncio.to_thread(source.read_track, track)
                if any(data):
                    target.volume.pwrite(track * source.track_size_bytes, data)
                elif track * source.track_size_bytes < target.volume.capacity_bytes:
                    target.volume.zero(track * source.track_size_bytes, len(data))
                run.shadow_done = track + 1
            await asyncio.to_thread(target.volume.flush)
        finally:
            run.shadow_running = False
        self.controller.announce(
            f"shadow {run.device.address} -> {target.address} done tracks={source.tracks}"
        )

    # Copies (initial copy, resync, failback)...

    def _start_copier(self, run: DeviceRun) -> None:
        if run.copier is not None and not run.copier.done():
            return
        run.copier = self._spawn(self._copy(run), name=f"copy {run.device.address}")

    async def _copy(self, run: DeviceRun) -> None:
        """Copy every marked track to the secondary, then COPY_DONE -> DUPLEX."""
        device, pair = run.device, run.device.pair
        link = self.link(pair.peer_serial)
        volume = device.volume
        window = asyncio.Semaphore(COPY_IN_FLIGHT_PER_DEVICE)
        in_flight: set[asyncio.Task[None]] = set()
        failed: list[RemcopyError] = []
        try:
            await link.ensure_connected()
        except RemcopyError as exc:
            self._device_failed(run, exc)
            return

        async def one(track: int, confirmed: asyncio.Future[None], generation: int) -> None:
            try:
                await confirmed
                if run.changemap.clear_if(track, generation):
                    run.tracks_copied += 1
                    self.counters["tracks_copied"] += 1
            except RemcopyError as exc:
                failed.append(exc)
            finally:
                window.release()
                self._copy_slots.release()

        while not failed and device.pair.state is PairState.PENDING:
            tracks = list(run.changemap.dirty_tracks())
            if not tracks:
                break
            for track in tracks:
                await window.acquire()
                await self._copy_slots.acquire()
                if failed or device.pair.state is not PairState.PENDING:
                    window.release()
                    self._copy_slots.release()
                    break
                # Read and push in one loop step: no host write can come between them.
                generation = run.changemap.generation()
                data = volume.read_track(track)
                confirmed = link.push(
                    native.Update(
                        device=pair.peer_device,
                        timestamp_ns=time.time_ns(),
                        offset=track * volume.track_size_bytes,
                        data=data,
                        flags=native.UPDATE_COPY,
                    )
                )
                self.counters["bytes_copied"] += len(data)
                run.bytes_sent += len(data)
                task = asyncio.get_running_loop().create_task(one(track, confirmed, generation))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight)
        if failed:
            self._device_failed(run, failed[0])
            return
        if device.pair.state is PairState.PENDING and run.changemap.count() == 0:
            self._commit(run, PairAction.COPY_DONE, cause="copy-done")
            await self._tell_peer(pair.peer_serial, [run], "copy_done")

    # The secondary side: peer operations and updates...

    def apply_updates(self, batch: native.UpdateBatch) -> native.UpdateAck:
        """Write a batch of updates to secondary volumes, all checked before any is written."""
        targets = []
        for update in batch.updates:
            device = self.controller.device(update.device)
            pair = device.pair
            if pair.role is not PairRole.SECONDARY or pair.state not in (
                PairState.PENDING,
                PairState.DUPLEX,
            ):
                raise WriteProtected(
                    f"update for {device.address} refused: it is {pair.state.name} "
                    f"({pair.role.value}): only a PENDING or DUPLEX secondary takes updates"
                )
            device.volume.check_range("update", update.offset, len(update.data))
            targets.append(device)
        for device, update in zip(targets, batch.updates, strict=True):
            device.volume.pwrite(update.offset, update.data)
        self.counters["updates_applied"] += len(batch.updates)
        return native.UpdateAck(applied=len(batch.updates))

    def peer_op(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        results: list[PairResult] = []
        data = b""
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        cause = request.op.name.lower()
        seen: set[int] = set()
        for item in request.items:
            try:
                if item.device in seen:
                    raise InputError(f"device {item.device:04X} is named twice in one request")
                seen.add(item.device)
                device = self.controller.device(item.device)
                run = self.runs[device.key]
                if request.op is PairOp.PEER_ESTABLISH:
                    self._check(run, PairAction.ESTABLISH)
                    if device.volume.capacity_bytes < item.size_bytes:
                        raise InputError(
                            f"{device.address} holds {device.volume.capacity_bytes} bytes: the "
                            f"primary has {item.size_bytes}: the secondary must be as large"
                        )
                    changes[device.key] = (PairAction.ESTABLISH, _as_secondary(item))
                elif request.op is PairOp.PEER_STATE:
                    action = str(request.options.get("action", ""))
                    if action == "resume" and run.shadow_running:
                        raise DeviceBusy(
                            f"{device.address}: a shadow copy of this secondary is "
                            f"running ({run.shadow_done}/{run.shadow_total} "
                            "tracks): resume after it completes"
                        )
                    for step in _follow(device.pair.state, action):
                        next_state(device.pair.state, step, device=str(device.address))
                        at = request.at_ns if step is PairAction.SUSPEND else None
                        update = (
                            _to_simplex
                            if step is PairAction.TERMINATE
                            else (
                                _suspended_at(request.at_ns) if step is PairAction.SUSPEND else None
                            )
                        )
                        self.controller.commit_states(
                            {device.key: (step, update)}, cause=action, at_ns=at
                        )
                elif request.op is PairOp.PEER_CHANGEMAP:
                    data = run.changemap.to_bytes()
                elif request.op is PairOp.PEER_FAILBACK:
                    for step in _follow(device.pair.state, "resume"):
                        swap = _swap_to_secondary(item) if step is PairAction.RESUME else None
                        self.controller.commit_states({device.key: (step, swap)}, cause="failback")
                    run.changemap.clear_all()
                else:
                    raise InputError(f"pair operation {request.op.name} is for hosts")
            except RemcopyError as exc:
                known = self.controller.devices.get(item.device)
                results.append(_refused(item.device, exc, known))
                continue
            results.append(_ok(device))
        if changes:
            self.controller.commit_states(changes, cause=cause)
            results = [
                replace(
                    r,
                    state=self.controller.devices[r.device].pair.state,
                    role=self.controller.devices[r.device].pair.role,
                )
                if r.code == 0
                else r
                for r in results
            ]
        return PairOpReply(results=tuple(results), data=data)

    # Status...

    def query(self, statuses: list[native.DeviceStatus]) -> list[native.DeviceStatus]:
        out = []
        for status in statuses:
            run = self.runs.get(status.device)
            if run is None or status.status:
                out.append(status)
                continue
            out.append(
                replace(
                    status,
                    dirty_tracks=run.changemap.count(),
                    lag_bytes=run.lag_bytes,
                    flags=int(run.shadow_running) | (int(run.held is not None) << 1),
                )
            )
        return out

    def flush_changemaps(self, keys: list[int]) -> None:
        for key in keys:
            run = self.runs.get(key)
            if run is not None:
                run.changemap.flush()
        for link in self.links.values():
            link.journal.flush()


def _as_primary(item: PairItem) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.role, info.mode, info.fence = PairRole.PRIMARY, item.mode, item.fence
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device
        info.consistency_group, info.suspend_at_ns = item.consistency_group, 0

    return update


def _as_secondary(item: PairItem) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.role, info.mode, info.fence = PairRole.SECONDARY, item.mode, item.fence
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device
        info.consistency_group, info.suspend_at_ns = item.consistency_group, 0

    return update


def _swap_to_primary(info: PairInfo) -> None:
    info.role, info.suspend_at_ns = PairRole.PRIMARY, 0


def _swap_to_secondary(item: PairItem) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.role, info.suspend_at_ns = PairRole.SECONDARY, 0
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device

    return update


def _to_simplex(info: PairInfo) -> None:
    info.role, info.mode, info.peer_serial, info.peer_device = PairRole.NONE, None, 0, 0
    info.suspend_at_ns, info.consistency_group = 0, False


def _clear_armed(info: PairInfo) -> None:
    info.suspend_at_ns = 0


def _suspended_at(at_ns: int) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.suspend_at_ns = at_ns

    return update


def _follow(state: PairState, action: str) -> list[PairAction]:
    """The steps a secondary takes to follow its primary's action from its own state."""
    try:
        wanted = PairAction(action)
    except ValueError:
        raise InputError(f"unknown peer action {action!r}") from None
    if (state, wanted) in _FOLLOW_VIA:
        return _FOLLOW_VIA[(state, wanted)]
    return [wanted]


# A secondary may not have seen the error that suspended its primary: it follows via FAIL.
_FOLLOW_VIA: Final[dict[tuple[PairState, PairAction], list[PairAction]]] = {
    (PairState.DUPLEX, PairAction.RESUME): [PairAction.FAIL, PairAction.RESUME],
    (PairState.PENDING, PairAction.RESUME): [PairAction.FAIL, PairAction.RESUME],
}

__all__ = ["DeviceRun", "PeerLink", "Replicator"]
