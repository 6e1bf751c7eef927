# The seal's timer (controller/sealtimer.py), driven by a fake clock: no loop, no sockets.
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remcopy.controller.sealtimer import SealTimer
from remcopy.errors import RemcopyInternalError

T = 1_800_000_000_000_000_000  # a suspend time T, wall-clock ns
MS = 1_000_000


def drive(
    timer: SealTimer[str], *, now_ns: int, until_ns: int, early_ns: int
) -> list[tuple[int, str, int]]:
    """Wake up as the shell does, each time `early_ns` before the deadline it was given (an
    event-loop timer firing early), then at the deadline; returns (T, item, now) sealed."""
    sealed: list[tuple[int, str, int]] = []
    for _ in range(4 * len(timer) + 4):  # bounded: each arm costs at most two wake-ups
        deadline = timer.get_timer()
        if deadline is None or deadline > until_ns:
            return sealed
        for wake_ns in (max(now_ns, deadline - early_ns), max(now_ns, deadline)):
            now_ns = wake_ns
            sealed.extend((at_ns, item, now_ns) for at_ns, item in timer.handle_timer(now_ns))
    raise AssertionError(f"the timer did not settle: {timer!r}")


def test_SealTimer_empty_has_no_deadline() -> None:
    """A timer with nothing armed reports no deadline and nothing due."""
    timer: SealTimer[str] = SealTimer()
    assert timer.get_timer() is None
    assert timer.handle_timer(T) == []
    assert len(timer) == 0


def test_SealTimer_arm_reports_T_and_is_due_at_T() -> None:
    """An arm's deadline is its T; it is due at T, once."""
    timer: SealTimer[str] = SealTimer()
    timer.arm(T, "a")
    assert timer.get_timer() == T
    assert timer.handle_timer(T) == [(T, "a")]
    assert timer.get_timer() is None
    assert timer.handle_timer(T + MS) == []


def test_SealTimer_early_wake_up_seals_nothing_before_T() -> None:
    """A wake-up before T (an event-loop timer firing early) returns nothing; T stays the
    deadline, and the arm is due at T."""
    timer: SealTimer[str] = SealTimer()
    timer.arm(T, "a")
    assert timer.handle_timer(T - 1) == []
    assert timer.handle_timer(T - MS) == []
    assert timer.get_timer() == T
    assert drive(timer, now_ns=T - 10 * MS, until_ns=T, early_ns=MS) == [(T, "a", T)]


def test_SealTimer_several_T_are_due_in_order_of_T() -> None:
    """Arms at several T are due each at its own T, earliest first, whatever the arm order."""
    timer: SealTimer[str] = SealTimer()
    timer.arm(T + 30 * MS, "third")
    timer.arm(T, "first")
    timer.arm(T + 20 * MS, "second")
    assert timer.get_timer() == T
    assert timer.handle_timer(T + 25 * MS) == [(T, "first"), (T + 20 * MS, "second")]
    assert timer.get_timer() == T + 30 * MS
    assert drive(timer, now_ns=T + 25 * MS, until_ns=T + 30 * MS, early_ns=MS) == [
        (T + 30 * MS, "third", T + 30 * MS)
    ]


def test_SealTimer_arms_at_one_T_are_due_together_in_arm_order() -> None:
    """Two suspends at the same T (a host's and a freeze's) are due in one wake-up, in the
    order they were armed."""
    timer: SealTimer[str] = SealTimer()
    timer.arm(T, "host")
    timer.arm(T, "freeze")
    assert timer.handle_timer(T) == [(T, "host"), (T, "freeze")]


def test_SealTimer_cancel_disarms_one_arm_before_T() -> None:
    """A cancelled arm is never due; the other arms at that T still are, and the deadline
    moves on when the earliest is cancelled."""
    timer: SealTimer[str] = SealTimer()
    early = timer.arm(T, "cancelled")
    timer.arm(T + MS, "kept")
    timer.arm(T + MS, "kept too")
    assert timer.cancel(early) is True
    assert timer.get_timer() == T + MS
    assert timer.cancel(early) is False  # once only
    assert timer.handle_timer(T + MS) == [(T + MS, "kept"), (T + MS, "kept too")]


def test_SealTimer_cancel_after_T_changes_nothing() -> None:
    """An arm already due cannot be cancelled: its seal has begun."""
    timer: SealTimer[str] = SealTimer()
    handle = timer.arm(T, "a")
    assert timer.handle_timer(T) == [(T, "a")]
    assert timer.cancel(handle) is False


def test_SealTimer_rearmed_after_restart_seals_a_passed_T_at_once() -> None:
    """After a restart each persisted T is armed again: one that passed while the controller
    was down is due at the first wake-up; one still ahead waits for its T."""
    before: SealTimer[str] = SealTimer()
    before.arm(T, "passed")
    before.arm(T + 60_000 * MS, "ahead")
    restart_ns = T + 5_000 * MS  # down across T
    after: SealTimer[str] = SealTimer()  # nothing survives in memory: re-armed from disk
    after.arm(T, "passed")
    after.arm(T + 60_000 * MS, "ahead")
    deadline = after.get_timer()
    assert deadline is not None and deadline <= restart_ns  # the shell's delay is 0
    assert after.handle_timer(restart_ns) == [(T, "passed")]
    assert after.get_timer() == T + 60_000 * MS
    assert after.handle_timer(T + 60_000 * MS - 1) == []


def test_SealTimer_refuses_a_T_that_is_not_a_time() -> None:
    """T must be a positive time: 0 means "not armed" in a pair's state."""
    timer: SealTimer[str] = SealTimer()
    with pytest.raises(RemcopyInternalError, match=r"at_ns must be > 0 \(got 0\)"):
        timer.arm(0, "a")
    assert "armed=0" in repr(timer)


@given(
    arms=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12),
    cancelled=st.sets(st.integers(min_value=0, max_value=11)),
    early_ms=st.integers(min_value=0, max_value=5),
)
def test_SealTimer_every_arm_is_due_once_never_before_T(
    arms: list[int], cancelled: set[int], early_ms: int
) -> None:
    """Whatever the arms, cancels and early wake-ups: each arm not cancelled is sealed
    exactly once, never before its T, in order of T."""
    timer: SealTimer[str] = SealTimer()
    handles = [timer.arm(T + offset * MS, f"arm{i}") for i, offset in enumerate(arms)]
    for i in cancelled:
        if i < len(handles):
            assert timer.cancel(handles[i])
    sealed = drive(timer, now_ns=T - MS, until_ns=T + 60 * MS, early_ns=early_ms * MS)
    expected = {f"arm{i}" for i in range(len(arms)) if i not in cancelled}
    assert sorted(item for _t, item, _now in sealed) == sorted(expected)
    assert all(now >= at_ns for at_ns, _item, now in sealed)
    assert [at_ns for at_ns, _item, _now in sealed] == sorted(at for at, _i, _n in sealed)
    assert timer.get_timer() is None
