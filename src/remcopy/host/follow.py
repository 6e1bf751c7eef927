# Following controllers' events: what `remcopy events` shows, recent and live.
#
# Why: an administrator wants to be told when something changes, on every controller of a
# site, and a script that follows events must not miss one or see one twice when a controller
# restarts. Each controller numbers its events (remcopy.events); a follower remembers the last
# number it saw from each controller and, whenever its connection ends, connects again and
# asks for everything after that number.
#
# Theory of operation
# - `event_sources` finds the controllers the catalog knows: every controller of every host
#   definition (or of one host), reached with that host's name and secret, each once.
# - `recent` asks each controller for the events it keeps (a subscription with replay after
#   0) and closes.
# - `follow` runs one follower per controller in a TaskGroup. A follower subscribes with
#   replay after its last number; a stream that ends, a link that fails, or a number that does
#   not follow on (events dropped between the controller and here: the controller sends only
#   the events the host's grant reaches, and says with each the number it follows on from,
#   `prev_seq`, so a hole the grant made is not taken for a loss) makes it close, wait
#   (RETRY_FIRST_S, doubling to RETRY_MAX_S), say so through `on_retry`, and subscribe again
#   after the last number it passed on. Numbers it already passed on are never passed on again.
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from remcopy.catalog import Catalog
from remcopy.errors import InputError, RemcopyError
from remcopy.events import Event, EventKind
from remcopy.host.channel import Channel
from remcopy.host.service import host_definition
from remcopy.host.session import HostSession

RETRY_FIRST_S: Final = 0.2
RETRY_MAX_S: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events to show: all, or those of one group (by its devices and controllers)."""

    group: str = ""
    addresses: frozenset[str] = frozenset()
    """Hardware addresses of both ends of the group's pairs."""
    serials: frozenset[int] = frozenset()
    """Serials of the controllers that hold them."""

    def shows(self, event: Event) -> bool:
        """An event about a device or group shows only if it is the group's; one about
        neither (a link, a start) shows if its controller holds a device of the group; a GAP
        always shows."""
        if not self.group or event.kind is EventKind.GAP:  # a loss is always news
            return True
        if event.device:
            return event.device in self.addresses
        if event.group:
            return event.group == self.group
        return event.serial in self.serials


def group_filter(catalog: Catalog, name: str) -> EventFilter:
    """The filter of group `name`'s pairs, as the catalog defines them."""
    pairs = catalog.pairs_all(name)
    addresses = frozenset(a for p in pairs for a in (p.primary_address, p.secondary_address))
    return EventFilter(
        group=name,
        addresses=addresses,
        serials=frozenset(int(a.split(":", 1)[0]) for a in addresses),
    )


def event_sources(catalog: Catalog, host: str | None) -> list[HostSession]:
    """Sessions reaching every controller the catalog knows (of `host` alone when given),
    each controller once: the first host, by name, that defines it."""
    names = [host] if host is not None else [h.name for h in catalog.hosts_all()]
    sessions: list[HostSession] = []
    seen: set[str] = set()
    for name in names:
        session = HostSession(host_definition(catalog, name))
        for controller in list(session.channels):
            if controller in seen:
                del session.channels[controller]
            seen.add(controller)
        if session.channels:
            sessions.append(session)
    if not sessions:
        raise InputError(
            "events: the catalog knows no controller: add a host first (remcopy host add FILE)"
        )
    return sessions


def channels_of(sessions: Iterable[HostSession]) -> dict[str, Channel]:
    return {name: ch for session in sessions for name, ch in session.channels.items()}


async def recent(
    channels: dict[str, Channel], shown: EventFilter
) -> tuple[list[Event], dict[str, str]]:
    """Every event each controller keeps that `shown` shows, oldest first by time; and the
    controllers that could not be asked, with why."""

    async def one(name: str, channel: Channel) -> list[Event] | str:
        try:
            subscription = await channel.subscribe(after_seq=0)
        except (RemcopyError, OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
        finally:
            await channel.close()
        # After 0, a GAP only says the oldest events are not kept any more: not news here.
        replayed = subscription.take_replayed()
        return [e for e in replayed if e.kind is not EventKind.GAP and shown.shows(e)]

    names = sorted(channels)
    answers = await asyncio.gather(*(one(name, channels[name]) for name in names))
    events = [e for answer in answers if isinstance(answer, list) for e in answer]
    failed = {n: a for n, a in zip(names, answers, strict=True) if isinstance(a, str)}
    events.sort(key=lambda e: (e.time_ns, e.serial, e.seq))
    return events, failed


def last_of_each(events: list[Event], last: int | None) -> list[Event]:
    """The last `last` events of each controller (all when None), in the order given."""
    if last is None:
        return events
    count: dict[int, int] = {}
    for event in events:
        count[event.serial] = count.get(event.serial, 0) + 1
    out = []
    for event in events:
        if count[event.serial] <= last:
            out.append(event)
        count[event.serial] -= 1
    return out


async def follow(
    channels: dict[str, Channel],
    *,
    on_event: Callable[[Event], None],
    on_retry: Callable[[str, float, str], None],
    shown: EventFilter,
    last: int | None = None,
) -> None:
    """Pass on every event of every controller that `shown` shows, forever (until
    cancelled): the kept ones first (the last `last` of each; all when None), then live ones.
    Resumes after each controller's last number whenever its stream ends."""
    try:
        async with asyncio.TaskGroup() as tasks:
            for name, channel in sorted(channels.items()):
                follower = _Follower(
                    name, channel, on_event=on_event, on_retry=on_retry, shown=shown
                )
                tasks.create_task(follower.run(last), name=f"events {name}")
    finally:
        for channel in channels.values():
            await channel.close()


def follows_on(event: Event, last_seq: int) -> bool:
    """Whether a numbered event follows on from the last number a reader has: the controller
    says where it follows on from (`prev_seq`: the numbers between were not for this reader);
    without that (an older controller) it must be the next number."""
    if event.prev_seq is not None:
        return event.prev_seq <= last_seq
    return event.seq <= last_seq + 1


class _Follower:
    """One controller's events, passed on once each, across reconnections."""

    def __init__(
        self,
        name: str,
        channel: Channel,
        *,
        on_event: Callable[[Event], None],
        on_retry: Callable[[str, float, str], None],
        shown: EventFilter,
    ) -> None:
        self.name = name
        self.channel = channel
        self.shown = shown
        self.on_event = on_event
        self.on_retry = on_retry
        self.last_seq: int | None = None
        """The last number passed on (None before the first subscription)."""
        self.reconnections = 0

    def __repr__(self) -> str:
        return f"<_Follower {self.name} last_seq={self.last_seq} again={self.reconnections}>"

    async def run(self, backlog: int | None) -> None:
        pause_s = RETRY_FIRST_S
        while True:
            try:
                why = await self._stream(backlog)
                pause_s = RETRY_FIRST_S  # it was up: the next failure starts afresh
            except (RemcopyError, OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            await self.channel.disconnect(why)  # the next subscribe connects afresh
            self.on_retry(self.name, pause_s, why)
            await asyncio.sleep(pause_s)  # back-off between reconnections, not a wait
            pause_s = min(RETRY_MAX_S, 2 * pause_s)
            self.reconnections += 1

    async def _stream(self, backlog: int | None) -> str:
        """Subscribe after the last number and pass events on until the stream stops being
        trustworthy; returns why it stopped."""
        first = self.last_seq is None
        subscription = await self.channel.subscribe(after_seq=self.last_seq or 0)
        replay = subscription.take_replayed()
        passed = list(replay)
        if first:
            # After 0, a GAP only says the oldest events are not kept any more: not news;
            # and only the last `backlog` of the events shown are passed on.
            passed = [e for e in replay if e.kind is not EventKind.GAP and self.shown.shows(e)]
            if backlog is not None:
                passed = passed[max(0, len(passed) - backlog) :]
        chosen = {id(e) for e in passed}
        for event in replay:  # in order: the position moves past every one
            if id(event) in chosen:
                self._pass_on(event)
            else:
                self._advance(event)
        if self.last_seq is None or self.last_seq < subscription.live_after_seq:
            self.last_seq = subscription.live_after_seq
        async for event in subscription:
            if event.numbered and not follows_on(event, self.last_seq):
                return (
                    f"event {self.last_seq + 1} did not come (got {event.seq}): events were "
                    "dropped on the way"
                )
            self._pass_on(event)
        return "the event stream ended (the controller stopped?)"

    def _advance(self, event: Event) -> None:
        if event.numbered or event.kind is EventKind.GAP:
            self.last_seq = event.seq

    def _pass_on(self, event: Event) -> None:
        if event.numbered and self.last_seq is not None and event.seq <= self.last_seq:
            return  # passed on already (never expected: the controller replays after it)
        self._advance(event)
        if self.shown.shows(event):
            self.on_event(event)
