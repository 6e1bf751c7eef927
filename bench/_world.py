# Shared parts of the remote-copy benchmarks (bench/mirror.py, bench/resync.py).
#
# What it gives: a two-site world of real controller processes on 127.0.0.1 — one primary
# controller (site A, LSS 0A) and one secondary controller (site B, LSS 20), peered both
# ways, every volume on the primary having a same-size partner volume (same CCA) on the
# secondary — plus the small tools both benchmarks time with: a queue-depth runner that
# records each request's latency, percentiles, CPU seconds of a process, establishing pairs
# and waiting for DUPLEX on the controller's event stream, and `main_guard`, which makes sure
# every controller process started is stopped and the temp folder removed, also on an error,
# Ctrl-C or SIGTERM.
#
# The ideas follow tests/integration/mirror_world.py; benchmarks do not import from tests/.
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from remcopy import aio
from remcopy.controller.process import (
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
)
from remcopy.events import Event
from remcopy.host.channel import Channel, Subscription
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairItem, PairOp, PairOpReply
from remcopy.workload.faultlink import FaultLink

T = TypeVar("T")

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
TRACK_BYTES: Final = 64 * KIB

HOST: Final = "benchhost"
SECRET: Final = "bench-mirror-host-secret"
LINK_SECRET: Final = "bench-mirror-link-secret"
PRIMARY_SERIAL: Final = 64015
SECONDARY_SERIAL: Final = 65000
PRIMARY_LSS: Final = 0x0A
SECONDARY_LSS: Final = 0x20
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
# Establishing copies the whole volume; 256 MiB takes seconds, a loaded machine more.
DUPLEX_TIMEOUT_S: Final = 300.0

# Every controller process started by this process, so main_guard can kill what an
# interrupted event loop could not stop.
_STARTED: list[ControllerProcess] = []


def primary_device(cca: int) -> int:
    return PRIMARY_LSS << 8 | cca


def secondary_device(cca: int) -> int:
    return SECONDARY_LSS << 8 | cca


@dataclass
class World:
    """One primary and one secondary controller process, peered both ways."""

    root: Path
    primary: ControllerProcess
    secondary: ControllerProcess
    sizes: dict[int, int] = field(default_factory=dict)  # CCA -> bytes

    def item(self, cca: int, mode: CopyMode, *, consistency_group: bool = False) -> PairItem:
        """The pair primary (0A, cca) -> secondary (20, cca) in `mode`."""
        return PairItem(
            device=primary_device(cca),
            peer_serial=SECONDARY_SERIAL,
            peer_device=secondary_device(cca),
            mode=mode,
            consistency_group=consistency_group,
        )

    def host_channel(self, proc: ControllerProcess) -> Channel:
        return Channel(proc.address, name=HOST, secret=SECRET, timeout_s=120.0)

    @property
    def pids(self) -> tuple[int, int]:
        assert self.primary.process is not None
        assert self.secondary.process is not None
        return self.primary.process.pid, self.secondary.process.pid


@contextlib.asynccontextmanager
async def two_sites(
    root: Path,
    sizes: dict[int, int],
    *,
    peer_via: FaultLink | None = None,
    primary_settings: dict[str, object] | None = None,
) -> AsyncIterator[World]:
    """Start the secondary then the primary; stop both (SIGTERM, then SIGKILL) on the way out.

    With `peer_via` (a started fault link), the primary's replication link to the secondary
    goes through it: the link is pointed at the secondary, the primary's peer address at it.
    `primary_settings`: more [controller] keys for the primary (e.g. {"max_lag_s": 0.5}).
    """
    port_a, port_b = free_port(), free_port()
    primary_peer = f"127.0.0.1:{port_b}"
    if peer_via is not None:
        peer_via.target = ("127.0.0.1", port_b)
        primary_peer = peer_via.endpoint
    secondary_spec = ControllerSpec(
        name="sitebcntl",
        serial=SECONDARY_SERIAL,
        data_dir=root / "siteb",
        listen=f"127.0.0.1:{port_b}",
        lss={SECONDARY_LSS: 0x2B00},
        volumes=[
            VolumeSpec(lss=SECONDARY_LSS, cca=cca, volser=f"SB{cca:04X}", size_bytes=size)
            for cca, size in sorted(sizes.items())
        ],
        hosts={HOST: SECRET},
        peers=[
            PeerSpec(
                name="siteacntl",
                serial=PRIMARY_SERIAL,
                address=f"127.0.0.1:{port_a}",
                secret=LINK_SECRET,
            )
        ],
    )
    primary_spec = ControllerSpec(
        name="siteacntl",
        serial=PRIMARY_SERIAL,
        data_dir=root / "sitea",
        listen=f"127.0.0.1:{port_a}",
        lss={PRIMARY_LSS: 0x1A00},
        volumes=[
            VolumeSpec(lss=PRIMARY_LSS, cca=cca, volser=f"PA{cca:04X}", size_bytes=size)
            for cca, size in sorted(sizes.items())
        ],
        hosts={HOST: SECRET},
        settings=dict(primary_settings or {}),
        peers=[
            PeerSpec(
                name="sitebcntl",
                serial=SECONDARY_SERIAL,
                address=primary_peer,
                secret=LINK_SECRET,
            )
        ],
    )
    secondary = ControllerProcess(secondary_spec.write(root / "siteb.toml"))
    primary = ControllerProcess(primary_spec.write(root / "sitea.toml"))
    _STARTED.extend([secondary, primary])
    try:
        await secondary.start()
        await primary.start()
        yield World(root=root, primary=primary, secondary=secondary, sizes=dict(sizes))
    finally:
        # Primary first: it holds the replication link to the secondary.
        for proc in (primary, secondary):
            if proc.process is None:
                continue
            code = await proc.stop()
            if code != 0:
                print(
                    f"warning: controller {proc.name or proc.config_path.name} exited with "
                    f"{code}:\n{proc.log_tail()}",
                    file=sys.stderr,
                )


def all_ok(reply: PairOpReply, what: str) -> None:
    bad = [f"{r.device:04X}: {r.message}" for r in reply.results if r.code]
    if bad:
        raise RuntimeError(f"{what} refused: " + "; ".join(bad))


async def establish(
    ch: Channel,
    events: Subscription,
    world: World,
    ccas: Iterable[int],
    mode: CopyMode,
    *,
    group: str = "",
) -> float:
    """Establish pairs (0A, cca) -> (20, cca) and wait until all are DUPLEX; seconds taken.
    With `group`, the pairs form that consistency group (an async one keeps a consistency
    time at the secondary, its updates waiting in the secondary journal).

    `events` must be a subscription on `ch`'s controller made before this call.
    """
    ccas = list(ccas)
    started = time.perf_counter()
    options: dict[str, object] = {}
    if group:
        options = {
            "group": group,
            "members": [PRIMARY_SERIAL],
            "secondaries": [SECONDARY_SERIAL],
        }
    reply = await ch.pair_op(
        PairOp.ESTABLISH,
        tuple(world.item(c, mode, consistency_group=bool(group)) for c in ccas),
        options=options,
    )
    all_ok(reply, f"establish {mode.value}")
    await wait_duplex(events, len(ccas))
    return time.perf_counter() - started


async def wait_duplex(events: Subscription, count: int) -> list[Event]:
    """The next `count` STATE events to DUPLEX of the primary's event stream."""
    found: list[Event] = []
    deadline = time.monotonic() + DUPLEX_TIMEOUT_S
    while len(found) < count:
        left = max(0.1, deadline - time.monotonic())
        found.append(await events.wait_until(lambda e: e.new is PairState.DUPLEX, timeout_s=left))
    return found


async def run_qd(
    qd: int, items: Iterable[T], op: Callable[[T], Awaitable[object]]
) -> tuple[float, list[int]]:
    """Run op over items with qd workers sharing one iterator (qd requests in flight).

    Returns the wall seconds of the whole run and each request's latency in ns (issue to
    answer, as the host sees it).
    """
    pending = iter(items)
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def worker() -> None:
        for item in pending:
            begun = clock()
            await op(item)
            latencies.append(clock() - begun)

    started = clock()
    await asyncio.gather(*(worker() for _ in range(qd)))
    return (clock() - started) / 1e9, latencies


def percentile(samples: list[int] | list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class CpuMeter:
    """CPU seconds the primary, the secondary and this process (the host) spend in a span."""

    pids: tuple[int, int]
    _start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> tuple[float, float, float]:
        now = self._now()
        return (now[0] - self._start[0], now[1] - self._start[1], now[2] - self._start[2])

    def _now(self) -> tuple[float, float, float]:
        return (process_cpu_s(self.pids[0]), process_cpu_s(self.pids[1]), own_cpu_s())


def main_guard(prefix: str, body: Callable[[Path], Coroutine[Any, Any, T]]) -> T:
    """Run body(temp folder) on the project's event loop; always clean up.

    Ctrl-C (the runner's own handler) and SIGTERM (ours) cancel the main task, so the
    `finally` blocks of `two_sites` stop the controllers; any controller still alive
    afterwards is killed here by its pid, and the temp folder under /tmp is removed. An
    interrupted run exits with 130 (Ctrl-C) or 143 (SIGTERM) and prints no table.
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
        shutil.rmtree(root, ignore_errors=True)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
