# Pair operations from hosts: establish, resume, recover, failback, shadow, terminate (the
# suspend at T is in suspendops.py, the seal in seal.py; their counterparts on the secondary
# are in peerops.py).
#
# Why: each operation takes a batch of devices in one request and answers per device (a
# refused device never fails the others, and is left exactly as it was). The decisions about
# which state may do what come from the ledger (ledger.py); this module sequences the two
# sides: ask the secondary first when it must agree (establish, resume), commit locally,
# start the copies.
#
# Rules this module keeps:
# - A device named twice in one request, unknown, not allowed, or armed for a pending suspend
#   is refused before anything changes (hostrequests.py, the ledger).
# - SUSPEND, SUSPEND_WAIT and SUSPEND_CANCEL go to suspendops.py; GROUP_CUT is answered from
#   the async consistency groups (consistency.py).
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from remcopy import ledger
from remcopy.controller.core import Device, HostGrant, PairInfo
from remcopy.controller.freeze import membership
from remcopy.controller.hostrequests import HostRequests
from remcopy.controller.pairsteps import (
    Changes,
    as_end,
    clear_armed,
    decide,
    result_ok,
    result_refused,
    swap_to_primary,
    to_simplex,
)
from remcopy.controller.suspendops import SuspendOperations
from remcopy.errors import (
    BrokenResourceError,
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
from remcopy.wire.native import PairItem, PairOp, PairOpReply, PairOpRequest, PairResult

if TYPE_CHECKING:
    from remcopy.controller.consistency import Consistency
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica
    from remcopy.controller.seal import Seal

log = logging.getLogger("remcopy.replication")


class PairOperations:
    """The pair operations hosts ask of one controller's replicator."""

    def __init__(
        self, rep: Replica, freezer: Freezer, consistency: Consistency, seal: Seal
    ) -> None:
        self.rep = rep
        self.freezer = freezer
        self.consistency = consistency
        self.seal = seal
        self.requests = HostRequests(rep, freezer)
        self.suspends = SuspendOperations(rep, freezer, seal, self.requests)

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
            return await self.suspends.suspend(grant, request)
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
            return await self.suspends.suspend_wait(grant, request)
        if op is PairOp.SUSPEND_CANCEL:
            return self.suspends.suspend_cancel(grant, request)
        if op is PairOp.GROUP_CUT:
            return PairOpReply(
                document=self.consistency.cut_document(str(request.options.get("group", "")))
            )
        raise InputError(f"pair operation {op.name} is for controllers, not hosts")

    def _plan(
        self, grant: HostGrant, request: PairOpRequest, asked: ledger.OpRequest, now_ns: int = 0
    ) -> tuple[list[tuple[PairItem, DeviceRun]], list[PairResult], ledger.Plan]:
        return self.requests.plan(grant, request, asked, now_ns)

    def _decide(
        self, run: DeviceRun, request: ledger.OpRequest, now_ns: int = 0
    ) -> ledger.Decision:
        """The ledger's decision for one device; its refusal is raised."""
        return decide(run, self.freezer, request, now_ns)

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
                results.append(result_refused(item.device, exc, run.device))
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
            return [result_refused(item.device, exc, run.device) for item, run in items]
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
                as_end(
                    PairRole.PRIMARY, item, group[0] if group and item.consistency_group else ""
                ),
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
                results.append(result_ok(run.device, tracks=run.device.volume.tracks))
                self.rep.start_copier(run)
        return results

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
                    for r in await self.rep.tell_peer(
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
                    results.append(result_ok(run.device, tracks=run.changemap.count()))
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
            changes[run.device.key] = (PairAction.RESUME, clear_armed)
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
        results.extend(result_ok(self.rep.runs[key].device, at_ns=request.at_ns) for key in changes)
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
                results.append(result_refused(item.device, exc, run.device))
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
            return [result_refused(r.device.key, exc, r.device) for r in runs]
        # The old primary's maps come back concatenated, each result saying its length.
        merged: list[DeviceRun] = []
        at = 0
        for run, answer in zip(runs, bits.results, strict=False):
            size = answer.tracks if answer.code == 0 else 0
            chunk = bits.data[at : at + size]
            at += size
            if answer.code:
                results.append(
                    result_refused(
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
            return results + [result_refused(r.device.key, exc, r.device) for r in merged]
        by_device = {r.device: r for r in reverse.results}
        changes: Changes = {}
        for run in merged:
            reply = by_device.get(run.device.pair.peer_device)
            if reply is None or reply.code:
                results.append(
                    result_refused(
                        run.device.key,
                        BrokenResourceError(
                            "old primary refused to become the secondary: "
                            f"{reply.message if reply else 'no answer'}"
                        ),
                        run.device,
                    )
                )
                continue
            changes[run.device.key] = (PairAction.FAILBACK, swap_to_primary)
        if changes:
            await self.rep.controller.commit(changes, cause="failback")
        for run in merged:
            if run.device.key in changes:
                results.append(result_ok(run.device, tracks=run.changemap.count()))
                self.rep.start_copier(run)
        return results

    async def _terminate(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        good, results, _plan = self._plan(grant, request, ledger.OpRequest(op=ledger.Op.TERMINATE))
        by_peer: dict[int, list[DeviceRun]] = {}
        changes: dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]] = {}
        for _item, run in good:
            changes[run.device.key] = (PairAction.TERMINATE, to_simplex)
            if run.device.pair.role is PairRole.PRIMARY:
                by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, runs in by_peer.items():
            await self.rep.tell_peer(serial, runs, "terminate")
        for key in changes:
            run = self.rep.runs[key]
            if run.copier is not None:
                run.copier.cancel()
            run.changemap.clear_all()
        if changes:
            await self.rep.controller.commit(changes, cause="terminate")
        results.extend(result_ok(self.rep.runs[key].device) for key in changes)
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
                results.append(result_refused(item.device, exc, run.device))
                continue
            run.shadow_running = True
            run.shadow_done, run.shadow_total = 0, run.device.volume.tracks
            self.rep.spawn(self._shadow_copy(run, target), name=f"shadow {run.device.address}")
            results.append(result_ok(run.device, tracks=run.shadow_total))
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


__all__ = ["PairOperations"]
