# Pair-state commits off the event loop: one writer thread, group commit.
#
# Why: a durable commit costs an fsync (0.2-3 ms here, far more on a busy disk). Run on the
# event loop it held every host write of the controller for that long, devices that had
# nothing to do with the commit included. Here the loop hands each commit to one writer
# thread and awaits a future; host I/O to other devices goes on meanwhile.
#
# Theory of operation (the group commit itself is groupcommit.py's, shared with the secondary
# journals of async consistency groups)
# - `submit` queues a commit (the changed devices' documents, snapshots taken by the caller)
#   and returns a future that is done once the commit is durable.
# - A commit is the changed devices' documents, groups' members, and armed suspend times
#   (device -> T: an arm changes only that field, so the store writes it alone).
# - The writer task takes everything queued, merges it into one transaction, in order (a later
#   document of a device replaces an earlier one and its arm; a later arm changes the T of an
#   earlier document) and runs it on the writer thread. Commits that queue
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
from pathlib import Path
from typing import Any

from remcopy.controller.groupcommit import CommitFigures, GroupCommit
from remcopy.controller.pairstore import PairStore

log = logging.getLogger("remcopy.controller")

Documents = Mapping[int, dict[str, Any] | None]
Armed = Mapping[int, int]
"""Device -> its armed suspend time T (0: disarmed): the one field an arm changes."""
_Commit = tuple[Documents, Mapping[str, list[int]], Armed]


class StateWriter(GroupCommit[_Commit]):
    """Durable pair-state commits of one controller, on one writer thread."""

    thread_name = "pair-state"

    def __init__(self, store: PairStore, *, pause_dir: Path | None = None) -> None:
        super().__init__()
        self.store = store
        self.pause_dir = pause_dir  # TESTING ONLY

    def submit(
        self,
        devices: Documents,
        groups: Mapping[str, list[int]] | None = None,
        armed: Armed | None = None,
    ) -> asyncio.Future[None] | None:
        """Queue one commit; its future is done once it is durable (None: done already)."""
        return self.submit_item((devices, groups or {}, armed or {}))

    def _write(self, items: list[_Commit]) -> None:
        devices, groups, armed = _merged(items)
        if self.pause_dir is not None:  # TESTING ONLY
            _pause(self.pause_dir, devices, armed)
        self.store.commit(devices, groups, armed)


def _merged(
    items: list[_Commit],
) -> tuple[dict[int, dict[str, Any] | None], dict[str, list[int]], dict[int, int]]:
    """One transaction's content for many commits, in their order: a later document of a
    device replaces an earlier one and any arm before it; a later arm changes the armed T of
    an earlier document (or is written as an arm alone)."""
    if len(items) == 1:
        return dict(items[0][0]), dict(items[0][1]), dict(items[0][2])
    devices: dict[int, dict[str, Any] | None] = {}
    groups: dict[str, list[int]] = {}
    armed: dict[int, int] = {}
    for queued_devices, queued_groups, queued_armed in items:
        for key, doc in queued_devices.items():
            devices[key] = doc
            armed.pop(key, None)
        groups.update(queued_groups)
        for key, at_ns in queued_armed.items():
            doc = devices.get(key)
            if doc is not None:
                devices[key] = {**doc, "suspend_at_ns": at_ns}
            else:
                armed[key] = at_ns
    return devices, groups, armed


def _pause(folder: Path, devices: Documents, armed: Armed) -> None:
    """TESTING ONLY: hold this commit until a test releases it (see the header)."""
    paused = folder / "paused"
    if not paused.exists():
        return
    states = Counter(str(doc["state"]) if doc else "none" for doc in devices.values())
    summary = ",".join(f"{state}:{n}" for state, n in sorted(states.items()))
    arms = f" armed={len(armed)}" if armed else ""
    with paused.open("w") as fifo:
        fifo.write(f"devices={len(devices)} states={summary}{arms}\n")
    with (folder / "release").open() as fifo:
        fifo.readline()


__all__ = ["CommitFigures", "StateWriter"]
