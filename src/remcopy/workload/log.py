# The workload's durable log of acknowledged writes: one JSON line per write.
#
# Why: the checker needs to know what was acknowledged (to prove no acknowledged write was
# lost) and what each write's checksum and timestamps were (to tell a stale record from the
# right one, and to find the cut time). Only the workload knows; so it writes it down, in a
# format a person can read and grep.
#
# Format (one JSON object per line; docs/consistency.md):
#   line 1     {"log": "remcopy-workload", "version": 1, "group", "host", "started_ns",
#               "layout": {...}}                        the run: where everything goes
#   then       {"chain", "seq", "kind", "volume", "offset", "length", "checksum",
#               "stamp_ns", "acked_ns"}                 one acknowledged write
#   last       {"end": true, "writes": N, "stopped": why}  only after a clean stop
#
# Durability (what survives `kill -9` of the workload process):
# - An acknowledged write is appended to a batch; the batch is written and flushed to the
#   operating system (`write` + `flush`: the page cache) at the end of the event-loop turn, and
#   the chain issues its next write only after that flush. So after `kill -9` of the workload
#   every logged line is in the file, and at most one acknowledged write per chain (the last
#   one, whose batch had not been flushed) is missing from the log. The checker treats such a
#   write as present-but-unlogged, never as a violation.
# - Lines are never reordered; a torn last line (no newline) is ignored by the reader.
# - Power loss: only what was fsynced survives; the log is fsynced when it is closed, and
#   after every batch with `fsync=True` (`--fsync`).
# Rules this module keeps:
# - A log is written once: opening an existing file is refused unless `overwrite=True`.
# - Reading refuses a malformed log naming the file and line (exit code 2), never guesses.
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from remcopy.errors import InputError
from remcopy.ids import HardwareAddress
from remcopy.workload.layout import Layout, PlannedWrite, plan_chain
from remcopy.workload.record import RecordKind

LOG_NAME: Final = "remcopy-workload"
LOG_VERSION: Final = 1
# A write line is a few hundred bytes; the header lists every volume of the run (about 100
# bytes each, so 4,096 volumes is 400 KiB). Anything past 16 MiB is not ours.
LINE_MAX_CHARS: Final = 16 * 1024 * 1024


class WorkloadLogError(InputError):
    """the workload log cannot be read or written"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedWrite:
    """One acknowledged write, as the log keeps it."""

    chain: int
    seq: int
    kind: RecordKind
    volume: HardwareAddress
    """The primary volume it was written to."""
    offset: int
    length: int
    checksum: int
    stamp_ns: int
    """The timestamp the write was issued with (the controller's ordering key)."""
    acked_ns: int
    """When the host saw the acknowledgement (same clock as the stamp)."""

    def to_line(self) -> str:
        return (
            json.dumps(
                {
                    "chain": self.chain,
                    "seq": self.seq,
                    "kind": self.kind.name.lower(),
                    "volume": str(self.volume),
                    "offset": self.offset,
                    "length": self.length,
                    "checksum": f"{self.checksum:08x}",
                    "stamp_ns": self.stamp_ns,
                    "acked_ns": self.acked_ns,
                },
                separators=(",", ":"),
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LoggedWrite:
        return cls(
            chain=int(document["chain"]),
            seq=int(document["seq"]),
            kind=RecordKind[str(document["kind"]).upper()],
            volume=HardwareAddress.parse(document["volume"]),
            offset=int(document["offset"]),
            length=int(document["length"]),
            checksum=int(document["checksum"], 16),
            stamp_ns=int(document["stamp_ns"]),
            acked_ns=int(document["acked_ns"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadLog:
    """A log as read back: the run's layout and its acknowledged writes, per chain by seq."""

    layout: Layout
    group: str = ""
    host: str = ""
    started_ns: int = 0
    writes: tuple[LoggedWrite, ...] = ()
    ended: bool = False
    """The run stopped cleanly (the end line is there)."""
    torn_tail: bool = False
    """The last line had no newline (the process died writing it) and was ignored."""
    by_chain: dict[int, list[LoggedWrite]] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, layout: Layout, writes: list[LoggedWrite], **kwargs: Any) -> WorkloadLog:
        """Build from writes (in any order); refuse gaps and writes off the plan."""
        by_chain: dict[int, list[LoggedWrite]] = {}
        for write in sorted(writes, key=lambda w: (w.chain, w.seq)):
            by_chain.setdefault(write.chain, []).append(write)
        for chain, chain_writes in by_chain.items():
            _check_chain(layout, chain, chain_writes)
        return cls(layout=layout, writes=tuple(writes), by_chain=by_chain, **kwargs)

    def chain(self, chain: int) -> list[LoggedWrite]:
        return self.by_chain.get(chain, [])


def _check_chain(layout: Layout, chain: int, writes: list[LoggedWrite]) -> None:
    if not 0 <= chain < layout.chains:
        raise WorkloadLogError(
            f"workload log: chain {chain} is outside the run's 0..{layout.chains - 1}"
        )
    for expected_seq, (write, planned) in enumerate(
        zip(writes, plan_chain(layout, chain), strict=False), start=1
    ):
        if write.seq != expected_seq:
            raise WorkloadLogError(
                f"workload log: chain {chain} jumps to seq {write.seq} where seq {expected_seq} "
                "belongs: a log of acknowledged writes has no gaps"
            )
        if not _as_planned(layout, write, planned):
            volume = layout.volumes[planned.volume].address
            raise WorkloadLogError(
                f"workload log: chain {chain} seq {write.seq} is logged at volume "
                f"{write.volume} offset {write.offset} length {write.length} "
                f"({write.kind.name.lower()}), but the run's layout puts it at volume "
                f"{volume} offset {planned.offset} length {planned.length} "
                f"({planned.kind.name.lower()}): the log does not belong to this layout"
            )


def _as_planned(layout: Layout, write: LoggedWrite, planned: PlannedWrite) -> bool:
    return (
        write.volume == layout.volumes[planned.volume].address
        and write.offset == planned.offset
        and write.length == planned.length
        and write.kind is planned.kind
    )


# Writing...


class LogWriter:
    """Appends acknowledged writes in batches, one flush per event-loop turn."""

    def __init__(self, path: Path, file: IO[str], *, fsync: bool) -> None:
        self.path = path
        self._file = file
        self._fsync = fsync
        self._pending: list[str] = []
        self._batch: asyncio.Future[None] | None = None
        self.lines = 0
        self.flushes = 0

    def __repr__(self) -> str:
        return f"<LogWriter {self.path} lines={self.lines} flushes={self.flushes}>"

    @classmethod
    def create(
        cls,
        path: Path,
        layout: Layout,
        *,
        group: str,
        host: str,
        overwrite: bool = False,
        fsync: bool = False,
    ) -> LogWriter:
        """Create the log and write its header line (durable before any write is issued)."""
        try:
            file = path.open("w" if overwrite else "x", encoding="utf-8")
        except FileExistsError:
            raise WorkloadLogError(
                f"workload log {path}: exists: a log records one run; choose a new file "
                "(or --overwrite)"
            ) from None
        except OSError as exc:
            raise WorkloadLogError(f"workload log {path}: {exc.strerror or exc}") from exc
        writer = cls(path, file, fsync=fsync)
        header = {
            "log": LOG_NAME,
            "version": LOG_VERSION,
            "group": group,
            "host": host,
            "started_ns": time.time_ns(),
            "layout": layout.to_json(),
        }
        writer._write_now([json.dumps(header, separators=(",", ":")) + "\n"], fsync=True)
        return writer

    async def append(self, write: LoggedWrite) -> None:
        """Add a write; return once it is flushed to the operating system."""
        self._pending.append(write.to_line())
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            loop.call_soon(self._flush_batch)
        await asyncio.shield(self._batch)

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        lines, self._pending = self._pending, []
        assert batch is not None
        try:
            self._write_now(lines, fsync=self._fsync)
        except WorkloadLogError as exc:
            if not batch.done():
                batch.set_exception(exc)
            return
        if not batch.done():
            batch.set_result(None)

    def _write_now(self, lines: list[str], *, fsync: bool) -> None:
        try:
            self._file.write("".join(lines))
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise WorkloadLogError(f"workload log {self.path}: {exc.strerror or exc}") from exc
        self.lines += len(lines)
        self.flushes += 1

    def close(self, *, writes: int, stopped: str) -> None:
        """Flush what is pending, write the end line, fsync and close."""
        if self._file.closed:
            return
        lines, self._pending = self._pending, []
        end = json.dumps({"end": True, "writes": writes, "stopped": stopped}) + "\n"
        try:
            self._write_now([*lines, end], fsync=True)
        finally:
            self._file.close()


# Reading...


def read_log(path: Path) -> WorkloadLog:
    """Read a workload log; refuse a malformed one naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkloadLogError(f"workload log {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadLogError(f"workload log {path}: cannot read it: {exc}") from exc
    torn_tail = bool(text) and not text.endswith("\n")
    lines = text.split("\n")[:-1]  # the torn last line (or the empty one after "\n") is dropped
    if not lines:
        raise WorkloadLogError(f"workload log {path}: empty: no header line")
    documents = list(_documents(path, lines))
    number, header = documents[0]
    if header.get("log") != LOG_NAME or header.get("version") != LOG_VERSION:
        raise WorkloadLogError(
            f"workload log {path}:{number}: not a remcopy workload log of version "
            f"{LOG_VERSION} (first line has log={header.get('log')!r} "
            f"version={header.get('version')!r})"
        )
    try:
        layout = Layout.from_json(header["layout"])
    except (KeyError, ValueError, TypeError, InputError) as exc:
        raise WorkloadLogError(f"workload log {path}:{number}: bad layout: {exc}") from None
    writes = []
    ended = False
    for number, document in documents[1:]:
        if ended:
            raise WorkloadLogError(f"workload log {path}:{number}: a line after the end line")
        if document.get("end") is True:
            ended = True
            continue
        try:
            writes.append(LoggedWrite.from_json(document))
        except (KeyError, ValueError, TypeError, InputError) as exc:
            raise WorkloadLogError(f"workload log {path}:{number}: bad write line: {exc}") from None
    try:
        return WorkloadLog.of(
            layout,
            writes,
            group=str(header.get("group", "")),
            host=str(header.get("host", "")),
            started_ns=int(header.get("started_ns", 0)),
            ended=ended,
            torn_tail=torn_tail,
        )
    except WorkloadLogError as exc:
        raise WorkloadLogError(f"{path}: {exc}") from None


def _documents(path: Path, lines: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        if len(line) > LINE_MAX_CHARS:
            raise WorkloadLogError(f"workload log {path}:{number}: line too long ({len(line)})")
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadLogError(f"workload log {path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(document, dict):
            raise WorkloadLogError(f"workload log {path}:{number}: not a JSON object")
        yield number, document
