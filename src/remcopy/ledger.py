# The pair ledger: one pure planner that decides every pair operation, for the controller and
# for the dry run alike.
#
# Why: whether a device may be established, suspended (now or at T), resumed, recovered,
# failed back, terminated, shadow-copied or disarmed, and which steps a secondary takes to
# follow its primary, used to be decided in the controller's pair operations and again, on
# query results, in the dry run. Two copies of a rule drift apart. Here is the one copy:
# `decide` takes what is known of one device's pair (`PairView`), the request (`OpRequest`)
# and the time (`now_ns`, passed in, never read), and returns a `Decision`: the steps of the
# state machine the device goes through and the pair it ends with, or the refusal (the same
# error classes and messages the controller has always answered). `plan` decides a batch.
#
# Rules this module keeps (docs/ledger.md):
# - The moves themselves come from states.py's table (`next_state`); nothing here adds one.
# - A primary still mirroring (DUPLEX or PENDING) that is armed for a suspend refuses every
#   other state change (DeviceBusy) until T has passed or the suspend is cancelled; a suspend
#   joins the controller freeze that armed it instead.
# - Suspend, resume and the arm act at the primary; recover and shadow at the secondary.
# - A suspend at a T that has passed on this clock is refused whole (SuspendTimeInPast).
# - Cancel: only an armed primary still mirroring, not armed by a freeze, for the T named (if
#   any), before T and before its seal began.
# - A secondary follows its primary's action in the steps `follow_steps` gives (via FAIL when
#   it had not seen the error that suspended the primary); it refuses a resume while a
#   shadow copy of it runs.
#
# Nothing here does I/O: the caller commits the plan (controller.core), applies it and
# announces its events; the dry run (groups.preview) only shows it.
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from remcopy.errors import (
    DeviceBusy,
    IllegalTransition,
    InputError,
    RemcopyError,
    SuspendNotArmed,
    SuspendTimeInPast,
)
from remcopy.states import OPERATION_PERMITTED, PairAction, PairRole, PairState, next_state

__all__ = [
    "Decision",
    "Event",
    "Op",
    "OpRequest",
    "PairView",
    "Plan",
    "armed_for",
    "armed_refusal",
    "decide",
    "follow_steps",
    "plan",
    "suspend_time_check",
]


class Op(Enum):
    """A pair operation as the ledger decides it."""

    ESTABLISH = "establish"
    SUSPEND = "suspend"
    RESUME = "resume"
    RECOVER = "recover"
    FAILBACK = "failback"
    TERMINATE = "terminate"
    SHADOW = "shadow"
    SUSPEND_CANCEL = "suspend-cancel"
    # The secondary side, asked by the primary's controller (no armed gate: a secondary is
    # never armed, and a device armed as a primary is refused by its state).
    PEER_ESTABLISH = "peer-establish"
    FOLLOW = "follow"
    """Follow the primary's `OpRequest.action` (PEER_STATE)."""
    PEER_FAILBACK = "peer-failback"
    """Become the secondary of a failback: follow a resume."""


# The state-machine action each operation asks of a device (FOLLOW: the request's action).
_ACTION: Final[dict[Op, PairAction]] = {
    Op.ESTABLISH: PairAction.ESTABLISH,
    Op.SUSPEND: PairAction.SUSPEND,
    Op.RESUME: PairAction.RESUME,
    Op.RECOVER: PairAction.RECOVER,
    Op.FAILBACK: PairAction.FAILBACK,
    Op.TERMINATE: PairAction.TERMINATE,
    Op.PEER_ESTABLISH: PairAction.ESTABLISH,
}

# Operations refused on a primary armed for a suspend (the others decide armed devices).
_GATED: Final = frozenset(
    {Op.ESTABLISH, Op.SUSPEND, Op.RESUME, Op.RECOVER, Op.FAILBACK, Op.TERMINATE, Op.SHADOW}
)

_MIRRORING: Final = frozenset({PairState.DUPLEX, PairState.PENDING})


@dataclass(frozen=True, slots=True, kw_only=True)
class PairView:
    """What the ledger needs to know of one device's pair (adapters: controller.pairsteps
    from a device and its run, groups.preview from a query answer)."""

    device: str
    """The device's address, as refusals name it."""
    state: PairState = PairState.SIMPLEX
    role: PairRole = PairRole.NONE
    armed_at_ns: int = 0
    """The suspend time T armed while DUPLEX/PENDING (the time suspended once SUSPENDED)."""
    group: str = ""
    shadow_running: bool = False
    shadow_done: int = 0
    shadow_total: int = 0
    """A running shadow copy's progress, in tracks (as a refusal tells it)."""
    frozen: bool = False
    """A controller freeze armed (or sealed) it: a suspend joins that freeze."""
    sealing: bool = False
    """The seal of its T has begun: too late to cancel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRequest:
    """One operation on a batch of devices."""

    op: Op
    at_ns: int = 0
    """SUSPEND: T; SUSPEND_CANCEL: the T to cancel (0: whatever is armed); FOLLOW: T."""
    action: str = ""
    """FOLLOW: the primary's action (a PairAction value)."""
    empty: frozenset[int] = frozenset()
    """FOLLOW "resume": devices with nothing to copy (they go on to DUPLEX at once)."""
    controller: str = ""
    """The deciding controller's name, as refusals about its clock name it."""
    shadow_gate: bool = True
    """FOLLOW "resume" is refused while a shadow copy runs (False: a planted fault)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One device's answer: the steps and the pair it ends with, or the refusal."""

    old: PairView
    steps: tuple[PairAction, ...] = ()
    """The state machine's actions, in order (SUSPEND: made at T, by the seal)."""
    new: PairView | None = None
    """The pair once the steps are made (None: refused)."""
    refusal: RemcopyError | None = None
    joined: bool = False
    """SUSPEND: the device joins the freeze that armed it (no steps of its own)."""

    @property
    def refused(self) -> bool:
        return self.refusal is not None


@dataclass(frozen=True, slots=True)
class Event:
    """A change to announce once committed: a move (old -> new) or an arm ("armed")."""

    key: int
    kind: str
    old: PairState
    new: PairState
    at_ns: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """Every device's decision for one request, and the events its commit announces."""

    decisions: dict[int, Decision]
    events: list[Event] = field(default_factory=list)

    def accepted(self) -> dict[int, Decision]:
        return {key: d for key, d in self.decisions.items() if not d.refused}

    def refused(self) -> dict[int, RemcopyError]:
        return {key: d.refusal for key, d in self.decisions.items() if d.refusal is not None}


def suspend_time_check(at_ns: int, now_ns: int, *, controller: str) -> None:
    """Refuse a suspend whose T has passed on this clock (the whole request)."""
    if at_ns <= now_ns:
        raise SuspendTimeInPast(
            f"suspend at {at_ns}: that time has passed on controller {controller} "
            f"(now {now_ns}, {(now_ns - at_ns) / 1e6:.3f} ms late): choose a later time or a "
            "larger margin"
        )


def armed_for(view: PairView, at_ns: int) -> bool:
    """The device waits for the seal of T: a primary still mirroring, armed for T."""
    return view.role is PairRole.PRIMARY and view.state in _MIRRORING and view.armed_at_ns == at_ns


def follow_steps(state: PairState, action: str) -> list[PairAction]:
    """The steps a secondary takes to follow its primary's action from its own state."""
    try:
        wanted = PairAction(action)
    except ValueError:
        raise InputError(f"unknown peer action {action!r}") from None
    return list(_FOLLOW_VIA.get((state, wanted), [wanted]))


# A secondary may not have seen the error that suspended its primary: it follows via FAIL.
_FOLLOW_VIA: Final[dict[tuple[PairState, PairAction], list[PairAction]]] = {
    (PairState.DUPLEX, PairAction.RESUME): [PairAction.FAIL, PairAction.RESUME],
    (PairState.PENDING, PairAction.RESUME): [PairAction.FAIL, PairAction.RESUME],
    # The primary tells the end of a copy first and may tell it again after more tracks.
    (PairState.DUPLEX, PairAction.COPY_DONE): [],
}


def plan(pairs: Mapping[int, PairView], request: OpRequest, now_ns: int) -> Plan:
    """Decide `request` for every device of `pairs` (device key -> its pair). Raises
    SuspendTimeInPast for a suspend at a T already past (nothing is decided)."""
    if request.op is Op.SUSPEND:
        suspend_time_check(request.at_ns, now_ns, controller=request.controller)
    decisions = {key: decide(view, request, now_ns, key=key) for key, view in pairs.items()}
    events: list[Event] = []
    for key, d in decisions.items():
        if d.new is None:
            continue
        if request.op is Op.SUSPEND and not d.joined:
            events.append(Event(key, "armed", d.old.state, d.old.state, request.at_ns))
        elif request.op is Op.SUSPEND_CANCEL:
            events.append(Event(key, "disarmed", d.old.state, d.old.state, d.old.armed_at_ns))
        elif d.steps and d.new.state is not d.old.state:
            at = request.at_ns if request.op is Op.FOLLOW and request.action == "suspend" else 0
            events.append(Event(key, "move", d.old.state, d.new.state, at))
    return Plan(decisions, events)


def decide(view: PairView, request: OpRequest, now_ns: int, *, key: int = -1) -> Decision:
    """One device's decision (see the rules at the top). `key` is needed only for FOLLOW
    with `request.empty`."""
    try:
        return _decide(view, request, now_ns, key)
    except RemcopyError as exc:
        return Decision(view, refusal=exc)


def _decide(view: PairView, request: OpRequest, now_ns: int, key: int) -> Decision:
    op = request.op
    busy = armed_refusal(view, op)
    if busy is not None:
        raise busy
    if op is Op.SUSPEND:
        if view.frozen:
            return Decision(view, new=view, joined=True)
        new = next_state(view.state, PairAction.SUSPEND, device=view.device)
        _at_primary(view, "suspend")
        return Decision(
            view, (PairAction.SUSPEND,), _with(view, state=new, armed_at_ns=request.at_ns)
        )
    if op is Op.RESUME:
        new = next_state(view.state, PairAction.RESUME, device=view.device)
        _at_primary(view, "resume")
        return Decision(view, (PairAction.RESUME,), _with(view, state=new, armed_at_ns=0))
    if op is Op.RECOVER:
        if view.role is not PairRole.SECONDARY:
            raise IllegalTransition(
                f"cannot recover {view.device}: it is not the secondary of a pair: recover "
                "at the secondary"
            )
        new = next_state(view.state, PairAction.RECOVER, device=view.device)
        return Decision(view, (PairAction.RECOVER,), _with(view, state=new))
    if op is Op.SHADOW:
        if view.role is not PairRole.SECONDARY or view.state not in OPERATION_PERMITTED["shadow"]:
            raise IllegalTransition(
                f"cannot shadow {view.device}: pair is {view.state.name} "
                f"({view.role.value}): a shadow copy needs a SUSPENDED secondary"
            )
        if view.shadow_running:
            raise DeviceBusy(f"{view.device}: a shadow copy is already running")
        return Decision(view, (), _with(view, shadow_running=True))
    if op is Op.SUSPEND_CANCEL:
        return _cancel(view, request, now_ns)
    if op is Op.FOLLOW:
        return _follow(view, request, key)
    if op is Op.PEER_FAILBACK:
        return _steps(view, follow_steps(view.state, "resume"), role=PairRole.SECONDARY)
    action = _ACTION[op]
    new = next_state(view.state, action, device=view.device)
    if op is Op.TERMINATE:
        return Decision(
            view,
            (action,),
            _with(view, state=new, role=PairRole.NONE, armed_at_ns=0, group=""),
        )
    if op is Op.FAILBACK:
        return Decision(view, (action,), _with(view, state=new, role=PairRole.PRIMARY))
    role = PairRole.PRIMARY if op is Op.ESTABLISH else PairRole.SECONDARY
    return Decision(view, (action,), _with(view, state=new, role=role, armed_at_ns=0))


def armed_refusal(view: PairView, op: Op) -> DeviceBusy | None:
    """The refusal of `op` on a primary armed for a suspend, still mirroring (a suspend
    joins the freeze that armed it instead); None when the device is not held by one."""
    if (
        op in _GATED
        and view.armed_at_ns
        and view.role is PairRole.PRIMARY
        and view.state in _MIRRORING
        and not (op is Op.SUSPEND and view.frozen)
    ):
        return DeviceBusy(
            f"{view.device}: a suspend is armed for {view.armed_at_ns}: other "
            "state changes wait until it has passed (or cancel it: "
            "remcopy group suspend --cancel)"
        )
    return None


def _with(
    view: PairView,
    *,
    state: PairState | None = None,
    role: PairRole | None = None,
    armed_at_ns: int | None = None,
    group: str | None = None,
    shadow_running: bool | None = None,
) -> PairView:
    """`view` with these fields changed (dataclasses.replace costs five times as much, on a
    path that decides 10,000 devices inside a suspend's margin)."""
    return PairView(
        device=view.device,
        state=view.state if state is None else state,
        role=view.role if role is None else role,
        armed_at_ns=view.armed_at_ns if armed_at_ns is None else armed_at_ns,
        group=view.group if group is None else group,
        shadow_running=view.shadow_running if shadow_running is None else shadow_running,
        shadow_done=view.shadow_done,
        shadow_total=view.shadow_total,
        frozen=view.frozen,
        sealing=view.sealing,
    )


def _at_primary(view: PairView, verb: str) -> None:
    if view.role is not PairRole.PRIMARY:
        raise IllegalTransition(
            f"cannot {verb} {view.device}: it is not the primary of a pair: {verb} at the primary"
        )


def _steps(
    view: PairView,
    steps: list[PairAction],
    *,
    role: PairRole | None = None,
    armed_at_ns: int | None = None,
) -> Decision:
    """Walk `steps` through the table (refused at the first illegal one); the pair ends
    with `role` and `armed_at_ns` when given (one new view: this decides every device of a
    10,000-pair group's secondaries)."""
    state = view.state
    for step in steps:
        state = next_state(state, step, device=view.device)
    if state is PairState.SIMPLEX and steps:
        new = _with(view, state=state, role=PairRole.NONE, armed_at_ns=0, group="")
    else:
        new = _with(view, state=state, role=role or view.role, armed_at_ns=armed_at_ns)
    return Decision(view, tuple(steps), new)


def _follow(view: PairView, request: OpRequest, key: int) -> Decision:
    action = request.action
    if action == "resume" and view.shadow_running and request.shadow_gate:
        raise DeviceBusy(
            f"{view.device}: a shadow copy of this secondary is running "
            f"({view.shadow_done}/{view.shadow_total} tracks): resume after it completes"
        )
    steps = follow_steps(view.state, action)
    if action == "resume" and key in request.empty:
        steps.append(PairAction.COPY_DONE)  # nothing to copy: DUPLEX now
    armed: int | None = None
    if PairAction.SUSPEND in steps:  # suspended at T
        armed = request.at_ns
    elif steps and steps[-1] in (PairAction.RESUME, PairAction.COPY_DONE):
        armed = 0
    return _steps(view, steps, armed_at_ns=armed)


def _cancel(view: PairView, request: OpRequest, now_ns: int) -> Decision:
    address, armed = view.device, view.armed_at_ns
    if view.role is PairRole.PRIMARY and view.state is PairState.SUSPENDED:
        raise SuspendTimeInPast(
            f"cannot cancel the suspend of {address}: it happened, T {armed} has passed: the "
            "pair is SUSPENDED (resume it to mirror again)"
        )
    if view.role is not PairRole.PRIMARY or view.state not in _MIRRORING or not armed:
        raise SuspendNotArmed(
            f"cannot cancel the suspend of {address}: none is armed (it is "
            f"{view.state.name}, {view.role.value}): nothing to cancel"
        )
    if view.frozen:
        raise DeviceBusy(
            f"cannot cancel the suspend of {address}: a freeze of group {view.group} armed it "
            f"at {armed} after a replication error: a freeze is not cancelled (it keeps the "
            "secondary site consistent)"
        )
    if request.at_ns and armed != request.at_ns:
        raise SuspendNotArmed(
            f"cannot cancel the suspend of {address} at {request.at_ns}: it is armed for {armed}"
        )
    if armed <= now_ns or view.sealing:
        raise SuspendTimeInPast(
            f"cannot cancel the suspend of {address}: T {armed} has passed on controller "
            f"{request.controller} (now {now_ns}): it is being sealed"
        )
    return Decision(view, (), _with(view, armed_at_ns=0))
