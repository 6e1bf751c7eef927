# Fault campaigns: the dependent-write workload against real controllers while a seeded
# schedule injects one fault per iteration, and the checker's verdict after each one.
#
# Why: a consistency claim is only as good as the faults it survived (issue 9, DESIGN.md
# sections 2 and 5). Each campaign here is one kind of fault, run for N iterations on one
# world of real controller processes on 127.0.0.1 (two primary controllers at site A, one
# secondary controller at site B with spare tertiary volumes, a sync group over all pairs):
#
#   kill_primary    kill -9 of a primary controller at a random ack count (its link cut at the
#                   same moment: the site is lost); recover at the secondary: consistent, and
#                   no acknowledged write missing. The links carry a seeded WAN delay.
#   kill_secondary  kill -9 of the secondary controller; writes go on; restart, resume under
#                   load: primaries and secondaries identical at the end (checksums).
#   link_fault      cut, stall or delay of one primary's replication link in a consistency
#                   group: cut and stall end in a freeze (watch_and_freeze), a delay in a
#                   planned suspend at T; the secondaries are consistent; resume, identical.
#   suspend_shadow  group suspend at a prospective T under load, shadow copies, resume under
#                   load: secondaries and shadows are the cut at T; resynced, identical.
#   io_fault        a primary volume's backing file turns full (ENOSPC) or bad (EIO) after a
#                   random number of writes (config volume_faults, testing only): the write is
#                   refused with an error naming the volume and errno, nothing acknowledged is
#                   lost, the controller goes on serving its other volumes.
#
# Every campaign returns a CampaignResult (figures and failures) instead of asserting, so a
# test can also assert the opposite: with a planted bug (config planted_bugs, testing only),
# the campaign that must catch it reports the failed check (`hunt_planted_bug`).
#
# Rules this module keeps:
# - Every random choice comes from the seed, per campaign and iteration; the seed is in the
#   result and printed by the callers. Faults happen at ack counts, never after a sleep.
# - Waiting is on events (ready lines, "-> DUPLEX" lines, acknowledged-write counts, shadow
#   "done" lines) or on states (queries); every wait is bounded by ITERATION_TIMEOUT_S.
# - A check that fails is a finding (`checks`); anything else that goes wrong stops the
#   campaign as a harness failure, and is never counted as a detection.
from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from remcopy.controller.process import (
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
)
from remcopy.errors import RemcopyError
from remcopy.groups import Group, GroupOptions, GroupPair, GroupReport, run_operation, suspend
from remcopy.groups.freeze import watch_and_freeze
from remcopy.host.channel import Channel, Subscription
from remcopy.host.definition import parse_host_definition
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairItem, PairOp
from remcopy.workload.checker import check_image
from remcopy.workload.faultlink import FaultLink
from remcopy.workload.image import Image, ImageReader
from remcopy.workload.log import LoggedWrite, read_log
from remcopy.workload.report import Reason
from remcopy.workload.workload import WorkloadStats, run_workload

CAMPAIGNS: Final = ("kill_primary", "kill_secondary", "link_fault", "suspend_shadow", "io_fault")
PLANTED_BUGS: Final = ("mirror_late_write", "drop_update", "skip_changemap_bit", "early_sync_ack")
# The campaigns that catch each planted bug, the first one for sure (tests/campaigns asserts
# it), and how often the bug fires there (every n-th eligible event).
CATCHERS: Final = {
    "mirror_late_write": ("suspend_shadow",),
    "drop_update": ("kill_secondary", "suspend_shadow", "kill_primary"),
    "skip_changemap_bit": ("kill_secondary", "link_fault", "suspend_shadow"),
    "early_sync_ack": ("kill_primary",),
}
PLANTED_BUG_EVERY: Final = {
    "mirror_late_write": 1,
    "drop_update": 3,
    "skip_changemap_bit": 1,
    "early_sync_ack": 2,
}

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
# A freeze must come before a held consistency-group device gives up (hold_s).
HOLD_S: Final = 5.0
# A stalled link counts as failed after this long without a confirmation.
ACK_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignSettings:
    """How long and how hard one campaign runs."""

    iterations: int = 3
    seed: int = 0
    writers: int = 6
    acks_min: int = 20
    """The fault comes after a random number of acknowledged writes in [acks_min, acks_max]."""
    acks_max: int = 120
    planted_bugs: tuple[str, ...] = ()
    """TESTING ONLY: bugs planted in the primary controllers (config planted_bugs)."""
    planted_bug_every: int = 50
    stop_on_detection: bool = False
    """Stop at the first failed check (hunting a planted bug)."""
    progress: Callable[[str], None] | None = None
    """Called with one line per iteration (the bench prints them on stderr)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignResult:
    """What one campaign did and found; a failed check is in `findings`, never raised."""

    campaign: str
    seed: int
    iterations: int
    faults_injected: int
    checks: int
    checks_passed: int
    acked_writes_lost: int
    inconsistent_secondaries: int
    writes_acked: int
    elapsed_s: float
    planted_bugs: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    """Every failed check: iteration, what was checked, and the first violation."""
    harness_error: str = ""
    """Why the campaign stopped early, if something other than a check went wrong."""

    @property
    def detected(self) -> bool:
        """A check failed (what a planted bug must cause)."""
        return bool(self.findings)

    @property
    def ok(self) -> bool:
        return not self.findings and not self.harness_error and self.checks_passed == self.checks

    def line(self) -> str:
        bugs = f" planted={','.join(self.planted_bugs)}" if self.planted_bugs else ""
        text = (
            f"campaign {self.campaign} seed={self.seed}{bugs}: iterations {self.iterations}, "
            f"faults injected {self.faults_injected}, checks passed {self.checks_passed}/"
            f"{self.checks}, acknowledged writes lost {self.acked_writes_lost}, inconsistent "
            f"secondaries {self.inconsistent_secondaries}, writes acknowledged "
            f"{self.writes_acked}, {self.elapsed_s:.1f} s"
        )
        if self.findings:
            text += f"; first finding: {self.findings[0]}"
        if self.harness_error:
            text += f"; harness error: {self.harness_error}"
        return text


class HarnessError(RemcopyError):
    """the campaign could not carry out a step (not a consistency finding)"""


@dataclass
class _Tally:
    faults: int = 0
    checks: int = 0
    passed: int = 0
    acked_lost: int = 0
    inconsistent: int = 0
    writes: int = 0
    iterations: int = 0
    findings: list[str] = field(default_factory=list)


# The world: controller processes, fault links, the host session and the group...


@dataclass(eq=False)
class _World:
    root: Path
    session: HostSession
    group: Group
    secondary: ControllerProcess
    primaries: list[ControllerProcess]
    specs: list[ControllerSpec]
    links: list[FaultLink]
    tertiaries: dict[HardwareAddress, HardwareAddress]

    def primary_of(self, pair: GroupPair) -> ControllerProcess:
        return self.primaries[pair.primary.serial - PRIMARY_SERIAL_FIRST]

    async def close(self) -> None:
        await self.session.close()
        for proc in [*self.primaries, self.secondary]:
            if proc.running:
                await proc.kill()
        for link in self.links:
            await link.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Shape:
    primaries: int = 2
    volumes: int = 2
    consistency_group: bool = True
    links: bool = False
    """Route each primary's replication link through its own FaultLink."""
    primary_settings: tuple[tuple[str, object], ...] = ()


def _address(serial: int, ssid: int, lss: int, cca: int) -> HardwareAddress:
    return HardwareAddress.of(serial=serial, ssid=ssid, lss=lss, cca=cca)


@contextlib.asynccontextmanager
async def _world(root: Path, shape: _Shape, settings: CampaignSettings) -> AsyncIterator[_World]:
    """Start the secondary, then the primaries at once; establish the group; stop it all."""
    ports = [free_port() for _ in range(shape.primaries + 1)]
    secondary_address = ("127.0.0.1", ports[-1])
    links = [FaultLink(secondary_address) for _ in range(shape.primaries) if shape.links]
    started: list[ControllerProcess] = []
    try:
        for link in links:
            await link.start()
        count = shape.primaries * shape.volumes
        secondary_spec = ControllerSpec(
            name="cntlb",
            serial=SECONDARY_SERIAL,
            data_dir=root / "cntlb",
            listen=f"127.0.0.1:{ports[-1]}",
            lss={SECONDARY_LSS: SECONDARY_SSID, TERTIARY_LSS: TERTIARY_SSID},
            volumes=[
                VolumeSpec(lss=lss, cca=i, volser=f"{tag}{i:04X}", size_bytes=VOLUME_BYTES)
                for lss, tag in ((SECONDARY_LSS, "SB"), (TERTIARY_LSS, "TB"))
                for i in range(count)
            ],
            hosts={HOST_NAME: HOST_SECRET},
            peers=[
                PeerSpec(
                    name=f"cntla{i}",
                    serial=PRIMARY_SERIAL_FIRST + i,
                    address=f"127.0.0.1:{ports[i]}",
                    secret=LINK_SECRET,
                )
                for i in range(shape.primaries)
            ],
        )
        settings_toml: dict[str, object] = {"hold_s": HOLD_S}
        settings_toml.update(shape.primary_settings)
        if settings.planted_bugs:
            settings_toml["planted_bugs"] = list(settings.planted_bugs)
            settings_toml["planted_bug_every"] = settings.planted_bug_every
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
                peers=[
                    PeerSpec(
                        name="cntlb",
                        serial=SECONDARY_SERIAL,
                        address=links[i].endpoint if links else f"127.0.0.1:{ports[-1]}",
                        secret=LINK_SECRET,
                    )
                ],
            )
            for i in range(shape.primaries)
        ]
        secondary = ControllerProcess(secondary_spec.write(root / "cntlb.toml"))
        primaries = [ControllerProcess(s.write(root / f"{s.name}.toml")) for s in specs]
        started.append(secondary)
        await secondary.start()
        started.extend(primaries)
        await asyncio.gather(*(p.start() for p in primaries))
        pairs = []
        for i in range(shape.primaries):
            for c in range(shape.volumes):
                n = i * shape.volumes + c
                pairs.append(
                    GroupPair(
                        volser=f"P{i}{c:04X}",
                        primary=_address(PRIMARY_SERIAL_FIRST + i, PRIMARY_SSID, PRIMARY_LSS, c),
                        secondary=_address(SECONDARY_SERIAL, SECONDARY_SSID, SECONDARY_LSS, n),
                        primary_controller=f"cntla{i}",
                        secondary_controller="cntlb",
                    )
                )
        group = Group(
            name="FAULTS",
            options=GroupOptions(mode=CopyMode.SYNC, consistency_group=shape.consistency_group),
            pairs=tuple(pairs),
        )
        definition = parse_host_definition(
            {
                "host": {"name": HOST_NAME, "secret": HOST_SECRET},
                "controllers": [
                    *({"name": p.name, "address": p.endpoint} for p in primaries),
                    {"name": "cntlb", "address": secondary.endpoint},
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
        world = _World(
            root=root,
            session=HostSession(definition),
            group=group,
            secondary=secondary,
            primaries=primaries,
            specs=specs,
            links=links,
            tertiaries={
                p.secondary: _address(
                    SECONDARY_SERIAL, TERTIARY_SSID, TERTIARY_LSS, p.secondary.cca
                )
                for p in pairs
            },
        )
    except BaseException:
        for proc in started:
            if proc.running:
                await proc.kill()
        for link in links:
            await link.close()
        raise
    try:
        await _establish(world)
        yield world
    finally:
        await world.close()


# Waiting on events and states...


@contextlib.asynccontextmanager
async def _events(procs: list[ControllerProcess]) -> AsyncIterator[dict[str, Subscription]]:
    """Live event streams of these controllers, each on a channel of its own (closed after)."""
    channels = {p.name: Channel(p.address, name=HOST_NAME, secret=HOST_SECRET) for p in procs}
    try:
        yield {name: await ch.subscribe() for name, ch in channels.items()}
    finally:
        for ch in channels.values():
            await ch.close()


async def _until_duplex(w: _World, subs: dict[str, Subscription]) -> None:
    """Wait until every pair has announced `-> DUPLEX` at its primary."""
    for name, sub in subs.items():
        want = {str(p.primary) for p in w.group.pairs if p.primary_controller == name}
        while want:
            line = await sub.wait_for(r" -> DUPLEX", timeout_s=ITERATION_TIMEOUT_S)
            want.discard(line.split()[1])


async def _until_settled(w: _World) -> None:
    """Wait until every pair is DUPLEX with no marked track, as a query reports it.

    While a pair is not DUPLEX (a resync after a restart is running), the next query waits for
    the next event line of a primary. A DUPLEX pair whose bits are still set is only waiting
    for confirmations of writes already sent, which clear them without an event: query again.
    """
    async with _events(w.primaries) as subs:
        while True:
            duplex, clean = True, True
            for proc in w.primaries:
                devices = tuple(
                    p.primary.device_key for p in w.group.pairs if p.primary_controller == proc.name
                )
                statuses = await w.session.channels[proc.name].query(devices)
                duplex &= all(s.state is PairState.DUPLEX for s in statuses)
                clean &= all(s.dirty_tracks == 0 for s in statuses)
            if duplex and clean:
                return
            if not duplex:
                await _next_event(subs)


async def _next_event(subs: dict[str, Subscription]) -> None:
    """Wait for the next event line of any of these controllers."""
    waits = [
        asyncio.create_task(sub.wait_for("", timeout_s=ITERATION_TIMEOUT_S))
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


def _succeeded(report: GroupReport, what: str) -> GroupReport:
    if report.failed:
        raise HarnessError(f"{what}: " + "; ".join(p.message for p in report.failed[:4]))
    return report


async def _establish(w: _World) -> None:
    async with _events(w.primaries) as subs:
        _succeeded(await run_operation(w.session, w.group, PairOp.ESTABLISH), "establish")
        await _until_duplex(w, subs)


async def _resume(w: _World) -> None:
    async with _events(w.primaries) as subs:
        _succeeded(await run_operation(w.session, w.group, PairOp.RESUME), "resume")
        await _until_duplex(w, subs)


class _Load:
    """A workload run in the background; `wait(n)` returns once n writes were acknowledged."""

    def __init__(
        self, w: _World, log_path: Path, *, seed: int, writers: int, writes: int | None = None
    ) -> None:
        self.w, self.log_path, self.seed, self.writers = w, log_path, seed, writers
        self.writes = writes
        self.count = 0
        self.stop = asyncio.Event()
        self._changed = asyncio.Event()
        self.task: asyncio.Task[WorkloadStats] | None = None

    def __call__(self, write: LoggedWrite) -> None:
        self.count += 1
        self._changed.set()

    async def __aenter__(self) -> _Load:
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
            changed = asyncio.create_task(self._changed.wait())
            await asyncio.wait([changed, self.task], return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()

    def stats(self) -> WorkloadStats:
        assert self.task is not None and self.task.done()
        return self.task.result()


# One iteration: its random choices, its checks...


class _Iteration:
    def __init__(
        self, w: _World, name: str, index: int, settings: CampaignSettings, tally: _Tally
    ) -> None:
        self.w, self.index, self.settings, self.tally = w, index, settings, tally
        self.rng = random.Random(f"remcopy-campaign:{settings.seed}:{name}:{index}")
        self._logs = 0

    def acks(self) -> int:
        return self.rng.randint(self.settings.acks_min, self.settings.acks_max)

    def load(self, *, writes: int | None = None) -> _Load:
        self._logs += 1
        path = self.w.root / f"iteration{self.index:04d}-{self._logs}.jsonl"
        return _Load(
            self.w,
            path,
            seed=self.rng.randrange(1 << 32),
            writers=self.settings.writers,
            writes=writes,
        )

    def finding(self, text: str) -> None:
        self.tally.findings.append(f"iteration {self.index}: {text}")

    def passed(self, ok: bool, what: str, *, secondary: bool) -> bool:
        self.tally.checks += 1
        if ok:
            self.tally.passed += 1
        else:
            self.tally.inconsistent += secondary
            self.finding(what)
        return ok

    async def check(
        self,
        load: _Load,
        image: Image,
        *,
        require_all_acked: bool,
        at_ns: int | None = None,
        what: str = "",
    ) -> None:
        tertiaries = self.w.tertiaries if image is Image.SHADOW else None
        reader = ImageReader(self.w.session, self.w.group, image, tertiaries=tertiaries)
        report = await check_image(
            reader,
            read_log(load.log_path),
            require_all_acked=require_all_acked,
            at_ns=at_ns,
            name=reader.name,
            image=f"{image.value} {what}".strip(),
        )
        if require_all_acked:
            # Absent acknowledged writes: after the image's prefix, and holes inside it (every
            # write of a prefix was acknowledged before the next one was issued), each once.
            holes = {
                (v.chain, v.seq)
                for v in report.violations
                if v.reason in _ACKED_WRITE_ABSENT and v.seq
            }
            self.tally.acked_lost += report.acked_missing + len(holes)
        self.passed(report.consistent, report.summary(), secondary=image is not Image.PRIMARY)

    async def identical(self, what: str) -> None:
        """Every secondary holds exactly its primary's bytes (both frozen: no writes)."""
        await _until_settled(self.w)
        differ = []
        for pair in self.w.group.pairs:
            primary = await _digest(self.w.session.channels[pair.primary_controller], pair.primary)
            secondary = await _digest(self.w.session.channels["cntlb"], pair.secondary)
            if primary != secondary:
                differ.append(f"{pair.secondary} differs from {pair.primary}")
        self.passed(not differ, f"{what}: " + "; ".join(differ), secondary=True)

    def counted(self, load: _Load) -> WorkloadStats:
        stats = load.stats()
        self.tally.writes += stats.writes_acked
        return stats


# Violations that mean a write of the image's prefix is absent (its seq is the violation's).
_ACKED_WRITE_ABSENT: Final = frozenset(
    {Reason.MISSING, Reason.STALE, Reason.CORRUPT, Reason.INDEX_WITHOUT_DATA}
)


async def _digest(channel: Channel, address: HardwareAddress) -> str:
    h = hashlib.sha256()
    step = 1024 * 1024
    for offset in range(0, VOLUME_BYTES, step):
        h.update(await channel.read(address.device_key, offset, min(step, VOLUME_BYTES - offset)))
    return h.hexdigest()


# The campaigns...


async def _kill_primary(it: _Iteration) -> None:
    w = it.w
    victim = it.rng.randrange(len(w.primaries))
    for link in w.links:
        link.delay(it.rng.uniform(0.001, 0.005))  # a WAN: an ack takes a round trip or two
    async with it.load() as load:
        await load.wait(it.acks())
        proc, process = w.primaries[victim], w.primaries[victim].process
        assert process is not None
        process.kill()  # the site is lost with its network: SIGKILL and the cut at once
        w.links[victim].cut()
        await proc.kill()
        it.tally.faults += 1
    it.counted(load)
    _succeeded(await run_operation(w.session, w.group, PairOp.RECOVER), "recover")
    await it.check(load, Image.SECONDARY, require_all_acked=True, what=f"after kill -9 {proc.name}")
    # Back to DUPLEX for the next iteration: the old primary restarts, every pair is ended on
    # both sides and established again (a full copy of 2 MiB volumes).
    w.links[victim].heal()
    await proc.start()
    await it.check(load, Image.PRIMARY, require_all_acked=True, what=f"after restart {proc.name}")
    secondaries = tuple(PairItem(device=p.secondary.device_key) for p in w.group.pairs)
    reply = await w.session.channels["cntlb"].pair_op(PairOp.TERMINATE, secondaries)
    if any(r.code for r in reply.results):
        raise HarnessError(f"terminate at the secondary: {reply.results}")
    _succeeded(await run_operation(w.session, w.group, PairOp.TERMINATE), "terminate")
    await _establish(w)


async def _kill_secondary(it: _Iteration) -> None:
    w = it.w
    async with it.load() as load:
        await load.wait(it.acks())
        await w.secondary.kill()
        it.tally.faults += 1
        await load.wait(load.count + it.acks())  # change-recorded at the primaries
        await w.secondary.start()
        await _resume(w)  # under load: the resync races the writes
        await load.wait(load.count + it.acks())
    it.counted(load)
    await it.check(load, Image.PRIMARY, require_all_acked=True, what="after resync")
    await it.check(load, Image.SECONDARY, require_all_acked=True, what="after resync")
    await it.identical("after kill -9 of the secondary and resume")


async def _link_fault(it: _Iteration) -> None:
    w = it.w
    victim = it.rng.randrange(len(w.primaries))
    fault = it.rng.choice(("cut", "stall", "delay"))
    link = w.links[victim]
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_and_freeze(w.session, w.group, ready=ready))
    try:
        await ready.wait()
        async with it.load() as load:
            await load.wait(it.acks())
            if fault == "cut":
                link.cut()
            elif fault == "stall":
                link.stall()
            else:
                link.delay(it.rng.uniform(0.001, 0.02))
            it.tally.faults += 1
            if fault == "delay":  # no error: the group is suspended at T under the slow link
                await load.wait(load.count + it.acks())
                watcher.cancel()
                report = await suspend(w.session, w.group)
            else:
                report = await watcher
            await load.wait(load.count + it.acks() // 4)  # after T: change-recorded
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    it.counted(load)
    what = f"{fault} of cntla{victim}'s link"
    frozen = f"{what}: the group did not stop consistent at one T: {report.to_json()}"
    it.passed(report.consistent, frozen, secondary=False)
    at_ns = report.at_ns if fault == "delay" else None  # a freeze cuts in real time
    await it.check(load, Image.SECONDARY, require_all_acked=False, at_ns=at_ns, what=what)
    await it.check(load, Image.PRIMARY, require_all_acked=True, what=what)
    link.heal()
    await _resume(w)
    await it.identical(f"resumed after a {what}")


async def _suspend_shadow(it: _Iteration) -> None:
    w = it.w
    async with it.load() as load:
        await load.wait(it.acks())
        report = await suspend(w.session, w.group)
        it.tally.faults += 1
        await load.wait(load.count + it.acks())  # after T: change-recorded
    it.counted(load)
    it.passed(report.consistent, f"suspend not consistent: {report.to_json()}", secondary=False)
    await it.check(load, Image.SECONDARY, require_all_acked=False, at_ns=report.at_ns)
    await it.check(load, Image.PRIMARY, require_all_acked=True)
    cntlb = w.session.channels["cntlb"]
    items = tuple(
        PairItem(device=s.device_key, peer_device=t.device_key) for s, t in w.tertiaries.items()
    )
    async with _events([w.secondary]) as subs:
        reply = await cntlb.pair_op(PairOp.SHADOW, items)
        if any(r.code for r in reply.results):
            raise HarnessError(f"shadow: {[r.message for r in reply.results if r.code]}")
        for _ in items:
            await subs["cntlb"].wait_for(r"^shadow .* done", timeout_s=ITERATION_TIMEOUT_S)
    async with it.load() as after:
        await after.wait(it.acks() // 4)
        await _resume(w)  # under load: the resync races the writes
        await after.wait(after.count + it.acks())
    it.counted(after)
    await it.check(load, Image.SHADOW, require_all_acked=False, at_ns=report.at_ns)
    await it.check(after, Image.SECONDARY, require_all_acked=True, what="after resume")
    await it.identical("resumed after a suspend at T")


async def _io_fault(it: _Iteration) -> None:
    w = it.w
    pair = it.rng.choice(w.group.pairs)
    proc = w.primary_of(pair)
    kind = it.rng.choice(("eio", "enospc"))
    code = {"eio": errno.EIO, "enospc": errno.ENOSPC}[kind]
    await _restart(w, proc, {pair.volser: f"{kind}_after:{it.acks() // 4}"})
    # The run ends by itself: every chain meets the failing volume and gives up.
    async with it.load(writes=1_000_000) as load:
        assert load.task is not None
        await load.task
    stats = it.counted(load)
    it.tally.faults += 1
    expected = f"volume {pair.volser}: write failed: {os.strerror(code)} (errno {code})"
    clear = [f for f in stats.failures if f.volume == str(pair.primary) and expected in f.message]
    it.passed(
        bool(stats.failures) and len(clear) == len(stats.failures),
        f"{kind} on {pair.volser}: refusals not as expected: {[f.message for f in stats.failures]}",
        secondary=False,
    )
    # The controller goes on serving its other volumes: a write and a read-back elsewhere.
    channel = w.session.channels[proc.name]
    for other in (p for p in w.group.pairs if p.primary_controller == proc.name and p != pair):
        probe = f"probe {it.index} {other.volser}".encode().ljust(4096, b".")
        await channel.write(other.primary.device_key, VOLUME_BYTES - 4096, probe)
        served = await channel.read(other.primary.device_key, VOLUME_BYTES - 4096, 4096)
        it.passed(served == probe, f"{proc.name} stopped serving {other.volser}", secondary=False)
    await it.check(load, Image.PRIMARY, require_all_acked=True, what=f"after {kind}")
    await it.check(load, Image.SECONDARY, require_all_acked=True, what=f"after {kind}")
    # The disk is replaced: a restart without the fault resyncs the tracks the refused writes
    # marked (they may be torn on the primary), and the pairs are identical again.
    await _restart(w, proc, {})
    await it.identical(f"after {kind} on {pair.volser} and a restart")


async def _restart(w: _World, proc: ControllerProcess, faults: dict[str, str]) -> None:
    """Stop a primary controller, rewrite its volume_faults, start it, wait until settled."""
    spec = w.specs[w.primaries.index(proc)]
    spec.settings = {k: v for k, v in spec.settings.items() if not k.startswith("volume_faults")}
    spec.settings.update({f"volume_faults.{volser}": f for volser, f in faults.items()})
    spec.write(proc.config_path)
    await proc.stop()
    await proc.start()
    await _until_settled(w)


_Campaign = Callable[[_Iteration], Awaitable[None]]
_RUNS: Final[dict[str, tuple[_Campaign, _Shape]]] = {
    "kill_primary": (_kill_primary, _Shape(links=True)),
    "kill_secondary": (_kill_secondary, _Shape(consistency_group=False)),
    "link_fault": (
        _link_fault,
        _Shape(links=True, primary_settings=(("ack_timeout_s", ACK_TIMEOUT_S),)),
    ),
    "suspend_shadow": (_suspend_shadow, _Shape()),
    "io_fault": (_io_fault, _Shape(consistency_group=False)),
}


async def run_campaign(name: str, root: Path, settings: CampaignSettings) -> CampaignResult:
    """Run one campaign for `settings.iterations` iterations in a world under `root`."""
    if name not in _RUNS:
        raise HarnessError(f"unknown campaign {name!r}: expected one of {', '.join(CAMPAIGNS)}")
    campaign, shape = _RUNS[name]
    tally = _Tally()
    started = time.perf_counter()
    harness_error = ""
    try:
        async with _world(root, shape, settings) as w:
            for index in range(settings.iterations):
                it = _Iteration(w, name, index, settings, tally)
                async with asyncio.timeout(ITERATION_TIMEOUT_S):
                    await campaign(it)
                tally.iterations += 1
                if settings.progress is not None:
                    settings.progress(
                        f"{name} iteration {index}: checks {tally.passed}/{tally.checks}"
                    )
                if settings.stop_on_detection and tally.findings:
                    break
    except (RemcopyError, TimeoutError, OSError) as exc:
        harness_error = f"iteration {tally.iterations}: {type(exc).__name__}: {exc}"
    return CampaignResult(
        campaign=name,
        seed=settings.seed,
        iterations=tally.iterations,
        faults_injected=tally.faults,
        checks=tally.checks,
        checks_passed=tally.passed,
        acked_writes_lost=tally.acked_lost,
        inconsistent_secondaries=tally.inconsistent,
        writes_acked=tally.writes,
        elapsed_s=time.perf_counter() - started,
        planted_bugs=settings.planted_bugs,
        findings=tuple(tally.findings),
        harness_error=harness_error,
    )


async def hunt_planted_bug(
    bug: str, campaign: str, root: Path, *, seed: int, iterations: int
) -> CampaignResult:
    """Run a campaign against controllers with one planted bug, until a check fails."""
    if bug not in PLANTED_BUGS:
        raise HarnessError(f"unknown planted bug {bug!r}: expected one of {PLANTED_BUGS}")
    settings = CampaignSettings(
        iterations=iterations,
        seed=seed,
        planted_bugs=(bug,),
        planted_bug_every=PLANTED_BUG_EVERY[bug],
        stop_on_detection=True,
    )
    return await run_campaign(campaign, root, settings)


__all__ = [
    "CAMPAIGNS",
    "CATCHERS",
    "PLANTED_BUGS",
    "PLANTED_BUG_EVERY",
    "CampaignResult",
    "CampaignSettings",
    "HarnessError",
    "hunt_planted_bug",
    "run_campaign",
]
