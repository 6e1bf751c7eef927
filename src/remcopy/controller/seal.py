# The seal of a prospective suspend at T: arming T, sealing at T, draining, committing.
#
# Why (docs/replication.md section 4): a suspend at T must leave at the secondary exactly
# the writes stamped < T. Armed devices mirror writes stamped < T and change-record those
# stamped >= T (writepath.py); at T this module seals them (a write stamped < T arriving
# now is refused with LateWrite, retryable), waits for the updates stamped < T still in
# flight, commits SUSPENDED at T here, then tells the secondaries to follow.
#
# Theory of operation
# - Arming hands the T to the seal timer (sealtimer.py, sans-I/O: it reports the next
#   deadline and what is due, and is unit-tested with a fake clock); this module keeps one
#   event-loop timer on its next deadline. A wake-up before T (event-loop timers may fire a
#   little early: uvloop rounds to milliseconds) seals nothing and waits again.
# - One seal per arm: each arm's devices are sealed together, with its prepared commit.
#
# Rules this module keeps:
# - Never seal before T on this controller's clock.
# - The seal waits for every update stamped < T before committing SUSPENDED at T, and acts
#   only on devices still armed for that same T (a cancelled or re-armed device is skipped).
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remcopy.controller.core import PairInfo, StatePlan
from remcopy.controller.pairsteps import (
    PREPARE_SUSPEND,
    SEALS_KEPT_MAX,
    as_planned,
    emit_devices,
    result_ok,
)
from remcopy.controller.sealtimer import SealTimer
from remcopy.errors import IllegalTransition
from remcopy.events import EventKind
from remcopy.states import PairAction, PairState
from remcopy.wire.native import PairResult

if TYPE_CHECKING:
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun, Replica

log = logging.getLogger("remcopy.replication")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Arm:
    """One arm of a suspend at T: its devices, its seal's outcome, its prepared commit."""

    runs: list[DeviceRun]
    done: asyncio.Future[dict[str, Any]]
    prepared: StatePlan | None


class Seal:
    """The seals at T of one controller's replicator."""

    def __init__(self, rep: Replica, freezer: Freezer) -> None:
        self.rep = rep
        self.freezer = freezer
        self.seals: dict[int, list[asyncio.Future[dict[str, Any]]]] = {}
        """Per suspend time T: the seal of each arm for T (its document once sealed)."""
        self.timer: SealTimer[_Arm] = SealTimer()
        """The arms not sealed yet, by T (sans-I/O: sealtimer.py)."""
        self._wakeup: asyncio.TimerHandle | None = None
        """The one event-loop timer, on the seal timer's next deadline (`_wakeup_ns`)."""
        self._wakeup_ns = 0

    def arm(
        self, runs: list[DeviceRun], at_ns: int, prepared: StatePlan | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Seal these devices at T (their armed T is persisted already); the seal's document.
        A T that has passed (re-armed after a restart) seals at once."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._seal_registered(at_ns, done)
        self.timer.arm(at_ns, _Arm(runs=runs, done=done, prepared=prepared))
        self._wake_up_at_next()
        return done

    def close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None

    def _wake_up_at_next(self) -> None:
        """Keep the one event-loop timer on the seal timer's next deadline."""
        next_ns = self.timer.get_timer()
        if self._wakeup is not None:
            if next_ns == self._wakeup_ns:
                return
            self._wakeup.cancel()
            self._wakeup = None
        if next_ns is None:
            return
        delay_s = max(0.0, (next_ns - time.time_ns()) / 1e9)
        self._wakeup = asyncio.get_running_loop().call_later(delay_s, self._timer_fired)
        self._wakeup_ns = next_ns

    def _timer_fired(self) -> None:
        # Event-loop timers may fire a little early (uvloop rounds to milliseconds): the
        # seal timer returns nothing before T on this controller's clock, and the loop timer
        # is set again for what is left.
        self._wakeup = None
        for at_ns, arm in self.timer.handle_timer(time.time_ns()):
            self.rep.spawn(
                self._seal(arm.runs, at_ns, arm.done, arm.prepared), name=f"seal {at_ns}"
            )
        self._wake_up_at_next()

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
            emit_devices(
                self.rep.controller,
                EventKind.DISARMED,
                f"suspend at={at_ns} skipped: disarmed on all {len(runs)} devices",
                at_ns,
                "skipped",
                [r.device.key for r in runs],
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
                as_planned(self.rep.counters)
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
            await self.rep.tell_peer(
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

    async def prepare_peers(self, runs: list[DeviceRun], at_ns: int) -> None:
        """Ask the secondaries to plan their commit of SUSPENDED at T now, during the
        margin (nothing changes there until the seal tells the suspend): then at T each only
        makes it. One that did not (a link down, an older controller) computes it at T."""
        by_peer: dict[int, list[DeviceRun]] = {}
        for run in runs:
            by_peer.setdefault(run.device.pair.peer_serial, []).append(run)
        for serial, peer_runs in by_peer.items():
            await self.rep.tell_peer(serial, peer_runs, PREPARE_SUSPEND, at_ns=at_ns)

    def _seal_registered(self, at_ns: int, done: asyncio.Future[dict[str, Any]]) -> None:
        """Keep an arm's seal for SUSPEND_WAIT; drop the oldest finished seals over the cap."""
        self.seals.setdefault(at_ns, []).append(done)
        while len(self.seals) > SEALS_KEPT_MAX:
            oldest = min(self.seals)
            if not all(f.done() for f in self.seals[oldest]):
                break
            del self.seals[oldest]

    def sealed_results(self, runs: list[DeviceRun], at_ns: int) -> list[PairResult]:
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
                results.append(result_ok(run.device, at_ns=at_ns, tracks=left))
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


def merged_seal(documents: list[dict[str, Any]]) -> dict[str, Any]:
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


__all__ = ["Seal", "merged_seal"]
