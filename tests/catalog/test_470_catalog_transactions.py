# One transaction per write: a write that fails changes nothing, and writes never interleave.
from __future__ import annotations

import threading

import pytest
from catalog_helpers import FakeClock, address, entry, map_row, pair, scanned

from remcopy.catalog import (
    Catalog,
    DuplicateDevice,
    GroupMapMismatch,
    PairConflict,
    ScanFailure,
)
from remcopy.errors import RemcopyError

MAP = [entry("1A00", address(64015, 0), "PAY001"), entry("1A01", address(64015, 1), "PAY002")]


def test_Catalog_store_scan_failing_midway_changes_nothing(catalog: Catalog) -> None:
    """A scan the database refuses midway (a device listed twice) leaves the last map as it was."""
    first = scanned(catalog, "hosta", MAP)
    twice = [
        *MAP,
        entry("1A02", address(64015, 2), "PAY003"),
        entry("1A01", address(64015, 9), "X"),
    ]
    with pytest.raises(DuplicateDevice, match="host=hosta device=1A01") as raised:
        catalog.store_scan("hosta", scanned_at_ns=2, entries=twice, failures=[], partial=False)
    assert raised.value.devices == ["1A01"]
    assert [s.id for s in catalog.scans_all("hosta")] == [first]
    assert catalog.map_all("hosta") == MAP
    assert catalog.map_diff("hosta").previous_scan_id is None


def test_Catalog_store_scan_failure_listed_twice_changes_nothing(catalog: Catalog) -> None:
    """A failure list naming one device twice is refused whole, entries included."""
    first = scanned(catalog, "hosta", MAP)
    failures = [ScanFailure("1A05", "timeout"), ScanFailure("1A05", "link down")]
    with pytest.raises(DuplicateDevice, match="device=1A05"):
        catalog.store_scan(
            "hosta", scanned_at_ns=2, entries=MAP[:1], failures=failures, partial=True
        )
    assert [s.id for s in catalog.scans_all("hosta")] == [first]
    assert catalog.failures_all("hosta") == []


def test_Catalog_works_on_after_a_failed_write(catalog: Catalog) -> None:
    """After a refused write the same catalog stores the next write normally."""
    scanned(catalog, "hosta", MAP)
    with pytest.raises(DuplicateDevice):
        catalog.store_scan("hosta", scanned_at_ns=2, entries=MAP + MAP, failures=[], partial=False)
    second = catalog.store_scan(
        "hosta", scanned_at_ns=3, entries=MAP[:1], failures=[], partial=False
    )
    assert catalog.scans_all("hosta")[0].id == second
    assert catalog.map_all("hosta") == MAP[:1]


def test_Catalog_put_group_replace_refused_changes_nothing(catalog: Catalog) -> None:
    """A refused redefinition leaves the group's options, pairs and group maps as they were."""
    catalog.put_host("hosta", {}, replace=False)
    pay = [pair(address(64015, n), address(64016, n)) for n in range(3)]
    hr = [pair(address(64015, 9), address(64016, 9))]
    catalog.put_group("pay", {"mode": "sync"}, pay, replace=False)
    catalog.put_group("hr", {}, hr, replace=False)
    rows = [map_row(p, f"1A0{n}", None) for n, p in enumerate(pay)]
    catalog.store_group_map("pay", "hosta", rows, loaded_at_ns=1)
    with pytest.raises(PairConflict, match="is already in group=hr"):
        catalog.put_group("pay", {"mode": "async"}, [pay[2], *hr], replace=True)
    assert catalog.group_one("pay").options == {"mode": "sync"}
    assert catalog.pairs_all("pay") == pay
    assert catalog.group_map_all("pay", "hosta") == rows


def test_Catalog_store_group_map_refused_changes_nothing(catalog: Catalog) -> None:
    """A refused group map leaves the map loaded before in place."""
    catalog.put_host("hosta", {}, replace=False)
    pay = [pair(address(64015, n), address(64016, n)) for n in range(2)]
    catalog.put_group("pay", {}, pay, replace=False)
    rows = [map_row(p, f"1A0{n}", "2B00") for n, p in enumerate(pay)]
    catalog.store_group_map("pay", "hosta", rows, loaded_at_ns=1)
    with pytest.raises(GroupMapMismatch, match="has no row"):
        catalog.store_group_map("pay", "hosta", rows[:1], loaded_at_ns=2)
    assert catalog.group_map_all("pay", "hosta") == rows
    assert catalog.group_maps_all("pay")[0].loaded_at_ns == 1


def test_Catalog_writes_from_two_hosts_do_not_interleave(catalog_url: str) -> None:
    """Two catalogs racing for one address: one group gets it, the other is told why."""
    clock = FakeClock()
    shared = address(64015, 0)
    ready = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def claim(group: str, secondary: str) -> None:
        with Catalog.open(catalog_url, clock_ns=clock) as catalog:
            ready.wait(timeout=30)
            try:
                catalog.put_group(group, {}, [pair(shared, secondary)], replace=False)
                outcomes[group] = "stored"
            except RemcopyError as exc:
                outcomes[group] = type(exc).__name__

    Catalog.open(catalog_url).close()  # migrate once, before the race
    threads = [
        threading.Thread(target=claim, args=("pay", address(64016, 0))),
        threading.Thread(target=claim, args=("hr", address(64016, 1))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["PairConflict", "stored"]
    with Catalog.open(catalog_url) as catalog:
        winner = next(group for group, outcome in outcomes.items() if outcome == "stored")
        assert [g.name for g in catalog.groups_all()] == [winner]
