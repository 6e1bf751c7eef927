# Dry runs: what a group operation would do to every pair, read from the controllers, with
# nothing sent that changes anything.
#
# Why: an operator about to suspend, resume or fail back thousands of pairs wants to see
# first, per controller, which devices go from which state to which, which pairs would be
# refused and why, and how many tracks each copy would move. The states and the change-map
# counts are the controllers' (they are the truth); the decisions are the ledger's
# (`ledger.decide`, over `states.py`'s table), the same the controllers make. A preview
# sends only read-only requests (query, and identify for the volume sizes an establish or
# shadow copy would copy); controllers count pair operations, so a test can check that a
# dry run sent none.
#
# What a preview cannot know: a failback copies the tracks changed on either side, the
# union of two change maps; a query gives each side's count, so the figure is their sum, an
# upper bound (`tracks_exact` False), unless one side has none.
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from remcopy import ledger
from remcopy.groups.model import Group, GroupPair
from remcopy.host.channel import Channel
from remcopy.host.engine import Job
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.ledger import Op, OpRequest, PairView
from remcopy.states import PairAction, PairRole, PairState, transition_note
from remcopy.wire.native import DeviceIdentity, DeviceStatus, PairOp

# Operations that act on the primary; the others (recover, failback, shadow) on the secondary.
AT_PRIMARY = frozenset({PairOp.ESTABLISH, PairOp.SUSPEND, PairOp.RESUME, PairOp.TERMINATE})

# Where each idempotent operation leads a pair, seen at the device the request goes to: a pair
# the controller refuses because it is already there counts as done ("already RECOVERED"), so
# an operation run a second time (after a timeout, a partial failure, or by a script that
# cannot know) reports success instead of failing every pair.
#   recover:   the secondary is RECOVERED;
#   resume:    the primary is PENDING (copying) or DUPLEX;
#   failback:  the device (the old secondary) is now the PRIMARY, PENDING or DUPLEX;
#   terminate: the primary is SIMPLEX.
_ALREADY: dict[PairOp, tuple[frozenset[PairRole], frozenset[PairState]]] = {
    PairOp.RECOVER: (frozenset({PairRole.SECONDARY}), frozenset({PairState.RECOVERED})),
    PairOp.RESUME: (
        frozenset({PairRole.PRIMARY}),
        frozenset({PairState.PENDING, PairState.DUPLEX}),
    ),
    PairOp.FAILBACK: (
        frozenset({PairRole.PRIMARY}),
        frozenset({PairState.PENDING, PairState.DUPLEX}),
    ),
    PairOp.TERMINATE: (frozenset(PairRole), frozenset({PairState.SIMPLEX})),
}


def already_there(op: PairOp, state: PairState, role: PairRole) -> str:
    """Why a pair in `state` with this `role` at the device `op` acts on needs nothing: it is
    already where `op` leads ("already RECOVERED"); "" when it is not (pure)."""
    target = _ALREADY.get(op)
    if target is None or role not in target[0] or state not in target[1]:
        return ""
    if op is PairOp.FAILBACK:
        return f"already failed back: the primary, {state.name}"
    return f"already {state.name}"


_ACTIONS = {
    PairOp.ESTABLISH: PairAction.ESTABLISH,
    PairOp.SUSPEND: PairAction.SUSPEND,
    PairOp.RESUME: PairAction.RESUME,
    PairOp.RECOVER: PairAction.RECOVER,
    PairOp.FAILBACK: PairAction.FAILBACK,
    PairOp.TERMINATE: PairAction.TERMINATE,
}

_OPS = {
    PairOp.ESTABLISH: Op.ESTABLISH,
    PairOp.SUSPEND: Op.SUSPEND,
    PairOp.RESUME: Op.RESUME,
    PairOp.RECOVER: Op.RECOVER,
    PairOp.FAILBACK: Op.FAILBACK,
    PairOp.TERMINATE: Op.TERMINATE,
    PairOp.SHADOW: Op.SHADOW,
}

_FLAG_SHADOW_RUNNING = 0x01


def pair_view(device: HardwareAddress, status: DeviceStatus) -> PairView:
    """The ledger's view of a device from a controller's query answer (the dry run cannot
    see a controller freeze or a seal under way: a suspend it shows is not joined to one)."""
    return PairView(
        device=str(device),
        state=status.state,
        role=status.role,
        armed_at_ns=status.suspend_at_ns,
        shadow_running=bool(status.flags & _FLAG_SHADOW_RUNNING),
    )


def decide(op: PairOp, device: HardwareAddress, status: DeviceStatus) -> ledger.Decision:
    """The ledger's decision for `op` on this device, as its controller would make it now
    (pure; the suspend's T is not known to a preview, so it is taken as ahead)."""
    return ledger.decide(pair_view(device, status), OpRequest(op=_OPS[op]), 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedPair:
    """What an operation would do to one pair."""

    pair: GroupPair
    controller: str
    """The controller the request would go to ("" when this host has no path to it)."""
    device: HardwareAddress
    """The device the request would act on (the primary, or the secondary)."""
    state: PairState | None
    """The device's state now (None when it could not be read)."""
    new_state: PairState | None
    """The state it would go to; None when the pair would be refused."""
    tracks: int = 0
    """Tracks the operation would copy for this pair (establish, resume, failback, shadow)."""
    tracks_exact: bool = True
    """False for a failback with changes on both sides: `tracks` is then an upper bound."""
    reason: str = ""
    """Why the pair would be refused; or what to know about a permitted move."""
    already: bool = False
    """The pair is already where the operation leads: nothing to do, counted done."""

    @property
    def refused(self) -> bool:
        return self.new_state is None

    def move(self) -> str:
        """`DUPLEX -> SUSPENDED`, or `DUPLEX -> refused`."""
        old = self.state.name if self.state is not None else "?"
        return f"{old} -> {self.new_state.name if self.new_state is not None else 'refused'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": self.pair.name,
            "device": str(self.device),
            "from": self.state.name if self.state is not None else None,
            "to": self.new_state.name if self.new_state is not None else None,
            "tracks": self.tracks,
            "tracks_exact": self.tracks_exact,
            "reason": self.reason,
            "already": self.already,
        }


Key = tuple[str, int]  # (the host's controller name, device key)


async def _read(
    session: HostSession, wanted: Iterable[Key], *, sizes: Iterable[Key] = ()
) -> tuple[dict[Key, DeviceStatus | str], dict[Key, DeviceIdentity]]:
    """Query (and identify, for `sizes`) the devices: one request of each kind per controller.
    A device whose controller could not be asked maps to the error text."""
    by_controller: dict[str, set[int]] = {}
    for controller, device in wanted:
        by_controller.setdefault(controller, set()).add(device)
    sized: dict[str, set[int]] = {}
    for controller, device in sizes:
        sized.setdefault(controller, set()).add(device)

    def query(devices: tuple[int, ...]) -> Callable[[Channel], Awaitable[Any]]:
        async def run(channel: Channel) -> Any:
            return await channel.query(devices)

        return run

    def identify(devices: tuple[int, ...]) -> Callable[[Channel], Awaitable[Any]]:
        async def run(channel: Channel) -> Any:
            return await channel.identify(devices)

        return run

    jobs: list[Job[Any]] = [
        Job(controller=c, tag=("query", c), run=query(tuple(sorted(d))))
        for c, d in sorted(by_controller.items())
    ]
    jobs += [
        Job(controller=c, tag=("identify", c), run=identify(tuple(sorted(d))))
        for c, d in sorted(sized.items())
    ]
    statuses: dict[Key, DeviceStatus | str] = {}
    identities: dict[Key, DeviceIdentity] = {}
    for result in await session.engine.run_all(jobs):
        kind, controller = result.job.tag
        if result.error is not None or result.value is None:
            if kind == "query":
                for device in by_controller[controller]:
                    statuses[(controller, device)] = f"controller {controller}: {result.error}"
            continue
        for item in result.value:
            if kind == "query":
                statuses[(controller, item.device)] = item
            elif not item.status:
                identities[(controller, item.device)] = item
    return statuses, identities


def _status(statuses: dict[Key, DeviceStatus | str], key: Key) -> DeviceStatus | str:
    found = statuses.get(key)
    if found is None:
        return f"controller {key[0]} did not report device {key[1]:04X}"
    if isinstance(found, DeviceStatus) and found.status:
        return f"controller {key[0]} refused to report device {key[1]:04X} (code {found.status})"
    return found


def _tracks_of(identity: DeviceIdentity | None) -> int:
    if identity is None or not identity.track_size_bytes:
        return 0
    return identity.capacity_bytes // identity.track_size_bytes


async def preview(
    session: HostSession,
    group: Group,
    op: PairOp,
    *,
    tertiaries: dict[str, HardwareAddress] | None = None,
) -> list[PlannedPair]:
    """What `op` would do to every pair of `group`, from the controllers' states and change
    maps; only read-only requests are sent. `tertiaries` (secondary address -> tertiary
    address) is needed for SHADOW."""
    at_primary = op in AT_PRIMARY
    wanted: list[Key] = []
    sizes: list[Key] = []
    for pair in group.pairs:
        if pair.primary_controller:
            wanted.append((pair.primary_controller, pair.primary.device_key))
        if pair.secondary_controller:
            wanted.append((pair.secondary_controller, pair.secondary.device_key))
            tertiary = (tertiaries or {}).get(str(pair.secondary))
            if op is PairOp.SHADOW and tertiary is not None:
                wanted.append((pair.secondary_controller, tertiary.device_key))
        acting = pair.primary_controller if at_primary else pair.secondary_controller
        if acting and op in (PairOp.ESTABLISH, PairOp.SHADOW):
            device = pair.primary if at_primary else pair.secondary
            sizes.append((acting, device.device_key))
    statuses, identities = await _read(session, wanted, sizes=sizes)
    return [plan_pair(pair, op, statuses, identities, tertiaries or {}) for pair in group.pairs]


def plan_pair(
    pair: GroupPair,
    op: PairOp,
    statuses: dict[Key, DeviceStatus | str],
    identities: dict[Key, DeviceIdentity],
    tertiaries: dict[str, HardwareAddress],
) -> PlannedPair:
    """What `op` would do to one pair, given what the controllers answered (pure).
    `statuses` maps (controller, device key) to the device's status or the error text."""
    at_primary = op in AT_PRIMARY
    controller = pair.primary_controller if at_primary else pair.secondary_controller
    device = pair.primary if at_primary else pair.secondary
    other_controller = pair.secondary_controller if at_primary else pair.primary_controller
    other = pair.secondary if at_primary else pair.primary

    def refused(reason: str, state: PairState | None = None) -> PlannedPair:
        return PlannedPair(
            pair=pair,
            controller=controller,
            device=device,
            state=state,
            new_state=None,
            reason=f"{pair.name}: {reason}",
        )

    if not controller:
        side = "primary" if at_primary else "secondary"
        return refused(f"this host has no path to the {side} {device}")
    key = (controller, device.device_key)
    status = _status(statuses, key)
    if isinstance(status, str):
        return refused(status)
    other_status = (
        _status(statuses, (other_controller, other.device_key)) if other_controller else None
    )
    state = status.state
    busy = ledger.armed_refusal(pair_view(device, status), _OPS[op])
    if busy is not None:
        return refused(str(busy), state)
    decision = decide(op, device, status)
    if op is PairOp.SHADOW:
        return _plan_shadow(pair, controller, status, decision, statuses, identities, tertiaries)
    action = _ACTIONS[op]
    if decision.refused or decision.new is None:
        done = already_there(op, state, status.role)
        if done:
            return PlannedPair(
                pair=pair,
                controller=controller,
                device=device,
                state=state,
                new_state=state,
                reason=f"{pair.name}: {done}",
                already=True,
            )
        return refused(str(decision.refusal), state)
    new_state = decision.new.state
    if (
        op is PairOp.ESTABLISH
        and isinstance(other_status, DeviceStatus)
        and (other_status.role is not PairRole.NONE or other_status.state is not PairState.SIMPLEX)
    ):
        return refused(
            f"secondary {other} is {other_status.state.name} ({other_status.role.value}): "
            "it must be SIMPLEX, in no pair",
            state,
        )
    tracks, exact = 0, True
    if op is PairOp.ESTABLISH:
        tracks = _tracks_of(identities.get(key))
    elif op is PairOp.RESUME:
        tracks = status.dirty_tracks
    elif op is PairOp.FAILBACK:
        there = other_status.dirty_tracks if isinstance(other_status, DeviceStatus) else None
        tracks = status.dirty_tracks + (there or 0)
        exact = there is not None and (there == 0 or status.dirty_tracks == 0)
    return PlannedPair(
        pair=pair,
        controller=controller,
        device=device,
        state=state,
        new_state=new_state,
        tracks=tracks,
        tracks_exact=exact,
        reason=transition_note(state, action),
    )


def _plan_shadow(
    pair: GroupPair,
    controller: str,
    status: DeviceStatus,
    decision: ledger.Decision,
    statuses: dict[Key, DeviceStatus | str],
    identities: dict[Key, DeviceIdentity],
    tertiaries: dict[str, HardwareAddress],
) -> PlannedPair:
    """A shadow copy changes no pair state: it needs a SUSPENDED secondary (the ledger's
    `decision`) and a free tertiary on the same controller, and copies the whole volume."""
    device = pair.secondary
    tertiary = tertiaries.get(str(device))
    reason = ""
    if tertiary is None:
        reason = f"no tertiary given for secondary {device}"
    elif decision.refusal is not None:
        reason = str(decision.refusal)
    else:
        target = _status(statuses, (controller, tertiary.device_key))
        if isinstance(target, str):
            reason = target
        elif target.role is not PairRole.NONE:
            reason = f"shadow target {tertiary} is in a pair: the tertiary must be a simplex volume"
    if reason:
        return PlannedPair(
            pair=pair,
            controller=controller,
            device=device,
            state=status.state,
            new_state=None,
            reason=f"{pair.name}: {reason}",
        )
    return PlannedPair(
        pair=pair,
        controller=controller,
        device=device,
        state=status.state,
        new_state=status.state,
        tracks=_tracks_of(identities.get((controller, device.device_key))),
    )


def plan_summary(planned: list[PlannedPair]) -> dict[str, dict[str, Any]]:
    """Per controller: pairs, moves (`DUPLEX -> SUSPENDED`: count), tracks, refused."""
    out: dict[str, dict[str, Any]] = {}
    for row in planned:
        entry = out.setdefault(
            row.controller or "(no path)", {"pairs": 0, "moves": {}, "tracks": 0, "refused": 0}
        )
        entry["pairs"] += 1
        entry["moves"][row.move()] = entry["moves"].get(row.move(), 0) + 1
        entry["tracks"] += row.tracks
        entry["refused"] += row.refused
    return dict(sorted(out.items()))


__all__ = [
    "AT_PRIMARY",
    "PlannedPair",
    "already_there",
    "decide",
    "pair_view",
    "plan_pair",
    "plan_summary",
    "preview",
]
