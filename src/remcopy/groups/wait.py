# Waiting until every pair of a group is in one state: `remcopy group wait`.
#
# Why: an administrator's script establishes a group, then must not go on before every pair is
# DUPLEX; a runbook recovers, then waits for RECOVERED. Polling `group status` in a loop costs
# one request per controller per turn, and it answers late or hammers the controllers. The
# controllers already tell what changes: each sends a STATE event naming the device on its
# event stream (SUBSCRIBE, remcopy.events) the moment a state change is committed.
#
# Theory of operation:
#   1. subscribe to every controller of the group's pairs that this host reaches, first;
#   2. then read every pair's state once (`operations.status`): a change after the read is on a
#      stream already live, so none is missed between the two;
#   3. then sleep on the streams. Only a STATE event naming an address of the group marks that
#      pair for a re-read; a burst of lines (a suspend of thousands) is drained whole, then one
#      re-read of the marked pairs goes out, one request per controller. A stream that ends
#      (its controller went away) marks every pair it was watching, whose state is then read
#      at the other end, as `group status` reads it.
#   4. Done when every pair is in the state; at the deadline, the pairs still away are reported.
# There is no timer but the deadline: a group nobody changes costs the first read and nothing
# more, however long the wait.
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from remcopy.catalog import Catalog
from remcopy.errors import RemcopyError
from remcopy.events import Event, EventKind
from remcopy.groups.model import Group
from remcopy.groups.operations import PairStatus, status
from remcopy.groups.service import group_for_host
from remcopy.host.channel import Subscription
from remcopy.host.service import host_definition
from remcopy.host.session import HostSession
from remcopy.states import PairState

# Each stream's events are handed to the waiter through one queue; None marks a stream's end.
_EVENT_QUEUE_MAX: Final = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitReport:
    """How a wait ended: each pair's last state read, and what it took."""

    group: str
    state: PairState
    pairs: tuple[PairStatus, ...]
    """Every pair's state as last read (in the group's order)."""
    reached: bool
    """Every pair was in `state` at the last read."""
    elapsed_s: float
    events: int
    """State events that named a pair of the group."""
    requeries: int
    """Re-reads after the first read (one request per controller each)."""
    not_subscribed: Mapping[str, str]
    """Controllers whose events could not be followed, and why."""

    @property
    def away(self) -> list[PairStatus]:
        """The pairs not in the state, at the last read."""
        return [p for p in self.pairs if p.state is not self.state]

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "state": self.state.name,
            "reached": self.reached,
            "pairs": len(self.pairs),
            "elapsed_s": round(self.elapsed_s, 3),
            "events": self.events,
            "requeries": self.requeries,
            "not_subscribed": dict(self.not_subscribed),
            "away": [
                {
                    "pair": p.pair.name,
                    "primary": str(p.pair.primary),
                    "secondary": str(p.pair.secondary),
                    "state": p.state_name,
                    "read_at": p.side,
                    "error": p.error,
                }
                for p in self.away
            ],
        }


def named_pairs(event: Event, index: Mapping[str, Sequence[int]]) -> Sequence[int]:
    """The pairs (indices) an event names: a STATE event for either end's address."""
    if event.kind is not EventKind.STATE:
        return ()
    return index.get(event.device, ())


def address_index(group: Group) -> dict[str, list[int]]:
    """Both ends' hardware addresses -> the pair's index in the group."""
    index: dict[str, list[int]] = {}
    for i, pair in enumerate(group.pairs):
        for address in (pair.primary, pair.secondary):
            index.setdefault(str(address), []).append(i)
    return index


def _controllers(group: Group) -> dict[str, list[int]]:
    """Each controller this host reaches for the group -> the pairs it holds an end of."""
    held: dict[str, list[int]] = {}
    for i, pair in enumerate(group.pairs):
        for controller in {pair.primary_controller, pair.secondary_controller} - {""}:
            held.setdefault(controller, []).append(i)
    return held


async def wait_group(
    catalog: Catalog,
    name: str,
    host: str,
    state: PairState,
    *,
    timeout_s: float,
    on_waiting: Callable[[WaitReport], None] | None = None,
) -> WaitReport:
    """`wait_state` for group `name` as `host` reaches it, in the group's current direction."""
    group = group_for_host(catalog, name, host)
    async with HostSession(host_definition(catalog, host)) as session:
        return await wait_state(session, group, state, timeout_s=timeout_s, on_waiting=on_waiting)


async def wait_state(
    session: HostSession,
    group: Group,
    state: PairState,
    *,
    timeout_s: float,
    on_waiting: Callable[[WaitReport], None] | None = None,
) -> WaitReport:
    """Wait until every pair of `group` is in `state`, or `timeout_s` has passed.

    `on_waiting`, if given, is called with the first WaitReport once the streams are live
    and the first read is done, and only if some pair is away (the CLI says so on stderr).
    """
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    held = _controllers(group)
    index = address_index(group)
    queue: asyncio.Queue[tuple[str, Event | None]] = asyncio.Queue(_EVENT_QUEUE_MAX)
    subscriptions, not_subscribed = await _subscribe(session, held)
    states = list(await status(session, group))
    events = requeries = 0

    def report() -> WaitReport:
        return WaitReport(
            group=group.name,
            state=state,
            pairs=tuple(states),
            reached=all(s.state is state for s in states),
            elapsed_s=time.monotonic() - started,
            events=events,
            requeries=requeries,
            not_subscribed=not_subscribed,
        )

    if report().reached:
        return report()
    if on_waiting is not None:
        on_waiting(report())
    async with asyncio.TaskGroup() as tasks:
        forwarders = [
            tasks.create_task(_forward(name, subscription, queue), name=f"events {name}")
            for name, subscription in subscriptions.items()
        ]
        try:
            async with asyncio.timeout_at(deadline):
                while not report().reached:
                    marked: set[int] = set()
                    item = await queue.get()
                    while True:  # the whole burst, then one re-read
                        controller, event = item
                        if event is None:
                            marked.update(held[controller])
                        else:
                            named = named_pairs(event, index)
                            events += bool(named)
                            marked.update(named)
                        if queue.empty():
                            break
                        item = queue.get_nowait()
                    if marked:
                        requeries += 1
                        await _reread(session, group, sorted(marked), states)
        except TimeoutError:
            pass
        finally:
            for forwarder in forwarders:
                forwarder.cancel()
    return report()


async def _subscribe(
    session: HostSession, held: Mapping[str, Sequence[int]]
) -> tuple[dict[str, Subscription], dict[str, str]]:
    """Subscribe to every controller at once; those that cannot be reached are named."""

    async def one(name: str) -> Subscription | str:
        try:
            return await session.channels[name].subscribe()
        except (RemcopyError, TimeoutError, OSError) as exc:
            return str(exc) or type(exc).__name__

    names = sorted(held)
    results = await asyncio.gather(*(one(name) for name in names))
    live = {n: r for n, r in zip(names, results, strict=True) if isinstance(r, Subscription)}
    failed = {n: r for n, r in zip(names, results, strict=True) if isinstance(r, str)}
    return live, failed


async def _forward(
    name: str, subscription: Subscription, queue: asyncio.Queue[tuple[str, Event | None]]
) -> None:
    async for event in subscription:
        if event.kind is EventKind.STATE:
            queue.put_nowait((name, event))
    queue.put_nowait((name, None))  # the stream ended: its controller's pairs are re-read


async def _reread(
    session: HostSession, group: Group, marked: Iterable[int], states: list[PairStatus]
) -> None:
    """Read the marked pairs again (one request per controller) into `states`."""
    chosen = list(marked)
    subset = dataclasses.replace(group, pairs=tuple(group.pairs[i] for i in chosen))
    for i, read in zip(chosen, await status(session, subset), strict=True):
        states[i] = read
