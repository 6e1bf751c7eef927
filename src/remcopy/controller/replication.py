# Remote copy: mirroring host writes to the secondary controller, and the copies.
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
#   to SUSPENDED at T on both sides (pairops.py).
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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final, Literal

from remcopy import tls
from remcopy.controller import segmentlog
from remcopy.controller.changemap import ChangeMapFile
from remcopy.controller.consistency import Consistency
from remcopy.controller.core import Controller, Device, HostGrant, PairInfo, StatePlan
from remcopy.controller.freeze import Freezer
from remcopy.controller.journal import Journal
from remcopy.controller.journal import Record as JournalRecord
from remcopy.controller.pairops import PairOperations
from remcopy.controller.peerlink import PeerLink
from remcopy.controller.runs import DeviceRun
from remcopy.errors import (
    BrokenResourceError,
    ControllerFailed,
    DeviceBusy,
    InputError,
    LateWrite,
    RemcopyError,
    WriteProtected,
)
from remcopy.events import EventKind
from remcopy.states import (
    CopyMode,
    FencePolicy,
    PairAction,
    PairRole,
    PairState,
)
from remcopy.wire import native
from remcopy.wire.native import PairOpReply, PairOpRequest

log = logging.getLogger("remcopy.replication")


# Track copies in flight per device and per controller.
COPY_IN_FLIGHT_PER_DEVICE: Final = 8
COPY_IN_FLIGHT_MAX: Final = 64
# How long a consistency-group device holds host writes after a replication error: config
# key controller.hold_s (default 2 s).


# A FLUSH naming more devices than this msyncs the whole change-map file once (28-33 ms with
# 1 % of 10,000 maps dirty, 0.1 ms clean) instead of once per device (0.2 ms each).
FLUSH_EACH_MAX: Final = 8
# TESTING ONLY: how far ahead of the clock the planted bug watermark_ahead sends W.
WATERMARK_LEAD_NS: Final = 1_000_000_000

_CopyEnd = Literal["duplex", "again"] | RemcopyError
"""How a finished copy ended: DUPLEX, marked again meanwhile (copy more), or refused."""


class Replicator:
    """Mirroring and pair operations for one controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        # Every device's change map in one file, mapped once (changemap.py).
        self.changemaps = ChangeMapFile(
            controller.data_dir / "changemaps",
            {
                key: (device.volume.tracks, device.volume.track_size_bytes)
                for key, device in controller.devices.items()
            },
        )
        if self.changemaps.migrated:
            log.info(
                "change maps: %d moved from their own files into %s",
                self.changemaps.migrated,
                self.changemaps.path,
            )
        self.runs: dict[int, DeviceRun] = {
            key: DeviceRun(device=device, changemap=self.changemaps.maps[key])
            for key, device in controller.devices.items()
        }
        self.links: dict[int, PeerLink] = {}
        files = controller.config.tls_files()
        # Peer links dial with this controller's certificate and check each peer's by its name.
        self.tls = None if files is None else tls.client_context(files)
        self.hold_s = controller.config.controller.hold_s
        max_lag_s = controller.config.controller.max_lag_s
        self.max_lag_ns = int(max_lag_s * 1e9) if max_lag_s else 0
        self.max_lag_delay_s = controller.config.controller.max_lag_delay_s
        self._zeros: dict[int, bytes] = {}
        self.planted_bugs = frozenset(controller.config.controller.planted_bugs)
        self.planted_bug_every = controller.config.controller.planted_bug_every
        self._planted_counts: dict[str, int] = {}
        if self.planted_bugs:
            log.warning(
                "TESTING ONLY: planted bugs active: %s (every %d)",
                ", ".join(sorted(self.planted_bugs)),
                self.planted_bug_every,
            )
        self.ack_timeout_s = controller.config.controller.ack_timeout_s
        self.freezer = Freezer(self)
        self.consistency = Consistency(self)  # replays the secondary journals
        self.ops = PairOperations(self, self.freezer, self.consistency)
        self._tasks: asyncio.TaskGroup | None = None
        self._copy_slots = asyncio.Semaphore(COPY_IN_FLIGHT_MAX)
        # Copies that finished and wait to be confirmed, per secondary controller: one
        # PEER_STATE request and one state commit for all that finished meanwhile.
        self._copies_done: dict[int, list[tuple[DeviceRun, asyncio.Future[_CopyEnd]]]] = {}
        self._copies_done_sending: set[int] = set()
        self.timers: list[asyncio.TimerHandle] = []
        self.counters = controller.counters
        for name in (
            "updates_sent",
            "updates_applied",
            "late_writes",
            "change_recorded",
            "tracks_copied",
            "zero_tracks_copied",
            "bytes_copied",
            "link_errors",
            "held_writes",
            "holds",
            "busy_writes",
            "lag_busy_writes",
            "commit_waits",
        ):
            self.counters.setdefault(name, 0)
        # Updates and bytes applied here, per peer controller (serial) that sent them.
        self.applied_updates: dict[int, int] = {}
        self.applied_bytes: dict[int, int] = {}

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.changemaps.close()
        self.consistency.close()

    async def run(self) -> None:
        """Own the background tasks (copies, seals, heartbeats) until cancelled; resume
        unfinished work first. Fail-stop: a task that fails unexpectedly (not a RemcopyError
        about one device or link) ends the TaskGroup, and this raises ControllerFailed naming
        it, so the controller exits rather than serve with replication dead."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                # The secondary journals' fdatasyncs leave the loop from here on.
                tasks.create_task(self.consistency.syncer.run(), name="secondary journal sync")
                tasks.create_task(self._guarded(self._start(), "restart recovery"))
                await asyncio.Event().wait()
        except BaseExceptionGroup as group:
            raise _first_failure(group) from None
        finally:
            self._tasks = None
            for link in self.links.values():
                await link.close()

    async def _start(self) -> None:
        self.freezer.rejoin_all()  # before the restart's resyncs, which wait for it
        self._resume_after_restart()
        self.spawn(self._heartbeats(), name="heartbeats")
        self.spawn(self._watermarks(), name="watermarks")
        self.spawn(self.consistency.run(), name="consistency time")

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Start a background task owned by the replicator. A RemcopyError (a volume or a
        link refused something) is logged and ends that task alone: one bad volume must not
        stop replication for every other pair. Anything else is our bug: fail-stop."""
        assert self._tasks is not None, "replicator not running"
        return self._tasks.create_task(self._guarded(coro, name), name=name)

    async def _guarded(self, coro: Awaitable[None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RemcopyError as exc:  # logged, never silent: this is a failure of `name` alone
            self.counters["task_failures"] = self.counters.get("task_failures", 0) + 1
            log.error("background task %s failed: %s", name, exc)
            self.controller.emit(
                EventKind.ERROR,
                f"error: background task {name} failed: {exc}",
                cause=name,
                detail={"error": str(exc)},
            )
        except Exception as exc:
            raise ControllerFailed(
                f"controller {self.controller.name}: background task {name!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _replay_journals(self) -> None:
        """Ship again what async pairs acknowledged before a crash, before any new write."""
        for peer in self.controller.peers.values():
            if not segmentlog.has_records(self.controller.data_dir / "journal", str(peer.serial)):
                continue
            link = self.link(peer.serial)
            records = link.journal.replay()
            if records:
                link.replayed.clear()
                self.spawn(self._replay(link, records), name=f"replay {peer.name}")

    async def _replay(self, link: PeerLink, records: list[JournalRecord]) -> None:
        targets = {
            (r.device.pair.peer_serial, r.device.pair.peer_device): r
            for r in self.runs.values()
            if r.device.pair.role is PairRole.PRIMARY
        }
        try:
            await link.ensure_connected()
        except RemcopyError as exc:
            link.mark_broken(exc)
        for record in records:
            update = record.update
            run = targets.get((link.serial, update.device))
            if run is None:
                link.journal.settled(record.segment)
                continue
            if run.device.pair.state not in (PairState.DUPLEX, PairState.PENDING):
                run.changemap.mark(update.offset, len(update.data))
                link.journal.settled(record.segment)
                continue
            confirmed = link.push(update)
            self._track(
                run, link, confirmed, update.offset, len(update.data), segment=record.segment
            )
        log.info("replayed %d journaled updates to %s", len(records), link.peer.name)
        link.replayed.set()

    def _resume_after_restart(self) -> None:
        self._replay_journals()
        armed: dict[int, list[DeviceRun]] = {}
        for run in self.runs.values():
            pair = run.device.pair
            if pair.role is not PairRole.PRIMARY:
                continue
            if pair.state in (PairState.DUPLEX, PairState.PENDING) and pair.suspend_at_ns:
                armed.setdefault(pair.suspend_at_ns, []).append(run)
            if pair.state is PairState.PENDING:
                self.start_copier(run)
        for at_ns, runs in sorted(armed.items()):
            # One timer and one seal per T, however many devices. If T passed while we were
            # down it fires at once; the seal still waits for the journal replay, so every
            # update stamped < T reaches the secondary, and none stamped >= T does (those
            # were change-recorded before the restart).
            log.info("armed suspend at=%d re-armed after restart devices=%d", at_ns, len(runs))
            self.ops._arm_timer(runs, at_ns)
        crashed = [
            run
            for run in self.runs.values()
            if run.device.pair.role is PairRole.PRIMARY
            and run.device.pair.state is PairState.DUPLEX
            and not run.device.pair.suspend_at_ns
            and run.changemap.count()
        ]
        by_peer: dict[int, list[DeviceRun]] = {}
        for run in crashed:
            by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            self.spawn(self._resync_after_crash(serial, runs), name=f"resync {serial}")

    async def _resync_after_crash(self, serial: int, runs: list[DeviceRun]) -> None:
        """Updates were in flight when we stopped: copy the marked tracks again, then DUPLEX."""
        link = self.link(serial)
        await link.replayed.wait()
        await self.freezer.rejoined.wait()  # a group frozen meanwhile is not resumed here
        # Only pairs still as found at start: an operator may have acted meanwhile.
        runs = [
            r
            for r in runs
            if r.device.pair.state is PairState.DUPLEX and not r.device.pair.suspend_at_ns
        ]
        if not runs:
            return
        log.warning(
            "%d pairs to %s have tracks that may differ after a restart: resync",
            len(runs),
            link.peer.name,
        )
        self.to_error_all(runs)  # DUPLEX -> SUSPENDED_ERROR: the truth until copied
        answers = {r.device: r for r in await self.ops._tell_peer(serial, runs, "resume")}
        changes = {}
        for run in runs:
            answer = answers.get(run.device.pair.peer_device)
            if answer is not None and answer.code == 0:
                changes[run.device.key] = (PairAction.RESUME, None)
        if changes:
            await self.controller.commit(changes, cause="resync-after-restart")
        for run in runs:
            if run.device.key in changes:
                self.start_copier(run)

    # Heartbeats: a dead or stopped peer is found with no host write...

    async def _heartbeats(self) -> None:
        """Every heartbeat_interval_s, prove each link that mirrors pairs alive; a link with
        no answer within heartbeat_timeout_s fails as a failed update does (holds, freeze,
        SUSPENDED_ERROR). A link not connected yet (after a restart) is connected first."""
        section = self.controller.config.controller
        waiting: dict[int, asyncio.Future[native.Message] | asyncio.Task[None]] = {}
        while True:
            await asyncio.sleep(section.heartbeat_interval_s)
            if self._planted("crash_background"):  # PLANTED BUG: a background task dies
                raise RuntimeError("planted bug crash_background: the heartbeat task failed")
            for serial in self._mirroring_peers():
                previous = waiting.get(serial)
                if previous is not None and not previous.done():
                    continue  # its own deadline reports it
                link = self.link(serial)
                if link.broken is None and not link.channel.connected:
                    waiting[serial] = self.spawn(
                        self._connect_link(link), name=f"connect {link.peer.name}"
                    )
                    continue
                beat = link.heartbeat(section.heartbeat_timeout_s)
                if beat is not None:
                    waiting[serial] = beat

    async def _watermarks(self) -> None:
        """Every watermark_interval_s, send W on each link that ships an async consistency
        group's updates (idle or not), so its secondaries can move C (consistency.py)."""
        interval_s = self.controller.config.controller.watermark_interval_s
        while True:
            await asyncio.sleep(interval_s)
            serials = {
                run.device.pair.peer_serial
                for run in self.runs.values()
                if run.device.pair.role is PairRole.PRIMARY
                and run.device.pair.mode is CopyMode.ASYNC
                and run.device.pair.consistency_group
                and run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
            }
            for serial in serials:
                link = self.link(serial)
                if link.replayed.is_set():  # replayed updates are stamped when pushed
                    if self._planted("watermark_ahead"):
                        # PLANTED BUG: W ahead of the writes this controller has not queued
                        # yet (they are stamped from the clock, below it).
                        floor_ns = link.stamp_ns
                        link.stamp_ns = time.time_ns() + WATERMARK_LEAD_NS
                        link.send_watermark()
                        link.stamp_ns = floor_ns
                        continue
                    link.send_watermark()

    def _mirroring_peers(self) -> set[int]:
        return {
            run.device.pair.peer_serial
            for run in self.runs.values()
            if run.device.pair.role is PairRole.PRIMARY
            and run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
            and run.held is None
        }

    async def _connect_link(self, link: PeerLink) -> None:
        try:
            await link.ensure_connected()
        except RemcopyError as exc:
            grace_s = self.controller.config.controller.link_start_grace_s
            up_s = (time.time_ns() - self.controller.started_ns) / 1e9
            if not link.connected_once and up_s < grace_s:
                # Just started, and the peer perhaps not yet: try again next beat.
                self.controller.emit(
                    EventKind.LINK_DOWN,
                    f"link {link.peer.name} not up yet: retrying for "
                    f"{grace_s - up_s:.1f} s more (link_start_grace_s): {exc}",
                    peer=link.peer.name,
                    cause="not-up-yet",
                    detail={"serial": link.serial, "error": str(exc)},
                )
                return
            link.mark_broken(exc)

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
                on_up=self._link_up,
                ack_timeout_s=self.ack_timeout_s,
                tls=self.tls,
            )
            self.links[serial] = link
        return link

    def peers_reloaded(self) -> None:
        """The config's peers changed (a reload): each link takes its peer's new settings."""
        by_serial = {p.serial: p for p in self.controller.peers.values()}
        for serial, link in self.links.items():
            peer = by_serial.get(serial)
            if peer is not None:
                link.reconfigure(peer)

    def _link_up(self, link: PeerLink) -> None:
        self.controller.emit(
            EventKind.LINK_UP,
            f"link {link.peer.name} up serial={link.serial}",
            peer=link.peer.name,
            detail={"serial": link.serial},
        )

    def _link_broken(self, link: PeerLink, exc: RemcopyError) -> None:
        self.counters["link_errors"] += 1
        if link.heartbeat_lost:
            kind, what = EventKind.HEARTBEAT_LOSS, "heartbeat lost"
        else:
            kind, what = EventKind.LINK_DOWN, "down"
        self.controller.emit(
            kind,
            f"link {link.peer.name} {what}: {exc}",
            peer=link.peer.name,
            detail={"serial": link.serial, "error": str(exc)},
        )
        failed = [
            run
            for run in self.runs.values()
            if run.device.pair.role is PairRole.PRIMARY
            and run.device.pair.peer_serial == link.serial
            and run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
        ]
        if self._planted("replicator_ignores_failure"):
            return  # PLANTED BUG: the failure is swallowed; the pairs stay DUPLEX
        held = [run for run in failed if run.device.pair.consistency_group]
        for run in held:
            self._device_failed(run, exc)
        self.to_error_all([run for run in failed if not run.device.pair.consistency_group])

    def _device_failed(self, run: DeviceRun, exc: RemcopyError) -> None:
        """A replication error: hold (consistency group) or go SUSPENDED_ERROR at once."""
        pair = run.device.pair
        if pair.state not in (PairState.DUPLEX, PairState.PENDING) or run.held is not None:
            return
        if pair.consistency_group and not self._planted("no_hold"):  # PLANTED BUG when set
            run.held = asyncio.Event()
            run.held_since_ns = time.time_ns()
            self.counters["holds"] += 1
            self.controller.emit(
                EventKind.HOLD,
                f"hold {run.device.address} cause=replication-error "
                f'hold_s={self.hold_s} error="{exc}"',
                device=str(run.device.address),
                cause="replication-error",
                group=pair.group,
                detail={"hold_s": self.hold_s, "error": str(exc)},
            )
            handle = asyncio.get_running_loop().call_later(
                self.hold_s, self._hold_expired, run, run.held, exc
            )
            self.timers.append(handle)
            self.freezer.device_held(run, str(exc))
            return
        self._to_error(run, exc)

    def _hold_expired(self, run: DeviceRun, held: asyncio.Event, exc: RemcopyError) -> None:
        if run.held is not held:  # not this timer's hold (a later one has its own timer)
            return
        pending = self.freezer.pending(run.device.pair.group)
        if pending is not None:
            # The group's freeze is still waiting for a sibling (it gives up at the same
            # deadline): release by its outcome, which freeze_unreachable decides.
            pending.add_done_callback(lambda _: self._hold_expired(run, held, exc))
            return
        self._to_error(run, exc)

    def _to_error(self, run: DeviceRun, exc: RemcopyError) -> None:
        self.to_error_all([run])

    def to_error_all(self, runs: list[DeviceRun], *, at_ns: int | None = None) -> None:
        """SUSPENDED_ERROR for every device given, in one commit (one state-file write); a
        freeze passes its T, which the event lines carry."""
        changes = {
            run.device.key: (PairAction.FAIL, None)
            for run in runs
            if run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
        }
        if changes:
            self.controller.commit_states(
                changes,
                cause="freeze" if at_ns is not None else "replication-error",
                at_ns=at_ns if at_ns is not None else time.time_ns(),
            )
        for run in runs:
            if run.held is not None:
                run.held.set()
                run.held = None
            if run.copier is not None:
                run.copier.cancel()

    def arm(
        self, runs: list[DeviceRun], at_ns: int, prepared: StatePlan | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Seal these devices at T (their armed T is persisted already)."""
        return self.ops._arm_timer(runs, at_ns, prepared)

    def commit(
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

    def _zero_track(self, size: int) -> bytes:
        zero = self._zeros.get(size)
        if zero is None:
            zero = self._zeros[size] = bytes(size)
        return zero

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

    # Planted bugs (testing only): the fault campaigns must catch each one.

    def _planted(self, bug: str) -> bool:
        """Whether a planted bug fires now: every `planted_bug_every`-th eligible event."""
        if bug not in self.planted_bugs:
            return False
        count = self._planted_counts.get(bug, 0) + 1
        self._planted_counts[bug] = count
        return count % self.planted_bug_every == 0

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

    # Copies (initial copy, resync, failback)...

    def start_copier(self, run: DeviceRun) -> None:
        if run.copier is not None and not run.copier.done():
            return
        run.copier = self.spawn(self._copy(run), name=f"copy {run.device.address}")

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

        while True:
            while not failed and device.pair.state is PairState.PENDING:
                tracks = run.changemap.copy_tracks()
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
                    offset = track * volume.track_size_bytes
                    if data == self._zero_track(len(data)):
                        # A zero track travels as its length only (fresh volumes are mostly zeros).
                        update = native.zero_update(
                            device=pair.peer_device,
                            timestamp_ns=time.time_ns(),
                            offset=offset,
                            length=len(data),
                        )
                        self.counters["zero_tracks_copied"] += 1
                    else:
                        update = native.Update(
                            device=pair.peer_device,
                            timestamp_ns=time.time_ns(),
                            offset=offset,
                            data=data,
                            flags=native.UPDATE_COPY,
                        )
                        self.counters["bytes_copied"] += len(data)
                        run.bytes_sent += len(data)
                    confirmed = link.push(update)
                    task = asyncio.get_running_loop().create_task(one(track, confirmed, generation))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.gather(*in_flight)
            if failed:
                self._device_failed(run, failed[0])
                return
            if device.pair.state is PairState.PENDING and run.changemap.copy_count() == 0:
                end = await self._copy_done(run)
                if isinstance(end, RemcopyError):
                    self._device_failed(run, end)
                    return
                if end == "again":
                    continue  # tracks were marked meanwhile: copy them too
            return

    async def _copy_done(self, run: DeviceRun) -> _CopyEnd:
        """Confirm a finished copy with the secondary, then commit COPY_DONE -> DUPLEX.

        The secondary first: once the primary says DUPLEX, the secondary does too, so a site
        lost right after finds a secondary that can be recovered. Copies that finish while a
        confirmation is on its way wait for the next one: a group of thousands of pairs costs
        a few requests and state commits, not one each (every commit rewrites the whole state
        file, and the secondary answers requests in order within ack_timeout_s)."""
        serial = run.device.pair.peer_serial
        done: asyncio.Future[_CopyEnd] = asyncio.get_running_loop().create_future()
        self._copies_done.setdefault(serial, []).append((run, done))
        if serial not in self._copies_done_sending:
            self._copies_done_sending.add(serial)
            self.spawn(self._confirm_copies(serial), name=f"copies done to {serial}")
        return await done

    async def _confirm_copies(self, serial: int) -> None:
        batch: list[tuple[DeviceRun, asyncio.Future[_CopyEnd]]] = []
        try:
            while batch := self._copies_done.pop(serial, []):
                answers = await self.ops._tell_peer(serial, [r for r, _ in batch], "copy_done")
                by_device = {a.device: a for a in answers}
                ends: list[tuple[asyncio.Future[_CopyEnd], _CopyEnd]] = []
                finished: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
                for run, done in batch:
                    answer = by_device.get(run.device.pair.peer_device)
                    if answer is None or answer.code:
                        reason = answer.message if answer is not None else "no answer"
                        ends.append(
                            (
                                done,
                                BrokenResourceError(
                                    f"secondary did not confirm the end of the copy: {reason}"
                                ),
                            )
                        )
                    elif (
                        run.device.pair.state is PairState.PENDING
                        and run.changemap.copy_count() == 0
                    ):
                        finished[run.device.key] = (PairAction.COPY_DONE, None)
                        ends.append((done, "duplex"))
                    else:
                        ends.append((done, "again"))
                if finished:
                    await self.controller.commit(finished, cause="copy-done")
                for done, end in ends:
                    if not done.done():
                        done.set_result(end)
        finally:
            self._copies_done_sending.discard(serial)
            for _, done in batch + self._copies_done.pop(serial, []):
                if not done.done():  # stopped (or our bug) with copies waiting: they end too
                    done.cancel()

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
                    lag_ns=time.time_ns() - min(run.pending_since.values())
                    if run.pending_since
                    else 0,
                    flags=int(run.shadow_running) | (int(run.held is not None) << 1),
                    copy_left_tracks=self._copy_left(run),
                    consistency_time_ns=self.consistency.consistency_ns(run),
                    journal_bytes=run.journal_bytes or self.consistency.held_bytes(run),
                )
            )
        return out

    @staticmethod
    def _copy_left(run: DeviceRun) -> int:
        """Tracks the copy running on this device still has to send (0 when none runs)."""
        if run.shadow_running:
            return max(0, run.shadow_total - run.shadow_done)
        pair = run.device.pair
        if pair.role is PairRole.PRIMARY and pair.state is PairState.PENDING:
            return run.changemap.copy_count()
        return 0

    def flush_changemaps(self, keys: list[int]) -> None:
        """msync the change maps of these devices (before a FLUSH's fdatasync): one msync of
        the whole file when they are more than a few, one per device otherwise."""
        if len(keys) > FLUSH_EACH_MAX:
            self.changemaps.flush_all()
        else:
            for key in keys:
                run = self.runs.get(key)
                if run is not None:
                    run.changemap.flush()
        for link in self.links.values():
            link.journal.flush()

    # Entry points the server calls (the operations themselves are in pairops.py)...

    async def pair_op(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        return await self.ops.pair_op(grant, request)

    def peer_op(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        return self.ops.peer_op(peer_serial, request)

    def apply_updates(
        self, peer_serial: int, batch: native.UpdateBatch
    ) -> tuple[native.UpdateAck, asyncio.Future[None] | None]:
        return self.ops.apply_updates(peer_serial, batch)

    def watermark(self, peer_serial: int, msg: native.Watermark) -> native.UpdateAck:
        return self.consistency.watermark(peer_serial, msg.watermark_ns)


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report from a TaskGroup's exception group (ours first)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_failure(exc)
        if isinstance(exc, ControllerFailed):
            return exc
    first = group.exceptions[0]
    return ControllerFailed(f"replication failed: {type(first).__name__}: {first}")


__all__ = ["DeviceRun", "PeerLink", "Replicator"]
