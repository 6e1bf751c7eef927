# Benchmark: what mirroring costs a host, per copy mode, side by side with local-only writes.
#
# What is measured, and why: DESIGN.md section 8 sets targets for sync mirroring (>= 0.5x the
# throughput of local-only writes at 64 KiB, <= 80 us added latency at QD1) and async
# mirroring (>= 0.7x local-only; apply lag p50 <= 0.5 ms, p99 <= 10 ms). This benchmark starts
# two real controller processes on 127.0.0.1 (site A primary, site B secondary, peered) and
# measures, in the same run and through one host channel to the primary:
# - for each mode — SIMPLEX (a volume with no pair: the local-only limit), sync, async,
#   semisync — on a volume of its own (a fresh pair per mode: established, waited to DUPLEX,
#   then measured): 64 KiB sequential writes over the volume and 4 KiB random writes, each at
#   QD1 and QD16 (requests in flight on the one channel); MiB/s, and each request's latency
#   (issue to acknowledgement as the host sees it) p50 / p99 in us; every throughput also as a
#   ratio to SIMPLEX in the same pass. The headline `*_ratio_64k` figures are at QD16 (the
#   throughput configuration); QD1 and 4 KiB ratios are extra keys;
# - for async also "incl. drain": the same bytes over the time until the secondary confirmed
#   the last update (the journal drained). An async host ack comes before the secondary has
#   the data; the drained figure is the rate the pair sustains, the acked one what the host
#   sees. Both are printed;
# - the floor under every latency here: the round trip of a 16-byte read to the primary at
#   QD1 (one host -> controller -> host hop; a sync write adds at least one more such hop);
# - the async apply lag, by marker polling: a sampler writes a 4 KiB block whose first 16
#   bytes are a unique marker to the async primary, notes the time of the host ack, and then
#   reads those 16 bytes back from the *secondary* in a tight loop (a second host channel,
#   to the secondary controller) until the marker is there. The update was applied after the
#   last read that did not see it was issued and before the read that saw it answered, so the
#   lag lies in [that issue - ack, that answer - ack]; the upper end is reported (conservative)
#   and the lower end's p50 is printed next to it. Markers live in the last MiB of the volume,
#   which nothing else writes, so a marker is never overwritten before it is seen. Samples
#   follow one another back to back in three phases on the same async pair:
#     idle       no other writes;
#     paced      64 KiB writes at half the rate the pair acknowledged in its QD16 pass of the
#                same round (issued in 1 ms bursts, at most 16 in flight): a steady load the
#                link sustains. This is the RESULT figure (`async_lag_p50_ms`, `_p99_ms`);
#     saturated  the 64 KiB QD16 stream of the throughput pass, back to back: the primary acks
#                as fast as it can, so the lag there is mostly queueing (how far the secondary
#                falls behind), shown as `async_lag_saturated_*`.
#   Why not a suspend at T = now + margin: its drain time is one sample per suspend (and ends
#   the pair), so it is taken once per round, at the end of the saturated phase, as a
#   cross-check (the controller's own `drained_ns - sealed_ns` from the suspend reply);
# - the RPO of the async pair (a consistency group: its updates wait at the secondary for the
#   consistency time C): after each lag sample of the paced and saturated phases, the
#   secondary is asked for C and now - C is taken (`async_rpo_p50_s`, `async_rpo_p99_s`,
#   pooled; `async_rpo_paced_p99_s`, `async_rpo_saturated_p99_s` per phase). The marker lag
#   of the async pair therefore includes the wait for C;
# - the same RPO with a 30 ms one-way delay on the link (target p99 <= 1 s): after the main
#   world, a second two-site world whose primary reaches the secondary through the project's
#   fault link (remcopy.workload.faultlink.FaultLink, delay 30 ms in each direction). One
#   async consistency-group pair (32 MiB) is established with the link passing, then the link
#   delays; a 64 KiB QD16 pass to the drain gives the rate the delayed pair sustains
#   (`async_delay30_drained_mib_s`); then the paced phase (64 KiB writes at half that rate:
#   the acked rate of an async pair is local and says nothing about the link) and the
#   saturated phase (the 16 back-to-back writers) run for 3 s (10 s without --quick) each,
#   sampled as above: marker lag, then now - C. RESULT `async_rpo_delay30_p50_s`,
#   `async_rpo_delay30_p99_s` (paced and saturated pooled, as the undelayed keys),
#   `async_rpo_delay30_paced_p99_s`, `async_rpo_delay30_saturated_p99_s`,
#   `async_lag_delay30_{paced,saturated}_p99_ms`. The fault link runs in its latency mode
#   (FaultLink.latency): each chunk is delivered 30 ms after the link read it, however many
#   are in flight, as a long link does; its bandwidth is what the proxy (a Python process on
#   the same CPUs) forwards. The saturated host writes faster than that: the delayed primary
#   runs with max_lag_s 0.25 (host writes held back while the oldest unconfirmed update is
#   older; counted), and ack_timeout_s and heartbeat_timeout_s 60 s (as the fault-link tests)
#   so a backlog does not suspend the pair;
# - the CPU seconds per GiB of the primary, the secondary and the host process in the 64 KiB
#   QD16 pass: on a 2-CPU machine three busy processes share two CPUs; this says who used them.
# Every measured write overwrites a block that was written before (the volumes are filled
# before the pairs are established, so the initial copy carries data and neither side
# allocates blocks in a timed pass), and both controllers' volumes are flushed (untimed)
# between passes so one pass's writeback does not land in the next. Rounds: 3 (2 with
# --quick), each on fresh volumes with the mode order rotated; per mode and pass the best round
# counts (the least disturbed on a shared machine), the worst is shown next to it; lag samples
# are pooled over all rounds.
#
# Run: .venv/bin/python bench/mirror.py [--quick] [--seed N]. The last line is `RESULT {json}`.
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from _world import (
    GIB,
    KIB,
    MIB,
    CpuMeter,
    World,
    all_ok,
    establish,
    load_average,
    main_guard,
    percentile,
    primary_device,
    run_qd,
    secondary_device,
    two_sites,
)
from remcopy import aio
from remcopy.errors import LateWrite
from remcopy.host.channel import Channel, Subscription
from remcopy.states import CopyMode
from remcopy.wire.native import PairOp
from remcopy.workload.faultlink import FaultLink

SEED_DEFAULT: Final = 20261126
VOLUME_BYTES_FULL: Final = 256 * MIB
VOLUME_BYTES_QUICK: Final = 64 * MIB
ROUNDS_FULL: Final = 3
ROUNDS_QUICK: Final = 2
RAND_OPS_FULL: Final = {1: 8_000, 16: 24_000}
RAND_OPS_QUICK: Final = {1: 1_000, 16: 4_000}
LAG_LOAD_S_FULL: Final = 3.0
LAG_LOAD_S_QUICK: Final = 0.8
LAG_IDLE_SAMPLES_FULL: Final = 1_000
LAG_IDLE_SAMPLES_QUICK: Final = 150
# A marker not on the secondary after this long is a failure, not a sample.
LAG_POLL_TIMEOUT_S: Final = 30.0
SUSPEND_MARGIN_NS: Final = 50_000_000
RTT_SAMPLES: Final = 2_000
# The delayed world: one async consistency-group pair whose replication link goes through a
# fault link delaying each direction by DELAY_ONE_WAY_S.
DELAY_ONE_WAY_S: Final = 0.030
DELAY_CCA: Final = 0
DELAY_VOLUME_BYTES: Final = 32 * MIB
DELAY_LOAD_S_FULL: Final = 10.0
DELAY_LOAD_S_QUICK: Final = 3.0
# The fault link in latency mode delivers each chunk DELAY_ONE_WAY_S after it read it, many in
# flight (a long link, not a slow one). The host still writes faster than the link's proxy
# forwards: max_lag_s holds the host writes back once the oldest unconfirmed update is that
# old, and the timeouts the fault-link tests use keep a backlog from suspending the pair.
DELAY_PRIMARY_SETTINGS: Final[dict[str, object]] = {
    "ack_timeout_s": 60.0,
    "heartbeat_timeout_s": 60.0,
    "max_lag_s": 0.25,
}
DELAY_PHASES: Final = ("paced", "saturated")

SEQ_BYTES: Final = 64 * KIB
RAND_BYTES: Final = 4 * KIB
MARKER_REGION_BYTES: Final = 1 * MIB
_MARKER = struct.Struct("!8sQ")
_MARKER_MAGIC: Final = b"RCLAGMK1"

MODES: Final = ("SIMPLEX", "sync", "async", "semisync")
# The async pair is a consistency group of its own: its updates wait in the secondary
# journal for the consistency time C, as every async group's do.
ASYNC_GROUP: Final = "BENCHASYNC"
COPY_MODES: Final = {"sync": CopyMode.SYNC, "async": CopyMode.ASYNC, "semisync": CopyMode.SEMISYNC}
PASSES: Final = (("seq", 1), ("seq", 16), ("rand", 1), ("rand", 16))
PASS_LABELS: Final = {"seq": "64 KiB seq", "rand": "4 KiB rand"}


@dataclass(kw_only=True)
class Plan:
    quick: bool
    seed: int
    volume_bytes: int
    rounds: int
    rand_ops: dict[int, int]
    lag_load_s: float
    lag_idle_samples: int
    delay_load_s: float

    @property
    def load_bytes(self) -> int:
        """The part of a volume the throughput passes write (the rest holds lag markers)."""
        return self.volume_bytes - MARKER_REGION_BYTES


@dataclass(kw_only=True)
class Pass:
    mib_s: float
    p50_us: float
    p99_us: float
    drained_mib_s: float
    cpu_s: tuple[float, float, float]  # primary, secondary, host
    gib: float

    def cpu_per_gib(self) -> tuple[float, float, float]:
        a, b, c = self.cpu_s
        return a / self.gib, b / self.gib, c / self.gib


@dataclass
class Lag:
    """Marker lag samples of one phase: the bracket [low, high] of each, in ns."""

    high_ns: list[int] = field(default_factory=list)
    low_ns: list[int] = field(default_factory=list)
    load_mib_s: list[float] = field(default_factory=list)  # per round: what the load wrote

    def p(self, fraction: float) -> float:
        """Percentile of the upper ends, in ms."""
        return percentile(self.high_ns, fraction) / 1e6

    def low_p50(self) -> float:
        return percentile(self.low_ns, 0.5) / 1e6


LAG_PHASES: Final = ("idle", "paced", "saturated")


@dataclass
class Results:
    """Per mode and pass one Pass per round; lag samples pooled over rounds."""

    passes: dict[tuple[str, str, int], list[Pass]] = field(default_factory=dict)
    establish_s: dict[str, list[float]] = field(default_factory=dict)
    lag: dict[str, Lag] = field(default_factory=lambda: {p: Lag() for p in LAG_PHASES})
    suspend_drain_ms: list[float] = field(default_factory=list)
    suspend_in_flight: list[int] = field(default_factory=list)
    rtt_ns: list[int] = field(default_factory=list)
    rpo_ns: dict[str, list[int]] = field(default_factory=dict)
    """now - C at the secondary (its consistency time), per loaded lag phase."""
    updates_sent: int = 0
    updates_applied: int = 0
    lag_busy_writes: int = 0
    """Host writes the primary answered busy for max_lag_s (the delayed world's only)."""
    delayed: Results | None = None
    """The async pair of the world whose link delays each way (its lag, RPO, QD16 pass)."""

    def best(self, mode: str, kind: str, qd: int) -> Pass:
        return max(self.passes[(mode, kind, qd)], key=lambda p: p.mib_s)

    def worst(self, mode: str, kind: str, qd: int) -> Pass:
        return min(self.passes[(mode, kind, qd)], key=lambda p: p.mib_s)

    def ratio(self, mode: str, kind: str, qd: int) -> float:
        return self.best(mode, kind, qd).mib_s / self.best("SIMPLEX", kind, qd).mib_s


class Bench:
    """One two-site world and every measurement made in it."""

    def __init__(self, plan: Plan, world: World, ch: Channel, sec: Channel, events: Subscription):
        self.plan = plan
        self.world = world
        self.ch = ch  # host channel to the primary
        self.sec = sec  # host channel to the secondary (flushes, lag polling)
        self.events = events
        self.results = Results()
        self.meter = CpuMeter(world.pids)
        rng = random.Random(plan.seed)
        self.block = rng.randbytes(SEQ_BYTES)
        slots = plan.load_bytes // RAND_BYTES
        self.rand_offsets = {
            qd: [rng.randrange(slots) * RAND_BYTES for _ in range(n)]
            for qd, n in plan.rand_ops.items()
        }
        self.marker_seq = 0
        self._loading = False
        self._load_bytes = 0
        self._load_index = 0
        self._saturated: list[asyncio.Task[None]] = []

    @staticmethod
    def cca(round_: int, mode: str) -> int:
        return round_ * len(MODES) + MODES.index(mode)

    async def run(self) -> Results:
        await self._prefill()
        await self._round_trip()
        for round_ in range(self.plan.rounds):
            shift = round_ % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                await self._measure_mode(round_, mode)
        primary = (await self.ch.status())["counters"]
        secondary = (await self.sec.status())["counters"]
        # Host-write updates plus track copies (initial copies), one update per track.
        self.results.updates_sent = int(primary["updates_sent"]) + int(primary["bytes_copied"]) // (
            64 * KIB
        )
        self.results.updates_applied = int(secondary["updates_applied"])
        return self.results

    async def _round_trip(self) -> None:
        """QD1 round trips of a 16-byte read to the primary: the floor of one hop."""
        device = primary_device(self.cca(0, "SIMPLEX"))
        for _ in range(RTT_SAMPLES):
            started = time.perf_counter_ns()
            await self.ch.read(device, 0, 16)
            self.results.rtt_ns.append(time.perf_counter_ns() - started)

    async def _prefill(self) -> None:
        """Write every volume whole once, untimed: later passes overwrite, nothing allocates."""
        devices = [primary_device(cca) for cca in self.world.sizes]
        step = SEQ_BYTES
        items = [(d, o) for d in devices for o in range(0, self.plan.volume_bytes, step)]

        async def write(item: tuple[int, int]) -> None:
            await self.ch.write(item[0], item[1], self.block)

        await run_qd(16, items, write)
        await self.ch.flush(tuple(devices))

    async def _flush(self, cca: int, paired: bool) -> None:
        await self.ch.flush((primary_device(cca),))
        if paired:
            await self.sec.flush((secondary_device(cca),))

    async def _drained(self, device: int) -> None:
        """Wait until the primary has no update of `device` waiting for confirmation."""
        while True:
            (status,) = await self.ch.query((device,))
            if status.lag_bytes == 0:
                return
            await asyncio.sleep(0.0002)

    async def _measure_mode(self, round_: int, mode: str) -> None:
        cca = self.cca(round_, mode)
        device = primary_device(cca)
        paired = mode != "SIMPLEX"
        if paired:
            took = await establish(
                self.ch,
                self.events,
                self.world,
                [cca],
                COPY_MODES[mode],
                group=ASYNC_GROUP if mode == "async" else "",
            )
            self.results.establish_s.setdefault(mode, []).append(took)
        for kind, qd in PASSES:
            await self._flush(cca, paired)
            if kind == "seq":
                items = list(range(0, self.plan.load_bytes, SEQ_BYTES))
                data = self.block
            else:
                items = self.rand_offsets[qd]
                data = self.block[:RAND_BYTES]
            op = _writer(self.ch, device, data)
            self.meter.start()
            started = time.perf_counter()
            took, latencies = await run_qd(qd, items, op)
            drained = took
            if mode == "async":
                await self._drained(device)
                drained = time.perf_counter() - started
            cpu = self.meter.stop()
            size = len(items) * len(data)
            self.results.passes.setdefault((mode, kind, qd), []).append(
                Pass(
                    mib_s=size / MIB / took,
                    p50_us=percentile(latencies, 0.50) / 1000,
                    p99_us=percentile(latencies, 0.99) / 1000,
                    drained_mib_s=size / MIB / drained,
                    cpu_s=cpu,
                    gib=size / GIB,
                )
            )
        if mode == "async":
            await self._flush(cca, paired)
            acked_mib_s = self.results.passes[("async", "seq", 16)][-1].mib_s
            await self._lag_phase(cca, "idle")
            await self._lag_phase(cca, "paced", rate_mib_s=acked_mib_s / 2)
            await self._lag_phase(cca, "saturated")
            await self._suspend_cross_check(cca)

    # Async apply lag...

    def _marker(self) -> tuple[bytes, bytes]:
        self.marker_seq += 1
        head = _MARKER.pack(_MARKER_MAGIC, self.marker_seq)
        return head, head + self.block[: RAND_BYTES - len(head)]

    async def _lag_sample(self, cca: int) -> tuple[int, int]:
        """One marker write and its appearance on the secondary: (high, low) lag in ns."""
        head, data = self._marker()
        slots = MARKER_REGION_BYTES // RAND_BYTES
        offset = self.plan.load_bytes + (self.marker_seq % slots) * RAND_BYTES
        clock = time.perf_counter_ns
        await self.ch.write(primary_device(cca), offset, data)
        acked = clock()
        last_miss = acked  # the first read is issued after the ack
        while True:
            issued = clock()
            seen = await self.sec.read(secondary_device(cca), offset, len(head))
            answered = clock()
            if seen == head:
                return answered - acked, last_miss - acked
            last_miss = issued
            if answered - acked > LAG_POLL_TIMEOUT_S * 1e9:
                raise RuntimeError(
                    f"async lag: marker {self.marker_seq} not on the secondary after "
                    f"{LAG_POLL_TIMEOUT_S} s"
                )

    async def _lag_phase(self, cca: int, phase: str, *, rate_mib_s: float = 0.0) -> None:
        """Lag samples back to back while `phase`'s load runs (idle: a count, no load)."""
        lag = self.results.lag[phase]
        if phase == "idle":
            for _ in range(self.plan.lag_idle_samples):
                high, low = await self._lag_sample(cca)
                lag.high_ns.append(high)
                lag.low_ns.append(low)
            return
        self._loading = True
        self._load_bytes = 0
        if phase == "paced":
            loaders = [asyncio.create_task(self._paced(cca, rate_mib_s))]
        else:
            loaders = [asyncio.create_task(self._stream(cca)) for _ in range(16)]
        try:
            started = time.perf_counter()
            deadline = started + self.plan.lag_load_s
            while time.perf_counter() < deadline:
                high, low = await self._lag_sample(cca)
                lag.high_ns.append(high)
                lag.low_ns.append(low)
                (status,) = await self.sec.query((secondary_device(cca),))
                rpo_ns = time.time_ns() - status.consistency_time_ns
                self.results.rpo_ns.setdefault(phase, []).append(rpo_ns)
            lag.load_mib_s.append(self._load_bytes / MIB / (time.perf_counter() - started))
        except BaseException:
            await self._stop_load(loaders)
            raise
        if phase == "saturated":
            self._saturated = loaders  # the suspend cross-check runs under it, then stops it
        else:
            await self._stop_load(loaders)

    async def _stop_load(self, loaders: list[asyncio.Task[None]]) -> None:
        self._loading = False
        await asyncio.gather(*loaders, return_exceptions=True)

    def _load_offsets(self) -> range:
        return range(0, self.plan.load_bytes, SEQ_BYTES)

    async def _load_write(self, device: int, offset: int) -> None:
        while True:
            try:
                await self.ch.write(device, offset, self.block)
            except LateWrite:
                continue  # stamped before a sealed T: reissue with a new stamp
            break
        self._load_bytes += SEQ_BYTES

    async def _stream(self, cca: int) -> None:
        """One of 16 back-to-back writers of the saturated phase."""
        device, offsets = primary_device(cca), self._load_offsets()
        while self._loading:
            self._load_index += 1
            await self._load_write(device, offsets[self._load_index % len(offsets)])

    async def _paced(self, cca: int, rate_mib_s: float) -> None:
        """64 KiB writes at `rate_mib_s`, issued in 1 ms bursts, at most 16 in flight."""
        device, offsets = primary_device(cca), self._load_offsets()
        interval_s = SEQ_BYTES / (rate_mib_s * MIB)
        slots = asyncio.Semaphore(16)
        tasks: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        issued = 0

        async def one(offset: int) -> None:
            try:
                await self._load_write(device, offset)
            finally:
                slots.release()

        try:
            while self._loading:
                due = int((time.perf_counter() - started) / interval_s) + 1
                while issued < due and self._loading:
                    await slots.acquire()
                    self._load_index += 1
                    task = asyncio.create_task(one(offsets[self._load_index % len(offsets)]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    issued += 1
                await asyncio.sleep(0.001)
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run_delayed(self, link: FaultLink) -> Results:
        """The async group pair across `link`: established with the link passing, then the
        link delays each way; a 64 KiB QD16 pass (to the drain) gives the rate the pair
        sustains, the paced phase runs at half of it, the saturated one as in the main world."""
        await self._prefill()
        cca, device = DELAY_CCA, primary_device(DELAY_CCA)
        took = await establish(
            self.ch, self.events, self.world, [cca], CopyMode.ASYNC, group=ASYNC_GROUP
        )
        self.results.establish_s["async"] = [took]
        link.latency(DELAY_ONE_WAY_S)
        await self._flush(cca, paired=True)
        items = list(self._load_offsets())
        self.meter.start()
        started = time.perf_counter()
        took, latencies = await run_qd(16, items, _writer(self.ch, device, self.block))
        await self._drained(device)
        drained = time.perf_counter() - started
        size = len(items) * SEQ_BYTES
        self.results.passes[("async", "seq", 16)] = [
            Pass(
                mib_s=size / MIB / took,
                p50_us=percentile(latencies, 0.50) / 1000,
                p99_us=percentile(latencies, 0.99) / 1000,
                drained_mib_s=size / MIB / drained,
                cpu_s=self.meter.stop(),
                gib=size / GIB,
            )
        ]
        await self._flush(cca, paired=True)
        await self._lag_phase(cca, "paced", rate_mib_s=size / MIB / drained / 2)
        await self._lag_phase(cca, "saturated")
        await self._stop_load(self._saturated)
        counters = (await self.ch.status())["counters"]
        self.results.lag_busy_writes = int(counters["lag_busy_writes"])
        return self.results

    async def _suspend_cross_check(self, cca: int) -> None:
        """Suspend at T = now + margin under the saturated stream: the controller's drain."""
        try:
            at_ns = time.time_ns() + SUSPEND_MARGIN_NS
            reply = await self.ch.pair_op(
                PairOp.SUSPEND, (self.world.item(cca, CopyMode.ASYNC),), at_ns=at_ns
            )
            all_ok(reply, "suspend (async cross-check)")
            doc = reply.document
            self.results.suspend_drain_ms.append((doc["drained_ns"] - doc["sealed_ns"]) / 1e6)
            self.results.suspend_in_flight.append(int(doc["in_flight_at_seal"]))
        finally:
            await self._stop_load(self._saturated)


def _writer(ch: Channel, device: int, data: bytes) -> Callable[[int], Awaitable[int]]:
    def op(offset: int) -> Awaitable[int]:
        return ch.write(device, offset, data)

    return op


async def run(plan: Plan, root: Path) -> Results:
    sizes = {Bench.cca(r, m): plan.volume_bytes for r in range(plan.rounds) for m in MODES}
    async with (
        two_sites(root, sizes) as world,
        world.host_channel(world.primary) as ch,
        world.host_channel(world.secondary) as sec,
    ):
        events = await ch.subscribe()
        results = await Bench(plan, world, ch, sec, events).run()
    results.delayed = await _run_delayed(plan, root / "delay30")
    return results


async def _run_delayed(plan: Plan, root: Path) -> Results:
    """A second two-site world whose replication link delays each way: its async pair."""
    delayed = dataclasses.replace(
        plan, volume_bytes=DELAY_VOLUME_BYTES, lag_load_s=plan.delay_load_s
    )
    async with (
        FaultLink(("127.0.0.1", 0), seed=plan.seed) as link,
        two_sites(
            root,
            {DELAY_CCA: DELAY_VOLUME_BYTES},
            peer_via=link,
            primary_settings=DELAY_PRIMARY_SETTINGS,
        ) as world,
        world.host_channel(world.primary) as ch,
        world.host_channel(world.secondary) as sec,
    ):
        events = await ch.subscribe()
        return await Bench(delayed, world, ch, sec, events).run_delayed(link)


# Reporting...


def _ms(ns: float) -> float:
    return ns / 1e6


def _table(plan: Plan, res: Results, load: str) -> str:
    col = 20

    def row(label: str, cells: list[str]) -> str:
        return label.ljust(40) + "".join(f"{c:>{col}}" for c in cells)

    lines = [
        f"remcopy bench/mirror: local-only (SIMPLEX) vs sync / async / semisync pairs, "
        f"primary and secondary controller on 127.0.0.1 (seed {plan.seed})",
        f"  volume {plan.volume_bytes // MIB} MiB per mode and round, fresh pair per mode; "
        f"overwrites, page cache, no flush in the timed part; {plan.rounds} rounds, best "
        f"(worst); {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{aio.loop_name()}, load average {load}",
        "  ratio = MiB/s / SIMPLEX MiB/s of the same pass (higher is better; targets: sync >= "
        "0.5, async >= 0.7 at 64 KiB)",
        "",
        row("", list(MODES)),
    ]
    for kind, qd in PASSES:
        label = f"{PASS_LABELS[kind]} QD{qd}"
        lines.append(
            row(
                f"{label:<17} MiB/s",
                [
                    f"{res.best(m, kind, qd).mib_s:,.0f} ({res.worst(m, kind, qd).mib_s:,.0f})"
                    for m in MODES
                ],
            )
        )
        lines.append(row("  ratio to SIMPLEX", [f"{res.ratio(m, kind, qd):.3f}" for m in MODES]))
        lines.append(
            row(
                "  latency p50 / p99 us",
                [
                    f"{res.best(m, kind, qd).p50_us:,.0f} / {res.best(m, kind, qd).p99_us:,.0f}"
                    for m in MODES
                ],
            )
        )
        if kind == "seq":
            lines.append(
                row(
                    "  async incl. drain MiB/s (ratio)",
                    [
                        f"{res.best(m, kind, qd).drained_mib_s:,.0f} "
                        f"({res.best(m, kind, qd).drained_mib_s / res.best('SIMPLEX', kind, qd).mib_s:.3f})"  # noqa: E501
                        if m == "async"
                        else "-"
                        for m in MODES
                    ],
                )
            )
    lines.append(
        row(
            "CPU s/GiB 64K QD16 prim / sec / host",
            [
                "{:.2f} / {:.2f} / {:.2f}".format(*res.best(m, "seq", 16).cpu_per_gib())
                for m in MODES
            ],
        )
    )
    lines.append(
        row(
            "establish (initial copy) s",
            [f"{min(res.establish_s[m]):.2f}" if m in res.establish_s else "-" for m in MODES],
        )
    )
    sync_added = _sync_added_us(res)
    lines += [
        "",
        f"sync added latency at QD1, 64 KiB (sync p50 - SIMPLEX p50): {sync_added:,.0f} us "
        "(target <= 80); floor of one host -> controller -> host hop (16-byte read, QD1): "
        f"p50 {percentile(res.rtt_ns, 0.5) / 1000:,.0f} us, "
        f"p99 {percentile(res.rtt_ns, 0.99) / 1000:,.0f} us",
        "",
        "async apply lag, host ack -> update readable on the secondary (marker polling): p50 / "
        "p99 / max of the bracket's upper end, [p50 of its lower end; 0 = the first read after "
        "the ack already saw the marker]; targets p50 <= 0.5 ms, p99 <= 10 ms; RESULT: paced",
    ]
    for phase in LAG_PHASES:
        lag = res.lag[phase]
        load = (
            "no other writes"
            if phase == "idle"
            else f"64 KiB {'at half the acked rate' if phase == 'paced' else 'QD16 stream'}, "
            f"{_mean(lag.load_mib_s):,.0f} MiB/s"
        )
        lines.append(
            f"  {phase:<10} {load:<38} {lag.p(0.5):8.3f} / {lag.p(0.99):8.3f} / "
            f"{max(lag.high_ns, default=0) / 1e6:8.3f} ms  [{lag.low_p50():.3f}]  "
            f"{len(lag.high_ns)} samples"
        )
    lines += [
        "  cross-check, suspend at T = now + 50 ms under the QD16 stream, the controller's "
        f"drain (sealed -> drained): {', '.join(f'{d:.2f}' for d in res.suspend_drain_ms)} ms;"
        f" updates in flight at T: {', '.join(str(n) for n in res.suspend_in_flight)}",
        "",
        "async RPO, now - C at the secondary after each lag sample: p50 / p99 / max s "
        "(target p99 <= 1 s with the 30 ms delay); RESULT: paced and saturated pooled",
        *_rpo_lines("link as is", res),
    ]
    if res.delayed is not None:
        delayed = res.delayed
        best = delayed.best("async", "seq", 16)
        lines += [
            *_rpo_lines(f"{DELAY_ONE_WAY_S * 1e3:.0f} ms each way", delayed),
            f"  30 ms each way: 64 KiB QD16 acked {best.mib_s:,.0f} MiB/s, incl. drain "
            f"{best.drained_mib_s:,.0f} MiB/s (the paced load is half of that); marker lag "
            "p50 / p99 ms: "
            + ", ".join(
                f"{phase} {delayed.lag[phase].p(0.5):,.1f} / {delayed.lag[phase].p(0.99):,.1f} "
                f"({_mean(delayed.lag[phase].load_mib_s):,.0f} MiB/s load)"
                for phase in DELAY_PHASES
            )
            + f"; host writes answered busy for max_lag_s {delayed.lag_busy_writes:,}",
        ]
    lines += [
        f"updates sent by the primary (host writes + track copies) {res.updates_sent:,}, "
        f"applied by the secondary {res.updates_applied:,}",
    ]
    return "\n".join(lines)


def _rpo_lines(label: str, res: Results) -> list[str]:
    def cells(samples: list[int]) -> str:
        if not samples:
            return "no samples"
        return (
            f"{percentile(samples, 0.5) / 1e9:.3f} / {percentile(samples, 0.99) / 1e9:.3f} / "
            f"{max(samples) / 1e9:.3f}  {len(samples)} samples"
        )

    return [
        f"  {label:<18} {phase:<10} {cells(samples)}"
        for phase, samples in (
            ("paced", res.rpo_ns.get("paced", [])),
            ("saturated", res.rpo_ns.get("saturated", [])),
            ("pooled", _rpo_pooled(res)),
        )
    ]


def _mean(values: list[int] | list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _sync_added_us(res: Results) -> float:
    return res.best("sync", "seq", 1).p50_us - res.best("SIMPLEX", "seq", 1).p50_us


def _rpo_pooled(res: Results) -> list[int]:
    return [n for phase in ("paced", "saturated") for n in res.rpo_ns.get(phase, [])]


def _rpo_figures(res: Results, key: str) -> dict[str, float]:
    """RPO = now - C at the secondary, pooled over the paced and saturated phases, and each;
    keys `{key}_p50_s`, `{key}_p99_s`, `{key}_{phase}_p99_s`."""
    pooled = _rpo_pooled(res)
    doc = {
        f"{key}_p50_s": round(percentile(pooled, 0.5) / 1e9, 4) if pooled else -1.0,
        f"{key}_p99_s": round(percentile(pooled, 0.99) / 1e9, 4) if pooled else -1.0,
    }
    for phase, samples in sorted(res.rpo_ns.items()):
        doc[f"{key}_{phase}_p99_s"] = round(percentile(samples, 0.99) / 1e9, 4)
    return doc


def _delayed_figures(res: Results) -> dict[str, float]:
    """The async pair across the delayed link: RPO, marker lag, what its link sustained."""
    delayed = res.delayed
    if delayed is None:
        return {}
    doc = _rpo_figures(delayed, "async_rpo_delay30")
    doc["async_lag_delay30_paced_p99_ms"] = round(delayed.lag["paced"].p(0.99), 4)
    doc["async_lag_delay30_saturated_p99_ms"] = round(delayed.lag["saturated"].p(0.99), 4)
    doc["async_delay30_drained_mib_s"] = round(delayed.best("async", "seq", 16).drained_mib_s, 1)
    return doc


def _result_json(plan: Plan, res: Results, load: list[float]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "sync_ratio_64k": round(res.ratio("sync", "seq", 16), 4),
        "async_ratio_64k": round(res.ratio("async", "seq", 16), 4),
        "semisync_ratio_64k": round(res.ratio("semisync", "seq", 16), 4),
        "sync_added_latency_us_qd1": round(_sync_added_us(res), 1),
        "async_lag_p50_ms": round(res.lag["paced"].p(0.5), 4),
        "async_lag_p99_ms": round(res.lag["paced"].p(0.99), 4),
        "async_lag_idle_p50_ms": round(res.lag["idle"].p(0.5), 4),
        "async_lag_idle_p99_ms": round(res.lag["idle"].p(0.99), 4),
        "async_lag_saturated_p50_ms": round(res.lag["saturated"].p(0.5), 4),
        "async_lag_saturated_p99_ms": round(res.lag["saturated"].p(0.99), 4),
        "async_lag_paced_mib_s": round(_mean(res.lag["paced"].load_mib_s), 1),
        "rtt_p50_us": round(percentile(res.rtt_ns, 0.5) / 1000, 1),
        "async_drained_ratio_64k": round(
            res.best("async", "seq", 16).drained_mib_s / res.best("SIMPLEX", "seq", 16).mib_s, 4
        ),
        "async_suspend_drain_ms_max": round(max(res.suspend_drain_ms, default=0.0), 3),
        **_rpo_figures(res, "async_rpo"),
        **_delayed_figures(res),
    }
    for mode in MODES[1:]:
        doc[f"{mode}_ratio_64k_qd1"] = round(res.ratio(mode, "seq", 1), 4)
        doc[f"{mode}_ratio_4k_qd1"] = round(res.ratio(mode, "rand", 1), 4)
        doc[f"{mode}_ratio_4k_qd16"] = round(res.ratio(mode, "rand", 16), 4)
    for mode in MODES:
        key = mode.lower()
        for kind, qd in PASSES:
            best = res.best(mode, kind, qd)
            size = "64k" if kind == "seq" else "4k"
            doc[f"{key}_{size}_qd{qd}_mib_s"] = round(best.mib_s, 1)
            doc[f"{key}_{size}_qd{qd}_p50_us"] = round(best.p50_us, 1)
            doc[f"{key}_{size}_qd{qd}_p99_us"] = round(best.p99_us, 1)
    doc |= {
        "seed": plan.seed,
        "quick": plan.quick,
        "volume_bytes": plan.volume_bytes,
        "rounds": plan.rounds,
        "loop": aio.loop_name(),
        "load_1m_start": load[0],
        "load_1m_end": load[1],
    }
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/mirror.py")
    parser.add_argument("--quick", action="store_true", help="smaller volumes; under a minute")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT)
    args = parser.parse_args(argv)
    quick: bool = args.quick
    plan = Plan(
        quick=quick,
        seed=args.seed,
        volume_bytes=VOLUME_BYTES_QUICK if quick else VOLUME_BYTES_FULL,
        rounds=ROUNDS_QUICK if quick else ROUNDS_FULL,
        rand_ops=dict(RAND_OPS_QUICK if quick else RAND_OPS_FULL),
        lag_load_s=LAG_LOAD_S_QUICK if quick else LAG_LOAD_S_FULL,
        lag_idle_samples=LAG_IDLE_SAMPLES_QUICK if quick else LAG_IDLE_SAMPLES_FULL,
        delay_load_s=DELAY_LOAD_S_QUICK if quick else DELAY_LOAD_S_FULL,
    )
    print(f"seed {plan.seed}", flush=True)
    load_start = load_average()
    results = main_guard("remcopy-bench-mirror-", lambda root: run(plan, root))
    load = [load_start, load_average()]
    print(_table(plan, results, f"{load[0]:.2f} -> {load[1]:.2f}"))
    print("RESULT " + json.dumps(_result_json(plan, results, load), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
