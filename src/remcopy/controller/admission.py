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
# - No I/O and no clock: the listener asks `admit` at accept and calls `release` exactly once.
# - A refusal is logged once per burst, not once per connection: a flood of a thousand
#   connections writes one line when refusing starts and one with the count when it ends, so
#   an attacker cannot fill the disk with our log.
from __future__ import annotations

import ipaddress
import logging

_log = logging.getLogger("remcopy.controller")


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

    def __init__(self, listener: str, *, total_max: int, per_address_max: int) -> None:
        self.listener = listener
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
        if self._refused_quietly == 0:
            _log.warning(
                "%s: refused %s: %s; further refusals are counted, not logged, until one "
                "is admitted",
                self.listener,
                peer,
                reason,
            )
        self._refused_quietly += 1
        return reason

    def release(self, host: str) -> None:
        """A connection counted by `admit` authenticated or closed."""
        key = address_key(host)
        self.pending -= 1
        held = self.by_address.pop(key) - 1
        if held:
            self.by_address[key] = held
        if self._refused_quietly:
            _log.warning(
                "%s: refused %d connections over the limits of unauthenticated ones",
                self.listener,
                self._refused_quietly,
            )
            self._refused_quietly = 0
