# Telling a service manager how the controller is doing: the sd_notify protocol of systemd.
#
# Why: under systemd (contrib/systemd/remcopy-controller@.service, Type=notify) a unit counts
# as started when the daemon says READY=1, not when its process exists, so units ordered after
# a controller start once it serves; STOPPING=1 says a stop is under way; and WATCHDOG=1, sent
# at least every WATCHDOG_USEC, proves the event loop still turns: a controller whose loop is
# stuck is killed and restarted (Restart=on-failure) instead of holding its hosts' I/O forever.
#
# The protocol (sd_notify(3)): the manager gives the socket in NOTIFY_SOCKET, a path, or an
# abstract name when it starts with '@' (the '@' stands for a leading NUL byte). Each message
# is one datagram of newline-separated VAR=VALUE assignments. WATCHDOG_USEC (with WATCHDOG_PID,
# when set, naming this process) asks for a WATCHDOG=1 within that many microseconds; sending
# every half of it is what sd_watchdog_enabled(3) recommends. Written here with the stdlib socket
# module: it is a datagram, not worth a dependency.
#
# Without NOTIFY_SOCKET every call does nothing. A message that cannot be sent is logged once
# and never stops the controller: the manager's watchdog is what acts on silence.
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Final

log = logging.getLogger("remcopy.controller")

NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address NOTIFY_SOCKET names ('@' -> a leading NUL: an abstract name), or
    None when it is not set or not a unix socket name."""
    value = environ.get(NOTIFY_SOCKET_ENV, "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, or a vsock address this controller does not speak


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """How often to send WATCHDOG=1 (half of WATCHDOG_USEC), or None when no watchdog is asked
    of this process (unset, not a positive number, or WATCHDOG_PID names another process)."""
    try:
        usec = int(environ.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    watched = environ.get(WATCHDOG_PID_ENV)
    if usec <= 0 or (watched is not None and watched.strip() != str(pid)):
        return None
    return usec / 2e6


class ServiceNotifier:
    """READY, STOPPING, RELOADING and WATCHDOG messages to the service manager, if any."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env)
        self.watchdog_interval_s = (
            watchdog_interval_s(env, os.getpid()) if self.address is not None else None
        )
        self.sent = 0
        self._failed = False
        self._socket: socket.socket | None = None
        if self.address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)  # a full manager queue drops a message, never waits

    def __repr__(self) -> str:
        where = "off" if self.address is None else repr(self.address.replace("\0", "@"))
        return f"<ServiceNotifier {where} watchdog={self.watchdog_interval_s} sent={self.sent}>"

    def send(self, *assignments: str) -> None:
        """One datagram of VAR=VALUE lines; nothing when no manager listens."""
        if self._socket is None or self.address is None:
            return
        try:
            self._socket.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("service manager notification failed (%s): %s", self, exc)
            self._failed = True
            return
        self.sent += 1

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        """A reload begins (systemd's Type=notify-reload wants MONOTONIC_USEC with it); the
        next `ready` ends it."""
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    async def keep_alive(self) -> None:
        """Send WATCHDOG=1 every half of WATCHDOG_USEC, until cancelled (a loop that stops
        turning stops sending: the point of the watchdog)."""
        interval_s = self.watchdog_interval_s
        if interval_s is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
