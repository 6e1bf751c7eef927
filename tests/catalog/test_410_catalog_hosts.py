# Hosts: a host's I/O definition stored as JSON, by name.
from __future__ import annotations

import math

import pytest
from catalog_helpers import FakeClock, address, entry, map_row, pair, scanned

from remcopy.catalog import Catalog, CatalogInputError, HostExists, HostNotFound

DEFINITION = {
    "name": "hosta",
    "ranges": [
        {"devices": "1A00-1A3F", "controller": "ctl1", "ssid": "1A00", "lss": "0A", "online": True},
        {
            "devices": "2B00-2B3F",
            "controller": "ctl2",
            "ssid": "2B00",
            "lss": "0B",
            "online": False,
        },
    ],
}


def test_Catalog_put_host_then_host_one(catalog: Catalog, clock: FakeClock) -> None:
    """A stored host reads back with its definition and the clock's time."""
    stored = catalog.put_host("hosta", DEFINITION, replace=False)
    assert stored == catalog.host_one("hosta")
    assert stored.definition == DEFINITION
    assert stored.created_ns == stored.updated_ns == clock.now_ns


def test_Catalog_put_host_refuses_an_existing_name(catalog: Catalog) -> None:
    """Adding a host that exists without replace is HostExists, and the old one stays."""
    catalog.put_host("hosta", DEFINITION, replace=False)
    with pytest.raises(HostExists, match="host=hosta") as raised:
        catalog.put_host("hosta", {"other": True}, replace=False)
    assert raised.value.host == "hosta"
    assert raised.value.exit_code == 2
    assert catalog.host_one("hosta").definition == DEFINITION


def test_Catalog_put_host_replace_updates_definition(catalog: Catalog) -> None:
    """Replacing a host changes its definition and updated time, not its created time."""
    first = catalog.put_host("hosta", DEFINITION, replace=False)
    second = catalog.put_host("hosta", {"ranges": []}, replace=True)
    assert second.definition == {"ranges": []}
    assert second.created_ns == first.created_ns
    assert second.updated_ns > first.updated_ns


def test_Catalog_put_host_replace_creates_a_missing_host(catalog: Catalog) -> None:
    """Replace on a host that does not exist yet simply adds it."""
    catalog.put_host("hostb", DEFINITION, replace=True)
    assert catalog.host_one("hostb").definition == DEFINITION


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": object()}, {"x": math.inf}])
def test_Catalog_put_host_refuses_what_json_cannot_hold(
    catalog: Catalog, bad: dict[str, object]
) -> None:
    """A definition that is not plain JSON is CatalogInputError, and nothing is stored."""
    with pytest.raises(CatalogInputError, match="host definition is not storable as JSON"):
        catalog.put_host("hosta", bad, replace=False)
    assert catalog.hosts_all() == []


def test_Catalog_hosts_all_by_name(catalog: Catalog) -> None:
    """hosts_all lists every host in name order."""
    for name in ["hostc", "hosta", "hostb"]:
        catalog.put_host(name, {"name": name}, replace=False)
    assert [host.name for host in catalog.hosts_all()] == ["hosta", "hostb", "hostc"]


def test_Catalog_hosts_all_empty(catalog: Catalog) -> None:
    """A new catalog has no hosts."""
    assert catalog.hosts_all() == []


def test_Catalog_host_one_unknown_is_HostNotFound(catalog: Catalog) -> None:
    """Asking for an unknown host is HostNotFound naming it, with a hint."""
    with pytest.raises(HostNotFound, match="no such host: host=ghost: hint:") as raised:
        catalog.host_one("ghost")
    assert raised.value.host == "ghost"


def test_Catalog_remove_host_takes_its_maps_along(catalog: Catalog) -> None:
    """Removing a host removes its scans and group maps, and leaves other hosts alone."""
    scanned(catalog, "hosta", [entry("1A00", address(64015, 0), "PAY001")])
    scanned(catalog, "hostb", [entry("2B00", address(64015, 0), "PAY001")])
    p = pair(address(64015, 0), address(64016, 0), "PAY001")
    catalog.put_group("pay", {}, [p], replace=False)
    catalog.store_group_map("pay", "hosta", [map_row(p, "1A00", None)], loaded_at_ns=5)
    catalog.remove_host("hosta")
    assert [host.name for host in catalog.hosts_all()] == ["hostb"]
    with pytest.raises(HostNotFound):
        catalog.scans_all("hosta")
    assert catalog.group_maps_all("pay") == []
    assert len(catalog.map_all("hostb")) == 1


def test_Catalog_remove_host_unknown_is_HostNotFound(catalog: Catalog) -> None:
    """Removing a host that does not exist is HostNotFound."""
    with pytest.raises(HostNotFound):
        catalog.remove_host("ghost")
