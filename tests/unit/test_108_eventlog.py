# The controller's event log: numbering that survives a reopen, the ring a resume replays,
# the gap it reports, and the file that never grows past twice the ring.
from __future__ import annotations

import json
from pathlib import Path

from remcopy.controller.eventlog import EVENTS_FILE_NAME, EventLog
from remcopy.events import Event, EventKind
from remcopy.states import PairState


def _record(log: EventLog, count: int) -> list[Event]:
    first = log.last_seq + 1
    events = [
        Event(
            kind=EventKind.STATE,
            seq=first + i,
            serial=64015,
            time_ns=1_000 + i,
            device=f"64015:1A00:0A:{i % 256:02X}",
            old=PairState.DUPLEX,
            new=PairState.SUSPENDED,
            text=f"event {first + i}",
        )
        for i in range(count)
    ]
    log.record(events)
    log.write()
    return events


def test_EventLog_numbering_goes_on_after_a_reopen(tmp_path: Path) -> None:
    """Events kept before a close are replayed after a reopen, and numbering goes on."""
    log = EventLog(tmp_path)
    written = _record(log, 5)
    log.close()
    again = EventLog(tmp_path)
    assert again.last_seq == 5
    assert again.since(2) == written[2:]
    assert [e.seq for e in _record(again, 2)] == [6, 7]
    again.close()


def test_EventLog_keeps_what_was_written_without_a_close(tmp_path: Path) -> None:
    """A log never closed (its process killed) still has every written event on reopen."""
    log = EventLog(tmp_path)
    written = _record(log, 3)
    assert EventLog(tmp_path).since(0) == written
    log.close()


def test_EventLog_since_the_last_number_is_empty(tmp_path: Path) -> None:
    """A subscriber that saw everything is sent nothing."""
    log = EventLog(tmp_path)
    _record(log, 3)
    assert log.since(3) == []
    log.close()


def test_EventLog_reports_a_gap_when_the_ring_no_longer_holds_what_was_asked(
    tmp_path: Path,
) -> None:
    """Asked for events older than the ring: a GAP numbered just before the oldest kept,
    then every kept event."""
    log = EventLog(tmp_path, ring_max=4)
    written = _record(log, 10)
    gap, *rest = log.since(2)
    assert (gap.kind, gap.seq, gap.detail["lost_from"]) == (EventKind.GAP, 6, 3)
    assert rest == written[6:]
    assert log.since(6) == written[6:]
    log.close()


def test_EventLog_reports_a_gap_when_asked_past_its_last_number(tmp_path: Path) -> None:
    """Asked for events after a number it never reached (its file lost its end): a GAP
    numbered with its last number, saying where the numbering goes on."""
    log = EventLog(tmp_path)
    _record(log, 3)
    (gap,) = log.since(9)
    assert (gap.kind, gap.seq, gap.detail["lost_from"], gap.numbered) == (
        EventKind.GAP,
        3,
        4,
        False,
    )
    log.close()


def test_EventLog_file_is_cut_back_to_the_ring(tmp_path: Path) -> None:
    """The file is rewritten with the ring when it reaches twice the ring: a reopen reads at
    most that many lines and numbering goes on from the last."""
    log = EventLog(tmp_path, ring_max=4)
    _record(log, 7)
    assert len((tmp_path / EVENTS_FILE_NAME).read_bytes().splitlines()) == 7
    _record(log, 1)
    lines = (tmp_path / EVENTS_FILE_NAME).read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [5, 6, 7, 8]
    _record(log, 1)
    log.close()
    assert EventLog(tmp_path, ring_max=4).last_seq == 9


def test_EventLog_skips_a_torn_last_line(tmp_path: Path) -> None:
    """A last line cut short (a crash of the machine mid-write) is skipped; the rest is read
    and numbering goes on after the last whole event."""
    log = EventLog(tmp_path)
    _record(log, 3)
    log.close()
    path = tmp_path / EVENTS_FILE_NAME
    path.write_bytes(path.read_bytes() + b'{"schema":1,"seq":4,"ki')
    again = EventLog(tmp_path)
    assert again.last_seq == 3
    assert [e.seq for e in _record(again, 1)] == [4]
    again.close()


def test_Event_json_round_trip() -> None:
    """An event's JSON form reads back as the same event, and names its schema."""
    event = Event(
        kind=EventKind.HOLD,
        seq=3,
        serial=64015,
        controller="cntla",
        time_ns=1_700_000_000_123_456_789,
        device="64015:1A00:0A:01",
        cause="replication-error",
        detail={"hold_s": 2.0, "error": "link lost"},
        text="hold 64015:1A00:0A:01",
    )
    doc = event.to_json()
    assert doc["schema"] == 1
    assert doc["time"] == "2023-11-14T22:13:20.123457Z"
    assert Event.from_json(json.loads(json.dumps(doc))) == event


def test_EventLog_lines_of_a_batch_are_those_of_json_dumps(tmp_path: Path) -> None:
    """A commit's STATE events share one line template: the file holds the very bytes
    json.dumps writes for each event, escapes included, and events of other shapes (another
    time, no device, a detail) in between are written as they are."""
    events = [
        Event(
            kind=EventKind.STATE,
            seq=i + 1,
            serial=64015,
            controller="pri\u00e90",
            time_ns=1_000 + i // 3,
            device=f"64015:1A00:0A:{i:02X}" if i != 4 else "",
            old=PairState.DUPLEX,
            new=PairState.SUSPENDED,
            cause="suspend",
            at_ns=1_000,
            group='G "1"',
            detail={"tag": "x\ny"} if i % 2 else {},
            text=f'pair {i} "quoted" \\ \u00e9\n',
        )
        for i in range(9)
    ]
    log = EventLog(tmp_path)
    log.record(events)
    log.write()
    expected = b"".join(
        json.dumps(e.to_json(), separators=(",", ":")).encode() + b"\n" for e in events
    )
    assert (tmp_path / EVENTS_FILE_NAME).read_bytes() == expected
    log.close()
    assert EventLog(tmp_path).since(0) == events
