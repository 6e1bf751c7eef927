# What `group wait` takes from an event line: the pairs of the group it names, and nothing for
# lines about other pairs or other things.
from __future__ import annotations

from remcopy.groups.model import Group, GroupPair
from remcopy.groups.wait import address_index, named_pairs
from remcopy.ids import HardwareAddress
from remcopy.states import PairState, event_line


def _group() -> Group:
    pairs = tuple(
        GroupPair(
            volser=f"PAY{c:03d}",
            primary=HardwareAddress.parse(f"64015:1A00:0A:{c:02X}"),
            secondary=HardwareAddress.parse(f"65000:2B00:20:{c:02X}"),
        )
        for c in range(3)
    )
    return Group(name="PAYROLL", pairs=pairs)


def test_named_pairs_finds_a_pair_by_either_end() -> None:
    """A state-change line for a primary or a secondary address names that pair."""
    index = address_index(_group())
    primary = event_line("64015:1A00:0A:01", PairState.DUPLEX, PairState.SUSPENDED, cause="s")
    secondary = event_line("65000:2B00:20:02", PairState.DUPLEX, PairState.RECOVERED, cause="r")
    assert named_pairs(primary, index) == [1]
    assert named_pairs(secondary, index) == [2]


def test_named_pairs_ignores_other_pairs_and_other_lines() -> None:
    """Lines about devices outside the group, and lines that are not pair changes, name none."""
    index = address_index(_group())
    other = event_line("64016:1A00:0A:01", PairState.DUPLEX, PairState.SUSPENDED, cause="s")
    assert named_pairs(other, index) == ()
    assert named_pairs("armed suspend at=1 devices=3", index) == ()
    assert named_pairs("shadow 65000:2B00:20:01 -> 65000:2B00:30:01 done tracks=4", index) == ()
    assert named_pairs("subscribed cntla0", index) == ()
