# Tests for remcopy.states: every (state, action) against a table written here independently
# of the code, the wording of refusals, the controller's all-or-nothing group commit driven
# by Hypothesis against a model, and a check that docs/states.md shows the table the code runs
# on.
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from common import controller_spec
from remcopy.controller.config import load_controller_config
from remcopy.controller.core import Controller
from remcopy.errors import IllegalTransition
from remcopy.states import (
    ACTION_VERBS,
    DISPLAY_NAMES,
    OPERATION_PERMITTED,
    TRANSITIONS,
    CopyMode,
    FencePolicy,
    PairAction,
    PairRole,
    PairState,
    event_line,
    next_state,
    permitted_states,
    transition_note,
    transition_rows,
)
from strategies import pair_actions, pair_states

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "64015:1A00:0A:3F"

# The machine as DESIGN.md section 2 and the brief describe it, written out by hand: one row
# per state, one column per action, "-" where the action is refused.
EXPECTED_GRID = """
                 establish copy_done suspend   fail            resume  recover   failback terminate
SIMPLEX          PENDING   -         -         -               -       -         -        -
PENDING          -         DUPLEX    SUSPENDED SUSPENDED_ERROR -       -         -        SIMPLEX
DUPLEX           -         -         SUSPENDED SUSPENDED_ERROR -       RECOVERED -        SIMPLEX
SUSPENDED        -         -         -         -               PENDING RECOVERED -        SIMPLEX
SUSPENDED_ERROR  -         -         -         -               PENDING RECOVERED -        SIMPLEX
RECOVERED        -         -         -         -               -       -         PENDING  SIMPLEX
"""


def _parse_grid(grid: str) -> dict[tuple[PairState, PairAction], PairState | None]:
    header, *lines = grid.strip().splitlines()
    actions = [PairAction(word) for word in header.split()]
    expected: dict[tuple[PairState, PairAction], PairState | None] = {}
    for line in lines:
        state_name, *cells = line.split()
        assert len(cells) == len(actions), line
        for action, cell in zip(actions, cells, strict=True):
            expected[PairState[state_name], action] = None if cell == "-" else PairState[cell]
    return expected


EXPECTED = _parse_grid(EXPECTED_GRID)
ALL_PAIRS = [(state, action) for state in PairState for action in PairAction]


# The table, cell by cell ----------------------------------------------------------------------


def test_expected_grid_covers_every_state_and_action() -> None:
    """The hand-written grid has exactly one cell for every (state, action)."""
    assert sorted(EXPECTED, key=str) == sorted(ALL_PAIRS, key=str)


@pytest.mark.parametrize(
    ("state", "action"), ALL_PAIRS, ids=[f"{s.name}-{a.value}" for s, a in ALL_PAIRS]
)
def test_next_state_every_cell(state: PairState, action: PairAction) -> None:
    """Each (state, action) moves to the expected state or is refused with the details."""
    expected = EXPECTED[state, action]
    if expected is not None:
        assert next_state(state, action, device=DEVICE) is expected
        return
    with pytest.raises(IllegalTransition) as caught:
        next_state(state, action, device=DEVICE)
    allowed = frozenset(s for (s, a), new in EXPECTED.items() if a is action and new)
    err = caught.value
    assert (err.state, err.action, err.allowed, err.device) == (state, action, allowed, DEVICE)
    message = str(err)
    assert message.startswith(f"cannot {ACTION_VERBS[action]} {DEVICE}: pair is {state.name}: ")
    for name in (s.name for s in allowed):
        assert re.search(rf"\b{name}\b", message), (name, message)


@given(state=pair_states, action=pair_actions)
def test_next_state_matches_expected(state: PairState, action: PairAction) -> None:
    """For any state and action, next_state agrees with the hand-written grid."""
    expected = EXPECTED[state, action]
    if expected is not None:
        assert next_state(state, action, device=DEVICE) is expected
        return
    with pytest.raises(IllegalTransition) as caught:
        next_state(state, action, device=DEVICE)
    assert (caught.value.state, caught.value.action) == (state, action)
    assert state not in caught.value.allowed


def test_refusal_message_names_state_action_and_allowed() -> None:
    """A refusal reads: cannot <verb> <device>: pair is <STATE>: the pair must be <STATES>."""
    with pytest.raises(IllegalTransition) as caught:
        next_state(PairState.SIMPLEX, PairAction.RESUME, device=DEVICE)
    assert str(caught.value) == (
        "cannot resume 64015:1A00:0A:3F: pair is SIMPLEX: "
        "the pair must be SUSPENDED or SUSPENDED_ERROR"
    )


def test_recover_from_PENDING_says_why() -> None:
    """Recover from PENDING is refused with the reason: the secondary is inconsistent."""
    with pytest.raises(IllegalTransition) as caught:
        next_state(PairState.PENDING, PairAction.RECOVER, device=DEVICE)
    assert str(caught.value) == (
        "cannot recover 64015:1A00:0A:3F: pair is PENDING: the pair must be DUPLEX, SUSPENDED "
        "or SUSPENDED_ERROR (the secondary is inconsistent while a copy is running)"
    )


def test_PairState_suspend_from_PENDING_carries_a_note() -> None:
    """Suspending a PENDING pair is allowed and noted: its secondary is inconsistent."""
    assert next_state(PairState.PENDING, PairAction.SUSPEND, device=DEVICE) is PairState.SUSPENDED
    assert "inconsistent" in transition_note(PairState.PENDING, PairAction.SUSPEND)
    assert transition_note(PairState.DUPLEX, PairAction.SUSPEND) == ""


def test_permitted_states() -> None:
    """Each action's permitted states are the rows where the grid moves."""
    assert permitted_states(PairAction.RESUME) == {PairState.SUSPENDED, PairState.SUSPENDED_ERROR}
    assert permitted_states(PairAction.TERMINATE) == set(PairState) - {PairState.SIMPLEX}
    for action in PairAction:
        assert permitted_states(action) == {s for s in PairState if EXPECTED[s, action]}


def test_TRANSITIONS_is_a_read_only_view() -> None:
    """TRANSITIONS holds exactly the permitted moves and refuses assignment."""
    assert dict(TRANSITIONS) == {key: new for key, new in EXPECTED.items() if new}
    with pytest.raises(TypeError):
        TRANSITIONS[PairState.SIMPLEX, PairAction.RECOVER] = PairState.RECOVERED  # type: ignore[index]


def test_transition_rows_cover_the_machine() -> None:
    """transition_rows lists every (state, action) with its result or refusal message."""
    rows = transition_rows()
    assert [(state, action) for state, action, _, _ in rows] == ALL_PAIRS
    for state, action, new, text in rows:
        assert new is EXPECTED[state, action]
        if new is None:
            with pytest.raises(IllegalTransition) as caught:
                next_state(state, action, device="DEVICE")
            assert text == str(caught.value)
        else:
            assert text == transition_note(state, action)


def test_operations_declare_their_states() -> None:
    """Shadow copy needs SUSPENDED; host writes to a secondary need RECOVERED."""
    assert OPERATION_PERMITTED["shadow"] == {PairState.SUSPENDED}
    assert OPERATION_PERMITTED["host_write_secondary"] == {PairState.RECOVERED}


def test_enum_values() -> None:
    """Enum values are the stable strings written to the wire, catalog and JSON."""
    assert [s.value for s in PairState] == [s.name for s in PairState]
    assert all(a.value == a.name.lower() for a in PairAction)
    assert {m.value for m in CopyMode} == {"sync", "async", "semisync"}
    assert {f.value for f in FencePolicy} == {"never", "data"}
    assert {r.value for r in PairRole} == {"none", "primary", "secondary"}


def test_display_names_cover_every_state() -> None:
    """Every state has one distinct display name."""
    assert set(DISPLAY_NAMES) == set(PairState)
    assert len(set(DISPLAY_NAMES.values())) == len(PairState)
    assert DISPLAY_NAMES[PairState.SUSPENDED_ERROR] == "suspended (error)"
    assert set(ACTION_VERBS) == set(PairAction)


# Event lines ----------------------------------------------------------------------------------

EVENT_RE = re.compile(r"^pair (\S+) ([A-Z_]+) -> ([A-Z_]+)( at=\d+)? cause=\S+( \w+=\S+)*$")


def test_event_line_shape() -> None:
    """The event line is greppable: device, old -> new, at=, cause=, then tags in order."""
    line = event_line(
        DEVICE,
        PairState.DUPLEX,
        PairState.SUSPENDED,
        cause="suspend",
        at_ns=1_700_000_000_000_000_000,
        group="PAYROLL",
        op="suspend",
    )
    assert line == (
        "pair 64015:1A00:0A:3F DUPLEX -> SUSPENDED at=1700000000000000000 cause=suspend "
        "group=PAYROLL op=suspend"
    )
    assert EVENT_RE.match(line)


def test_event_line_without_time_and_with_spaces() -> None:
    """at= is left out when unknown, and a value with spaces is quoted."""
    line = event_line(DEVICE, PairState.PENDING, PairState.DUPLEX, cause="copy done", why="")
    assert line == 'pair 64015:1A00:0A:3F PENDING -> DUPLEX cause="copy done" why=""'


def test_event_line_quotes_only_what_would_break_the_line() -> None:
    """Plain words (any letters, digits, punctuation but space, = and quotes) stay bare."""
    line = event_line(DEVICE, PairState.DUPLEX, PairState.SUSPENDED, cause="X", group="XRC-1:a")
    assert line == "pair 64015:1A00:0A:3F DUPLEX -> SUSPENDED cause=X group=XRC-1:a"


def test_event_line_refuses_a_tag_named_at() -> None:
    """at= is the time of the change; a tag of that name would make the line ambiguous."""
    with pytest.raises(AssertionError, match=r"^tags must not repeat at=$"):
        event_line(DEVICE, PairState.DUPLEX, PairState.SUSPENDED, cause="suspend", at="1")


FIELD_RE = re.compile(r' (\w+)=("(?:\\.|[^"\\])*"|[^\s"]\S*)')


@given(old=pair_states, new=pair_states, cause=st.text(), value=st.text())
def test_event_line_parses_back(old: PairState, new: PairState, cause: str, value: str) -> None:
    """Whatever the cause and tag text, the line is one line whose fields parse back."""
    line = event_line(DEVICE, old, new, cause=cause, at_ns=5, tag=value)
    assert len(line.splitlines()) == 1
    head = f"pair {DEVICE} {old.name} -> {new.name}"
    assert line.startswith(head)
    rest = line[len(head) :]
    fields = FIELD_RE.findall(rest)
    assert "".join(f" {key}={text}" for key, text in fields) == rest
    decoded = {key: json.loads(text) if text.startswith('"') else text for key, text in fields}
    assert decoded == {"at": "5", "cause": cause, "tag": value}


# Group transactions against a model -----------------------------------------------------------


class _ModelPair:
    """What an operator expects of one pair, spelled out rule by rule, not as a table."""

    def __init__(self) -> None:
        self.state = "SIMPLEX"

    def expect(self, action: str) -> str | None:
        s = self.state
        moves = {
            "establish": "PENDING" if s == "SIMPLEX" else None,
            "copy_done": "DUPLEX" if s == "PENDING" else None,
            "suspend": "SUSPENDED" if s in ("PENDING", "DUPLEX") else None,
            "fail": "SUSPENDED_ERROR" if s in ("PENDING", "DUPLEX") else None,
            "resume": "PENDING" if s.startswith("SUSPENDED") else None,
            "recover": "RECOVERED" if s not in ("SIMPLEX", "PENDING", "RECOVERED") else None,
            "failback": "PENDING" if s == "RECOVERED" else None,
            "terminate": "SIMPLEX" if s != "SIMPLEX" else None,
        }
        return moves[action]


KEYS = [0x0A00 + cca for cca in range(4)]


class PairGroupMachine(RuleBasedStateMachine):
    """Drives single-pair and group actions through the controller's own all-or-nothing
    commit (Controller.commit_states, real state files in a temporary folder) and checks
    the result against the model: a refused batch changes nothing, a committed one moves
    every pair, announces one line per pair and survives a restart from disk."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="remcopy-states-"))
        spec = controller_spec(self.folder, "cntla", 64015, volumes=4, size_bytes=1 << 20)
        self.config = spec.write(self.folder / "cntla.toml")
        self.controller = self._open()
        self.model = {key: _ModelPair() for key in KEYS}

    def _open(self) -> Controller:
        controller = Controller(load_controller_config(self.config))
        controller.open()
        self.lines: list[str] = []
        controller.add_sink(self.lines.append)
        return controller

    def teardown(self) -> None:
        self.controller.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _commit(self, keys: list[int], action: PairAction) -> None:
        expected = {key: self.model[key].expect(action.value) for key in keys}
        before = {key: self.controller.devices[key].pair.state for key in KEYS}
        commits = self.controller.store.commits
        self.lines.clear()
        refused = [key for key, new in expected.items() if new is None]
        if refused:
            with pytest.raises(IllegalTransition) as caught:
                self.controller.commit_states(dict.fromkeys(keys, (action, None)), cause="test")
            err = caught.value
            assert err.action is action
            assert err.device in {str(self.controller.devices[key].address) for key in refused}
            assert {key: self.controller.devices[key].pair.state for key in KEYS} == before
            assert self.controller.store.commits == commits
            assert self.lines == []
            return
        self.controller.commit_states(dict.fromkeys(keys, (action, None)), cause="test")
        assert self.controller.store.commits == commits + 1
        for key, new in expected.items():
            assert new is not None
            self.model[key].state = new
        assert [event.text for event in self.lines] == [
            f"pair {self.controller.devices[key].address} {before[key].name} -> {new} cause=test"
            for key, new in expected.items()
            if before[key].name != new
        ]

    @rule(key=st.sampled_from(KEYS), action=pair_actions)
    def act_on_one(self, key: int, action: PairAction) -> None:
        self._commit([key], action)

    @rule(action=pair_actions)
    def act_on_group(self, action: PairAction) -> None:
        self._commit(KEYS, action)

    @rule()
    def restart(self) -> None:
        self.controller.close()
        self.controller = self._open()

    @invariant()
    def states_match_model(self) -> None:
        assert {key: self.controller.devices[key].pair.state.name for key in KEYS} == {
            key: pair.state for key, pair in self.model.items()
        }


TestPairGroupMachine = PairGroupMachine.TestCase
TestPairGroupMachine.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# Docs come from the code ----------------------------------------------------------------------


def _load_script() -> ModuleType:
    path = ROOT / "scripts" / "make_states_doc.py"
    spec = importlib.util.spec_from_file_location("make_states_doc", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_states_md_matches_the_table() -> None:
    """The generated section of docs/states.md is exactly what the script renders now."""
    script = _load_script()
    doc = (ROOT / "docs" / "states.md").read_text(encoding="utf-8")
    assert script.splice(doc, script.render()) == doc, (
        "docs/states.md is stale: run python scripts/make_states_doc.py"
    )
    for state, action, new, _ in transition_rows():
        if new is not None:
            assert f"    {state.name} --> {new.name}: {action.value}" in doc
