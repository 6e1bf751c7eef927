# Which of a controller's events a subscriber may see: the grant filter of the event stream.
#
# Why: a host limited to some LSSs must not learn from `remcopy events` what it cannot learn
# from status, identify or query (DESIGN.md section 6: a host reaches only its grant's devices
# on every path). An event about a device names its address, and its text may name its volser.
#
# Theory of operation
# - A host whose grant names no LSS (every device) and the controller's own view see every
#   event. Otherwise an event is shown when everything it is about is reached:
#   - about a device (STATE, HOLD, SHADOW): the device, and a SHADOW's target too;
#   - about a consistency group (FREEZE, REJOIN, RPO, a freeze's ARMED): the group has a
#     device here that the grant reaches (a group is shared by its members; its events name
#     no device);
#   - an armed or disarmed suspend (ARMED, DISARMED of a pair operation): every LSS of
#     `detail.lss` is in the grant (an event without the list, from an older controller, is
#     shown to unrestricted grants only);
#   - START and STOP: to everyone (they name the controller, which the subscriber reached);
#   - a replication link's LINK_UP, LINK_DOWN, HEARTBEAT_LOSS: to every host (a host's pairs
#     may depend on any link; they name the peer controller and no device); to a peer only
#     about its own link;
#   - anything else (ERROR without a device: its text is an exception's, which may name any
#     device): unrestricted grants only.
# - A peer controller's grant reaches the devices of the pairs it is the other end of.
# - Decided per event and per subscriber, live and in a replay, with the grant of that moment
#   (a reload may change it).
from __future__ import annotations

from typing import Final

from remcopy.controller.core import Controller, Device, HostGrant
from remcopy.errors import RemcopyError
from remcopy.events import Event, EventKind, lss_of
from remcopy.ids import HardwareAddress

_TO_EVERYONE: Final = frozenset({EventKind.START, EventKind.STOP})
_LINK: Final = frozenset({EventKind.LINK_UP, EventKind.LINK_DOWN, EventKind.HEARTBEAT_LOSS})
_SUSPEND: Final = frozenset({EventKind.ARMED, EventKind.DISARMED})


def visible_to(core: Controller, grant: HostGrant, event: Event) -> bool:
    """Whether a subscriber authenticated as `grant` may see `event` (see the file's head)."""
    if grant.lss is None and not grant.is_peer:
        return True
    kind = event.kind
    if kind in _TO_EVERYONE:
        return True
    if kind in _LINK:
        return not grant.is_peer or event.peer == grant.name
    if event.device:
        addresses = [event.device]
        if kind is EventKind.SHADOW:
            addresses.append(str(event.detail.get("target", "")))
        return all(_reaches_address(core, grant, a) for a in addresses)
    if event.group:
        return any(_reaches(grant, d) for d in core.devices.values() if d.pair.group == event.group)
    if kind in _SUSPEND and not grant.is_peer:
        lss = lss_of(event.detail.get("lss"))
        return lss is not None and grant.lss is not None and lss <= grant.lss
    return False


def _reaches(grant: HostGrant, device: Device) -> bool:
    if grant.is_peer:
        return device.pair.peer_serial == grant.serial
    return grant.allows(device.key)


def _reaches_address(core: Controller, grant: HostGrant, text: str) -> bool:
    try:
        address = HardwareAddress.parse(text)
    except RemcopyError:
        return False
    if address.serial != core.serial:
        return False
    device = core.devices.get(address.device_key)
    if device is None:  # gone since: what it was is not known
        return not grant.is_peer and grant.allows(address.device_key)
    return _reaches(grant, device)
