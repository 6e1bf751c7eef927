# The consistency time C of async consistency groups, at the secondary site.
#
# Why (DESIGN.md section 2): with async copy, each primary controller ships its own updates
# on its own link, at its own pace. A secondary that wrote every update as it arrived would
# hold a write whose predecessor, on another primary's slower link, has not arrived: not a
# consistent cut. So every update of an async consistency group waits in a durable journal at
# its secondary (sjournal.py) and is written to the volume only once C has passed its stamp,
# where C = the least, over every replication link of the group, of that link's watermark W
# ("every update stamped < W that I will ever ship on this link has been sent", sent by the
# primary behind its updates, peerlink.py).
#
# Theory of operation
# - Stamps: a primary stamps each update when it queues it on the link (PeerLink.push):
#   max(the host's stamp, its clock, the previous stamp + 1). Queueing happens in the same
#   loop step as the local write, before the host is acknowledged, so a write acknowledged
#   before time t carries a stamp < t, and a write issued after another was acknowledged
#   carries a larger stamp (synchronized clocks, DESIGN.md section 5). No write can hold a
#   stamp without being queued, so W = the clock when W is sent (after the queue is flushed).
# - Stamps rise along a link, so an update stamped s is itself a watermark s + 1: a busy
#   link moves W with every batch; an idle one with the primary's explicit W frames.
# - Each secondary controller of a group knows its own links' latest W; `arrived_ns` is
#   their minimum: every update of the group stamped below it has arrived here (journaled).
#   It tells each sibling secondary of the group (PEER_WATERMARK, over [[peers]] links) every
#   watermark_interval_s; C here = the least arrived_ns over every secondary of the group,
#   its own included. Each secondary computes C itself: no single point of failure, and
#   nothing from the primary site is needed once it is lost.
# - Moving C: C is written to the journal, then the updates stamped < C are written to the
#   volumes in stamp order. A restart replays the journal: what is below the last C is
#   written again in the same order (same bytes), C never goes back (kill -9: the file's
#   page cache survives).
# - Durability: an update batch is acknowledged to its primary only once its journal records
#   are fdatasync'd (JournalSyncer, on a writer thread, batches arriving meanwhile sharing
#   the next fdatasync), and a link's watermark counts here only once the updates before it
#   are durable: what C covers at any secondary of the group survives a power loss of this
#   one. A new C is synced with the next group commit (power loss may take back the last
#   one or two, never below what the journal holds). The journal is a run of segment
#   files; an old segment is deleted only once every update in it was written to the
#   volumes (or dropped) and the group's volumes were fdatasync'd after that (off the loop):
#   nothing that still waits is ever copied again.
# - Leaving DUPLEX (suspend at T, a resume after an error, terminate) first writes every
#   update of the device still waiting: the primary has drained what is stamped < T and
#   stopped mirroring, so the device is at T (C = T for a suspend).
# - Recover: the management layer asks every secondary of the group how far it has arrived
#   (GROUP_CUT), takes the least (everything stamped below it is here, everywhere), and asks
#   each to apply exactly up to it; later updates are dropped and their tracks set in the
#   change map, so a failback copies them back.
#
# Rules this module keeps:
# - Only updates of DUPLEX secondaries of a group with known membership wait; everything
#   else (copies, PENDING pairs, sync/semisync, groups established without membership) is
#   written at once, as before.
# - Nothing stamped >= C is ever written to a volume by C's movement; C never decreases.
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from remcopy.controller import statefile
from remcopy.controller.sjournal import JournalSyncer, SecondaryJournal, Waiting
from remcopy.errors import InputError, RemcopyError
from remcopy.events import EventKind
from remcopy.states import CopyMode, PairRole, PairState
from remcopy.wire import native
from remcopy.wire.native import PairOp, PairOpReply, PairOpRequest

if TYPE_CHECKING:
    from remcopy.controller.core import Controller, Device
    from remcopy.controller.runs import DeviceRun, Replica
    from remcopy.controller.volume import Volume

log = logging.getLogger("remcopy.replication")

GROUPS_FILE: Final = "async_groups.json"
# Settling a device writes everything of it still waiting, whatever its stamp.
UNBOUNDED_NS: Final = (1 << 63) - 1


@dataclass(eq=False)
class AsyncGroup:
    """One async consistency group as its secondary controller here keeps it."""

    name: str
    secondaries: tuple[int, ...]
    """Serials of every secondary controller of the group, this one included."""
    journal: SecondaryJournal
    waiting: list[Waiting] = field(default_factory=list)
    applied_ns: int = 0
    """C: every update stamped below it is written here; none at or above it."""
    siblings: dict[int, int] = field(default_factory=dict)
    """What each sibling secondary last said it has received up to (arrived_ns)."""
    told: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    next_seq: int = 1
    live_bytes: int = 0
    rpo_over: bool = False
    """Whether the last `rpo` event said the RPO is over rpo_alert_s."""
    held_bytes: dict[int, int] = field(default_factory=dict)
    """Per device: the bytes of its updates waiting here (QUERY journal_bytes)."""
    unflushed: set[int] = field(default_factory=set)
    """Devices this group's updates were written to since the last fdatasync of them began."""

    def drop(self, device: int) -> None:
        self.journal.drop(device)

    def hold(self, w: Waiting) -> None:
        self.waiting.append(w)
        self.live_bytes += len(w.data)
        self.held_bytes[w.device] = self.held_bytes.get(w.device, 0) + len(w.data)

    def release(self, gone: list[Waiting]) -> None:
        """Forget these waiting updates (written, or dropped at a recover)."""
        if not gone:
            return
        ids = {id(w) for w in gone}
        self.waiting = [w for w in self.waiting if id(w) not in ids]
        for w in gone:
            self.journal.settle(w)
            self.live_bytes -= len(w.data)
            left = self.held_bytes[w.device] - len(w.data)
            if left:
                self.held_bytes[w.device] = left
            else:
                del self.held_bytes[w.device]


class Consistency:
    """The secondary side of async consistency groups for one controller's replicator."""

    def __init__(self, rep: Replica) -> None:
        self.rep = rep
        self.controller: Controller = rep.controller
        self.interval_s = self.controller.config.controller.watermark_interval_s
        self.watermarks: dict[int, int] = {}
        """The latest W each primary controller sent on its link to here."""
        self.groups: dict[str, AsyncGroup] = {}
        self.syncer = JournalSyncer()
        for key in (
            "async_cuts",
            "async_updates_waited",
            "async_late_updates",
            "async_segments_retired",
        ):
            self.controller.counters.setdefault(key, 0)
        document = statefile.read(self.controller.data_dir / GROUPS_FILE) or {}
        for name, secondaries in sorted(document.items()):
            self._open(name, tuple(int(s) for s in secondaries))

    def __repr__(self) -> str:
        return f"<Consistency groups={sorted(self.groups)}>"

    def _open(self, name: str, secondaries: tuple[int, ...]) -> AsyncGroup:
        path = self.controller.data_dir / "sjournal" / f"{name.encode().hex()}.jnl"
        group = AsyncGroup(name=name, secondaries=secondaries, journal=SecondaryJournal(path))
        replayed = group.journal.replay()
        group.applied_ns = replayed.applied_ns
        group.next_seq = replayed.next_seq
        # What was below C was written before the restart (or was being): write it again, in
        # the same order; what is above waits as before.
        below = sorted(
            (w for w in replayed.waiting if w.stamp_ns < group.applied_ns),
            key=lambda w: (w.stamp_ns, w.seq),
        )
        for w in replayed.waiting:
            if w.stamp_ns >= group.applied_ns:
                group.hold(w)
        self._write(group, below)
        for w in below:
            group.journal.settle(w)
        if replayed.waiting:
            log.info(
                "group %s: secondary journal replayed: C=%d, %d updates written again, %d wait",
                name,
                group.applied_ns,
                len(below),
                len(group.waiting),
            )
        self.groups[name] = group
        return group

    def close(self) -> None:
        for group in self.groups.values():
            group.journal.close()

    # Membership (PEER_ESTABLISH)...

    def join(self, name: str, options: dict[str, Any]) -> None:
        """Become a secondary controller of async group `name`; options["secondaries"] names
        every secondary controller of the group, each a configured peer (they tell each
        other how far they have received). Checked before anything changes."""
        raw = options.get("secondaries", [self.controller.serial])
        if not isinstance(raw, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in raw
        ):
            raise InputError(
                f"establish: option secondaries must be a list of controller serials (got {raw!r})"
            )
        secondaries = tuple(sorted(set(raw) | {self.controller.serial}))
        known = {p.serial for p in self.controller.peers.values()}
        missing = [s for s in secondaries if s != self.controller.serial and s not in known]
        if missing:
            raise InputError(
                f"async consistency group {name}: secondary controller(s) "
                f"{', '.join(str(m) for m in missing)} not in controller {self.controller.name}'s "
                "[[peers]]: the secondaries of a group tell each other how far they have "
                "received: add each (name, serial, address, secret)"
            )
        group = self.groups.get(name)
        if group is not None and group.secondaries == secondaries:
            return
        document = {n: list(g.secondaries) for n, g in self.groups.items()}
        document[name] = list(secondaries)
        statefile.write_atomic(self.controller.data_dir / GROUPS_FILE, document)
        if group is None:
            self._open(name, secondaries)
        else:
            group.secondaries = secondaries

    # Updates and watermarks from the primaries...

    def group_of(self, device: Device) -> AsyncGroup | None:
        """The group whose consistency time an update to `device` waits for, or None."""
        pair = device.pair
        if (
            pair.role is not PairRole.SECONDARY
            or pair.mode is not CopyMode.ASYNC
            or not pair.consistency_group
            or pair.state is not PairState.DUPLEX
        ):
            return None
        return self.groups.get(pair.group)

    def arrived(self, group: AsyncGroup, source: int, update: native.Update) -> None:
        waiting = Waiting(
            seq=group.next_seq,
            source=source,
            device=update.device,
            flags=update.flags,
            stamp_ns=update.timestamp_ns,
            offset=update.offset,
            data=update.data,
        )
        group.next_seq += 1
        group.journal.append(waiting)  # before the primary is told it arrived
        if update.timestamp_ns < group.applied_ns:
            # Cannot happen while primaries keep the watermark rule; written at once, loudly.
            self.controller.counters["async_late_updates"] += 1
            log.error(
                "group %s: update stamped %d arrived after C=%d: written at once",
                group.name,
                update.timestamp_ns,
                group.applied_ns,
            )
            self._write(group, [waiting])
            group.journal.settle(waiting)
            return
        group.hold(waiting)
        self.controller.counters["async_updates_waited"] += 1

    def durable(self, groups: list[AsyncGroup]) -> asyncio.Future[None] | None:
        """After `arrived` appended to these groups' journals: the future done once all of it
        is on disk (None: it is already). The primary is told the batch arrived only then."""
        done = None
        for group in groups:
            done = self.syncer.submit_item(group.journal)
        return done

    def watermark(self, source: int, watermark_ns: int) -> native.UpdateAck:
        """Every update from `source` stamped below watermark_ns has arrived (frames are
        handled in order, so the updates sent before it are journaled already). It counts
        once they are durable: after the journal syncs queued so far."""
        pending = self.syncer.last
        if pending is None:
            self._raise_watermark(source, watermark_ns)
        else:
            pending.add_done_callback(
                lambda done: (
                    None
                    if done.cancelled() or done.exception() is not None
                    else self._raise_watermark(source, watermark_ns)
                )
            )
        return native.UpdateAck(applied=0)

    def _raise_watermark(self, source: int, watermark_ns: int) -> None:
        if watermark_ns > self.watermarks.get(source, 0):
            self.watermarks[source] = watermark_ns

    def held_bytes(self, run: DeviceRun) -> int:
        """Bytes of the device's updates held in its group's journal here, waiting for C."""
        pair = run.device.pair
        group = self.groups.get(pair.group) if pair.role is PairRole.SECONDARY else None
        return 0 if group is None else group.held_bytes.get(run.device.key, 0)

    def arrived_ns(self, group: AsyncGroup) -> int:
        """Every update of the group stamped below this has arrived here: the least latest W
        of the links that mirror to this controller's pairs of the group. With none
        mirroring (the group suspended at T: each pair was settled at T), T; else 0."""
        runs = self._runs(group)
        holding = {w.device for w in group.waiting}  # suspended by a freeze: not settled
        sources = {
            run.device.pair.peer_serial
            for run in runs
            if run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
            or run.device.key in holding
        }
        if sources:
            return min(self.watermarks.get(s, 0) for s in sources)
        suspended = [
            run.device.pair.suspend_at_ns
            for run in runs
            if run.device.pair.state is PairState.SUSPENDED and run.device.pair.suspend_at_ns
        ]
        return min(suspended, default=0)

    def _runs(self, group: AsyncGroup) -> list[DeviceRun]:
        return [
            run
            for run in self.rep.runs.values()
            if run.device.pair.role is PairRole.SECONDARY
            and run.device.pair.consistency_group
            and run.device.pair.group == group.name
        ]

    def consistency_ns(self, run: DeviceRun) -> int:
        """The C the device's secondary is at (QUERY): its group's, or the T it is suspended
        at (C = T); 0 when it is not the secondary of an async group."""
        pair = run.device.pair
        group = self.groups.get(pair.group) if pair.role is PairRole.SECONDARY else None
        if group is None or not pair.consistency_group:
            return 0
        if (
            pair.state is PairState.SUSPENDED
            and pair.suspend_at_ns
            and not any(w.device == run.device.key for w in group.waiting)
        ):
            return pair.suspend_at_ns
        return group.applied_ns

    # Moving C...

    async def run(self) -> None:
        """Every watermark_interval_s: tell the siblings how far this controller received,
        and move each group's C as far as every secondary of it received."""
        while True:
            await asyncio.sleep(self.interval_s)
            for group in list(self.groups.values()):
                arrived = self.arrived_ns(group)
                self._tell_siblings(group, arrived)
                if self.advance(group, arrived):
                    self.syncer.submit_item(group.journal)  # the new C, with the next commit
                self._check_rpo(group)
            for group in list(self.groups.values()):
                await self._retire(group)

    def _check_rpo(self, group: AsyncGroup) -> None:
        """An `rpo` event when the group's RPO here (now - C) crosses rpo_alert_s, either
        way; nothing while it stays on one side."""
        limit_s = self.controller.config.controller.rpo_alert_s
        if limit_s is None or not group.applied_ns:
            return
        rpo_ns = time.time_ns() - group.applied_ns
        over = rpo_ns > limit_s * 1e9
        if over is group.rpo_over:
            return
        group.rpo_over = over
        # Told in whole ms, rounded away from the limit: "over 0.5 s: 0.500 s" never appears.
        rpo_s = (-(-rpo_ns // 1_000_000) if over else rpo_ns // 1_000_000) / 1000
        self.controller.emit(
            EventKind.RPO,
            f"rpo group {group.name} {'over' if over else 'back under'} {limit_s:g} s: "
            f"{rpo_s:.3f} s",
            group=group.name,
            detail={"over": over, "rpo_s": rpo_s, "limit_s": limit_s},
        )

    def advance(self, group: AsyncGroup, arrived: int) -> bool:
        """Move C as far as every secondary of the group received; whether it moved."""
        cut = min(
            [arrived, *(group.siblings.get(s, 0) for s in group.secondaries if s != self.serial)]
        )
        if cut <= group.applied_ns:
            return False
        self.apply_to(group, cut)
        return True

    @property
    def serial(self) -> int:
        return self.controller.serial

    def apply_to(self, group: AsyncGroup, cut: int, *, devices: set[int] | None = None) -> int:
        """Write the updates stamped < cut (of `devices`, or all) in stamp order, C first made
        durable; returns how many were written."""
        if devices is None:
            group.journal.cut(cut)  # in the file before the first write below it
            group.applied_ns = cut
            self.controller.counters["async_cuts"] += 1
        due = [
            w
            for w in group.waiting
            if w.stamp_ns < cut and (devices is None or w.device in devices)
        ]
        if devices is None and self.rep._planted("async_apply_past_c"):
            due = list(group.waiting)  # PLANTED BUG: updates stamped >= C written too
        if not due:
            return 0
        group.release(due)
        due.sort(key=lambda w: (w.stamp_ns, w.seq))
        self._write(group, due)
        return len(due)

    def _write(self, group: AsyncGroup, updates: list[Waiting]) -> None:
        for w in updates:
            device = self.controller.devices.get(w.device)
            if device is None:
                continue
            group.unflushed.add(w.device)
            if w.flags & native.UPDATE_ZERO:
                device.volume.zero(w.offset, _length(w))
            else:
                device.volume.pwrite(w.offset, w.data)
        self.controller.counters["updates_applied"] = self.controller.counters.get(
            "updates_applied", 0
        ) + len(updates)

    async def _retire(self, group: AsyncGroup) -> None:
        """Delete the old journal segments whose updates were all written (or dropped), once
        the group's volumes are fdatasync'd (off the loop): a power loss after the deletion
        must find those writes on disk. Segments settled while the fdatasync ran wait for
        the next round."""
        numbers = group.journal.retirable()
        if not numbers:
            return
        # Every update in those segments was written before now, so its device is in
        # `unflushed` or was fdatasync'd by an earlier round that began after that write
        # (whatever its pair is now: a terminated pair's volume too).
        keys, group.unflushed = group.unflushed, set()
        volumes = [d.volume for key in sorted(keys) if (d := self.controller.devices.get(key))]
        await asyncio.to_thread(_flush_all, volumes)
        async with self.syncer.exclusive():  # no fdatasync of a segment runs meanwhile
            group.journal.retire(numbers)
        self.controller.counters["async_segments_retired"] += len(numbers)

    def settle(self, runs: list[DeviceRun]) -> None:
        """These secondaries leave DUPLEX (or a freeze's SUSPENDED): write every update of
        theirs still waiting (the primary drained what belongs before its T), then forget
        them in the journal."""
        by_group: dict[str, set[int]] = {}
        for run in runs:
            pair = run.device.pair
            group = self.groups.get(pair.group) if pair.role is PairRole.SECONDARY else None
            if group is not None and any(w.device == run.device.key for w in group.waiting):
                by_group.setdefault(group.name, set()).add(run.device.key)
        for name, devices in by_group.items():
            group = self.groups[name]
            self.apply_to(group, UNBOUNDED_NS, devices=devices)
            for key in sorted(devices):
                group.drop(key)
            group.journal.sync()

    # Agreement among the secondaries of a group...

    def _tell_siblings(self, group: AsyncGroup, arrived: int) -> None:
        for serial in group.secondaries:
            if serial == self.serial:
                continue
            task = group.told.get(serial)
            if task is not None and not task.done():
                continue  # the previous word is still on its way
            group.told[serial] = self.rep.spawn(
                self._tell(serial, group.name, arrived), name=f"watermark to {serial}"
            )

    async def _tell(self, serial: int, name: str, arrived: int) -> None:
        request = PairOpRequest(op=PairOp.PEER_WATERMARK, at_ns=arrived, options={"group": name})
        try:
            reply = await asyncio.wait_for(
                self.rep.link(serial).operate(request), timeout=max(1.0, 10 * self.interval_s)
            )
        except (RemcopyError, TimeoutError) as exc:
            log.debug("could not tell sibling secondary %d of group %s: %s", serial, name, exc)
            with contextlib.suppress(RemcopyError):
                await self.rep.link(serial).channel.disconnect(f"watermark not answered: {exc}")
            return
        told = reply.document.get("arrived_ns")
        group = self.groups.get(name)
        if group is not None and isinstance(told, int):
            self._heard(group, serial, told)

    def _heard(self, group: AsyncGroup, serial: int, arrived: int) -> None:
        # The latest word, not the largest: a sibling's pairs may start mirroring again (its
        # arrival then starts low). C here never goes back whatever is heard (advance).
        group.siblings[serial] = arrived

    def peer_watermark(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        """A sibling secondary says how far it received; answer with how far we did."""
        name = str(request.options.get("group", ""))
        group = self.groups.get(name)
        if group is None or peer_serial not in group.secondaries:
            raise InputError(
                f"controller {self.controller.name} is not a secondary of async group "
                f"{name!r} with controller {peer_serial}"
            )
        self._heard(group, peer_serial, request.at_ns)
        return PairOpReply(document={"arrived_ns": self.arrived_ns(group)})

    # Recover...

    def cut_document(self, name: str) -> dict[str, Any]:
        """GROUP_CUT: how far the group's updates have arrived and been applied here."""
        group = self.groups.get(name)
        if group is None:
            raise InputError(
                f"controller {self.controller.name} is not a secondary of async "
                f"consistency group {name!r}"
            )
        arrived = self.arrived_ns(group)
        return {
            "group": name,
            "arrived_ns": arrived,
            "applied_ns": group.applied_ns,
            "waiting": len(group.waiting),
            "waiting_bytes": group.live_bytes,
            "now_ns": time.time_ns(),
        }

    def recover_to(self, runs: list[DeviceRun], cut: int) -> dict[int, int]:
        """Before these secondaries are recovered: write their updates stamped < cut, drop
        the later ones with their tracks set in the change map (failback copies them back).
        Returns, per device, how many updates were dropped."""
        dropped: dict[int, int] = {}
        by_group: dict[str, list[DeviceRun]] = {}
        for run in runs:
            group = self.groups.get(run.device.pair.group)
            if group is not None and run.device.pair.role is PairRole.SECONDARY:
                by_group.setdefault(group.name, []).append(run)
        for name, group_runs in by_group.items():
            group = self.groups[name]
            devices = {r.device.key for r in group_runs}
            if cut > group.applied_ns:
                self.apply_to(group, cut)
            later = [w for w in group.waiting if w.device in devices]
            for w in later:
                run = self.rep.runs[w.device]
                run.changemap.mark(w.offset, _length(w))
                dropped[w.device] = dropped.get(w.device, 0) + 1
            group.release(later)
            for run in group_runs:
                run.changemap.flush()
            for key in sorted(devices):
                group.drop(key)
            group.journal.sync()
        return dropped


def _flush_all(volumes: list[Volume]) -> None:
    for volume in volumes:
        volume.flush()


def _length(w: Waiting) -> int:
    if w.flags & native.UPDATE_ZERO:
        return native.update_length(
            native.Update(
                device=w.device,
                timestamp_ns=w.stamp_ns,
                offset=w.offset,
                data=w.data,
                flags=w.flags,
            )
        )
    return len(w.data)
