# What `group wait` takes from an event: the pairs of the group a STATE event names, and nothing
# for events about other pairs or other things.
from __future__ import annotations

from remcopy.events import Event, EventKind
from remcopy.groups.model import Group, GroupPair
from remcopy.groups.wait import address_index, named_pairs
from remcopy.ids import HardwareAddress
from remcopy.states import PairState


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


def _state(device: str, new: PairState) -> Event:
    return Event(kind=EventKind.STATE, device=device, old=PairState.DUPLEX, new=new, cause="s")


def test_named_pairs_finds_a_pair_by_either_end() -> None:
    """A STATE event for a primary or a secondary address names that pair."""
    index = address_index(_group())
    assert named_pairs(_state("64015:1A00:0A:01", PairState.SUSPENDED), index) == [1]
    assert named_pairs(_state("65000:2B00:20:02", PairState.RECOVERED), index) == [2]


def test_named_pairs_ignores_other_pairs_and_other_kinds() -> None:
    """Events about devices outside the group, and events that are not state changes (even
    naming a device of the group), name none."""
    index = address_index(_group())
    assert named_pairs(_state("64016:1A00:0A:01", PairState.SUSPENDED), index) == ()
    assert named_pairs(Event(kind=EventKind.ARMED, at_ns=1), index) == ()
    shadow = Event(kind=EventKind.SHADOW, device="65000:2B00:20:01", detail={"phase": "done"})
    assert named_pairs(shadow, index) == ()
    hold = Event(kind=EventKind.HOLD, device="64015:1A00:0A:01")
    assert named_pairs(hold, index) == ()
    assert named_pairs(Event(kind=EventKind.SUBSCRIBED, seq=3), index) == ()
