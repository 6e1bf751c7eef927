# Group definitions resolved through device maps, group maps per host, and lookup by any of
# the five keys: pure code over hand-made maps.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from remcopy.errors import ConfigError, InvalidIdentifier
from remcopy.groups.definition import MapIndex, load_group_definition, resolve
from remcopy.groups.load import group_map, lookup, unseen
from remcopy.groups.model import GroupPair
from remcopy.groups.preview import plan_pair
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, PairRole, PairState
from remcopy.wire.native import DeviceStatus, PairOp


@dataclass(frozen=True)
class Entry:
    device_number: str
    hardware_address: str
    volser: str
    capacity_bytes: int
    controller: str


def _maps() -> dict[str, list[Entry]]:
    """Host A sees primaries at 1A0x and secondaries at 2B0x; host B primaries at 3C0x."""
    a, b = [], []
    for i in range(4):
        p = f"64015:1A00:0A:{i:02X}"
        s = f"65000:2B00:20:{i:02X}"
        a.append(Entry(f"1A{i:02X}", p, f"PAY{i:03}", 1 << 20, "cntla"))
        a.append(Entry(f"2B{i:02X}", s, f"SEC{i:03}", 1 << 20, "cntlb"))
        b.append(Entry(f"3C{i:02X}", p, f"PAY{i:03}", 1 << 20, "cntla-b"))
    a.append(Entry("1A10", "64015:1A00:0A:10", "SMALL", 1 << 19, "cntla"))
    a.append(Entry("2B10", "65000:2B00:20:10", "SMALL2", 1 << 19, "cntlb"))
    return {"hosta": a, "hostb": b}


def _write(tmp_path: Path, body: str, csv: str | None = None) -> Path:
    path = tmp_path / "group.toml"
    path.write_text('[group]\nname = "PAYROLL"\nmode = "async"\n' + body)
    if csv is not None:
        (tmp_path / "pairs.csv").write_text(csv)
    return path


def test_resolve_accepts_every_kind_of_key(tmp_path: Path):
    """Volser, device numbers on a host (a range), addresses and CSV all resolve alike."""
    path = _write(
        tmp_path,
        """
[[pairs]]
volser = "PAY000"
secondary_volser = "SEC000"
[[pairs]]
host = "hosta"
devices = "1A01-1A02"
secondary_devices = "2B01-2B02"
[[pairs]]
primary = "64015:1A00:0A:03"
secondary = "65000:2B00:20:03"
""",
    )
    definition = load_group_definition(path)
    assert definition.options.mode is CopyMode.ASYNC
    pairs = resolve(definition, MapIndex(_maps()))
    assert [str(p.primary) for p in pairs] == [f"64015:1A00:0A:{i:02X}" for i in range(4)]
    assert [p.volser for p in pairs] == ["PAY000", "PAY001", "PAY002", "PAY003"]
    csv_path = _write(
        tmp_path,
        'csv = "pairs.csv"\n',
        csv="# primary,secondary\nPAY000,SEC000\nhosta:1A01,65000:2B00:20:01\n",
    )
    assert len(resolve(load_group_definition(csv_path), MapIndex(_maps()))) == 2


def test_resolve_rejects_the_whole_definition_naming_every_bad_line(tmp_path: Path):
    """Unknown, ambiguous-free duplicates, same controller, size and other group: all named."""
    path = _write(
        tmp_path,
        """
[[pairs]]
volser = "NOSUCH"
secondary_volser = "SEC000"
[[pairs]]
volser = "PAY001"
secondary_volser = "PAY002"
[[pairs]]
volser = "PAY003"
secondary_volser = "SMALL2"
[[pairs]]
volser = "PAY000"
secondary_volser = "SEC000"
[[pairs]]
volser = "PAY000"
secondary_volser = "SEC001"
[[pairs]]
host = "hosta"
devices = "1A02"
secondary_devices = "2B02"
""",
    )
    with pytest.raises(ConfigError) as caught:
        resolve(
            load_group_definition(path), MapIndex(_maps()), taken={"65000:2B00:20:02": "BILLING"}
        )
    problems = caught.value.problems
    assert any("pairs[0]" in p and "NOSUCH: unknown volser" in p for p in problems)
    assert any("pairs[1]" in p and "same controller" in p for p in problems)
    assert any("pairs[2]" in p and "less than the primary" in p for p in problems)
    assert any("pairs[4]" in p and "duplicate: 64015:1A00:0A:00" in p for p in problems)
    assert any("pairs[5]" in p and "already in group BILLING" in p for p in problems)
    assert len(problems) == 5


def test_ambiguous_volser_names_its_addresses(tmp_path: Path):
    """A volser at two addresses is refused with both named."""
    maps = _maps()
    maps["hosta"].append(Entry("1A20", "64016:1A00:0A:00", "PAY000", 1 << 20, "cntlc"))
    path = _write(tmp_path, '[[pairs]]\nvolser = "PAY000"\nsecondary_volser = "SEC000"\n')
    with pytest.raises(
        ConfigError, match="ambiguous volser: it is at 64015:1A00:0A:00, 64016:1A00:0A:00"
    ):
        resolve(load_group_definition(path), MapIndex(maps))


def test_group_maps_differ_per_host_and_lookup_takes_five_keys(tmp_path: Path):
    """Host maps give each host's device numbers; every key finds the same pair."""
    path = _write(
        tmp_path,
        '[[pairs]]\nhost = "hosta"\ndevices = "1A00-1A03"\nsecondary_devices = "2B00-2B03"\n',
    )
    index = MapIndex(_maps())
    pairs = resolve(load_group_definition(path), index)
    map_a, map_b = group_map("hosta", pairs, index), group_map("hostb", pairs, index)
    assert [p.primary_number for p in map_a] == [0x1A00, 0x1A01, 0x1A02, 0x1A03]
    assert [p.primary_number for p in map_b] == [0x3C00, 0x3C01, 0x3C02, 0x3C03]
    assert map_b[0].secondary_number is None
    assert len(unseen(map_b)) == 4
    assert map_a[2].primary_controller == "cntla"
    target = map_a[2]
    for key in ("PAY002", "1A02", "2B02", "64015:1A00:0A:02", "65000:2B00:20:02"):
        assert lookup(map_a, key) == target
    assert lookup(map_b, "3C02").primary == HardwareAddress.parse("64015:1A00:0A:02")
    with pytest.raises(InvalidIdentifier, match="no pair of the group"):
        lookup(map_a, "9999")


def test_definition_shape_errors_are_all_reported(tmp_path: Path):
    """Half-given pairs and unequal ranges are each named, at once."""
    path = _write(
        tmp_path,
        """
[[pairs]]
volser = "PAY000"
[[pairs]]
host = "hosta"
devices = "1A00-1A03"
secondary_devices = "2B00-2B01"
[[pairs]]
devices = "1A00"
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_group_definition(path)
    assert len(caught.value.problems) == 3


# Dry-run decisions (groups.preview.plan_pair): pure, over hand-made controller answers.

_P = HardwareAddress.parse("64015:1A00:0A:00")
_S = HardwareAddress.parse("65000:2B00:20:00")
_T = HardwareAddress.parse("65000:3B00:30:00")
_PAIR = GroupPair(
    volser="PAY000", primary=_P, secondary=_S, primary_controller="a", secondary_controller="b"
)


def _answers(primary: DeviceStatus, secondary: DeviceStatus, tertiary: DeviceStatus | None = None):
    out = {("a", _P.device_key): primary, ("b", _S.device_key): secondary}
    if tertiary is not None:
        out[("b", _T.device_key)] = tertiary
    return out


def _status(state: PairState, role: PairRole, **kw) -> DeviceStatus:
    return DeviceStatus(device=0, state=state, role=role, **kw)


def test_plan_pair_refuses_any_change_while_a_suspend_is_armed():
    """A DUPLEX primary armed for T is refused for every operation, naming T."""
    answers = _answers(
        _status(PairState.DUPLEX, PairRole.PRIMARY, suspend_at_ns=123),
        _status(PairState.DUPLEX, PairRole.SECONDARY),
    )
    row = plan_pair(_PAIR, PairOp.TERMINATE, answers, {}, {})
    assert row.refused and "a suspend is armed for 123" in row.reason


def test_plan_pair_refuses_establish_onto_a_secondary_in_a_pair():
    """Establish needs a SIMPLEX primary and a SIMPLEX secondary in no pair."""
    answers = _answers(
        _status(PairState.SIMPLEX, PairRole.NONE), _status(PairState.DUPLEX, PairRole.SECONDARY)
    )
    row = plan_pair(_PAIR, PairOp.ESTABLISH, answers, {}, {})
    assert row.refused and "secondary 65000:2B00:20:00 is DUPLEX (secondary)" in row.reason


def test_plan_pair_refuses_suspend_where_the_device_is_a_secondary():
    """A SUSPENDED-able state is not enough: suspend acts at the primary."""
    answers = _answers(
        _status(PairState.DUPLEX, PairRole.SECONDARY), _status(PairState.DUPLEX, PairRole.PRIMARY)
    )
    row = plan_pair(_PAIR, PairOp.SUSPEND, answers, {}, {})
    assert row.refused and "it is not the primary of a pair" in row.reason


def test_plan_pair_notes_a_suspend_of_a_pending_pair():
    """Suspending a PENDING pair is permitted, with the table's note that it is inconsistent."""
    answers = _answers(
        _status(PairState.PENDING, PairRole.PRIMARY), _status(PairState.PENDING, PairRole.SECONDARY)
    )
    row = plan_pair(_PAIR, PairOp.SUSPEND, answers, {}, {})
    assert row.move() == "PENDING -> SUSPENDED"
    assert "the secondary is inconsistent" in row.reason


def test_plan_pair_failback_counts_both_sides_and_says_when_it_is_a_bound():
    """Failback tracks are the sum of both change maps, exact only when one side has none."""
    recovered = _status(PairState.RECOVERED, PairRole.SECONDARY, dirty_tracks=5)
    for there, tracks, exact in ((0, 5, True), (2, 7, False)):
        primary = _status(PairState.SUSPENDED, PairRole.PRIMARY, dirty_tracks=there)
        row = plan_pair(_PAIR, PairOp.FAILBACK, _answers(primary, recovered), {}, {})
        assert (row.move(), row.tracks, row.tracks_exact) == ("RECOVERED -> PENDING", tracks, exact)
    unreachable = GroupPair(volser="PAY000", primary=_P, secondary=_S, secondary_controller="b")
    row = plan_pair(unreachable, PairOp.FAILBACK, _answers(primary, recovered), {}, {})
    assert (row.tracks, row.tracks_exact) == (5, False)


def test_plan_pair_refuses_a_pair_without_path_or_answer():
    """No path to the acting side, or no answer for the device, is a refusal that says so."""
    lost = GroupPair(volser="PAY000", primary=_P, secondary=_S, primary_controller="a")
    assert "no path to the secondary" in plan_pair(lost, PairOp.RECOVER, {}, {}, {}).reason
    assert "did not report device 0A00" in plan_pair(_PAIR, PairOp.RESUME, {}, {}, {}).reason
    failed = {("a", _P.device_key): "controller a: connection refused"}
    assert "connection refused" in plan_pair(_PAIR, PairOp.RESUME, failed, {}, {}).reason


def test_plan_pair_shadow_needs_a_suspended_secondary_and_a_free_tertiary():
    """A shadow copy changes no state; it is refused while one runs or onto a paired tertiary."""
    suspended = _status(PairState.SUSPENDED, PairRole.SECONDARY)
    primary = _status(PairState.SUSPENDED, PairRole.PRIMARY)
    free = _status(PairState.SIMPLEX, PairRole.NONE)
    tertiaries = {str(_S): _T}
    ok = plan_pair(_PAIR, PairOp.SHADOW, _answers(primary, suspended, free), {}, tertiaries)
    assert ok.move() == "SUSPENDED -> SUSPENDED" and not ok.refused
    running = _status(PairState.SUSPENDED, PairRole.SECONDARY, flags=1)
    row = plan_pair(_PAIR, PairOp.SHADOW, _answers(primary, running, free), {}, tertiaries)
    assert "already running" in row.reason
    paired = _status(PairState.DUPLEX, PairRole.SECONDARY)
    row = plan_pair(_PAIR, PairOp.SHADOW, _answers(primary, suspended, paired), {}, tertiaries)
    assert "the tertiary must be a simplex volume" in row.reason
    assert (
        "no tertiary given"
        in plan_pair(_PAIR, PairOp.SHADOW, _answers(primary, suspended), {}, {}).reason
    )


def test_GroupReport_to_json_is_the_suspend_record():
    """The record sums late writes, takes the longest host I/O hold, and lists every pair's
    state; a freeze's trigger entry in `seal` is not a controller and counts for nothing."""
    from remcopy.groups.operations import GroupReport, PairOutcome

    other = GroupPair(volser="PAY001", primary=_S, secondary=_T)
    report = GroupReport(
        group="PAYROLL",
        op="suspend",
        at_ns=5,
        pairs=[
            PairOutcome(pair=_PAIR, ok=True, state=PairState.SUSPENDED, at_ns=5),
            PairOutcome(pair=other, ok=False, state=PairState.DUPLEX, message="late"),
        ],
        seal={
            "a": {"late_writes": 2, "host_io_held_ms": 1.5},
            "b": {"late_writes": 1, "host_io_held_ms": 4.25},
            "freeze": {"trigger": "64015:1A00:0A:00"},
        },
    )
    record = report.to_json()
    assert (record["late_writes"], record["host_io_held_ms"]) == (3, 4.25)
    assert record["pair_states"] == {"PAY000": "SUSPENDED", "PAY001": "DUPLEX"}
    assert [f["pair"] for f in record["failures"]] == ["PAY001"]
    assert "plan" not in record
    assert repr(report) == (
        "<GroupReport PAYROLL suspend pairs=2 failed=1 consistent=False dry_run=False>"
    )


# Operating through a disaster (issue 14): idempotent operations, status, direction.


def test_already_there_is_each_operations_target_at_the_device_it_acts_on():
    """recover leads to a RECOVERED secondary, resume to a PENDING or DUPLEX primary,
    failback to the old secondary as a PENDING or DUPLEX primary, terminate to SIMPLEX;
    anything else (or another operation) is not already there."""
    from remcopy.groups.preview import already_there

    S, R = PairState, PairRole
    assert already_there(PairOp.RECOVER, S.RECOVERED, R.SECONDARY) == "already RECOVERED"
    assert already_there(PairOp.RESUME, S.DUPLEX, R.PRIMARY) == "already DUPLEX"
    assert already_there(PairOp.RESUME, S.PENDING, R.PRIMARY) == "already PENDING"
    assert already_there(PairOp.TERMINATE, S.SIMPLEX, R.NONE) == "already SIMPLEX"
    assert already_there(PairOp.FAILBACK, S.DUPLEX, R.PRIMARY) == (
        "already failed back: the primary, DUPLEX"
    )
    for op, state, role in (
        (PairOp.RECOVER, S.RECOVERED, R.PRIMARY),  # not a secondary
        (PairOp.RECOVER, S.DUPLEX, R.SECONDARY),
        (PairOp.RESUME, S.DUPLEX, R.SECONDARY),  # resume acts at the primary
        (PairOp.RESUME, S.SUSPENDED, R.PRIMARY),
        (PairOp.FAILBACK, S.DUPLEX, R.SECONDARY),  # the failback did not happen
        (PairOp.FAILBACK, S.RECOVERED, R.SECONDARY),
        (PairOp.TERMINATE, S.DUPLEX, R.PRIMARY),
        (PairOp.SUSPEND, S.SUSPENDED, R.PRIMARY),  # a suspend is at one T: never "already"
        (PairOp.ESTABLISH, S.DUPLEX, R.PRIMARY),
    ):
        assert already_there(op, state, role) == "", (op, state, role)


def test_plan_pair_plans_a_pair_already_there_as_done():
    """A dry run of recover on a RECOVERED secondary plans no change and no refusal."""
    answers = _answers(
        _status(PairState.DUPLEX, PairRole.PRIMARY),
        _status(PairState.RECOVERED, PairRole.SECONDARY),
    )
    row = plan_pair(_PAIR, PairOp.RECOVER, answers, {}, {})
    assert not row.refused and row.already
    assert (row.move(), row.reason) == ("RECOVERED -> RECOVERED", "PAY000: already RECOVERED")
    assert row.to_json()["already"] is True
    resumed = plan_pair(_PAIR, PairOp.RESUME, answers, {}, {})  # at the DUPLEX primary
    assert not resumed.refused and resumed.already
    answers = _answers(
        _status(PairState.SUSPENDED, PairRole.PRIMARY),
        _status(PairState.DUPLEX, PairRole.SECONDARY),
    )
    row = plan_pair(_PAIR, PairOp.RECOVER, answers, {}, {})
    assert (row.move(), row.already) == ("DUPLEX -> RECOVERED", False)


def test_PairStatus_says_where_a_state_was_read_and_never_makes_one_up():
    """A state read at the primary shows plainly, one read at the secondary says so, and an
    unread one is UNKNOWN with the reason."""
    from remcopy.groups.operations import PairStatus

    at_primary = PairStatus(pair=_PAIR, state=PairState.DUPLEX, side="primary")
    assert (at_primary.state_name, at_primary.describe()) == ("DUPLEX", "duplex")
    at_secondary = PairStatus(
        pair=_PAIR, state=PairState.RECOVERED, side="secondary", error="controller a not reached"
    )
    assert at_secondary.describe() == "recovered (read at the secondary)"
    unknown = PairStatus(pair=_PAIR, state=None, error="primary: x; secondary: y")
    assert (unknown.state_name, unknown.describe()) == (
        "UNKNOWN",
        "UNKNOWN: primary: x; secondary: y",
    )


def test_Group_reversed_turns_every_pair_and_records_the_direction():
    """A reversed group's primaries are the defined secondaries (with their controllers and
    device numbers); reversing again, or as_defined, gives the definition back."""
    from remcopy.groups.model import Group

    pair = GroupPair(
        volser="PAY000",
        primary=_P,
        secondary=_S,
        primary_controller="a",
        secondary_controller="b",
        primary_number=0x1A00,
        secondary_number=None,
    )
    group = Group(name="PAYROLL", pairs=(pair,))
    turned = group.reversed()
    assert (group.direction, turned.direction) == ("defined", "reversed")
    (flipped,) = turned.pairs
    assert (flipped.primary, flipped.primary_controller, flipped.primary_number) == (_S, "b", None)
    assert (flipped.secondary, flipped.secondary_controller) == (_P, "a")
    assert flipped.volser == "PAY000"  # the pair keeps its name
    assert turned.reversed() == group == turned.as_defined() == group.as_defined()


def test_group_pair_sets_every_field_as_GroupPair_does():
    """group_pair (the fast positional build) gives a pair equal to the dataclass's own, with
    every field of GroupPair set: a field added to GroupPair but not to group_pair fails here."""
    from dataclasses import fields

    from remcopy.groups.model import group_pair

    values = {
        "volser": "PAY000",
        "primary": _P,
        "secondary": _S,
        "primary_controller": "a",
        "secondary_controller": "b",
        "primary_number": 0x1A00,
        "secondary_number": 0x1B00,
    }
    assert [f.name for f in fields(GroupPair)] == list(values)
    built = group_pair(*values.values())
    assert built == GroupPair(**values)  # type: ignore[arg-type]
    assert {f.name: getattr(built, f.name) for f in fields(GroupPair)} == values
    assert hash(built) == hash(GroupPair(**values))  # type: ignore[arg-type]
