# Group-operations benchmark: establish, suspend at T, resume and status on thousands of pairs
# with one request per controller, the host write stall during a suspend, the whole
# `remcopy group suspend` command from the shell, and the naive one-pair-at-a-time way.
#
# What it measures (DESIGN.md section 8, issue 6):
#   - 8 primary and 8 secondary real controller processes, 1,263 volumes each (tiny sparse
#     files: one 64 KiB track, so an establish's copy is one track per pair), primary c
#     peered with secondary c. 1,250 volumes of each primary pair with the same volume of
#     its secondary to make the 10,000-pair group; 13 more per controller are spare pairs
#     for the naive way. One host reaches all 20,208 volumes; it is added to an SQLite
#     catalog, scanned, and the group is defined from a CSV of volser pairs and loaded
#     (`host.service`, `groups.service`: the same calls the CLI makes).
#   - Through one open HostSession (warm connections; engine timeout raised so a slow batch
#     is never re-sent), for groups of 1,000 / 4,096 / 10,000 pairs (full run; spread evenly
#     over the 8 primaries, a seeded random choice of volumes on each):
#       establish  the API call (`run_operation(ESTABLISH)`): pairs agreed with the
#                  secondaries and committed; the copies run after it returns. The time until
#                  every pair is DUPLEX on both sides is shown apart (copy + commits).
#       status     `operations.status`, median of 3.
#       suspend    `operations.suspend`: from the call until it returns "consistent at T";
#                  the margin (T - the moment T was chosen) is reported apart, and
#                  beyond_margin = elapsed - margin is the figure with the 100 ms target.
#       resume     the API call with no changed tracks; the time until DUPLEX again apart.
#       terminate  the API call (resets the pairs for the next size; not a target).
#     per pair = time / pairs (for suspend: beyond_margin / pairs); requests per controller
#     from the controllers' own counters (pair operations received, read before and after
#     each call; must be exactly 1 everywhere).
#     If a suspend is not consistent at T (with the group's default 50 ms margin a
#     controller may receive its request after T and refuse it: measured, see the attempts
#     printed), the pairs are made DUPLEX again (restart, below) when any got suspended, and
#     the suspend is retried with a larger margin (250 ms, 500 ms, 1 s, 2 s); every attempt
#     is printed, the figures are the consistent one's.
#   - Host write stall: on the 10,000-pair group, a separate process (the "application
#     host") runs a QD1 writer of 4 KiB (at most one write per 2 ms) on one pair per primary
#     controller while a suspend runs; stall = latency of every write that overlaps the
#     suspend call; its p99 is the figure; also shown: p99 of the writes overlapping [T, end
#     of the call] (the seal and commits, without the quiet margin), the max, and the same
#     writers' p99 before the suspend. A write refused as late (LateWrite) is reissued and
#     counted as one write with its whole latency.
#     Beside it, from the suspend record: the most host I/O one controller says it held
#     (`host_io_held_ms`: writes refused as late between seal and drain, or a freeze's
#     hold; the arm and seal commits run off its event loop and hold no host write).
#   - The naive way, side by side in the same run: 100 spare pairs suspended one request per
#     pair, one at a time (`Channel.pair_op(SUSPEND, (item,), at_ns=T)`), each with its own
#     T = now + max(4 round trips, 2 ms): a controller refuses a T in the past and a suspend
#     answers only after its T, so one shared T cannot serve requests sent one at a time.
#     Extrapolated linearly to 10,000; naive_speedup = that / the 10,000-pair group
#     suspend's whole call (margin included on both sides).
#   - The whole `python -m remcopy group suspend BENCH --host ... --json` timed from the
#     shell (process start, imports, catalog, the suspend, the operation log) on the
#     10,000-pair group, default margin first; also `python -m remcopy --help` alone.
#   Getting 10,000 pairs back to DUPLEX takes minutes with this controller (every pair's
#   copy completion is its own state-file commit on both sides), so before the shell
#   suspend, after a suspend that was not consistent, and in --quick for everything, the
#   controllers are (re)started with their pair tables written as DUPLEX (fresh zeroed
#   volumes are identical on both sides, so that is a true state, as if established before
#   a restart; a pair written since has change-map bits and the primary resyncs it).
#   Secondaries start before primaries (a primary resyncs at once after a restart).
#   --quick (under a minute): no establish/resume/terminate sizes; naive on 25 pairs; the
#   shell's 10,000-pair suspend twice, each with the group's default margin first: with the
#   writers running (the stall figures), then after a reset with nothing else running (the
#   suspend figures, from its JSON report, and the shell time, as in the full run).
#   - CPU (/proc/PID/schedstat of every controller, the command and the writers, sampled
#     every 10 ms): from T to the answer, the controllers' CPU above their rate before the
#     command chose T, plus the command's; divided by the machine's CPUs it is the least
#     wall time that work can take here. Also the command's wall and CPU until it chose T
#     and after the answers.
#   Every controller runs with ack_timeout_s = 600: with the default 5 s, establishing 1,250
#   pairs per controller at once fails the replication links (measured).
# Why: a group suspend of thousands of pairs in well under a second is the reason the system
# exists; the seed did one pair at a time, ~10 s each.
#
# Output: tables, then as the LAST line `RESULT {json}` (DESIGN.md section 7).
#   --pairs N (with --quick): a group of N pairs instead of 10,000 (N / 8 volumes of each
#   primary, same fleet); at most 130,968: the one host numbers its 262,144 devices in four
#   subchannel sets and the fleet gives each controller 64 LSSs of them (docs/groups.md).
#   With more than ~12,000 pairs the fleet's start, scan and group load take minutes, and the
#   controllers' memory is printed. RESULT keys stay the same ("suspend_10000_...");
#   its "pairs" says how many pairs they are for.
# Usage: python bench/groups.py [--quick] [--seed N] [--pairs N]
from __future__ import annotations

import argparse
import asyncio
import compileall
import functools
import json
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import remcopy
from _fleet import (
    CCAS_PER_LSS,
    HOST,
    HOST_SECRET,
    KIB,
    LSS_PER_CONTROLLER_MAX,
    CpuSampler,
    Fleet,
    Plan,
    available_mib,
    cca_of,
    fleet_running,
    guard,
    host_document,
    host_toml,
    load_average,
    lss_of,
    median,
    percentile,
    restart_fleet,
    spread,
    ssid_of,
    table,
)
from remcopy import aio
from remcopy.catalog import Catalog
from remcopy.configfile import parse_address
from remcopy.controller import statefile
from remcopy.controller.core import STATE_FILE_NAME, STATE_FORMAT, PairInfo
from remcopy.errors import LateWrite, RemcopyError, SuspendTimeInPast
from remcopy.groups.model import Group, GroupPair
from remcopy.groups.operations import (
    GroupReport,
    measure_round_trip,
    plan,
    run_operation,
    status,
    suspend,
)
from remcopy.groups.service import define_group, load_group
from remcopy.host.channel import Channel
from remcopy.host.definition import HostDefinition
from remcopy.host.engine import EngineLimits
from remcopy.host.service import add_host, host_definition, scan_host
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode, PairRole, PairState
from remcopy.wire.native import PairOp

T = TypeVar("T")

CONTROLLERS: Final = 8  # per side
GROUP_VOLUMES = 1250  # per primary controller: 8 x 1,250 = the 10,000-pair group (--pairs)
SPARE_VOLUMES: Final = 13  # per controller, outside the group: the naive way's pairs
VOLUME_BYTES: Final = 64 * KIB
TRACK_BYTES: Final = 64 * KIB
WRITE_BYTES: Final = 4 * KIB
WRITE_INTERVAL_S: Final = 0.002  # a writer issues at most one write per interval (QD1)
GROUP: Final = "BENCH"
SIZES_FULL: Final = (1000, 4096, 10000)
BIG = CONTROLLERS * GROUP_VOLUMES
# --pairs: a host numbers 262,144 devices (four subchannel sets) and the fleet gives each
# controller 64 LSSs of them (16,384 devices), spares included: the most one host can act on.
PAIRS_MAX: Final = CONTROLLERS * (LSS_PER_CONTROLLER_MAX * CCAS_PER_LSS - SPARE_VOLUMES)
NAIVE_PAIRS_FULL: Final = 100
NAIVE_PAIRS_QUICK: Final = 25
NAIVE_MARGIN_MIN_S: Final = 0.002
RETRY_MARGINS_S: Final = (0.25, 0.5, 1.0, 2.0)
STALL_BASELINE_S: Final = 0.5
IDLE_SAMPLE_S: Final = 2.0
STALL_AFTER_S: Final = 0.2
STATE_POLL_S: Final = 0.25
STATE_TIMEOUT_S: Final = 1800.0
ERROR_GRACE_S: Final = 30.0
ENGINE_TIMEOUT_S: Final = 300.0
CONTROLLER_SETTINGS: Final = {"ack_timeout_s": 600.0}
_LATE = re.compile(r"([0-9.]+) ms late")
# Targets (DESIGN.md section 8).
TARGET_BEYOND_MARGIN_S: Final = 0.100
TARGET_PER_PAIR_US: Final = 10.0
TARGET_CLI_S: Final = 1.0
TARGET_STALL_MS: Final = 5.0


def log_line(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = await call
    return value, time.perf_counter() - started


# The application host's writers: a separate process, so the management host's event loop
# does not share its time slices with them...


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterTarget:
    endpoint: str
    device: int


async def _writer_main(targets: list[WriterTarget], seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    channels = {
        t.endpoint: Channel(parse_address(t.endpoint), name=HOST, secret=HOST_SECRET)
        for t in targets
    }
    for ch in channels.values():
        await ch.connect()
    stop = asyncio.Event()
    samples: list[tuple[int, int, int]] = []  # start ns, end ns, late refusals
    errors: list[str] = []
    data = bytes(WRITE_BYTES)

    async def one(target: WriterTarget) -> None:
        ch = channels[target.endpoint]
        slots = VOLUME_BYTES // WRITE_BYTES
        while not stop.is_set():
            offset = rng.randrange(slots) * WRITE_BYTES
            begun = time.time_ns()
            late = 0
            while True:
                try:
                    await ch.write(target.device, offset, data)
                    break
                except LateWrite:
                    late += 1
                except RemcopyError as exc:
                    errors.append(f"{target.device:04X}: {type(exc).__name__}: {exc}")
                    return
            ended = time.time_ns()
            samples.append((begun, ended, late))
            await asyncio.sleep(max(0.0, WRITE_INTERVAL_S - (ended - begun) / 1e9))

    async def until_stdin_closes() -> None:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        stop.set()

    print("ready", flush=True)
    await asyncio.gather(until_stdin_closes(), *(one(t) for t in targets))
    for ch in channels.values():
        await ch.close()
    return {"samples": samples, "errors": errors}


def writer_entry(spec: str) -> None:
    doc = json.loads(spec)
    targets = [WriterTarget(endpoint=t["endpoint"], device=t["device"]) for t in doc["targets"]]
    result = aio.run(_writer_main(targets, int(doc["seed"])))
    # A file, not stdout: a large write to the pipe at exit came out truncated.
    Path(doc["out"]).write_text(json.dumps(result))


@dataclass(slots=True, kw_only=True)
class Stall:
    p99_from_t_ms: float
    """Only the writes that overlap [T, the call's end]: seal, commit, answer."""
    samples_from_t: int
    p99_ms: float
    p50_ms: float
    max_ms: float
    samples: int
    baseline_p99_ms: float
    late_refusals: int
    writers: int


class Writers:
    """The writer process: started before the suspend, stopped (stdin closed) after it."""

    def __init__(self, targets: list[WriterTarget], seed: int, folder: Path) -> None:
        self.targets = targets
        self.out = folder / f"writers-{seed}-{time.time_ns()}.json"
        self.spec = json.dumps(
            {
                "targets": [{"endpoint": t.endpoint, "device": t.device} for t in targets],
                "seed": seed,
                "out": str(self.out),
            }
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--writer",
            self.spec,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"writer process did not start: {line!r}")
        await asyncio.sleep(STALL_BASELINE_S)

    async def stop(self, window: tuple[int, int, int]) -> Stall:
        """Stop the writers; the stall over the window (call start, T, call end: wall-clock
        ns): every write that overlaps the call, and apart those that overlap [T, end]."""
        await asyncio.sleep(STALL_AFTER_S)
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.communicate(), 60)
        if self.process.returncode != 0:
            raise RuntimeError(f"writer process exited with {self.process.returncode}")
        result = json.loads(self.out.read_text())
        if result["errors"]:
            raise RuntimeError(f"writers failed: {result['errors'][:3]}")
        samples = [(int(a), int(b), int(c)) for a, b, c in result["samples"]]
        start, at_ns, end = window
        during = [(b - a) / 1e6 for a, b, _ in samples if a < end and b > start]
        from_t = [(b - a) / 1e6 for a, b, _ in samples if a < end and b > at_ns]
        before = [(b - a) / 1e6 for a, b, _ in samples if b <= start]
        return Stall(
            p99_from_t_ms=percentile(from_t, 0.99),
            samples_from_t=len(from_t),
            p99_ms=percentile(during, 0.99),
            p50_ms=percentile(during, 0.50),
            max_ms=max(during, default=0.0),
            samples=len(during),
            baseline_p99_ms=percentile(before, 0.99),
            late_refusals=sum(c for _, _, c in samples),
            writers=len(self.targets),
        )

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


# The world: fleet, pair tables, catalog, host, scan, group...


def plans() -> list[Plan]:
    volumes = GROUP_VOLUMES + SPARE_VOLUMES
    return [
        Plan(
            index=side * CONTROLLERS + c,
            name=f"{'pri' if side == 0 else 'sec'}{c}",
            volumes=volumes,
            volser_prefix=f"{'PS'[side]}{c:X}",
            size_bytes=VOLUME_BYTES,
            peer=(1 - side) * CONTROLLERS + c,
        )
        for side in (0, 1)
        for c in range(CONTROLLERS)
    ]


def write_duplex_tables(root: Path, all_plans: list[Plan], groups: list[Group]) -> None:
    """Write every controller's pair table: each pair of `groups` DUPLEX (sync, consistency
    group), every other volume SIMPLEX. Only while the controllers are stopped.

    Fresh volumes are zeros on both sides, so DUPLEX is a true state; a pair that was written
    since has its change-map bits, and the controller resyncs it after the start."""
    by_name = {p.name: p for p in all_plans}
    tables: dict[str, dict[str, Any]] = {p.name: {} for p in all_plans}
    for group in groups:
        for pair in group.pairs:
            primary = by_name[pair.primary_controller]
            secondary = by_name[pair.secondary_controller]
            for me, other, role, mine, theirs in (
                (primary, secondary, PairRole.PRIMARY, pair.primary, pair.secondary),
                (secondary, primary, PairRole.SECONDARY, pair.secondary, pair.primary),
            ):
                tables[me.name][f"{mine.device_key:04X}"] = PairInfo(
                    state=PairState.DUPLEX,
                    role=role,
                    mode=CopyMode.SYNC,
                    peer_serial=other.serial,
                    peer_device=theirs.device_key,
                    consistency_group=True,
                ).to_json()
    for p in all_plans:
        folder = root / p.name
        folder.mkdir(parents=True, exist_ok=True)
        statefile.write_atomic(
            folder / STATE_FILE_NAME,
            {"format": STATE_FORMAT, "serial": p.serial, "devices": tables[p.name]},
        )


def _address(p: Plan, k: int) -> HardwareAddress:
    return HardwareAddress.of(
        serial=p.serial, ssid=ssid_of(p.index, k), lss=lss_of(k), cca=cca_of(k)
    )


def pairs_of(all_plans: list[Plan], volumes: range, name: str) -> Group:
    """Volume k of primary c with volume k of secondary c, for every k in `volumes`."""
    pairs = []
    for primary in all_plans[:CONTROLLERS]:
        secondary = all_plans[CONTROLLERS + primary.index]
        for k in volumes:
            pairs.append(
                GroupPair(
                    volser=primary.volser(k),
                    primary=_address(primary, k),
                    secondary=_address(secondary, k),
                    primary_controller=primary.name,
                    secondary_controller=secondary.name,
                )
            )
    return Group(name=name, pairs=tuple(pairs))


@dataclass(slots=True, kw_only=True)
class Setup:
    catalog_path: Path
    group: Group
    definition: HostDefinition
    scan_s: float
    define_s: float
    load_s: float


async def build_catalog(root: Path, fleet: Fleet) -> Setup:
    """Host added, scanned, the 10,000-pair group defined from a CSV of volsers and loaded."""
    host_file = root / "host.toml"
    host_file.write_text(host_toml(host_document(fleet)))
    csv_lines = [
        f"{p.volser(k)},{fleet.plans[CONTROLLERS + p.index].volser(k)}"
        for p in fleet.plans[:CONTROLLERS]
        for k in range(GROUP_VOLUMES)
    ]
    (root / "pairs.csv").write_text("\n".join(csv_lines) + "\n")
    group_file = root / "group.toml"
    group_file.write_text(
        f'[group]\nname = "{GROUP}"\nmode = "sync"\nconsistency_group = true\n'
        'margin_ms = 50\ncsv = "pairs.csv"\n'
    )
    path = root / "catalog.db"
    catalog = Catalog.open(path)
    try:
        add_host(catalog, host_file)
        (result, scan_id), scan_s = await timed(scan_host(catalog, HOST))
        if result.failures or scan_id is None:
            raise RuntimeError(f"scan failed: {result.failures[:3]}")
        started = time.perf_counter()
        count = define_group(catalog, group_file)
        define_s = time.perf_counter() - started
        if count != BIG:
            raise RuntimeError(f"group defined with {count} pairs")
        started = time.perf_counter()
        group, missing = load_group(catalog, GROUP, HOST)
        load_s = time.perf_counter() - started
        if missing:
            raise RuntimeError(f"host cannot see {len(missing)} devices: {missing[:3]}")
        definition = host_definition(catalog, HOST)
    finally:
        catalog.close()
    return Setup(
        catalog_path=path,
        group=group,
        definition=definition,
        scan_s=scan_s,
        define_s=define_s,
        load_s=load_s,
    )


def subset(group: Group, size: int, rng: random.Random) -> Group:
    """`size` pairs spread evenly over the primary controllers, random volumes on each."""
    if size == len(group.pairs):
        return group
    by_controller: dict[str, list[GroupPair]] = {}
    for pair in group.pairs:
        by_controller.setdefault(pair.primary_controller, []).append(pair)
    names = sorted(by_controller)
    counts = spread({i: len(by_controller[n]) for i, n in enumerate(names)}, size)
    chosen: list[GroupPair] = []
    for i, name in enumerate(names):
        chosen += rng.sample(by_controller[name], counts[i])
    return Group(name=group.name, options=group.options, pairs=tuple(chosen))


@dataclass
class World:
    """The running fleet and the management host's session to it."""

    root: Path
    fleet: Fleet
    definition: HostDefinition
    session: HostSession
    restarts: list[float] = field(default_factory=list)

    async def reset(self, duplex: list[Group]) -> None:
        """Restart every controller with exactly `duplex`'s pairs DUPLEX; wait until they are."""
        await self.session.close()
        seconds = await restart_fleet(
            self.fleet, lambda: write_duplex_tables(self.root, self.fleet.plans, duplex)
        )
        self.restarts.append(seconds)
        self.session = new_session(self.definition)
        for group in duplex:
            await wait_duplex(self.session, group)
        log_line(
            f"restarted with {sum(len(g.pairs) for g in duplex)} pairs DUPLEX in {seconds:.1f} s"
        )

    def endpoint(self, controller: str) -> str:
        return next(
            self.fleet.procs[p.index].endpoint for p in self.fleet.plans if p.name == controller
        )


def new_session(definition: HostDefinition) -> HostSession:
    return HostSession(definition, limits=EngineLimits(timeout_s=ENGINE_TIMEOUT_S))


# Operations, checked...


def checked(report: GroupReport, what: str) -> GroupReport:
    if report.failed:
        first = report.failed[0]
        raise RuntimeError(
            f"{what}: {len(report.failed)} pairs failed; first {first.pair.name}: "
            f"{first.state.name} {first.message}"
        )
    return report


async def pair_ops(session: HostSession, controllers: list[str]) -> dict[str, int]:
    """Each controller's count of pair operations received from hosts (its own counter)."""
    docs = await asyncio.gather(*(session.channels[c].status() for c in controllers))
    return {c: int(d["counters"]["pair_ops"]) for c, d in zip(controllers, docs, strict=True)}


async def counted_since(world: World, before: dict[str, int]) -> list[int]:
    """Pair operations each controller of `before` counted since then."""
    after = await pair_ops(world.session, sorted(before))
    return sorted(after[c] - before[c] for c in before)


def primaries_of(group: Group) -> list[str]:
    return sorted({p.primary_controller for p in group.pairs})


def held_ms(seal: dict[str, dict[str, Any]]) -> float:
    """The longest a controller held (refused as late, or held for a freeze) host writes
    around its seal, from the suspend record."""
    return max((float(d.get("host_io_held_ms", 0.0)) for d in seal.values()), default=0.0)


async def secondary_states(session: HostSession, group: Group) -> dict[str, int]:
    """Counts by state of the group's secondaries, asked at their controllers."""
    by_controller: dict[str, list[int]] = {}
    for pair in group.pairs:
        by_controller.setdefault(pair.secondary_controller, []).append(pair.secondary.device_key)
    replies = await asyncio.gather(
        *(session.channels[c].query(tuple(keys)) for c, keys in by_controller.items())
    )
    counts: dict[str, int] = {}
    for reply in replies:
        for s in reply:
            counts[s.state.name] = counts.get(s.state.name, 0) + 1
    return counts


async def wait_duplex(session: HostSession, group: Group) -> float:
    """Poll until every pair is DUPLEX with no changed track at its primary and DUPLEX at its
    secondary (a secondary follows its primary's copy completions later); seconds. A pair
    may pass through SUSPENDED_ERROR (a restart resyncs a written pair that way); one that
    stays there longer than ERROR_GRACE_S fails the run."""
    started = time.perf_counter()
    n = len(group.pairs)
    errors_since: float | None = None
    while True:
        statuses = await status(session, group)
        bad = [s for s in statuses if s.error or s.state is PairState.SUSPENDED_ERROR]
        if not bad:
            errors_since = None
        elif errors_since is None:
            errors_since = time.perf_counter()
        elif time.perf_counter() - errors_since > ERROR_GRACE_S:
            raise RuntimeError(f"{len(bad)} pairs in error; first: {bad[0]}")
        primaries_done = all(s.state is PairState.DUPLEX and s.dirty_tracks == 0 for s in statuses)
        if primaries_done and (await secondary_states(session, group)).get("DUPLEX", 0) == n:
            return time.perf_counter() - started
        if time.perf_counter() - started > STATE_TIMEOUT_S:
            counts: dict[str, int] = {}
            for s in statuses:
                counts[s.state.name] = counts.get(s.state.name, 0) + 1
            raise RuntimeError(f"not all DUPLEX after {STATE_TIMEOUT_S} s: {counts}")
        await asyncio.sleep(STATE_POLL_S)


async def status_median(session: HostSession, group: Group) -> float:
    runs = []
    for _ in range(3):
        statuses, elapsed = await timed(status(session, group))
        if len(statuses) != len(group.pairs) or any(s.error for s in statuses):
            raise RuntimeError("status: a pair was not reported")
        runs.append(elapsed)
    return median(runs)


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One try of a group suspend: the margin floor asked for (None: the group's default)."""

    margin_s: float | None
    consistent: bool
    late_ms: float = 0.0
    """The most a controller said T had passed by when the request reached it."""
    suspended: int = 0
    refused: int = 0

    def describe(self) -> str:
        floor = "default" if self.margin_s is None else f"{self.margin_s * 1e3:.0f} ms"
        if self.consistent:
            return f"margin {floor}: consistent"
        return (
            f"margin {floor}: NOT consistent: {self.refused} pairs refused (T passed by up to "
            f"{self.late_ms:.1f} ms when the request arrived), {self.suspended} suspended"
        )


def attempt_of(
    margin_s: float | None, consistent: bool, failures: list[tuple[str, str]]
) -> Attempt:
    """failures: (state name, message) of every pair not suspended at T."""
    late = [float(m.group(1)) for _, msg in failures if (m := _LATE.search(msg))]
    return Attempt(
        margin_s=margin_s,
        consistent=consistent,
        late_ms=max(late, default=0.0),
        refused=len(failures),
    )


def seal_lag_ms(seal: dict[str, dict[str, Any]]) -> float:
    """How long after T the slowest controller sealed (its timer fired and it stopped
    mirroring), from the per-controller seal record of a suspend report."""
    return max(((int(d["sealed_ns"]) - int(d["at_ns"])) / 1e6 for d in seal.values()), default=0.0)


@dataclass(slots=True, kw_only=True)
class Suspended:
    report: GroupReport
    elapsed_s: float
    attempts: list[Attempt]
    stall: Stall | None = None
    counted: list[int] = field(default_factory=list)
    """Pair operations each primary controller counted during the suspend call."""


async def suspend_consistent(
    world: World,
    group: Group,
    *,
    first_margin_s: float | None,
    duplex_after_reset: list[Group],
    writers: list[WriterTarget] | None = None,
    seed: int = 0,
) -> Suspended:
    """Suspend the group; if it is not consistent at T (e.g. a controller got the request
    after T), reset the pairs (restart, DUPLEX) and try again with a larger margin."""
    margins = [first_margin_s, *(m for m in RETRY_MARGINS_S if m > (first_margin_s or 0.05))]
    attempts: list[Attempt] = []
    for margin_s in margins:
        load = Writers(writers, seed, world.root) if writers else None
        try:
            if load is not None:
                await load.start()
            before = await pair_ops(world.session, primaries_of(group))
            window_start = time.time_ns()
            report, elapsed = await timed(suspend(world.session, group, margin_s=margin_s))
            window = (window_start, report.at_ns, time.time_ns())
            after = await pair_ops(world.session, primaries_of(group))
            stall = await load.stop(window) if load is not None else None
        finally:
            if load is not None:
                load.kill()
        failures = [
            (p.state.name, p.message) for p in report.pairs if not p.ok or p.at_ns != report.at_ns
        ]
        attempt = attempt_of(margin_s, report.consistent, failures)
        attempt.suspended = sum(1 for p in report.pairs if p.ok and p.state is PairState.SUSPENDED)
        attempts.append(attempt)
        log_line(f"suspend of {len(group.pairs)}: {attempt.describe()} ({elapsed:.3f} s)")
        if report.consistent:
            return Suspended(
                report=report,
                elapsed_s=elapsed,
                attempts=attempts,
                stall=stall,
                counted=sorted(after[c] - before[c] for c in after),
            )
        if attempt.suspended or attempt.refused != len(group.pairs):
            await world.reset(duplex_after_reset)
    raise RuntimeError(f"suspend of {len(group.pairs)} never consistent: {attempts}")


@dataclass(slots=True, kw_only=True)
class SizeResult:
    pairs: int
    establish_s: float = 0.0
    to_duplex_s: float = 0.0
    status_s: float = 0.0
    suspend_s: float = 0.0
    margin_s: float = 0.0
    seal_lag_ms: float = 0.0
    resume_s: float = 0.0
    resume_to_duplex_s: float = 0.0
    terminate_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    requests: dict[str, list[int]] = field(default_factory=dict)
    """Operation -> the pair operations each primary controller counted during it."""

    @property
    def beyond_margin_s(self) -> float:
        return self.suspend_s - self.margin_s


async def one_size(world: World, group: Group, spares: Group, *, last: bool) -> SizeResult:
    """Establish, status, suspend, resume (and terminate unless `last`) on fresh pairs."""
    n = len(group.pairs)
    out = SizeResult(pairs=n)
    before = await pair_ops(world.session, primaries_of(group))
    report, out.establish_s = await timed(run_operation(world.session, group, PairOp.ESTABLISH))
    checked(report, f"establish of {n}")
    out.requests["establish"] = await counted_since(world, before)
    out.to_duplex_s = await wait_duplex(world.session, group)
    log_line(f"{n}: establish {out.establish_s:.3f} s, DUPLEX after {out.to_duplex_s:.1f} s")
    out.status_s = await status_median(world.session, group)
    done = await suspend_consistent(
        world, group, first_margin_s=None, duplex_after_reset=[group, spares]
    )
    out.suspend_s, out.margin_s, out.attempts = done.elapsed_s, done.report.margin_s, done.attempts
    out.seal_lag_ms = seal_lag_ms(done.report.seal)
    out.requests["suspend"] = done.counted
    if any(s.dirty_tracks for s in await status(world.session, group)):
        raise RuntimeError("changed tracks after a quiet suspend")
    before = await pair_ops(world.session, primaries_of(group))
    report, out.resume_s = await timed(run_operation(world.session, group, PairOp.RESUME))
    checked(report, f"resume of {n}")
    out.requests["resume"] = await counted_since(world, before)
    out.resume_to_duplex_s = await wait_duplex(world.session, group)
    log_line(
        f"{n}: suspend {out.suspend_s:.3f} s (margin {out.margin_s:.3f}), resume "
        f"{out.resume_s:.3f} s, DUPLEX after {out.resume_to_duplex_s:.1f} s"
    )
    if not last:
        before = await pair_ops(world.session, primaries_of(group))
        report, out.terminate_s = await timed(run_operation(world.session, group, PairOp.TERMINATE))
        checked(report, f"terminate of {n}")
        out.requests["terminate"] = await counted_since(world, before)
    return out


def writer_targets(world: World, group: Group) -> list[WriterTarget]:
    """One pair of the group on each primary controller."""
    targets: dict[str, WriterTarget] = {}
    for pair in group.pairs:
        if pair.primary_controller not in targets:
            targets[pair.primary_controller] = WriterTarget(
                endpoint=world.endpoint(pair.primary_controller), device=pair.primary.device_key
            )
    return list(targets.values())


@dataclass(slots=True, kw_only=True)
class Naive:
    pairs: int
    elapsed_s: float
    margin_s: float
    """The last margin used (doubled after each request that arrived after its T)."""
    late: int = 0
    """Requests refused because they arrived after their T, asked again."""

    @property
    def per_pair_s(self) -> float:
        return self.elapsed_s / self.pairs


async def naive_round(session: HostSession, spares: Group, count: int, rng: random.Random) -> Naive:
    """`count` spare pairs suspended one request per pair, one at a time, each its own T."""
    sample = Group(name=spares.name, pairs=tuple(rng.sample(spares.pairs, count)))
    batches, refused = plan(sample, PairOp.SUSPEND)
    if refused:
        raise RuntimeError("naive: a pair has no path")
    items = [(b.controller, item) for b in batches for item in b.items]
    rng.shuffle(items)
    round_trip_s = await measure_round_trip(session, [b.controller for b in batches])
    margin_s = max(NAIVE_MARGIN_MIN_S, 4 * round_trip_s)
    started = time.perf_counter()
    late = 0
    for controller, item in items:
        while True:
            at_ns = time.time_ns() + int(margin_s * 1e9)
            try:
                reply = await session.channels[controller].pair_op(
                    PairOp.SUSPEND, (item,), at_ns=at_ns
                )
                break
            except SuspendTimeInPast:
                # The request reached the controller after its T (a loaded machine): asked
                # again with twice the margin, as a careful operator would; the time counts.
                late += 1
                margin_s *= 2
        result = reply.results[0]
        if result.code or result.state is not PairState.SUSPENDED or result.at_ns != at_ns:
            raise RuntimeError(f"naive suspend of {item.device:04X}: {result}")
    elapsed_s = time.perf_counter() - started
    return Naive(pairs=len(items), elapsed_s=elapsed_s, margin_s=margin_s, late=late)


# The shell...


@dataclass(slots=True, kw_only=True)
class Cli:
    wall_s: float
    reported_s: float
    margin_s: float
    requests: list[int]
    startup_s: float
    attempts: list[Attempt]
    seal_lag_ms: float = 0.0
    held_ms: float = 0.0
    stall: Stall | None = None
    counted: list[int] = field(default_factory=list)
    """Pair operations each primary controller counted during the command."""
    cpu: SuspendCpu | None = None

    @property
    def beyond_margin_s(self) -> float:
        return self.reported_s - self.margin_s


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendCpu:
    """CPU time around the shell suspend (/proc/PID/schedstat, sampled every 10 ms)."""

    beyond_margin_s: float
    """From T to the end of the call: the controllers' CPU above their rate with the writers
    alone before the command chose T, plus the command's own CPU."""
    busy_cpus: float
    """Every process watched (controllers, command, writers), CPU seconds per second from T to
    the end of the call: at the machine's CPU count it had no idle CPU."""
    baseline_cpus: float
    """The controllers' CPU seconds per second with the writers alone, before T was chosen."""
    cli_s: float
    """The whole command's CPU (process start to exit)."""
    per_pair_us: float
    parts: dict[str, float]
    """The CPU from T to the answer by who used it: primaries and secondaries (each above its
    own rate before T was chosen) and the command."""
    whole_s: float
    """The same from the moment the command chose T (the arm in the margin included)."""
    before_t: tuple[float, float]
    """The command from its start until it chose T: wall and CPU seconds (process start,
    imports, catalog, connections, round trips)."""
    after_answer: tuple[float, float]
    """The command from the last answer to its exit: wall and CPU seconds (the operation log,
    the report)."""

    @property
    def floor_s(self) -> float:
        """The least wall time that CPU takes on this machine's CPUs, all of them busy."""
        return self.beyond_margin_s / (os.cpu_count() or 1)


def cpu_of(
    sampler: CpuSampler,
    ready_ns: int,
    window: tuple[int, int, int],
    cli_ns: tuple[int, int],
    *,
    pairs: int,
) -> SuspendCpu:
    chosen_ns, at_ns, end_ns = window
    started_ns, exited_ns = cli_ns
    span_s = max(end_ns - at_ns, 1) / 1e9
    before_s = max(chosen_ns - ready_ns, 1) / 1e9
    baseline = sampler.between("controllers", ready_ns, chosen_ns) / before_s
    controllers = sampler.between("controllers", at_ns, end_ns)
    cli = sampler.between("cli", at_ns, end_ns)
    writers = sampler.between("writers", at_ns, end_ns)
    beyond = max(controllers - baseline * span_s, 0.0) + cli

    def above(name: str) -> float:
        rate = sampler.between(name, ready_ns, chosen_ns) / before_s
        return max(sampler.between(name, at_ns, end_ns) - rate * span_s, 0.0)

    return SuspendCpu(
        parts={"primaries": above("primaries"), "secondaries": above("secondaries"), "cli": cli},
        beyond_margin_s=beyond,
        busy_cpus=(controllers + cli + writers) / span_s,
        baseline_cpus=baseline,
        cli_s=sampler.at("cli", sampler.samples[-1][0]) if sampler.samples else 0.0,
        per_pair_us=beyond / pairs * 1e6 if pairs else 0.0,
        whole_s=max(
            sampler.between("controllers", chosen_ns, end_ns)
            - baseline * (end_ns - chosen_ns) / 1e9,
            0.0,
        )
        + sampler.between("cli", chosen_ns, end_ns),
        before_t=((chosen_ns - started_ns) / 1e9, sampler.between("cli", started_ns, chosen_ns)),
        after_answer=((exited_ns - end_ns) / 1e9, sampler.between("cli", end_ns, exited_ns)),
    )


def compile_package() -> None:
    """Compile remcopy's modules to bytecode, as installing it does (pip compiles at install):
    run from a source tree with PYTHONDONTWRITEBYTECODE=1, every command compiled every
    module it imports again (0.9 s of the shell suspend, measured), which no install pays."""
    compileall.compile_dir(Path(remcopy.__file__).parent, quiet=1)


async def run_cli(
    *args: str, on_start: Callable[[int], None] | None = None
) -> tuple[float, int, str, str]:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "remcopy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, CI="1"),
    )
    if on_start is not None:
        on_start(proc.pid)
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    return elapsed, proc.returncode or 0, out.decode(), err.decode()


async def cli_round(
    world: World,
    catalog_path: Path,
    group: Group,
    *,
    writers: bool,
    seed: int,
) -> Cli:
    """`remcopy group suspend BENCH` from the shell, the group's default margin first, retried
    with a larger --margin-ms (after a reset) when it is not consistent at T; optionally with
    the writers running."""
    compile_package()
    startups = [(await run_cli("--help"))[0] for _ in range(3)]
    attempts: list[Attempt] = []
    for margin_s in (None, *RETRY_MARGINS_S):
        args = ["group", "suspend", GROUP, "--host", HOST, "--catalog", str(catalog_path)]
        args += ["--json"] + ([] if margin_s is None else ["--margin-ms", f"{margin_s * 1e3:g}"])
        load = Writers(writer_targets(world, group), seed, world.root) if writers else None
        sampler = CpuSampler()
        watch_cli = functools.partial(sampler.watch, "cli")
        for pid in world.fleet.pids():
            sampler.watch("controllers", pid)
        for side, pids in world.fleet.pids_by_side().items():
            for pid in pids:
                sampler.watch(side, pid)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(sampler.run())
                try:
                    if load is not None:
                        await load.start()
                        assert load.process is not None
                        sampler.watch("writers", load.process.pid)
                    ready_ns = time.time_ns()
                    before = await pair_ops(world.session, primaries_of(group))
                    wall, code, out, err = await run_cli(*args, on_start=watch_cli)
                    exited_ns = time.time_ns()
                    after = await pair_ops(world.session, primaries_of(group))
                finally:
                    sampler.stop()
            try:
                doc = json.loads(out) if out.strip().startswith("{") else None
            except json.JSONDecodeError as exc:
                # Say everything that tells a cut document from a mixed one: the exit code,
                # the length, the parser's place, and stderr.
                raise RuntimeError(
                    f"remcopy group suspend --json: not one JSON document ({exc}; "
                    f"{len(out)} characters, exit {code}): {err[-2000:]}"
                ) from exc
            if doc is None or "error" in doc:  # an error document: the command failed early
                raise RuntimeError(f"remcopy group suspend exited {code}: {err[-2000:]}")
            chosen_ns = int(doc["at_ns"] - doc["margin_s"] * 1e9)
            window = (chosen_ns, int(doc["at_ns"]), chosen_ns + int(doc["elapsed_s"] * 1e9))
            cli_ns = (exited_ns - int(wall * 1e9), exited_ns)
            cpu = cpu_of(sampler, ready_ns, window, cli_ns, pairs=int(doc["pairs"]))
            stall = await load.stop(window) if load is not None else None
        finally:
            if load is not None:
                load.kill()
        failures = [(f["state"], f["message"]) for f in doc["failures"]]
        attempt = attempt_of(margin_s, bool(doc["consistent"]), failures)
        attempt.suspended = int(doc["counts"].get("SUSPENDED", 0))
        attempts.append(attempt)
        log_line(f"cli suspend: {attempt.describe()} ({wall:.2f} s, exit {code})")
        if code == 0 and doc["consistent"] and doc["pairs"] == BIG:
            return Cli(
                wall_s=wall,
                reported_s=float(doc["elapsed_s"]),
                margin_s=float(doc["margin_s"]),
                requests=sorted(doc["requests_per_controller"].values()),
                startup_s=median(startups),
                attempts=attempts,
                seal_lag_ms=seal_lag_ms(doc["seal"]),
                held_ms=held_ms(doc["seal"]),
                stall=stall,
                counted=sorted(after[c] - before[c] for c in after),
                cpu=cpu,
            )
        if attempt.suspended or attempt.refused != BIG:
            await world.reset([group])
    raise RuntimeError(f"CLI suspend never consistent: {attempts}")


# The run...


@dataclass(slots=True, kw_only=True)
class Run:
    sizes: list[SizeResult] = field(default_factory=list)
    big_status_s: float = 0.0
    api: Suspended | None = None
    """The 10,000-pair API suspend with the writers (full run)."""
    naive: Naive | None = None
    cli: Cli | None = None
    """The shell suspend with no writers running."""
    cli_writers: Cli | None = None
    """--quick: the shell suspend again with the writers running (the stall figures)."""
    setup: Setup | None = None
    start_s: float = 0.0
    restarts: list[float] = field(default_factory=list)
    rss_mib: float = 0.0
    idle_cpus: float = 0.0


async def idle_cpus(fleet: Fleet) -> float:
    """The controllers' CPU seconds per second with nothing asked of them (every pair DUPLEX,
    no host I/O): what their own timers cost."""
    sampler = CpuSampler(every_s=IDLE_SAMPLE_S)
    for pid in fleet.pids():
        sampler.watch("controllers", pid)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(sampler.run())
        await asyncio.sleep(IDLE_SAMPLE_S)  # the window's length, not a synchronization
        sampler.stop()
    first, last = sampler.samples[0][0], sampler.samples[-1][0]
    return sampler.between("controllers", first, last) / ((last - first) / 1e9)


async def run(root: Path, quick: bool, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    mem_before = available_mib()
    began = time.perf_counter()
    out = Run()
    all_plans = plans()
    spares = pairs_of(all_plans, range(GROUP_VOLUMES, GROUP_VOLUMES + SPARE_VOLUMES), "SPARES")
    everything = pairs_of(all_plans, range(GROUP_VOLUMES), GROUP)
    write_duplex_tables(root, all_plans, [everything, spares] if quick else [spares])
    async with fleet_running(
        root, all_plans, track_size_bytes=TRACK_BYTES, settings=CONTROLLER_SETTINGS
    ) as fleet:
        out.start_s = fleet.start_s
        log_line(
            f"fleet: {len(all_plans)} controllers x {all_plans[0].volumes} volumes started in "
            f"{fleet.start_s:.1f} s; RSS {fleet.rss_mib():.0f} MiB"
        )
        setup = out.setup = await build_catalog(root, fleet)
        log_line(
            f"catalog: scan of {2 * CONTROLLERS * all_plans[0].volumes} devices "
            f"{setup.scan_s:.2f} s, define {setup.define_s:.2f} s, load {setup.load_s:.2f} s"
        )
        group = setup.group
        world = World(
            root=root,
            fleet=fleet,
            definition=setup.definition,
            session=new_session(setup.definition),
        )
        try:
            await wait_duplex(world.session, spares)
            if quick:
                await wait_duplex(world.session, group)
            else:
                for size in SIZES_FULL:
                    chosen = subset(group, size, rng)
                    out.sizes.append(await one_size(world, chosen, spares, last=size == BIG))
            out.idle_cpus = await idle_cpus(fleet)
            out.big_status_s = await status_median(world.session, group)
            naive_pairs = NAIVE_PAIRS_QUICK if quick else NAIVE_PAIRS_FULL
            out.naive = await naive_round(world.session, spares, naive_pairs, rng)
            log_line(f"naive: {out.naive.pairs} pairs in {out.naive.elapsed_s:.2f} s")
            if not quick:
                out.api = await suspend_consistent(
                    world,
                    group,
                    first_margin_s=None,
                    duplex_after_reset=[group],
                    writers=writer_targets(world, group),
                    seed=rng.randrange(1 << 32),
                )
                await world.reset([group])
            # --quick: with the writers first (the stall), then, reset, alone.
            for writers in (True, False) if quick else (False,):
                done = await cli_round(
                    world, setup.catalog_path, group, writers=writers, seed=rng.randrange(1 << 32)
                )
                if writers:
                    out.cli_writers = done
                    await world.reset([group])
                else:
                    out.cli = done
        finally:
            await world.session.close()
        out.restarts = world.restarts
        out.rss_mib = fleet.rss_mib()
    return report(out, seed=seed, quick=quick, mem_before_mib=mem_before, began=began)


def report(
    out: Run, *, seed: int, quick: bool, mem_before_mib: float, began: float
) -> dict[str, Any]:
    naive, cli, setup = out.naive, out.cli, out.setup
    assert naive is not None and cli is not None and setup is not None
    quiet = next((r for r in out.sizes if r.pairs == BIG), None)
    if quiet is not None:  # full run: the quiet API suspend of the 10,000-pair stage
        big_s, big_margin_s, big_attempts = quiet.suspend_s, quiet.margin_s, quiet.attempts
        big_source = "API call, timed around operations.suspend"
    else:  # --quick: the shell suspend's own report (operate -> suspend -> run_operation)
        big_s, big_margin_s, big_attempts = cli.reported_s, cli.margin_s, cli.attempts
        big_source = "from the shell suspend's report (no writers)"
    big_beyond_s = big_s - big_margin_s
    loaded = out.cli_writers  # --quick: the shell suspend with the writers
    stall = out.api.stall if out.api is not None else loaded.stall if loaded else None
    assert stall is not None
    rows: list[tuple[object, ...]] = []
    for r in out.sizes:
        n = r.pairs
        rows += [
            (
                f"{n} establish (API call)",
                r.establish_s * 1e3,
                r.establish_s / n * 1e6,
                _req(r, "establish"),
            ),
            (
                f"{n}   ... until DUPLEX both sides",
                r.to_duplex_s * 1e3,
                r.to_duplex_s / n * 1e6,
                "",
            ),
            (f"{n} status (median of 3)", r.status_s * 1e3, r.status_s / n * 1e6, ""),
            (
                f"{n} suspend, whole call",
                r.suspend_s * 1e3,
                r.suspend_s / n * 1e6,
                _req(r, "suspend"),
            ),
            (f"{n}   ... margin", r.margin_s * 1e3, "", ""),
            (f"{n}   ... beyond margin", r.beyond_margin_s * 1e3, r.beyond_margin_s / n * 1e6, ""),
            (f"{n}   ... slowest seal after T", r.seal_lag_ms, "", ""),
            (
                f"{n} resume (no changed tracks)",
                r.resume_s * 1e3,
                r.resume_s / n * 1e6,
                _req(r, "resume"),
            ),
            (
                f"{n}   ... until DUPLEX both sides",
                r.resume_to_duplex_s * 1e3,
                r.resume_to_duplex_s / n * 1e6,
                "",
            ),
        ]
        if r.terminate_s:
            rows.append(
                (
                    f"{n} terminate",
                    r.terminate_s * 1e3,
                    r.terminate_s / n * 1e6,
                    _req(r, "terminate"),
                )
            )
    if quiet is None:
        rows.append(
            (
                f"{BIG} status (median of 3)",
                out.big_status_s * 1e3,
                out.big_status_s / BIG * 1e6,
                "",
            )
        )
    if out.api is not None:
        a = out.api
        rows += [
            (
                f"{BIG} suspend with {stall.writers} writers",
                a.elapsed_s * 1e3,
                a.elapsed_s / BIG * 1e6,
                ",".join(map(str, sorted(set(a.counted)))) + " (controller counters)",
            ),
            (f"{BIG}   ... margin", a.report.margin_s * 1e3, "", ""),
            (
                f"{BIG}   ... beyond margin",
                (a.elapsed_s - a.report.margin_s) * 1e3,
                (a.elapsed_s - a.report.margin_s) / BIG * 1e6,
                "",
            ),
            (f"{BIG}   ... slowest seal after T", seal_lag_ms(a.report.seal), "", ""),
        ]
    rows += shell_rows("", cli)
    if loaded is not None:
        rows += shell_rows(f" with {stall.writers} writers", loaded)
        rows.append((f"{BIG}   ... host I/O held (most of a controller)", loaded.held_ms, "", ""))
    print(
        table(
            f"group operations, {CONTROLLERS} primary + {CONTROLLERS} secondary controllers "
            "(API calls through one open HostSession)",
            ["what", "ms", "us/pair", "requests/controller"],
            rows,
        )
    )
    naive_big_s = naive.per_pair_s * BIG
    naive_speedup = naive_big_s / big_s
    print()
    print(
        table(
            f"side by side, {BIG:,} pairs",
            ["what", "ms", "note"],
            [
                (
                    "group suspend, one request per controller",
                    big_s * 1e3,
                    f"margin {big_margin_s * 1e3:.1f} ms; {big_source}",
                ),
                (
                    f"naive: {naive.pairs} pairs one at a time",
                    naive.elapsed_s * 1e3,
                    f"{naive.per_pair_s * 1e3:.2f} ms/pair, own T each, "
                    f"margin {naive.margin_s * 1e3:.1f} ms, {naive.late} asked again late",
                ),
                (
                    f"naive extrapolated to {BIG:,}",
                    naive_big_s * 1e3,
                    f"{naive_speedup:.1f}x the group suspend",
                ),
                (
                    "`remcopy group suspend` from the shell",
                    cli.wall_s * 1e3,
                    "process start, imports, catalog, suspend, log; no writers",
                ),
                *(
                    [
                        (
                            "`remcopy group suspend` from the shell",
                            loaded.wall_s * 1e3,
                            f"the same with {stall.writers} writers running",
                        )
                    ]
                    if loaded is not None
                    else []
                ),
                (
                    "`python -m remcopy --help`",
                    cli.startup_s * 1e3,
                    "process start + imports alone, median of 3",
                ),
                (
                    "host writes during the suspend",
                    stall.p99_ms,
                    f"p99 ms; p50 {stall.p50_ms:.2f}, max {stall.max_ms:.2f}; "
                    f"{stall.samples} writes by {stall.writers} QD1 writers",
                ),
                (
                    "host writes from T to the end of the call",
                    stall.p99_from_t_ms,
                    f"p99 ms over {stall.samples_from_t} writes",
                ),
                (
                    "host writes before the suspend",
                    stall.baseline_p99_ms,
                    f"p99 ms; {stall.late_refusals} late refusals reissued",
                ),
            ],
        )
    )
    every = [*out.sizes]
    requests = sorted(
        {v for r in every for vs in r.requests.values() for v in vs}
        | set(cli.counted)
        | (set(out.api.counted) if out.api is not None else set())
    )
    per_pair_us = big_beyond_s / BIG * 1e6
    print()
    print(
        table(
            "against the targets (DESIGN.md section 8)",
            ["figure", "measured", "target", "met"],
            [
                (
                    f"suspend {BIG:,} beyond margin (s)",
                    big_beyond_s,
                    TARGET_BEYOND_MARGIN_S,
                    big_beyond_s <= TARGET_BEYOND_MARGIN_S,
                ),
                (
                    "suspend per pair (us)",
                    per_pair_us,
                    TARGET_PER_PAIR_US,
                    per_pair_us <= TARGET_PER_PAIR_US,
                ),
                ("requests per controller", ",".join(map(str, requests)), "1", requests == [1]),
                (
                    f"`remcopy group suspend` {BIG:,} (s)",
                    cli.wall_s,
                    f"< {TARGET_CLI_S:g}",
                    cli.wall_s < TARGET_CLI_S,
                ),
                (
                    "host write stall p99 (ms)",
                    stall.p99_ms,
                    TARGET_STALL_MS,
                    stall.p99_ms <= TARGET_STALL_MS,
                ),
            ],
        )
    )
    print_cpu(cli, "no writers")
    if loaded is not None:
        print_cpu(loaded, f"{stall.writers} writers running")
    print("\nsuspend attempts (a retry follows a restart that makes the pairs DUPLEX again):")
    for label, attempts in [
        *((f"  {r.pairs} API", r.attempts) for r in out.sizes),
        *([(f"  {BIG} API + writers", out.api.attempts)] if out.api is not None else []),
        (f"  {BIG} shell", cli.attempts),
        *([(f"  {BIG} shell + writers", loaded.attempts)] if loaded is not None else []),
    ]:
        print(f"{label}: " + "; ".join(a.describe() for a in attempts))
    print(
        f"\nseed {seed}; quick {quick}; fleet start {out.start_s:.1f} s; restarts "
        f"{', '.join(f'{s:.1f}' for s in out.restarts) or 'none'} s; scan {setup.scan_s:.2f} s, "
        f"group define {setup.define_s:.2f} s, load {setup.load_s:.2f} s; whole run "
        f"{time.perf_counter() - began:.0f} s before cleanup; controllers' RSS "
        f"{out.rss_mib:.0f} MiB (available before {mem_before_mib:.0f} MiB); idle controllers "
        f"{out.idle_cpus:.3f} CPUs; "
        f"load average {load_average()}"
    )
    if quick:
        print(
            "quick: pairs made DUPLEX by writing the pair tables before the start (no "
            f"establish); the shell's {BIG:,}-pair suspend with the writers (stall figures), "
            f"then alone (suspend and shell figures); naive on {naive.pairs} pairs"
        )
    default_ok = (
        all(a.consistent for a in cli.attempts[:1]) if cli.attempts[0].margin_s is None else None
    )
    result: dict[str, Any] = {
        "pairs": BIG,  # the "_10000" keys hold the figures of this many pairs (--pairs)
        "suspend_10000_beyond_margin_s": round(big_beyond_s, 6),
        "suspend_per_pair_us": round(per_pair_us, 3),
        "requests_per_controller": requests[0] if len(requests) == 1 else requests,
        "cli_suspend_10000_s": round(cli.wall_s, 4),
        "stall_p99_ms": round(stall.p99_ms, 3),
        "status_10000_s": round(quiet.status_s if quiet is not None else out.big_status_s, 6),
        "naive_speedup": round(naive_speedup, 2),
        "suspend_10000_s": round(big_s, 6),
        "suspend_10000_margin_s": round(big_margin_s, 6),
        "suspend_10000_attempts": len(big_attempts),
        "suspend_10000_default_margin_late_ms": round(big_attempts[0].late_ms, 3)
        if big_attempts[0].margin_s is None and not big_attempts[0].consistent
        else 0.0,
        "cli_default_margin_consistent": default_ok,
        "cli_beyond_margin_s": round(cli.beyond_margin_s, 6),
        "cli_seal_lag_ms": round(cli.seal_lag_ms, 3),
        "cli_host_io_held_ms": round((loaded or cli).held_ms, 3),
        "cli_startup_s": round(cli.startup_s, 4),
        "naive_pairs": naive.pairs,
        "naive_per_pair_ms": round(naive.per_pair_s * 1e3, 3),
        "stall_samples": stall.samples,
        "stall_max_ms": round(stall.max_ms, 3),
        "stall_p99_from_t_ms": round(stall.p99_from_t_ms, 3),
        "stall_baseline_p99_ms": round(stall.baseline_p99_ms, 3),
        "fleet_start_s": round(out.start_s, 2),
        "fleet_idle_cpus": round(out.idle_cpus, 4),
        "restarts_s": [round(s, 2) for s in out.restarts],
        "seed": seed,
        "quick": quick,
    }
    result |= cpu_keys("cli", cli)
    if loaded is not None:
        result |= cpu_keys("cli_writers", loaded)
        result["cli_writers_suspend_10000_s"] = round(loaded.wall_s, 4)
        result["cli_writers_beyond_margin_s"] = round(loaded.beyond_margin_s, 6)
    if out.api is not None:
        result["suspend_10000_with_writers_beyond_margin_s"] = round(
            out.api.elapsed_s - out.api.report.margin_s, 6
        )
    for r in out.sizes:
        result[f"establish_{r.pairs}_s"] = round(r.establish_s, 6)
        result[f"establish_{r.pairs}_to_duplex_s"] = round(r.to_duplex_s, 3)
        result[f"suspend_{r.pairs}_beyond_margin_s"] = round(r.beyond_margin_s, 6)
        result[f"suspend_{r.pairs}_seal_lag_ms"] = round(r.seal_lag_ms, 3)
        result[f"resume_{r.pairs}_s"] = round(r.resume_s, 6)
        result[f"resume_{r.pairs}_to_duplex_s"] = round(r.resume_to_duplex_s, 3)
        result[f"status_{r.pairs}_s"] = round(r.status_s, 6)
    return result


def shell_rows(what: str, cli: Cli) -> list[tuple[object, ...]]:
    """The shell suspend's own report: the call, its margin, beyond it, the slowest seal."""
    return [
        (
            f"{BIG} suspend from the shell{what}: its report",
            cli.reported_s * 1e3,
            cli.reported_s / BIG * 1e6,
            ",".join(map(str, sorted(set(cli.counted)))) + " (controller counters)",
        ),
        (f"{BIG}   ... margin", cli.margin_s * 1e3, "", ""),
        (
            f"{BIG}   ... beyond margin",
            cli.beyond_margin_s * 1e3,
            cli.beyond_margin_s / BIG * 1e6,
            "",
        ),
        (f"{BIG}   ... slowest seal after T", cli.seal_lag_ms, "", ""),
    ]


def print_cpu(cli: Cli, what: str) -> None:
    if cli.cpu is None:
        return
    c = cli.cpu
    print()
    print(
        table(
            f"CPU of the shell suspend, {what} ({os.cpu_count()} CPUs on this machine)",
            ["what", "value", "note"],
            [
                (
                    "suspend CPU from T to the answer (s)",
                    c.beyond_margin_s,
                    f"{c.per_pair_us:.1f} us/pair: controllers above their rate before "
                    "the command chose T, plus the command",
                ),
                *(
                    (f"  ... {name} (s)", used, f"{used / BIG * 1e6:.1f} us/pair")
                    for name, used in c.parts.items()
                ),
                (
                    "the same from the moment T was chosen (s)",
                    c.whole_s,
                    f"{c.whole_s / BIG * 1e6:.1f} us/pair: the arm in the margin as well",
                ),
                (
                    "least wall time for that CPU (s)",
                    c.floor_s,
                    f"the CPU above on all {os.cpu_count()} CPUs at once",
                ),
                ("CPUs busy from T to the answer", c.busy_cpus, "controllers, command, writers"),
                ("controllers' CPUs before T was chosen", c.baseline_cpus, ""),
                ("the whole command's CPU (s)", c.cli_s, "process start to exit"),
                (
                    "the command until it chose T (s)",
                    c.before_t[0],
                    f"wall; CPU {c.before_t[1]:.3f} s",
                ),
                (
                    "the command after the answers (s)",
                    c.after_answer[0],
                    f"wall; CPU {c.after_answer[1]:.3f} s",
                ),
            ],
        )
    )


def cpu_keys(prefix: str, cli: Cli) -> dict[str, float]:
    c = cli.cpu
    if c is None:
        return {}
    return {
        f"{prefix}_suspend_cpu_beyond_margin_s": round(c.beyond_margin_s, 4),
        f"{prefix}_suspend_cpu_per_pair_us": round(c.per_pair_us, 2),
        f"{prefix}_suspend_cpu_whole_s": round(c.whole_s, 4),
        **{f"{prefix}_suspend_cpu_{k}_s": round(v, 4) for k, v in c.parts.items()},
        f"{prefix}_suspend_cpu_floor_s": round(c.floor_s, 4),
        f"{prefix}_busy_cpus_beyond_margin": round(c.busy_cpus, 2),
        f"{prefix}_baseline_cpus": round(c.baseline_cpus, 2),
        f"{prefix}_cpu_s": round(c.cli_s, 4),
        f"{prefix}_before_t_s": round(c.before_t[0], 4),
        f"{prefix}_before_t_cpu_s": round(c.before_t[1], 4),
        f"{prefix}_after_answer_s": round(c.after_answer[0], 4),
        f"{prefix}_after_answer_cpu_s": round(c.after_answer[1], 4),
    }


def _req(result: SizeResult, op: str) -> str:
    values = result.requests.get(op, [])
    return ",".join(str(v) for v in sorted(set(values))) + f" ({len(values)} controllers)"


def set_pairs(parser: argparse.ArgumentParser, pairs: int, *, quick: bool) -> None:
    """Size the group (--pairs): GROUP_VOLUMES per primary controller, BIG in all."""
    global GROUP_VOLUMES, BIG
    if not quick:
        parser.error("--pairs needs --quick (the full run's sizes are 1,000 / 4,096 / 10,000)")
    if pairs <= 0 or pairs % CONTROLLERS or pairs > PAIRS_MAX:
        parser.error(
            f"--pairs {pairs}: expected a multiple of {CONTROLLERS} from {CONTROLLERS} to "
            f"{PAIRS_MAX:,}: one host numbers 262,144 devices (four subchannel sets), and the "
            f"fleet gives each of its {2 * CONTROLLERS} controllers 64 LSSs of them (16,384 "
            f"devices, {SPARE_VOLUMES} spares included)"
        )
    GROUP_VOLUMES = pairs // CONTROLLERS
    BIG = pairs


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--writer":
        writer_entry(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description="Group operations benchmark (see the header of bench/groups.py)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="10,000-pair figures only, pairs DUPLEX at start"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--pairs",
        type=int,
        default=BIG,
        help=f"with --quick: the group's pairs, a multiple of {CONTROLLERS} up to "
        f"{PAIRS_MAX:,} (default {BIG:,})",
    )
    args = parser.parse_args()
    if args.pairs != BIG:
        set_pairs(parser, args.pairs, quick=args.quick)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"bench/groups.py seed={seed} quick={args.quick}", file=sys.stderr)
    result = guard("remcopy-bench-groups-", lambda root: run(root, args.quick, seed))
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
