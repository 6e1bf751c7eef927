# The consistency checker on hand-made images: a fake run (tests/checker_fakes.py) writes
# records into in-memory volumes exactly as the workload would, then each test breaks the image
# one way and checks the checker names that violation. Pure code: no controller, no socket.
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from checker_fakes import (
    RUN_ID,
    VOLUMES,
    FakeRun,
    make_layout,
    only_write_to_its_location,
    overwritten_once,
    reasons,
)
from remcopy.errors import InputError
from remcopy.workload import (
    PlannedWrite,
    Reason,
    RecordKind,
    SlotState,
    WorkloadLogError,
    build_record,
    decode_slot,
    read_log,
)
from remcopy.workload.layout import parse_sizes, plan_prefix
from remcopy.workload.log import LogWriter
from remcopy.workload.record import BLOCK_BYTES, DataRef


async def test_check_image_passes_an_empty_image_with_an_empty_log():
    """An image nothing was written to, with no acknowledged write, is consistent."""
    run = FakeRun(make_layout())
    report = await run.check(require_all_acked=True)
    assert report.consistent, report.violations
    assert [c.prefix for c in report.chains] == [0, 0, 0, 0]
    assert report.cut_window_ns == (0, None)


async def test_check_image_passes_the_full_image_with_rings_wrapped():
    """Every acknowledged write present, rings overwritten several times: consistent."""
    run = FakeRun(make_layout(ring_slots=2))
    run.run_round_robin(40)
    report = await run.check(require_all_acked=True)
    assert report.consistent, report.summary()
    assert [c.prefix for c in report.chains] == [40] * 4
    assert report.acked_missing == 0
    assert report.bytes_read == 4 * 4 * 2 * 16384
    assert report.locations == 4 * 4 * 2


async def test_check_image_passes_a_partial_prefix_cut_at_T():
    """A snapshot taken mid-run is a cut at T: consistent, and the stamp window holds T."""
    run = FakeRun(make_layout())
    run.run_round_robin(10)
    run.issue(0)
    run.issue(1)
    cut = run.snapshot()
    at_ns = run.clock_ns + 1
    run.issue(2)
    run.run_round_robin(8)
    report = await run.check(image=cut, at_ns=at_ns)
    assert report.consistent, report.summary()
    assert [c.prefix for c in report.chains] == [11, 11, 10, 10]
    assert report.acked_missing == sum(len(v) for v in run.issued.values()) - 42
    assert report.stamp_window_ns is not None
    lo, hi = report.stamp_window_ns
    assert lo < at_ns and hi is not None and at_ns <= hi


# Violations within a chain...


async def test_check_image_catches_a_missing_predecessor():
    """A write missing under a later one present is named with both seqs and the location."""
    layout = make_layout(ring_slots=8)
    victim = only_write_to_its_location(layout, 2, 6)[0]
    run = FakeRun(layout)
    run.run_round_robin(6, skip=frozenset({(2, victim.seq)}))
    report = await run.check()
    assert not report.consistent
    chain = report.chains[2]
    first = chain.first_violation
    assert first is not None and first.reason is Reason.MISSING
    address = layout.volumes[victim.volume].address
    assert first.seq == victim.seq
    assert first.volume == address and first.offset == victim.offset
    assert (
        f"chain 2 broken at volume {address} offset {victim.offset}: "
        f"seq 6 present but seq {victim.seq} missing (the location holds nothing)" == first.message
    )


async def test_check_image_catches_an_index_record_without_its_data():
    """An indexed chain whose index is present but whose data record is not: named as such."""
    layout = make_layout(ring_slots=8)
    alone = {p.seq: p for p in only_write_to_its_location(layout, 1, 8)}
    data = next(p for s, p in alone.items() if p.kind is RecordKind.DATA and s + 1 in alone)
    run = FakeRun(layout)
    run.run_round_robin(8, skip=frozenset({(1, data.seq)}))
    report = await run.check()
    first = report.chains[1].first_violation
    assert first is not None and first.reason is Reason.INDEX_WITHOUT_DATA
    assert first.seq == data.seq
    assert f"index seq {data.seq + 1}" in first.message
    assert f"names data seq {data.seq}" in first.message
    assert "which holds nothing" in first.message
    assert Reason.MISSING in {v.reason for v in report.chains[1].violations}
    assert all(c.ok for c in report.chains if c.chain != 1)


async def test_check_image_catches_a_location_holding_an_older_write():
    """A location holding an older write of the chain than the prefix implies is stale."""
    run = FakeRun(make_layout(ring_slots=1))
    run.run_round_robin(12)
    older, newer = overwritten_once(run, 2)
    run.apply(older)
    report = await run.check()
    first = report.chains[2].first_violation
    assert first is not None and first.reason is Reason.STALE
    assert first.seq == newer.planned.seq
    assert f"holds seq {older.planned.seq}" in first.message
    assert f"puts seq {newer.planned.seq} there" in first.message


async def test_check_image_catches_a_misplaced_record():
    """A record found at another chain's location is misplaced, naming where it belongs."""
    run = FakeRun(make_layout())
    run.run_round_robin(5)
    stray = run.issued[0][-1]
    target = run.issued[2][-1].planned
    run.apply(stray, at=target)
    report = await run.check()
    first = report.chains[2].first_violation
    assert first is not None and first.reason is Reason.MISPLACED
    assert "holds chain 0 seq 5" in first.message
    assert f"written for volume {stray.logged.volume} offset {stray.logged.offset}" in (
        first.message
    )


async def test_check_image_catches_a_record_at_the_wrong_slot_of_its_own_chain():
    """A chain's record copied to another slot of its own region is misplaced too."""
    run = FakeRun(make_layout(ring_slots=4))
    run.run_round_robin(2)
    issued = run.issued[0][0]
    other = PlannedWrite(
        chain=0,
        seq=0,
        kind=RecordKind.DATA,
        volume=issued.planned.volume,
        slot=3,
        offset=run.layout.slot_offset(0, 3),
        length=issued.planned.length,
    )
    assert other.location not in {i.planned.location for i in run.issued[0]}
    run.apply(issued, at=other)
    report = await run.check()
    first = report.chains[0].first_violation
    assert first is not None and first.reason is Reason.MISPLACED
    assert f"written for volume {issued.logged.volume} offset {issued.logged.offset}" in (
        first.message
    )


async def test_check_image_catches_a_corrupted_checksum():
    """One flipped byte in an acknowledged record is corrupt, naming the block."""
    run = FakeRun(make_layout())
    run.run_round_robin(6)
    victim = run.issued[0][-1]
    volume = run.volumes[victim.logged.volume]
    volume[victim.logged.offset + 128] ^= 0xFF  # the first block stamp after the head
    report = await run.check()
    first = report.chains[0].first_violation
    assert first is not None and first.reason is Reason.CORRUPT
    assert "corrupt record" in first.message
    assert "block 0" in first.message


async def test_check_image_catches_a_record_that_is_not_the_acknowledged_one():
    """A valid record whose stamp and checksum differ from the log's is not as acknowledged."""
    run = FakeRun(make_layout())
    run.run_round_robin(4)
    victim = run.issued[1][-2]
    raw, _ = build_record(
        kind=victim.planned.kind,
        run_id=RUN_ID,
        chain=1,
        seq=victim.planned.seq,
        stamp_ns=victim.logged.stamp_ns - 7,
        address=victim.logged.volume,
        volser=run.layout.volumes[victim.planned.volume].volser,
        offset=victim.logged.offset,
        length=victim.logged.length,
        names=None
        if victim.planned.kind is RecordKind.DATA
        else DataRef(address=victim.logged.volume, offset=0, seq=1, checksum=0, blocks=1),
    )
    run.apply(victim, raw)
    report = await run.check()
    assert Reason.NOT_AS_ACKNOWLEDGED in {v.reason for v in report.chains[1].violations}


async def test_check_image_catches_an_acknowledged_write_missing_only_when_required():
    """A missing last acknowledged write is consistent, unless all acked writes must be there."""
    run = FakeRun(make_layout())
    run.run_round_robin(5)
    run.issue(3, apply=False)
    relaxed = await run.check()
    assert relaxed.consistent, relaxed.summary()
    assert relaxed.acked_missing == 1
    strict = await run.check(require_all_acked=True)
    assert not strict.consistent
    first = strict.first_violation
    assert first is not None and first.reason is Reason.ACKED_MISSING
    assert "chain 3: acknowledged seq 6" in first.message
    assert "the image's prefix ends at seq 5" in first.message


# Writes the log does not have...


async def test_check_image_allows_a_torn_write_that_was_never_acknowledged():
    """The chain's write in flight (not logged) may be torn at its location; nothing else."""
    run = FakeRun(make_layout())
    run.run_round_robin(5)
    torn = run.issue(0, apply=False)
    run.tear(torn)
    report = await run.check(run.log(drop_last={0: 1}), require_all_acked=True)
    assert report.consistent, report.summary()
    assert any("never acknowledged" in n for n in report.chains[0].notes)
    acked = await run.check(require_all_acked=False)
    assert not acked.consistent
    assert Reason.CORRUPT in reasons(acked)


async def test_check_image_counts_present_writes_the_log_lost():
    """Writes present beyond the log (its tail lost to kill -9) are unlogged, not violations."""
    run = FakeRun(make_layout())
    run.run_round_robin(5)
    report = await run.check(run.log(drop_last={1: 1, 2: 1}), require_all_acked=True)
    assert report.consistent, report.summary()
    assert [c.unlogged for c in report.chains] == [0, 1, 1, 0]
    assert [c.prefix for c in report.chains] == [5, 5, 5, 5]


# Across chains...


async def test_check_image_catches_two_chains_with_no_common_cut_time():
    """Chain 0's later write present while chain 1's earlier acknowledged write is absent."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    run.issue(1, apply=False)
    run.issue(0)
    report = await run.check()
    assert [c.ok for c in report.chains] == [True] * 4
    assert not report.consistent
    first = report.first_violation
    assert first is not None and first.reason is Reason.NO_COMMON_TIME
    assert "chain 0 holds seq 4" in first.message and "chain 1 lacks seq 4" in first.message
    assert report.cut_window_ns is None


async def test_check_image_catches_a_cut_not_at_the_given_T():
    """With T given, a write stamped >= T present or one stamped < T absent is named."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    at_ns = run.clock_ns + 1
    run.run_round_robin(1)
    report = await run.check(at_ns=at_ns)
    assert {v.reason for v in report.violations} == {Reason.NOT_CUT_AT_T}
    assert "chain 0 holds seq 4 stamped" in report.violations[0].message
    early = await run.check(at_ns=run.clock_ns + 1)
    assert early.consistent


# Records, layout and log...


def test_decode_slot_reads_back_what_build_record_wrote():
    """A record decodes valid with every field; another run's record is foreign."""
    address = VOLUMES[1].address
    raw, checksum = build_record(
        kind=RecordKind.DATA,
        run_id=RUN_ID,
        chain=3,
        seq=41,
        stamp_ns=123,
        address=address,
        volser="P00001",
        offset=8192,
        length=3 * BLOCK_BYTES,
    )
    slot = decode_slot(raw + bytes(BLOCK_BYTES), run_id=RUN_ID)
    assert slot.state is SlotState.VALID and slot.record is not None
    record = slot.record
    assert (record.chain, record.seq, record.address, record.offset) == (3, 41, address, 8192)
    assert (record.blocks, record.checksum, record.volser) == (3, checksum, "P00001")
    assert decode_slot(raw, run_id=RUN_ID + 1).state is SlotState.FOREIGN
    assert decode_slot(bytes(BLOCK_BYTES), run_id=RUN_ID).state is SlotState.EMPTY
    stray = decode_slot(raw[BLOCK_BYTES:], run_id=RUN_ID)
    assert stray.state is SlotState.DAMAGED and stray.ours
    assert "block 1 of chain 3 seq 41 (this run)" in stray.detail


def test_plan_chain_crosses_controllers_and_indexes_every_data_record():
    """Consecutive writes go to other controllers; odd chains alternate data and index."""
    layout = make_layout()
    for chain in range(layout.chains):
        plan = plan_prefix(layout, chain, 50)
        controllers = [layout.volumes[p.volume].controller for p in plan]
        assert all(a != b for a, b in itertools.pairwise(controllers))
        if layout.indexed(chain):
            assert [p.kind for p in plan[:4]] == [RecordKind.DATA, RecordKind.INDEX] * 2
            assert all(p.names_seq == p.seq - 1 for p in plan if p.kind is RecordKind.INDEX)
        else:
            assert {p.kind for p in plan} == {RecordKind.DATA}
    assert plan_prefix(layout, 1, 20) == plan_prefix(make_layout(), 1, 20)
    assert plan_prefix(layout, 1, 20) != plan_prefix(make_layout(seed=8), 1, 20)


def test_parse_sizes_reads_a_mix_and_refuses_bad_sizes():
    """Sizes are multiples of 4 KiB; a bad one is named."""
    assert parse_sizes("4k, 4k,64K,1m") == (4096, 4096, 65536, 1024 * 1024)
    with pytest.raises(InputError, match="multiples of 4096"):
        parse_sizes("4k,5000")
    with pytest.raises(InputError, match="expected sizes"):
        parse_sizes("4k,lots")


async def test_read_log_round_trips_and_refuses_a_bad_log(tmp_path: Path):
    """The log reads back as written; a torn tail is ignored; gaps and junk name the line."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    path = tmp_path / "run.jsonl"
    writer = LogWriter.create(path, run.layout, group="PAYROLL", host="hosta")
    for chain in run.issued.values():
        for issued in chain:
            await writer.append(issued.logged)
    writer.close(writes=12, stopped="writes")
    log = read_log(path)
    assert log.layout == run.layout and log.group == "PAYROLL" and log.ended
    assert sorted(log.writes, key=lambda w: (w.chain, w.seq)) == [
        i.logged for c in run.issued.values() for i in c
    ]
    with pytest.raises(WorkloadLogError, match="exists"):
        LogWriter.create(path, run.layout, group="PAYROLL", host="hosta")
    lines = path.read_text().splitlines(keepends=True)
    (tmp_path / "torn.jsonl").write_text("".join(lines[:-1]) + '{"chain": 0, "se')
    torn = read_log(tmp_path / "torn.jsonl")
    assert torn.torn_tail and not torn.ended and len(torn.writes) == 12
    (tmp_path / "gap.jsonl").write_text("".join(lines[:2] + lines[3:-1]))
    with pytest.raises(WorkloadLogError, match=r"chain \d jumps to seq"):
        read_log(tmp_path / "gap.jsonl")
    (tmp_path / "junk.jsonl").write_text(lines[0] + "not json\n")
    with pytest.raises(WorkloadLogError, match=r"junk.jsonl:2: not JSON"):
        read_log(tmp_path / "junk.jsonl")
    moved = json.loads(lines[1])
    moved["offset"] += BLOCK_BYTES
    (tmp_path / "moved.jsonl").write_text(lines[0] + json.dumps(moved) + "\n")
    with pytest.raises(WorkloadLogError, match="the run's layout puts it at"):
        read_log(tmp_path / "moved.jsonl")
