# Remote copy: the replicator, owner of the parts that mirror host writes to the secondary
# controller, run the copies and carry out the pair operations.
#
# Why: this is the heart of the system (DESIGN.md section 2). The replicator owns what the
# parts share: the task group, the peer links, every device's run (runs.py), the planted
# bugs; it composes the parts, each one concern, and hands each the others it uses:
#   writepath.py  the host write path (mirror, change-record, hold, refuse)
#   copier.py     initial copy, resync, failback copies
#   restart.py    journal replay, re-arming and resync after a restart
#   pairops.py    pair operations from hosts (the primary side, and recover/shadow)
#   suspendops.py the host's suspend at T, its wait and its cancel (hostrequests.py: a
#                 host's request resolved and planned, for both)
#   peerops.py    the secondary side: updates and peer operations
#   seal.py       the seal of a suspend at T (its timer: sealtimer.py, sans-I/O)
#   freeze.py     the controller-side freeze of a consistency group
#   consistency.py  the consistency time C of async groups at the secondary
# The parts see the replicator through runs.Replica; none imports this module.
#
# Theory of operation
# - One PeerLink per secondary controller: an authenticated channel (peer role) on which
#   updates and peer operations are written in call order, on one TCP connection, and applied
#   by the secondary in that order. Order is what makes the copy correct: a track copy read
#   before a host write to that track is also sent before the write's update.
# - A link error (lost, negative acknowledgement, ack timeout) suspends every affected pair
#   with SUSPENDED_ERROR; a consistency-group device first holds host writes (bounded) so the
#   management layer can freeze the whole group.
# - Heartbeats find a dead or stopped peer with no host write; watermarks let an async
#   group's secondaries move C on idle links.
#
# Rules this module keeps:
# - State changes go through Controller.commit_states (pure table, persisted, announced).
# - Every background task belongs to the Replicator's TaskGroup (owned by the server).
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final

from remcopy import tls
from remcopy.controller.changemap import ChangeMapFile
from remcopy.controller.consistency import Consistency
from remcopy.controller.copier import Copier
from remcopy.controller.core import Controller, HostGrant, PairInfo, StatePlan
from remcopy.controller.freeze import Freezer
from remcopy.controller.journal import Journal
from remcopy.controller.pairops import PairOperations
from remcopy.controller.pairsteps import result_refused
from remcopy.controller.peerlink import PeerLink
from remcopy.controller.peerops import PeerOperations
from remcopy.controller.restart import Restart
from remcopy.controller.runs import DeviceRun
from remcopy.controller.seal import Seal
from remcopy.controller.writepath import WritePath
from remcopy.errors import (
    ControllerFailed,
    InputError,
    RemcopyError,
)
from remcopy.events import EventKind
from remcopy.states import (
    CopyMode,
    PairAction,
    PairRole,
    PairState,
)
from remcopy.wire import native
from remcopy.wire.native import PairItem, PairOp, PairOpReply, PairOpRequest, PairResult

log = logging.getLogger("remcopy.replication")


# A FLUSH naming more devices than this msyncs the whole change-map file once (28-33 ms with
# 1 % of 10,000 maps dirty, 0.1 ms clean) instead of once per device (0.2 ms each).
FLUSH_EACH_MAX: Final = 8
# TESTING ONLY: how far ahead of the clock the planted bug watermark_ahead sends W.
WATERMARK_LEAD_NS: Final = 1_000_000_000


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
        self._by_peer: tuple[int, dict[int, list[DeviceRun]]] = (-1, {})
        """(pairs_generation, primary DUPLEX/PENDING runs by peer serial) of `_mirroring_peers`."""
        files = controller.config.tls_files()
        # Peer links dial with this controller's certificate and check each peer's by its name.
        self.tls = None if files is None else tls.client_context(files)
        self.hold_s = controller.config.controller.hold_s
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
        self.timers: list[asyncio.TimerHandle] = []
        self._tasks: asyncio.TaskGroup | None = None
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
        # The parts, each one concern; each is given the parts it uses (arrows point down).
        self.freezer = Freezer(self)
        self.consistency = Consistency(self)  # replays the secondary journals
        self.writes = WritePath(self, self.freezer)
        self.copier = Copier(self)
        self.seal = Seal(self, self.freezer)
        self.restart = Restart(self, self.writes, self.freezer)
        self.ops = PairOperations(self, self.freezer, self.consistency, self.seal)
        self.peer_ops = PeerOperations(self, self.freezer, self.consistency)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.seal.close()
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
        self.restart.resume()
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
        generation, serials = -1, set[int]()
        while True:
            await asyncio.sleep(interval_s)
            if generation != self.controller.pairs_generation:
                # Looked up again only when a pair changed: a look at 10,000 devices every
                # 100 ms is a CPU's per cent of an idle controller.
                generation = self.controller.pairs_generation
                serials = self._async_group_peers()
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

    def _async_group_peers(self) -> set[int]:
        return {
            run.device.pair.peer_serial
            for run in self.runs.values()
            if run.device.pair.role is PairRole.PRIMARY
            and run.device.pair.mode is CopyMode.ASYNC
            and run.device.pair.consistency_group
            and run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
        }

    def _mirroring_peers(self) -> set[int]:
        """The peers a primary device mirrors to now (DUPLEX or PENDING, not held)."""
        if self._by_peer[0] != self.controller.pairs_generation:
            by_peer: dict[int, list[DeviceRun]] = {}
            for run in self.runs.values():
                pair = run.device.pair
                if pair.role is PairRole.PRIMARY and pair.state in (
                    PairState.DUPLEX,
                    PairState.PENDING,
                ):
                    by_peer.setdefault(pair.peer_serial, []).append(run)
            self._by_peer = (self.controller.pairs_generation, by_peer)
        # A hold is set and cleared without a pair change: looked at each time, and the
        # first device not held ends the look at its peer.
        return {
            serial
            for serial, runs in self._by_peer[1].items()
            if any(run.held is None for run in runs)
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
            self.device_failed(run, exc)
        self.to_error_all([run for run in failed if not run.device.pair.consistency_group])

    # Link failures and holds...

    def device_failed(self, run: DeviceRun, exc: RemcopyError) -> None:
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
        return self.seal.arm(runs, at_ns, prepared)

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

    # Planted bugs (testing only): the fault campaigns must catch each one.

    def _planted(self, bug: str) -> bool:
        """Whether a planted bug fires now: every `planted_bug_every`-th eligible event."""
        if bug not in self.planted_bugs:
            return False
        count = self._planted_counts.get(bug, 0) + 1
        self._planted_counts[bug] = count
        return count % self.planted_bug_every == 0

    # What the parts ask of the replicator besides its state (runs.Replica)...

    async def tell_peer(
        self,
        serial: int,
        runs: list[DeviceRun],
        action: str,
        *,
        at_ns: int = 0,
        options: dict[str, Any] | None = None,
        empty: list[int] | None = None,
    ) -> list[PairResult]:
        """Make the secondaries follow a state change; a dead link is logged, not fatal.
        `empty`: secondary devices a resume has nothing to copy to (they go to DUPLEX)."""
        items = tuple(PairItem(device=r.device.pair.peer_device) for r in runs)
        sent: dict[str, Any] = {**(options or {}), "action": action}
        if empty:
            sent["empty"] = empty
        try:
            reply = await self.link(serial).operate(
                PairOpRequest(op=PairOp.PEER_STATE, at_ns=at_ns, items=items, options=sent)
            )
        except RemcopyError as exc:
            log.warning("could not tell peer %s to %s: %s", serial, action, exc)
            return [result_refused(r.device.pair.peer_device, exc) for r in runs]
        return list(reply.results)

    def start_copier(self, run: DeviceRun) -> None:
        self.copier.start_copier(run)

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

    # Entry points the server calls (the operations themselves are in pairops.py and
    # peerops.py)...

    def host_write(
        self, grant: HostGrant, msg: native.WriteRequest, *, busy_waits: bool = False
    ) -> Awaitable[None] | None:
        """Do a host write (writepath.py); returns what the acknowledgement must wait for."""
        return self.writes.host_write(grant, msg, busy_waits=busy_waits)

    async def pair_op(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        return await self.ops.pair_op(grant, request)

    def peer_op(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        return self.peer_ops.peer_op(peer_serial, request)

    def apply_updates(
        self, peer_serial: int, batch: native.UpdateBatch
    ) -> tuple[native.UpdateAck, asyncio.Future[None] | None]:
        return self.peer_ops.apply_updates(peer_serial, batch)

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
