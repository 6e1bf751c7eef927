# Group operations: one command, every pair of a group, one request per controller.
#
# Why: the reason the system exists (seed sections F and G). The old way changed one pair at a
# time, ~10 s each; a group of thousands took an hour. Here a group operation is one parent
# function (STYLE.md section 7):
#   1. resolve the pairs (the group, as the acting host reaches it);
#   2. plan the per-controller batches with pure functions (`plan`);
#   3. validate everything (a pair no controller of this host reaches is refused up front);
#   4. send the batches concurrently through the I/O engine, one request per controller;
#   5. collect per-pair results into one report.
#
# The suspend is the one that must be right: T = now + margin, where the margin is at least
# the configured floor and at least a few times the measured round trip to the slowest
# primary controller, so every controller receives the suspend before T. The group is reported
# **consistent at T** only when every pair answers SUSPENDED at that same T.
#
# Scheduled suspends: request timeouts bound arming, never the wait for T. A T within half the
# request timeout goes in one request per controller, answered after the seal. A later T (e.g.
# `--in 3h`) takes two: SUSPEND answered once armed (persisted), then, once T has come on this
# host's clock, SUSPEND_WAIT answered once the controller has sealed T. With wait=False the
# operation ends once armed everywhere; `cancel` disarms before T.
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from remcopy.errors import (
    ConsistencyUnknown,
    IllegalTransition,
    InputError,
    SuspendNotArmed,
    SuspendTimeInPast,
)
from remcopy.groups.model import Group, GroupPair
from remcopy.groups.preview import AT_PRIMARY, PlannedPair, already_there, plan_summary, preview
from remcopy.host.channel import Channel
from remcopy.host.engine import Job, JobResult
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import DISPLAY_NAMES, CopyMode, PairRole, PairState
from remcopy.wire.native import (
    DeviceStatus,
    PairItem,
    PairOp,
    PairOpReply,
    PairResult,
    pack_items,
)

# A suspend margin is never below this many measured round trips to the slowest controller,
MARGIN_ROUND_TRIPS_MIN = 4
# plus this much per device of the largest request: what a controller does before it arms
# (read and decode the request: ~2 us a device alone), with room for controllers that share
# CPUs. Measured (bench/groups.py --pairs 100000: 8 primaries of 12,500 devices on 2 CPUs):
# with a 50 ms margin every request arrived 126 ms after T (244 ms beside 8 writers).
ARRIVAL_PER_DEVICE_S = 16e-6
# A suspend whose T is at most this share of the request timeout away is one request per
# controller, answered after the seal (the rest of the timeout is left for the seal). A later
# T is armed first and waited for (see the top of this file).
ONE_REQUEST_SHARE_MAX = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """One request: every device of one controller that an operation acts on."""

    controller: str
    items: tuple[PairItem, ...]
    pairs: tuple[GroupPair, ...]
    packed: bytes = field(default=b"", compare=False, repr=False)
    """The items as sent (`native.pack_items`), when packed ahead; else packed when sent."""


@dataclass(slots=True, kw_only=True)
class PairOutcome:
    pair: GroupPair
    ok: bool
    state: PairState
    at_ns: int = 0
    tracks: int = 0
    message: str = ""
    code: int = 0
    """The controller's error code when it refused the pair (remcopy.errors), else 0."""
    role: PairRole = PairRole.NONE
    """The role the controller reported for the device the request went to."""
    already: bool = False
    """Done without a change: the pair was already where the operation leads (`message`
    says where, e.g. "already RECOVERED")."""


@dataclass(slots=True, kw_only=True)
class GroupReport:
    """What a group operation did, per pair and per controller; printed with --json."""

    group: str
    op: str
    pairs: list[PairOutcome] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    """Requests sent per controller (a group operation sends exactly one to each)."""
    elapsed_s: float = 0.0
    at_ns: int = 0
    margin_s: float = 0.0
    round_trip_s: float = 0.0
    seal: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per controller: seal and drain times, late writes refused, updates in flight at T,
    devices frozen, host I/O held (ms); the suspend record (docs/groups.md)."""
    consistent: bool = False
    dry_run: bool = False
    plan: list[PlannedPair] = field(default_factory=list)
    """A dry run's plan: per pair, the move, the tracks it would copy, or why it is refused."""
    copy_s: float = 0.0
    """Time waited, after the operation, for the copies it started (when followed)."""
    armed: bool = False
    """A suspend that did not wait: armed for T on the controllers, to be sealed at T."""
    disarmed: int = 0
    """suspend_cancel: pairs whose armed suspend was cancelled."""
    cut: dict[str, Any] | None = None
    """recover of an async consistency group: the consistency time C agreed and applied,
    the RPO (loss to C), updates after C not applied, controllers not reached (--force)."""

    def __repr__(self) -> str:
        # Short on purpose: asyncio and enum error paths repr a finished task's result, and
        # the generated repr of 10,000 outcomes took a quarter of a second each time.
        return (
            f"<GroupReport {self.group} {self.op} pairs={len(self.pairs)} "
            f"failed={len(self.failed)} consistent={self.consistent} dry_run={self.dry_run}>"
        )

    @property
    def failed(self) -> list[PairOutcome]:
        return [p for p in self.pairs if not p.ok]

    def armed_controllers(self) -> list[str]:
        """A suspend that did not wait: the controllers where pairs are armed for T."""
        return sorted({p.pair.primary_controller or "" for p in self.pairs if p.ok})

    @property
    def already(self) -> list[PairOutcome]:
        """Pairs counted done because they were already where the operation leads."""
        return [p for p in self.pairs if p.already]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for outcome in self.pairs:
            out[outcome.state.name] = out.get(outcome.state.name, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "op": self.op,
            "elapsed_s": round(self.elapsed_s, 6),
            "pairs": len(self.pairs),
            "failed": len(self.failed),
            "counts": self.counts(),
            "requests_per_controller": self.requests,
            "dry_run": self.dry_run,
            "at_ns": self.at_ns,
            "margin_s": self.margin_s,
            "round_trip_s": self.round_trip_s,
            "consistent": self.consistent,
            "armed": self.armed,
            "disarmed": self.disarmed,
            "seal": self.seal,
            "late_writes": sum(int(d.get("late_writes", 0)) for d in self.seal.values()),
            "host_io_held_ms": max(
                (float(d.get("host_io_held_ms", 0.0)) for d in self.seal.values()), default=0.0
            ),
            "copy_s": round(self.copy_s, 6),
            **({"recover": self.cut} if self.cut is not None else {}),
            "pair_states": {p.pair.name: p.state.name for p in self.pairs},
            "already": len(self.already),
            "already_states": _tally(p.state.name for p in self.already),
            **(
                {
                    "plan": {
                        "controllers": plan_summary(self.plan),
                        "pairs": [row.to_json() for row in self.plan],
                    }
                }
                if self.dry_run
                else {}
            ),
            "failures": [
                {
                    "pair": p.pair.name,
                    "primary": str(p.pair.primary),
                    "state": p.state.name,
                    "message": p.message,
                }
                for p in self.failed
            ],
        }


def _tally(names: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return out


# Planning (pure)...


def plan(group: Group, op: PairOp) -> tuple[list[Batch], list[PairOutcome]]:
    """Split a group's pairs into one batch per controller; refuse pairs no path reaches."""
    at_primary = op in AT_PRIMARY
    batches: dict[str, list[tuple[PairItem, GroupPair]]] = {}
    refused: list[PairOutcome] = []
    options = group.options
    for pair in group.pairs:
        controller = pair.primary_controller if at_primary else pair.secondary_controller
        if not controller:
            side = "primary" if at_primary else "secondary"
            refused.append(
                PairOutcome(
                    pair=pair,
                    ok=False,
                    state=PairState.SIMPLEX,
                    message=f"{pair.name}: this host has no path to the {side} "
                    f"{pair.primary if at_primary else pair.secondary}",
                )
            )
            continue
        if at_primary:
            item = PairItem(
                device=pair.primary.device_key,
                peer_serial=pair.secondary.serial,
                peer_device=pair.secondary.device_key,
                mode=options.mode,
                fence=options.fence,
                consistency_group=options.consistency_group,
            )
        else:
            item = PairItem(device=pair.secondary.device_key)
        batches.setdefault(controller, []).append((item, pair))
    return [_batch(c, rows) for c, rows in sorted(batches.items())], refused


def _batch(controller: str, rows: list[tuple[PairItem, GroupPair]]) -> Batch:
    """One controller's request, its items packed now rather than when sent (a suspend plans
    before it chooses T)."""
    items = tuple(item for item, _ in rows)
    return Batch(
        controller=controller,
        items=items,
        pairs=tuple(pair for _, pair in rows),
        packed=pack_items(items),
    )


def membership(group: Group) -> dict[str, Any]:
    """What an establish tells each primary controller of a consistency group: the group's
    name and every primary controller's serial, so the controllers can freeze the group
    among themselves (each must have the others in its [[peers]])."""
    return {
        "group": group.name,
        "members": sorted({pair.primary.serial for pair in group.pairs}),
        # An async group's secondaries keep its consistency time C among themselves.
        "secondaries": sorted({pair.secondary.serial for pair in group.pairs}),
    }


def _outcomes(op: PairOp, batch: Batch, reply: PairOpReply) -> list[PairOutcome]:
    """Per pair results of one batch; a pair refused because it is already where `op` leads
    counts as done (`already`)."""
    results: dict[int, PairResult] = {r.device: r for r in reply.results}
    out = []
    for item, pair in zip(batch.items, batch.pairs, strict=True):
        result = results.get(item.device)
        if result is None:
            out.append(
                PairOutcome(
                    pair=pair,
                    ok=False,
                    state=PairState.SIMPLEX,
                    message=f"{pair.name}: the controller did not answer for it",
                )
            )
            continue
        outcome = PairOutcome(
            pair=pair,
            ok=result.code == 0,
            state=result.state,
            at_ns=result.at_ns,
            tracks=result.tracks,
            message=result.message,
            role=result.role,
            code=result.code,
        )
        if not outcome.ok and result.code == IllegalTransition.code:
            done = already_there(op, result.state, result.role)
            if done:
                outcome.ok, outcome.already, outcome.message = True, True, f"{pair.name}: {done}"
        out.append(outcome)
    return out


# Running...


async def run_operation(
    session: HostSession,
    group: Group,
    op: PairOp,
    *,
    at_ns: int = 0,
    dry_run: bool = False,
    options: dict[str, Any] | None = None,
    planned: tuple[list[Batch], list[PairOutcome]] | None = None,
) -> GroupReport:
    """Plan, then send one request per controller, all at once; results per pair.
    `planned` is `plan(group, op)` made earlier (a suspend plans before it chooses T, so
    planning does not eat into the margin)."""
    started = time.perf_counter()
    report = GroupReport(group=group.name, op=op.name.lower(), dry_run=dry_run, at_ns=at_ns)
    batches, refused = planned if planned is not None else plan(group, op)
    if dry_run:
        await _dry_run(session, report, group, op)
        report.elapsed_s = time.perf_counter() - started
        return report
    report.pairs.extend(refused)
    options = dict(options or {})
    if op is PairOp.ESTABLISH and group.options.consistency_group:
        options.update(membership(group))
    jobs = [Job(controller=b.controller, tag=b, run=_send(op, b, at_ns, options)) for b in batches]
    for result in await session.engine.run_all(jobs):
        _collect(report, result, op)
    report.elapsed_s = time.perf_counter() - started
    return report


async def _dry_run(
    session: HostSession,
    report: GroupReport,
    group: Group,
    op: PairOp,
    tertiaries: dict[str, HardwareAddress] | None = None,
) -> None:
    """Fill a dry run's report from a preview: no pair operation is sent."""
    report.plan = await preview(session, group, op, tertiaries=tertiaries)
    report.requests = {row.controller: 0 for row in report.plan if row.controller}
    report.pairs.extend(
        PairOutcome(
            pair=row.pair,
            ok=not row.refused,
            state=row.new_state or row.state or PairState.SIMPLEX,
            tracks=row.tracks,
            message=row.reason,
            already=row.already,
        )
        for row in report.plan
    )


def _send(
    op: PairOp, batch: Batch, at_ns: int, options: dict[str, Any]
) -> Callable[[Channel], Awaitable[PairOpReply]]:
    async def send(channel: Channel) -> PairOpReply:
        return await channel.pair_op(
            op, batch.items, at_ns=at_ns, options=options, packed=batch.packed
        )

    return send


def _collect(report: GroupReport, result: JobResult[PairOpReply], op: PairOp) -> None:
    batch: Batch = result.job.tag
    report.requests[batch.controller] = result.attempts
    if result.error is not None or result.value is None:
        report.pairs.extend(
            PairOutcome(
                pair=p, ok=False, state=PairState.SIMPLEX, message=f"{p.name}: {result.error}"
            )
            for p in batch.pairs
        )
        return
    report.pairs.extend(_outcomes(op, batch, result.value))
    if result.value.document:
        report.seal[batch.controller] = result.value.document


def is_async_group(group: Group) -> bool:
    """An async consistency group: its secondaries keep a consistency time C."""
    return group.options.consistency_group and group.options.mode is CopyMode.ASYNC


async def recover(session: HostSession, group: Group, *, force: bool = False) -> GroupReport:
    """Take the secondaries over. For an async consistency group, first agree on one C: ask
    every secondary controller of the group how far the updates have arrived there
    (GROUP_CUT), take the least (everything stamped below it is at every one of them), and
    recover each exactly up to it; later updates are dropped, their tracks recorded for the
    failback. A secondary controller that cannot be asked refuses the whole recover
    (ConsistencyUnknown, nothing changed) unless `force`: then the rest is recovered and
    the report says the group is not consistent."""
    if not is_async_group(group):
        return await run_operation(session, group, PairOp.RECOVER)
    started = time.perf_counter()
    planned = plan(group, PairOp.RECOVER)
    controllers = [batch.controller for batch in planned[0]]

    async def ask(channel: Channel) -> PairOpReply:
        return await channel.pair_op(PairOp.GROUP_CUT, (), options={"group": group.name})

    answers: dict[str, dict[str, Any]] = {}
    unreachable: dict[str, str] = {}
    jobs = [Job(controller=c, tag=c, run=ask) for c in controllers]
    for result in await session.engine.run_all(jobs):
        if result.error is not None or result.value is None:
            unreachable[result.job.tag] = str(result.error)
        else:
            answers[result.job.tag] = result.value.document
    if unreachable and not force:
        said = "; ".join(f"{c}: {why}" for c, why in sorted(unreachable.items()))
        raise ConsistencyUnknown(
            f"recover {group.name}: cannot agree on the group's consistency time: secondary "
            f"controller(s) not reached: {said}: nothing was recovered (bring them back, or "
            "recover --force, which leaves the group NOT consistent)"
        )
    if not answers:
        raise ConsistencyUnknown(
            f"recover {group.name}: no secondary controller of the group answered: "
            "nothing was recovered"
        )
    cut = min(int(doc["arrived_ns"]) for doc in answers.values())
    cut = max(cut, *(int(doc["applied_ns"]) for doc in answers.values()))
    report = await run_operation(session, group, PairOp.RECOVER, at_ns=cut, planned=planned)
    now_ns = time.time_ns()
    dropped = sum(int(doc.get("dropped", 0)) for doc in report.seal.values())
    report.seal = {}
    report.at_ns = cut
    report.consistent = not unreachable and not report.failed
    report.cut = {
        "consistency_ns": cut,
        "rpo_s": round(max(0, now_ns - cut) / 1e9, 3) if cut else None,
        "updates_not_applied": dropped,
        "consistent": report.consistent,
        "unreachable": sorted(unreachable),
    }
    report.elapsed_s = time.perf_counter() - started
    return report


_HOME = frozenset({PairState.PENDING, PairState.DUPLEX})


async def swap_home(session: HostSession, group: Group) -> GroupReport:
    """Turn every pair of `group` around, its secondary taking the primary role: recover at
    the secondaries, then fail back there (the old primaries follow and become the
    secondaries; what changed on either side is copied). `group` is as the pairs copy now.
    A pair whose secondary is already the primary (PENDING or DUPLEX) counts as done,
    "already home"; one recovered by an earlier attempt goes on to the failback."""
    started = time.perf_counter()
    recovered = await recover(session, group)
    onward: list[GroupPair] = []
    settled: dict[str, PairOutcome] = {}
    for outcome in recovered.pairs:
        if outcome.ok:
            onward.append(outcome.pair)
            continue
        if outcome.role is PairRole.PRIMARY and outcome.state in _HOME:
            outcome.ok, outcome.already = True, True
            outcome.message = (
                f"{outcome.pair.name}: already home: the primary, {outcome.state.name}"
            )
        settled[str(outcome.pair.primary)] = outcome
    turned = Group(
        name=group.name, options=group.options, pairs=tuple(onward), is_reversed=group.is_reversed
    )
    report = await run_operation(session, turned, PairOp.FAILBACK) if onward else recovered
    by_primary = {str(o.pair.primary): o for o in report.pairs} if onward else {}
    by_primary.update(settled)
    report.pairs = [by_primary[str(p.primary)] for p in group.pairs]
    if report is not recovered:
        for controller, attempts in recovered.requests.items():
            report.requests[controller] = report.requests.get(controller, 0) + attempts
    report.op = "failback"
    report.elapsed_s = time.perf_counter() - started
    return report


def arrival_time_s(round_trip_s: float, largest_batch: int) -> float:
    """The least time ahead a suspend's T may be: every controller must have its request,
    read and decoded, before T (MARGIN_ROUND_TRIPS_MIN, ARRIVAL_PER_DEVICE_S)."""
    return MARGIN_ROUND_TRIPS_MIN * round_trip_s + largest_batch * ARRIVAL_PER_DEVICE_S


async def measure_round_trip(session: HostSession, controllers: list[str]) -> float:
    """The slowest controller's round trip for a small request, in seconds."""

    async def one(name: str) -> float:
        channel = session.channels[name]
        if not channel.connected:
            await channel.connect()
        started = time.perf_counter()
        await channel.query((0,))
        return time.perf_counter() - started

    times = await asyncio.gather(*(one(c) for c in controllers))
    return max(times, default=0.0)


def request_timeout_s(session: HostSession, controllers: list[str]) -> float:
    """The time one request may take: the engine's bound or a channel's, whichever is less."""
    channels = [session.channels[c].timeout_s for c in controllers if c in session.channels]
    return min([session.engine.limits.timeout_s, *channels])


ArmedCallback = Callable[[GroupReport], None]
"""Called once a scheduled suspend is armed everywhere, before the wait for T."""


async def suspend(
    session: HostSession,
    group: Group,
    *,
    at_ns: int | None = None,
    margin_s: float | None = None,
    dry_run: bool = False,
    wait: bool = True,
    on_armed: ArmedCallback | None = None,
) -> GroupReport:
    """Suspend every pair at one prospective T; consistent only if all report SUSPENDED at T.
    wait=False: return once armed everywhere (`report.armed`); the controllers seal at T."""
    planned = plan(group, PairOp.SUSPEND)
    controllers = [b.controller for b in planned[0]]
    round_trip_s = await measure_round_trip(session, controllers)
    floor_s = group.options.margin_s if margin_s is None else margin_s
    if floor_s < 0:
        raise InputError(f"suspend margin must be >= 0 s (got {floor_s})")
    largest = max((len(b.items) for b in planned[0]), default=0)
    arrival_s = arrival_time_s(round_trip_s, largest)
    now = time.time_ns()
    if at_ns is None:
        at_ns = now + int(max(floor_s, arrival_s) * 1e9)
    elif at_ns - now < int(arrival_s * 1e9):
        raise InputError(
            f"suspend time {at_ns} is {(at_ns - now) / 1e6:.3f} ms away: less than the "
            f"{arrival_s * 1e3:.3f} ms its requests may take to arrive ({MARGIN_ROUND_TRIPS_MIN} "
            f"round trips of {round_trip_s * 1e3:.3f} ms to the slowest controller, and "
            f"{ARRIVAL_PER_DEVICE_S * 1e6:.0f} us for each of the {largest} devices of the "
            "largest request): choose a later time"
        )
    one_request_s = ONE_REQUEST_SHARE_MAX * request_timeout_s(session, controllers)
    if dry_run or (wait and at_ns - now <= int(one_request_s * 1e9)):
        report = await run_operation(
            session, group, PairOp.SUSPEND, at_ns=at_ns, dry_run=dry_run, planned=planned
        )
    else:
        report = await _arm_then_wait(session, group, planned, at_ns, wait=wait, on_armed=on_armed)
    report.margin_s = (at_ns - now) / 1e9
    report.round_trip_s = round_trip_s
    # The controllers may have frozen the group (a replication error) at an earlier T'
    # before this T: the pairs then all report T', and the group is consistent at T'.
    frozen_at = {p.at_ns for p in report.pairs if p.ok}
    if len(frozen_at) == 1 and 0 < (only := frozen_at.pop()) < at_ns:
        report.at_ns = only
        report.seal.setdefault("freeze", {})["frozen_at_ns"] = only
    # A pair suspended while its copy was still running (tracks left) is not consistent.
    report.consistent = (
        bool(report.pairs)
        and not dry_run
        and all(
            # SUSPENDED at T, or frozen at T: a consistency-group pair whose link failed
            # before T and whose writes were held until the freeze.
            p.ok
            and p.state in (PairState.SUSPENDED, PairState.SUSPENDED_ERROR)
            and p.at_ns == report.at_ns
            and p.tracks == 0
            for p in report.pairs
        )
    )
    return report


async def _arm_then_wait(
    session: HostSession,
    group: Group,
    planned: tuple[list[Batch], list[PairOutcome]],
    at_ns: int,
    *,
    wait: bool,
    on_armed: ArmedCallback | None,
) -> GroupReport:
    """A scheduled suspend: arm everywhere (answered once persisted), wait for T on this
    host's clock, then ask each controller for the seal of T. Each request is bounded by the
    request timeout; the wait for T is not a request."""
    started = time.perf_counter()
    report = GroupReport(group=group.name, op="suspend", at_ns=at_ns)
    batches, refused = planned
    report.pairs.extend(refused)
    jobs = [
        Job(
            controller=b.controller, tag=b, run=_send(PairOp.SUSPEND, b, at_ns, {"answer": "armed"})
        )
        for b in batches
    ]
    armed: list[Batch] = []
    armed_outcomes: list[PairOutcome] = []
    for result in await session.engine.run_all(jobs):
        batch: Batch = result.job.tag
        report.requests[batch.controller] = result.attempts
        step = GroupReport(group=group.name, op="suspend")
        _collect(step, result, PairOp.SUSPEND)
        report.pairs.extend(p for p in step.pairs if not p.ok)
        kept = [(i, p.pair) for i, p in zip(batch.items, step.pairs, strict=True) if p.ok]
        if kept:
            armed.append(_batch(batch.controller, kept))
        armed_outcomes.extend(p for p in step.pairs if p.ok)
    report.armed = bool(armed)
    report.elapsed_s = time.perf_counter() - started
    report.pairs.extend(armed_outcomes)
    if not wait or not armed or report.failed:
        # Not waited for: done once armed, or not consistent whatever happens at T (the pairs
        # armed stay armed: the report says so; `cancel` disarms them).
        return report
    if on_armed is not None:
        on_armed(report)
    await asyncio.sleep(max(0.0, (at_ns - time.time_ns()) / 1e9))
    report.pairs = [p for p in report.pairs if not p.ok]  # the seal's answers replace them
    jobs = [
        Job(controller=b.controller, tag=b, run=_send(PairOp.SUSPEND_WAIT, b, at_ns, {}))
        for b in armed
    ]
    for result in await session.engine.run_all(jobs):
        arms = report.requests[result.job.tag.controller]
        _collect(report, result, PairOp.SUSPEND_WAIT)
        report.requests[result.job.tag.controller] += arms
    report.armed = False
    report.elapsed_s = time.perf_counter() - started
    return report


# Cancelling a scheduled suspend: a pair with nothing armed, or whose T has passed.
_NOT_CANCELLABLE = (SuspendNotArmed.code, SuspendTimeInPast.code)


async def cancel(session: HostSession, group: Group) -> GroupReport:
    """Disarm every pair's armed suspend before its T: one request per primary controller.

    A pair with nothing armed is left as it is (ok, it says so); if no pair at all had a
    suspend to cancel, InputError names what each is instead."""
    report = await run_operation(
        session, group, PairOp.SUSPEND_CANCEL, planned=plan(group, PairOp.SUSPEND)
    )
    report.disarmed = sum(1 for p in report.pairs if p.ok)
    times = sorted({p.at_ns for p in report.pairs if p.ok})
    report.at_ns = times[-1] if times else 0
    not_armed = [p for p in report.pairs if p.code == SuspendNotArmed.code]
    if not report.disarmed and all(p.code in _NOT_CANCELLABLE for p in report.pairs):
        states: dict[str, int] = {}
        for p in report.pairs:
            states[p.state.name] = states.get(p.state.name, 0) + 1
        passed = [p for p in report.pairs if p.code == SuspendTimeInPast.code]
        raise InputError(
            f"group {group.name}: suspend --cancel: nothing to cancel: no pair has a suspend "
            "armed for a time still to come ("
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + (f"; {passed[0].message}" if passed else "")
            + "): --cancel disarms a suspend armed by `group suspend --at/--in` before its T"
        )
    for p in not_armed:
        p.ok = True  # nothing to cancel on this pair: not a failure of the cancel
    return report


__all__ = [
    "UNKNOWN",
    "Batch",
    "GroupReport",
    "PairOutcome",
    "PairStatus",
    "cancel",
    "plan",
    "read_states",
    "request_timeout_s",
    "run_operation",
    "status",
    "suspend",
    "swap_home",
]


UNKNOWN = "UNKNOWN"
"""How a state that could not be read is shown (never a state nobody reported)."""


@dataclass(slots=True, kw_only=True)
class PairStatus:
    """One pair's state as read from a controller, and which end it was read at."""

    pair: GroupPair
    state: PairState | None
    """The state read; None when no controller of the pair could be read (UNKNOWN)."""
    side: str | None = None
    """Where `state` was read: "primary", "secondary" (the primary could not be read), or
    None (neither could)."""
    role: PairRole = PairRole.NONE
    """The role the controller reported for that device."""
    suspend_at_ns: int = 0
    dirty_tracks: int = 0
    lag_bytes: int = 0
    lag_ns: int = 0
    """Age of the oldest update not yet confirmed by the secondary (0: none waiting)."""
    journal_bytes: int = 0
    """The journal bytes of the end read (DeviceStatus.journal_bytes)."""
    mode: CopyMode | None = None
    consistency_group: bool = False
    consistency_time_ns: int = 0
    """The C the end read keeps (a secondary of an async consistency group); 0 when none."""
    error: str = ""
    """Why the end read first (the primary) could not be read; for an UNKNOWN state, why
    neither end could."""

    @property
    def state_name(self) -> str:
        """The state's name, or UNKNOWN."""
        return UNKNOWN if self.state is None else self.state.name

    def describe(self) -> str:
        """For a person: `duplex`, `duplex (read at the secondary)`, `UNKNOWN: why`."""
        if self.state is None:
            return f"{UNKNOWN}: {self.error}"
        name = DISPLAY_NAMES[self.state]
        return name if self.side == "primary" else f"{name} (read at the {self.side})"

    @property
    def armed_at_ns(self) -> int:
        """The T of a suspend armed and still to come on this pair, 0 when none."""
        mirroring = self.state in (PairState.DUPLEX, PairState.PENDING)
        return self.suspend_at_ns if mirroring else 0


def _end(pair: GroupPair, side: str) -> tuple[str, HardwareAddress]:
    """The acting host's controller ("" when it has no path) and the device of one end."""
    if side == "primary":
        return pair.primary_controller, pair.primary
    return pair.secondary_controller, pair.secondary


async def status(session: HostSession, group: Group, *, first: str = "primary") -> list[PairStatus]:
    """Every pair's state: one query per controller, all at once, at the primaries (`first`
    "secondary": at the secondaries); a pair whose device there cannot be read (no path,
    controller down, device not reported) is read at its other end, in a second round; a
    pair neither end answers for is UNKNOWN, with why. No state is ever made up."""
    second = "secondary" if first == "primary" else "primary"
    found: dict[int, PairStatus] = {}
    why_not: dict[int, str] = {}
    wanted: dict[int, tuple[str, HardwareAddress]] = {}
    for i, pair in enumerate(group.pairs):
        controller, device = _end(pair, first)
        if controller:
            wanted[i] = (controller, device)
        else:
            why_not[i] = f"this host has no path to the {first} {device}"
    read, errors = await read_states(session, wanted)
    for i, device_status in read.items():
        found[i] = _from_device(group.pairs[i], device_status, first)
    why_not.update(errors)
    wanted = {}
    for i in why_not:
        controller, device = _end(group.pairs[i], second)
        if controller:
            wanted[i] = (controller, device)
        else:
            errors[i] = f"this host has no path to the {second} {device}"
    read, more = await read_states(session, wanted)
    errors.update(more)
    for i, device_status in read.items():
        found[i] = _from_device(group.pairs[i], device_status, second, error=why_not[i])
    for i, why in why_not.items():
        if i not in found:
            found[i] = PairStatus(
                pair=group.pairs[i], state=None, error=f"{first}: {why}; {second}: {errors[i]}"
            )
    return [found[i] for i in range(len(group.pairs))]


def _from_device(pair: GroupPair, device: DeviceStatus, side: str, error: str = "") -> PairStatus:
    return PairStatus(
        pair=pair,
        state=device.state,
        side=side,
        role=device.role,
        suspend_at_ns=device.suspend_at_ns,
        dirty_tracks=device.dirty_tracks,
        lag_bytes=device.lag_bytes,
        lag_ns=device.lag_ns,
        journal_bytes=device.journal_bytes,
        mode=device.mode,
        consistency_group=device.consistency_group,
        consistency_time_ns=device.consistency_time_ns,
        error=error,
    )


async def read_states(
    session: HostSession, devices: dict[int, tuple[str, HardwareAddress]]
) -> tuple[dict[int, DeviceStatus], dict[int, str]]:
    """Query the devices (pair index -> (controller, address)), one request per controller.
    Returns what was read, and for every other index why it could not be."""
    by_controller: dict[str, list[int]] = {}
    for i, (controller, _) in devices.items():
        by_controller.setdefault(controller, []).append(i)

    def query(keys: tuple[int, ...]) -> Callable[[Channel], Awaitable[Any]]:
        async def run(channel: Channel) -> Any:
            return await channel.query(keys)

        return run

    jobs = [
        Job(
            controller=c,
            tag=indexes,
            run=query(tuple(devices[i][1].device_key for i in indexes)),
        )
        for c, indexes in sorted(by_controller.items())
    ]
    read: dict[int, DeviceStatus] = {}
    errors: dict[int, str] = {}
    for result in await session.engine.run_all(jobs):
        indexes = result.job.tag
        if result.error is not None or result.value is None:
            for i in indexes:
                errors[i] = f"controller {result.job.controller} not reached: {result.error}"
            continue
        by_device = {s.device: s for s in result.value}
        for i in indexes:
            controller, address = devices[i]
            got = by_device.get(address.device_key)
            if got is None or got.status:
                errors[i] = f"controller {controller} did not report {address}"
            else:
                read[i] = got
    return read, errors


async def shadow(
    session: HostSession,
    group: Group,
    tertiaries: dict[str, HardwareAddress],
    *,
    dry_run: bool = False,
) -> GroupReport:
    """Start a shadow copy of every suspended secondary onto its tertiary (secondary address
    -> tertiary address, on the same controller): one request per secondary controller."""
    started = time.perf_counter()
    report = GroupReport(group=group.name, op="shadow", dry_run=dry_run)
    if dry_run:
        await _dry_run(session, report, group, PairOp.SHADOW, tertiaries)
        report.elapsed_s = time.perf_counter() - started
        return report
    batches: dict[str, list[tuple[PairItem, GroupPair]]] = {}
    for pair in group.pairs:
        tertiary = tertiaries.get(str(pair.secondary))
        if not pair.secondary_controller or tertiary is None:
            report.pairs.append(
                PairOutcome(
                    pair=pair,
                    ok=False,
                    state=PairState.SIMPLEX,
                    message=f"{pair.name}: no path to secondary {pair.secondary} or no tertiary",
                )
            )
            continue
        item = PairItem(device=pair.secondary.device_key, peer_device=tertiary.device_key)
        batches.setdefault(pair.secondary_controller, []).append((item, pair))
    planned = [_batch(c, rows) for c, rows in sorted(batches.items())]
    jobs = [
        Job(controller=b.controller, tag=b, run=_send(PairOp.SHADOW, b, 0, {})) for b in planned
    ]
    for result in await session.engine.run_all(jobs):
        _collect(report, result, PairOp.SHADOW)
    report.elapsed_s = time.perf_counter() - started
    return report
