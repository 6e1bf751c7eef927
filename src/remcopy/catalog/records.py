# What the catalog hands back: frozen value types, one per kind of row.
#
# Rules this module keeps:
# - Every record is a frozen dataclass built from a database row by its named constructor,
#   `from_row`. The query that feeds a record selects exactly the record's fields, in order
#   (`queries.py` builds its column list from `Record.columns()`, and a test checks every such
#   query), so `from_row` can build by position: reading 10,000 map entries is a hot path, and
#   by-name access on rows costs about twice as much.
# - Fields are plain types (`str` for hardware addresses, device numbers and volsers, `int`
#   nanoseconds for times): the catalog stores what the management layer learned and does not
#   depend on the modules that parse those identifiers. Callers validate before they store.
# - Records that describe input (MapEntry, ScanFailure, Pair, GroupMapRow) are the same types
#   the catalog returns, so what was stored reads back equal.
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Self

OperationResult = Literal["ok", "failed"]
ConflictKind = Literal["volser_at_two_addresses", "address_changed", "hosts_disagree"]


class Record:
    """What the catalog's row-backed records share: `columns()` and `from_row`."""

    __slots__ = ()

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The record's field names, in order: what its queries select."""
        return tuple(field.name for field in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Self:
        """The record a row of one of its queries describes."""
        return cls(*row)


# Hosts and device maps (issue 5).


@dataclass(frozen=True, slots=True)
class Host(Record):
    """A host's I/O definition as stored: the parsed definition as JSON, with its times."""

    name: str
    definition: dict[str, Any]
    created_ns: int
    updated_ns: int


@dataclass(frozen=True, slots=True)
class MapEntry(Record):
    """One device a scan found: device number <-> hardware address <-> volser, and its state.

    `state` and `role` are the values of `remcopy.states.PairState` and `PairRole` ("DUPLEX",
    "secondary"); the cross-host checks rely on role "secondary" to excuse a pair's secondary
    for carrying its primary's volser. `controller` names the controller (or its endpoint)
    the scan reached the device through.
    """

    device_number: str
    hardware_address: str
    volser: str
    capacity_bytes: int
    state: str
    role: str
    online: bool
    controller: str


@dataclass(frozen=True, slots=True)
class ScanFailure(Record):
    """A device a scan asked about that did not answer, and why."""

    device_number: str
    reason: str


@dataclass(frozen=True, slots=True)
class Scan(Record):
    """One stored map version of a host: when it was scanned and how much it found."""

    id: int
    host: str
    scanned_at_ns: int
    partial: bool
    entry_count: int
    failure_count: int


@dataclass(frozen=True, slots=True)
class MapChange:
    """A device number whose volser or hardware address differs between two scans."""

    device_number: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class MapDiff:
    """What changed in a host's map between a scan and the scan before it.

    `failed` holds devices of the previous map that did not answer this time: they are not
    `gone`, the scan just could not tell. With no previous scan every entry is `new`.
    """

    host: str
    scan_id: int
    previous_scan_id: int | None
    new: tuple[MapEntry, ...]
    gone: tuple[MapEntry, ...]
    volser_changed: tuple[MapChange, ...]
    address_changed: tuple[MapChange, ...]
    failed: tuple[MapEntry, ...]

    @property
    def changed(self) -> bool:
        return bool(self.new or self.gone or self.volser_changed or self.address_changed)


@dataclass(frozen=True, slots=True)
class Sighting:
    """Where one host's map saw a volume: the evidence behind a MapConflict."""

    host: str
    scan_id: int
    device_number: str
    hardware_address: str
    volser: str


@dataclass(frozen=True, slots=True)
class MapConflict:
    """Something no single host can see: the maps of all hosts, taken together, disagree.

    kinds:
    - `volser_at_two_addresses`: `key` is a volser that current maps show at two or more
      hardware addresses (secondaries of pairs, which carry their primary's volser, excepted).
    - `address_changed`: `key` is `host/device number`, whose hardware address changed since
      that host's previous scan; the sightings are the previous and the current one.
    - `hosts_disagree`: `key` is a hardware address at which current maps show different volsers.
    """

    kind: ConflictKind
    key: str
    sightings: tuple[Sighting, ...]

    @property
    def message(self) -> str:
        seen = ", ".join(
            f"{s.host}/{s.device_number}={s.hardware_address}({s.volser})" for s in self.sightings
        )
        what = {
            "volser_at_two_addresses": "volser at more than one hardware address",
            "address_changed": "device number now reaches another hardware address",
            "hosts_disagree": "hosts see different volsers at one hardware address",
        }[self.kind]
        return f"{what}: {self.key}: {seen}"


# Operation log.


@dataclass(frozen=True, slots=True)
class Operation(Record):
    """One logged operation: who did what to which target, when, how long, and how it ended."""

    id: int
    who: str
    op: str
    target: str
    started_ns: int
    duration_s: float
    result: OperationResult
    details: dict[str, Any]


# Groups and group maps (issue 6).


@dataclass(frozen=True, slots=True)
class Pair(Record):
    """A copy pair of a group: primary -> secondary by hardware address, its volser and mode."""

    primary_address: str
    secondary_address: str
    volser: str | None
    mode: str


@dataclass(frozen=True, slots=True)
class Group(Record):
    """A stored copy group: its options as JSON, its times, and how many pairs it has."""

    name: str
    options: dict[str, Any]
    created_ns: int
    updated_ns: int
    reversed: bool
    """The group's current direction: True after a failback, when the defined secondaries
    are the primaries (the pairs copy from them to the defined primaries)."""
    pair_count: int


@dataclass(frozen=True, slots=True)
class GroupMapRow(Record):
    """A pair as one host sees it: both device numbers on that host, None where it cannot."""

    primary_address: str
    secondary_address: str
    volser: str | None
    primary_device: str | None
    secondary_device: str | None


@dataclass(frozen=True, slots=True)
class GroupMap(Record):
    """That a group was loaded for a host: when, and how many pairs its map has rows for."""

    group: str
    host: str
    loaded_at_ns: int
    row_count: int
