# Shared parts of the fleet benchmarks (bench/scan.py, bench/groups.py).
#
# What it gives: many real controller processes on 127.0.0.1, each with its share of a
# large number of small sparse volumes spread over several LSSs (one LSS holds 256 CCAs),
# optionally peered one-to-one with a secondary controller; one host definition that reaches
# every volume of every controller (as a TOML file for `host add`, or parsed); the small tools
# both benchmarks time with (median, percentiles, a table printer, process memory); and
# `guard`, which makes sure every controller process started is stopped and the temp folder
# removed, also on an error, Ctrl-C or SIGTERM.
#
# Numbering (the same in every benchmark, so a device number tells where it is):
#   controller index c (0..15), volume k (0..count-1) on it:
#     LSS          = 0x10 + k // 256, CCA = k % 256
#     SSID         = 0x1000 + c * 0x40 + k // 256
#     device number on the host = (c * 64 + k // 256) << 8 | CCA   (c <= 15, k < 16,384):
#       controllers 0-3 in subchannel set 0 (4 hex digits), 4-7 in set 1, 8-11 in set 2,
#       12-15 in set 3 (5 hex digits, the set first: docs/hosts-and-scan.md)
#
# The ideas follow bench/_world.py (two sites, one volume each side); this module scales the
# same approach to thousands of volumes per controller and does not import from tests/.
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from remcopy import aio
from remcopy.controller.process import (
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
    write_private,
)
from remcopy.host.definition import HostDefinition, parse_host_definition
from remcopy.ids import device_number_text

T = TypeVar("T")

KIB: Final = 1024
MIB: Final = 1024 * KIB
HOST: Final = "benchhost"
HOST_SECRET: Final = "bench-fleet-host-secret"
LINK_SECRET: Final = "bench-fleet-link-secret"
CCAS_PER_LSS: Final = 256
LSS_BASE: Final = 0x10
# Device numbers leave room for 64 LSSs per controller: 16 x 64 x 256 = the host's 262,144
# (four subchannel sets).
LSS_PER_CONTROLLER_MAX: Final = 64
SERIAL_BASE: Final = 64000
CONTROLLERS_MAX: Final = 16
# Controllers started at once (each opens its volumes and change maps at start).
START_PARALLEL: Final = 4
# How long one controller may take to print its ready line. A controller with ~1,250
# volumes starts in a few seconds on an idle machine; on 2 cores shared with other work it
# took over 30 s (the process default), so the fleet waits longer: it still waits on the
# ready line, never on a clock.
READY_TIMEOUT_S: Final = 300.0
# Threads that create the volume files before the controllers start.
FORMAT_THREADS: Final = 8
REMOVE_THREADS: Final = 16

# Every controller process started by this process, so `guard` can kill what an
# interrupted event loop could not stop.
_STARTED: list[ControllerProcess] = []


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One controller of a fleet: its place in the numbering and its volumes."""

    index: int
    name: str
    volumes: int
    volser_prefix: str
    """Two characters; the volser is prefix + 4 hex digits of the volume number."""
    size_bytes: int
    peer: int | None = None
    """Index of the peer controller (replication link both ways), if any."""

    @property
    def serial(self) -> int:
        return SERIAL_BASE + self.index

    @property
    def lss_count(self) -> int:
        return (self.volumes + CCAS_PER_LSS - 1) // CCAS_PER_LSS

    def volser(self, k: int) -> str:
        return f"{self.volser_prefix}{k:04X}"


def lss_of(k: int) -> int:
    return LSS_BASE + k // CCAS_PER_LSS


def cca_of(k: int) -> int:
    return k % CCAS_PER_LSS


def device_key(k: int) -> int:
    """The volume's key on its controller (LSS << 8 | CCA)."""
    return lss_of(k) << 8 | cca_of(k)


def ssid_of(index: int, k: int) -> int:
    return 0x1000 + index * LSS_PER_CONTROLLER_MAX + k // CCAS_PER_LSS


def volume_of(lss: int, cca: int) -> int:
    """The volume number k behind an LSS and CCA (the inverse of lss_of, cca_of)."""
    return (lss - LSS_BASE) * CCAS_PER_LSS + cca


def device_number(index: int, k: int) -> int:
    """The host's device number for volume k of controller `index`."""
    return (index * LSS_PER_CONTROLLER_MAX + k // CCAS_PER_LSS) << 8 | cca_of(k)


def check_plans(plans: Sequence[Plan]) -> None:
    if len(plans) > CONTROLLERS_MAX:
        raise ValueError(f"at most {CONTROLLERS_MAX} controllers (got {len(plans)})")
    for plan in plans:
        if plan.lss_count > LSS_PER_CONTROLLER_MAX:
            raise ValueError(
                f"{plan.name}: {plan.volumes} volumes need {plan.lss_count} LSSs; "
                f"at most {LSS_PER_CONTROLLER_MAX}"
            )


def spec_of(
    plan: Plan,
    root: Path,
    ports: dict[int, int],
    by_index: dict[int, Plan],
    *,
    track_size_bytes: int,
    settings: dict[str, float] | None = None,
) -> ControllerSpec:
    peers = []
    if plan.peer is not None:
        other = by_index[plan.peer]
        peers.append(
            PeerSpec(
                name=other.name,
                serial=other.serial,
                address=f"127.0.0.1:{ports[other.index]}",
                secret=LINK_SECRET,
            )
        )
    return ControllerSpec(
        name=plan.name,
        serial=plan.serial,
        data_dir=root / plan.name,
        listen=f"127.0.0.1:{ports[plan.index]}",
        lss={LSS_BASE + j: ssid_of(plan.index, j * CCAS_PER_LSS) for j in range(plan.lss_count)},
        volumes=[
            VolumeSpec(
                lss=lss_of(k), cca=cca_of(k), volser=plan.volser(k), size_bytes=plan.size_bytes
            )
            for k in range(plan.volumes)
        ],
        hosts={HOST: HOST_SECRET},
        peers=peers,
        track_size_bytes=track_size_bytes,
        settings=dict(settings or {}),
    )


@dataclass
class Fleet:
    root: Path
    plans: list[Plan]
    procs: dict[int, ControllerProcess]
    start_s: float = 0.0
    format_s: float = 0.0
    """Creating the volume files before the first start."""

    def proc(self, index: int) -> ControllerProcess:
        return self.procs[index]

    def pids(self) -> list[int]:
        return [p.process.pid for p in self.procs.values() if p.process is not None]

    def pids_by_side(self) -> dict[str, list[int]]:
        """The controllers' pids, "primaries" and "secondaries" (unpeered ones are neither)."""
        out: dict[str, list[int]] = {"primaries": [], "secondaries": []}
        for plan in self.plans:
            proc = self.procs.get(plan.index)
            if proc is None or proc.process is None or plan.peer is None:
                continue
            out["primaries" if _is_primary(plan) else "secondaries"].append(proc.process.pid)
        return out

    def rss_mib(self) -> float:
        """Resident memory of every controller process, in MiB."""
        return sum(rss_kib(pid) for pid in self.pids()) / 1024


async def start_fleet(
    root: Path,
    plans: Sequence[Plan],
    *,
    track_size_bytes: int = 64 * KIB,
    settings: dict[str, float] | None = None,
) -> Fleet:
    """Write every config (ports fixed first, so peers can name each other), then start them,
    a few at a time; the fleet's processes are registered for `guard` before they start."""
    check_plans(plans)
    ports = {plan.index: free_port() for plan in plans}
    by_index = {plan.index: plan for plan in plans}
    procs: dict[int, ControllerProcess] = {}
    for plan in plans:
        spec = spec_of(
            plan, root, ports, by_index, track_size_bytes=track_size_bytes, settings=settings
        )
        proc = ControllerProcess(spec.write(root / f"{plan.name}.toml"))
        procs[plan.index] = proc
        _STARTED.append(proc)
    fleet = Fleet(root=root, plans=list(plans), procs=procs)
    started = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(
        None, format_volumes, root, plans, track_size_bytes
    )
    fleet.format_s = time.perf_counter() - started
    fleet.start_s = await _start_all(fleet)
    return fleet


def format_volumes(root: Path, plans: Sequence[Plan], track_size_bytes: int) -> int:
    """Create every missing volume file (sparse, labelled, no fsync: scratch volumes) where
    each controller's config puts it, so the controllers only open them at start (formatting
    ~1,250 volumes each, with two fsyncs per volume, is what made a loaded start slow).
    Returns the number created."""
    from remcopy.controller.volume import Volume
    from remcopy.ids import Volser

    jobs = []
    for plan in plans:
        folder = root / plan.name / "volumes"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(plan.volumes):
            path = folder / f"{plan.volser(k)}.vol"
            if not path.exists():
                jobs.append((path, plan.volser(k), plan.size_bytes // track_size_bytes))

    def create(job: tuple[Path, str, int]) -> None:
        path, volser, tracks = job
        Volume.create(
            path,
            volser=Volser.parse(volser),
            tracks=tracks,
            track_size_bytes=track_size_bytes,
            durable=False,
        ).close()

    with ThreadPoolExecutor(FORMAT_THREADS) as pool:
        list(pool.map(create, jobs))
    return len(jobs)


async def _start_all(fleet: Fleet) -> float:
    """Start every process of the fleet, a few at a time, secondaries (the controllers the
    others connect to) before primaries: a primary that restarts with tracks to resync asks
    its secondary at once, and leaves the pair SUSPENDED_ERROR if it is not up yet. Seconds
    taken. On a failure the ones started are stopped again."""
    started = time.perf_counter()
    slots = asyncio.Semaphore(START_PARALLEL)

    async def one(proc: ControllerProcess) -> None:
        async with slots:
            await proc.start(ready_timeout_s=READY_TIMEOUT_S)

    try:
        for primaries in (False, True):
            await asyncio.gather(
                *(
                    one(fleet.procs[plan.index])
                    for plan in fleet.plans
                    if _is_primary(plan) is primaries
                )
            )
    except BaseException:
        await stop_fleet(fleet)
        raise
    return time.perf_counter() - started


async def restart_fleet(fleet: Fleet, between: Callable[[], None] | None = None) -> float:
    """Stop every controller, run `between` (e.g. rewrite state files), start them again
    from the same configs (same ports); seconds for the whole restart."""
    started = time.perf_counter()
    await stop_fleet(fleet)
    if between is not None:
        between()
    for index, old in list(fleet.procs.items()):
        proc = ControllerProcess(old.config_path, log_path=old.log_path)
        fleet.procs[index] = proc
        _STARTED.append(proc)
    await _start_all(fleet)
    return time.perf_counter() - started


async def stop_fleet(fleet: Fleet) -> None:
    """SIGTERM every controller (primaries, those with a peer and a lower index, first)."""
    first = [fleet.procs[plan.index] for plan in fleet.plans if _is_primary(plan)]
    rest = [fleet.procs[plan.index] for plan in fleet.plans if not _is_primary(plan)]
    for group in (first, rest):
        group = [p for p in group if p.process is not None]
        codes = await asyncio.gather(*(p.stop() for p in group), return_exceptions=True)
        for proc, code in zip(group, codes, strict=True):
            if code != 0:
                print(
                    f"warning: controller {proc.name or proc.config_path.name} exited with "
                    f"{code}:\n{proc.log_tail()}",
                    file=sys.stderr,
                )


def _is_primary(plan: Plan) -> bool:
    return plan.peer is not None and plan.index < plan.peer


@contextlib.asynccontextmanager
async def fleet_running(
    root: Path,
    plans: Sequence[Plan],
    *,
    track_size_bytes: int = 64 * KIB,
    settings: dict[str, float] | None = None,
) -> AsyncIterator[Fleet]:
    fleet: Fleet | None = None
    try:
        fleet = await start_fleet(root, plans, track_size_bytes=track_size_bytes, settings=settings)
        yield fleet
    finally:
        if fleet is not None:
            await stop_fleet(fleet)


# The host: one definition that reaches every volume of every controller...


def host_secret_file(folder: Path) -> str:
    """HOST_SECRET in a 0600 file in `folder`, for a host definition to name (the catalog
    keeps no plaintext secret)."""
    path = folder / f"{HOST}.secret"
    write_private(path, HOST_SECRET + "\n")
    return str(path)


def host_document(fleet: Fleet, *, timeout_s: float = 120.0) -> dict[str, Any]:
    controllers = [
        {"name": plan.name, "address": fleet.procs[plan.index].endpoint, "timeout_s": timeout_s}
        for plan in fleet.plans
    ]
    paths = []
    for plan in fleet.plans:
        for j in range(plan.lss_count):
            first_k = j * CCAS_PER_LSS
            count = min(CCAS_PER_LSS, plan.volumes - first_k)
            first = device_number(plan.index, first_k)
            paths.append(
                {
                    "devices": f"{device_number_text(first)}-"
                    f"{device_number_text(first + count - 1)}",
                    "controller": plan.name,
                    "ssid": f"{ssid_of(plan.index, first_k):04X}",
                    "lss": f"{lss_of(first_k):02X}",
                    "cca": "00",
                    "online": True,
                }
            )
    return {
        "plain_tcp": True,  # the fleet's controllers run plain_tcp on loopback
        "host": {"name": HOST, "secret_file": host_secret_file(fleet.root)},
        "controllers": controllers,
        "paths": paths,
    }


def host_definition(fleet: Fleet) -> HostDefinition:
    return parse_host_definition(host_document(fleet), source="bench fleet")


def host_toml(document: dict[str, Any]) -> str:
    """The host document as the TOML `remcopy host add` reads (strings, numbers, booleans)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        return f'"{v}"'

    lines = ["plain_tcp = true", "", "[host]"] if document.get("plain_tcp") else ["[host]"]
    lines += [f"{k} = {value(v)}" for k, v in document["host"].items()]
    for section in ("controllers", "paths"):
        for entry in document[section]:
            lines += ["", f"[[{section}]]"]
            lines += [f"{k} = {value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


# Measuring...


def median(samples: Sequence[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_ns(pid: int) -> int | None:
    """Time the process has run on a CPU, in ns (/proc/PID/schedstat, first field: the
    scheduler's own count, not ticks); None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuSampler:
    """CPU time of named groups of processes, sampled every `every_s` on wall-clock time, so a
    window given in wall-clock ns (a suspend's T and its end) can be read back afterwards.
    A process that ended keeps its last count. `run` lives in the caller's task group and
    returns when `stop` is called."""

    def __init__(self, every_s: float = 0.01) -> None:
        self.every_s = every_s
        self.pids: dict[str, list[int]] = {}
        self.last: dict[int, int] = {}
        self.samples: list[tuple[int, dict[str, int]]] = []
        self._stop = asyncio.Event()

    def watch(self, name: str, pid: int) -> None:
        self.pids.setdefault(name, []).append(pid)

    def sample(self) -> None:
        totals: dict[str, int] = {}
        for name, pids in self.pids.items():
            total = 0
            for pid in pids:
                now = cpu_ns(pid)
                if now is not None:
                    self.last[pid] = now
                total += self.last.get(pid, 0)
            totals[name] = total
        self.samples.append((time.time_ns(), totals))

    async def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)
        self.sample()

    def stop(self) -> None:
        self._stop.set()

    def at(self, name: str, when_ns: int) -> float:
        """The group's CPU seconds at wall-clock `when_ns`, interpolated between samples."""
        points = [(t, totals.get(name, 0)) for t, totals in self.samples]
        if not points:
            return 0.0
        if when_ns <= points[0][0]:
            return points[0][1] / 1e9
        for (t0, c0), (t1, c1) in itertools.pairwise(points):
            if t0 <= when_ns <= t1:
                share = (when_ns - t0) / (t1 - t0) if t1 > t0 else 1.0
                return (c0 + (c1 - c0) * share) / 1e9
        return points[-1][1] / 1e9

    def between(self, name: str, start_ns: int, end_ns: int) -> float:
        """CPU seconds the group used in [start_ns, end_ns] (wall clock)."""
        return self.at(name, end_ns) - self.at(name, start_ns)


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spread(counts: dict[int, int], total: int) -> dict[int, int]:
    """`total` split as evenly as possible over the keys of `counts` (capped by each)."""
    keys = sorted(counts)
    out = dict.fromkeys(keys, 0)
    left = total
    while left > 0:
        progress = False
        for key in keys:
            if left and out[key] < counts[key]:
                out[key] += 1
                left -= 1
                progress = True
        if not progress:
            raise ValueError(f"cannot place {total} devices: only {sum(counts.values())}")
    return out


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = [title]
    for n, row in enumerate(cells):
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# Running: always stop what was started and remove the temp folder...


def guard(prefix: str, body: Callable[[Path], Coroutine[Any, Any, T]]) -> T:
    """Run body(temp folder) on the project's event loop; always clean up.

    Ctrl-C and SIGTERM cancel the main task, so the `finally` blocks of `fleet_running` stop
    the controllers; any controller still alive afterwards is killed here by its pid, and the
    temp folder under /tmp is removed. An interrupted run exits with 130 (Ctrl-C) or 143
    (SIGTERM) and prints no RESULT line.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    terminated = False

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
        return await body(root)

    try:
        return aio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: controllers stopped, temp folder removed", file=sys.stderr)
        raise SystemExit(143 if terminated else 130) from None
    finally:
        for proc in _STARTED:
            process = proc.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(process.pid, signal.SIGKILL)
        remove_tree(root)


def remove_tree(root: Path) -> None:
    """Remove a folder of many files: unlinks in parallel threads, then the folders.

    On a file system mounted with `discard` (this machine's /), each unlink of a file with
    data blocks waits for a TRIM (~1.4 ms); 16 threads at once take ~0.1 ms per file.
    """
    files = [Path(folder) / name for folder, _dirs, names in os.walk(root) for name in names]
    with ThreadPoolExecutor(REMOVE_THREADS) as pool:
        list(pool.map(_unlink_quietly, files))
    shutil.rmtree(root, ignore_errors=True)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
