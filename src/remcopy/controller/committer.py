# Pair-state commits off the event loop: one writer thread, group commit.
#
# Why: a durable commit costs an fsync (0.2-3 ms here, far more on a busy disk). Run on the
# event loop it held every host write of the controller for that long, devices that had
# nothing to do with the commit included. Here the loop hands each commit to one writer
# thread and awaits a future; host I/O to other devices goes on meanwhile.
#
# Theory of operation
# - `submit` queues a commit (the changed devices' documents, snapshots taken by the caller)
#   and returns a future that is done once the commit is durable.
# - The writer task takes everything queued, merges it into one transaction (a later document
#   of a device replaces an earlier one) and runs it on the writer thread. Commits that queue
#   while one fsync runs share the next: N commits cost about two fsyncs, not N (group commit).
# - Futures complete in the order their commits were submitted, and a commit is never
#   durable before one submitted earlier: after a crash the store holds a prefix of the
#   submitted commits, each whole.
# - Before the writer task runs (start, restart recovery) and after it stopped, `submit`
#   commits at once on the caller's thread and returns None: the same order, no thread.
# - A commit that fails ends the writer task with the error (fail-stop: the controller's
#   TaskGroup stops the process), and every queued future gets the error.
#
# TESTING ONLY: with `commit_pause_dir` set (controller.commit_pause_dir, REMCOPY_TESTING=1),
# the writer thread stops before each commit while `<dir>/paused` exists: it writes one line
# "devices=N states=S:n,..." into that FIFO, then reads one line from the FIFO `<dir>/release`.
# A test so holds a commit open for as long as it needs, and sees which commit it holds.
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remcopy.controller.pairstore import PairStore

log = logging.getLogger("remcopy.controller")

Documents = Mapping[int, dict[str, Any] | None]


@dataclass(slots=True)
class _Queued:
    devices: Documents
    groups: Mapping[str, list[int]]
    done: asyncio.Future[None]


@dataclass(slots=True)
class CommitFigures:
    """What the writer did, for status counters and the benchmarks."""

    commits: int = 0
    """Commits submitted and durable."""
    transactions: int = 0
    """Transactions (fsyncs) they took: fewer than commits when commits shared one."""
    largest_batch: int = 0
    by_batch: Counter[int] = field(default_factory=Counter)


class StateWriter:
    """Durable pair-state commits of one controller, on one writer thread."""

    def __init__(self, store: PairStore, *, pause_dir: Path | None = None) -> None:
        self.store = store
        self.pause_dir = pause_dir  # TESTING ONLY
        self.figures = CommitFigures()
        self._queue: list[_Queued] = []
        self._wake: asyncio.Event | None = None
        self._last: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        running = self._wake is not None
        return f"<StateWriter running={running} queued={len(self._queue)}>"

    @property
    def running(self) -> bool:
        return self._wake is not None

    def submit(
        self, devices: Documents, groups: Mapping[str, list[int]] | None = None
    ) -> asyncio.Future[None] | None:
        """Queue one commit; its future is done once it is durable (None: done already)."""
        if self._wake is None:
            self._write(devices, groups or {})
            self.figures.commits += 1
            self.figures.transactions += 1
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(devices, groups or {}, done))
        self._last = done
        self._wake.set()
        return done

    @property
    def idle(self) -> bool:
        """No commit is waiting to be durable."""
        return self._last is None or self._last.done()

    async def settled(self) -> None:
        """Return once every commit submitted so far is durable."""
        last = self._last
        if last is not None and not last.done():
            await asyncio.shield(last)

    async def run(self) -> None:
        """The writer task: until cancelled, commit what is queued, many commits at a time.
        Cancelled, it lets the thread end its commit and commits what is left, in order."""
        self._wake = wake = asyncio.Event()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pair-state")
        try:
            while True:
                await wake.wait()
                wake.clear()
                batch, self._queue = self._queue, []
                if not batch:
                    continue
                written = executor.submit(self._write, *_merged(batch))
                try:
                    await asyncio.shield(asyncio.wrap_future(written))
                except asyncio.CancelledError:
                    written.result()  # the thread ends this commit first (or raises its error)
                    self._done(batch)
                    raise
                except BaseException as exc:
                    _failed(batch, exc)
                    raise
                self._done(batch)
        except asyncio.CancelledError:
            self._wake = None
            left, self._queue = self._queue, []
            if left:
                self._write(*_merged(left))
                self._done(left)
            raise
        finally:
            self._wake = None
            executor.shutdown(wait=True)
            left, self._queue = self._queue, []
            _failed(left, RuntimeError("the pair state writer stopped before this commit"))

    def _done(self, batch: list[_Queued]) -> None:
        figures = self.figures
        figures.commits += len(batch)
        figures.transactions += 1
        figures.largest_batch = max(figures.largest_batch, len(batch))
        figures.by_batch[min(len(batch), 64)] += 1
        for queued in batch:
            if not queued.done.done():
                queued.done.set_result(None)

    def _write(self, devices: Documents, groups: Mapping[str, list[int]]) -> None:
        if self.pause_dir is not None:  # TESTING ONLY
            _pause(self.pause_dir, devices)
        self.store.commit(devices, groups)


def _merged(batch: list[_Queued]) -> tuple[dict[int, dict[str, Any] | None], dict[str, list[int]]]:
    """One transaction's content for many commits, later ones winning per device."""
    if len(batch) == 1:
        return dict(batch[0].devices), dict(batch[0].groups)
    devices: dict[int, dict[str, Any] | None] = {}
    groups: dict[str, list[int]] = {}
    for queued in batch:
        devices.update(queued.devices)
        groups.update(queued.groups)
    return devices, groups


def _failed(batch: list[_Queued], exc: BaseException) -> None:
    error = exc if isinstance(exc, Exception) else RuntimeError(f"pair state writer: {exc!r}")
    for queued in batch:
        if not queued.done.done():
            queued.done.set_exception(error)
            queued.done.exception()  # marked seen: the writer task itself raises the error


def _pause(folder: Path, devices: Documents) -> None:
    """TESTING ONLY: hold this commit until a test releases it (see the header)."""
    paused = folder / "paused"
    if not paused.exists():
        return
    states = Counter(str(doc["state"]) if doc else "none" for doc in devices.values())
    summary = ",".join(f"{state}:{n}" for state, n in sorted(states.items()))
    with paused.open("w") as fifo:
        fifo.write(f"devices={len(devices)} states={summary}\n")
    with (folder / "release").open() as fifo:
        fifo.readline()


__all__ = ["CommitFigures", "StateWriter"]
