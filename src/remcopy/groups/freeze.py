# Freeze: when a consistency-group device reports a replication error, suspend the whole
# group at one prospective T before the device's hold expires.
#
# Why (DESIGN.md section 5): a device whose link failed holds its host writes (a bounded
# "long busy"). Nothing that depends on a held write can be issued yet, so if every other
# pair of the group is suspended at one T before the hold ends, no dependent write reaches
# any secondary and the secondary site stays consistent — the analogue of a PPRC freeze.
# The watcher listens to every primary controller's event stream for a HOLD event.
from __future__ import annotations

import asyncio

from remcopy.events import EventKind
from remcopy.groups.model import Group
from remcopy.groups.operations import GroupReport, plan, suspend
from remcopy.host.channel import Subscription
from remcopy.host.session import HostSession
from remcopy.wire.native import PairOp


async def watch_and_freeze(
    session: HostSession,
    group: Group,
    *,
    ready: asyncio.Event | None = None,
    margin_s: float | None = None,
) -> GroupReport:
    """Wait for the first hold of a group device, then suspend the group at one T."""
    batches, _ = plan(group, PairOp.SUSPEND)
    primaries = {str(p.primary) for p in group.pairs}
    subscriptions = [await session.channels[b.controller].subscribe() for b in batches]
    if ready is not None:
        ready.set()
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def listen(sub: Subscription) -> None:
        async for event in sub:
            if event.kind is EventKind.HOLD and event.device in primaries and not found.done():
                found.set_result(event.device)
                return

    listeners = [asyncio.ensure_future(listen(sub)) for sub in subscriptions]
    try:
        address = await found
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
    report = await suspend(session, group, margin_s=margin_s)
    report.seal.setdefault("freeze", {})["trigger"] = address
    return report
