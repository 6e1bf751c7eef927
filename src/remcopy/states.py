# The pair state machine: every state a copy pair can be in, and every move between them.
#
# Rule 1: everything that decides whether a pair may change state lives in this file, in one
# table, `_TRANSITIONS`. Controllers, group operations, the CLI and the TUI ask this module;
# none of them keeps a rule of its own. `remcopy states` and docs/states.md print the machine
# from the same table the code runs on, so the documentation cannot drift from the behaviour.
#
# Theory of operation. A pair is in one `PairState` (DESIGN.md section 2). A `PairAction` is
# something that happens to it: an operator command (establish, suspend, resume, recover,
# failback, terminate) or an event the controller reports (copy_done, fail). `next_state` is a
# pure function: it looks the (state, action) up in the table and returns the new state, or
# raises `IllegalTransition` naming the states that would have permitted the action (libnbd's
# `permitted_states`). Nothing is stored here, so a refusal changes nothing. A group operation
# computes every pair's new state first, and commits only if none was refused (DRBD style).
#
# Operations that are not state changes (a shadow copy, a host write to a secondary) declare
# the states they are permitted in, in `OPERATION_PERMITTED`.
#
# Beside this table, `ledger.py` (pure as well) decides each pair operation as a whole from it:
# which role may do what, armed suspends, following the peer, shadow gating. Controllers and
# dry runs ask the ledger, which asks this table (docs/ledger.md).
#
# The enumerations themselves (PairState, PairAction, CopyMode, FencePolicy, PairRole) are in
# pairenums.py, which imports nothing: errors.py names them too. Import them from here.
#
# Display strings for states live in `DISPLAY_NAMES` and the greppable event line is built by
# `event_line`, so CLI, TUI and logs say the same thing (DRBD's drbd_strings.c).
from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from remcopy.errors import IllegalTransition
from remcopy.pairenums import CopyMode, FencePolicy, PairAction, PairRole, PairState

__all__ = [
    "ACTION_VERBS",
    "CopyMode",
    "DISPLAY_NAMES",
    "FencePolicy",
    "OPERATION_PERMITTED",
    "PairAction",
    "PairRole",
    "PairState",
    "TRANSITIONS",
    "event_line",
    "event_line_tail",
    "next_state",
    "permitted_states",
    "transition_note",
    "transition_rows",
]


_S = PairState
_A = PairAction

# fmt: off
_TRANSITIONS: Final[dict[tuple[PairState, PairAction], PairState]] = {
    # State: SIMPLEX
    (_S.SIMPLEX, _A.ESTABLISH): _S.PENDING,
    # State: PENDING
    (_S.PENDING, _A.COPY_DONE): _S.DUPLEX,
    (_S.PENDING, _A.SUSPEND): _S.SUSPENDED,  # see _NOTES: the secondary is inconsistent
    (_S.PENDING, _A.FAIL): _S.SUSPENDED_ERROR,
    (_S.PENDING, _A.TERMINATE): _S.SIMPLEX,
    # State: DUPLEX
    (_S.DUPLEX, _A.SUSPEND): _S.SUSPENDED,
    (_S.DUPLEX, _A.FAIL): _S.SUSPENDED_ERROR,
    (_S.DUPLEX, _A.RECOVER): _S.RECOVERED,
    (_S.DUPLEX, _A.TERMINATE): _S.SIMPLEX,
    # State: SUSPENDED
    (_S.SUSPENDED, _A.RESUME): _S.PENDING,
    (_S.SUSPENDED, _A.RECOVER): _S.RECOVERED,
    (_S.SUSPENDED, _A.TERMINATE): _S.SIMPLEX,
    # State: SUSPENDED_ERROR
    (_S.SUSPENDED_ERROR, _A.RESUME): _S.PENDING,
    (_S.SUSPENDED_ERROR, _A.RECOVER): _S.RECOVERED,
    (_S.SUSPENDED_ERROR, _A.TERMINATE): _S.SIMPLEX,
    # State: RECOVERED (on the secondary; failback copies back in the reverse direction)
    (_S.RECOVERED, _A.FAILBACK): _S.PENDING,
    (_S.RECOVERED, _A.TERMINATE): _S.SIMPLEX,
}

# Permitted moves that leave something for the caller to know.
_NOTES: Final[dict[tuple[PairState, PairAction], str]] = {
    (_S.PENDING, _A.SUSPEND):
        "the secondary is inconsistent: the copy had not finished; resume to complete it",
}

# Refused moves whose reason is not obvious from the permitted states.
_HINTS: Final[dict[tuple[PairState, PairAction], str]] = {
    (_S.PENDING, _A.RECOVER): "the secondary is inconsistent while a copy is running",
}
# fmt: on

TRANSITIONS: Final[Mapping[tuple[PairState, PairAction], PairState]] = MappingProxyType(
    _TRANSITIONS
)
"""Read-only view of the transition table: (state, action) -> new state."""

OPERATION_PERMITTED: Final[dict[str, frozenset[PairState]]] = {
    # A shadow copy needs a frozen, consistent secondary (DESIGN.md section 2).
    "shadow": frozenset({_S.SUSPENDED}),
    # A secondary refuses host writes unless it has been taken over.
    "host_write_secondary": frozenset({_S.RECOVERED}),
}

DISPLAY_NAMES: Final[Mapping[PairState, str]] = MappingProxyType(
    {
        _S.SIMPLEX: "simplex",
        _S.PENDING: "pending",
        _S.DUPLEX: "duplex",
        _S.SUSPENDED: "suspended",
        _S.SUSPENDED_ERROR: "suspended (error)",
        _S.RECOVERED: "recovered",
    }
)
"""How CLI, TUI and logs show a state to a person."""

ACTION_VERBS: Final[Mapping[PairAction, str]] = MappingProxyType(
    {
        _A.ESTABLISH: "establish",
        _A.COPY_DONE: "finish the copy of",
        _A.SUSPEND: "suspend",
        _A.FAIL: "report a replication error on",
        _A.RESUME: "resume",
        _A.RECOVER: "recover",
        _A.FAILBACK: "fail back",
        _A.TERMINATE: "terminate",
    }
)
"""The phrase that completes "cannot ... DEVICE" in a refusal."""

# Built once from the table, so a refusal and `permitted_states` never disagree with it.
_PERMITTED: Final[dict[PairAction, frozenset[PairState]]] = {
    action: frozenset(state for (state, act) in _TRANSITIONS if act is action)
    for action in PairAction
}


def permitted_states(action: PairAction) -> frozenset[PairState]:
    """Return the states in which `action` is permitted."""
    return _PERMITTED[action]


def _ordered(states: frozenset[PairState]) -> list[PairState]:
    return [state for state in PairState if state in states]


def _refusal(state: PairState, action: PairAction, device: str) -> str:
    """Build the refusal message from the permitted states, libnbd style."""
    names = [state.name for state in _ordered(permitted_states(action))]
    must = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    message = (
        f"cannot {ACTION_VERBS[action]} {device}: pair is {state.name}: the pair must be {must}"
    )
    hint = _HINTS.get((state, action))
    return message if hint is None else f"{message} ({hint})"


def next_state(state: PairState, action: PairAction, *, device: str) -> PairState:
    """Return the state `action` moves a pair in `state` to, or raise IllegalTransition."""
    new = _TRANSITIONS.get((state, action))
    if new is None:
        raise IllegalTransition(
            _refusal(state, action, device),
            state=state,
            action=action,
            allowed=permitted_states(action),
            device=device,
        )
    return new


def transition_note(state: PairState, action: PairAction) -> str:
    """Return what the caller must know about a permitted move, or "" if nothing."""
    return _NOTES.get((state, action), "")


def transition_rows() -> list[tuple[PairState, PairAction, PairState | None, str]]:
    """Every (state, action) with its result, or None and the refusal message.

    For a permitted move the text is its note ("" if none); for a refused one it is the
    message `next_state` raises, with `DEVICE` standing for the device.
    """
    rows: list[tuple[PairState, PairAction, PairState | None, str]] = []
    for state in PairState:
        for action in PairAction:
            new = _TRANSITIONS.get((state, action))
            if new is None:
                rows.append((state, action, None, _refusal(state, action, "DEVICE")))
            else:
                rows.append((state, action, new, transition_note(state, action)))
    return rows


def _event_value(text: str) -> str:
    """Quote a value (as a JSON string) only when it would break `key=value` splitting."""
    if text and text.isprintable() and not any(char in ' ="\\' for char in text):
        return text
    # JSON escapes quotes, backslashes, newlines and control characters: the line stays one line.
    return json.dumps(text)


def event_line(
    device: str,
    old: PairState,
    new: PairState,
    *,
    cause: str,
    at_ns: int | None = None,
    **tags: str,
) -> str:
    """Return the greppable line for one committed change.

    `pair 64015:1A00:0A:3F DUPLEX -> SUSPENDED at=1700000000000000000 cause=suspend group=PAY`
    """
    return f"pair {device}{event_line_tail(old, new, cause=cause, at_ns=at_ns, **tags)}"


def event_line_tail(
    old: PairState,
    new: PairState,
    *,
    cause: str,
    at_ns: int | None = None,
    **tags: str,
) -> str:
    """What follows the device in `event_line`, from " DUPLEX -> ..." on: the same for every
    device of one commit that moved alike, so a commit of thousands formats it once."""
    assert "at" not in tags, "tags must not repeat at="
    fields = [] if at_ns is None else [f"at={at_ns}"]
    fields.append(f"cause={_event_value(cause)}")
    fields.extend(f"{key}={_event_value(value)}" for key, value in tags.items())
    return f" {old.name} -> {new.name} {' '.join(fields)}"
