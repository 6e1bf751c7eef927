# Load (the seed's YKLOAD): a group's pairs as one host sees them, and finding a pair by any
# of five keys.
#
# Why: hosts see the same volumes under different device numbers. The group map of a host
# gives, for every pair, its volser, both hardware addresses, and both device numbers *on that
# host* (None where the host cannot see a device), plus which of the host's controllers
# reaches each side — all a group operation needs to act as that host.
from __future__ import annotations

from collections.abc import Sequence

from remcopy.errors import InvalidIdentifier
from remcopy.groups.definition import MapIndex, ResolvedPair
from remcopy.groups.model import GroupPair
from remcopy.ids import DeviceNumber, HardwareAddress, Volser


def group_map(host: str, pairs: Sequence[ResolvedPair], index: MapIndex) -> list[GroupPair]:
    out = []
    for pair in pairs:
        p, s = str(pair.primary), str(pair.secondary)
        out.append(
            GroupPair(
                volser=pair.volser,
                primary=pair.primary,
                secondary=pair.secondary,
                primary_controller=index.controller_of.get((host, p), ""),
                secondary_controller=index.controller_of.get((host, s), ""),
                primary_number=_number(index.number_of.get((host, p))),
                secondary_number=_number(index.number_of.get((host, s))),
            )
        )
    return out


def _number(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


def unseen(pairs: Sequence[GroupPair]) -> list[str]:
    """Devices of the group this host cannot see, for the load report."""
    out = []
    for pair in pairs:
        if pair.primary_number is None:
            out.append(f"{pair.name}: primary {pair.primary} is not in this host's map")
        if pair.secondary_number is None:
            out.append(f"{pair.name}: secondary {pair.secondary} is not in this host's map")
    return out


KEY_KINDS = ("volser", "primary device", "secondary device", "primary address", "secondary address")


def lookup(pairs: Sequence[GroupPair], key: str) -> GroupPair:
    """The one pair a key names: volser, either device number (this host's), or either
    hardware address. Unknown or ambiguous keys are errors naming the candidates."""
    text = key.strip()
    matches: dict[int, tuple[GroupPair, str]] = {}
    candidates = _as_address(text), _as_number(text), _as_volser(text)
    address, number, volser = candidates
    for i, pair in enumerate(pairs):
        if volser is not None and pair.volser == volser:
            matches[i] = (pair, "volser")
        if number is not None and pair.primary_number == number:
            matches[i] = (pair, "primary device")
        if number is not None and pair.secondary_number == number:
            matches[i] = (pair, "secondary device")
        if address is not None and pair.primary == address:
            matches[i] = (pair, "primary address")
        if address is not None and pair.secondary == address:
            matches[i] = (pair, "secondary address")
    if not matches:
        raise InvalidIdentifier(f"{text!r}: no pair of the group has it as {', '.join(KEY_KINDS)}")
    if len(matches) > 1:
        names = ", ".join(f"{p.name} ({kind})" for p, kind in matches.values())
        raise InvalidIdentifier(f"{text!r} is ambiguous: it names {names}")
    return next(iter(matches.values()))[0]


def _as_address(text: str) -> HardwareAddress | None:
    try:
        return HardwareAddress.parse(text)
    except InvalidIdentifier:
        return None


def _as_number(text: str) -> int | None:
    try:
        return DeviceNumber.parse(text).value
    except InvalidIdentifier:
        return None


def _as_volser(text: str) -> str | None:
    try:
        return str(Volser.parse(text))
    except InvalidIdentifier:
        return None
