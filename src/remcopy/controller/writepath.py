# The host write path: every host write to a device, mirrored, change-recorded, held or
# refused.
#
# Why (DESIGN.md section 2): this decides, for every host write, what its acknowledgement
# means. NBD and the native host channel both write through `host_write` here.
#
# Theory of operation
# - A host write to a DUPLEX or PENDING primary is written locally, then its update is pushed
#   on the link (in the same loop step, so nothing can come between). sync: the host is
#   acknowledged when the secondary confirmed. async: when the update is in the journal.
#   semisync: at once, but the next write to the device waits for the previous confirmation.
#   async with max_lag_s: a write to a device whose oldest unconfirmed update is older waits
#   for it (bounded by max_lag_delay_s), then is answered busy.
# - Write-intent change recording: in SUSPENDED, SUSPENDED_ERROR and RECOVERED the change-map
#   bits are set before the local write. An update that was never confirmed (link lost) has
#   its tracks marked when the error is handled, before the device is reported failed.
# - Armed for a suspend at T: writes stamped < T are mirrored, writes stamped >= T are
#   change-recorded; once sealed (seal.py) a write stamped < T is refused with LateWrite.
# - A device whose pair state is being committed, or whose host writes are held after a
#   replication error, answers once that is over, by the state of then.
#
# Rules this module keeps:
# - Nothing acknowledged to a host is ever lost: a host is acknowledged only after the local
#   write, and in sync mode only after the secondary's confirmation.
# - Range checks come before any change-map bit is set.
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from remcopy.controller.core import Device, HostGrant
from remcopy.controller.peerlink import PeerLink
from remcopy.errors import (
    BrokenResourceError,
    DeviceBusy,
    LateWrite,
    RemcopyError,
    WriteProtected,
)
from remcopy.states import CopyMode, FencePolicy, PairRole, PairState
from remcopy.wire import native

if TYPE_CHECKING:
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica


class WritePath:
    """The host writes of one controller's replicator."""

    def __init__(self, rep: Replica, freezer: Freezer) -> None:
        self.rep = rep
        self.freezer = freezer
        # What the moved code below names on self, taken from the replicator that owns it.
        self.controller = rep.controller
        self.runs = rep.runs
        self.counters = rep.counters
        self.link = rep.link
        self._planted = rep._planted
        self._device_failed = rep.device_failed
        section = rep.controller.config.controller
        self.max_lag_ns = int(section.max_lag_s * 1e9) if section.max_lag_s else 0
        self.max_lag_delay_s = section.max_lag_delay_s

    def host_write(
        self, grant: HostGrant, msg: native.WriteRequest, *, busy_waits: bool = False
    ) -> Awaitable[None] | None:
        """Do a host write; returns what the acknowledgement must wait for, or None.

        semisync: a write to a device whose previous update the secondary has not confirmed
        is refused at once with DeviceBusy (retryable; nothing written), which the native
        host channel retries, as the seed's device answers busy. `busy_waits` (NBD, where a
        busy would be an I/O error to a filesystem) waits for that confirmation instead."""
        device = self.controller.device_for_host(grant, msg.device)
        device.volume.check_range("write", msg.offset, len(msg.data))  # before any bit is set
        if device.committing is not None and not device.committing.done():
            # Its pair state is changing and the change is not durable yet: the write is
            # treated by the state that survives a crash, so it waits for the commit. (A done
            # commit whose clearing callback has not run yet is durable: no wait, no loop.)
            return self._after_commit(device.committing, grant, msg, busy_waits)
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
            return self._held_write(run, grant, msg, busy_waits)
        if pair.state is PairState.SUSPENDED_ERROR and pair.fence is FencePolicy.DATA:
            raise WriteProtected(
                f"write to {device.address} refused: the secondary cannot be updated "
                f"(SUSPENDED_ERROR) and the pair's fence is data: resume the pair first"
            )
        if pair.state is PairState.SUSPENDED_ERROR and self.freezer.refuse_after_freeze(run):
            raise WriteProtected(
                f"write to {device.address} refused: the freeze of group {pair.group} did not "
                "reach every sibling primary and freeze_unreachable is stop: resume or "
                "terminate the pair first"
            )
        if pair.state in (PairState.SUSPENDED, PairState.SUSPENDED_ERROR):
            if pair.state is PairState.SUSPENDED and msg.timestamp_ns < pair.suspend_at_ns:
                # It belongs before T, but the image at the secondary is frozen at T: neither
                # mirroring nor recording it is right. The host reissues it with a new stamp.
                self.counters["late_writes"] += 1
                raise LateWrite(
                    f"write to {device.address} stamped {msg.timestamp_ns} is before the "
                    f"suspend time {pair.suspend_at_ns} the pair is suspended at: reissue it"
                )
            self._change_recorded(run, msg)
            return None
        # DUPLEX or PENDING: mirror, unless an armed suspend says otherwise.
        armed_at = pair.suspend_at_ns
        if armed_at:
            if msg.timestamp_ns >= armed_at:
                if self._planted("mirror_late_write"):
                    return self._mirror(run, msg)  # PLANTED BUG: a write stamped >= T mirrored
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
            if not busy_waits:
                self.counters["busy_writes"] += 1
                raise DeviceBusy(
                    f"write to {device.address}: the secondary has not confirmed the "
                    "previous write yet (semisync): retry"
                )
            return self._semisync_after(run, grant, msg, run.last_update)
        if pair.mode is CopyMode.ASYNC and self._over_max_lag(run):
            return self._after_lag(run, grant, msg, busy_waits)
        return self._mirror(run, msg)

    def _over_max_lag(self, run: DeviceRun) -> bool:
        """Whether the device's oldest unconfirmed update is older than max_lag_s."""
        if not self.max_lag_ns or not run.pending_since:
            return False
        return time.time_ns() - min(run.pending_since.values()) > self.max_lag_ns

    async def _after_lag(
        self, run: DeviceRun, grant: HostGrant, msg: native.WriteRequest, busy_waits: bool
    ) -> None:
        """A write to an async device whose lag is over max_lag_s: wait for the oldest
        update's confirmation up to max_lag_delay_s (NBD: as long as it takes), then write
        it by the state of then, or answer busy (nothing written; the host asks again)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_lag_delay_s
        while self._over_max_lag(run):
            left = deadline - loop.time()
            if left <= 0 and not busy_waits:
                self.counters["lag_busy_writes"] += 1
                raise DeviceBusy(
                    f"write to {run.device.address}: the secondary is more than "
                    f"{self.max_lag_ns / 1e9:g} s behind (max_lag_s): retry"
                )
            oldest = min(run.pending_since, key=run.pending_since.__getitem__)
            # The oldest update settles (confirmed, or failed by the link's own deadlines),
            # or the delay ends: either way the loop looks again.
            with contextlib.suppress(RemcopyError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(oldest), None if busy_waits else left)
        follow = self.host_write(grant, msg, busy_waits=busy_waits)
        if follow is not None:
            await follow

    def _write_local(self, device: Device, msg: native.WriteRequest) -> None:
        device.volume.pwrite(msg.offset, msg.data)
        self.counters["writes"] += 1

    def _change_recorded(self, run: DeviceRun, msg: native.WriteRequest) -> None:
        if not self._planted("skip_changemap_bit"):  # PLANTED BUG when set: the bit is lost
            run.changemap.mark(msg.offset, len(msg.data))  # write-intent: the bit first
        self._write_local(run.device, msg)
        self.counters["change_recorded"] += 1

    def _mirror(self, run: DeviceRun, msg: native.WriteRequest) -> Awaitable[None] | None:
        device, pair = run.device, run.device.pair
        link = self.link(pair.peer_serial)
        if pair.mode is CopyMode.ASYNC:
            link.journal.check_room()  # refuse before anything is written
        # Write-intent: the bits are set before the local write and cleared when the secondary
        # confirmed, so after a crash every track that may differ is in the map.
        intent = run.changemap.mark_intent(msg.offset, len(msg.data))
        if self._planted("clear_bit_early"):  # PLANTED BUG: cleared before it is confirmed
            run.changemap.release(intent)
            intent = []
        self._write_local(device, msg)
        if (not link.channel.connected and link.broken is None) or not link.replayed.is_set():
            return self._connect_then_push(run, link, msg, intent)
        return self._push(run, link, msg, intent)

    async def _connect_then_push(
        self,
        run: DeviceRun,
        link: PeerLink,
        msg: native.WriteRequest,
        intent: list[int],
    ) -> None:
        await link.replayed.wait()
        if not link.channel.connected:
            try:
                await link.ensure_connected()
            except RemcopyError as exc:
                link.mark_broken(exc)
        follow = self._push(run, link, msg, intent)
        if follow is not None:
            await follow

    def _push(
        self,
        run: DeviceRun,
        link: PeerLink,
        msg: native.WriteRequest,
        intent: list[int],
    ) -> Awaitable[None] | None:
        pair = run.device.pair
        update = native.Update(
            device=pair.peer_device, timestamp_ns=msg.timestamp_ns, offset=msg.offset, data=msg.data
        )
        # In the file before the host is acknowledged: async updates, in a journal segment.
        segment = link.journal.append(update) if pair.mode is CopyMode.ASYNC else None
        if self._planted("drop_update"):  # PLANTED BUG: confirmed without being sent
            confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            confirmed.set_result(None)
        else:
            confirmed = link.push(update)
        self.counters["updates_sent"] += 1
        self._track(
            run,
            link,
            confirmed,
            msg.offset,
            len(msg.data),
            segment=segment,
            intent=intent,
        )
        if pair.mode is CopyMode.SYNC:
            if self._planted("early_sync_ack"):
                return None  # PLANTED BUG: the host is acknowledged before the secondary
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
        segment: int | None,
        intent: list[int] | None = None,
    ) -> None:
        """Account for an update until its confirmation; `segment`: its async journal segment
        (None: not journaled)."""
        run.in_flight.add(confirmed)
        run.lag_bytes += length
        run.journal_bytes += length if segment is not None else 0
        run.pending_since[confirmed] = time.time_ns()

        def done(future: asyncio.Future[None]) -> None:
            run.lag_bytes -= length
            run.pending_since.pop(future, None)
            if segment is not None:
                run.journal_bytes -= length
                link.journal.settled(segment)

            self._update_done(run, offset, length, future)
            if intent is not None:
                run.changemap.release(intent)  # after a failure, _update_done marked it

        confirmed.add_done_callback(done)

    def _update_done(
        self, run: DeviceRun, offset: int, length: int, future: asyncio.Future[None]
    ) -> None:
        run.in_flight.discard(future)
        failed = future.cancelled() or future.exception() is not None
        if failed and self._planted("replicator_ignores_failure"):
            return  # PLANTED BUG: the failure is swallowed; no track marked, no hold
        if failed:
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
        if self.freezer.refuse_after_freeze(run):
            raise WriteProtected(
                f"write to {run.device.address}: the freeze of group {run.device.pair.group} "
                "did not reach every sibling primary and freeze_unreachable is stop: "
                f"resume or terminate the pair first: {exc}"
            )

    async def _after_commit(
        self,
        committing: asyncio.Future[None],
        grant: HostGrant,
        msg: native.WriteRequest,
        busy_waits: bool,
    ) -> None:
        self.counters["commit_waits"] += 1
        await committing
        self.controller.announce_durable()  # its events before this write's answer
        follow = self.host_write(grant, msg, busy_waits=busy_waits)
        if follow is not None:
            await follow

    async def _held_write(
        self, run: DeviceRun, grant: HostGrant, msg: native.WriteRequest, busy_waits: bool
    ) -> None:
        assert run.held is not None
        self.counters["held_writes"] += 1
        await run.held.wait()
        follow = self.host_write(grant, msg, busy_waits=busy_waits)
        if follow is not None:
            await follow

    async def _semisync_after(
        self,
        run: DeviceRun,
        grant: HostGrant,
        msg: native.WriteRequest,
        previous: asyncio.Future[None],
    ) -> None:
        # The previous update settles: confirmed, or failed by the link's error or its ack
        # timeout (ack_timeout_s), so this wait is bounded by the link's own deadlines.
        with contextlib.suppress(RemcopyError):  # an error recorded it; go by the new state
            await asyncio.shield(previous)
        follow = self.host_write(grant, msg, busy_waits=True)
        if follow is not None:
            await follow


__all__ = ["WritePath"]
