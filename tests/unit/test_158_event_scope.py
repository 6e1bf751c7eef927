# Which events a subscriber may see (controller/eventscope.py), rule by rule, on a controller
# whose devices are plain values (the rules read only devices, their pairs and the serial).
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from remcopy.controller.core import HostGrant, PairInfo
from remcopy.controller.eventscope import visible_to
from remcopy.events import Event, EventKind

SERIAL, PEER_SERIAL, OTHER_PEER = 64015, 64016, 64017


def _device(key: int, *, peer: int = 0, group: str = "") -> Any:
    return SimpleNamespace(key=key, pair=PairInfo(peer_serial=peer, group=group))


# 0A00 mirrors to PEER_SERIAL in group PAY; 0B00 to OTHER_PEER in group OTHER.
CORE: Any = SimpleNamespace(
    serial=SERIAL,
    devices={
        0x0A00: _device(0x0A00, peer=PEER_SERIAL, group="PAY"),
        0x0B00: _device(0x0B00, peer=OTHER_PEER, group="OTHER"),
    },
)
WIDE = HostGrant(name="wide", secret=b"", lss=None)
HOST_A = HostGrant(name="hosta", secret=b"", lss=frozenset({0x0A}))
PEER = HostGrant(name="cntlb", secret=b"", lss=None, is_peer=True, serial=PEER_SERIAL)
A, B = f"{SERIAL}:1A00:0A:00", f"{SERIAL}:1B00:0B:00"

CASES = [
    # (id, event, seen by WIDE, HOST_A, PEER)
    ("state in A", Event(kind=EventKind.STATE, device=A), (True, True, True)),
    ("state in B", Event(kind=EventKind.STATE, device=B), (True, False, False)),
    ("hold in B", Event(kind=EventKind.HOLD, device=B), (True, False, False)),
    (
        "shadow A onto B",
        Event(kind=EventKind.SHADOW, device=A, detail={"target": B}),
        (True, False, False),
    ),
    (
        "another controller's device",
        Event(kind=EventKind.STATE, device=f"{PEER_SERIAL}:1A00:0A:00"),
        (True, False, False),
    ),
    (
        "a device address that is not one",
        Event(kind=EventKind.STATE, device="junk"),
        (True, False, False),
    ),
    ("freeze of PAY", Event(kind=EventKind.FREEZE, group="PAY"), (True, True, True)),
    ("freeze of OTHER", Event(kind=EventKind.FREEZE, group="OTHER"), (True, False, False)),
    (
        "rpo of a group with no device here",
        Event(kind=EventKind.RPO, group="GONE"),
        (True, False, False),
    ),
    ("armed in 0A", Event(kind=EventKind.ARMED, detail={"lss": "0A"}), (True, True, False)),
    (
        "armed in 0A and 0B",
        Event(kind=EventKind.ARMED, detail={"lss": "0A 0B"}),
        (True, False, False),
    ),
    (
        "disarmed without lss",
        Event(kind=EventKind.DISARMED, detail={"devices": 1}),
        (True, False, False),
    ),
    ("start", Event(kind=EventKind.START), (True, True, True)),
    ("stop", Event(kind=EventKind.STOP), (True, True, True)),
    ("its own link", Event(kind=EventKind.LINK_DOWN, peer="cntlb"), (True, True, True)),
    ("another link", Event(kind=EventKind.HEARTBEAT_LOSS, peer="cntlc"), (True, True, False)),
    (
        "error without a device",
        Event(kind=EventKind.ERROR, detail={"error": "x"}),
        (True, False, False),
    ),
]


@pytest.mark.parametrize(("event", "seen"), [pytest.param(e, s, id=i) for i, e, s in CASES])
def test_visible_to(event: Event, seen: tuple[bool, bool, bool]) -> None:
    assert tuple(visible_to(CORE, grant, event) for grant in (WIDE, HOST_A, PEER)) == seen
