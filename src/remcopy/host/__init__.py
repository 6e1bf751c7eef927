"""Hosts: channels to controllers (and, later, I/O definitions, the I/O engine and scan)."""

from remcopy.host.channel import Channel, Subscription

__all__ = ["Channel", "Subscription"]
