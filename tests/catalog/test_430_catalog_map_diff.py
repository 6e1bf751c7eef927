# Map diffs: what changed in one host's map between a scan and the scan before it.
from __future__ import annotations

import pytest
from catalog_helpers import address, entry, scanned

from remcopy.catalog import Catalog, HostNotFound, MapChange, ScanFailure, ScanNotFound

A0, A1, A2, A9 = (address(64015, cca) for cca in (0, 1, 2, 9))
BEFORE = [entry("1A00", A0, "PAY001"), entry("1A01", A1, "PAY002"), entry("1A02", A2, "PAY003")]


def test_Catalog_map_diff_first_scan_is_all_new(catalog: Catalog) -> None:
    """With no previous scan, every device of the map is new and nothing else is reported."""
    scan_id = scanned(catalog, "hosta", BEFORE)
    diff = catalog.map_diff("hosta")
    assert (diff.host, diff.scan_id, diff.previous_scan_id) == ("hosta", scan_id, None)
    assert diff.new == tuple(BEFORE)
    assert diff.gone == diff.volser_changed == diff.address_changed == diff.failed == ()
    assert diff.changed


def test_Catalog_map_diff_unchanged_rescan(catalog: Catalog) -> None:
    """A re-scan that found the same map reports no change."""
    first = scanned(catalog, "hosta", BEFORE)
    scanned(catalog, "hosta", BEFORE)
    diff = catalog.map_diff("hosta")
    assert diff.previous_scan_id == first
    assert not diff.changed
    assert diff.new == diff.gone == diff.volser_changed == diff.address_changed == ()


def test_Catalog_map_diff_relabel_reports_exactly_that(catalog: Catalog) -> None:
    """Relabeling one volume shows as exactly one volser change, naming old and new volser."""
    scanned(catalog, "hosta", BEFORE)
    scanned(catalog, "hosta", [BEFORE[0], entry("1A01", A1, "NEW002"), BEFORE[2]])
    diff = catalog.map_diff("hosta")
    assert diff.volser_changed == (MapChange("1A01", "PAY002", "NEW002"),)
    assert diff.new == diff.gone == diff.address_changed == ()


def test_Catalog_map_diff_new_gone_and_address_changed(catalog: Catalog) -> None:
    """New devices, gone devices and devices now at another address are each reported."""
    scanned(catalog, "hosta", BEFORE)
    after = [entry("1A00", A0, "PAY001"), entry("1A02", A9, "PAY003"), entry("1A03", A2, "PAY004")]
    scanned(catalog, "hosta", after)
    diff = catalog.map_diff("hosta")
    assert diff.new == (after[2],)
    assert diff.gone == (BEFORE[1],)
    assert diff.address_changed == (MapChange("1A02", A2, A9),)
    assert diff.volser_changed == ()


def test_Catalog_map_diff_failed_devices_are_not_gone(catalog: Catalog) -> None:
    """A device that did not answer this time is reported as failed, not as gone."""
    scanned(catalog, "hosta", BEFORE)
    catalog.store_scan(
        "hosta",
        scanned_at_ns=2,
        entries=BEFORE[:1],
        failures=[ScanFailure("1A01", "link down")],
        partial=True,
    )
    diff = catalog.map_diff("hosta")
    assert diff.failed == (BEFORE[1],)
    assert diff.gone == (BEFORE[2],)


def test_Catalog_map_diff_of_an_older_scan(catalog: Catalog) -> None:
    """map_diff with a scan id compares that scan with the one before it, not with the newest."""
    first = scanned(catalog, "hosta", BEFORE)
    second = scanned(catalog, "hosta", BEFORE[:2])
    scanned(catalog, "hosta", BEFORE[:1])
    diff = catalog.map_diff("hosta", scan_id=second)
    assert (diff.scan_id, diff.previous_scan_id) == (second, first)
    assert diff.gone == (BEFORE[2],)


def test_Catalog_map_diff_only_compares_scans_of_the_same_host(catalog: Catalog) -> None:
    """Another host's scans in between do not count as this host's previous scan."""
    first = scanned(catalog, "hosta", BEFORE)
    scanned(catalog, "hostb", [entry("2B00", A0, "PAY001")])
    scanned(catalog, "hosta", BEFORE)
    assert catalog.map_diff("hosta").previous_scan_id == first
    assert not catalog.map_diff("hosta").changed


def test_Catalog_map_diff_without_a_scan(catalog: Catalog) -> None:
    """A diff of a host never scanned is ScanNotFound; of an unknown host, HostNotFound."""
    catalog.put_host("hosta", {}, replace=False)
    with pytest.raises(ScanNotFound):
        catalog.map_diff("hosta")
    with pytest.raises(HostNotFound):
        catalog.map_diff("ghost")
