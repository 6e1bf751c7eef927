# What `remcopy events --group` shows and what `--last N` keeps: pure selections over events.
from __future__ import annotations

from remcopy.events import Event, EventKind
from remcopy.host.follow import EventFilter, last_of_each

PAYROLL = EventFilter(
    group="PAYROLL",
    addresses=frozenset({"64015:1A00:0A:00", "65000:2B00:20:00"}),
    serials=frozenset({64015, 65000}),
)


def test_EventFilter_shows_the_groups_devices_and_its_controllers_other_events() -> None:
    """A device of the group, the group by name, and a deviceless event of one of its
    controllers show; another device, another group, another controller's link do not."""
    shown = [
        Event(kind=EventKind.STATE, serial=64015, device="64015:1A00:0A:00"),
        Event(kind=EventKind.STATE, serial=65000, device="65000:2B00:20:00"),
        Event(kind=EventKind.FREEZE, serial=64016, group="PAYROLL"),
        Event(kind=EventKind.LINK_DOWN, serial=64015, peer="cntlb"),
        Event(kind=EventKind.GAP, serial=64016),
    ]
    hidden = [
        Event(kind=EventKind.STATE, serial=64015, device="64015:1A00:0A:01"),
        Event(kind=EventKind.FREEZE, serial=64015, group="OTHER"),
        Event(kind=EventKind.LINK_DOWN, serial=64016, peer="cntlb"),
    ]
    assert [PAYROLL.shows(e) for e in shown] == [True] * len(shown)
    assert [PAYROLL.shows(e) for e in hidden] == [False] * len(hidden)
    assert all(EventFilter().shows(e) for e in hidden)


def test_last_of_each_keeps_the_last_n_of_every_controller_in_order() -> None:
    """The last 2 of each controller, in the order given; None keeps all, 0 none."""
    events = [Event(kind=EventKind.STATE, serial=s, seq=n) for n, s in enumerate([1, 2, 1, 1, 2])]
    assert [(e.serial, e.seq) for e in last_of_each(events, 2)] == [(2, 1), (1, 2), (1, 3), (2, 4)]
    assert last_of_each(events, None) == events
    assert last_of_each(events, 0) == []
