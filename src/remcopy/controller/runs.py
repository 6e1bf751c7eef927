# What the parts of replication share: one device's run, and the replicator as they see it.
#
# Why: the replicator (replication.py) owns the task group, the peer links and every
# device's run; its parts (the host write path, the copier, restart recovery, the pair
# operations on either side, the seal, the freeze, the secondary's consistency time) each
# need a little of it. They reach it through `Replica`, declared here, below all of them, so
# that no part imports replication.py: the arrows point one way, from the owner down to its
# parts and from every part down to this module, with no circle even for type checking.
#
# Rules this module keeps:
# - It imports no other part of replication (only core, changemap and peerlink).
# - `Replica` names only what a part uses; a part that needs another part is given it when
#   it is built (the owner composes them), it does not find it through `Replica`.
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from remcopy.controller.changemap import ChangeMap
from remcopy.controller.core import Controller, Device

if TYPE_CHECKING:
    from remcopy.controller.core import StatePlan
    from remcopy.controller.peerlink import PeerLink
    from remcopy.errors import RemcopyError
    from remcopy.wire.native import PairResult


@dataclass(eq=False)
class DeviceRun:
    """What the replicator keeps in memory about one device (not persisted)."""

    device: Device
    changemap: ChangeMap
    in_flight: set[asyncio.Future[None]] = field(default_factory=set)
    sealed_at_ns: int = 0
    copier: asyncio.Task[None] | None = None
    tracks_copied: int = 0
    last_update: asyncio.Future[None] | None = None
    held: asyncio.Event | None = None
    held_since_ns: int = 0
    """When the current hold of host writes began (wall clock), 0 when none."""
    shadow_running: bool = False
    shadow_done: int = 0
    shadow_total: int = 0
    bytes_sent: int = 0
    lag_bytes: int = 0
    journal_bytes: int = 0
    """The part of lag_bytes in the async journal (updates of an async pair)."""
    pending_since: dict[asyncio.Future[None], int] = field(default_factory=dict)
    """When each unconfirmed update was pushed: the async lag in time is the oldest."""
    frozen_at_ns: int = 0
    """Set when a freeze at T ended this device's hold (it is SUSPENDED_ERROR at T)."""
    copy_unfinished: bool = False
    """Suspended while PENDING: the secondary is not a consistent image."""
    freeze_at_ns: int = 0
    """The T a controller freeze armed this device at (freeze.py); a host suspend joins it."""


class Replica(Protocol):
    """The replicator as its parts see it (implemented by replication.Replicator)."""

    controller: Controller
    runs: dict[int, DeviceRun]
    """Every device's run, by device key."""
    links: dict[int, PeerLink]
    """The peer links made so far, by the peer's serial."""
    counters: dict[str, int]
    applied_updates: dict[int, int]
    """Updates applied here (as a secondary), per peer controller that sent them."""
    applied_bytes: dict[int, int]
    hold_s: float
    """How long a consistency-group device holds host writes after a replication error."""

    def link(self, serial: int) -> PeerLink:
        """The link to the peer controller with this serial (made on first use)."""
        ...

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Start a background task in the replicator's task group."""
        ...

    def _planted(self, bug: str) -> bool:
        """TESTING ONLY: whether a planted bug fires now."""
        ...

    def start_copier(self, run: DeviceRun) -> None:
        """Start copying the device's marked tracks (unless a copy runs already)."""
        ...

    def to_error_all(self, runs: list[DeviceRun], *, at_ns: int | None = None) -> None:
        """SUSPENDED_ERROR for every device given, in one commit."""
        ...

    def device_failed(self, run: DeviceRun, exc: RemcopyError) -> None:
        """A replication error on one device: hold it (consistency group) or fail it."""
        ...

    async def tell_peer(
        self,
        serial: int,
        runs: list[DeviceRun],
        action: str,
        *,
        at_ns: int = 0,
        options: dict[str, Any] | None = None,
        empty: list[int] | None = None,
    ) -> list[PairResult]:
        """Make the secondaries follow a state change (PEER_STATE `action`)."""
        ...

    def arm(
        self, runs: list[DeviceRun], at_ns: int, prepared: StatePlan | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Seal these devices at T (their armed T is persisted already); the seal's document."""
        ...


__all__ = ["DeviceRun", "Replica"]
