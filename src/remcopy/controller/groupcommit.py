# Group commit off the event loop: one writer thread makes queued work durable, many items
# per fsync.
#
# Why: a durable write costs an fsync or fdatasync (0.2-3 ms here, far more on a busy disk).
# Run on the event loop it held every host write of the controller for that long. Here the
# loop hands each item to one writer thread and awaits a future; other I/O goes on meanwhile.
# Two users: the pair-state commits (committer.py) and the secondary journals of async
# consistency groups (sjournal.py: an update batch is acknowledged to its primary only once
# its journal records are on disk).
#
# Theory of operation
# - `submit` queues an item and returns a future that is done once the item is durable.
# - The writer task takes everything queued and hands the whole batch to `_write` on the
#   writer thread (one transaction, one fsync). Items that queue while one fsync runs share
#   the next: N items cost about two fsyncs, not N (group commit).
# - Futures complete in the order their items were submitted, and an item is never durable
#   before one submitted earlier: after a crash the durable items are a prefix.
# - Before the writer task runs (start, restart recovery) and after it stopped, `submit`
#   writes at once on the caller's thread and returns None: the same order, no thread.
# - A write that fails ends the writer task with the error (fail-stop: the controller's
#   TaskGroup stops the process), and every queued future gets the error.
# - `exclusive()` holds the writer between batches: for work on the loop that must not run
#   while the thread does (a secondary journal deletes segments the thread may sync).
from __future__ import annotations

import abc
import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(slots=True)
class CommitFigures:
    """What the writer did, for status counters and the benchmarks."""

    commits: int = 0
    """Items submitted and durable."""
    transactions: int = 0
    """Transactions (fsyncs) they took: fewer than commits when commits shared one."""
    largest_batch: int = 0
    by_batch: Counter[int] = field(default_factory=Counter)


@dataclass(slots=True)
class _Queued(Generic[Item]):
    item: Item
    done: asyncio.Future[None]


class GroupCommit(abc.ABC, Generic[Item]):
    """Durable writes of queued items, many at a time, on one writer thread. Subclasses
    implement `_write(items)`: make every item durable, on whatever thread calls it."""

    thread_name = "group-commit"

    def __init__(self) -> None:
        self.figures = CommitFigures()
        self._queue: list[_Queued[Item]] = []
        self._wake: asyncio.Event | None = None
        self._last: asyncio.Future[None] | None = None
        self._between = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} running={self.running} queued={len(self._queue)}>"

    @abc.abstractmethod
    def _write(self, items: list[Item]) -> None:
        """Make these items durable (on the writer thread)."""

    @property
    def running(self) -> bool:
        return self._wake is not None

    def submit_item(self, item: Item) -> asyncio.Future[None] | None:
        """Queue one item; its future is done once it is durable (None: done already)."""
        if self._wake is None:
            self._write([item])
            self.figures.commits += 1
            self.figures.transactions += 1
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(item, done))
        self._last = done
        self._wake.set()
        return done

    @property
    def idle(self) -> bool:
        """No item is waiting to be durable."""
        return self._last is None or self._last.done()

    @property
    def last(self) -> asyncio.Future[None] | None:
        """The future of the last item submitted, while it is not durable yet."""
        return None if self.idle else self._last

    async def settled(self) -> None:
        """Return once every item submitted so far is durable."""
        last = self._last
        if last is not None and not last.done():
            await asyncio.shield(last)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the writer thread idle (after the batch it runs) while the body runs."""
        async with self._between:
            yield

    async def run(self) -> None:
        """The writer task: until cancelled, write what is queued, many items at a time.
        Cancelled, it lets the thread end its batch and writes what is left, in order."""
        self._wake = wake = asyncio.Event()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        try:
            # The thread starts here, while the controller is idle, not inside the first
            # commit (a suspend's arm waited for it: with 16 controllers on 2 CPUs starting
            # their threads at once, that was milliseconds).
            await asyncio.wrap_future(executor.submit(int))
            while True:
                await wake.wait()
                async with self._between:
                    wake.clear()
                    batch, self._queue = self._queue, []
                    if not batch:
                        continue
                    written = executor.submit(self._write, [q.item for q in batch])
                    try:
                        await asyncio.shield(asyncio.wrap_future(written))
                    except asyncio.CancelledError:
                        written.result()  # the thread ends this batch first (or raises)
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
                self._write([q.item for q in left])
                self._done(left)
            raise
        finally:
            self._wake = None
            executor.shutdown(wait=True)
            left, self._queue = self._queue, []
            _failed(left, RuntimeError(f"{self.thread_name} writer stopped before this write"))

    def _done(self, batch: list[_Queued[Item]]) -> None:
        figures = self.figures
        figures.commits += len(batch)
        figures.transactions += 1
        figures.largest_batch = max(figures.largest_batch, len(batch))
        figures.by_batch[min(len(batch), 64)] += 1
        for queued in batch:
            if not queued.done.done():
                queued.done.set_result(None)


def _failed(batch: list[_Queued[Item]], exc: BaseException) -> None:
    error = exc if isinstance(exc, Exception) else RuntimeError(f"group commit: {exc!r}")
    for queued in batch:
        if not queued.done.done():
            queued.done.set_exception(error)
            queued.done.exception()  # marked seen: the writer task itself raises the error


__all__ = ["CommitFigures", "GroupCommit"]
