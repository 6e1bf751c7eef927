# Each rule of the consistency checker, one test at a time, asserting the whole verdict: the
# exact violations (reason, chain, seq, volume, offset, message), the windows and the fields of
# the report. Mutation testing (bench/mutation.py) showed that the tests of test_700 let a rule
# be disabled or a field be wrong unnoticed; each test here fails when one rule is switched off
# or one of its edges is moved (the boundary cases sit exactly on T, on an acknowledgement, on
# the end of a chain's region). Pure code: a fake run on in-memory volumes (checker_fakes).
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from checker_fakes import (
    RUN_ID,
    VOLUMES,
    FakeRun,
    Issued,
    make_layout,
    names_of,
    only_write_to_its_location,
)
from remcopy.errors import InputError
from remcopy.ids import HardwareAddress
from remcopy.workload import (
    CheckReport,
    Layout,
    PlannedWrite,
    Reason,
    RecordKind,
    build_record,
    check_image,
    decode_slot,
)
from remcopy.workload.checker import judge, read_image
from remcopy.workload.layout import plan_prefix
from remcopy.workload.record import BLOCK_BYTES, DataRef
from remcopy.workload.report import Violation

MS_1234 = 1_234_567_890
"""A gap whose ms figure shows a wrong unit or divisor in the third decimal: 1234.568."""

Row = tuple[Reason, int | None, int, HardwareAddress | None, int, str]


def rows(violations: tuple[Violation, ...]) -> list[Row]:
    return [(v.reason, v.chain, v.seq, v.volume, v.offset, v.message) for v in violations]


def where(layout: Layout, location: tuple[int, int], chain: int) -> str:
    volume, slot = location
    return f"volume {layout.volumes[volume].address} offset {layout.slot_offset(chain, slot)}"


def rebuild(
    run: FakeRun,
    issued: Issued,
    *,
    at: PlannedWrite | None = None,
    length: int | None = None,
    stamp_ns: int | None = None,
    names: DataRef | None = None,
) -> bytes:
    """The record of `issued` built again, with one field changed."""
    planned = at or issued.planned
    volume = run.layout.volumes[planned.volume]
    kind = issued.planned.kind
    if names is None and kind is RecordKind.INDEX:
        names = names_of(run.issued[issued.planned.chain][issued.planned.seq - 2].logged)
    raw, _ = build_record(
        kind=kind,
        run_id=RUN_ID,
        chain=issued.planned.chain,
        seq=issued.planned.seq,
        stamp_ns=issued.logged.stamp_ns if stamp_ns is None else stamp_ns,
        address=volume.address,
        volser=volume.volser,
        offset=planned.offset,
        length=issued.planned.length if length is None else length,
        names=names,
    )
    return raw


# The cut at T: "a write stamped < T is absent" and "a write stamped >= T is present"...


async def test_a_write_stamped_before_T_that_is_absent_is_named():
    """Chain 1's fourth write, stamped before T, is missing: the cut is not the cut at T."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    run.issue(0)
    lacking = run.issue(1, apply=False).logged
    at_ns = lacking.stamp_ns + MS_1234
    report = await run.check(at_ns=at_ns)
    assert rows(report.violations) == [
        (
            Reason.NOT_CUT_AT_T,
            1,
            4,
            lacking.volume,
            lacking.offset,
            f"chain 1 lacks seq 4 at volume {lacking.volume} offset {lacking.offset}, "
            f"stamped 1234.568 ms before T={at_ns}",
        )
    ]
    assert report.at_ns == at_ns
    assert report.cut_window_ns is not None  # a cut at some time, just not at T


async def test_a_write_stamped_exactly_at_T_may_be_absent():
    """T belongs to the writes after the cut: one stamped exactly T is rightly absent."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    run.issue(0)
    lacking = run.issue(1, apply=False).logged
    report = await run.check(at_ns=lacking.stamp_ns)
    assert report.consistent, report.summary()


async def test_a_write_stamped_at_or_after_T_that_is_present_is_named():
    """Chain 0's fourth write is stamped after T and present: named with its distance."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    run.clock_ns += 2 * MS_1234
    late = run.issue(0).logged
    at_ns = late.stamp_ns - MS_1234
    report = await run.check(at_ns=at_ns)
    assert rows(report.violations) == [
        (
            Reason.NOT_CUT_AT_T,
            0,
            4,
            None,
            0,
            f"chain 0 holds seq 4 stamped 1234.568 ms at or after T={at_ns}",
        )
    ]
    on_t = await run.check(at_ns=late.stamp_ns)
    assert [(v.reason, v.chain, v.seq) for v in on_t.violations] == [(Reason.NOT_CUT_AT_T, 0, 4)]
    assert "stamped 0.000 ms at or after" in on_t.violations[0].message


# No common time...


async def test_no_common_time_names_both_chains_and_the_gap():
    """A later write present while an earlier acknowledged one of another chain is absent."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    lacking = run.issue(1, apply=False).logged
    run.clock_ns = lacking.acked_ns + MS_1234 - 1000
    present = run.issue(0).logged
    report = await run.check()
    assert rows(report.violations) == [
        (
            Reason.NO_COMMON_TIME,
            1,
            4,
            lacking.volume,
            lacking.offset,
            f"chain 0 holds seq 4 issued at {present.stamp_ns}, but chain 1 lacks seq 4, "
            "acknowledged 1234.568 ms before that: no single time explains both",
        )
    ]
    assert report.cut_window_ns is None
    assert report.stamp_window_ns is None


async def test_no_common_time_when_issued_exactly_at_the_acknowledgement():
    """The cut window is (issue, ack]: a write issued at the instant another was acked and
    present without it leaves the window empty."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    lacking = run.issue(1, apply=False).logged
    run.clock_ns = lacking.acked_ns - 1000
    present = run.issue(0).logged
    assert present.stamp_ns == lacking.acked_ns
    report = await run.check()
    assert [(v.reason, v.chain, v.seq) for v in report.violations] == [
        (Reason.NO_COMMON_TIME, 1, 4)
    ]
    assert "acknowledged 0.000 ms before that" in report.violations[0].message


async def test_windows_end_at_the_first_absent_write_of_any_chain():
    """Both windows end at the earliest absent write (by ack, by stamp), whichever chain."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    top = run.issued[3][-1].logged.stamp_ns
    first = run.issue(2, apply=False).logged
    run.issue(0, apply=False)
    report = await run.check()
    assert report.consistent, report.summary()
    assert report.cut_window_ns == (top, first.acked_ns)
    assert report.stamp_window_ns == (top, first.stamp_ns)


async def test_stamp_window_is_empty_when_a_present_write_shares_an_absent_ones_stamp():
    """Stamps equal: the present write is not before T while the absent one is: no T."""
    run = FakeRun(make_layout())
    run.run_round_robin(3)
    lacking = run.issue(1, apply=False).logged
    run.clock_ns = lacking.stamp_ns - 1000
    present = run.issue(0).logged
    assert present.stamp_ns == lacking.stamp_ns
    report = await run.check()
    assert report.consistent, report.summary()
    assert report.stamp_window_ns is None
    assert report.cut_window_ns == (present.stamp_ns, lacking.acked_ns)


# Acknowledged writes missing, and writes beyond the log...


async def test_acked_missing_names_the_write_and_its_location():
    """ACKED_MISSING carries the missing write's volume, offset and seq, on any volume."""
    seen: set[int] = set()
    for writes in range(1, 7):
        for chain in range(4):
            run = FakeRun(make_layout())
            run.run_round_robin(writes)
            lacking = run.issue(chain, apply=False)
            seen.add(lacking.planned.volume)
            report = await run.check(require_all_acked=True)
            w = lacking.logged
            assert rows(report.chains[chain].violations) == [
                (
                    Reason.ACKED_MISSING,
                    chain,
                    writes + 1,
                    w.volume,
                    w.offset,
                    f"chain {chain}: acknowledged seq {writes + 1} at volume {w.volume} "
                    f"offset {w.offset} is missing: the image's prefix ends at seq {writes}; "
                    "1 acknowledged writes missing",
                )
            ]
    assert 0 in seen and len(seen) > 1  # volume index 0 and others both exercised


async def test_writes_beyond_the_log_are_noted_with_their_seqs():
    """Present writes the log lacks are a note naming the seqs, not a violation."""
    run = FakeRun(make_layout())
    run.run_round_robin(5)
    report = await run.check(run.log(drop_last={1: 2}), require_all_acked=True)
    assert report.consistent, report.summary()
    assert report.chains[1].notes == (
        "seqs 4..5 are present but not in the log (acknowledged after its last flush, "
        "or in flight)",
    )


async def test_chain_reports_carry_prefix_stamp_and_indexing():
    """Each chain's report: indexed as the layout says, the stamp of its prefix (0 if none)."""
    run = FakeRun(make_layout())
    empty = await run.check()
    assert [c.prefix_stamp_ns for c in empty.chains] == [0, 0, 0, 0]
    assert [c.indexed for c in empty.chains] == [False, True, False, True]
    run.run_round_robin(2)
    report = await run.check()
    assert [c.prefix_stamp_ns for c in report.chains] == [
        run.issued[c][-1].logged.stamp_ns for c in range(4)
    ]


# The report's own fields...


async def test_the_report_keeps_image_name_mode_and_T():
    """image, require_all_acked and at_ns are passed through; names come from `name`."""
    layout = make_layout(ring_slots=8)
    victim = only_write_to_its_location(layout, 0, 6)[0]
    run = FakeRun(layout)
    run.run_round_robin(6, skip=frozenset({(0, victim.seq)}))
    log = run.log()

    async def read(address: HardwareAddress, offset: int, length: int) -> bytes:
        return bytes(run.volumes[address][offset : offset + length])

    default = await check_image(read, log, require_all_acked=False)
    assert (default.image, default.require_all_acked, default.at_ns) == ("image", False, None)
    at_ns = run.clock_ns + 1
    named = await check_image(
        read,
        log,
        require_all_acked=True,
        at_ns=at_ns,
        name=lambda a: f"S-{a}",
        image="secondaries",
    )
    assert (named.image, named.require_all_acked, named.at_ns) == ("secondaries", True, at_ns)
    address = layout.volumes[victim.volume].address
    assert (
        named.chains[0]
        .violations[0]
        .message.startswith(f"chain 0 broken at volume S-{address} offset {victim.offset}: ")
    )
    slots, _ = await read_image(read, layout)
    judged = judge(log, slots, require_all_acked=False)
    assert (judged.image, judged.require_all_acked, judged.at_ns) == ("image", False, None)


async def test_reads_in_flight_are_bounded_by_the_limit_given():
    """No more than `reads_in_flight_max` reads at once: 1 means one at a time."""
    run = FakeRun(make_layout())
    run.run_round_robin(2)
    peak = {1: 0, 3: 0}
    now = 0
    limit = 1

    async def read(address: HardwareAddress, offset: int, length: int) -> bytes:
        nonlocal now
        now += 1
        peak[limit] = max(peak[limit], now)
        await asyncio.sleep(0)  # yield to the other readers (not a wait for time)
        now -= 1
        return bytes(run.volumes[address][offset : offset + length])

    for limit in (1, 3):
        report = await check_image(
            read, run.log(), require_all_acked=True, reads_in_flight_max=limit
        )
        assert report.consistent, report.summary()
    assert peak == {1: 1, 3: 3}


# Reading: chunks, short reads, failures...

HALF = 512 * 1024
BIG = 3 * HALF  # three slots of 0.5 MiB: a region reads as 1 MiB + 0.5 MiB
BIG_VOLUMES = tuple(replace(v, capacity_bytes=2 * BIG) for v in VOLUMES)


async def test_a_region_larger_than_a_chunk_is_read_in_chunks_back_to_back():
    """Regions are read in chunks of at most 1 MiB, contiguous, and reassembled exactly."""
    layout = make_layout(chains=2, ring_slots=3, sizes=(HALF,), volumes=BIG_VOLUMES)
    assert layout.region_bytes == BIG
    run = FakeRun(layout)
    run.run_round_robin(3)
    reads: list[tuple[HardwareAddress, int, int]] = []

    async def read(address: HardwareAddress, offset: int, length: int) -> bytes:
        reads.append((address, offset, length))
        return bytes(run.volumes[address][offset : offset + length])

    report = await check_image(read, run.log(), require_all_acked=True)
    assert report.consistent, report.summary()
    assert report.bytes_read == 2 * 4 * BIG
    expected = [
        (v.address, start + offset, length)
        for v in layout.volumes
        for start in (0, BIG)
        for offset, length in ((0, 1024 * 1024), (1024 * 1024, 512 * 1024))
    ]
    assert sorted(reads) == sorted(expected)


async def test_a_short_read_is_refused_naming_volume_offset_and_lengths():
    """An image smaller than the run: the read that came back short is named exactly."""
    layout = make_layout(chains=2, ring_slots=3, sizes=(HALF,), volumes=BIG_VOLUMES)
    run = FakeRun(layout)
    short = layout.volumes[2].address

    async def read(address: HardwareAddress, offset: int, length: int) -> bytes:
        data = bytes(run.volumes[address][offset : offset + length])
        return data[:-1] if (address, offset) == (short, BIG + 1024 * 1024) else data

    with pytest.raises(InputError) as caught:
        await check_image(read, run.log(), require_all_acked=False)
    assert str(caught.value) == (
        f"verify: volume {short}: read of {512 * 1024} bytes at offset {BIG + 1024 * 1024} "
        f"returned {512 * 1024 - 1}: the image is smaller than the run"
    )


async def test_a_failed_read_raises_its_own_error_not_a_group():
    """A read that fails raises its error, even one wrapped in an exception group."""
    run = FakeRun(make_layout())

    async def failing(address: HardwareAddress, offset: int, length: int) -> bytes:
        raise OSError("disk gone")

    async def grouped(address: HardwareAddress, offset: int, length: int) -> bytes:
        raise ExceptionGroup("reads", [OSError("deep")])

    with pytest.raises(OSError, match=r"^disk gone$"):
        await check_image(failing, run.log(), require_all_acked=False)
    with pytest.raises(OSError, match=r"^deep$"):
        await check_image(grouped, run.log(), require_all_acked=False)


async def test_a_record_that_claims_to_run_past_its_slot_is_corrupt():
    """A record longer than its slot (spilling into the next) is corrupt, never valid."""
    layout = make_layout(ring_slots=4)
    run = FakeRun(layout)
    run.run_round_robin(1)
    issued = run.issued[0][0]
    raw = rebuild(run, issued, length=layout.slot_bytes + BLOCK_BYTES)
    run.apply(issued, raw)
    report = await run.check()
    first = report.chains[0].first_violation
    assert first is not None and first.reason is Reason.CORRUPT
    assert f"seq 1 claims {layout.slot_bytes // BLOCK_BYTES + 1} blocks, past the slot" in (
        first.message
    )


# Records out of place...


async def test_a_record_on_the_wrong_volume_at_its_own_offset_is_misplaced():
    """Same chain, same offset, other volume: misplaced (the header names its volume)."""
    layout = make_layout(ring_slots=8)
    run = FakeRun(layout)
    run.run_round_robin(2)
    issued = run.issued[0][0]
    written = {i.planned.location for i in run.issued[0]}
    other = next(v for v in range(len(layout.volumes)) if (v, issued.planned.slot) not in written)
    target = replace(issued.planned, volume=other)
    run.apply(issued, at=target)
    report = await run.check()
    offset = issued.planned.offset
    assert rows(report.chains[0].violations) == [
        (
            Reason.MISPLACED,
            0,
            1,
            layout.volumes[other].address,
            offset,
            f"chain 0: volume {layout.volumes[other].address} offset {offset} holds chain 0 "
            f"seq 1, written for volume {issued.logged.volume} offset {offset}",
        )
    ]


def _other_size(length: int) -> int:
    return 4096 if length != 4096 else 8192


async def test_a_record_of_the_wrong_length_at_its_own_location_is_misplaced():
    """The plan fixes each write's size: a record of another size is not that write."""
    layout = make_layout(ring_slots=8)
    run = FakeRun(layout)
    run.run_round_robin(6)
    alone = only_write_to_its_location(layout, 0, 6)[:2]
    expected: list[Row] = []
    for planned in alone:
        issued = run.issued[0][planned.seq - 1]
        length = _other_size(planned.length)
        run.apply(issued, rebuild(run, issued, length=length))
        here = where(layout, planned.location, 0)
        expected.append(
            (
                Reason.MISPLACED,
                0,
                planned.seq,
                layout.volumes[planned.volume].address,
                planned.offset,
                f"chain 0: seq {planned.seq} (data, {length} bytes) belongs at {here} "
                f"(data, {planned.length} bytes) but is at {here}",
            )
        )
    assert len(expected) == 2
    report = await run.check()
    assert rows(report.chains[0].violations) == expected


async def test_a_record_written_for_another_slot_of_its_chain_is_misplaced():
    """A record whose header matches where it is, but the plan puts that seq elsewhere."""
    layout = make_layout(ring_slots=8)
    run = FakeRun(layout)
    run.run_round_robin(3)
    issued = run.issued[0][0]
    written = {i.planned.location for i in run.issued[0]}
    slot = next(s for s in range(8) if (issued.planned.volume, s) not in written)
    target = replace(issued.planned, slot=slot, offset=layout.slot_offset(0, slot))
    run.apply(issued, rebuild(run, issued, at=target), at=target)
    report = await run.check()
    assert rows(report.chains[0].violations) == [
        (
            Reason.MISPLACED,
            0,
            1,
            layout.volumes[target.volume].address,
            target.offset,
            f"chain 0: seq 1 (data, {target.length} bytes) belongs at "
            f"{where(layout, issued.planned.location, 0)} (data, {target.length} bytes) but is "
            f"at {where(layout, target.location, 0)}",
        )
    ]


async def test_the_last_logged_write_not_as_acknowledged_is_named():
    """The last acknowledged write present with another stamp is not as acknowledged."""
    layout = make_layout()
    run = FakeRun(layout)
    run.run_round_robin(4)
    issued = run.issued[0][-1]
    raw = rebuild(run, issued, stamp_ns=issued.logged.stamp_ns - 7)
    run.apply(issued, raw)
    found = decode_slot(raw, run_id=RUN_ID).record
    assert found is not None
    report = await run.check()
    w = issued.logged
    assert (
        Reason.NOT_AS_ACKNOWLEDGED,
        0,
        4,
        w.volume,
        w.offset,
        f"chain 0: seq 4 at volume {w.volume} offset {w.offset} has checksum "
        f"{found.checksum:08x} stamped {w.stamp_ns - 7}, but the acknowledged write had "
        f"checksum {w.checksum:08x} stamped {w.stamp_ns}",
    ) in rows(report.chains[0].violations)


# Every location, every violation: one found does not hide the next...


async def test_a_misplaced_record_does_not_hide_a_missing_write_after_it():
    """The first location misplaced, a later one missing: both named, nothing more."""
    layout = make_layout(ring_slots=8)
    run = FakeRun(layout)
    run.run_round_robin(8)
    first = min(i.planned.location for i in run.issued[0])
    victim = next(p for p in only_write_to_its_location(layout, 0, 8) if p.location != first)
    run.apply(
        run.issued[2][0], at=next(i.planned for i in run.issued[0] if i.planned.location == first)
    )
    run.volumes[layout.volumes[victim.volume].address][
        victim.offset : victim.offset + victim.length
    ] = bytes(victim.length)
    report = await run.check()
    assert [
        (v.reason, v.seq) for v in report.chains[0].violations if v.reason is not Reason.MISPLACED
    ] == [(Reason.MISSING, victim.seq)]
    assert [v.reason for v in report.chains[0].violations].count(Reason.MISPLACED) == 1


async def test_every_stale_location_is_named():
    """Two locations each holding an older write than the prefix puts there: both named."""
    run = FakeRun(make_layout(ring_slots=1))
    run.run_round_robin(12)
    stale: list[int] = []
    latest: dict[tuple[int, int], Issued] = {}
    previous: dict[tuple[int, int], Issued] = {}
    for issued in run.issued[2]:
        location = issued.planned.location
        if location in latest:
            previous[location] = latest[location]
        latest[location] = issued
    for location, older in sorted(previous.items())[:2]:
        run.apply(older)
        stale.append(latest[location].planned.seq)
    report = await run.check()
    assert sorted(v.seq for v in report.chains[2].violations if v.reason is Reason.STALE) == (
        sorted(stale)
    )
    assert len(stale) == 2


async def test_corrupt_records_name_the_write_that_belongs_there():
    """Two corrupted records: each named with the seq that belongs there."""
    layout = make_layout(ring_slots=8)
    run = FakeRun(layout)
    run.run_round_robin(6)
    victims = [run.issued[0][p.seq - 1] for p in only_write_to_its_location(layout, 0, 6)[:2]]
    assert len(victims) == 2
    for victim in victims:
        run.volumes[victim.logged.volume][victim.logged.offset + 128] ^= 0xFF
    report = await run.check()
    corrupt = [v for v in report.chains[0].violations if v.reason is Reason.CORRUPT]
    assert sorted(v.seq for v in corrupt) == sorted(v.planned.seq for v in victims)
    for v in corrupt:
        victim = next(i for i in victims if i.planned.seq == v.seq)
        slot = decode_slot(
            bytes(run.volumes[victim.logged.volume][victim.logged.offset :][: layout.slot_bytes]),
            run_id=RUN_ID,
        )
        assert v.message == (
            f"chain 0: {where(layout, victim.planned.location, 0)} holds {slot.describe()} "
            f"where seq {v.seq} belongs"
        )


async def test_a_damaged_record_where_nothing_belongs_is_corrupt_with_no_seq():
    """A stray block of this run at a location the prefix never wrote: corrupt, seq 0."""
    layout = make_layout(ring_slots=8)
    run = FakeRun(layout)
    run.run_round_robin(2)
    written = {i.planned.location for i in run.issued[0]}
    location = next(
        (v, s) for v in range(len(layout.volumes)) for s in range(8) if (v, s) not in written
    )
    target = PlannedWrite(
        chain=0,
        seq=0,
        kind=RecordKind.DATA,
        volume=location[0],
        slot=location[1],
        offset=layout.slot_offset(0, location[1]),
        length=BLOCK_BYTES,
    )
    stray = run.issued[0][0].data[BLOCK_BYTES : 2 * BLOCK_BYTES]
    run.apply(run.issued[0][0], stray, at=target)
    slot = decode_slot(stray + bytes(BLOCK_BYTES), run_id=RUN_ID)
    assert slot.ours
    report = await run.check()
    assert rows(report.chains[0].violations) == [
        (
            Reason.CORRUPT,
            0,
            0,
            layout.volumes[location[0]].address,
            target.offset,
            f"chain 0: {where(layout, location, 0)} holds {slot.describe()}",
        )
    ]


# Index records...


def _index_at_end(layout: Layout, chain: int = 1) -> tuple[FakeRun, Issued]:
    """A run whose chain `chain` ends with an index record (written, not yet logged)."""
    run = FakeRun(layout)
    run.run_round_robin(3)
    while run.issued[chain][-1].planned.kind is not RecordKind.INDEX:
        run.issue(chain)
    return run, run.issued[chain][-1]


@pytest.mark.parametrize("outside", ["region end", "other volume", "misaligned"])
async def test_an_index_naming_a_location_outside_the_region_is_named(outside: str):
    """An index whose data reference points outside its chain's region cannot be satisfied."""
    layout = make_layout(ring_slots=8)
    run, index = _index_at_end(layout)
    data = run.issued[1][-2].logged
    start = layout.region_offset(1)
    address, offset = {
        "region end": (data.volume, start + layout.region_bytes),
        "other volume": (HardwareAddress.parse("64099:1A00:0A:00"), data.offset),
        "misaligned": (data.volume, data.offset + BLOCK_BYTES),
    }[outside]
    names = DataRef(address=address, offset=offset, seq=data.seq, checksum=0xABC, blocks=1)
    run.apply(index, rebuild(run, index, names=names))
    report = await run.check(run.log(drop_last={1: 1}))
    assert rows(report.chains[1].violations) == [
        (
            Reason.INDEX_WITHOUT_DATA,
            1,
            data.seq,
            index.logged.volume,
            index.logged.offset,
            f"chain 1: index seq {index.planned.seq} at "
            f"{where(layout, index.planned.location, 1)} names data seq {data.seq} "
            "(checksum 00000abc) at a location outside the chain's region",
        )
    ]


async def test_an_index_naming_its_data_with_another_checksum_is_named():
    """The data record is there with the seq named, but not the checksum: not that data."""
    layout = make_layout(ring_slots=8)
    run, index = _index_at_end(layout)
    data = run.issued[1][-2]
    names = DataRef(
        address=data.logged.volume,
        offset=data.logged.offset,
        seq=data.logged.seq,
        checksum=data.logged.checksum ^ 1,
        blocks=data.logged.length // BLOCK_BYTES,
    )
    run.apply(index, rebuild(run, index, names=names))
    report = await run.check(run.log(drop_last={1: 1}))
    assert rows(report.chains[1].violations) == [
        (
            Reason.INDEX_WITHOUT_DATA,
            1,
            data.logged.seq,
            index.logged.volume,
            index.logged.offset,
            f"chain 1: index seq {index.planned.seq} at "
            f"{where(layout, index.planned.location, 1)} names data seq {data.logged.seq} "
            f"(checksum {names.checksum:08x}) at {where(layout, data.planned.location, 1)}, "
            f"which holds seq {data.logged.seq} with checksum {data.logged.checksum:08x}",
        )
    ]


def _index_whose_data_the_next_write_overwrites(layout: Layout) -> int:
    """A count n of chain 1's writes such that write n+1 goes where an index record present
    after n writes finds its data."""
    for n in range(2, 200):
        plan = plan_prefix(layout, 1, n + 1)
        latest = {p.location: p for p in plan[:n]}
        target = plan[n].location
        if any(
            p.kind is RecordKind.INDEX
            and plan[p.names_seq - 1].location == target
            and latest.get(target) is plan[p.names_seq - 1]
            for p in latest.values()
        ):
            return n
    raise AssertionError("no such plan")


async def _torn_next_write(acknowledged: bool) -> tuple[FakeRun, CheckReport]:
    layout = make_layout(ring_slots=2)
    n = _index_whose_data_the_next_write_overwrites(layout)
    run = FakeRun(layout)
    for _ in range(n):
        run.issue(1)
    torn = run.issue(1, apply=False)
    run.tear(torn)
    log = run.log() if acknowledged else run.log(drop_last={1: 1})
    return run, await run.check(log)


async def test_an_index_whose_data_is_being_overwritten_by_the_write_in_flight_is_allowed():
    """Write n+1, never acknowledged, is torn where an index's data was: allowed."""
    _, report = await _torn_next_write(acknowledged=False)
    assert report.consistent, report.summary()


async def test_an_index_whose_data_was_torn_by_an_acknowledged_write_is_named():
    """The same tear by an acknowledged write: corrupt, and the index lost its data."""
    _, report = await _torn_next_write(acknowledged=True)
    found = {v.reason for v in report.chains[1].violations}
    assert {Reason.CORRUPT, Reason.INDEX_WITHOUT_DATA} <= found


# An allowed case does not end the checks of its chain...


def _allowed_cases_then_a_hole(layout: Layout) -> tuple[int, PlannedWrite, PlannedWrite]:
    """n writes of chain 1 and two of them, such that after n writes: write n+1 (in flight)
    goes where an index I1 finds its data; some index I0 finds its data overwritten later by
    the chain; and an index I2 after both (in location order) names data D2, the latest write
    at a location after write n+1's. Returns (n, D2, I2)."""
    for n in range(4, 400):
        plan = plan_prefix(layout, 1, n + 1)
        latest = {p.location: p for p in plan[:n]}
        torn = plan[n].location
        indexes = sorted(
            (p for p in latest.values() if p.kind is RecordKind.INDEX), key=lambda p: p.location
        )

        def data_of(index: PlannedWrite, plan: list[PlannedWrite] = plan) -> PlannedWrite:
            return plan[index.names_seq - 1]

        i1 = next((i for i in indexes if data_of(i).location == torn), None)
        overwritten = [
            i
            for i in indexes
            if latest[data_of(i).location].seq > i.names_seq and data_of(i).location != torn
        ]
        if i1 is None or not overwritten:
            continue
        for i2 in indexes:
            d2 = data_of(i2)
            i0 = next((i for i in overwritten if data_of(i).location != d2.location), None)
            if (
                i0 is not None
                and i2.location > max(i1.location, i0.location)
                and d2.location > torn
                and latest[d2.location] is d2
                and d2.seq < n
            ):
                return n, d2, i2
    raise AssertionError("no such plan")


async def test_allowed_cases_do_not_end_the_checks_of_their_chain():
    """A torn write in flight, an index whose data its chain overwrote later, and an index
    whose data the write in flight is tearing are all allowed; the checks go on after them
    and still find the data record missing further on, and the index that lost it."""
    layout = make_layout(ring_slots=2)
    n, d2, i2 = _allowed_cases_then_a_hole(layout)
    run = FakeRun(layout)
    for _ in range(n):
        run.issue(1)
    torn = run.issue(1, apply=False)
    run.tear(torn)
    address = layout.volumes[d2.volume].address
    run.volumes[address][d2.offset : d2.offset + d2.length] = bytes(d2.length)
    report = await run.check(run.log(drop_last={1: 1}))
    found = {(v.reason, v.seq, v.offset) for v in report.chains[1].violations}
    assert (Reason.MISSING, d2.seq, d2.offset) in found, report.summary()
    assert (Reason.INDEX_WITHOUT_DATA, d2.seq, i2.offset) in found, report.summary()
