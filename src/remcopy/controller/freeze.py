# Freeze inside the controllers: a consistency group suspended at one T after a replication
# error, with nothing but the group's primary controllers running.
#
# Why (DESIGN.md section 5): when a device of a consistency group cannot update its secondary,
# its controller holds that device's host writes (a bounded "long busy"). Nothing that depends
# on a held write can be issued before the hold ends. If, before the hold ends, every primary
# controller of the group is armed to stop mirroring writes stamped >= one T (with T not yet
# passed anywhere), then no write that depends on the failed one can reach any secondary: the
# secondary site is a consistent cut at T. This is the analogue of a PPRC freeze with extended
# long busy, done by the controllers themselves over their authenticated peer links, so it
# needs no management process (the management layer's freeze, groups/freeze.py, is a second
# path that joins this one).
#
# Theory of operation
# - Membership: a group establish carries the group's name and its primary controllers'
#   serials (options "group" and "members"); each member must be a configured peer, so the
#   freeze travels over authenticated links. Persisted with the pair states.
# - The controller whose device failed (the initiator) chooses T = now + freeze margin, arms
#   its own devices of the group at T, and sends PEER_FREEZE(group, T) to every sibling
#   primary at once. A sibling arms its devices of the group at T and answers once armed
#   (persisted), with the T it is armed at.
# - Concurrent freezes (a secondary that dies is found by every primary) agree on the earliest
#   T: a controller already armed at T' keeps min(T, T'), moving earlier only while the new T
#   is still in the future on its clock (no write stamped >= a future T has been issued yet),
#   and answers with what it keeps; an initiator told of an earlier T re-arms to it and sends
#   it to every sibling again. Proposals only decrease, so this ends.
# - The held devices are released (SUSPENDED_ERROR at T, their writes change-recorded) only
#   after T passed on the initiator's clock and every sibling confirmed it is armed at T: from
#   then on a write that depends on a held one is stamped after T and mirrored nowhere.
# - The seal at T is the one a prospective suspend uses (seal.py): writes stamped < T that
#   are in flight are drained; healthy devices become SUSPENDED at T, held ones
#   SUSPENDED_ERROR at T.
#
# What is guaranteed when a sibling cannot be reached within hold_s (written down, as IBM
# writes down its freeze's limits): with freeze_unreachable = "go" (the default) the held
# writes are released when the hold expires, the freeze is announced incomplete naming the
# siblings that did not confirm, and the group is NOT consistent if such a sibling is alive
# and still mirroring (a partition between primaries); with "stop" the held devices refuse
# host writes until an operator resumes or terminates them, so no dependent write exists
# anywhere, at the price of availability on those devices.
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from remcopy.errors import InputError, RemcopyError, SuspendTimeInPast, WriteProtected
from remcopy.events import EventKind
from remcopy.states import PairAction, PairRole, PairState
from remcopy.wire.native import PairOp, PairOpReply, PairOpRequest, PairResult

if TYPE_CHECKING:
    from remcopy.controller.core import Controller, PairInfo
    from remcopy.controller.runs import DeviceRun, Replica

log = logging.getLogger("remcopy.replication")

# A group name travels in options and is persisted: short and printable.
GROUP_NAME_MAX_CHARS: Final = 64
# A group's primary controllers (more would not fit one PEER_FREEZE round within a hold).
GROUP_MEMBERS_MAX: Final = 64
# The freeze margin is never below this many round trips to the slowest sibling.
MARGIN_ROUND_TRIPS_MIN: Final = 4
# Re-proposals of an earlier T before an initiator gives up agreeing (each only decreases T).
PROPOSALS_MAX: Final = 8
# Pause between two attempts to reach a sibling that did not answer (within the hold).
RETRY_S: Final = 0.05
# TESTING ONLY: how much later than told the planted bug freeze_late_sibling arms a sibling
# (and siblings_different_t one device of the group).
LATE_SIBLING_NS: Final = 2_000_000_000
# Pause between two rounds of asking the siblings at start (within link_start_grace_s).
REJOIN_RETRY_S: Final = 0.2


def membership(
    options: dict[str, Any], controller: Controller
) -> tuple[str, tuple[int, ...]] | None:
    """The group name and member serials an establish request carries, checked; None when it
    names no group. Every member but this controller must be a configured peer."""
    name = options.get("group")
    if name is None:
        return None
    if not isinstance(name, str) or not name or len(name) > GROUP_NAME_MAX_CHARS:
        raise InputError(
            f"establish: option group must be a name of 1 to {GROUP_NAME_MAX_CHARS} "
            f"characters (got {name!r})"
        )
    members = options.get("members", [controller.serial])
    if (
        not isinstance(members, list)
        or not members
        or len(members) > GROUP_MEMBERS_MAX
        or not all(isinstance(m, int) and not isinstance(m, bool) for m in members)
    ):
        raise InputError(
            f"establish: option members must be a list of 1 to {GROUP_MEMBERS_MAX} controller "
            f"serials (got {members!r})"
        )
    serials = {p.serial for p in controller.peers.values()}
    missing = sorted(m for m in set(members) if m != controller.serial and m not in serials)
    if missing:
        raise InputError(
            f"consistency group {name}: primary controller(s) "
            f"{', '.join(str(m) for m in missing)} not in controller {controller.name}'s "
            "[[peers]]: add each (name, serial, address, secret) so the group can freeze with "
            "only the controllers running"
        )
    return name, tuple(sorted(set(members) | {controller.serial}))


@dataclass(slots=True, kw_only=True)
class _Freeze:
    """One freeze this controller started, until its held devices are released."""

    group: str
    at_ns: int
    trigger: str
    started_ns: int
    confirmed: asyncio.Future[set[int]]
    """Siblings confirmed armed at at_ns (set when all did, or at the hold's end)."""
    unconfirmed: set[int] = field(default_factory=set)


class Freezer:
    """The controller-side freeze of one controller's replicator."""

    def __init__(self, rep: Replica) -> None:
        self.rep = rep
        self.controller = rep.controller
        section = rep.controller.config.controller
        self.margin_s = section.freeze_margin_s
        self.unreachable = section.freeze_unreachable
        self.freezes: dict[str, _Freeze] = {}
        self.arm_commit_ms: dict[int, float] = {}
        """How long arming each T took (the commit runs on the event loop: host I/O waits)."""
        self.seals: dict[int, asyncio.Future[dict[str, Any]]] = {}
        """The seal of each T armed here (a host suspend that joins a freeze waits on it)."""
        self.rejoined = asyncio.Event()
        """Set once every group here learned from its siblings whether it froze meanwhile."""
        for name in ("freezes_started", "freezes_joined", "freezes_incomplete"):
            self.controller.counters.setdefault(name, 0)

    def __repr__(self) -> str:
        return f"<Freezer {self.controller.name} freezes={sorted(self.freezes)}>"

    # Arming (both sides)...

    def group_runs(self, group: str) -> list[DeviceRun]:
        """This controller's primaries of `group` that still mirror (DUPLEX or PENDING)."""
        return [
            run
            for run in self.rep.runs.values()
            if run.device.pair.group == group
            and run.device.pair.consistency_group
            and run.device.pair.role is PairRole.PRIMARY
            and run.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
        ]

    def arm(self, group: str, at_ns: int, *, now_ns: int) -> int:
        """Arm the group's mirroring devices here at min(at_ns, the T they are armed at);
        returns the T kept (0: nothing here mirrors). A T that has passed is refused unless
        every device is already armed at an earlier T."""
        runs = self.group_runs(group)
        if not runs:
            return 0
        earliest = min(
            (r.device.pair.suspend_at_ns for r in runs if r.device.pair.suspend_at_ns), default=0
        )
        keep = min(at_ns, earliest) if earliest else at_ns
        if keep <= now_ns:
            if keep == earliest and all(r.device.pair.suspend_at_ns == keep for r in runs):
                return keep  # already armed (its seal is under way): nothing to move
            raise SuspendTimeInPast(
                f"freeze of group {group} at {keep}: that time has passed on controller "
                f"{self.controller.name} (now {now_ns}): the freeze margin is too small"
            )
        moving = [r for r in runs if r.device.pair.suspend_at_ns != keep]
        for run in runs:
            run.freeze_at_ns = keep  # a host suspend meeting these devices joins this T
        if moving and self.rep._planted("siblings_different_t"):
            # PLANTED BUG: one device of the group is sealed LATE_SIBLING_NS after its T.
            late, moving = moving[-1:], moving[:-1]
            self.controller.commit_armed({r.device.key: keep + LATE_SIBLING_NS for r in late})
            self.rep.arm(late, keep + LATE_SIBLING_NS)
        if moving:
            started_ns = time.perf_counter_ns()
            self.controller.commit_armed({r.device.key: keep for r in moving})
            self.arm_commit_ms[keep] = (time.perf_counter_ns() - started_ns) / 1e6
            self.seals[keep] = self.rep.arm(moving, keep)
            self.controller.emit(
                EventKind.ARMED,
                f"armed suspend at={keep} devices={len(moving)} group={group} cause=freeze",
                at_ns=keep,
                group=group,
                cause="freeze",
                detail={"devices": len(moving)},
            )
        return keep

    def peer_freeze(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        """A sibling primary froze the group: arm here at T (or an earlier T) and say which."""
        group = str(request.options.get("group", ""))
        members = self.controller.groups.get(group)
        if members is None:
            # No device of that group here (its establish did not reach this controller):
            # nothing here can mirror a write of it, so the freeze holds here trivially.
            log.warning("freeze of unknown group %r from controller %d", group, peer_serial)
            return PairOpReply(results=(), document={"at_ns": 0})
        if peer_serial not in members:
            raise WriteProtected(
                f"freeze of group {group!r} from controller {peer_serial} refused: it is not "
                f"a member of that group on controller {self.controller.name}"
            )
        if self.rep._planted("freeze_late_sibling"):
            # PLANTED BUG: armed later than told, and answered as if at T.
            self.arm(group, request.at_ns + LATE_SIBLING_NS, now_ns=time.time_ns())
            return PairOpReply(results=(), document={"at_ns": request.at_ns})
        kept = self.arm(group, request.at_ns, now_ns=time.time_ns())
        self.controller.counters["freezes_joined"] += 1
        devices = len(self.group_runs(group))
        self.controller.emit(
            EventKind.FREEZE,
            f"freeze group={group} at={kept or request.at_ns} from={peer_serial} devices={devices}",
            group=group,
            at_ns=kept or request.at_ns,
            detail={"phase": "joined", "from": peer_serial, "devices": devices},
        )
        return PairOpReply(results=_states(self.group_runs(group)), document={"at_ns": kept})

    # The initiator...

    def device_held(self, run: DeviceRun, cause: str) -> None:
        """A device of a consistency group failed and holds its writes: freeze its group,
        unless a freeze of that group is already under way here."""
        group = run.device.pair.group
        current = self.freezes.get(group)
        if current is not None and not current.confirmed.done():
            return  # that freeze armed this device too, or will move it with the group
        started_ns = time.time_ns()
        freeze = _Freeze(
            group=group,
            at_ns=0,
            trigger=str(run.device.address),
            started_ns=started_ns,
            confirmed=asyncio.get_running_loop().create_future(),
        )
        self.freezes[group] = freeze
        self.rep.spawn(self._freeze(freeze, cause), name=f"freeze {group}")

    async def _freeze(self, freeze: _Freeze, cause: str) -> None:
        group, trigger, started_ns = freeze.group, freeze.trigger, freeze.started_ns
        members = self.controller.groups.get(group, (self.controller.serial,))
        siblings = [m for m in members if m != self.controller.serial]
        if self.rep._planted("freeze_local_only"):  # PLANTED BUG: the siblings never hear of it
            siblings = []
        hold_deadline = asyncio.get_running_loop().time() + self.rep.hold_s
        at_ns = started_ns + int(self._margin_s(siblings) * 1e9)
        self.controller.counters["freezes_started"] += 1
        try:
            at_ns = self.arm(group, at_ns, now_ns=time.time_ns()) or at_ns
        except SuspendTimeInPast as exc:
            log.error("freeze of group %s: %s", group, exc)
        freeze.at_ns = at_ns
        self.controller.emit(
            EventKind.FREEZE,
            f"freeze group={group} at={at_ns} trigger={trigger} siblings={len(siblings)} "
            f'cause="{cause}"',
            group=group,
            at_ns=at_ns,
            device=trigger,
            cause=cause,
            detail={"phase": "started", "siblings": len(siblings)},
        )
        confirmed: dict[int, int] = {}
        proposals = 0
        try:
            async with asyncio.timeout_at(hold_deadline):
                while True:
                    # Ask the siblings not yet armed at this T (all, after a new T).
                    asking = [s for s in siblings if confirmed.get(s) not in (0, freeze.at_ns)]
                    if not asking:
                        break
                    answers = await asyncio.gather(
                        *(self._tell(s, group, freeze.at_ns) for s in asking)
                    )
                    confirmed.update((s, t) for s, t in zip(asking, answers, strict=True) if t >= 0)
                    earliest = min((t for t in confirmed.values() if t), default=freeze.at_ns)
                    if earliest < freeze.at_ns:  # another freeze chose an earlier T: join it
                        proposals += 1
                        if proposals > PROPOSALS_MAX:
                            break
                        freeze.at_ns = self.arm(group, earliest, now_ns=time.time_ns()) or earliest
                        continue
                    if any(t < 0 for t in answers):
                        # A sibling refused or did not answer: ask it again until the hold
                        # ends (its own link timeout paces the retries).
                        await asyncio.sleep(RETRY_S)
        except (TimeoutError, RemcopyError) as exc:
            log.warning("freeze of group %s: %s", group, exc or "hold expired")
        freeze.unconfirmed = {
            s for s in siblings if s not in confirmed or confirmed[s] not in (0, freeze.at_ns)
        }
        elapsed_ms = (time.time_ns() - started_ns) / 1e6
        if freeze.unconfirmed:
            self.controller.counters["freezes_incomplete"] += 1
            unconfirmed = ",".join(str(s) for s in sorted(freeze.unconfirmed))
            self.controller.emit(
                EventKind.FREEZE,
                f"freeze-incomplete group={group} at={freeze.at_ns} "
                f"unconfirmed={unconfirmed} "
                f"policy={self.unreachable}: the group may not be consistent",
                group=group,
                at_ns=freeze.at_ns,
                detail={
                    "phase": "incomplete",
                    "unconfirmed": unconfirmed,
                    "policy": self.unreachable,
                },
            )
        else:
            self.controller.emit(
                EventKind.FREEZE,
                f"freeze group={group} at={freeze.at_ns} confirmed={len(siblings)}/"
                f"{len(siblings)} ms={elapsed_ms:.1f}",
                group=group,
                at_ns=freeze.at_ns,
                detail={"phase": "confirmed", "siblings": len(siblings), "ms": elapsed_ms},
            )
        freeze.confirmed.set_result(set(confirmed))

    async def _tell(self, serial: int, group: str, at_ns: int) -> int:
        """PEER_FREEZE to one sibling; the T it is armed at, 0 if nothing there mirrors,
        -1 if it refused or could not be reached."""
        try:
            reply = await self.rep.link(serial).operate(
                PairOpRequest(op=PairOp.PEER_FREEZE, at_ns=at_ns, options={"group": group})
            )
        except RemcopyError as exc:
            log.warning("freeze of group %s: sibling %d: %s", group, serial, exc)
            return -1
        return int(reply.document.get("at_ns", -1))

    def _margin_s(self, siblings: list[int]) -> float:
        slowest_ns = max(
            (self.rep.links[s].heartbeat_rtt_ns for s in siblings if s in self.rep.links),
            default=0,
        )
        return max(self.margin_s, MARGIN_ROUND_TRIPS_MIN * slowest_ns / 1e9)

    # A primary that starts again: did its groups freeze while it was down?...

    def peer_group_query(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        """Answer a sibling that starts again: each device of the group here, its state and
        the T it is armed or suspended at."""
        group = str(request.options.get("group", ""))
        members = self.controller.groups.get(group)
        if members is None:
            return PairOpReply(results=(), document={"known": False})
        if peer_serial not in members:
            raise WriteProtected(
                f"query of group {group!r} from controller {peer_serial} refused: it is not "
                f"a member of that group on controller {self.controller.name}"
            )
        runs = [
            run
            for run in self.rep.runs.values()
            if run.device.pair.group == group and run.device.pair.role is PairRole.PRIMARY
        ]
        return PairOpReply(results=_states(runs), document={"known": True})

    def rejoin_all(self) -> None:
        """At start: hold the host writes of every consistency group's mirroring devices
        here (not armed) until the siblings said whether the group froze meanwhile."""
        groups: dict[str, list[DeviceRun]] = {}
        for name, members in self.controller.groups.items():
            if len(members) < 2:
                continue
            runs = [r for r in self.group_runs(name) if not r.device.pair.suspend_at_ns]
            if runs:
                groups[name] = runs
        if not groups:
            self.rejoined.set()
            return
        for runs in groups.values():
            for run in runs:
                run.held = asyncio.Event()
                run.held_since_ns = time.time_ns()
        self.rep.spawn(self._rejoin_all(groups), name="rejoin")

    async def _rejoin_all(self, groups: dict[str, list[DeviceRun]]) -> None:
        try:
            await asyncio.gather(*(self._rejoin(name, runs) for name, runs in groups.items()))
        finally:
            for runs in groups.values():
                _release(runs)
            self.rejoined.set()

    async def _rejoin(self, group: str, runs: list[DeviceRun]) -> None:
        members = self.controller.groups[group]
        siblings = [m for m in members if m != self.controller.serial]
        grace_s = self.controller.config.controller.link_start_grace_s
        self.controller.emit(
            EventKind.REJOIN,
            f"rejoin group={group} devices={len(runs)} siblings={len(siblings)}: host writes "
            "wait until the siblings say whether the group froze meanwhile",
            group=group,
            detail={"phase": "asking", "devices": len(runs), "siblings": len(siblings)},
        )
        answers: dict[int, PairOpReply] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                while len(answers) < len(siblings):
                    asking = [s for s in siblings if s not in answers]
                    replies = await asyncio.gather(*(self._ask(s, group) for s in asking))
                    answers.update((s, r) for s, r in zip(asking, replies, strict=True) if r)
                    if len(answers) < len(siblings):
                        await asyncio.sleep(REJOIN_RETRY_S)
        suspended = [
            r.at_ns
            for reply in answers.values()
            for r in reply.results
            if r.state in (PairState.SUSPENDED, PairState.SUSPENDED_ERROR) and r.at_ns
        ]
        if suspended:
            # The group froze (or was suspended) while this controller was down: nothing
            # was mirrored here since it stopped, which was before T, so these devices join
            # the cut at T, in error; host writes from now on are change-recorded.
            at_ns = min(suspended)
            self._fail_at(runs, at_ns, cause="rejoin-frozen")
            self.controller.emit(
                EventKind.REJOIN,
                f"rejoin group={group} frozen at={at_ns} by its siblings while this "
                f"controller was down: {len(runs)} devices SUSPENDED_ERROR at T",
                group=group,
                at_ns=at_ns,
                detail={"phase": "frozen", "devices": len(runs)},
            )
        elif len(answers) == len(siblings):
            self.controller.emit(
                EventKind.REJOIN,
                f"rejoin group={group}: the group mirrors: released",
                group=group,
                detail={"phase": "released"},
            )
        else:
            missing = ",".join(str(s) for s in siblings if s not in answers)
            if self.unreachable == "stop":
                self._fail_at(runs, 0, cause="rejoin-unconfirmed")
            self.controller.emit(
                EventKind.REJOIN,
                f"rejoin-incomplete group={group} unanswered={missing} "
                f"policy={self.unreachable}: "
                + (
                    "devices SUSPENDED_ERROR (nothing mirrored until resumed)"
                    if self.unreachable == "stop"
                    else "mirroring without knowing whether the group froze"
                ),
                group=group,
                detail={"phase": "incomplete", "unanswered": missing, "policy": self.unreachable},
            )

    async def _ask(self, serial: int, group: str) -> PairOpReply | None:
        try:
            return await self.rep.link(serial).operate(
                PairOpRequest(op=PairOp.PEER_GROUP_QUERY, options={"group": group})
            )
        except RemcopyError as exc:
            log.info("rejoin of group %s: sibling %d: %s", group, serial, exc)
            return None

    def _fail_at(self, runs: list[DeviceRun], at_ns: int, *, cause: str) -> None:
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for run in runs:
            if run.device.pair.state in (PairState.DUPLEX, PairState.PENDING):
                changes[run.device.key] = (PairAction.FAIL, _suspended_at(at_ns))
                if run.copier is not None:
                    run.copier.cancel()
        if changes:
            self.controller.commit_states(changes, cause=cause, at_ns=at_ns or time.time_ns())

    # A host suspend that meets a freeze...

    def join(self, runs: list[DeviceRun], at_ns: int, *, now_ns: int) -> None:
        """A host suspend at `at_ns` meets devices a freeze armed: an earlier, still future T
        moves their groups to it (the same rule as between freezes); a later one joins."""
        for group in {run.device.pair.group for run in runs}:
            armed = min(r.freeze_at_ns for r in runs if r.device.pair.group == group)
            if now_ns < at_ns < armed:
                self.arm(group, at_ns, now_ns=now_ns)

    def pending(self, group: str) -> asyncio.Future[set[int]] | None:
        """The confirmation of this group's freeze while it is still being agreed."""
        freeze = self.freezes.get(group)
        if freeze is None or freeze.confirmed.done():
            return None
        return freeze.confirmed

    def froze(self, run: DeviceRun) -> bool:
        """Whether a freeze armed this device at the T it is armed (or suspended) at."""
        return bool(run.freeze_at_ns) and run.freeze_at_ns == run.device.pair.suspend_at_ns

    async def sealed(self, at_ns: int) -> dict[str, Any]:
        """The seal record of a T a freeze armed here (waits for the seal when under way)."""
        seal = self.seals.get(at_ns)
        if seal is None:
            return {"at_ns": at_ns}
        document = dict(await asyncio.shield(seal))
        # The arm's commit holds no host write (Controller.commit_armed): reported apart.
        document["arm_commit_ms"] = round(self.arm_commit_ms.get(at_ns, 0.0), 3)
        return document

    # Releasing held devices...

    async def wait_confirmed(self, runs: list[DeviceRun]) -> set[int]:
        """Before held devices are released at a seal: wait (within the hold) until every
        sibling of their groups confirmed the freeze; returns the siblings that did not."""
        missing: set[int] = set()
        for group in {run.device.pair.group for run in runs}:
            freeze = self.freezes.get(group)
            if freeze is None:
                continue
            await asyncio.shield(freeze.confirmed)
            missing |= freeze.unconfirmed
            # The siblings are armed at the freeze's T: a write released before it passed
            # could be stamped below it and be mirrored there.
            wait_s = (freeze.at_ns - time.time_ns()) / 1e9
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        return missing

    def refuse_after_freeze(self, run: DeviceRun) -> bool:
        """Whether a held device whose freeze did not complete must refuse writes (stop)."""
        freeze = self.freezes.get(run.device.pair.group)
        return (
            self.unreachable == "stop"
            and freeze is not None
            and freeze.confirmed.done()
            and bool(freeze.unconfirmed)
        )


def _states(runs: list[DeviceRun]) -> tuple[PairResult, ...]:
    """Each device's state and the T it is armed or suspended at, for a sibling."""
    return tuple(
        PairResult(
            device=run.device.key,
            state=run.device.pair.state,
            role=run.device.pair.role,
            at_ns=run.device.pair.suspend_at_ns,
        )
        for run in runs
    )


def _release(runs: list[DeviceRun]) -> None:
    for run in runs:
        if run.held is not None:
            run.held.set()
            run.held = None


def _suspended_at(at_ns: int) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.suspend_at_ns = at_ns

    return update


__all__ = ["Freezer", "membership"]
