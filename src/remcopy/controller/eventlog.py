# The controller's recent events and their numbering, kept across restarts.
#
# Why: a reader of the event stream (`remcopy events --follow`, a monitor) loses its
# connection when the controller restarts, or when its own machine does. To miss nothing it
# reconnects and asks for every event after the last number it saw. So the controller must
# number its events across restarts and keep the recent ones to replay.
#
# Theory of operation
# - Events are numbered 1, 2, 3, ...; the last RING_EVENTS_MAX are kept in memory (a ring)
#   and in `events.jsonl` in the state folder, one JSON line each (events.Event.to_json).
# - Recording costs what changed: `record` only keeps the events; `write`, called at the end of
#   the loop step that recorded them (after the answer that caused them was queued), encodes
#   them and appends the lines with one write(), never with an fsync. A process that is killed
#   loses nothing (the kernel has the bytes); the file is made durable when the controller
#   stops.
# - When the file holds twice the ring, it is rewritten with the ring alone (a new file
#   renamed over the old one), so it never grows past 2 x RING_EVENTS_MAX lines.
# - At start the file's last number is the numbering's start: events go on at last + 1.
# - `since(after)` answers a resume: the kept events numbered after `after`, preceded by a GAP
#   when some of those are no longer kept; when `after` is past the last number (a machine
#   crash cost the file's unsynced tail), a GAP says where the numbering goes on from.
from __future__ import annotations

import collections
import itertools
import json
import json.encoder
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from remcopy.controller import atrest
from remcopy.events import Event, EventKind

log = logging.getLogger("remcopy.controller")

EVENTS_FILE_NAME: Final = "events.jsonl"
# Events kept for a resume. A 1,250-device suspend is 1,250 events: the ring holds the last
# eight such operations, and a reader that was away longer is told what it missed (a GAP).
# At ~400 bytes an event it is ~4 MB of memory and at most twice that on disk.
RING_EVENTS_MAX: Final = 10_000


class EventLog:
    """The numbered recent events of one controller, in memory and in its state folder."""

    def __init__(self, data_dir: Path, *, ring_max: int = RING_EVENTS_MAX) -> None:
        self.path = data_dir / EVENTS_FILE_NAME
        self.ring_max = ring_max
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_max)
        # The file's lines of the kept events, once written (what a compaction writes).
        self._lines: collections.deque[bytes] = collections.deque(maxlen=ring_max)
        self._unwritten: list[Event] = []
        self._lines_in_file = 0
        self.last_seq = 0
        self._load()
        self._fd = atrest.open_private(self.path, os.O_WRONLY | os.O_APPEND)

    def __repr__(self) -> str:
        return (
            f"<EventLog last_seq={self.last_seq} kept={len(self._ring)} "
            f"unwritten={len(self._unwritten)}>"
        )

    def _invariants(self) -> None:
        assert not self._ring or self._ring[-1].seq == self.last_seq
        assert len(self._ring) <= self.ring_max
        assert len(self._lines) + len(self._unwritten) >= len(self._ring)

    def _load(self) -> None:
        """The kept events and the last number, from the file; lines that cannot be read (a
        torn last line after a machine crash) are skipped with one warning."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        bad = 0
        for line in raw.splitlines():
            try:
                event = Event.from_json(json.loads(line))
            except (ValueError, TypeError, AttributeError):
                bad += 1
                continue
            if event.seq <= self.last_seq:
                bad += 1
                continue
            self._ring.append(event)
            self._lines.append(line + b"\n")
            self.last_seq = event.seq
            self._lines_in_file += 1
        if bad:
            log.warning("event log %s: %d unreadable lines skipped", self.path, bad)
        self._invariants()

    @property
    def first_kept_seq(self) -> int:
        """The oldest number still kept (last + 1 when none is)."""
        return self._ring[0].seq if self._ring else self.last_seq + 1

    def record(self, events: Iterable[Event]) -> None:
        """Keep events already numbered last + 1, last + 2, ...; written by `write`."""
        for event in events:
            assert event.seq == self.last_seq + 1, (event.seq, self.last_seq)
            self._ring.append(event)
            self._unwritten.append(event)
            self.last_seq = event.seq
        self._invariants()

    @property
    def unwritten(self) -> bool:
        return bool(self._unwritten)

    def write(self) -> None:
        """Append what was recorded since the last write: one write(), no fsync."""
        if not self._unwritten:
            return
        events, self._unwritten = self._unwritten, []
        lines = _encoded(events)
        self._lines.extend(lines)
        os.write(self._fd, b"".join(lines))
        self._lines_in_file += len(lines)
        if self._lines_in_file >= 2 * self.ring_max:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the kept events alone."""
        temporary = self.path.with_suffix(".jsonl.new")
        fd = atrest.open_private(temporary, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"".join(self._lines))
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        os.close(self._fd)
        self._fd = atrest.open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._lines_in_file = len(self._ring)

    def since(self, after_seq: int) -> list[Event]:
        """What a subscriber that saw up to `after_seq` must be sent: the kept events after
        it, after a GAP when some of them are gone."""
        if after_seq > self.last_seq:
            return [
                Event(
                    kind=EventKind.GAP,
                    seq=self.last_seq,
                    text=(
                        f"gap: this controller's events end at {self.last_seq}, before the "
                        f"{after_seq} asked for (its event log lost its end, in a crash of "
                        f"its machine?): numbering goes on from {self.last_seq + 1}"
                    ),
                    detail={"lost_from": self.last_seq + 1, "asked_after": after_seq},
                )
            ]
        out: list[Event] = []
        first = self.first_kept_seq
        if after_seq + 1 < first:
            out.append(
                Event(
                    kind=EventKind.GAP,
                    seq=first - 1,
                    text=(
                        f"gap: events {after_seq + 1}..{first - 1} are no longer kept (the "
                        f"controller keeps the last {self.ring_max})"
                    ),
                    detail={"lost_from": after_seq + 1, "asked_after": after_seq},
                )
            )
        # The ring is in number order: skip to the first wanted without a scan of all of it.
        skip = max(0, after_seq + 1 - first)
        out.extend(itertools.islice(self._ring, skip, None))
        return out

    def close(self) -> None:
        """Write what is left and make the file durable (a clean stop)."""
        try:
            self.write()
            os.fdatasync(self._fd)
        finally:
            os.close(self._fd)


def _encoded(events: list[Event]) -> list[bytes]:
    """The file lines of events (Event.to_json). Events of one batch that differ only in
    number, text and device (a commit's STATE events) share one line template: each line is
    the template with those three put in, the same bytes json.dumps writes (the unit test
    compares), at a fifth of the cost."""
    lines = []
    times: dict[int, str] = {}
    templates: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
    for event in events:
        if not (event.text and event.device):
            doc = event.to_json(time_text=times.get(event.time_ns))
            times[event.time_ns] = doc["time"]
            lines.append(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
            continue
        shape = (
            event.kind,
            event.serial,
            event.time_ns,
            event.controller,
            event.old,
            event.new,
            event.cause,
            event.at_ns,
            event.group,
            event.peer,
            tuple(event.detail.items()),
        )
        template = templates.get(shape)
        if template is None:
            template = templates[shape] = _template(event, times)
        head, after_seq, after_text, tail = template
        lines.append(
            f"{head}{event.seq}{after_seq}{_quoted(event.text)}{after_text}"
            f"{_quoted(event.device)}{tail}".encode()
        )
    return lines


def _template(event: Event, times: dict[int, str]) -> tuple[str, str, str, str]:
    """An event's line cut around its number, text and device (see _encoded)."""
    doc = event.to_json(time_text=times.get(event.time_ns))
    times[event.time_ns] = doc["time"]
    doc.update(seq=_SEQ_MARK, text=_TEXT_MARK, device=_DEVICE_MARK)
    line = json.dumps(doc, separators=(",", ":")) + "\n"
    head, _, rest = line.partition(_quoted(_SEQ_MARK))
    after_seq, _, rest = rest.partition(_quoted(_TEXT_MARK))
    after_text, _, tail = rest.partition(_quoted(_DEVICE_MARK))
    return head, after_seq, after_text, tail


# Stand-ins no event field holds (json.dumps writes them as \u0000 escapes).
_SEQ_MARK: Final = "\x00seq"
_TEXT_MARK: Final = "\x00text"
_DEVICE_MARK: Final = "\x00device"
_quoted: Callable[[str], str] = json.encoder.encode_basestring_ascii  # what json.dumps uses
