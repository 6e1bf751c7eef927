# What both sides of a pair operation share: the answer per device, what an operation writes
# into a device's PairInfo, and the ledger's view of a device.
#
# Why: the operations from hosts (pairops.py), their counterparts on the secondary
# (peerops.py) and the seal at T (seal.py) each answer per device and change the same
# PairInfo fields; these small pieces are kept once, here, below all three.
#
# Rules this module keeps:
# - Pure pieces only: no I/O, no task, no state of its own.
# - What may be done in which state is the ledger's (remcopy.ledger, states.py), not here.
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from remcopy import ledger
from remcopy.controller.core import Controller, Device, PairInfo
from remcopy.errors import InputError, RemcopyError
from remcopy.events import EventKind, lss_list
from remcopy.states import PairAction, PairRole
from remcopy.wire.native import PairItem, PairResult

if TYPE_CHECKING:
    from remcopy.controller.freeze import Freezer
    from remcopy.controller.runs import DeviceRun

Changes = dict[int, tuple[PairAction, Callable[[PairInfo], None] | None]]

# Seal outcomes kept for SUSPEND_WAIT, per suspend time T: a host asks after T, so the
# figures of a finished seal must still be there; the oldest finished ones are dropped.
SEALS_KEPT_MAX: Final = 64
# PEER_STATE action from a primary that armed a suspend at T: plan the commit of SUSPENDED
# at T now (nothing changes); the "suspend" its seal sends at T then only makes it.
PREPARE_SUSPEND: Final = "prepare-suspend"


def result_ok(device: Device, *, at_ns: int = 0, tracks: int = 0) -> PairResult:
    return PairResult(
        device=device.key,
        state=device.pair.state,
        role=device.pair.role,
        at_ns=at_ns or device.pair.suspend_at_ns,
        tracks=tracks,
    )


def named_once(device: int, seen: set[int]) -> None:
    """Refuse a device named twice in one request (InputError); remember it in `seen`."""
    if device in seen:
        raise InputError(f"device {device:04X} is named twice in one request")
    seen.add(device)


def emit_devices(
    controller: Controller, kind: EventKind, text: str, at_ns: int, cause: str, keys: list[int]
) -> None:
    """One event about a batch of devices (armed, disarmed, a seal skipped): their count and
    LSSs, not one line each."""
    controller.emit(
        kind,
        text,
        at_ns=at_ns,
        cause=cause,
        detail={"devices": len(keys), "lss": lss_list(key >> 8 for key in keys)},
    )


def result_refused(key: int, exc: RemcopyError, device: Device | None = None) -> PairResult:
    pair = device.pair if device is not None else PairInfo()
    return PairResult(device=key, code=exc.code, state=pair.state, role=pair.role, message=str(exc))


def pair_view(run: DeviceRun, freezer: Freezer) -> ledger.PairView:
    """The ledger's view of a device's pair (and of its run: shadow copy, freeze, seal)."""
    pair = run.device.pair
    return ledger.PairView(
        device=run.device.label,
        state=pair.state,
        role=pair.role,
        armed_at_ns=pair.suspend_at_ns,
        group=pair.group,
        shadow_running=run.shadow_running,
        shadow_done=run.shadow_done,
        shadow_total=run.shadow_total,
        frozen=freezer.froze(run),
        sealing=bool(run.sealed_at_ns),
    )


def decide(
    run: DeviceRun, freezer: Freezer, request: ledger.OpRequest, now_ns: int = 0
) -> ledger.Decision:
    """The ledger's decision for one device; its refusal is raised."""
    decision = ledger.decide(pair_view(run, freezer), request, now_ns, key=run.device.key)
    if decision.refusal is not None:
        raise decision.refusal
    return decision


def as_planned(counters: dict[str, int]) -> None:
    """Count a suspend's commit made as planned during the margin (status counter
    suspends_as_planned: a seal on a primary, a PEER_STATE suspend on a secondary)."""
    counters["suspends_as_planned"] = counters.get("suspends_as_planned", 0) + 1


def as_end(role: PairRole, item: PairItem, group: str) -> Callable[[PairInfo], None]:
    """An establish's update: this device becomes `role` of the pair the item describes
    (its peer, mode, fence, consistency group), not armed."""

    def update(info: PairInfo) -> None:
        info.role, info.mode, info.fence = role, item.mode, item.fence
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device
        info.consistency_group, info.suspend_at_ns = item.consistency_group, 0
        info.group = group

    return update


def swap_to_primary(info: PairInfo) -> None:
    info.role, info.suspend_at_ns = PairRole.PRIMARY, 0


def swap_to_secondary(item: PairItem) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.role, info.suspend_at_ns = PairRole.SECONDARY, 0
        info.peer_serial, info.peer_device = item.peer_serial, item.peer_device

    return update


def to_simplex(info: PairInfo) -> None:
    info.role, info.mode, info.peer_serial, info.peer_device = PairRole.NONE, None, 0, 0
    info.suspend_at_ns, info.consistency_group = 0, False


def clear_armed(info: PairInfo) -> None:
    info.suspend_at_ns = 0


def suspended_at(at_ns: int) -> Callable[[PairInfo], None]:
    def update(info: PairInfo) -> None:
        info.suspend_at_ns = at_ns

    return update


def follow_update(step: PairAction, at_ns: int) -> Callable[[PairInfo], None] | None:
    """What else changes on a secondary following its primary: T when suspended; T cleared
    when mirroring starts again; everything cleared when terminated."""
    if step is PairAction.TERMINATE:
        return to_simplex
    if step is PairAction.SUSPEND:
        return suspended_at(at_ns)
    if step in (PairAction.RESUME, PairAction.COPY_DONE):
        return clear_armed
    return None


__all__ = [
    "PREPARE_SUSPEND",
    "SEALS_KEPT_MAX",
    "Changes",
    "as_planned",
    "as_end",
    "clear_armed",
    "decide",
    "follow_update",
    "pair_view",
    "result_ok",
    "result_refused",
    "suspended_at",
    "swap_to_primary",
    "swap_to_secondary",
    "to_simplex",
]
