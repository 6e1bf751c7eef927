# Connections that have not authenticated yet: how many a listener holds, and from where.
#
# Why: before a client proved who it is, everything it costs the controller (a socket, a
# codec, a read buffer, a handshake timer) is paid for a stranger. DESIGN.md section 6
# bounds it: at most `unauthenticated_max` such connections per listener (native, NBD) and
# `unauthenticated_per_address_max` from one client address; the next is closed at accept.
# A connection leaves the count when it authenticated or closed, and the handshake deadline
# (controller.handshake_timeout_s) makes sure one of the two happens.
#
# Rules this module keeps:
# - No I/O: the listener asks `admit` at accept and calls `release` exactly once.
# - Refusals are logged at most once per LOG_INTERVAL_S per listener, each line with the
#   count of those not logged since the last: a flood of a thousand connections writes one
#   line, so an attacker cannot fill the disk with our log.
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Final

_log = logging.getLogger("remcopy.controller")

LOG_INTERVAL_S: Final = 10.0


def address_key(host: str) -> str:
    """The client address connections are counted by (an IPv4-mapped IPv6 as its IPv4)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class Admission:
    """Counts one listener's unauthenticated connections, in total and per address."""

    def __init__(
        self,
        listener: str,
        *,
        total_max: int,
        per_address_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._clock = clock
        self._logged_at: float | None = None
        self.total_max = total_max
        self.per_address_max = per_address_max
        self.pending = 0
        self.by_address: dict[str, int] = {}
        self.refused_total = 0
        self._refused_quietly = 0  # refusals since the burst's first line

    def __repr__(self) -> str:
        return f"<Admission {self.listener} pending={self.pending} refused={self.refused_total}>"

    def admit(self, host: str, peer: str) -> str | None:
        """Count a new connection from `host`, or return why it is refused (and log that)."""
        key = address_key(host)
        held = self.by_address.get(key, 0)
        if self.pending >= self.total_max:
            reason = f"{self.pending} connections have not authenticated (the limit)"
        elif held >= self.per_address_max:
            reason = f"{held} connections from {key} have not authenticated (the limit per address)"
        else:
            self.pending += 1
            self.by_address[key] = held + 1
            return None
        self.refused_total += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL_S:
            others = (
                f" ({self._refused_quietly} more refused since the last such line)"
                if self._refused_quietly
                else ""
            )
            _log.warning(
                "%s: refused %s: %s%s; the next are logged at most every %g s",
                self.listener,
                peer,
                reason,
                others,
                LOG_INTERVAL_S,
            )
            self._logged_at, self._refused_quietly = now, 0
        else:
            self._refused_quietly += 1
        return reason

    def release(self, host: str) -> None:
        """A connection counted by `admit` authenticated or closed."""
        key = address_key(host)
        self.pending -= 1
        held = self.by_address.pop(key) - 1
        if held:
            self.by_address[key] = held
