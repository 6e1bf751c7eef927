# Device maps: each scan stores a new map version of one host; older versions stay readable.
from __future__ import annotations

import pytest
from catalog_helpers import address, entry, scanned

from remcopy.catalog import (
    Catalog,
    CatalogInputError,
    DuplicateDevice,
    HostNotFound,
    MapEntry,
    ScanFailure,
    ScanNotFound,
)

MAP = [
    entry("1A01", address(64015, 1), "PAY002", state="DUPLEX", role="primary"),
    entry("1A00", address(64015, 0), "PAY001", state="DUPLEX", role="primary"),
    entry("2B00", address(64016, 0), "PAY001", state="DUPLEX", role="secondary", online=False),
]


def test_Catalog_store_scan_then_map_all(catalog: Catalog) -> None:
    """A stored scan is the host's current map, every field intact, by device number."""
    scanned(catalog, "hosta", MAP)
    assert catalog.map_all("hosta") == sorted(MAP, key=lambda e: e.device_number)


def test_Catalog_store_scan_keeps_boundary_values(catalog: Catalog) -> None:
    """Six-digit serials, 16 TiB capacities and offline devices read back exactly."""
    big = entry("FFFF", "999999:FFFF:FF:FF", "$#@9ZZ", capacity_bytes=2**44, online=False)
    scanned(catalog, "hosta", [big])
    assert catalog.map_all("hosta") == [big]


def test_Catalog_store_scan_of_ten_thousand_devices(catalog: Catalog) -> None:
    """A 10,000-device map is stored and read back whole in one scan."""
    entries = [
        entry(f"{n:04X}", address(64015 + n // 256, n % 256), f"V{n:05d}") for n in range(10_000)
    ]
    scan_id = scanned(catalog, "hosta", entries)
    assert catalog.map_all("hosta") == entries
    assert catalog.scans_all("hosta")[0].entry_count == 10_000
    assert catalog.map_find_all("hosta", volser="V09999") == [entries[-1]]
    assert scan_id == catalog.scans_all("hosta")[0].id


def test_Catalog_store_scan_unknown_host_is_HostNotFound(catalog: Catalog) -> None:
    """A scan of a host the catalog does not know is HostNotFound."""
    with pytest.raises(HostNotFound):
        catalog.store_scan("ghost", scanned_at_ns=1, entries=MAP, failures=[], partial=False)


def test_Catalog_store_scan_device_both_mapped_and_failed(catalog: Catalog) -> None:
    """A device listed as mapped and as failed is DuplicateDevice naming it."""
    catalog.put_host("hosta", {}, replace=False)
    with pytest.raises(DuplicateDevice, match="device=1A00") as raised:
        catalog.store_scan(
            "hosta",
            scanned_at_ns=1,
            entries=MAP,
            failures=[ScanFailure("1A00", "timeout")],
            partial=True,
        )
    assert raised.value.devices == ["1A00"]
    assert catalog.scans_all("hosta") == []


def test_Catalog_scans_all_newest_first(catalog: Catalog) -> None:
    """scans_all lists a host's scans newest first, with counts, times and the partial flag."""
    first = scanned(catalog, "hosta", MAP, at_ns=100)
    second = catalog.store_scan(
        "hosta",
        scanned_at_ns=200,
        entries=MAP[:1],
        failures=[ScanFailure("1A00", "request timed out"), ScanFailure("2B00", "link down")],
        partial=True,
    )
    scans = catalog.scans_all("hosta")
    assert [s.id for s in scans] == [second, first]
    assert (scans[0].scanned_at_ns, scans[0].partial) == (200, True)
    assert (scans[0].entry_count, scans[0].failure_count) == (1, 2)
    assert (scans[1].entry_count, scans[1].failure_count, scans[1].partial) == (3, 0, False)


def test_Catalog_scans_all_of_a_host_never_scanned(catalog: Catalog) -> None:
    """A known host with no scans has an empty scan list; an unknown one is HostNotFound."""
    catalog.put_host("hosta", {}, replace=False)
    assert catalog.scans_all("hosta") == []
    with pytest.raises(HostNotFound):
        catalog.scans_all("ghost")


def test_Catalog_map_all_of_an_older_scan(catalog: Catalog) -> None:
    """map_all with a scan id reads that version, not the current one."""
    first = scanned(catalog, "hosta", MAP)
    scanned(catalog, "hosta", MAP[:1])
    assert len(catalog.map_all("hosta", scan_id=first)) == 3
    assert catalog.map_all("hosta") == MAP[:1]


def test_Catalog_map_all_refuses_another_hosts_scan(catalog: Catalog) -> None:
    """A scan id of another host, or no scan at all, is ScanNotFound naming host and id."""
    other = scanned(catalog, "hostb", MAP)
    scanned(catalog, "hosta", MAP)
    with pytest.raises(ScanNotFound, match=f"no such scan: host=hosta scan_id={other}"):
        catalog.map_all("hosta", scan_id=other)
    with pytest.raises(ScanNotFound):
        catalog.map_all("hosta", scan_id=other + 1000)


def test_Catalog_map_all_without_scans(catalog: Catalog) -> None:
    """A host never scanned has no map (ScanNotFound); an unknown host is HostNotFound."""
    catalog.put_host("hosta", {}, replace=False)
    with pytest.raises(ScanNotFound, match="no scan stored: host=hosta"):
        catalog.map_all("hosta")
    with pytest.raises(HostNotFound):
        catalog.map_all("ghost")


def test_Catalog_failures_all_lists_devices_that_did_not_answer(catalog: Catalog) -> None:
    """The failures of a scan read back by device number with their reasons."""
    catalog.put_host("hosta", {}, replace=False)
    failures = [ScanFailure("1A05", "link down"), ScanFailure("1A04", "request timed out")]
    first = catalog.store_scan(
        "hosta", scanned_at_ns=1, entries=MAP, failures=failures, partial=True
    )
    scanned(catalog, "hosta", MAP)
    assert catalog.failures_all("hosta", scan_id=first) == sorted(
        failures, key=lambda f: f.device_number
    )
    assert catalog.failures_all("hosta") == []


@pytest.mark.parametrize(
    ("filters", "devices"),
    [
        ({"volser": "PAY001"}, ["1A00", "2B00"]),
        ({"device": "1A01"}, ["1A01"]),
        ({"address": address(64016, 0)}, ["2B00"]),
        ({"volser": "PAY001", "address": address(64015, 0)}, ["1A00"]),
        ({"volser": "PAY002", "device": "1A00"}, []),
        ({"volser": "NOSUCH"}, []),
        ({}, ["1A00", "1A01", "2B00"]),
    ],
)
def test_Catalog_map_find_all(
    catalog: Catalog, filters: dict[str, str], devices: list[str]
) -> None:
    """map_find_all returns the current entries matching every filter given."""
    scanned(catalog, "hosta", [entry("1A00", address(64015, 9), "OLD001")])
    scanned(catalog, "hosta", MAP)
    found = catalog.map_find_all("hosta", **filters)
    assert [e.device_number for e in found] == devices
    assert all(isinstance(e, MapEntry) for e in found)


def test_Catalog_map_find_all_without_a_map(catalog: Catalog) -> None:
    """Looking up in a host that has no map yet is ScanNotFound, not an empty answer."""
    catalog.put_host("hosta", {}, replace=False)
    with pytest.raises(ScanNotFound):
        catalog.map_find_all("hosta", volser="PAY001")


def test_Catalog_prune_scans_keeps_the_newest(catalog: Catalog) -> None:
    """prune_scans removes all but the newest scans with their entries, and says how many."""
    ids = [scanned(catalog, "hosta", MAP[: n + 1]) for n in range(3)]
    assert catalog.prune_scans("hosta", keep=2) == 1
    assert [s.id for s in catalog.scans_all("hosta")] == ids[:0:-1]
    with pytest.raises(ScanNotFound):
        catalog.map_all("hosta", scan_id=ids[0])
    assert catalog.prune_scans("hosta", keep=5) == 0
    with pytest.raises(CatalogInputError, match="keep must be >= 1"):
        catalog.prune_scans("hosta", keep=0)
    with pytest.raises(HostNotFound):
        catalog.prune_scans("ghost", keep=1)
