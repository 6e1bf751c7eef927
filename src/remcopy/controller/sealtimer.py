# The seal's timer: which armed suspends are due at T, with time passed in.
#
# Why: a suspend at T must never seal before T on this controller's clock, and must seal
# every arm once T has passed, including an arm made again after a restart whose T passed
# while the controller was down. Those rules are worth testing with a fake clock, without
# processes or sockets, so the timer is sans-I/O: it never reads a clock and never sleeps.
# It follows the timer shape of aioquic's QuicConnection: the core reports its next deadline
# (`get_timer`) and is told when time has come (`handle_timer(now)`); the shell (seal.py)
# keeps one event-loop timer on that deadline.
#
# Theory of operation
# - Times are nanoseconds on the wall clock (time.time_ns()), the clock T itself is on: T
#   is chosen by a host or a controller and means the same instant on every controller, so
#   the deadline is T itself and needs no conversion; only the shell turns it into an
#   event-loop delay.
# - `arm(at_ns, item)` adds one arm and returns its handle; several arms may share a T.
# - `get_timer()` is the earliest T armed, or None when nothing is armed.
# - `handle_timer(now_ns)` returns every arm whose T <= now_ns, in (T, arm order), and
#   forgets them. A wake-up before T (event-loop timers may fire a little early: uvloop
#   rounds to milliseconds) returns nothing; the shell asks `get_timer()` again.
# - `cancel(handle)` forgets one arm before it is due.
#
# Rules this module keeps:
# - No asyncio, no clock: every time comes in as an argument (it imports only errors).
# - An arm is returned at most once, and never by a `handle_timer(now_ns)` with now_ns < T.
from __future__ import annotations

from typing import Generic, TypeVar

from remcopy.errors import RemcopyInternalError

Item = TypeVar("Item")


class SealTimer(Generic[Item]):
    """The armed suspends of one controller, by their T (wall-clock ns)."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[int, Item]] = {}
        """handle -> (T, item); handles rise with each arm, so they give the arm order."""
        self._next_handle = 1

    def __repr__(self) -> str:
        return f"<SealTimer armed={len(self._armed)} next_ns={self.get_timer()}>"

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, at_ns: int, item: Item) -> int:
        """Arm `item` to be due at T = at_ns; returns the handle that cancels it."""
        if at_ns <= 0:  # 0 means "not armed" in a pair's state: arming it is our bug
            raise RemcopyInternalError(
                f"seal timer: at_ns must be > 0 (got {at_ns}): this should never happen"
            )
        handle = self._next_handle
        self._next_handle += 1
        self._armed[handle] = (at_ns, item)
        self._invariants()
        return handle

    def cancel(self, handle: int) -> bool:
        """Forget one arm before it is due; False when it was due already or unknown."""
        found = self._armed.pop(handle, None) is not None
        self._invariants()
        return found

    def get_timer(self) -> int | None:
        """The next deadline: the earliest T armed (wall-clock ns), or None."""
        if not self._armed:
            return None
        return min(at_ns for at_ns, _item in self._armed.values())

    def handle_timer(self, now_ns: int) -> list[tuple[int, Item]]:
        """Every arm due at now_ns (T <= now_ns) as (T, item), in (T, arm order); they are
        forgotten. Nothing is due before its T, whenever the shell wakes up."""
        due = sorted(
            (at_ns, handle) for handle, (at_ns, _item) in self._armed.items() if at_ns <= now_ns
        )
        out = [(at_ns, self._armed.pop(handle)[1]) for at_ns, handle in due]
        self._invariants()
        return out

    def _invariants(self) -> None:
        assert all(at_ns > 0 for at_ns, _item in self._armed.values())
        assert all(0 < handle < self._next_handle for handle in self._armed)


__all__ = ["SealTimer"]
