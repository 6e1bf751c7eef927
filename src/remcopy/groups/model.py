# Copy groups as values: a named set of pairs and the options every pair of it shares.
#
# Why: a group operation acts on thousands of pairs with one command. Everything it needs to
# know about a pair is here, resolved once (load) from the device maps: both hardware
# addresses, the volser, and which controller of the acting host reaches each side.
from __future__ import annotations

from dataclasses import dataclass, field

from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, FencePolicy

MARGIN_S_DEFAULT = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupOptions:
    mode: CopyMode = CopyMode.SYNC
    consistency_group: bool = True
    fence: FencePolicy = FencePolicy.NEVER
    margin_s: float = MARGIN_S_DEFAULT
    """The least time between choosing a suspend time T and T itself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupPair:
    """One pair of a group, as a host reaches it."""

    volser: str
    primary: HardwareAddress
    secondary: HardwareAddress
    primary_controller: str = ""
    """The acting host's name for the primary's controller ("" when it cannot reach it)."""
    secondary_controller: str = ""
    primary_number: int | None = None
    """The acting host's device number for the primary, if it has one."""
    secondary_number: int | None = None

    @property
    def name(self) -> str:
        return self.volser or str(self.primary)

    def reversed(self) -> GroupPair:
        """The same pair with the copy direction reversed (after a failback)."""
        return group_pair(
            self.volser,
            self.secondary,
            self.primary,
            self.secondary_controller,
            self.primary_controller,
            self.secondary_number,
            self.primary_number,
        )


# The slots' own setters, for group_pair.
_set_volser = GroupPair.__dict__["volser"].__set__
_set_primary = GroupPair.__dict__["primary"].__set__
_set_secondary = GroupPair.__dict__["secondary"].__set__
_set_primary_controller = GroupPair.__dict__["primary_controller"].__set__
_set_secondary_controller = GroupPair.__dict__["secondary_controller"].__set__
_set_primary_number = GroupPair.__dict__["primary_number"].__set__
_set_secondary_number = GroupPair.__dict__["secondary_number"].__set__
_new = object.__new__


def group_pair(
    volser: str,
    primary: HardwareAddress,
    secondary: HardwareAddress,
    primary_controller: str,
    secondary_controller: str,
    primary_number: int | None,
    secondary_number: int | None,
) -> GroupPair:
    """`GroupPair(...)` with every field given, by position, in a third of the time: not
    through the dataclass __init__, whose keyword call and frozen field setting cost ~1 µs a
    pair (a group load from the catalog builds 10,000). Every field must be set here
    (test_groups_model checks it against `dataclasses.fields(GroupPair)`)."""
    pair: GroupPair = _new(GroupPair)
    _set_volser(pair, volser)
    _set_primary(pair, primary)
    _set_secondary(pair, secondary)
    _set_primary_controller(pair, primary_controller)
    _set_secondary_controller(pair, secondary_controller)
    _set_primary_number(pair, primary_number)
    _set_secondary_number(pair, secondary_number)
    return pair


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    name: str
    options: GroupOptions = field(default_factory=GroupOptions)
    pairs: tuple[GroupPair, ...] = ()
    is_reversed: bool = False
    """The pairs are turned around from the definition: each pair's `primary` is the defined
    secondary (after a failback, until the primary role goes home)."""

    def __repr__(self) -> str:
        return f"<Group {self.name} pairs={len(self.pairs)} {self.direction} {self.options}>"

    @property
    def direction(self) -> str:
        """ "defined" (primaries copy to secondaries, as defined) or "reversed"."""
        return "reversed" if self.is_reversed else "defined"

    def reversed(self) -> Group:
        """The group as it is after a failback: the secondaries are the primaries."""
        return Group(
            name=self.name,
            options=self.options,
            pairs=tuple(p.reversed() for p in self.pairs),
            is_reversed=not self.is_reversed,
        )

    def as_defined(self) -> Group:
        """The group with each pair's primary and secondary as the definition has them."""
        return self.reversed() if self.is_reversed else self
