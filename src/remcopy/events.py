# Controller events as typed values: what changed, on which controller, in which order.
#
# Why: administrators and scripts follow what happens to pairs (`remcopy events --follow`,
# `remcopy group wait`, a controller freeze watcher, the fault campaigns). A free-text line is
# easy to print and hard to use: every reader wrote its own regular expression, and a reader
# could not tell whether it had missed something. Here an event is a value with a kind and
# typed fields, a sequence number per controller, and the human line kept as `text`.
#
# Theory of operation
# - Each controller numbers its events 1, 2, 3, ... (`seq`), and the numbering survives a
#   restart (controller/eventlog.py keeps the recent events and the last number on disk). A
#   reader that remembers the last number it saw can ask for everything after it, and knows
#   that nothing was missed when the numbers it gets follow on.
# - Two kinds are never numbered events of their own: GAP tells one subscriber that events it
#   asked for are no longer kept (its `seq` is the last number lost, so the reader's position
#   moves past them), and SUBSCRIBED tells it that the replay is over and the stream is live
#   (its `seq` is the controller's last number at that moment).
# - A subscriber sees only the events its grant reaches (controller/core.py `visible_to`), so
#   the numbers it gets have holes that are not losses. Each event sent to a subscriber says
#   where it follows on (`prev_seq`: the number sent to it before, its resume position or the
#   number it went live at); a number that does not follow on from `prev_seq` is a loss.
# - One JSON form (`to_json`, schema 1) is what `remcopy events` prints and what the event log
#   stores; the wire carries the same fields (wire/native.py).
#
# Pure: no I/O, no clock (the controller stamps `time_ns`).
from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from remcopy.states import PairState

SCHEMA: Final = 1
"""The version of the JSON form of an event (`schema` in every line)."""

Scalar = str | int | float | bool


class EventKind(enum.Enum):
    """What an event reports. The wire code of a kind is its position here: append only."""

    STATE = "state"
    """A pair's state changed on `device`: `old` -> `new`, with its `cause` and T (`at_ns`)."""
    HOLD = "hold"
    """Host writes to `device` (a consistency-group primary) are held after a replication
    error, until the group freezes or the hold expires."""
    FREEZE = "freeze"
    """A consistency group `group` freezes at T (`at_ns`); `detail.phase` says which step:
    started, joined (asked by a sibling), confirmed, or incomplete."""
    ARMED = "armed"
    """A suspend is armed at T (`at_ns`) on `detail.devices` devices."""
    DISARMED = "disarmed"
    """An armed suspend at T was disarmed (cancelled) or skipped (disarmed everywhere)."""
    LINK_UP = "link_up"
    """The replication link to `peer` connected."""
    LINK_DOWN = "link_down"
    """The replication link to `peer` failed (`detail.error` says how), or is not up yet."""
    HEARTBEAT_LOSS = "heartbeat_loss"
    """The replication link to `peer` did not answer a heartbeat in time."""
    SHADOW = "shadow"
    """A shadow copy of `device` onto `detail.target` started or is done (`detail.phase`)."""
    REJOIN = "rejoin"
    """A restarted primary of consistency group `group` asks its siblings whether the group
    froze while it was down, and what came of it."""
    ERROR = "error"
    """Something failed that an operator should see (`detail.error`)."""
    START = "start"
    """The controller started serving."""
    STOP = "stop"
    """The controller is stopping (SIGTERM)."""
    GAP = "gap"
    """To one subscriber: the events numbered `detail.lost_from`..`seq` are not kept any more
    (or the controller's log no longer reaches the subscriber's position)."""
    SUBSCRIBED = "subscribed"
    """To one subscriber: the replay is over; the stream is live from here."""
    RPO = "rpo"
    """An async consistency group's RPO at this secondary (now - C) went over
    `rpo_alert_s` (`detail.over` true) or back under it (false); `detail.rpo_s` says how
    far behind C was then."""


KIND_CODES: Final = tuple(EventKind)
"""Wire codes of the kinds (their order is part of the protocol)."""

UNNUMBERED: Final = frozenset({EventKind.GAP, EventKind.SUBSCRIBED})
"""Kinds sent to one subscriber only: never stored, never given a number of their own."""

# The fields a kind may fill besides the common ones; `to_json` leaves empty ones out.
_OPTIONAL_TEXT: Final = ("controller", "device", "cause", "group", "peer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One event of one controller."""

    kind: EventKind
    seq: int = 0
    """The controller's number for this event: 1, 2, 3, ... across restarts."""
    serial: int = 0
    """The serial of the controller that recorded it."""
    controller: str = ""
    """The name of that controller."""
    time_ns: int = 0
    """Wall time (time.time_ns()) on the controller when it was recorded."""
    text: str = ""
    """The line for people, e.g. `pair 64015:1A00:0A:3F DUPLEX -> SUSPENDED at=... cause=...`."""
    device: str = ""
    """The hardware address of the device it is about, if any."""
    old: PairState | None = None
    new: PairState | None = None
    cause: str = ""
    """Why it happened (an operation, `copy_done`, `replication-error`, `freeze`, ...)."""
    at_ns: int = 0
    """The time T it is about (a suspend or freeze time), 0 when none."""
    group: str = ""
    """The consistency group it is about, if any."""
    peer: str = ""
    """The peer controller (replication link) it is about, if any."""
    detail: Mapping[str, Scalar] = field(default_factory=dict)
    """More typed values, by kind (hold_s, error, devices, lss, phase, lost_from, tags, ...)."""
    prev_seq: int | None = None
    """Set only on an event sent to one subscriber: the number of the event sent to it before
    this one (or its resume position, or the last number when it went live). The events
    numbered between `prev_seq` and `seq` were not for this subscriber (its grant does not
    reach them), not lost. None: not told (an older controller; an event as kept)."""

    def __repr__(self) -> str:
        return f"<Event {self.serial}#{self.seq} {self.kind.value} {self.text!r}>"

    @property
    def numbered(self) -> bool:
        """Whether this is one of the controller's numbered events (not GAP or SUBSCRIBED)."""
        return self.kind not in UNNUMBERED

    def fields(self) -> dict[str, Any]:
        """The fields besides kind, seq, serial and time: what the wire carries as JSON."""
        out: dict[str, Any] = {"text": self.text}
        for name in _OPTIONAL_TEXT:
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.old is not None:
            out["old"] = self.old.name
        if self.new is not None:
            out["new"] = self.new.name
        if self.at_ns:
            out["at_ns"] = self.at_ns
        if self.detail:
            out["detail"] = dict(self.detail)
        if self.prev_seq is not None:
            out["prev_seq"] = self.prev_seq
        return out

    def to_json(self, *, time_text: str | None = None) -> dict[str, Any]:
        """The JSON form (schema 1): what `remcopy events` prints and the event log keeps.
        `time_text`: `time_ns` already formatted (a batch of events shares its time)."""
        if time_text is None:
            when = datetime.datetime.fromtimestamp(self.time_ns / 1e9, tz=datetime.UTC)
            time_text = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
        return {
            "schema": SCHEMA,
            "serial": self.serial,
            "seq": self.seq,
            "time": time_text,
            "time_ns": self.time_ns,
            "kind": self.kind.value,
            **self.fields(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Event:
        """An event from its JSON form; ValueError names the field that is wrong."""
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"event schema must be {SCHEMA} (got {doc.get('schema')!r})")
        try:
            kind = EventKind(doc.get("kind"))
        except ValueError:
            raise ValueError(f"event kind {doc.get('kind')!r} is not known") from None
        return from_fields(
            kind,
            seq=_integer(doc, "seq"),
            serial=_integer(doc, "serial"),
            time_ns=_integer(doc, "time_ns"),
            fields=doc,
        )


def from_fields(
    kind: EventKind, *, seq: int, serial: int, time_ns: int, fields: Mapping[str, Any]
) -> Event:
    """An event from its common values and its other fields (`Event.fields`), checked: a
    field of the wrong type is ValueError naming it; fields not known here are ignored (a
    newer controller may send more)."""
    texts = {name: _text(fields, name) for name in _OPTIONAL_TEXT}
    detail = fields.get("detail", {})
    if not isinstance(detail, dict) or not all(
        isinstance(key, str) and isinstance(value, Scalar) for key, value in detail.items()
    ):
        raise ValueError("event detail must be an object of strings, numbers and booleans")
    return Event(
        kind=kind,
        seq=seq,
        serial=serial,
        time_ns=time_ns,
        text=_text(fields, "text"),
        old=_state(fields, "old"),
        new=_state(fields, "new"),
        at_ns=_integer(fields, "at_ns"),
        detail=detail,
        prev_seq=_integer(fields, "prev_seq") if "prev_seq" in fields else None,
        **texts,
    )


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"event field {name} must be a string (got {type(value).__name__})")
    return value


def lss_list(lss: Iterable[int]) -> str:
    """The `detail.lss` of an event about devices of several LSSs: `0A 0B` (sorted, hex)."""
    return " ".join(f"{value:02X}" for value in sorted(set(lss)))


def lss_of(text: Scalar | None) -> frozenset[int] | None:
    """The LSSs `lss_list` wrote (None: not a list of LSSs, e.g. an older event)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return frozenset(int(part, 16) for part in text.split())
    except ValueError:
        return None


def _integer(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"event field {name} must be a whole number >= 0 (got {value!r})")
    return value


def _state(fields: Mapping[str, Any], name: str) -> PairState | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value not in PairState.__members__:
        raise ValueError(f"event field {name} must be a pair state (got {value!r})")
    return PairState[value]
