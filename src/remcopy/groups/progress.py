# Copy progress of a group operation: tracks copied per pair and in all, until every copy
# the operation started is done.
#
# Why: an establish copies every track of every volume, a resume or failback the changed
# ones, a shadow copy a whole secondary; on thousands of pairs that takes a while, and the
# operator (CLI progress bar, TUI) wants to see it move. The controllers run the copies; this
# module asks them, one query per controller per round (the query reply carries each
# device's `copy_left_tracks`), and turns the answers into one `OperationProgress` value per
# round for a callback. The callback is the whole interface: front ends draw it, tests
# record it.
#
# A pair's copy is done when its device left PENDING (establish, resume, failback: DUPLEX
# when it finished, SUSPENDED_ERROR if the link failed) or, for a shadow copy, when the
# controller no longer reports it running. Copied = total - left, never shown going back (a
# host write during a resync can mark a track again), and equal to the total once the copy
# finished.
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from remcopy.errors import BrokenResourceError
from remcopy.groups.model import GroupPair
from remcopy.groups.operations import GroupReport, PairOutcome
from remcopy.groups.preview import AT_PRIMARY
from remcopy.host.channel import Channel
from remcopy.host.engine import Job
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import PairState
from remcopy.wire.native import DeviceStatus, PairOp

# How often the controllers are asked while copies run: a display refresh rate, not a
# synchronisation (each round is one small query per controller).
POLL_INTERVAL_S_DEFAULT: Final = 0.2

_FLAG_SHADOW_RUNNING: Final = 0x01
_COPYING_OPS: Final = frozenset({"establish", "resume", "failback", "shadow"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PairProgress:
    """One pair's copy."""

    pair: GroupPair
    copied_tracks: int
    total_tracks: int
    state: PairState
    """The copying device's state now (DUPLEX once an establish/resume/failback finished)."""
    done: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationProgress:
    """Every copy an operation started, at one moment. Passed to the progress callback."""

    group: str
    op: str
    pairs: tuple[PairProgress, ...]
    elapsed_s: float
    """Since the copies started being followed."""

    @property
    def copied_tracks(self) -> int:
        return sum(p.copied_tracks for p in self.pairs)

    @property
    def total_tracks(self) -> int:
        return sum(p.total_tracks for p in self.pairs)

    @property
    def done(self) -> bool:
        """Every copy finished (or stopped: see each pair's state)."""
        return all(p.done for p in self.pairs)


ProgressCallback = Callable[[OperationProgress], None]
"""Called after each round of queries, and once more when every copy is done."""


def copies_started(report: GroupReport) -> list[PairOutcome]:
    """The pairs whose copy the operation started (none for a dry run)."""
    if report.dry_run or report.op not in _COPYING_OPS:
        return []
    return [p for p in report.pairs if p.ok]


def _copying_side(op: str, pair: GroupPair) -> tuple[str, HardwareAddress]:
    """The controller (host's name) and device that runs the pair's copy."""
    if op == "shadow" or PairOp[op.upper()] not in AT_PRIMARY:
        return pair.secondary_controller, pair.secondary
    return pair.primary_controller, pair.primary


async def follow_copies(
    session: HostSession,
    report: GroupReport,
    progress: ProgressCallback,
    *,
    interval_s: float = POLL_INTERVAL_S_DEFAULT,
) -> OperationProgress:
    """Ask the controllers about the copies `report`'s operation started until all are done,
    calling `progress` after each round; returns the last progress. Updates the report's
    outcomes to the final states and sets `report.copy_s`."""
    started = time.perf_counter()
    outcomes = copies_started(report)
    sides = {id(o): _copying_side(report.op, o.pair) for o in outcomes}
    copied = {id(o): 0 for o in outcomes}
    last = OperationProgress(group=report.group, op=report.op, pairs=(), elapsed_s=0.0)
    while True:
        statuses = await _query(session, list(sides.values()))
        pairs = []
        for outcome in outcomes:
            status = statuses[sides[id(outcome)]]
            total = outcome.tracks
            if report.op == "shadow":
                done = not status.flags & _FLAG_SHADOW_RUNNING
            else:
                done = status.state is not PairState.PENDING
            finished = done and (report.op == "shadow" or status.state is PairState.DUPLEX)
            now = total if finished else min(total, max(0, total - status.copy_left_tracks))
            copied[id(outcome)] = max(copied[id(outcome)], now)
            outcome.state = status.state
            pairs.append(
                PairProgress(
                    pair=outcome.pair,
                    copied_tracks=copied[id(outcome)],
                    total_tracks=total,
                    state=status.state,
                    done=done,
                )
            )
        last = OperationProgress(
            group=report.group,
            op=report.op,
            pairs=tuple(pairs),
            elapsed_s=time.perf_counter() - started,
        )
        progress(last)
        if last.done:
            report.copy_s = last.elapsed_s
            return last
        await asyncio.sleep(interval_s)


async def _query(
    session: HostSession, devices: list[tuple[str, HardwareAddress]]
) -> dict[tuple[str, HardwareAddress], DeviceStatus]:
    by_controller: dict[str, list[HardwareAddress]] = {}
    for controller, address in devices:
        by_controller.setdefault(controller, []).append(address)

    def query(addresses: list[HardwareAddress]) -> Callable[[Channel], Awaitable[Any]]:
        async def run(channel: Channel) -> Any:
            return await channel.query(tuple(a.device_key for a in addresses))

        return run

    jobs = [
        Job(controller=c, tag=(c, addresses), run=query(addresses))
        for c, addresses in sorted(by_controller.items())
    ]
    out: dict[tuple[str, HardwareAddress], DeviceStatus] = {}
    for result in await session.engine.run_all(jobs):
        controller, addresses = result.job.tag
        if result.error is not None or result.value is None:
            raise BrokenResourceError(
                f"copy progress: controller {controller} could not be asked: {result.error}"
            ) from result.error
        by_key = {s.device: s for s in result.value}
        for address in addresses:
            status = by_key.get(address.device_key)
            if status is None or status.status:
                raise BrokenResourceError(
                    f"copy progress: controller {controller} did not report {address}"
                )
            out[(controller, address)] = status
    return out


__all__ = [
    "POLL_INTERVAL_S_DEFAULT",
    "OperationProgress",
    "PairProgress",
    "ProgressCallback",
    "copies_started",
    "follow_copies",
]
