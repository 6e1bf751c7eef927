# Restart recovery: what a controller does first after a start, before new work.
#
# Why: a controller may stop at any point (kill -9). Its durable state says what each pair
# was; what was in flight is recovered here: the async journal is shipped again, armed
# suspends are armed again (a T passed while down seals at once), and pairs whose updates
# may not have reached the secondary are resynced.
#
# Rules this module keeps:
# - Journaled updates are shipped again before any new write to those links (`replayed`).
# - A seal after a restart still waits for the replay: every update stamped < T reaches the
#   secondary, none stamped >= T does.
# - Only pairs still as found at start are resynced: an operator may have acted meanwhile.
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from remcopy.controller import segmentlog
from remcopy.controller.journal import Record as JournalRecord
from remcopy.controller.peerlink import PeerLink
from remcopy.errors import RemcopyError
from remcopy.states import PairAction, PairRole, PairState

if TYPE_CHECKING:
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica
    from remcopy.controller.writepath import WritePath

log = logging.getLogger("remcopy.replication")


class Restart:
    """Restart recovery of one controller's replicator."""

    def __init__(self, rep: Replica, writes: WritePath, freezer: Freezer) -> None:
        self.rep = rep
        self.freezer = freezer
        # What the moved code below names on self, taken from the replicator that owns it.
        self.controller = rep.controller
        self.runs = rep.runs
        self.link = rep.link
        self.spawn = rep.spawn
        self.start_copier = rep.start_copier
        self.to_error_all = rep.to_error_all
        self._track = writes._track  # a journaled update replayed is tracked as pushed

    def resume(self) -> None:
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
            self.rep.arm(runs, at_ns)
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
        answers = {r.device: r for r in await self.rep.tell_peer(serial, runs, "resume")}
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


__all__ = ["Restart"]
