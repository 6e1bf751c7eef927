# The words of a copy pair: its states, the actions that move it, its copy mode, fence policy
# and role.
#
# Why apart from states.py: the state machine (states.py) raises IllegalTransition, and that
# error (errors.py) names the state and action it refused; with the enumerations in the state
# machine's module the two imported each other. Here they import nothing, at the bottom of the
# house; states.py hands them on, and the rest of the code imports them from there.
from __future__ import annotations

from enum import Enum

__all__ = ["CopyMode", "FencePolicy", "PairAction", "PairRole", "PairState"]


class PairState(Enum):
    """The state of a copy pair, as its controllers keep it."""

    SIMPLEX = "SIMPLEX"
    PENDING = "PENDING"
    DUPLEX = "DUPLEX"
    SUSPENDED = "SUSPENDED"
    SUSPENDED_ERROR = "SUSPENDED_ERROR"
    RECOVERED = "RECOVERED"


class PairAction(Enum):
    """Something that happens to a pair: an operator command or a controller event."""

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

    SYNC = "sync"
    ASYNC = "async"
    SEMISYNC = "semisync"


class FencePolicy(Enum):
    """What host writes do while the secondary cannot be updated, chosen at establish."""

    NEVER = "never"
    DATA = "data"


class PairRole(Enum):
    """Which end of a pair a device is."""

    NONE = "none"
    PRIMARY = "primary"
    SECONDARY = "secondary"
