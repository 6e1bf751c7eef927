# A suspend at the next T a group operation would choose, for tests that speak to controllers
# directly. T is never picked by hand ("now + 20 ms" fails on a loaded machine, where the
# controller rightly refuses a T that has passed): it follows the product's margin rule
# (remcopy.groups.operations.suspend: the larger of the default margin and the requests'
# arrival time, four round trips to the slowest controller and a share per device of the
# largest request), and a T that still passed before every controller got the request is
# chosen again.
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from remcopy.errors import SuspendTimeInPast
from remcopy.groups.model import MARGIN_S_DEFAULT
from remcopy.groups.operations import arrival_time_s
from remcopy.host.channel import Channel
from remcopy.wire.native import PairItem, PairOp, PairOpReply

ATTEMPTS_MAX = 20


async def _round_trip_s(ch: Channel) -> float:
    started = time.perf_counter()
    await ch.query((0,))
    return time.perf_counter() - started


async def suspend_at_next_t(
    targets: Sequence[tuple[Channel, Sequence[PairItem]]],
) -> tuple[int, list[PairOpReply]]:
    """Suspend every target's pairs at one T; return T and the replies (not checked: a
    refusal other than "T has passed" is the caller's to see)."""
    for _ in range(ATTEMPTS_MAX):
        round_trip_s = max([await _round_trip_s(ch) for ch, _ in targets])
        largest = max(len(items) for _, items in targets)
        margin_s = max(MARGIN_S_DEFAULT, arrival_time_s(round_trip_s, largest))
        at_ns = time.time_ns() + int(margin_s * 1e9)
        replies = await asyncio.gather(
            *(ch.pair_op(PairOp.SUSPEND, tuple(items), at_ns=at_ns) for ch, items in targets)
        )
        codes = {r.code for reply in replies for r in reply.results}
        if codes != {SuspendTimeInPast.code}:
            return at_ns, list(replies)
    raise AssertionError(f"every suspend time passed before the controllers got it: {codes}")


async def suspend_soon(ch: Channel, items: Sequence[PairItem]) -> int:
    """Suspend one controller's pairs at the next T; every pair must accept. Returns T."""
    at_ns, (reply,) = await suspend_at_next_t([(ch, items)])
    bad = [f"{r.device:04X}: {r.message}" for r in reply.results if r.code]
    assert not bad, bad
    return at_ns
