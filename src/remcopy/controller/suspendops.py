# The host's prospective suspend at T: arm, answer once sealed (or at once when scheduled),
# wait for a seal armed earlier, cancel before T.
#
# Why (docs/replication.md section 8): a suspend at T must leave each secondary with exactly
# the writes stamped < T. The arm persists T and hands it to the seal (seal.py); the answer
# comes from the seal. A scheduled suspend (T far ahead) is answered once armed; the host asks
# again with SUSPEND_WAIT after T, or disarms with SUSPEND_CANCEL before T.
#
# Rules this module keeps:
# - A T already past on this controller's clock refuses the whole request (the ledger).
# - Devices a controller freeze armed join that freeze; the request is then suspended at the
#   freeze's T when that is still ahead.
# - A cancelled device that recorded writes stamped >= T while armed (a host clock ahead of
#   this one) is resynced, so its secondary does not lack them.
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from remcopy import ledger
from remcopy.controller.core import HostGrant, StatePlan
from remcopy.controller.hostrequests import HostRequests
from remcopy.controller.pairsteps import Changes, emit_devices, result_ok
from remcopy.controller.seal import merged_seal
from remcopy.errors import IllegalTransition, InputError
from remcopy.events import EventKind
from remcopy.states import PairAction, PairState
from remcopy.wire.native import PairOpReply, PairOpRequest

if TYPE_CHECKING:
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica
    from remcopy.controller.seal import Seal


class SuspendOperations:
    """SUSPEND, SUSPEND_WAIT and SUSPEND_CANCEL from hosts, on one controller."""

    def __init__(self, rep: Replica, freezer: Freezer, seal: Seal, requests: HostRequests) -> None:
        self.rep = rep
        self.freezer = freezer
        self.seal = seal
        self.requests = requests

    async def suspend(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        at_ns = request.at_ns
        now = time.time_ns()
        # A T already past here refuses the whole request (raised by the plan).
        asked = ledger.OpRequest(
            op=ledger.Op.SUSPEND, at_ns=at_ns, controller=self.rep.controller.name
        )
        good, results, made = self.requests.plan(grant, request, asked, now)
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
            emit_devices(
                self.rep.controller,
                EventKind.ARMED,
                f"armed suspend at={at_ns} devices={len(armed)}",
                at_ns,
                "suspend",
                [r.device.key for r in armed],
            )
            self.rep.spawn(self.seal.prepare_peers(armed, at_ns), name=f"prepare {at_ns}")
            sealed = self.seal.arm(armed, at_ns, prepared)
        if (armed or joined) and request.options.get("answer") == "armed":
            # A scheduled suspend: answered now, bounded by the host's request timeout; the
            # host waits for T itself and then asks with SUSPEND_WAIT.
            results.extend(result_ok(run.device, at_ns=at_ns) for run in armed)
            results.extend(result_ok(run.device, at_ns=run.freeze_at_ns) for run in joined)
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
        results.extend(self.seal.sealed_results(armed, at_ns))
        for run in joined:
            results.extend(self.seal.sealed_results([run], run.freeze_at_ns))
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)), document=document
        )

    # Scheduled suspends: wait for the seal of an armed T, or cancel it before T...

    async def suspend_wait(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """Answer once the suspend armed for T on these devices is sealed: per device as
        SUSPEND answers, and the seal's figures. A device not armed for T answers at once."""
        at_ns = request.at_ns
        if at_ns <= 0:
            raise InputError("suspend wait: at_ns must be the suspend time T that was armed")
        good, results = self.requests.devices(grant, request)
        runs = [run for _item, run in good]
        seals = self.seal.seals.get(at_ns, [])
        if any(ledger.armed_for(self.requests.view(run), at_ns) for run in runs) or not all(
            f.done() for f in seals
        ):
            # Sealed at T on this controller's clock, and told to the secondaries (a seal
            # commits SUSPENDED before it is done); the host's timeout bounds the wait.
            await asyncio.gather(*(asyncio.shield(f) for f in seals))
        results.extend(self.seal.sealed_results(runs, at_ns))
        return PairOpReply(
            results=tuple(sorted(results, key=lambda r: r.device)),
            document=merged_seal([f.result() for f in seals if f.done()]),
        )

    def suspend_cancel(self, grant: HostGrant, request: PairOpRequest) -> PairOpReply:
        """Disarm the suspend armed on these devices before its T: the persisted T is
        cleared and the seal at T skips them."""
        now = time.time_ns()
        asked = ledger.OpRequest(
            op=ledger.Op.SUSPEND_CANCEL, at_ns=request.at_ns, controller=self.rep.controller.name
        )
        _good, results, made = self.requests.plan(grant, request, asked, now)
        # device -> the T it was armed for
        disarmed = {e.key: e.at_ns for e in made.events if e.kind == "disarmed"}
        if disarmed:
            self.rep.controller.commit_armed(dict.fromkeys(disarmed, 0))
            for at_ns in sorted(set(disarmed.values())):
                keys = [key for key, t in disarmed.items() if t == at_ns]
                emit_devices(
                    self.rep.controller,
                    EventKind.DISARMED,
                    f"disarmed suspend at={at_ns} devices={len(keys)}",
                    at_ns,
                    "cancel",
                    keys,
                )
        by_peer: dict[int, list[DeviceRun]] = {}
        for key, at_ns in disarmed.items():
            run = self.rep.runs[key]
            results.append(result_ok(run.device, at_ns=at_ns))
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
        answers = {r.device: r for r in await self.rep.tell_peer(serial, runs, "resume")}
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


__all__ = ["SuspendOperations"]
