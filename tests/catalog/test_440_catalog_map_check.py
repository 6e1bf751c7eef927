# Cross-host checks: what all hosts' maps show together, and no single host can see.
from __future__ import annotations

from catalog_helpers import address, entry, scanned

from remcopy.catalog import Catalog, MapConflict, Sighting

P0, P1 = address(64015, 0), address(64015, 1)
S0, S1 = address(64016, 0), address(64016, 1)


def _two_hosts_agreeing(catalog: Catalog) -> tuple[int, int]:
    # Two hosts see the same three volumes under different device numbers; the secondary of
    # the pair P0 -> S0 carries its primary's volser, as a copied volume does.
    a = scanned(
        catalog,
        "hosta",
        [
            entry("1A00", P0, "PAY001", role="primary", state="DUPLEX"),
            entry("1A01", P1, "PAY002"),
            entry("2B00", S0, "PAY001", role="secondary", state="DUPLEX", online=False),
        ],
    )
    b = scanned(
        catalog,
        "hostb",
        [
            entry("3C00", P0, "PAY001", role="primary", state="DUPLEX"),
            entry("3C01", P1, "PAY002"),
            entry("4D00", S0, "PAY001", role="secondary", state="DUPLEX", online=False),
        ],
    )
    return a, b


def test_Catalog_map_check_all_agreeing_hosts_is_clean(catalog: Catalog) -> None:
    """Hosts that agree on every volume, under different device numbers, give no conflict."""
    _two_hosts_agreeing(catalog)
    assert catalog.map_check_all() == []


def test_Catalog_map_check_all_empty_catalog_is_clean(catalog: Catalog) -> None:
    """A catalog with no maps has nothing to disagree about."""
    assert catalog.map_check_all() == []


def test_Catalog_map_check_all_same_volser_at_two_addresses(catalog: Catalog) -> None:
    """One volser at two hardware addresses (not a pair's secondary) is a conflict naming both."""
    a, b = _two_hosts_agreeing(catalog)
    b = scanned(
        catalog,
        "hostb",
        [entry("3C00", P0, "PAY001"), entry("3C01", P1, "PAY002"), entry("3C02", S1, "PAY002")],
    )
    conflicts = catalog.map_check_all()
    assert conflicts == [
        MapConflict(
            kind="volser_at_two_addresses",
            key="PAY002",
            sightings=(
                Sighting("hosta", a, "1A01", P1, "PAY002"),
                Sighting("hostb", b, "3C01", P1, "PAY002"),
                Sighting("hostb", b, "3C02", S1, "PAY002"),
            ),
        )
    ]
    assert "volser at more than one hardware address: PAY002" in conflicts[0].message


def test_Catalog_map_check_all_address_changed_since_previous_scan(catalog: Catalog) -> None:
    """A device number that now reaches another hardware address is a conflict with both."""
    a, _ = _two_hosts_agreeing(catalog)
    again = scanned(catalog, "hosta", [entry("1A00", P0, "PAY001"), entry("1A01", S1, "PAY009")])
    assert catalog.map_check_all() == [
        MapConflict(
            kind="address_changed",
            key="hosta/1A01",
            sightings=(
                Sighting("hosta", a, "1A01", P1, "PAY002"),
                Sighting("hosta", again, "1A01", S1, "PAY009"),
            ),
        )
    ]


def test_Catalog_map_check_all_hosts_disagree_about_a_volume(catalog: Catalog) -> None:
    """Two hosts showing different volsers at one hardware address is a conflict naming both."""
    a, _ = _two_hosts_agreeing(catalog)
    b = scanned(
        catalog,
        "hostb",
        [entry("3C00", P0, "PAY001"), entry("3C01", P1, "OTHER1")],
    )
    assert catalog.map_check_all() == [
        MapConflict(
            kind="hosts_disagree",
            key=P1,
            sightings=(
                Sighting("hosta", a, "1A01", P1, "PAY002"),
                Sighting("hostb", b, "3C01", P1, "OTHER1"),
            ),
        )
    ]


def test_Catalog_map_check_all_reads_only_current_maps(catalog: Catalog) -> None:
    """Conflicts in older scans that a newer scan corrected are no longer reported."""
    scanned(catalog, "hosta", [entry("1A00", P0, "PAY001"), entry("1A01", P1, "PAY001")])
    scanned(catalog, "hosta", [entry("1A00", P0, "PAY001"), entry("1A01", P1, "PAY002")])
    scanned(catalog, "hosta", [entry("1A00", P0, "PAY001"), entry("1A01", P1, "PAY002")])
    assert catalog.map_check_all() == []


def test_Catalog_map_check_all_reports_every_kind_in_order(catalog: Catalog) -> None:
    """Several problems at once are all reported: volser, then address change, then disagreement."""
    _two_hosts_agreeing(catalog)
    scanned(catalog, "hosta", [entry("1A00", S1, "PAY001"), entry("1A01", P1, "PAY002")])
    scanned(catalog, "hostb", [entry("3C00", P0, "PAY001"), entry("3C01", P1, "OTHER1")])
    kinds = [(c.kind, c.key) for c in catalog.map_check_all()]
    assert kinds == [
        ("volser_at_two_addresses", "PAY001"),
        ("address_changed", "hosta/1A00"),
        ("hosts_disagree", P1),
    ]
