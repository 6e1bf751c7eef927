# The secondary side of pair operations: updates from a primary, and the peer operations
# (PEER_ESTABLISH, PEER_STATE, PEER_CHANGEMAP, PEER_FAILBACK, PEER_FREEZE, ...) it sends.
#
# Why: a secondary follows its primary: it takes the primary's updates in link order and
# makes the state changes the primary tells it, per device, refusing what its own state
# does not permit (the ledger decides, as for the primary). What a host asks is in
# pairops.py; the seal that tells a suspend at T is in seal.py.
#
# Rules this module keeps:
# - An update batch is checked whole before any update is written.
# - PEER_STATE and PEER_FAILBACK are decided by the ledger over the whole batch (ledger.plan),
#   as a host's operations are at the primary.
# - A device named twice, unknown, or whose other side is not the asking controller is
#   refused and left as it was; a refusal says nothing of a device not the peer's to know.
# - Following the primary costs one commit per step for all devices of a request.
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from remcopy import ledger
from remcopy.controller.core import Device, PairInfo, StatePlan
from remcopy.controller.pairsteps import (
    PREPARE_SUSPEND,
    SEALS_KEPT_MAX,
    as_end,
    as_planned,
    decide,
    follow_update,
    named_once,
    pair_view,
    result_ok,
    result_refused,
    suspended_at,
    swap_to_secondary,
)
from remcopy.errors import InputError, NotOffered, RemcopyError, WriteProtected
from remcopy.states import PairAction, PairRole, PairState
from remcopy.wire import native
from remcopy.wire.native import PairItem, PairOp, PairOpReply, PairOpRequest, PairResult

if TYPE_CHECKING:
    from remcopy.controller.consistency import AsyncGroup, Consistency
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica

log = logging.getLogger("remcopy.replication")


class PeerOperations:
    """The secondary side of one controller's replicator."""

    def __init__(self, rep: Replica, freezer: Freezer, consistency: Consistency) -> None:
        self.rep = rep
        self.freezer = freezer
        self.consistency = consistency
        self._planned: dict[tuple[int, int], StatePlan] = {}
        """Per (primary's serial, T): the commit of SUSPENDED at T that PREPARE_SUSPEND
        planned, made when that primary's seal tells the suspend."""

    def _decide(
        self, run: DeviceRun, request: ledger.OpRequest, now_ns: int = 0
    ) -> ledger.Decision:
        """The ledger's decision for one device; its refusal is raised."""
        return decide(run, self.freezer, request, now_ns)

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
        # PEER_STATE, PEER_FAILBACK: (its place in `results`, item, run) of each device found.
        following_runs: list[tuple[int, PairItem, DeviceRun]] = []
        seen: set[int] = set()
        for item in request.items:
            try:
                named_once(item.device, seen)
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
                        as_end(PairRole.SECONDARY, item, group if item.consistency_group else ""),
                    )
                elif device.pair.peer_serial != peer_serial:
                    raise NotOffered(
                        f"{device.address}: controller {peer_serial} is not the other side "
                        "of a pair of this device"
                    )
                elif request.op in (PairOp.PEER_STATE, PairOp.PEER_FAILBACK):
                    # Decided below, by the ledger over the whole batch.
                    following_runs.append((len(results), item, run))
                elif request.op is PairOp.PEER_CHANGEMAP:
                    bitmap = run.changemap.to_bytes()
                    if self.rep._planted("failback_one_side"):  # PLANTED BUG: this side's
                        bitmap = bytes(len(bitmap))  # changes are not copied back
                    chunks.append(bitmap)
                    results.append(result_ok(device, tracks=len(bitmap)))
                    continue
                else:
                    raise InputError(f"pair operation {request.op.name} is for hosts")
            except NotOffered as exc:  # says nothing of the device: not the peer's to know
                log.warning("refused peer controller %d: %s", peer_serial, exc)
                results.append(result_refused(item.device, exc))
                continue
            except RemcopyError as exc:
                known = self.rep.controller.devices.get(item.device)
                results.append(result_refused(item.device, exc, known))
                continue
            results.append(device)
        if following_runs:
            cleared = self._follow(request, following_runs, results, phases)
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
            results=tuple(result_ok(r) if isinstance(r, Device) else r for r in results),
            data=b"".join(chunks),
        )

    def _follow(
        self,
        request: PairOpRequest,
        runs: list[tuple[int, PairItem, DeviceRun]],
        results: list[PairResult | Device],
        phases: list[dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]]],
    ) -> list[DeviceRun]:
        """PEER_STATE (follow the primary's action) or PEER_FAILBACK (become the secondary),
        decided by the ledger over the batch: a refusal takes the device's place in `results`;
        each accepted device's steps go into `phases` (one commit per step for all devices).
        Returns the devices whose change maps a failback clears once the commits are made."""
        if request.op is PairOp.PEER_FAILBACK:
            asked = ledger.OpRequest(op=ledger.Op.PEER_FAILBACK)
        else:
            asked = ledger.OpRequest(
                op=ledger.Op.FOLLOW,
                at_ns=request.at_ns,
                action=str(request.options.get("action", "")),
                empty=frozenset(int(key) for key in request.options.get("empty", ())),
            )
            if (
                asked.action == "resume"
                and any(run.shadow_running for _, _, run in runs)
                and self.rep._planted("resume_ignores_shadow")  # PLANTED BUG if set
            ):
                asked = dataclasses.replace(asked, shadow_gate=False)
        made = ledger.plan(
            {run.device.key: pair_view(run, self.freezer) for _, _, run in runs}, asked, 0
        )
        cleared: list[DeviceRun] = []
        for place, item, run in runs:
            decision = made.decisions[run.device.key]
            if decision.refusal is not None:
                results[place] = result_refused(item.device, decision.refusal, run.device)
                continue
            for phase, step in enumerate(decision.steps):
                if request.op is PairOp.PEER_FAILBACK:
                    update = swap_to_secondary(item) if step is PairAction.RESUME else None
                else:
                    update = follow_update(step, request.at_ns)
                while len(phases) <= phase:
                    phases.append({})
                phases[phase][run.device.key] = (step, update)
            if request.op is PairOp.PEER_FAILBACK:
                cleared.append(run)  # the map is cleared once the commits are made
        return cleared

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
                dict.fromkeys(keys, (PairAction.SUSPEND, suspended_at(request.at_ns))),
                cause="suspend",
                at_ns=request.at_ns,
            )
        except RemcopyError as exc:
            return PairOpReply(results=tuple(result_refused(key, exc) for key in keys))
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
        as_planned(self.rep.counters)
        return PairOpReply(results=tuple(result_ok(devices[key]) for key in keys))


__all__ = ["PeerOperations"]
