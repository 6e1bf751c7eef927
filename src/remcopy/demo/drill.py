# The disaster-recovery drill `remcopy demo` runs: every step real, narrated, timed, checked.
#
# Why: the README's first command must show what remcopy is for. The drill builds a two-site
# world (demo/world.py), starts real controller processes, and walks the whole life of a copy
# group: scan both hosts, define and load a group by volser, establish, run the dependent-write
# workload, suspend at a prospective T ("consistent at T"), verify the secondary with the
# checker, take a shadow copy and verify it, resume, cut one replication link and watch the
# freeze, lose the primary site, recover at the secondary site and prove that no acknowledged
# write was lost, and fail back. It exits 0 only if every check passed, and stops every process
# it started, also on Ctrl-C.
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from remcopy.catalog import Catalog
from remcopy.controller.process import ControllerProcess
from remcopy.demo.world import DemoWorld, plan_world, write_files
from remcopy.errors import RemcopyError
from remcopy.events import Event, EventKind
from remcopy.groups.freeze import watch_and_freeze
from remcopy.groups.model import Group
from remcopy.groups.operations import (
    GroupReport,
    run_operation,
    shadow,
    status,
    suspend,
    swap_home,
)
from remcopy.groups.service import define_group, group_for_host, load_group
from remcopy.host.service import add_host, host_definition, scan_host
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import PairState
from remcopy.wire.native import PairOp
from remcopy.workload import CheckReport, Image, ImageReader, check_image, read_log
from remcopy.workload.faultlink import FaultLink
from remcopy.workload.workload import WorkloadStats, run_workload

T = TypeVar("T")
Say = Callable[[str], None]


class DrillFailed(RemcopyError):
    """a demo check failed"""


@dataclass
class Step:
    name: str
    pairs: int
    seconds: float
    result: str
    ok: bool = True


@dataclass
class Drill:
    world: DemoWorld
    say: Say
    progress: Callable[[str, int, int], None]
    seed: int
    steps: list[Step] = field(default_factory=list)
    procs: dict[str, ControllerProcess] = field(default_factory=dict)
    links: list[FaultLink] = field(default_factory=list)

    async def step(
        self,
        name: str,
        work: Awaitable[T],
        result: Callable[[T], tuple[str, bool]],
        *,
        pairs: int = 0,
    ) -> T:
        started = time.perf_counter()
        value = await work
        text, ok = result(value)
        took = time.perf_counter() - started
        self.steps.append(Step(name=name, pairs=pairs, seconds=took, result=text, ok=ok))
        mark = "ok " if ok else "FAIL"
        self.say(f"  [{mark}] {name:<38} {took:7.3f} s  {text}")
        return value


async def run_drill(
    root: Path, *, pairs: int, seed: int, say: Say, progress: Callable[[str, int, int], None]
) -> list[Step]:
    world = plan_world(root, pairs)
    drill = Drill(world=world, say=say, progress=progress, seed=seed)
    try:
        await _drill(drill)
    finally:
        await _stop_all(drill)
        # The kept world must work without the drill's link proxies: point every primary
        # straight at its secondary.
        write_files(world, [f"127.0.0.1:{p}" for p in world.secondary_ports])
    return drill.steps


async def _stop_all(drill: Drill) -> None:
    # The primaries first: a primary whose secondary stopped first would find it dead (its
    # heartbeats go unanswered) and leave its pairs SUSPENDED_ERROR in the kept world.
    for site in ("cntla", "cntlb"):
        await asyncio.gather(
            *(p.stop() for p in drill.procs.values() if p.running and p.name.startswith(site)),
            return_exceptions=True,
        )
    await asyncio.gather(
        *(p.stop() for p in drill.procs.values() if p.running), return_exceptions=True
    )
    for link in drill.links:
        await link.close()


async def _drill(d: Drill) -> None:
    world = d.world
    n = world.pairs
    say = d.say
    say(f"remcopy demo: a two-site world of {n} pairs in {world.root} (seed {d.seed})")

    # The world: link proxies first (their ports go into the primaries' configs).
    for i in range(world.primaries):
        link = FaultLink(("127.0.0.1", world.secondary_ports[i]), seed=d.seed + i)
        await link.start()
        d.links.append(link)
    specs = write_files(world, [link.endpoint for link in d.links])

    async def start_all() -> tuple[int, set[str]]:
        procs = [ControllerProcess(world.config(s.name)) for s in specs]
        await asyncio.gather(*(p.start() for p in procs))
        d.procs.update({p.name: p for p in procs})
        return len(procs), {p.links for p in procs}

    await d.step(
        "start controllers",
        start_all(),
        lambda c: (
            f"{c[0]} processes: {world.primaries} per site; links: {', '.join(sorted(c[1]))}",
            c == (len(specs), {"tls"}),
        ),
    )

    catalog = Catalog.open(world.catalog)
    try:
        await _with_catalog(d, catalog)
    finally:
        catalog.close()


async def _with_catalog(d: Drill, catalog: Catalog) -> None:
    world, n = d.world, d.world.pairs
    for host in ("hosta", "hostb"):
        add_host(catalog, world.host_file(host), replace=True)

        async def do_scan(host: str = host) -> tuple[int, int]:
            result, _ = await scan_host(catalog, host, progress=d.progress)
            return len(result.devices), len(result.failures)

        await d.step(
            f"scan {host}",
            do_scan(),
            lambda r: (f"{r[0]} devices mapped, {r[1]} failed", r[1] == 0),
        )
    _show_maps(d, catalog)

    async def define() -> int:
        count = define_group(catalog, world.group_file, replace=True)
        load_group(catalog, "DRILL", "hosta")
        load_group(catalog, "DRILL", "hostb")
        return count

    await d.step(
        "define group DRILL by volser",
        define(),
        lambda c: (f"{c} pairs, loaded for hosta and hostb", c == n),
        pairs=n,
    )
    group_a = group_for_host(catalog, "DRILL", "hosta")
    group_b = group_for_host(catalog, "DRILL", "hostb")
    tertiaries = {str(p.secondary): _tertiary(p.secondary) for p in group_b.pairs}
    world.shadow_map.write_text("".join(f"{s} {t}\n" for s, t in tertiaries.items()))
    async with (
        HostSession(host_definition(catalog, "hosta")) as a,
        HostSession(host_definition(catalog, "hostb")) as b,
    ):
        await _operate(d, a, b, group_a, group_b, tertiaries)


def _tertiary(secondary: HardwareAddress) -> HardwareAddress:
    return HardwareAddress.of(
        serial=secondary.serial,
        ssid=secondary.ssid + 0x2000,
        lss=secondary.lss + 0x20,
        cca=secondary.cca,
    )


def _show_maps(d: Drill, catalog: Catalog) -> None:
    a = {e.volser: e for e in catalog.map_all("hosta")}
    b = {e.volser: e for e in catalog.map_all("hostb")}
    d.say("  the same volumes, as each host numbers them (device number -> address):")
    for volser in sorted(v for v in a if v.startswith("P"))[:3]:
        ea, eb = a[volser], b.get(volser)
        other = f"hostb {eb.device_number} (offline)" if eb else "hostb -"
        d.say(f"      {volser}  hosta {ea.device_number}  {other}  = {ea.hardware_address}")


async def _wait_state(
    d: Drill, session: HostSession, group: Group, want: PairState, label: str
) -> int:
    """Poll the group's status (one query per controller per round) until every pair is in
    `want`; progress on a terminal. Returns the rounds taken."""
    rounds = 0
    while True:
        rounds += 1
        statuses = await status(session, group)
        done = sum(1 for s in statuses if s.state is want)
        d.progress(label, done, len(statuses))
        if done == len(statuses):
            return rounds
        if rounds > 100_000:
            raise DrillFailed(f"{label}: pairs did not reach {want.name}")


def _report_ok(expected: PairState) -> Callable[[GroupReport], tuple[str, bool]]:
    def judge(report: GroupReport) -> tuple[str, bool]:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(report.counts().items()))
        requests = sum(report.requests.values())
        fine = (expected, PairState.PENDING, PairState.DUPLEX)
        odd = [p for p in report.pairs if p.state not in fine]
        ok = not report.failed and not odd
        text = f"{counts}; {requests} requests to {len(report.requests)} controllers"
        if report.failed:
            text += f"; {len(report.failed)} refused, first: {report.failed[0].message}"
        elif odd:
            text += f"; {len(odd)} pairs in {odd[0].state.name}, first: {odd[0].pair.name}"
        return text, ok

    return judge


def _checked(what: str) -> Callable[[CheckReport], tuple[str, bool]]:
    def judge(report: CheckReport) -> tuple[str, bool]:
        if report.consistent:
            return f"{what}: consistent ({len(report.chains)} chains)", True
        return f"{what}: INCONSISTENT: {report.summary()}", False

    return judge


async def _operate(
    d: Drill,
    a: HostSession,
    b: HostSession,
    group_a: Group,
    group_b: Group,
    tertiaries: dict[str, HardwareAddress],
) -> None:
    world, n = d.world, d.world.pairs
    log_path = world.root / "workload.log"
    await d.step(
        "establish (initial copy)", _establish(d, a, group_a), _report_ok(PairState.DUPLEX), pairs=n
    )

    stop = asyncio.Event()
    acked = asyncio.Event()
    counter = {"acks": 0}

    def on_ack(*_args: object) -> None:
        counter["acks"] += 1
        if counter["acks"] >= 200:
            acked.set()

    workload = asyncio.ensure_future(
        run_workload(
            a,
            group_a,
            log_path=log_path,
            writers=8,
            seed=d.seed,
            stop_event=stop,
            on_ack=on_ack,
            overwrite_log=True,
        )
    )
    try:
        await d.step(
            "start the dependent-write workload",
            _first(acked, workload),
            lambda _: (f"8 chains writing; {counter['acks']} writes acknowledged", True),
        )
        report = await d.step(
            "suspend at a prospective T", suspend(a, group_a), _consistent_at_t, pairs=n
        )
        secondary = ImageReader(b, group_b, Image.SECONDARY)
        await d.step(
            "verify the secondary at T",
            check_image(
                secondary,
                read_log(log_path),
                require_all_acked=False,
                at_ns=report.at_ns,
                name=secondary.name,
                image="secondary",
            ),
            _checked("secondary"),
        )
        await d.step(
            "shadow copy to tertiaries",
            _shadow(d, b, group_b, tertiaries),
            lambda r: (f"{r} tertiaries copied", r == n),
            pairs=n,
        )
        shadow_reader = ImageReader(
            b,
            group_b,
            Image.SHADOW,
            tertiaries={HardwareAddress.parse(s): t for s, t in tertiaries.items()},
        )
        await d.step(
            "verify the shadow at T",
            check_image(
                shadow_reader,
                read_log(log_path),
                require_all_acked=False,
                at_ns=report.at_ns,
                name=shadow_reader.name,
                image="shadow",
            ),
            _checked("shadow"),
        )
        await d.step(
            "resume (copy changed tracks)",
            _resume(d, a, group_a),
            _report_ok(PairState.DUPLEX),
            pairs=n,
        )
        freeze = await d.step(
            "cut a replication link: freeze", _freeze(d, a, group_a), _frozen, pairs=n
        )
        await d.step(
            "verify the secondary after the freeze",
            check_image(
                secondary,
                read_log(log_path),
                require_all_acked=False,
                name=secondary.name,
                image="secondary",
            ),
            _checked("secondary"),
        )
        del freeze
        d.links[0].heal()
        await d.step(
            "heal the link and resume",
            _resume(d, a, group_a),
            _report_ok(PairState.DUPLEX),
            pairs=n,
        )
        await d.step(
            "lose the primary site (kill -9)",
            _disaster(d, workload),
            lambda s: (f"{s.writes_acked} writes acknowledged before the loss", True),
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await workload
    await d.step(
        "recover at the secondary site",
        run_operation(b, group_b, PairOp.RECOVER),
        _report_ok(PairState.RECOVERED),
        pairs=n,
    )
    lost = await d.step(
        "verify: no acknowledged write lost",
        check_image(
            secondary,
            read_log(log_path),
            require_all_acked=True,
            name=secondary.name,
            image="secondary",
        ),
        _all_acked,
    )
    del lost
    await d.step(
        "fail back to the primary site",
        _failback(d, a, b, group_a, group_b),
        _report_ok(PairState.DUPLEX),
        pairs=n,
    )
    await d.step(
        "return the primary role to site A",
        _return_home(d, a, group_a),
        _report_ok(PairState.DUPLEX),
        pairs=n,
    )
    primary = ImageReader(a, group_a, Image.PRIMARY)
    await d.step(
        "verify the primary site after failback",
        check_image(
            primary, read_log(log_path), require_all_acked=True, name=primary.name, image="primary"
        ),
        _checked("primary"),
    )


async def _first(event: asyncio.Event, workload: asyncio.Future[WorkloadStats]) -> None:
    waiter: asyncio.Future[object] = asyncio.ensure_future(event.wait())
    pending: set[asyncio.Future[object]] = {waiter, workload}  # type: ignore[arg-type]
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if workload.done():
        workload.result()  # raise why the workload stopped
        raise DrillFailed("the workload stopped before writing")


async def _establish(d: Drill, a: HostSession, group: Group) -> GroupReport:
    report = await run_operation(a, group, PairOp.ESTABLISH)
    if not report.failed:
        await _wait_state(d, a, group, PairState.DUPLEX, "copy")
    return report


async def _resume(d: Drill, a: HostSession, group: Group) -> GroupReport:
    report = await run_operation(a, group, PairOp.RESUME)
    if not report.failed:
        await _wait_state(d, a, group, PairState.DUPLEX, "resync")
    return report


def _consistent_at_t(report: GroupReport) -> tuple[str, bool]:
    if report.consistent:
        return (
            f"consistent at T; {len(report.pairs)} pairs in "
            f"{(report.elapsed_s - report.margin_s) * 1e3:.1f} ms beyond the "
            f"{report.margin_s * 1e3:.0f} ms margin, "
            f"{sum(report.requests.values())} requests"
        ), True
    return f"NOT consistent: {len(report.failed)} pairs failed", False


def _frozen(report: GroupReport) -> tuple[str, bool]:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(report.counts().items()))
    if report.consistent:
        return f"frozen, consistent at T: {counts}", True
    return f"NOT consistent after the freeze: {counts}", False


def _all_acked(report: CheckReport) -> tuple[str, bool]:
    missing = report.acked_missing
    return (
        f"{missing} acknowledged writes lost; secondary "
        f"{'consistent' if report.consistent else 'INCONSISTENT'}",
        missing == 0 and report.consistent,
    )


async def _shadow(
    d: Drill, b: HostSession, group: Group, tertiaries: dict[str, HardwareAddress]
) -> int:
    """Start every shadow copy (one request per secondary controller), wait for each one's
    SHADOW event with phase done."""
    controllers = sorted({p.secondary_controller for p in group.pairs})
    expected = {c: sum(1 for p in group.pairs if p.secondary_controller == c) for c in controllers}
    subs = {c: await b.channels[c].subscribe() for c in controllers}
    report = await shadow(b, group, tertiaries)
    if report.failed:
        raise DrillFailed(f"shadow: {report.failed[0].message}")
    done = 0
    for controller, sub in subs.items():
        left = expected[controller]
        while left:
            await sub.wait_until(_shadow_done, timeout_s=600)
            left -= 1
            done += 1
            d.progress("shadow", done, len(group.pairs))
    return done


def _shadow_done(event: Event) -> bool:
    return event.kind is EventKind.SHADOW and event.detail.get("phase") == "done"


async def _freeze(d: Drill, a: HostSession, group: Group) -> GroupReport:
    ready = asyncio.Event()
    watcher = asyncio.ensure_future(watch_and_freeze(a, group, ready=ready))
    await ready.wait()
    d.links[0].cut()
    return await watcher


async def _disaster(d: Drill, workload: asyncio.Future[WorkloadStats]) -> WorkloadStats:
    primaries = [p for name, p in d.procs.items() if name.startswith("cntla")]
    await asyncio.gather(*(p.kill() for p in primaries))
    return await workload


async def _return_home(d: Drill, a: HostSession, group: Group) -> GroupReport:
    """After failback site B is primary: recover at site A and fail back once more (what
    `remcopy group return-home` does)."""
    report = await swap_home(a, group.reversed())
    if not report.failed:
        await _wait_state(d, a, group, PairState.DUPLEX, "home")
    return report


async def _failback(
    d: Drill, a: HostSession, b: HostSession, group_a: Group, group_b: Group
) -> GroupReport:
    primaries = [p for name, p in d.procs.items() if name.startswith("cntla")]
    await asyncio.gather(*(p.start() for p in primaries))
    report = await run_operation(b, group_b, PairOp.FAILBACK)
    if not report.failed:
        await _wait_state(d, a, group_a, PairState.DUPLEX, "failback")
    return report
