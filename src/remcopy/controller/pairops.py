# Pair operations: establish, suspend at T, resume, recover, failback, shadow, terminate —
# on the primary from hosts, and their counterparts on the secondary from the peer link.
#
# Why: each operation takes a batch of devices in one request and answers per device (a
# refused device never fails the others, and is left exactly as it was). The decisions about
# which state may do what come from states.py; this module sequences the two sides: ask the
# secondary first when it must agree (establish, resume), commit locally, start the copies.
#
# Rules this module keeps:
# - A device named twice in one request, unknown, not allowed, or armed for a pending suspend
#   is refused before anything changes.
# - The prospective suspend is refused whole if T has passed on this controller's clock.
# - The seal waits for every update stamped < T before committing SUSPENDED at T, and acts
#   only on devices still armed for that same T (a cancelled or re-armed device is skipped).
# - A scheduled suspend (T far ahead) is armed by SUSPEND with options["answer"] = "armed",
#   answered once persisted; SUSPEND_WAIT answers once T is sealed; SUSPEND_CANCEL disarms
#   before T (docs/replication.md section 8.1).
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from remcopy import ledger
from remcopy.controller.core import Device, HostGrant, PairInfo, StatePlan
from remcopy.controller.freeze import membership
from remcopy.errors import (
    BrokenResourceError,
    IllegalTransition,
    InputError,
    NotOffered,
    RemcopyError,
    WriteProtected,
)
from remcopy.events import EventKind, lss_list
from remcopy.states import (
    CopyMode,
    PairAction,
    PairRole,
    PairState,
)
from remcopy.wire import native
from remcopy.wire.native import PairItem, PairOp, PairOpReply, PairOpRequest, PairResult

if TYPE_CHECKING:
    from remcopy.controller.consistency import AsyncGroup, Consistency
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica

log = logging.getLogger("remcopy.replication")

Changes = dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]]

# Seal outcomes kept for SUSPEND_WAIT, per suspend time T: a host asks after T, so the
# figures of a finished seal must still be there; the oldest finished ones are dropped.
SEALS_KEPT_MAX: Final = 64
# PEER_STATE action from a primary that armed a suspend at T: plan the commit of SUSPENDED
# at T now (nothing changes); the "suspend" its seal sends at T then only makes it.
PREPARE_SUSPEND: Final = "prepare-suspend"


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


class PairOperations:
    """The pair operations of one controller's replicator."""

    def __init__(self, rep: Replica, freezer: Freezer, consistency: Consistency) -> None:
        self.rep = rep
        self.freezer = freezer
        self.consistency = consistency
        self._seals: dict[int, list[asyncio.Future[dict[str, Any]]]] = {}
        """Per suspend time T: the seal of each arm for T (its document once sealed)."""
        self._planned: dict[tuple[int, int], StatePlan] = {}
        """Secondary side, per (primary's serial, T): the commit of SUSPENDED at T that
        PREPARE_SUSPEND planned, made when that primary's seal tells the suspend."""

    # Pair operations from hosts (one request carries a batch of devices)...

    async def pair_op(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """Carry out a host's pair operation; answered once every state it changed (and any
        commit before) is durable, so an answer never tells of a state a crash could undo."""
        reply = await self._pair_op(grant, request)
        await self.rep.controller.settled()
        return reply

    async def _pair_op(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
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
        if op is PairOp.SUSPEND_WAIT:
            return await self._suspend_wait(grant, request)
        if op is PairOp.SUSPEND_CANCEL:
            return self._suspend_cancel(grant, request)
        if op is PairOp.GROUP_CUT:
            return PairOpReply(
                document=self.consistency.cut_document(str(request.options.get("group", "")))
            )
        raise InputError(f"pair operation {op.name} is for controllers, not hosts")

    def _devices(
        self, grant: HostGrant, request: PairOpRequest
    ) -> tuple[list[tuple[PairItem, DeviceRun]], list[PairResult]]:
        """Resolve the items; devices named twice, unknown or not allowed are refused here
        (what each may do is the ledger's to decide: `_decide`)."""
        good: list[tuple[PairItem, DeviceRun]] = []
        refused: list[PairResult] = []
        seen: set[int] = set()
        for item in request.items:
            try:
                if item.device in seen:
                    raise InputError(f"device {item.device:04X} is named twice in one request")
                seen.add(item.device)
                device = self.rep.controller.device_for_host(grant, item.device)
                run = self.rep.runs[device.key]
            except RemcopyError as exc:
                known = self.rep.controller.devices.get(item.device)
                refused.append(_refused(item.device, exc, known))
                continue
            good.append((item, run))
        return good, refused

    def _view(self, run: DeviceRun) -> ledger.PairView:
        """The ledger's view of a device's pair (and of its run: shadow copy, freeze, seal)."""
        pair = run.device.pair
        return ledger.PairView(
            device=run.device.label,
            state=pair.state,
            role=pair.role,
            armed_at_ns=pair.suspend_at_ns,
            group=pair.group,
            shadow_running=run.shadow_running,
            shadow_done=run.shadow_done,
            shadow_total=run.shadow_total,
            frozen=self.freezer.froze(run),
            sealing=bool(run.sealed_at_ns),
        )

    def _plan(
        self, grant: HostGrant, request: PairOpRequest, asked: ledger.OpRequest, now_ns: int = 0
    ) -> tuple[list[tuple[PairItem, DeviceRun]], list[PairResult], ledger.Plan]:
        """Resolve the items and plan `asked` for them (ledger.plan): the devices the plan
        accepts, every refusal (of resolution and of the plan) and the plan."""
        good, results = self._devices(grant, request)
        made = ledger.plan({run.device.key: self._view(run) for _item, run in good}, asked, now_ns)
        accepted: list[tuple[PairItem, DeviceRun]] = []
        for item, run in good:
            refusal = made.decisions[run.device.key].refusal
            if refusal is not None:
                results.append(_refused(item.device, refusal, run.device))
            else:
                accepted.append((item, run))
        return accepted, results, made

    def _decide(
        self, run: DeviceRun, request: ledger.OpRequest, now_ns: int = 0
    ) -> ledger.Decision:
        """The ledger's decision for one device; its refusal is raised."""
        decision = ledger.decide(self._view(run), request, now_ns, key=run.device.key)
        if decision.refusal is not None:
            raise decision.refusal
        return decision

    async def _establish(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        # A consistency group's name and primary controllers (for the freeze), checked first:
        # a bad membership refuses the whole request and changes nothing.
        group = membership(request.options, self.rep.controller)
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.ESTABLISH))
        by_peer: dict[int, list[tuple[PairItem, DeviceRun]]] = {}
        secondaries: set[tuple[int, int]] = set()
        for item, run in good:
            try:
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
                if item.peer_serial == self.rep.controller.serial:
                    raise InputError(
                        f"establish {run.device.address}: primary and secondary "
                        "are on the same controller"
                    )
                self.rep.link(item.peer_serial)
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            by_peer.setdefault(item.peer_serial, []).append((item, run))
        named = request.options.get("secondaries")
        for serial, items in by_peer.items():
            results.extend(await self._establish_on(serial, items, group, named))
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _establish_on(
        self,
        serial: int,
        items: list[tuple[PairItem, DeviceRun]],
        group: tuple[str, tuple[int, ...]] | None,
        secondaries: object = None,
    ) -> list[PairResult]:
        link = self.rep.link(serial)
        options: dict[str, Any] = {}
        if group is not None and any(
            item.consistency_group and item.mode is CopyMode.ASYNC for item, _ in items
        ):
            # The secondaries of an async group keep its consistency time together.
            options = {"group": group[0], "secondaries": secondaries or [serial]}
        peer_items = tuple(
            PairItem(
                device=item.peer_device,
                peer_serial=self.rep.controller.serial,
                peer_device=run.device.key,
                mode=item.mode,
                fence=item.fence,
                consistency_group=item.consistency_group,
                size_bytes=run.device.volume.capacity_bytes,
            )
            for item, run in items
        )
        try:
            reply = await link.operate(
                PairOpRequest(op=PairOp.PEER_ESTABLISH, items=peer_items, options=options)
            )
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
            accepted[run.device.key] = (
                PairAction.ESTABLISH,
                _as_primary(item, group[0] if group and item.consistency_group else ""),
            )
        if accepted:
            await self.rep.controller.commit(
                accepted,
                cause="establish",
                groups={group[0]: group[1]} if group else None,
            )
        for _item, run in items:
            if run.device.key in accepted:
                run.changemap.mark_all()
                results.append(_ok(run.device, tracks=run.device.volume.tracks))
                self.rep.start_copier(run)
        return results

    async def _suspend(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        at_ns = request.at_ns
        now = time.time_ns()
        # A T already past here refuses the whole request (raised by the plan).
        asked = ledger.OpRequest(
            op=ledger.Op.SUSPEND, at_ns=at_ns, controller=self.rep.controller.name
        )
        good, results, made = self._plan(grant, request, asked, now)
        # Devices a controller freeze armed (or sealed) join it: the whole request is then
        # suspended at the freeze's T when that is still ahead (a freeze's T is earlier).
        joined = [run for _item, run in good if made.decisions[run.device.key].joined]
        self.freezer.join(joined, at_ns, now_ns=now)
        freeze_at_ns = min((run.freeze_at_ns for run in joined), default=0)
        if freeze_at_ns and now < freeze_at_ns < at_ns:
            at_ns = freeze_at_ns
        armed = [run for _item, run in good if not made.decisions[run.device.key].joined]
        document: dict[str, Any] = {}
        arm_ms = 0.0
        if armed:
            # Arm: persisted, so a restart before T still suspends at T.
            arm_started_ns = time.perf_counter_ns()
            pending = self.rep.controller.commit_armed({r.device.key: at_ns for r in armed})
            if pending is not None:
                await pending  # host writes go on meanwhile
            # The seal's commit, computed now, in a loop step of its own: at T only the
            # commit is left to do (the seal makes it only if no device changed since).
            prepared: StatePlan | None = None
            with contextlib.suppress(IllegalTransition):  # one changed since: computed at T
                prepared = self.rep.controller.plan_states(
                    {r.device.key: (PairAction.SUSPEND, None) for r in armed},
                    cause="suspend",
                    at_ns=at_ns,
                )
            arm_ms = (time.perf_counter_ns() - arm_started_ns) / 1e6
            self.rep.controller.emit(
                EventKind.ARMED,
                f"armed suspend at={at_ns} devices={len(armed)}",
                at_ns=at_ns,
                cause="suspend",
                detail={"devices": len(armed), "lss": lss_list(r.device.key >> 8 for r in armed)},
            )
            self.rep.spawn(self._prepare_peers(armed, at_ns), name=f"prepare {at_ns}")
            sealed = self._arm_timer(armed, at_ns, prepared)
        if (armed or joined) and request.options.get("answer") == "armed":
            # A scheduled suspend: answered now, bounded by the host's request timeout; the
            # host waits for T itself and then asks with SUSPEND_WAIT.
            results.extend(_ok(run.device, at_ns=at_ns) for run in armed)
            results.extend(_ok(run.device, at_ns=run.freeze_at_ns) for run in joined)
            return PairOpReply(
                results=tuple(sorted(results, key=lambda r: r.device)),
                document={
                    "at_ns": at_ns,
                    "armed": len(armed) + len(joined),
                    "arm_commit_ms": round(arm_ms, 3),
                },
            )
        if armed:
            document = dict(await sealed)
            # Off the event loop, and host writes need not wait for it (commit_armed): no
            # part of host_io_held_ms.
            document["arm_commit_ms"] = round(arm_ms, 3)
        if joined:
            # Wait for the freeze's seal; another freeze may still move it earlier.
            for _ in range(len(joined) + 1):
                waiting = [
                    r
                    for r in joined
                    if r.device.pair.state in (PairState.DUPLEX, PairState.PENDING)
                ]
                if not waiting:
                    break
                freeze_at_ns = min(r.freeze_at_ns for r in waiting)
                await self.freezer.sealed(freeze_at_ns)
            freeze_at_ns = min(r.freeze_at_ns for r in joined)
            document = {
                **await self.freezer.sealed(freeze_at_ns),
                **document,
                "freeze_at_ns": freeze_at_ns,
            }
        elif not armed:
            return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))
        results.extend(self._sealed_results(armed, at_ns))
        for run in joined:
            results.extend(self._sealed_results([run], run.freeze_at_ns))
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)), document=document
        )

    def _sealed_results(self, runs: list[DeviceRun], at_ns: int) -> list[PairResult]:
        """Each device's answer once the seal of T is done (SUSPEND, SUSPEND_WAIT)."""
        results = []
        for run in runs:
            pair = run.device.pair
            if run.frozen_at_ns == at_ns and pair.state is PairState.SUSPENDED_ERROR:
                results.append(
                    PairResult(
                        device=run.device.key,
                        state=pair.state,
                        role=pair.role,
                        at_ns=at_ns,
                        message="frozen: its replication failed before T; host writes were held "
                        "until this freeze, so nothing that depends on them was mirrored",
                    )
                )
            elif pair.state is PairState.SUSPENDED and pair.suspend_at_ns == at_ns:
                # tracks > 0: the copy had not finished, so this secondary is not consistent.
                left = run.changemap.count() if run.copy_unfinished else 0
                results.append(_ok(run.device, at_ns=at_ns, tracks=left))
            else:
                why = (
                    "its suspend at T was cancelled"
                    if pair.state in (PairState.DUPLEX, PairState.PENDING)
                    and pair.suspend_at_ns != at_ns
                    else f"it is {pair.state.name}"
                )
                results.append(
                    PairResult(
                        device=run.device.key,
                        code=IllegalTransition.code,
                        state=pair.state,
                        role=pair.role,
                        message=f"{run.device.address} did not suspend at T: {why}",
                    )
                )
        return results

    def _arm_timer(
        self, runs: list[DeviceRun], at_ns: int, prepared: StatePlan | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._seal_registered(at_ns, done)
        delay_s = max(0.0, (at_ns - time.time_ns()) / 1e9)

        def fire() -> None:
            # Event-loop timers may fire a little early (uvloop rounds to milliseconds):
            # never seal before T on this controller's clock.
            early_s = (at_ns - time.time_ns()) / 1e9
            if early_s > 0:
                self.rep.timers.append(loop.call_later(early_s, fire))
                return
            self.rep.spawn(self._seal(runs, at_ns, done, prepared), name=f"seal {at_ns}")

        self.rep.timers.append(loop.call_later(delay_s, fire))
        return done

    async def _seal(
        self,
        runs: list[DeviceRun],
        at_ns: int,
        done: asyncio.Future[dict[str, Any]],
        prepared: StatePlan | None = None,
    ) -> None:
        """At T: refuse late writes, wait for updates stamped < T, then commit SUSPENDED.
        Only devices still armed for this T: one cancelled or re-armed since is skipped.
        `prepared`: the commit planned when armed, made as it is when it is the same
        devices and none changed since (else the commit is computed now)."""
        still_armed = [run for run in runs if run.device.pair.suspend_at_ns == at_ns]
        if not still_armed:
            self.rep.controller.emit(
                EventKind.DISARMED,
                f"suspend at={at_ns} skipped: disarmed on all {len(runs)} devices",
                at_ns=at_ns,
                cause="skipped",
                detail={"devices": len(runs), "lss": lss_list(r.device.key >> 8 for r in runs)},
            )
            if not done.done():
                done.set_result({"at_ns": at_ns, "disarmed": len(runs)})
            return
        runs = still_armed
        for serial in {run.device.pair.peer_serial for run in runs}:
            await self.rep.link(serial).replayed.wait()
        sealed_ns = time.time_ns()
        late_before = self.rep.counters["late_writes"]
        for run in runs:
            run.sealed_at_ns = sealed_ns
        pending = [f for run in runs for f in run.in_flight]
        # PLANTED BUG when set: not drained, and reported done before the secondaries are told.
        undrained = self.rep._planted("seal_without_drain")
        if pending and not undrained:
            await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)
        drained_ns = time.time_ns()
        by_peer: dict[int, list[DeviceRun]] = {}
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        frozen: list[DeviceRun] = []
        held_ns = 0
        for run in runs:
            run.sealed_at_ns = 0
            if run.held is not None:
                held_ns = max(held_ns, time.time_ns() - run.held_since_ns)
                # Its replication failed before T and its host writes were held since: its
                # secondary stopped at the failure, before anything that depends on it. The
                # freeze ends the hold with SUSPENDED_ERROR (the held writes are recorded).
                frozen.append(run)
                run.frozen_at_ns = at_ns
                continue
            if run.device.pair.state in (PairState.DUPLEX, PairState.PENDING):
                if run.copier is not None:
                    run.copier.cancel()
                run.copy_unfinished = run.device.pair.state is PairState.PENDING
                changes[run.device.key] = (PairAction.SUSPEND, None)
                by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        commit_started_ns = time.perf_counter_ns()
        controller = self.rep.controller
        if changes:
            # Host writes to these devices go on meanwhile: armed at T and SUSPENDED at T
            # treat a write alike (recorded if stamped >= T, refused as late before T).
            if (
                prepared is not None
                and prepared.basis.keys() == changes.keys()
                and prepared.holds(controller.devices)
            ):
                made = controller.apply_plan(prepared, hold_writes=False)
                self._as_planned()
                if made is not None:
                    await made
            else:
                await controller.commit(changes, cause="suspend", at_ns=at_ns, hold_writes=False)
        commit_ns = time.perf_counter_ns() - commit_started_ns
        if frozen:
            # Released only once every sibling primary is armed at T (or the hold ended):
            # from then on a write that depends on a held one is mirrored nowhere.
            held_since_ns = min(run.held_since_ns for run in frozen)
            await self.freezer.wait_confirmed(frozen)
            commit_started_ns = time.perf_counter_ns()
            self.rep.to_error_all(frozen, at_ns=at_ns)
            await self.rep.controller.settled()  # their released writes wait for this commit
            commit_ns += time.perf_counter_ns() - commit_started_ns
            held_ns = max(held_ns, time.time_ns() - held_since_ns)
        commit_ms = commit_ns / 1e6
        if undrained and not done.done():
            done.set_result({"at_ns": at_ns, "sealed_ns": sealed_ns})  # PLANTED BUG
        for serial, peer_runs in by_peer.items():
            # A freeze (a replication error somewhere in the group): an async group's
            # secondaries must not write what waits past their consistency time C, since a
            # failed link's updates stamped before T may never arrive.
            froze = any(self.freezer.froze(run) for run in peer_runs)
            await self._tell_peer(
                serial,
                peer_runs,
                "suspend",
                at_ns=at_ns,
                options={"freeze": True} if froze else None,
            )
        if not done.done():
            done.set_result(
                {
                    "at_ns": at_ns,
                    "sealed_ns": sealed_ns,
                    "drained_ns": drained_ns,
                    "late_writes": self.rep.counters["late_writes"] - late_before,
                    "in_flight_at_seal": len(pending),
                    "frozen_in_error": len(frozen),
                    "seal_commit_ms": round(commit_ms, 3),
                    # How long host writes could not complete as issued because of this
                    # suspend: from the seal until the updates stamped < T were confirmed, a
                    # write stamped < T is refused (the host reissues it), or a frozen device
                    # held its writes from its replication error until this freeze's commit
                    # of SUSPENDED_ERROR was durable, whichever is longer. The seal's commit
                    # and the arm's run off the event loop and hold no host write
                    # (docs/replication.md 4.5), so they are not part of it.
                    "host_io_held_ms": round(max(drained_ns - sealed_ns, held_ns) / 1e6, 3),
                }
            )

    async def _prepare_peers(self, runs: list[DeviceRun], at_ns: int) -> None:
        """Ask the secondaries to plan their commit of SUSPENDED at T now, during the
        margin (nothing changes there until the seal tells the suspend): then at T each only
        makes it. One that did not (a link down, an older controller) computes it at T."""
        by_peer: dict[int, list[DeviceRun]] = {}
        for run in runs:
            by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, peer_runs in by_peer.items():
            await self._tell_peer(serial, peer_runs, PREPARE_SUSPEND, at_ns=at_ns)

    async def _tell_peer(
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
            reply = await self.rep.link(serial).operate(
                PairOpRequest(op=PairOp.PEER_STATE, at_ns=at_ns, items=items, options=sent)
            )
        except RemcopyError as exc:
            log.warning("could not tell peer %s to %s: %s", serial, action, exc)
            return [_refused(r.device.pair.peer_device, exc) for r in runs]
        return list(reply.results)

    # Scheduled suspends: wait for the seal of an armed T, or cancel it before T...

    def _seal_registered(self, at_ns: int, done: asyncio.Future[dict[str, Any]]) -> None:
        """Keep an arm's seal for SUSPEND_WAIT; drop the oldest finished seals over the cap."""
        self._seals.setdefault(at_ns, []).append(done)
        while len(self._seals) > SEALS_KEPT_MAX:
            oldest = min(self._seals)
            if not all(f.done() for f in self._seals[oldest]):
                break
            del self._seals[oldest]

    async def _suspend_wait(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """Answer once the suspend armed for T on these devices is sealed: per device as
        SUSPEND answers, and the seal's figures. A device not armed for T answers at once."""
        at_ns = request.at_ns
        if at_ns <= 0:
            raise InputError("suspend wait: at_ns must be the suspend time T that was armed")
        good, results = self._devices(grant, request)
        runs = [run for _item, run in good]
        seals = self._seals.get(at_ns, [])
        if any(ledger.armed_for(self._view(run), at_ns) for run in runs) or not all(
            f.done() for f in seals
        ):
            # Sealed at T on this controller's clock, and told to the secondaries (a seal
            # commits SUSPENDED before it is done); the host's timeout bounds the wait.
            await asyncio.gather(*(asyncio.shield(f) for f in seals))
        results.extend(self._sealed_results(runs, at_ns))
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)),
            document=_merged_seal([f.result() for f in seals if f.done()]),
        )

    def _suspend_cancel(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """Disarm the suspend armed on these devices before its T: the persisted T is
        cleared and the seal at T skips them."""
        now = time.time_ns()
        asked = ledger.OpRequest(
            op=ledger.Op.SUSPEND_CANCEL, at_ns=request.at_ns, controller=self.rep.controller.name
        )
        _good, results, made = self._plan(grant, request, asked, now)
        # device -> the T it was armed for
        disarmed = {e.key: e.at_ns for e in made.events if e.kind == "disarmed"}
        if disarmed:
            self.rep.controller.commit_armed(dict.fromkeys(disarmed, 0))
            for at_ns in sorted(set(disarmed.values())):
                keys = [key for key, t in disarmed.items() if t == at_ns]
                self.rep.controller.emit(
                    EventKind.DISARMED,
                    f"disarmed suspend at={at_ns} devices={len(keys)}",
                    at_ns=at_ns,
                    cause="cancel",
                    detail={"devices": len(keys), "lss": lss_list(key >> 8 for key in keys)},
                )
        by_peer: dict[int, list[DeviceRun]] = {}
        for key, at_ns in disarmed.items():
            run = self.rep.runs[key]
            results.append(_ok(run.device, at_ns=at_ns))
            # Writes stamped >= T (a host clock ahead of ours) were change-recorded while
            # armed: a DUPLEX pair must copy them, or its secondary would lack them.
            if run.device.pair.state is PairState.DUPLEX and run.changemap.copy_count():
                by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            self.rep.spawn(self._resync_disarmed(serial, runs), name=f"resync disarmed {serial}")
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)),
            document={"disarmed": len(disarmed)},
        )

    async def _resync_disarmed(self, serial: int, runs: list[DeviceRun]) -> None:
        """Copy the tracks recorded while armed: SUSPENDED_ERROR, the secondary follows a
        resume, PENDING until the copy is done, then DUPLEX."""
        runs = [r for r in runs if r.device.pair.state is PairState.DUPLEX]
        self.rep.to_error_all(runs)
        answers = {r.device: r for r in await self._tell_peer(serial, runs, "resume")}
        changes: Changes = {}
        for run in runs:
            answer = answers.get(run.device.pair.peer_device)
            if answer is not None and answer.code == 0:
                changes[run.device.key] = (PairAction.RESUME, None)
        if changes:
            await self.rep.controller.commit(changes, cause="resync-after-cancel")
        for run in runs:
            if run.device.key in changes:
                self.rep.start_copier(run)

    async def _resume(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.RESUME))
        by_peer: dict[int, list[DeviceRun]] = {}
        for _item, run in good:
            by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            # Nothing to copy: the secondary goes straight to DUPLEX and so does the primary,
            # one commit on each side instead of two. Host writes to these devices wait for
            # the primary's commit (a write recorded meanwhile would need a copy).
            empty = {r.device.key for r in runs if r.changemap.count() == 0}
            gate = self.rep.controller.hold_writes(empty)
            try:
                answers = {
                    r.device: r
                    for r in await self._tell_peer(
                        serial,
                        runs,
                        "resume",
                        empty=[r.device.pair.peer_device for r in runs if r.device.key in empty],
                    )
                }
                changes, copies = self._resumed(runs, answers, empty, results)
                if changes:
                    controller = self.rep.controller
                    controller.commit_states(changes, cause="resume")
                    done: Changes = {
                        k: (PairAction.COPY_DONE, None) for k in changes if k not in copies
                    }
                    # Submitted at once: both go to disk in one transaction (group commit).
                    if done:
                        controller.commit_states(done, cause="copy-done")
                    await controller.settled()
            finally:
                self.rep.controller.release_writes(empty, gate)
            for run in runs:
                if run.device.key in changes:
                    results.append(_ok(run.device, tracks=run.changemap.count()))
                    if run.device.key in copies:
                        self.rep.start_copier(run)
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    def _resumed(
        self,
        runs: list[DeviceRun],
        answers: dict[int, PairResult],
        empty: set[int],
        results: list[PairResult],
    ) -> tuple[Changes, set[int]]:
        """What the primary commits once its secondary answered a resume (RESUME), and which
        of them copy: not those the secondary took straight to DUPLEX, still with nothing to
        copy here (they commit COPY_DONE too)."""
        changes: Changes = {}
        copies: set[int] = set()
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
                        message=f"cannot resume {run.device.address}: secondary refused: {reason}",
                    )
                )
                continue
            changes[run.device.key] = (PairAction.RESUME, _clear_armed)
            if not (
                run.device.key in empty
                and answer.state is PairState.DUPLEX
                and run.changemap.count() == 0
            ):
                copies.add(run.device.key)
        return changes, copies

    def _recover(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.RECOVER))
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for _item, run in good:
            changes[run.device.key] = (PairAction.RECOVER, None)
        document: dict[str, Any] = {}
        if changes:
            runs = [self.rep.runs[key] for key in changes]
            for run in runs:
                run.changemap.clear_all()
            # An async consistency group: exactly up to the C the group agreed on (at_ns; 0:
            # this controller's own C); the later updates' tracks are set in the (cleared)
            # maps, so a failback copies them back.
            dropped = self.consistency.recover_to(runs, request.at_ns)
            if request.at_ns or dropped:
                document = {
                    "consistency_ns": request.at_ns,
                    "dropped": sum(dropped.values()),
                    "applied_ns": max(
                        (self.consistency.consistency_ns(r) for r in runs), default=0
                    ),
                }
            self.rep.controller.commit_states(changes, cause="recover")
        results.extend(_ok(self.rep.runs[key].device, at_ns=request.at_ns) for key in changes)
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)), document=document
        )

    async def _failback(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """On the recovered secondary: reverse the pairs, copy tracks changed on either side.
        Two requests per old primary controller, whatever the number of pairs."""
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.FAILBACK))
        by_peer: dict[int, list[DeviceRun]] = {}
        for item, run in good:
            try:
                self.rep.link(run.device.pair.peer_serial)
            except RemcopyError as exc:
                results.append(_refused(item.device, exc, run.device))
                continue
            by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            results.extend(await self._failback_on(serial, runs))
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _failback_on(self, serial: int, runs: list[DeviceRun]) -> list[PairResult]:
        link = self.rep.link(serial)
        results: list[PairResult] = []
        try:
            bits = await link.operate(
                PairOpRequest(
                    op=PairOp.PEER_CHANGEMAP,
                    items=tuple(PairItem(device=r.device.pair.peer_device) for r in runs),
                )
            )
        except RemcopyError as exc:
            return [_refused(r.device.key, exc, r.device) for r in runs]
        # The old primary's maps come back concatenated, each result saying its length.
        merged: list[DeviceRun] = []
        at = 0
        for run, answer in zip(runs, bits.results, strict=False):
            size = answer.tracks if answer.code == 0 else 0
            chunk = bits.data[at : at + size]
            at += size
            if answer.code:
                results.append(
                    _refused(
                        run.device.key,
                        BrokenResourceError(f"old primary refused: {answer.message}"),
                        run.device,
                    )
                )
                continue
            run.changemap.merge(chunk)
            merged.append(run)
        if not merged:
            return results
        try:
            reverse = await link.operate(
                PairOpRequest(
                    op=PairOp.PEER_FAILBACK,
                    items=tuple(
                        PairItem(
                            device=r.device.pair.peer_device,
                            peer_serial=self.rep.controller.serial,
                            peer_device=r.device.key,
                            size_bytes=r.device.volume.capacity_bytes,
                        )
                        for r in merged
                    ),
                )
            )
        except RemcopyError as exc:
            return results + [_refused(r.device.key, exc, r.device) for r in merged]
        by_device = {r.device: r for r in reverse.results}
        changes: Changes = {}
        for run in merged:
            reply = by_device.get(run.device.pair.peer_device)
            if reply is None or reply.code:
                results.append(
                    _refused(
                        run.device.key,
                        BrokenResourceError(
                            "old primary refused to become the secondary: "
                            f"{reply.message if reply else 'no answer'}"
                        ),
                        run.device,
                    )
                )
                continue
            changes[run.device.key] = (PairAction.FAILBACK, _swap_to_primary)
        if changes:
            await self.rep.controller.commit(changes, cause="failback")
        for run in merged:
            if run.device.key in changes:
                results.append(_ok(run.device, tracks=run.changemap.count()))
                self.rep.start_copier(run)
        return results

    async def _terminate(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.TERMINATE))
        by_peer: dict[int, list[DeviceRun]] = {}
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for _item, run in good:
            changes[run.device.key] = (PairAction.TERMINATE, _to_simplex)
            if run.device.pair.role is PairRole.PRIMARY:
                by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            await self._tell_peer(serial, runs, "terminate")
        for key in changes:
            run = self.rep.runs[key]
            if run.copier is not None:
                run.copier.cancel()
            run.changemap.clear_all()
        if changes:
            await self.rep.controller.commit(changes, cause="terminate")
        results.extend(_ok(self.rep.runs[key].device) for key in changes)
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    def _shadow(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """On the secondary's controller: copy a SUSPENDED secondary onto a tertiary volume."""
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.SHADOW))
        for item, run in good:
            try:
                target = self.rep.controller.device_for_host(grant, item.peer_device)
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
            self.rep.spawn(self._shadow_copy(run, target), name=f"shadow {run.device.address}")
            results.append(_ok(run.device, tracks=run.shadow_total))
        return PairOpReply(results=tuple(sorted(results, key=lambda r: r.device)))

    async def _shadow_copy(self, run: DeviceRun, target: Device) -> None:
        source = run.device.volume
        self.rep.controller.emit(
            EventKind.SHADOW,
            f"shadow {run.device.address} -> {target.address} started tracks={source.tracks}",
            device=str(run.device.address),
            detail={"phase": "started", "target": str(target.address), "tracks": source.tracks},
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
        self.rep.controller.emit(
            EventKind.SHADOW,
            f"shadow {run.device.address} -> {target.address} done tracks={source.tracks}",
            device=str(run.device.address),
            detail={"phase": "done", "target": str(target.address), "tracks": source.tracks},
        )

    # The secondary side: peer operations and updates...

    def apply_updates(
        self, peer_serial: int, batch: native.UpdateBatch
    ) -> tuple[native.UpdateAck, asyncio.Future[None] | None]:
        """Write a batch of updates to secondary volumes, all checked before any is written.
        Returns the acknowledgement and, when updates went to a secondary journal (async
        consistency groups), the future to await before sending it: their fdatasync."""
        targets = []
        for update in batch.updates:
            device = self.rep.controller.device(update.device)
            pair = device.pair
            if pair.peer_serial != peer_serial:
                raise WriteProtected(
                    f"update for {device.address} refused: its primary is controller "
                    f"{pair.peer_serial}, not {peer_serial}"
                )
            if pair.role is not PairRole.SECONDARY or pair.state not in (
                PairState.PENDING,
                PairState.DUPLEX,
            ):
                raise WriteProtected(
                    f"update for {device.address} refused: it is {pair.state.name} "
                    f"({pair.role.value}): only a PENDING or DUPLEX secondary takes updates"
                )
            device.volume.check_range("update", update.offset, native.update_length(update))
            targets.append(device)
        consistency = self.consistency
        waited = 0
        journaled: list[AsyncGroup] = []
        for device, update in zip(targets, batch.updates, strict=True):
            group = consistency.group_of(device)
            if group is not None:
                consistency.arrived(group, peer_serial, update)  # waits for C
                waited += 1
                if group not in journaled:
                    journaled.append(group)
                continue
            if update.flags & native.UPDATE_ZERO:
                device.volume.zero(update.offset, native.update_length(update))
            else:
                device.volume.pwrite(update.offset, update.data)
        durable = consistency.durable(journaled)  # before the watermark below: it waits too
        rep = self.rep
        rep.applied_updates[peer_serial] = rep.applied_updates.get(peer_serial, 0) + len(
            batch.updates
        )
        rep.applied_bytes[peer_serial] = rep.applied_bytes.get(peer_serial, 0) + sum(
            len(u.data) for u in batch.updates
        )
        if batch.updates:
            # Stamps rise along a link: the last one, now here, is a watermark of its own.
            consistency.watermark(peer_serial, batch.updates[-1].timestamp_ns + 1)
        # Those that wait for C count as applied when they are written (consistency.py).
        self.rep.counters["updates_applied"] += len(batch.updates) - waited
        return native.UpdateAck(applied=len(batch.updates)), durable

    def peer_op(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        if request.op is PairOp.PEER_FREEZE:
            return self.freezer.peer_freeze(peer_serial, request)
        if request.op is PairOp.PEER_GROUP_QUERY:
            return self.freezer.peer_group_query(peer_serial, request)
        if request.op is PairOp.PEER_WATERMARK:
            return self.consistency.peer_watermark(peer_serial, request)
        if request.op is PairOp.PEER_STATE:
            action = request.options.get("action")
            if action == PREPARE_SUSPEND:
                return self._prepare_suspend(peer_serial, request)
            if action == "suspend":
                made = self._planned_suspend(peer_serial, request)
                if made is not None:
                    return made
        group = str(request.options.get("group", ""))
        if request.op is PairOp.PEER_ESTABLISH and group:
            self.consistency.join(group, request.options)  # checked: refuses them all
        # Per item: its refusal, or the device, answered with its state once committed.
        results: list[PairResult | Device] = []
        chunks: list[bytes] = []  # PEER_CHANGEMAP: each device's bitmap, in item order
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        # Following the primary may take two steps (DUPLEX -fail-> -resume->): every device's
        # first step is committed together, then every second step: one write each, however
        # many devices (a group of thousands must not cost thousands of fsyncs).
        phases: list[dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]]] = []
        cause = "failback" if request.op is PairOp.PEER_FAILBACK else request.op.name.lower()
        cleared: list[DeviceRun] = []  # PEER_FAILBACK: change maps to clear after the commits
        empty = {int(key) for key in request.options.get("empty", ())}
        following = ledger.OpRequest(
            op=ledger.Op.FOLLOW,
            at_ns=request.at_ns,
            action=str(request.options.get("action", "")),
            empty=frozenset(empty),
        )
        seen: set[int] = set()
        for item in request.items:
            try:
                if item.device in seen:
                    raise InputError(f"device {item.device:04X} is named twice in one request")
                seen.add(item.device)
                if request.op is PairOp.PEER_ESTABLISH:
                    device = self.rep.controller.check_offered(peer_serial, item.device)
                else:
                    device = self.rep.controller.device(item.device)
                run = self.rep.runs[device.key]
                if request.op is PairOp.PEER_ESTABLISH:
                    self._decide(run, ledger.OpRequest(op=ledger.Op.PEER_ESTABLISH))
                    if device.volume.capacity_bytes < item.size_bytes:
                        raise InputError(
                            f"{device.address} holds {device.volume.capacity_bytes} bytes: the "
                            f"primary has {item.size_bytes}: the secondary must be as large"
                        )
                    changes[device.key] = (
                        PairAction.ESTABLISH,
                        _as_secondary(item, group if item.consistency_group else ""),
                    )
                elif device.pair.peer_serial != peer_serial:
                    raise NotOffered(
                        f"{device.address}: controller {peer_serial} is not the other side "
                        "of a pair of this device"
                    )
                elif request.op is PairOp.PEER_STATE:
                    asked = following
                    if (
                        asked.action == "resume"
                        and run.shadow_running
                        and self.rep._planted("resume_ignores_shadow")  # PLANTED BUG if set
                    ):
                        asked = dataclasses.replace(asked, shadow_gate=False)
                    decision = self._decide(run, asked)
                    for phase, step in enumerate(decision.steps):
                        update = _follow_update(step, request.at_ns)
                        while len(phases) <= phase:
                            phases.append({})
                        phases[phase][device.key] = (step, update)
                elif request.op is PairOp.PEER_CHANGEMAP:
                    bitmap = run.changemap.to_bytes()
                    if self.rep._planted("failback_one_side"):  # PLANTED BUG: this side's
                        bitmap = bytes(len(bitmap))  # changes are not copied back
                    chunks.append(bitmap)
                    results.append(_ok(device, tracks=len(bitmap)))
                    continue
                elif request.op is PairOp.PEER_FAILBACK:
                    # Become the secondary: the same phased commits as PEER_STATE (one durable
                    # write per step for all devices); the map is cleared once they are made.
                    decision = self._decide(run, ledger.OpRequest(op=ledger.Op.PEER_FAILBACK))
                    for phase, step in enumerate(decision.steps):
                        swap = _swap_to_secondary(item) if step is PairAction.RESUME else None
                        while len(phases) <= phase:
                            phases.append({})
                        phases[phase][device.key] = (step, swap)
                    cleared.append(run)
                else:
                    raise InputError(f"pair operation {request.op.name} is for hosts")
            except NotOffered as exc:  # says nothing of the device: not the peer's to know
                log.warning("refused peer controller %d: %s", peer_serial, exc)
                results.append(_refused(item.device, exc))
                continue
            except RemcopyError as exc:
                known = self.rep.controller.devices.get(item.device)
                results.append(_refused(item.device, exc, known))
                continue
            results.append(device)
        if changes:
            phases.insert(0, changes)
        action = str(request.options.get("action", cause))
        leaving = [self.rep.runs[key] for phase_changes in phases[:1] for key in phase_changes]
        if leaving and not (action == "suspend" and request.options.get("freeze")):
            # An async group's updates still waiting for C: the primary drained what belongs
            # before its T, so they are written now (C = T for a suspend), then it moves. Not
            # after a freeze: another link of the group failed, so what waits stays under C.
            self.consistency.settle(leaving)
        at = request.at_ns if action == "suspend" else None
        for phase_changes in phases:
            self.rep.controller.commit_states(phase_changes, cause=action, at_ns=at)
        for run in cleared:
            run.changemap.clear_all()
        return PairOpReply(
            results=tuple(_ok(r) if isinstance(r, Device) else r for r in results),
            data=b"".join(chunks),
        )

    def _prepare_suspend(self, peer_serial: int, request: PairOpRequest) -> PairOpReply:
        """Plan the commit of SUSPENDED at T of these secondaries (PREPARE_SUSPEND), as
        PEER_STATE "suspend" would make it; nothing changes. Not planned (answered with a
        refusal; the suspend then computes it at T) unless every device follows its primary
        to SUSPENDED in one step."""
        controller = self.rep.controller
        keys = [item.device for item in request.items]
        try:
            devices = [controller.device(key) for key in keys]
            if len(set(keys)) != len(keys) or any(
                device.pair.peer_serial != peer_serial
                or ledger.follow_steps(device.pair.state, "suspend") != [PairAction.SUSPEND]
                for device in devices
            ):
                raise InputError(
                    "a suspend is planned only for devices named once whose primary is this "
                    "controller and that follow it in one step"
                )
            plan = controller.plan_states(
                dict.fromkeys(keys, (PairAction.SUSPEND, _suspended_at(request.at_ns))),
                cause="suspend",
                at_ns=request.at_ns,
            )
        except RemcopyError as exc:
            return PairOpReply(results=tuple(_refused(key, exc) for key in keys))
        self._planned[peer_serial, request.at_ns] = plan
        while len(self._planned) > SEALS_KEPT_MAX:  # never used (a cancelled suspend)
            del self._planned[next(iter(self._planned))]
        return PairOpReply()

    def _planned_suspend(self, peer_serial: int, request: PairOpRequest) -> PairOpReply | None:
        """PEER_STATE "suspend" made as planned by PREPARE_SUSPEND, when the plan is for the
        same devices and none changed since; else None (computed as any PEER_STATE)."""
        plan = self._planned.pop((peer_serial, request.at_ns), None)
        keys = [item.device for item in request.items]
        devices = self.rep.controller.devices
        if (
            plan is None
            or len(keys) != len(plan.basis)
            or plan.basis.keys() != set(keys)
            or not plan.holds(devices)
        ):
            return None
        if not request.options.get("freeze"):  # as peer_op: what waits for C is written
            self.consistency.settle([self.rep.runs[key] for key in keys])
        self.rep.controller.apply_plan(plan)
        self._as_planned()
        return PairOpReply(results=tuple(_ok(devices[key]) for key in keys))

    def _as_planned(self) -> None:
        """Count a suspend's commit made as planned during the margin (status counter
        suspends_as_planned: a seal on a primary, a PEER_STATE suspend on a secondary)."""
        counters = self.rep.counters
        counters["suspends_as_planned"] = counters.get("suspends_as_planned", 0) + 1


def _merged_seal(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One seal document for T from each arm's (after a restart, each device has its own):
    counts and hold times add up or take the worst, the seal began at the first one."""
    sealed = [d for d in documents if "sealed_ns" in d]
    if not sealed:
        return documents[-1] if documents else {}
    out = dict(sealed[0])
    for doc in sealed[1:]:
        for key, value in doc.items():
            if key in ("late_writes", "in_flight_at_seal", "frozen_in_error"):
                out[key] = out.get(key, 0) + value
            elif key == "sealed_ns":
                out[key] = min(out.get(key, value), value)
            elif isinstance(value, int | float):
                out[key] = max(out.get(key, value), value)
    return out


def _as_primary(item: PairItem, group: str) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.role, info.mode, info.fence = PairRole.PRIMARY, item.mode, item.fence
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device
        info.consistency_group, info.suspend_at_ns = item.consistency_group, 0
        info.group = group

    return update


def _as_secondary(item: PairItem, group: str) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.role, info.mode, info.fence = PairRole.SECONDARY, item.mode, item.fence
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device
        info.consistency_group, info.suspend_at_ns = item.consistency_group, 0
        info.group = group

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


def _follow_update(step: PairAction, at_ns: int) -> Callable[[PairInfo], None] | None:
    """What else changes on a secondary following its primary: T when suspended; T cleared
    when mirroring starts again; everything cleared when terminated."""
    if step is PairAction.TERMINATE:
        return _to_simplex
    if step is PairAction.SUSPEND:
        return _suspended_at(at_ns)
    if step in (PairAction.RESUME, PairAction.COPY_DONE):
        return _clear_armed
    return None
