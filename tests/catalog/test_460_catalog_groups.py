# Groups: a named set of pairs, stored all or nothing, and the group maps loads make of them.
from __future__ import annotations

import pytest
from catalog_helpers import FakeClock, address, entry, map_row, pair, scanned

from remcopy.catalog import (
    Catalog,
    GroupExists,
    GroupMap,
    GroupMapMismatch,
    GroupMapNotFound,
    GroupNotFound,
    HostNotFound,
    PairConflict,
    ScanNotFound,
)

OPTIONS = {"mode": "sync", "consistency_group": True, "suspend_margin_s": 0.05}
PAIRS = [pair(address(64015, n), address(64016, n), f"PAY{n:03d}") for n in range(4)]


def test_Catalog_put_group_then_group_one_and_pairs_all(catalog: Catalog, clock: FakeClock) -> None:
    """A stored group reads back with its options, pair count, and pairs in definition order."""
    pairs = list(reversed(PAIRS))
    stored = catalog.put_group("pay", OPTIONS, pairs, replace=False)
    assert stored == catalog.group_one("pay")
    assert (stored.name, stored.options, stored.pair_count) == ("pay", OPTIONS, 4)
    assert stored.created_ns == stored.updated_ns == clock.now_ns
    assert catalog.pairs_all("pay") == pairs


def test_Catalog_set_group_direction_is_kept_until_set_again(
    catalog: Catalog, clock: FakeClock
) -> None:
    """A group is stored as defined; a recorded direction reads back, survives a redefinition
    of the group, and is undone by recording the direction as defined."""
    assert catalog.put_group("pay", OPTIONS, PAIRS, replace=False).reversed is False
    flipped = catalog.set_group_direction("pay", reversed=True)
    assert flipped == catalog.group_one("pay")
    assert (flipped.reversed, flipped.updated_ns, flipped.pair_count) == (True, clock.now_ns, 4)
    assert catalog.put_group("pay", OPTIONS, PAIRS[:2], replace=True).reversed is True
    assert [g.reversed for g in catalog.groups_all()] == [True]
    assert catalog.set_group_direction("pay", reversed=False).reversed is False
    assert catalog.pairs_all("pay") == PAIRS[:2]  # the pairs keep their defined addresses


def test_Catalog_put_group_empty(catalog: Catalog) -> None:
    """A group may be stored before it has pairs."""
    assert catalog.put_group("new", {}, [], replace=False).pair_count == 0
    assert catalog.pairs_all("new") == []


def test_Catalog_groups_all_by_name_with_counts(catalog: Catalog) -> None:
    """groups_all lists every group in name order with its pair count."""
    catalog.put_group("pay", OPTIONS, PAIRS[:3], replace=False)
    catalog.put_group("hr", {}, PAIRS[3:], replace=False)
    catalog.put_group("empty", {}, [], replace=False)
    assert [(g.name, g.pair_count) for g in catalog.groups_all()] == [
        ("empty", 0),
        ("hr", 1),
        ("pay", 3),
    ]


def test_Catalog_put_group_refuses_an_existing_name(catalog: Catalog) -> None:
    """Adding a group that exists without replace is GroupExists, and the old one stays."""
    catalog.put_group("pay", OPTIONS, PAIRS[:1], replace=False)
    with pytest.raises(GroupExists, match="group=pay"):
        catalog.put_group("pay", {}, PAIRS[1:], replace=False)
    assert catalog.pairs_all("pay") == PAIRS[:1]


def test_Catalog_put_group_refuses_addresses_of_another_group(catalog: Catalog) -> None:
    """Pairs using an address of another group are refused whole, every address named."""
    catalog.put_group("pay", OPTIONS, PAIRS[:2], replace=False)
    taken_primary = pair(PAIRS[0].primary_address, address(64017, 0))
    taken_secondary_as_primary = pair(PAIRS[1].secondary_address, address(64017, 1))
    fine = pair(address(64015, 9), address(64016, 9))
    with pytest.raises(PairConflict) as raised:
        catalog.put_group(
            "hr", {}, [fine, taken_primary, taken_secondary_as_primary], replace=False
        )
    assert raised.value.problems == [
        f"address={PAIRS[0].primary_address} is already in group=pay as primary",
        f"address={PAIRS[1].secondary_address} is already in group=pay as secondary",
    ]
    assert raised.value.exit_code == 2
    assert [g.name for g in catalog.groups_all()] == ["pay"]


def test_Catalog_put_group_refuses_addresses_used_twice(catalog: Catalog) -> None:
    """A definition using an address twice is refused whole with every problem named."""
    a, b, c, d, e = (address(64015, n) for n in range(5))
    with pytest.raises(PairConflict) as raised:
        catalog.put_group(
            "pay", {}, [pair(a, b), pair(a, c), pair(d, b), pair(b, d), pair(e, e)], replace=False
        )
    assert raised.value.problems == [
        f"address={e} is both ends of one pair",
        f"address={a} is the primary of 2 pairs",
        f"address={b} is the secondary of 2 pairs",
        f"address={b} is a primary and a secondary",
        f"address={d} is a primary and a secondary",
    ]
    assert "pairs refused: group=pay" in str(raised.value)
    assert catalog.groups_all() == []


def test_PairConflict_message_stays_one_line_for_many_problems(catalog: Catalog) -> None:
    """With many bad addresses the message shows five and counts the rest; all are attached."""
    catalog.put_group("pay", {}, PAIRS, replace=False)
    with pytest.raises(PairConflict) as raised:
        catalog.put_group("hr", {}, PAIRS, replace=False)
    assert len(raised.value.problems) == 8
    assert str(raised.value).endswith("; and 3 more")


def test_Catalog_put_group_replace_keeps_unchanged_pairs_maps(catalog: Catalog) -> None:
    """Replacing a group keeps unchanged pairs' map rows, drops changed and removed pairs' rows."""
    catalog.put_host("hosta", {}, replace=False)
    catalog.put_group("pay", OPTIONS, PAIRS, replace=False)
    rows = [map_row(p, f"1A0{n}", f"2B0{n}") for n, p in enumerate(PAIRS)]
    catalog.store_group_map("pay", "hosta", rows, loaded_at_ns=7)
    changed = pair(PAIRS[1].primary_address, address(64017, 1), "PAY001")
    added = pair(address(64015, 8), address(64016, 8), "PAY008")
    new_pairs = [PAIRS[3], changed, added, PAIRS[0]]
    stored = catalog.put_group("pay", {"mode": "async"}, new_pairs, replace=True)
    assert (stored.options, stored.pair_count) == ({"mode": "async"}, 4)
    assert catalog.pairs_all("pay") == new_pairs
    assert catalog.group_map_all("pay", "hosta") == [rows[3], rows[0]]
    assert catalog.group_maps_all("pay") == [GroupMap("pay", "hosta", 7, 2)]


def test_Catalog_put_group_replace_may_take_addresses_it_gives_up(catalog: Catalog) -> None:
    """On replace, a secondary may move to another primary within the same group."""
    a, b, c = (address(64015, n) for n in range(3))
    catalog.put_group("pay", {}, [pair(a, b)], replace=False)
    catalog.put_group("pay", {}, [pair(c, b)], replace=True)
    assert catalog.pairs_all("pay") == [pair(c, b)]


def test_Catalog_remove_group_takes_pairs_and_maps(catalog: Catalog) -> None:
    """Removing a group frees its addresses and removes its group maps."""
    catalog.put_host("hosta", {}, replace=False)
    catalog.put_group("pay", OPTIONS, PAIRS, replace=False)
    catalog.store_group_map("pay", "hosta", [map_row(p, None, None) for p in PAIRS], loaded_at_ns=1)
    catalog.remove_group("pay")
    assert catalog.groups_all() == []
    with pytest.raises(GroupNotFound):
        catalog.group_one("pay")
    catalog.put_group("hr", {}, PAIRS, replace=False)
    with pytest.raises(GroupMapNotFound):
        catalog.group_map_all("hr", "hosta")


def test_Catalog_group_lookups_of_unknown_group(catalog: Catalog) -> None:
    """Every group read or removal names an unknown group with GroupNotFound."""
    catalog.put_host("hosta", {}, replace=False)
    for call in (
        lambda: catalog.group_one("ghost"),
        lambda: catalog.pairs_all("ghost"),
        lambda: catalog.remove_group("ghost"),
        lambda: catalog.group_maps_all("ghost"),
        lambda: catalog.group_map_all("ghost", "hosta"),
        lambda: catalog.store_group_map("ghost", "hosta", [], loaded_at_ns=1),
        lambda: catalog.set_group_direction("ghost", reversed=True),
    ):
        with pytest.raises(GroupNotFound, match="group=ghost"):
            call()


def test_Catalog_store_group_map_then_group_map_all(catalog: Catalog) -> None:
    """A group map reads back per pair in definition order, with None where the host is blind."""
    catalog.put_host("hosta", {}, replace=False)
    catalog.put_host("hostb", {}, replace=False)
    catalog.put_group("pay", OPTIONS, PAIRS, replace=False)
    rows_a = [map_row(p, f"1A0{n}", f"2B0{n}") for n, p in enumerate(PAIRS)]
    rows_b = [map_row(p, f"3C0{n}", None) for n, p in enumerate(PAIRS)]
    rows_b[2] = map_row(PAIRS[2], None, None, volser="NEWVOL")
    catalog.store_group_map("pay", "hosta", rows_a, loaded_at_ns=10)
    catalog.store_group_map("pay", "hostb", rows_b, loaded_at_ns=11)
    assert catalog.group_map_all("pay", "hosta") == rows_a
    assert catalog.group_map_all("pay", "hostb") == rows_b
    assert catalog.group_maps_all("pay") == [
        GroupMap("pay", "hosta", 10, 4),
        GroupMap("pay", "hostb", 11, 4),
    ]


def test_Catalog_store_group_map_again_replaces_it(catalog: Catalog) -> None:
    """Loading a group again for a host replaces that host's map and its load time."""
    catalog.put_host("hosta", {}, replace=False)
    catalog.put_group("pay", OPTIONS, PAIRS[:1], replace=False)
    catalog.store_group_map("pay", "hosta", [map_row(PAIRS[0], "1A00", None)], loaded_at_ns=1)
    catalog.store_group_map("pay", "hosta", [map_row(PAIRS[0], "1A00", "2B00")], loaded_at_ns=2)
    assert catalog.group_map_all("pay", "hosta") == [map_row(PAIRS[0], "1A00", "2B00")]
    assert catalog.group_maps_all("pay")[0].loaded_at_ns == 2


def test_Catalog_store_group_map_refuses_rows_not_matching_the_pairs(catalog: Catalog) -> None:
    """Rows for unknown pairs, wrong secondaries, twice, or missing are all named, none stored."""
    catalog.put_host("hosta", {}, replace=False)
    catalog.put_group("pay", OPTIONS, PAIRS[:3], replace=False)
    stranger = pair(address(64015, 9), address(64016, 9))
    wrong = pair(PAIRS[1].primary_address, address(64017, 1))
    rows = [
        map_row(PAIRS[0], "1A00", None),
        map_row(PAIRS[0], "1A00", None),
        map_row(stranger, "1A09", None),
        map_row(wrong, "1A01", None),
    ]
    with pytest.raises(GroupMapMismatch) as raised:
        catalog.store_group_map("pay", "hosta", rows, loaded_at_ns=1)
    assert raised.value.problems == [
        f"address={stranger.primary_address} is not the primary of a pair of the group",
        f"address={wrong.primary_address} pairs with {PAIRS[1].secondary_address}, "
        f"not {wrong.secondary_address}",
        f"address={PAIRS[0].primary_address} has 2 rows",
        f"address={PAIRS[2].primary_address} has no row",
    ]
    assert catalog.group_maps_all("pay") == []


def test_Catalog_group_map_all_never_loaded(catalog: Catalog) -> None:
    """A group never loaded for a host is GroupMapNotFound; an unknown host is HostNotFound."""
    catalog.put_host("hosta", {}, replace=False)
    catalog.put_group("pay", OPTIONS, PAIRS, replace=False)
    with pytest.raises(GroupMapNotFound, match="group=pay host=hosta: hint:"):
        catalog.group_map_all("pay", "hosta")
    with pytest.raises(HostNotFound):
        catalog.group_map_all("pay", "ghost")
    with pytest.raises(HostNotFound):
        catalog.store_group_map("pay", "ghost", [], loaded_at_ns=1)


def test_Catalog_group_of_ten_thousand_pairs(catalog: Catalog) -> None:
    """A 10,000-pair group and its group map are stored and read back whole."""
    pairs = [
        pair(address(60000 + n // 256, n % 256), address(70000 + n // 256, n % 256))
        for n in range(10_000)
    ]
    catalog.put_host("hosta", {}, replace=False)
    assert catalog.put_group("big", OPTIONS, pairs, replace=False).pair_count == 10_000
    rows = [map_row(p, f"{n:04X}", None) for n, p in enumerate(pairs)]
    catalog.store_group_map("big", "hosta", rows, loaded_at_ns=1)
    assert catalog.pairs_all("big") == pairs
    assert catalog.group_map_all("big", "hosta") == rows
    reordered = pairs[5000:] + pairs[:5000]
    catalog.put_group("big", OPTIONS, reordered, replace=True)
    assert catalog.pairs_all("big") == reordered
    assert len(catalog.group_map_all("big", "hosta")) == 10_000
    with pytest.raises(PairConflict):
        catalog.put_group("other", {}, pairs[-1:], replace=False)


def test_Catalog_pairs_as_seen_joins_the_pairs_with_the_hosts_current_map(
    catalog: Catalog,
) -> None:
    """Each pair in definition order with the controller and device number the host's newest
    scan shows at either address; None where the map lacks one; an address at two device
    numbers gives the highest, as the whole map indexed in Python did."""
    pairs = list(reversed(PAIRS))
    catalog.put_group("pay", OPTIONS, pairs, replace=False)
    scanned(catalog, "hosta", [entry("0100", PAIRS[0].primary_address, "OLD")], at_ns=1)
    scanned(
        catalog,
        "hosta",
        [
            entry("1000", PAIRS[0].primary_address, "PAY000", controller="a"),
            entry("2000", PAIRS[0].secondary_address, "PAY000", controller="b"),
            entry("1001", PAIRS[1].primary_address, "PAY001", controller="a"),
            entry("1002", PAIRS[2].primary_address, "PAY002", controller="a"),
            entry("1F02", PAIRS[2].primary_address, "PAY002", controller="c"),
        ],
        at_ns=2,
    )
    seen = catalog.pairs_as_seen("pay", "hosta")
    assert seen == [
        (pairs[0].primary_address, pairs[0].secondary_address, "PAY003", None, None, None, None),
        (
            pairs[1].primary_address,
            pairs[1].secondary_address,
            "PAY002",
            "c",
            "1F02",
            None,
            None,
        ),
        (pairs[2].primary_address, pairs[2].secondary_address, "PAY001", "a", "1001", None, None),
        (pairs[3].primary_address, pairs[3].secondary_address, "PAY000", "a", "1000", "b", "2000"),
    ]
    with pytest.raises(GroupNotFound):
        catalog.pairs_as_seen("nope", "hosta")
    with pytest.raises((ScanNotFound, HostNotFound)):
        catalog.pairs_as_seen("pay", "hostb")
