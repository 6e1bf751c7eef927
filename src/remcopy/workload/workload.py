# The dependent-write workload: chains of writes across a group's primary volumes, each write
# issued only after the previous write of its chain was acknowledged and logged.
#
# Why: consistency is about dependent writes (seed section B.1; DESIGN.md section 5). A chain
# is the smallest program that has them: write n+1 is issued only once write n was
# acknowledged, so a copy that holds write n+1 but not write n was never the state of the
# primaries at any moment. Several chains run at once over volumes on different controllers,
# which is exactly what a group suspend (or freeze) must cut at one time T.
#
# Phases, as FoundationDB's workloads have them (STYLE.md section 7):
#   setup    identify the primaries (capacity, volser) through the host's channels, lay the
#            chains out (`Layout.plan`), create the log with the layout in its first line
#   run      one task per chain: plan -> build the record -> write (stamped now) -> on
#            LateWrite or DeviceBusy reissue with a fresh stamp -> log (flushed) -> next
#   check    read an image back and judge it (`checker.check_image`) against this run's log
#   metrics  `WorkloadStats`: writes acknowledged, per-chain seq, latency p50/p99, retries
#
# Rules this module keeps:
# - A chain never has more than one write in flight, and never issues write n+1 before write
#   n's log line is flushed to the operating system (log.py says what survives kill -9).
# - A write that fails with anything but LateWrite or DeviceBusy ends its chain: its outcome
#   is unknown (it may or may not have landed), so nothing may depend on it. The failure is
#   in the statistics, with its message; the other chains go on.
# - Every random choice comes from the seed (printed by the CLI); the run id tells this run's
#   records from an older run's on the same volumes.
from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from remcopy.errors import DeviceBusy, InputError, LateWrite, RemcopyError
from remcopy.groups.model import Group, GroupPair
from remcopy.host.session import HostSession
from remcopy.workload.checker import Read, check_image
from remcopy.workload.layout import (
    RING_SLOTS_DEFAULT,
    SIZES_DEFAULT,
    Layout,
    PlannedWrite,
    Volume,
    plan_chain,
)
from remcopy.workload.log import LoggedWrite, LogWriter, read_log
from remcopy.workload.record import BLOCK_BYTES, DataRef, RecordKind, build_record
from remcopy.workload.report import CheckReport

# A write refused as late or busy is reissued at most this many times before its chain gives up.
WRITE_RETRIES_MAX: Final = 1000
# Busy answers (semisync, max_lag) are retried after this pause, doubling up to the maximum.
BUSY_PAUSE_S_MIN: Final = 0.001
BUSY_PAUSE_S_MAX: Final = 0.05

OnAck = Callable[[LoggedWrite], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainFailure:
    chain: int
    seq: int
    volume: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadStats:
    """What a run did (a frozen snapshot, as trio's `statistics()`)."""

    seed: int
    run_id: int
    log_path: str
    chains: int
    volumes: int
    controllers: int
    writes_acked: int
    bytes_acked: int
    chain_seq: tuple[int, ...]
    """The last acknowledged seq of each chain."""
    latency_p50_s: float
    latency_p99_s: float
    late_write_retries: int
    busy_retries: int
    elapsed_s: float
    stopped: str
    """Why the run ended: duration, writes, stop event, or all chains failed."""
    failures: tuple[ChainFailure, ...] = ()

    @property
    def progressed(self) -> bool:
        return self.writes_acked > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "run_id": f"{self.run_id:016x}",
            "log": self.log_path,
            "chains": self.chains,
            "volumes": self.volumes,
            "controllers": self.controllers,
            "writes_acked": self.writes_acked,
            "bytes_acked": self.bytes_acked,
            "chain_seq": list(self.chain_seq),
            "latency_p50_s": self.latency_p50_s,
            "latency_p99_s": self.latency_p99_s,
            "late_write_retries": self.late_write_retries,
            "busy_retries": self.busy_retries,
            "elapsed_s": round(self.elapsed_s, 6),
            "stopped": self.stopped,
            "failures": [
                {"chain": f.chain, "seq": f.seq, "volume": f.volume, "message": f.message}
                for f in self.failures
            ],
        }


@dataclass
class _Counters:
    acked: int = 0
    bytes_acked: int = 0
    issued: int = 0
    late_write_retries: int = 0
    busy_retries: int = 0
    latencies_s: list[float] = field(default_factory=list)
    failures: list[ChainFailure] = field(default_factory=list)


class Workload:
    """One run of the dependent-write workload over one group, as one host."""

    def __init__(
        self,
        session: HostSession,
        group: Group,
        *,
        writers: int = 8,
        sizes: tuple[int, ...] = SIZES_DEFAULT,
        seed: int | None = None,
        ring_slots_max: int = RING_SLOTS_DEFAULT,
    ) -> None:
        self.session, self.group = session, group
        self.writers, self.sizes, self.ring_slots_max = writers, tuple(sizes), ring_slots_max
        self.seed = seed if seed is not None else time.time_ns() % (1 << 32)
        self.layout: Layout | None = None
        self.log: LogWriter | None = None
        self.log_path: Path | None = None
        self.chain_seq: list[int] = []
        self._last_stamp: list[int] = []
        self._counters = _Counters()
        self._started = 0.0
        self._elapsed_s = 0.0
        self._stopped = "not run"

    def __repr__(self) -> str:
        return (
            f"<Workload group={self.group.name} seed={self.seed} chains={self.writers} "
            f"acked={self._counters.acked} stopped={self._stopped!r}>"
        )

    # Setup...

    async def setup(
        self, log_path: Path, *, overwrite_log: bool = False, fsync: bool = False
    ) -> Layout:
        """Identify the group's primaries, lay the chains out, create the log."""
        volumes = await self._volumes()
        run_id = int.from_bytes(
            hashlib.blake2b(f"{self.seed}:{time.time_ns()}".encode(), digest_size=8).digest()
        )
        layout = Layout.plan(
            run_id=run_id,
            seed=self.seed,
            chains=self.writers,
            volumes=volumes,
            sizes=self.sizes,
            ring_slots_max=self.ring_slots_max,
        )
        self.log = LogWriter.create(
            log_path,
            layout,
            group=self.group.name,
            host=self.session.definition.name,
            overwrite=overwrite_log,
            fsync=fsync,
        )
        self.layout, self.log_path = layout, log_path
        self.chain_seq = [0] * layout.chains
        self._last_stamp = [0] * layout.chains
        return layout

    async def _volumes(self) -> tuple[Volume, ...]:
        unreachable = [
            f"{p.name}: no path to primary {p.primary}"
            for p in self.group.pairs
            if not p.primary_controller or p.primary_controller not in self.session.channels
        ]
        if unreachable:
            raise InputError(
                f"workload: host {self.session.definition.name} cannot write every primary "
                f"of group {self.group.name}: " + "; ".join(unreachable)
            )
        by_controller: dict[str, list[GroupPair]] = {}
        for pair in self.group.pairs:
            by_controller.setdefault(pair.primary_controller, []).append(pair)
        volumes = []
        problems = []
        for controller, pairs in sorted(by_controller.items()):
            channel = self.session.channels[controller]
            identities = await channel.identify(tuple(p.primary.device_key for p in pairs))
            by_key = {i.device: i for i in identities}
            for pair in pairs:
                identity = by_key.get(pair.primary.device_key)
                if identity is None or identity.status:
                    problems.append(f"{pair.name}: {controller} cannot identify {pair.primary}")
                    continue
                # A pair's volser is its defined primary's. After a failback the primary is
                # the defined secondary, whose own label the catalog does not keep: no check.
                stale = pair.volser and identity.volser and identity.volser != pair.volser
                if stale and not self.group.is_reversed:
                    problems.append(
                        f"{pair.primary} holds volser {identity.volser}, the group says "
                        f"{pair.volser}: rescan and reload the group before writing"
                    )
                    continue
                volumes.append(
                    Volume(
                        address=pair.primary,
                        volser=identity.volser or pair.volser,
                        controller=controller,
                        capacity_bytes=identity.capacity_bytes,
                    )
                )
        if problems:
            raise InputError("workload: " + "; ".join(problems))
        return tuple(volumes)

    # Running...

    async def run(
        self,
        *,
        duration_s: float | None = None,
        writes: int | None = None,
        stop_event: asyncio.Event | None = None,
        on_ack: OnAck | None = None,
    ) -> None:
        """Run every chain until the duration passed, `writes` were issued, or `stop_event`."""
        assert self.layout is not None and self.log is not None, "setup() first"
        check_stop(duration_s=duration_s, writes=writes, stop_event=stop_event)
        loop = asyncio.get_running_loop()
        deadline = None if duration_s is None else loop.time() + duration_s
        self._started = time.perf_counter()
        reasons: set[str] = set()

        def should_stop() -> bool:
            if stop_event is not None and stop_event.is_set():
                reasons.add("stop event")
            elif deadline is not None and loop.time() >= deadline:
                reasons.add("duration")
            elif writes is not None and self._counters.issued >= writes:
                reasons.add("writes")
            else:
                return False
            return True

        async with asyncio.TaskGroup() as tasks:
            for chain in range(self.layout.chains):
                tasks.create_task(self._chain(chain, should_stop, on_ack), name=f"chain {chain}")
        self._elapsed_s = time.perf_counter() - self._started
        if len(self._counters.failures) == self.layout.chains:
            reasons.add("all chains failed")
        self._stopped = ", ".join(sorted(reasons)) or "chains failed"

    async def _chain(
        self, chain: int, should_stop: Callable[[], bool], on_ack: OnAck | None
    ) -> None:
        layout = self.layout
        assert layout is not None
        last_data: LoggedWrite | None = None
        for planned in plan_chain(layout, chain):
            if should_stop():
                return
            self._counters.issued += 1
            names = None
            if planned.kind is RecordKind.INDEX:
                assert last_data is not None and last_data.seq == planned.names_seq
                names = DataRef(
                    address=last_data.volume,
                    offset=last_data.offset,
                    seq=last_data.seq,
                    checksum=last_data.checksum,
                    blocks=last_data.length // BLOCK_BYTES,
                )
            written = await self._write(planned, names)
            if written is None:
                return
            if written.kind is RecordKind.DATA:
                last_data = written
            if on_ack is not None:
                on_ack(written)

    async def _write(self, planned: PlannedWrite, names: DataRef | None) -> LoggedWrite | None:
        layout, log = self.layout, self.log
        assert layout is not None and log is not None
        volume = layout.volumes[planned.volume]
        channel = self.session.channels[volume.controller]
        chain, counters = planned.chain, self._counters
        started = time.perf_counter()
        pause_s = BUSY_PAUSE_S_MIN
        for _attempt in range(WRITE_RETRIES_MAX + 1):
            stamp = max(time.time_ns(), self._last_stamp[chain] + 1)
            data, checksum = build_record(
                kind=planned.kind,
                run_id=layout.run_id,
                chain=chain,
                seq=planned.seq,
                stamp_ns=stamp,
                address=volume.address,
                volser=volume.volser,
                offset=planned.offset,
                length=planned.length,
                names=names,
            )
            try:
                await channel.write(
                    volume.address.device_key, planned.offset, data, timestamp_ns=stamp
                )
            except LateWrite:
                counters.late_write_retries += 1  # refused, never written: a fresh stamp
                continue
            except DeviceBusy:
                counters.busy_retries += 1
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, BUSY_PAUSE_S_MAX)
                continue
            except RemcopyError as exc:
                self._failed(planned, volume, str(exc))
                return None
            break
        else:
            self._failed(planned, volume, f"refused {WRITE_RETRIES_MAX + 1} times (late or busy)")
            return None
        acked_ns = time.time_ns()
        counters.latencies_s.append(time.perf_counter() - started)
        self._last_stamp[chain] = stamp
        written = LoggedWrite(
            chain=chain,
            seq=planned.seq,
            kind=planned.kind,
            volume=volume.address,
            offset=planned.offset,
            length=planned.length,
            checksum=checksum,
            stamp_ns=stamp,
            acked_ns=acked_ns,
        )
        try:
            await log.append(written)
        except RemcopyError as exc:
            self._failed(planned, volume, f"acknowledged but not logged: {exc}")
            return None
        counters.acked += 1
        counters.bytes_acked += planned.length
        self.chain_seq[chain] = planned.seq
        return written

    def _failed(self, planned: PlannedWrite, volume: Volume, message: str) -> None:
        self._counters.failures.append(
            ChainFailure(
                chain=planned.chain, seq=planned.seq, volume=str(volume.address), message=message
            )
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.close(writes=self._counters.acked, stopped=self._stopped)

    # Checking and metrics...

    async def check(
        self, read: Read, *, require_all_acked: bool, at_ns: int | None = None, image: str = "image"
    ) -> CheckReport:
        """Judge an image against this run's log (read back from the file, as verify does)."""
        assert self.log_path is not None, "setup() first"
        return await check_image(
            read,
            read_log(self.log_path),
            require_all_acked=require_all_acked,
            at_ns=at_ns,
            image=image,
        )

    def metrics(self) -> WorkloadStats:
        layout, counters = self.layout, self._counters
        latencies = sorted(counters.latencies_s)
        return WorkloadStats(
            seed=self.seed,
            run_id=0 if layout is None else layout.run_id,
            log_path=str(self.log_path or ""),
            chains=self.writers,
            volumes=0 if layout is None else len(layout.volumes),
            controllers=0 if layout is None else len(layout.controllers),
            writes_acked=counters.acked,
            bytes_acked=counters.bytes_acked,
            chain_seq=tuple(self.chain_seq),
            latency_p50_s=_quantile(latencies, 0.50),
            latency_p99_s=_quantile(latencies, 0.99),
            late_write_retries=counters.late_write_retries,
            busy_retries=counters.busy_retries,
            elapsed_s=self._elapsed_s,
            stopped=self._stopped,
            failures=tuple(counters.failures),
        )


def check_stop(
    *, duration_s: float | None, writes: int | None, stop_event: asyncio.Event | None
) -> None:
    """Refuse a run that could never stop, or stop before it starts."""
    if duration_s is None and writes is None and stop_event is None:
        raise InputError("workload: give a duration, a number of writes, or a stop event")
    if duration_s is not None and duration_s <= 0:
        raise InputError(f"workload: duration must be > 0 s (got {duration_s})")
    if writes is not None and writes < 1:
        raise InputError(f"workload: writes must be >= 1 (got {writes})")


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_workload(
    session: HostSession,
    group: Group,
    *,
    log_path: Path,
    writers: int = 8,
    duration_s: float | None = None,
    writes: int | None = None,
    sizes: tuple[int, ...] = SIZES_DEFAULT,
    seed: int | None = None,
    ring_slots_max: int = RING_SLOTS_DEFAULT,
    stop_event: asyncio.Event | None = None,
    on_ack: OnAck | None = None,
    overwrite_log: bool = False,
    fsync: bool = False,
) -> WorkloadStats:
    """Set up, run until a stop condition, close the log; return the statistics."""
    check_stop(duration_s=duration_s, writes=writes, stop_event=stop_event)
    workload = Workload(
        session, group, writers=writers, sizes=sizes, seed=seed, ring_slots_max=ring_slots_max
    )
    await workload.setup(log_path, overwrite_log=overwrite_log, fsync=fsync)
    try:
        await workload.run(
            duration_s=duration_s, writes=writes, stop_event=stop_event, on_ack=on_ack
        )
    finally:
        workload.close()
    return workload.metrics()
