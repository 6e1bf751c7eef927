# Failed handshakes, counted per client address, so a secret cannot be guessed online at speed.
#
# Why: an address that failed to authenticate `failures_max` times within `window_s` is
# refused at accept until its oldest failure in the window ages out (DESIGN.md section 6,
# docs/security.md). TLS and the client-first proof already leave nothing to guess offline;
# this bounds guessing online.
#
# Rules this module keeps:
# - Bounded memory: at most ADDRESSES_MAX addresses are remembered (the least recently failed
#   are forgotten first), each with at most failures_max times.
# - `blocked()` says for how long an address is still refused (0.0: not refused); the caller
#   logs the start of a refusal once (`first_refusal`) rather than once per connection.
from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

ADDRESSES_MAX: Final = 4096


class FailureLimiter:
    def __init__(
        self,
        *,
        failures_max: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        addresses_max: int = ADDRESSES_MAX,
    ) -> None:
        self.failures_max = failures_max
        self.window_s = window_s
        self._clock = clock
        self._addresses_max = addresses_max
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._announced: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"<FailureLimiter {self.failures_max}/{self.window_s}s addresses={len(self._failures)}>"
        )

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self._clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            self._announced.discard(address)
            return None
        return times

    def failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.failures_max)
        times.append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self._addresses_max:
            gone, _ = self._failures.popitem(last=False)
            self._announced.discard(gone)

    def blocked(self, address: str) -> float:
        """Seconds until `address` may try again (0.0 when it may now)."""
        times = self._recent(address)
        if times is None or len(times) < self.failures_max:
            return 0.0
        return max(0.0, times[0] + self.window_s - self._clock())

    def first_refusal(self, address: str) -> bool:
        """True once per refusal period of `address` (to log it once)."""
        if address in self._announced:
            return False
        self._announced.add(address)
        return True
