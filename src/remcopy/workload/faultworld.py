# The world the fault campaigns run in: real controller processes on 127.0.0.1, a fault link
# on each primary's replication link, a host session and one group over every pair; and the
# ways a campaign waits on it (event lines, queried states, acknowledged-write counts).
#
# Why a module of its own: `campaigns.py` says what each campaign does and checks; this one
# says how the world is built, repaired and waited on, so the campaigns read as their steps.
#
# The world: two primary controllers (cntla0, cntla1, site A) with two 2 MiB volumes each; one
# secondary controller (cntlb, site B) with a secondary and a spare tertiary volume for each
# primary volume; one sync group FAULTS over the four pairs, established before use.
#
# Rules this module keeps:
# - No sleeps: readiness from ready lines, DUPLEX from event lines, settled from queries that
#   wait on the next event line while a pair is not DUPLEX.
# - Every process and fault link it starts is stopped again, also on errors.
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from remcopy import pki
from remcopy.controller.process import (
    TESTING_ENV,
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
)
from remcopy.errors import RemcopyError
from remcopy.events import Event
from remcopy.groups import Group, GroupOptions, GroupPair, GroupReport, run_operation
from remcopy.host.channel import Channel, Subscription
from remcopy.host.definition import parse_host_definition
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp
from remcopy.workload.faultlink import FaultLink
from remcopy.workload.log import LoggedWrite
from remcopy.workload.workload import WorkloadStats, run_workload

HOST_NAME: Final = "faulthost"
HOST_SECRET: Final = "fault-campaign-host-secret"
LINK_SECRET: Final = "fault-campaign-link-secret"
PRIMARY_SERIAL_FIRST: Final = 64015
SECONDARY_SERIAL: Final = 65000
PRIMARY_LSS, SECONDARY_LSS, TERTIARY_LSS = 0x0A, 0x20, 0x30
PRIMARY_SSID, SECONDARY_SSID, TERTIARY_SSID = 0x1A00, 0x2B00, 0x3B00
# 2 MiB holds 6 chains x 16 slots x 16 KiB records (1.5 MiB) and copies in a blink.
VOLUME_BYTES: Final = 2 * 1024 * 1024
WRITE_SIZES: Final = (4096, 4096, 16384)
# One iteration (fault, checks, repair) on a loaded 2-core machine takes seconds; past this
# the campaign stops with a harness failure instead of hanging.
ITERATION_TIMEOUT_S: Final = 120.0
# A freeze must come before a held consistency-group device gives up (hold_s). It takes
# milliseconds here, but seconds on a machine loaded by other work; a hold that expires first
# lets dependent writes reach other secondaries, which is a finding, not the bug sought.
HOLD_S: Final = 10.0


class HarnessError(RemcopyError):
    """the campaign could not carry out a step (not a consistency finding)"""


# The world: controller processes, fault links, the host session and the group...


@dataclass(eq=False)
class World:
    root: Path
    session: HostSession
    group: Group
    secondary: ControllerProcess
    """The first (often the only) secondary controller, cntlb."""
    primaries: list[ControllerProcess]
    specs: list[ControllerSpec]
    links: list[FaultLink]
    tertiaries: dict[HardwareAddress, HardwareAddress]
    secondaries: list[ControllerProcess]
    """Every secondary controller: cntlb, cntlb1, ... (primary i mirrors to i mod count)."""

    def primary_of(self, pair: GroupPair) -> ControllerProcess:
        return self.primaries[pair.primary.serial - PRIMARY_SERIAL_FIRST]

    async def close(self) -> None:
        await self.session.close()
        for proc in [*self.primaries, *self.secondaries]:
            if proc.running:
                await proc.kill()
        for link in self.links:
            await link.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    primaries: int = 2
    volumes: int = 2
    consistency_group: bool = True
    links: bool = False
    """Route each primary's replication link through its own FaultLink."""
    primary_settings: tuple[tuple[str, object], ...] = ()
    secondary_settings: tuple[tuple[str, object], ...] = ()
    mode: CopyMode = CopyMode.SYNC
    """The group's copy mode."""
    secondaries: int = 1
    """Secondary controllers (peers of each other); primary i mirrors to secondary i mod n."""


def secondary_name(index: int) -> str:
    return "cntlb" if index == 0 else f"cntlb{index}"


def hardware_address(serial: int, ssid: int, lss: int, cca: int) -> HardwareAddress:
    return HardwareAddress.of(serial=serial, ssid=ssid, lss=lss, cca=cca)


# Planted bugs in what the secondary controller decides (testing only): planted there.
SECONDARY_SIDE_BUGS: Final = frozenset({"resume_ignores_shadow", "async_apply_past_c"})


@contextlib.asynccontextmanager
async def world(
    root: Path, shape: Shape, *, planted_bugs: tuple[str, ...] = (), planted_bug_every: int = 1
) -> AsyncIterator[World]:
    """Start the secondary, then the primaries at once; establish the group; stop it all."""
    ports = [free_port() for _ in range(shape.primaries + shape.secondaries)]
    secondary_ports = ports[shape.primaries :]
    links = [
        FaultLink(("127.0.0.1", secondary_ports[i % shape.secondaries]))
        for i in range(shape.primaries)
        if shape.links
    ]
    site = pki.Site(root / "pki")  # TLS on every link; the fault links forward TLS bytes
    started: list[ControllerProcess] = []
    try:
        for link in links:
            await link.start()
        count = shape.primaries * shape.volumes
        secondary_specs = [
            ControllerSpec(
                name=secondary_name(k),
                serial=SECONDARY_SERIAL + k,
                data_dir=root / secondary_name(k),
                listen=f"127.0.0.1:{secondary_ports[k]}",
                lss={SECONDARY_LSS: SECONDARY_SSID, TERTIARY_LSS: TERTIARY_SSID},
                volumes=[
                    VolumeSpec(lss=lss, cca=i, volser=f"{tag}{k}{i:03X}", size_bytes=VOLUME_BYTES)
                    for lss, tag in ((SECONDARY_LSS, "SB"), (TERTIARY_LSS, "TB"))
                    for i in range(count)
                ],
                hosts={HOST_NAME: HOST_SECRET},
                site=site,
                peers=[
                    *(
                        PeerSpec(
                            name=f"cntla{i}",
                            serial=PRIMARY_SERIAL_FIRST + i,
                            address=f"127.0.0.1:{ports[i]}",
                            secret=LINK_SECRET,
                        )
                        for i in range(shape.primaries)
                    ),
                    # Sibling secondaries: they tell each other how far an async group's
                    # updates have arrived (its consistency time).
                    *(
                        PeerSpec(
                            name=secondary_name(j),
                            serial=SECONDARY_SERIAL + j,
                            address=f"127.0.0.1:{secondary_ports[j]}",
                            secret=LINK_SECRET,
                        )
                        for j in range(shape.secondaries)
                        if j != k
                    ),
                ],
            )
            for k in range(shape.secondaries)
        ]
        settings_toml: dict[str, object] = {"hold_s": HOLD_S}
        settings_toml.update(shape.primary_settings)
        if planted_bugs:  # TESTING ONLY
            settings_toml["planted_bugs"] = list(planted_bugs)
            settings_toml["planted_bug_every"] = planted_bug_every
        specs = [
            ControllerSpec(
                name=f"cntla{i}",
                serial=PRIMARY_SERIAL_FIRST + i,
                data_dir=root / f"cntla{i}",
                listen=f"127.0.0.1:{ports[i]}",
                settings=dict(settings_toml),
                lss={PRIMARY_LSS: PRIMARY_SSID},
                volumes=[
                    VolumeSpec(
                        lss=PRIMARY_LSS, cca=c, volser=f"P{i}{c:04X}", size_bytes=VOLUME_BYTES
                    )
                    for c in range(shape.volumes)
                ],
                hosts={HOST_NAME: HOST_SECRET},
                site=site,
                peers=[
                    PeerSpec(
                        name=secondary_name(i % shape.secondaries),
                        serial=SECONDARY_SERIAL + i % shape.secondaries,
                        address=links[i].endpoint
                        if links
                        else f"127.0.0.1:{secondary_ports[i % shape.secondaries]}",
                        secret=LINK_SECRET,
                    ),
                    # Sibling primaries: the group freezes over these links by itself.
                    *(
                        PeerSpec(
                            name=f"cntla{j}",
                            serial=PRIMARY_SERIAL_FIRST + j,
                            address=f"127.0.0.1:{ports[j]}",
                            secret=LINK_SECRET,
                        )
                        for j in range(shape.primaries)
                        if j != i
                    ),
                ],
            )
            for i in range(shape.primaries)
        ]
        # A planted bug of the secondary's side (TESTING ONLY) is planted there instead.
        on_secondary = [bug for bug in planted_bugs if bug in SECONDARY_SIDE_BUGS]
        for spec in secondary_specs:
            spec.settings = dict(shape.secondary_settings)
            if on_secondary:
                spec.settings |= {
                    "planted_bugs": on_secondary,
                    "planted_bug_every": planted_bug_every,
                }
        secondaries = [
            ControllerProcess(
                spec.write(root / f"{spec.name}.toml"),
                extra_env=TESTING_ENV if on_secondary else None,
            )
            for spec in secondary_specs
        ]
        secondary = secondaries[0]
        # The primaries are the fault campaigns' test subjects: planted bugs and volume_faults
        # (set at any restart) are test-only keys, accepted only with REMCOPY_TESTING=1.
        primaries = [
            ControllerProcess(s.write(root / f"{s.name}.toml"), extra_env=TESTING_ENV)
            for s in specs
        ]
        started.extend(secondaries)
        await asyncio.gather(*(proc.start() for proc in secondaries))
        started.extend(primaries)
        await asyncio.gather(*(p.start() for p in primaries))
        pairs = []
        for i in range(shape.primaries):
            for c in range(shape.volumes):
                n = i * shape.volumes + c
                pairs.append(
                    GroupPair(
                        volser=f"P{i}{c:04X}",
                        primary=hardware_address(
                            PRIMARY_SERIAL_FIRST + i, PRIMARY_SSID, PRIMARY_LSS, c
                        ),
                        secondary=hardware_address(
                            SECONDARY_SERIAL + i % shape.secondaries,
                            SECONDARY_SSID,
                            SECONDARY_LSS,
                            n,
                        ),
                        primary_controller=f"cntla{i}",
                        secondary_controller=secondary_name(i % shape.secondaries),
                    )
                )
        group = Group(
            name="FAULTS",
            options=GroupOptions(mode=shape.mode, consistency_group=shape.consistency_group),
            pairs=tuple(pairs),
        )
        host_files = site.files(HOST_NAME, "host")
        definition = parse_host_definition(
            {
                "tls": {
                    "ca": str(host_files.ca),
                    "cert": str(host_files.cert),
                    "key": str(host_files.key),
                },
                "host": {"name": HOST_NAME, "secret": HOST_SECRET},
                "controllers": [
                    *({"name": p.name, "address": p.endpoint} for p in primaries),
                    *({"name": p.name, "address": p.endpoint} for p in secondaries),
                ],
                "paths": [
                    {
                        "devices": f"{0x1000 * (i + 1):04X}-{0x1000 * (i + 1) + shape.volumes - 1:04X}",  # noqa: E501
                        "controller": p.name,
                        "ssid": f"{PRIMARY_SSID:04X}",
                        "lss": f"{PRIMARY_LSS:02X}",
                        "cca": "00",
                    }
                    for i, p in enumerate(primaries)
                ],
            },
            source="fault campaign",
        )
        world = World(
            root=root,
            session=HostSession(definition),
            group=group,
            secondary=secondary,
            primaries=primaries,
            specs=specs,
            links=links,
            tertiaries={
                p.secondary: hardware_address(
                    p.secondary.serial, TERTIARY_SSID, TERTIARY_LSS, p.secondary.cca
                )
                for p in pairs
            },
            secondaries=secondaries,
        )
    except BaseException:
        for proc in started:
            if proc.running:
                await proc.kill()
        for link in links:
            await link.close()
        raise
    try:
        await establish(world)
        yield world
    finally:
        await world.close()


# Waiting on events and states...


@contextlib.asynccontextmanager
async def events(procs: list[ControllerProcess]) -> AsyncIterator[dict[str, Subscription]]:
    """Live event streams of these controllers, each on a channel of its own (closed after)."""
    channels = {p.name: p.channel(name=HOST_NAME, secret=HOST_SECRET) for p in procs}
    try:
        yield {name: await ch.subscribe() for name, ch in channels.items()}
    finally:
        for ch in channels.values():
            await ch.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One controller event as it reached the harness."""

    arrived_ns: int
    """time.time_ns() when the harness's reader took it off the stream (the host's clock)."""
    controller: str
    event: Event


class EventRecorder:
    """Every event line of some controllers, kept with its arrival time, read as it comes.

    A reader task per stream takes each line off as soon as the event loop runs it, so the
    arrival times are the harness's (one loop shared with the workload: a busy loop adds its
    own delay). A stream that ends (its controller was killed) ends its reader quietly.
    """

    def __init__(self, subs: dict[str, Subscription], tasks: asyncio.TaskGroup) -> None:
        self.events: list[Arrival] = []
        self._changed = asyncio.Event()
        self._readers = [
            tasks.create_task(self._read(name, sub), name=f"events {name}")
            for name, sub in subs.items()
        ]

    def __repr__(self) -> str:
        live = sum(not r.done() for r in self._readers)
        return f"<EventRecorder events={len(self.events)} streams={live}/{len(self._readers)}>"

    async def _read(self, name: str, sub: Subscription) -> None:
        with contextlib.suppress(RemcopyError):
            async for event in sub:
                self.events.append(Arrival(arrived_ns=time.time_ns(), controller=name, event=event))
                self._changed.set()
        self._changed.set()

    async def wait(self, met: Callable[[list[Arrival]], bool], *, timeout_s: float) -> bool:
        """Wait until `met(events)` holds; False when timeout_s passed or every stream ended
        first (the caller decides whether that is a finding)."""
        try:
            async with asyncio.timeout(timeout_s):
                while not met(self.events):
                    if all(r.done() for r in self._readers):
                        return False
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop reading; the TaskGroup of `recorded` ends the readers (a reader that failed
        other than by its stream ending fails the harness there, loudly)."""
        for reader in self._readers:
            reader.cancel()


@contextlib.asynccontextmanager
async def recorded(procs: list[ControllerProcess]) -> AsyncIterator[EventRecorder]:
    """An EventRecorder over these controllers' live event streams."""
    async with events(procs) as subs, asyncio.TaskGroup() as tasks:
        recorder = EventRecorder(subs, tasks)
        try:
            yield recorder
        finally:
            recorder.close()


async def until_duplex(w: World, subs: dict[str, Subscription]) -> None:
    """Wait until every pair's primary has sent its STATE event to DUPLEX."""
    for name, sub in subs.items():
        want = {str(p.primary) for p in w.group.pairs if p.primary_controller == name}
        while want:
            event = await sub.wait_until(
                lambda e: e.new is PairState.DUPLEX, timeout_s=ITERATION_TIMEOUT_S
            )
            want.discard(event.device)


async def until_settled(w: World) -> None:
    """Wait until every pair is DUPLEX with no marked track and no async lag, as queried,
    and (async consistency group) nothing waits for the consistency time at a secondary.

    While a pair is not DUPLEX (a resync after a restart is running), the next query waits for
    the next event line of a primary. A DUPLEX pair with bits still set or a lag is waiting for
    confirmations of updates already sent, which end it without an event: query again.
    """
    async with events(w.primaries) as subs:
        while True:
            duplex, clean = True, True
            for proc in w.primaries:
                devices = tuple(
                    p.primary.device_key for p in w.group.pairs if p.primary_controller == proc.name
                )
                statuses = await w.session.channels[proc.name].query(devices)
                duplex &= all(s.state is PairState.DUPLEX for s in statuses)
                clean &= all(s.dirty_tracks == 0 and s.lag_bytes == 0 for s in statuses)
            if duplex and clean:
                clean = await _applied(w)
            if duplex and clean:
                return
            if not duplex:
                await next_event(subs)


async def _applied(w: World) -> bool:
    """An async consistency group: every secondary has written everything that arrived
    (its consistency time passed the last update)."""
    if w.group.options.mode is not CopyMode.ASYNC or not w.group.options.consistency_group:
        return True
    for proc in w.secondaries:
        reply = await w.session.channels[proc.name].pair_op(
            PairOp.GROUP_CUT, (), options={"group": w.group.name}
        )
        if reply.document.get("waiting"):
            return False
    return True


async def next_event(subs: dict[str, Subscription]) -> None:
    """Wait for the next event line of any of these controllers."""
    waits = [
        asyncio.create_task(sub.wait_until(lambda e: True, timeout_s=ITERATION_TIMEOUT_S))
        for sub in subs.values()
    ]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # the stream ended: BrokenResourceError, a harness failure
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def succeeded(report: GroupReport, what: str) -> GroupReport:
    if report.failed:
        raise HarnessError(f"{what}: " + "; ".join(p.message for p in report.failed[:4]))
    return report


async def establish(w: World) -> None:
    async with events(w.primaries) as subs:
        succeeded(await run_operation(w.session, w.group, PairOp.ESTABLISH), "establish")
        await until_duplex(w, subs)


async def resume(w: World) -> None:
    async with events(w.primaries) as subs:
        succeeded(await run_operation(w.session, w.group, PairOp.RESUME), "resume")
        await until_duplex(w, subs)


class Load:
    """A workload run in the background; `wait(n)` returns once n writes were acknowledged."""

    def __init__(
        self, w: World, log_path: Path, *, seed: int, writers: int, writes: int | None = None
    ) -> None:
        self.w, self.log_path, self.seed, self.writers = w, log_path, seed, writers
        self.writes = writes
        self.count = 0
        self.acked: list[tuple[int, int]] = []
        """(issue stamp, acknowledgement) of every acknowledged write, in the host's clock."""
        self.stop = asyncio.Event()
        self._changed = asyncio.Event()
        self.task: asyncio.Task[WorkloadStats] | None = None

    def __call__(self, write: LoggedWrite) -> None:
        self.count += 1
        self.acked.append((write.stamp_ns, write.acked_ns))
        self._changed.set()

    async def __aenter__(self) -> Load:
        self.task = asyncio.create_task(
            run_workload(
                self.w.session,
                self.w.group,
                log_path=self.log_path,
                writers=self.writers,
                sizes=WRITE_SIZES,
                seed=self.seed,
                writes=self.writes,
                stop_event=self.stop,
                on_ack=self,
            )
        )
        self.task.add_done_callback(lambda _: self._changed.set())  # wakes wait() and more()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    async def wait(self, count: int) -> None:
        assert self.task is not None
        while self.count < count:
            if self.task.done():
                stats = self.task.result()
                raise HarnessError(
                    f"the workload ended after {self.count} writes ({stats.stopped}): "
                    + "; ".join(f.message for f in stats.failures[:2])
                )
            self._changed.clear()
            await self._changed.wait()  # set by each acknowledgement and by the task's end

    async def more(self, count: int) -> None:
        """Wait for `count` more acknowledged writes, or for the workload to end by itself
        (its chains meet a controller that is gone)."""
        assert self.task is not None
        target = self.count + count
        while self.count < target and not self.task.done():
            self._changed.clear()
            await self._changed.wait()

    def stats(self) -> WorkloadStats:
        assert self.task is not None and self.task.done()
        return self.task.result()


async def digest(channel: Channel, address: HardwareAddress) -> str:
    h = hashlib.sha256()
    step = 1024 * 1024
    for offset in range(0, VOLUME_BYTES, step):
        h.update(await channel.read(address.device_key, offset, min(step, VOLUME_BYTES - offset)))
    return h.hexdigest()


async def restart(w: World, proc: ControllerProcess, faults: dict[str, str]) -> None:
    """Stop a primary controller, rewrite its volume_faults, start it, wait until settled."""
    spec = w.specs[w.primaries.index(proc)]
    spec.settings = {k: v for k, v in spec.settings.items() if not k.startswith("volume_faults")}
    spec.settings.update({f"volume_faults.{volser}": f for volser, f in faults.items()})
    spec.write(proc.config_path)
    await proc.stop()
    await proc.start()
    await until_settled(w)


__all__ = [
    "HOLD_S",
    "HOST_NAME",
    "HOST_SECRET",
    "ITERATION_TIMEOUT_S",
    "VOLUME_BYTES",
    "WRITE_SIZES",
    "HarnessError",
    "Arrival",
    "EventRecorder",
    "Load",
    "Shape",
    "World",
    "digest",
    "establish",
    "events",
    "hardware_address",
    "next_event",
    "recorded",
    "restart",
    "resume",
    "succeeded",
    "until_duplex",
    "until_settled",
    "world",
]
