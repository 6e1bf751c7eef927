# The catalog's judgements, as pure functions over records and rows: no I/O here.
#
# Why apart from the store: these are the rules a person reads when a map diff or a refused
# group surprises them, and they are easier to read (and to test) without transactions around
# them. The store fetches, calls these, and writes or raises.
#
# Rules this module keeps:
# - Every problem found is reported, never just the first: "a definition with one bad pair is
#   rejected whole, with every bad line named" (DESIGN.md section 3).
# - Results are sorted or kept in definition order, so the same input gives the same report.
#   Sorting of names happens here, in Python (code point order), not in SQL: a PostgreSQL
#   database with a language collation would order "PAY#1" and "PAY01" differently from SQLite.
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import RowMapping

from remcopy.catalog.records import (
    ConflictKind,
    GroupMapRow,
    MapChange,
    MapConflict,
    MapDiff,
    MapEntry,
    Pair,
    ScanFailure,
    Sighting,
)
from remcopy.ids import device_number_order


def duplicates(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, sorted."""
    return sorted(value for value, count in Counter(values).items() if count > 1)


# Device maps.


def diff_maps(
    host: str,
    scan_id: int,
    previous_scan_id: int | None,
    current: Sequence[MapEntry],
    previous: Sequence[MapEntry],
    failures: Sequence[ScanFailure],
) -> MapDiff:
    """What changed from `previous` to `current`, by device number.

    A device of the previous map that is missing now but listed among the current scan's
    failures is `failed`, not `gone`: the scan could not ask it, which says nothing about
    whether it is still there.
    """
    now = {entry.device_number: entry for entry in current}
    before = {entry.device_number: entry for entry in previous}
    unanswered = {failure.device_number for failure in failures}
    missing = [
        before[device] for device in sorted(before.keys() - now.keys(), key=device_number_order)
    ]
    volser_changed, address_changed = [], []
    for device in sorted(now.keys() & before.keys(), key=device_number_order):
        old, new = before[device], now[device]
        if old.volser != new.volser:
            volser_changed.append(MapChange(device, old.volser, new.volser))
        if old.hardware_address != new.hardware_address:
            address_changed.append(MapChange(device, old.hardware_address, new.hardware_address))
    return MapDiff(
        host=host,
        scan_id=scan_id,
        previous_scan_id=previous_scan_id,
        new=tuple(
            now[device] for device in sorted(now.keys() - before.keys(), key=device_number_order)
        ),
        gone=tuple(entry for entry in missing if entry.device_number not in unanswered),
        volser_changed=tuple(volser_changed),
        address_changed=tuple(address_changed),
        failed=tuple(entry for entry in missing if entry.device_number in unanswered),
    )


def conflicts_from(
    volser_rows: Iterable[RowMapping],
    change_rows: Iterable[RowMapping],
    address_rows: Iterable[RowMapping],
) -> list[MapConflict]:
    """Group the cross-host check queries' rows into conflicts: by kind, then by key."""
    conflicts: list[MapConflict] = []
    conflicts += _grouped("volser_at_two_addresses", volser_rows, lambda row: row["volser"])
    changes: list[MapConflict] = []
    for row in change_rows:
        before = Sighting(
            row["host"],
            row["before_scan_id"],
            row["device_number"],
            row["before_address"],
            row["before_volser"],
        )
        changes.append(
            MapConflict(
                kind="address_changed",
                key=f"{row['host']}/{row['device_number']}",
                sightings=(before, _sighting(row)),
            )
        )
    conflicts += sorted(changes, key=lambda conflict: conflict.key)
    conflicts += _grouped("hosts_disagree", address_rows, lambda row: row["hardware_address"])
    return conflicts


def _grouped(kind: ConflictKind, rows: Iterable[RowMapping], key_of: Any) -> list[MapConflict]:
    by_key: dict[str, list[Sighting]] = {}
    for row in rows:
        by_key.setdefault(key_of(row), []).append(_sighting(row))
    return [
        MapConflict(kind=kind, key=key, sightings=tuple(sorted(seen, key=_where)))
        for key, seen in sorted(by_key.items())
    ]


def _where(sighting: Sighting) -> tuple[str, tuple[int, str]]:
    return sighting.host, device_number_order(sighting.device_number)


def _sighting(row: RowMapping) -> Sighting:
    return Sighting(
        row["host"], row["scan_id"], row["device_number"], row["hardware_address"], row["volser"]
    )


# Groups.


def definition_problems(pairs: Sequence[Pair]) -> list[str]:
    """Every address a group definition uses in two places, in definition order."""
    primaries = Counter(pair.primary_address for pair in pairs)
    secondaries = Counter(pair.secondary_address for pair in pairs)
    # A pair with one address at both ends is reported as that, not also as "a primary and a
    # secondary", unless the address is used by another pair too.
    loops = Counter(p.primary_address for p in pairs if p.primary_address == p.secondary_address)
    problems = [f"address={address} is both ends of one pair" for address in loops]
    for address in _in_order(a for pair in pairs for a in _ends(pair)):
        if primaries[address] > 1:
            problems.append(f"address={address} is the primary of {primaries[address]} pairs")
        if secondaries[address] > 1:
            problems.append(f"address={address} is the secondary of {secondaries[address]} pairs")
        used_elsewhere = primaries[address] + secondaries[address] > 2 * loops[address]
        if primaries[address] and secondaries[address] and used_elsewhere:
            problems.append(f"address={address} is a primary and a secondary")
    return problems


def elsewhere_problems(pairs: Sequence[Pair], taken: Iterable[RowMapping]) -> list[str]:
    """Every address of `pairs` that a pair of another group (`taken`) already uses."""
    owner: dict[str, str] = {}
    for row in taken:
        owner[row["primary_address"]] = f"group={row['group_name']} as primary"
        owner[row["secondary_address"]] = f"group={row['group_name']} as secondary"
    return [
        f"address={address} is already in {owner[address]}"
        for address in _in_order(a for pair in pairs for a in _ends(pair))
        if address in owner
    ]


def pair_changes(
    old: Sequence[Pair], new: Sequence[Pair]
) -> tuple[list[str], list[tuple[int, Pair]], list[tuple[int, str]]]:
    """How to turn a group's stored pairs into a new list, keeping unchanged pairs in place.

    Returns (primary addresses to delete, (position, pair) to insert, (position, primary
    address) to move). An unchanged pair keeps its row, and so its group map rows; a changed
    pair (same primary, anything else different) is deleted and inserted, and its group map
    rows go with it, since they described the old pair.
    """
    stored = {pair.primary_address: (position, pair) for position, pair in enumerate(old)}
    wanted = {pair.primary_address: (position, pair) for position, pair in enumerate(new)}
    deleted = {a for a, (_, pair) in stored.items() if a not in wanted or wanted[a][1] != pair}
    delete = [a for a in stored if a in deleted]
    insert = [
        (position, pair)
        for a, (position, pair) in wanted.items()
        if a not in stored or a in deleted
    ]
    move = [
        (position, a)
        for a, (position, _) in wanted.items()
        if a in stored and a not in deleted and stored[a][0] != position
    ]
    return delete, insert, move


def group_map_problems(pairs: Sequence[Pair], rows: Sequence[GroupMapRow]) -> list[str]:
    """Every way `rows` fails to be exactly one row per pair of the group, matching the pair."""
    by_primary = {pair.primary_address: pair for pair in pairs}
    counts = Counter(row.primary_address for row in rows)
    problems: list[str] = []
    for row in rows:
        pair = by_primary.get(row.primary_address)
        if pair is None:
            problems.append(
                f"address={row.primary_address} is not the primary of a pair of the group"
            )
        elif pair.secondary_address != row.secondary_address:
            problems.append(
                f"address={row.primary_address} pairs with {pair.secondary_address}, "
                f"not {row.secondary_address}"
            )
    problems += [f"address={a} has {counts[a]} rows" for a in _in_order(counts) if counts[a] > 1]
    problems += [f"address={a} has no row" for a in by_primary if a not in counts]
    return problems


def _ends(pair: Pair) -> tuple[str, str]:
    return pair.primary_address, pair.secondary_address


def _in_order(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
