# The words of a copy pair: its states, the actions that move it, its copy mode, fence policy
# and role.
#
# Why apart from states.py: the state machine (states.py) raises IllegalTransition, and that
# error (errors.py) names the state and action it refused; with the enumerations in the state
# machine's module the two imported each other. Here they import nothing, at the bottom of the
# house; states.py hands them on, and the rest of the code imports them from there.
#
# Each class hashes by identity (`__hash__ = object.__hash__`): an Enum member equals only
# itself, so that is the same set of keys, and Enum's own hash (of the name, in Python) was
# a third of a state-table lookup that a 10,000-pair operation makes many times per pair.
from __future__ import annotations

from enum import Enum

__all__ = ["CopyMode", "FencePolicy", "PairAction", "PairRole", "PairState"]


class PairState(Enum):
    """The state of a copy pair, as its controllers keep it."""

    __hash__ = object.__hash__

    SIMPLEX = "SIMPLEX"
    PENDING = "PENDING"
    DUPLEX = "DUPLEX"
    SUSPENDED = "SUSPENDED"
    SUSPENDED_ERROR = "SUSPENDED_ERROR"
    RECOVERED = "RECOVERED"


class PairAction(Enum):
    """Something that happens to a pair: an operator command or a controller event."""

    __hash__ = object.__hash__

    ESTABLISH = "establish"
    COPY_DONE = "copy_done"
    SUSPEND = "suspend"
    FAIL = "fail"
    RESUME = "resume"
    RECOVER = "recover"
    FAILBACK = "failback"
    TERMINATE = "terminate"


class CopyMode(Enum):
    """When a host write is acknowledged, chosen per pair at establish."""

    __hash__ = object.__hash__

    SYNC = "sync"
    ASYNC = "async"
    SEMISYNC = "semisync"


class FencePolicy(Enum):
    """What host writes do while the secondary cannot be updated, chosen at establish."""

    __hash__ = object.__hash__

    NEVER = "never"
    DATA = "data"


class PairRole(Enum):
    """Which end of a pair a device is."""

    __hash__ = object.__hash__

    NONE = "none"
    PRIMARY = "primary"
    SECONDARY = "secondary"
