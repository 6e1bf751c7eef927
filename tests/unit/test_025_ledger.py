# The pair ledger (remcopy.ledger): every operation x state x role x armed x shadow x freeze,
# checked against states.py's transition table and the rules docs/ledger.md states, written
# here once more as a plain oracle (not by asking the ledger); and the dry run
# (groups.preview.plan_pair) answering as the ledger does for the same inputs. Pure: no
# sockets, no processes, no clock.
from __future__ import annotations

import itertools

import pytest

from remcopy.errors import (
    DeviceBusy,
    IllegalTransition,
    InputError,
    SuspendNotArmed,
    SuspendTimeInPast,
)
from remcopy.groups.model import GroupPair
from remcopy.groups.preview import plan_pair
from remcopy.ids import HardwareAddress
from remcopy.ledger import Op, OpRequest, PairView, armed_for, decide, plan
from remcopy.states import TRANSITIONS, PairAction, PairRole, PairState, permitted_states
from remcopy.wire.native import DeviceStatus, PairOp

NOW = 1_000_000
AHEAD = NOW + 5_000  # an armed T still ahead of NOW
PAST = NOW - 5_000  # an armed T already passed
DEVICE = "64015:1A00:0A:00"

HOST_OPS = [Op.ESTABLISH, Op.SUSPEND, Op.RESUME, Op.RECOVER, Op.FAILBACK, Op.TERMINATE, Op.SHADOW]
# The table's action for each operation that moves a pair: the one of the same name.
ACTION = {op: PairAction(op.value) for op in HOST_OPS if op is not Op.SHADOW}
MIRRORING = {PairState.DUPLEX, PairState.PENDING}


def _views() -> list[PairView]:
    return [
        PairView(
            device=DEVICE,
            state=state,
            role=role,
            armed_at_ns=armed,
            shadow_running=shadow,
            frozen=frozen,
        )
        for state, role, armed, shadow, frozen in itertools.product(
            PairState, PairRole, (0, AHEAD), (False, True), (False, True)
        )
    ]


def _expected(view: PairView, op: Op) -> type[Exception] | PairState | str:
    """The oracle: the error class a host operation is refused with, the state it leads
    to, or "joined" (a suspend joining the freeze that armed the device)."""
    mirroring = view.state in MIRRORING
    if (
        view.armed_at_ns
        and view.role is PairRole.PRIMARY
        and mirroring
        and not (op is Op.SUSPEND and view.frozen)
    ):
        return DeviceBusy  # armed: nothing else until T passed or the suspend is cancelled
    if op is Op.SUSPEND and view.frozen:
        return "joined"
    if op is Op.SHADOW:  # OPERATION_PERMITTED["shadow"]: a SUSPENDED secondary, one copy
        if view.role is not PairRole.SECONDARY or view.state is not PairState.SUSPENDED:
            return IllegalTransition
        return DeviceBusy if view.shadow_running else view.state
    if op is Op.RECOVER and view.role is not PairRole.SECONDARY:
        return IllegalTransition  # recover at the secondary
    new = TRANSITIONS.get((view.state, ACTION[op]))
    if new is None:
        return IllegalTransition
    if op in (Op.SUSPEND, Op.RESUME) and view.role is not PairRole.PRIMARY:
        return IllegalTransition  # suspend and resume at the primary
    return new


@pytest.mark.parametrize("op", HOST_OPS, ids=lambda op: op.value)
def test_every_host_operation_on_every_pair_follows_the_table_and_the_rules(op: Op) -> None:
    request = OpRequest(op=op, at_ns=AHEAD + 1)
    for view in _views():
        decision = decide(view, request, NOW)
        expected = _expected(view, op)
        where = f"{op.value} on {view}"
        assert decision.old == view, where
        if isinstance(expected, type):
            assert isinstance(decision.refusal, expected), where
            assert decision.new is None and decision.steps == (), where
            assert DEVICE in str(decision.refusal), where
            if type(decision.refusal) is IllegalTransition and decision.refusal.action:
                # A refusal by the table names the states that would have permitted it.
                assert decision.refusal.allowed == permitted_states(decision.refusal.action)
        elif expected == "joined":
            assert decision.joined and decision.steps == () and decision.new == view, where
        else:
            assert decision.refusal is None and decision.new is not None, where
            assert decision.new.state is expected, where
            if op is not Op.SHADOW:
                assert decision.steps == (ACTION[op],), where


def test_a_suspend_arms_t_and_a_resume_or_terminate_clears_it() -> None:
    duplex = PairView(device=DEVICE, state=PairState.DUPLEX, role=PairRole.PRIMARY)
    armed = decide(duplex, OpRequest(op=Op.SUSPEND, at_ns=AHEAD), NOW).new
    assert armed is not None and armed.armed_at_ns == AHEAD
    suspended = PairView(
        device=DEVICE, state=PairState.SUSPENDED, role=PairRole.PRIMARY, armed_at_ns=PAST
    )
    resumed = decide(suspended, OpRequest(op=Op.RESUME), NOW).new
    assert resumed is not None and resumed.armed_at_ns == 0
    gone = decide(suspended, OpRequest(op=Op.TERMINATE), NOW).new
    assert gone is not None and (gone.role, gone.armed_at_ns) == (PairRole.NONE, 0)


@pytest.mark.parametrize("at_ns", [PAST, NOW])
def test_a_suspend_at_a_t_not_ahead_is_refused_whole(at_ns: int) -> None:
    pairs = {1: PairView(device=DEVICE, state=PairState.DUPLEX, role=PairRole.PRIMARY)}
    with pytest.raises(SuspendTimeInPast, match="that time has passed on controller c1"):
        plan(pairs, OpRequest(op=Op.SUSPEND, at_ns=at_ns, controller="c1"), NOW)


def test_a_suspend_plan_announces_one_arm_per_device_it_arms() -> None:
    pairs = {
        1: PairView(device="a", state=PairState.DUPLEX, role=PairRole.PRIMARY),
        2: PairView(device="b", state=PairState.SIMPLEX),
        3: PairView(
            device="c", state=PairState.DUPLEX, role=PairRole.PRIMARY, armed_at_ns=AHEAD - 1
        ),
        4: PairView(
            device="d",
            state=PairState.DUPLEX,
            role=PairRole.PRIMARY,
            armed_at_ns=AHEAD - 1,
            frozen=True,
        ),
    }
    made = plan(pairs, OpRequest(op=Op.SUSPEND, at_ns=AHEAD), NOW)
    assert set(made.accepted()) == {1, 4} and made.decisions[4].joined
    assert isinstance(made.refused()[2], IllegalTransition)
    assert isinstance(made.refused()[3], DeviceBusy)
    assert [(e.key, e.kind, e.at_ns) for e in made.events] == [(1, "armed", AHEAD)]


def _cancel_expected(view: PairView, at_ns: int) -> type[Exception] | None:
    if view.role is PairRole.PRIMARY and view.state is PairState.SUSPENDED:
        return SuspendTimeInPast  # it happened
    if view.role is not PairRole.PRIMARY or view.state not in MIRRORING or not view.armed_at_ns:
        return SuspendNotArmed
    if view.frozen:
        return DeviceBusy  # a freeze is not cancelled
    if at_ns and at_ns != view.armed_at_ns:
        return SuspendNotArmed  # armed for another T
    if view.armed_at_ns <= NOW or view.sealing:
        return SuspendTimeInPast  # being sealed
    return None


def test_every_cancel_follows_the_rules() -> None:
    for state, role, armed, frozen, sealing, at_ns in itertools.product(
        PairState, PairRole, (0, PAST, AHEAD), (False, True), (False, True), (0, AHEAD, PAST)
    ):
        view = PairView(
            device=DEVICE,
            state=state,
            role=role,
            armed_at_ns=armed,
            frozen=frozen,
            sealing=sealing,
        )
        decision = decide(view, OpRequest(op=Op.SUSPEND_CANCEL, at_ns=at_ns), NOW)
        expected = _cancel_expected(view, at_ns)
        if expected is None:
            assert decision.new == PairView(
                device=DEVICE, state=state, role=role, armed_at_ns=0, frozen=frozen
            ), view
        else:
            assert isinstance(decision.refusal, expected), (view, at_ns)


def _follow_expected(state: PairState, action: PairAction, empty: bool) -> list[PairAction]:
    """A secondary follows its primary's action; one that had not seen the error that
    suspended its primary goes via FAIL; a DUPLEX one told a copy is done again stays."""
    if action is PairAction.RESUME and state in MIRRORING:
        steps = [PairAction.FAIL, PairAction.RESUME]
    elif action is PairAction.COPY_DONE and state is PairState.DUPLEX:
        steps = []
    else:
        steps = [action]
    if action is PairAction.RESUME and empty:
        steps.append(PairAction.COPY_DONE)
    return steps


def test_every_follow_walks_the_table_or_is_refused() -> None:
    for state, action, empty, shadow in itertools.product(
        PairState, PairAction, (False, True), (False, True)
    ):
        view = PairView(device=DEVICE, state=state, role=PairRole.SECONDARY, shadow_running=shadow)
        request = OpRequest(
            op=Op.FOLLOW, at_ns=AHEAD, action=action.value, empty=frozenset({7} if empty else ())
        )
        decision = decide(view, request, NOW, key=7)
        if action is PairAction.RESUME and shadow:
            assert isinstance(decision.refusal, DeviceBusy), view
            continue
        steps = _follow_expected(state, action, empty)
        walked: PairState | None = state
        for step in steps:
            walked = TRANSITIONS.get((walked, step)) if walked is not None else None
        if walked is None:
            assert isinstance(decision.refusal, IllegalTransition), (state, action)
            continue
        assert decision.steps == tuple(steps), (state, action)
        assert decision.new is not None and decision.new.state is walked
        if action is PairAction.SUSPEND:
            assert decision.new.armed_at_ns == AHEAD  # suspended at T
    bad = decide(PairView(device=DEVICE), OpRequest(op=Op.FOLLOW, action="explode"), NOW).refusal
    assert isinstance(bad, InputError) and "unknown peer action" in str(bad)


def test_a_follow_of_resume_past_a_shadow_copy_only_when_the_gate_is_off() -> None:
    view = PairView(
        device=DEVICE,
        state=PairState.SUSPENDED,
        role=PairRole.SECONDARY,
        shadow_running=True,
        shadow_done=3,
        shadow_total=9,
    )
    gated = decide(view, OpRequest(op=Op.FOLLOW, action="resume"), NOW).refusal
    assert isinstance(gated, DeviceBusy) and "(3/9 tracks)" in str(gated)
    open_ = decide(view, OpRequest(op=Op.FOLLOW, action="resume", shadow_gate=False), NOW)
    assert open_.new is not None and open_.new.state is PairState.PENDING


def test_armed_for_is_a_mirroring_primary_armed_for_that_t() -> None:
    for view in _views():
        expected = (
            view.role is PairRole.PRIMARY and view.state in MIRRORING and view.armed_at_ns == AHEAD
        )
        assert armed_for(view, AHEAD) is expected


# The dry run and the ledger: the same answer for the same inputs.

_P = HardwareAddress.parse("64015:1A00:0A:00")
_S = HardwareAddress.parse("65000:2B00:20:00")
_T = HardwareAddress.parse("65000:3B00:30:00")
_PAIR = GroupPair(
    volser="PAY000", primary=_P, secondary=_S, primary_controller="a", secondary_controller="b"
)
# The wire's operations the dry run shows, and the ledger's of the same name.
PREVIEW_OPS = {op: Op(op.name.lower()) for op in PairOp if op.name.lower() in {o.value for o in Op}}


@pytest.mark.parametrize("op", list(PREVIEW_OPS), ids=lambda op: op.name.lower())
def test_the_dry_run_answers_as_the_ledger_does(op: PairOp) -> None:
    at_primary = op in (PairOp.ESTABLISH, PairOp.SUSPEND, PairOp.RESUME, PairOp.TERMINATE)
    acting = _P if at_primary else _S
    for state, role, armed, shadow in itertools.product(
        PairState, PairRole, (0, AHEAD), (False, True)
    ):
        status = DeviceStatus(
            device=acting.device_key,
            state=state,
            role=role,
            suspend_at_ns=armed,
            flags=int(shadow),
        )
        free = DeviceStatus(device=0)  # the other side (and the tertiary): SIMPLEX, no pair
        statuses = {
            ("a", _P.device_key): status if at_primary else free,
            ("b", _S.device_key): free if at_primary else status,
            ("b", _T.device_key): free,
        }
        row = plan_pair(_PAIR, op, statuses, {}, {str(_S): _T})
        view = PairView(
            device=str(acting),
            state=state,
            role=role,
            armed_at_ns=armed,
            shadow_running=shadow,
        )
        decision = decide(view, OpRequest(op=PREVIEW_OPS[op], at_ns=AHEAD + 1), NOW)
        where = f"{op.name} on {view}"
        if decision.refusal is not None:
            # Refused alike, with the ledger's words; or counted done as already there.
            assert row.refused or row.already, where
            if row.refused:
                assert str(decision.refusal) in row.reason, where
        else:
            assert decision.new is not None
            assert row.new_state is decision.new.state, where
