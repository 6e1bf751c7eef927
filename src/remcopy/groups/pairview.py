# The per-pair view of a group: one row per pair, both ends read, like Hitachi's
# `pairdisplay -fcx`.
#
# Why: `group status` counts pairs by state; an administrator chasing one slow or suspended pair
# needs the pair itself: the state each end reports (and which ends answered), its mode and
# fence, how far behind the secondary is, since when the pair is in its state and why.
#
# Rules this module keeps:
# - Every value is a controller's own query answer (one query per controller, both ends of
#   every pair in the same round); nothing is made up. An end that did not answer is shown as
#   not read, with why.
# - The copy's figures (lag, changed tracks, copy progress, the last change) come from the
#   pair's primary, which runs the copy; when it cannot be read, from the secondary, and the
#   row says which end answered.
# - Journal bytes are each end's own: at an async primary, written there and not yet confirmed
#   by the secondary; at a secondary of an async consistency group, arrived and held until C
#   passes their stamp (DeviceStatus.journal_bytes). An end not read has None.
# - Consistency time C and RPO (now - C) are shown only where the controllers' answers fix
#   them: a SUSPENDED pair (C = its suspend time T), a sync pair in DUPLEX (C = the read time:
#   the secondary holds every acknowledged write) or SUSPENDED_ERROR (C = the time of the error).
#   Async pairs outside SUSPENDED have none yet: the controllers do not keep a group
#   consistency time (DESIGN.md section 2), so it is None ("-" on screen, null in JSON).
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from remcopy.groups.model import Group, GroupPair
from remcopy.groups.operations import UNKNOWN, read_states
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress, device_number_text
from remcopy.states import PairState
from remcopy.wire.native import DeviceStatus

_SIDES = ("primary", "secondary")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairEnd:
    """One end of a pair as read: its controller's answer, or why there is none."""

    controller: str
    address: HardwareAddress
    number: int | None
    status: DeviceStatus | None
    error: str = ""

    @property
    def state_name(self) -> str:
        return UNKNOWN if self.status is None else self.status.state.name

    def to_json(self) -> dict[str, Any]:
        s = self.status
        return {
            "controller": self.controller or None,
            "device_number": None if self.number is None else device_number_text(self.number),
            "address": str(self.address),
            "state": None if s is None else s.state.name,
            "role": None if s is None else s.role.value,
            "journal_bytes": None if s is None else s.journal_bytes,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PairRow:
    """One pair of the group, both ends, at one reading."""

    pair: GroupPair
    primary: PairEnd
    secondary: PairEnd
    read_at_ns: int

    @property
    def answered(self) -> str:
        """Which ends answered: "both", "primary", "secondary" or "none"."""
        read = [side for side in _SIDES if getattr(self, side).status is not None]
        return "both" if len(read) == 2 else read[0] if read else "none"

    @property
    def source(self) -> DeviceStatus | None:
        """The answer the copy's figures come from: the primary's, else the secondary's."""
        return self.primary.status or self.secondary.status

    @property
    def state(self) -> PairState | None:
        source = self.source
        return None if source is None else source.state

    @property
    def lag_s(self) -> float | None:
        s = self.primary.status
        return None if s is None else s.lag_ns / 1e9

    @property
    def copy_percent(self) -> float | None:
        """DeviceStatus.copy_ratio of the copy's end, in percent (one decimal)."""
        ratio = None if self.source is None else self.source.copy_ratio()
        return None if ratio is None else round(100.0 * ratio, 1)

    @property
    def consistency_ns(self) -> int | None:
        """The consistency time C the secondary keeps for an async consistency group, when it
        answered with one; else DeviceStatus.consistent_as_of of the copy's end (the rules at
        the top)."""
        secondary = self.secondary.status
        if secondary is not None and secondary.consistency_time_ns:
            return secondary.consistency_time_ns
        return None if self.source is None else self.source.consistent_as_of(self.read_at_ns)

    @property
    def rpo_s(self) -> float | None:
        consistent = self.consistency_ns
        return None if consistent is None else max(0, self.read_at_ns - consistent) / 1e9

    def to_json(self) -> dict[str, Any]:
        s, p = self.source, self.primary.status
        return {
            "pair": self.pair.name,
            "volser": self.pair.volser,
            "primary": self.primary.to_json(),
            "secondary": self.secondary.to_json(),
            "answered": self.answered,
            "state": UNKNOWN if s is None else s.state.name,
            "mode": None if s is None or s.mode is None else s.mode.value,
            "fence": None if s is None else s.fence.value,
            "consistency_group": None if s is None else s.consistency_group,
            "lag_bytes": None if p is None else p.lag_bytes,
            "lag_s": self.lag_s,
            "consistency_ns": self.consistency_ns,
            "rpo_s": self.rpo_s,
            "changed_tracks": None if s is None else s.dirty_tracks,
            "tracks": None if s is None else s.tracks,
            "copy_left_tracks": None if s is None else s.copy_left_tracks,
            "copy_percent": self.copy_percent,
            "suspend_at_ns": None if s is None or not s.suspend_at_ns else s.suspend_at_ns,
            "last_change": None
            if s is None
            else {"at_ns": s.changed_at_ns or None, "cause": s.change_cause or None},
        }


def _end(pair: GroupPair, side: str) -> tuple[str, HardwareAddress, int | None]:
    if side == "primary":
        return pair.primary_controller, pair.primary, pair.primary_number
    return pair.secondary_controller, pair.secondary, pair.secondary_number


async def pair_rows(session: HostSession, group: Group) -> list[PairRow]:
    """Every pair of `group` with both ends read: one query per controller, all at once."""
    wanted: dict[int, tuple[str, HardwareAddress]] = {}
    why_not: dict[int, str] = {}
    for i, pair in enumerate(group.pairs):
        for j, side in enumerate(_SIDES):
            controller, address, _ = _end(pair, side)
            if controller:
                wanted[2 * i + j] = (controller, address)
            else:
                why_not[2 * i + j] = f"this host has no path to the {side} {address}"
    read, errors = await read_states(session, wanted)
    read_at_ns = time.time_ns()
    why_not.update(errors)
    rows = []
    for i, pair in enumerate(group.pairs):
        ends = []
        for j, side in enumerate(_SIDES):
            controller, address, number = _end(pair, side)
            status = read.get(2 * i + j)
            ends.append(
                PairEnd(
                    controller=controller,
                    address=address,
                    number=number,
                    status=status,
                    error="" if status is not None else why_not.get(2 * i + j, ""),
                )
            )
        rows.append(PairRow(pair=pair, primary=ends[0], secondary=ends[1], read_at_ns=read_at_ns))
    return rows


__all__ = ["PairEnd", "PairRow", "pair_rows"]
