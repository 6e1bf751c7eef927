# How far behind an async group's secondary site is, for `remcopy group status`: the journal
# bytes at both ends and the group's consistency time C with its RPO.
#
# Why: `group status` reads each pair at one end (the primary, or the secondary when the
# primary cannot be read). An async pair's backlog lives at both ends: at the primary, the
# updates written there that the secondary has not confirmed (its journal); at a secondary of
# a consistency group, the updates that arrived and wait, durable, for C to pass their stamp.
# So for the async pairs the other end is read too, one query per controller, all at once.
#
# Rules this module keeps:
# - Every figure is a sum (or the least C) of controllers' own query answers; an end that was
#   not read is named in `not_read`, and a figure none of whose ends were read is None.
# - The group's C is the least C over the secondaries of its async consistency-group pairs,
#   known only when every one of them was read and has one (DESIGN.md section 2).
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from remcopy.groups.model import Group
from remcopy.groups.operations import PairStatus, read_states
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode
from remcopy.wire.native import DeviceStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class AsyncTotals:
    """The async pairs of a group, both ends read, at one reading."""

    pairs: int
    """Async pairs (as their end read by `group status` says)."""
    primary_journal_bytes: int | None
    """Bytes written at the primaries, not yet confirmed by the secondaries (None: no
    primary of an async pair read)."""
    secondary_journal_bytes: int | None
    """Bytes arrived at the secondaries, held until C passes their stamp (None: no
    secondary of an async pair read)."""
    consistency_ns: int | None
    """The group's consistency time C: the least over its async consistency-group pairs'
    secondaries; None unless every one was read and has one."""
    read_at_ns: int
    not_read: tuple[str, ...] = ()

    @property
    def rpo_s(self) -> float | None:
        c = self.consistency_ns
        return None if c is None else max(0, self.read_at_ns - c) / 1e9

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "journal_bytes": {
                "primary": self.primary_journal_bytes,
                "secondary": self.secondary_journal_bytes,
            },
            "consistency_ns": self.consistency_ns,
            "rpo_s": self.rpo_s,
            "not_read": list(self.not_read),
        }


def _end(status: PairStatus, side: str) -> tuple[str, HardwareAddress]:
    pair = status.pair
    if side == "primary":
        return pair.primary_controller, pair.primary
    return pair.secondary_controller, pair.secondary


async def async_totals(
    session: HostSession, group: Group, statuses: list[PairStatus]
) -> AsyncTotals | None:
    """Read the other end of every async pair of `statuses` (read by `status`) and add up
    both ends; None when the group has no async pair."""
    async_pairs = [
        (i, s) for i, s in enumerate(statuses) if s.mode is CopyMode.ASYNC and s.side is not None
    ]
    if not async_pairs:
        return None
    wanted: dict[int, tuple[str, HardwareAddress]] = {}
    not_read: list[str] = []
    for i, s in async_pairs:
        side = "secondary" if s.side == "primary" else "primary"
        controller, address = _end(s, side)
        if controller:
            wanted[i] = (controller, address)
        else:
            not_read.append(f"{s.pair.name}: this host has no path to the {side} {address}")
    read, errors = await read_states(session, wanted)
    read_at_ns = time.time_ns()
    not_read.extend(f"{statuses[i].pair.name}: {why}" for i, why in sorted(errors.items()))
    primary: list[int] = []
    secondary: list[DeviceStatus | None] = []
    cuts: list[int | None] = []
    for i, s in async_pairs:
        other = read.get(i)
        if s.side == "primary":
            primary.append(s.journal_bytes)
            secondary.append(other)
        else:
            if other is not None:
                primary.append(other.journal_bytes)
            secondary.append(_as_secondary(s))
        if s.consistency_group:
            answer = secondary[-1]
            cuts.append(None if answer is None else answer.consistency_time_ns or None)
    held = [answer.journal_bytes for answer in secondary if answer is not None]
    known = [c for c in cuts if c is not None]
    return AsyncTotals(
        pairs=len(async_pairs),
        primary_journal_bytes=sum(primary) if primary else None,
        secondary_journal_bytes=sum(held) if held else None,
        consistency_ns=min(known) if known and len(known) == len(cuts) else None,
        read_at_ns=read_at_ns,
        not_read=tuple(not_read),
    )


def _as_secondary(s: PairStatus) -> DeviceStatus:
    """The figures `status` kept of a pair read at its secondary."""
    return DeviceStatus(
        device=s.pair.secondary.device_key,
        journal_bytes=s.journal_bytes,
        consistency_time_ns=s.consistency_time_ns,
    )


__all__ = ["AsyncTotals", "async_totals"]
