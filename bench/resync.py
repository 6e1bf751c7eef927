# Benchmark: resync after a suspend (copy only the changed tracks) against a raw file copy.
#
# What is measured, and why: DESIGN.md section 8 aims a resync of X % changed tracks at
# <= (2.5 * X/100 + 0.005) of a raw copy's time, and a full resync at >= 0.55x the speed of a
# raw copy. A resync is what a pair does after every planned suspend (backups, tests at the
# secondary site) and after every link failure, so it decides how long a site is without a
# current copy. This benchmark starts two real controller processes on 127.0.0.1 (site A
# primary, site B secondary, peered) and, in the same run:
# - fills a 256 MiB primary volume (64 MiB with --quick) with data, establishes a sync pair to
#   the secondary and waits for DUPLEX (the initial copy's time is printed too);
# - for X = 1 %, 10 %, 100 %: suspends the pair at T = now + 50 ms, writes X % of the volume's
#   64 KiB tracks whole (distinct tracks at random, new data; change-recorded), flushes both
#   controllers (untimed), then times RESUME from the request until the primary announces
#   DUPLEX on its event stream, and takes the bytes the copier sent from the primary's
#   `status()["counters"]["bytes_copied"]` before and after (checked against X % of the
#   tracks: a resync must copy exactly the changed tracks);
# - the fixed cost of a resume with nothing to copy (suspend, resume at once): the floor the
#   small resyncs stand on; and the time of one durable pair-state commit of one device in
#   the same folder (the pair store's SQLite WAL transaction and its fsync), since a resume
#   with nothing to copy commits once on the secondary and then once on the primary (with
#   tracks to copy: once more on each side after the copy);
# - the raw copy next to it: `shutil.copyfile` of a file of the volume's size in the same
#   folder, the source written (and fdatasync'ed, like the flushed volumes) just before, so
#   source pages are cached and clean on both sides; the copy's destination is new, its
#   writeback is flushed untimed afterwards. A raw copy runs before every resync;
# - ratios, with the direction each one goes: `resync_1pct_ratio` and `resync_10pct_ratio` =
#   resync time / raw copy time (lower is better; targets 0.03 and 0.255),
#   `resync_full_ratio` = raw copy time / full resync time (higher is better; target >= 0.55).
# Every resync runs 3 times (2 with --quick); the best run counts on either side (the least
# disturbed on a shared machine), the worst is shown next to it. At the end the whole primary
# and secondary volumes are read back and compared (a resync that was fast but wrong counts
# for nothing).
#
# Run: .venv/bin/python bench/resync.py [--quick] [--seed N]. The last line is `RESULT {json}`.
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from _world import (
    MIB,
    TRACK_BYTES,
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
    wait_duplex,
)
from remcopy import aio
from remcopy.controller.pairstore import PairStore
from remcopy.host.channel import Channel, Subscription
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairOp

SEED_DEFAULT: Final = 20261126
VOLUME_BYTES_FULL: Final = 256 * MIB
VOLUME_BYTES_QUICK: Final = 64 * MIB
REPEATS_FULL: Final = 3
REPEATS_QUICK: Final = 2
PERCENTS: Final = (1, 10, 100)
EMPTY_RESUMES: Final = 5
COMMIT_SAMPLES: Final = 20
SERIAL_PROBE: Final = 99999  # the commit probe's own pair store (no controller's)
SUSPEND_MARGIN_NS: Final = 50_000_000
CCA: Final = 0
READ_STEP_BYTES: Final = 1 * MIB


@dataclass(kw_only=True)
class Plan:
    quick: bool
    seed: int
    volume_bytes: int
    repeats: int

    @property
    def tracks(self) -> int:
        return self.volume_bytes // TRACK_BYTES


@dataclass(kw_only=True)
class Resync:
    percent: int
    tracks: int
    seconds: float
    reply_s: float  # resume request -> its answer (state committed on both sides)
    bytes_copied: int
    cpu_s: tuple[float, float, float]  # primary, secondary, this process, during the resume

    @property
    def expected_bytes(self) -> int:
        return self.tracks * TRACK_BYTES


@dataclass
class Results:
    resyncs: dict[int, list[Resync]] = field(default_factory=dict)
    raw_s: list[float] = field(default_factory=list)
    empty_resume_s: list[float] = field(default_factory=list)
    empty_answer_s: list[float] = field(default_factory=list)
    commit_s: list[float] = field(default_factory=list)
    establish_s: float = 0.0
    identical: bool = False

    def best(self, percent: int) -> Resync:
        return min(self.resyncs[percent], key=lambda r: r.seconds)

    def worst(self, percent: int) -> Resync:
        return max(self.resyncs[percent], key=lambda r: r.seconds)

    @property
    def raw_best_s(self) -> float:
        return min(self.raw_s)

    def ratio(self, percent: int) -> float:
        """1 % and 10 %: resync / raw (lower is better); 100 %: raw / resync (higher is)."""
        resync = self.best(percent).seconds
        return self.raw_best_s / resync if percent == 100 else resync / self.raw_best_s


def target(percent: int) -> float:
    return 0.55 if percent == 100 else 2.5 * percent / 100 + 0.005


class Bench:
    def __init__(self, plan: Plan, root: Path, world: World, ch: Channel, events: Subscription):
        self.plan = plan
        self.root = root
        self.world = world
        self.ch = ch
        self.events = events
        self.rng = random.Random(plan.seed)
        self.block = self.rng.randbytes(TRACK_BYTES)
        self.device = primary_device(CCA)
        self.results = Results()
        self.generation = 0
        self.meter = CpuMeter(world.pids)
        self.cpu = (0.0, 0.0, 0.0)

    async def run(self) -> Results:
        await self._write_tracks(range(self.plan.tracks))
        await self._flush()
        self.results.establish_s = await establish(
            self.ch, self.events, self.world, [CCA], CopyMode.SYNC
        )
        self._commit_cost()
        for _ in range(EMPTY_RESUMES):
            await self._suspend()
            await self._flush()
            seconds, reply_s, _copied = await self._resume()
            self.results.empty_resume_s.append(seconds)
            self.results.empty_answer_s.append(reply_s)
        for _ in range(self.plan.repeats):
            for percent in PERCENTS:
                self.results.raw_s.append(self._raw_copy())
                self.results.resyncs.setdefault(percent, []).append(await self._resync(percent))
        self.results.raw_s.append(self._raw_copy())
        self.results.identical = await self._identical()
        return self.results

    def _track_data(self, track: int) -> bytes:
        head = f"{self.generation:08d}:{track:010d}".encode()
        return head + self.block[len(head) :]

    async def _write_tracks(self, tracks: range | list[int]) -> None:
        self.generation += 1

        async def write(track: int) -> None:
            await self.ch.write(self.device, track * TRACK_BYTES, self._track_data(track))

        await run_qd(16, tracks, write)

    async def _flush(self) -> None:
        await self.ch.flush((self.device,))
        async with self.world.host_channel(self.world.secondary) as sec:
            await sec.flush((secondary_device(CCA),))

    async def _suspend(self) -> None:
        reply = await self.ch.pair_op(
            PairOp.SUSPEND,
            (self.world.item(CCA, CopyMode.SYNC),),
            at_ns=time.time_ns() + SUSPEND_MARGIN_NS,
        )
        all_ok(reply, "suspend")
        if reply.results[0].state is not PairState.SUSPENDED:
            raise RuntimeError(f"suspend left the pair {reply.results[0].state.name}")

    async def _copied(self) -> int:
        return int((await self.ch.status())["counters"]["bytes_copied"])

    async def _resume(self) -> tuple[float, float, int]:
        """RESUME until DUPLEX: (seconds, seconds to the answer, bytes the copier sent)."""
        before = await self._copied()
        self.meter.start()
        started = time.perf_counter()
        reply = await self.ch.pair_op(PairOp.RESUME, (self.world.item(CCA, CopyMode.SYNC),))
        answered = time.perf_counter()
        all_ok(reply, "resume")
        await wait_duplex(self.events, 1)
        took = time.perf_counter() - started
        self.cpu = self.meter.stop()
        return took, answered - started, await self._copied() - before

    async def _resync(self, percent: int) -> Resync:
        count = max(1, round(self.plan.tracks * percent / 100))
        tracks = self.rng.sample(range(self.plan.tracks), count)
        await self._suspend()
        await self._write_tracks(tracks)
        await self._flush()
        seconds, reply_s, copied = await self._resume()
        return Resync(
            percent=percent,
            tracks=count,
            seconds=seconds,
            reply_s=reply_s,
            bytes_copied=copied,
            cpu_s=self.cpu,
        )

    def _raw_copy(self) -> float:
        """shutil.copyfile of a just-written file of the volume's size; seconds."""
        source, target_ = self.root / "raw-source.img", self.root / "raw-copy.img"
        chunk = self.block * 16
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for offset in range(0, self.plan.volume_bytes, len(chunk)):
                os.pwrite(fd, chunk, offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        started = time.perf_counter()
        shutil.copyfile(source, target_)
        took = time.perf_counter() - started
        fd = os.open(target_, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        source.unlink()
        target_.unlink()
        return took

    def _commit_cost(self) -> None:
        """The time of one durable pair-state commit of one device (what a controller's
        pair store does per commit: one SQLite WAL transaction, fsync'ed) here."""
        folder = self.root / "commit-probe"
        folder.mkdir()
        store = PairStore(folder, serial=SERIAL_PROBE)
        store.load()
        try:
            for n in range(COMMIT_SAMPLES):
                started = time.perf_counter()
                store.commit({0: {"state": "DUPLEX", "suspend_at_ns": n}})
                self.results.commit_s.append(time.perf_counter() - started)
        finally:
            store.close()
        shutil.rmtree(folder)

    async def _identical(self) -> bool:
        async with self.world.host_channel(self.world.secondary) as sec:
            digests = []
            for ch, device in ((self.ch, self.device), (sec, secondary_device(CCA))):
                digest = hashlib.sha256()
                for offset in range(0, self.plan.volume_bytes, READ_STEP_BYTES):
                    digest.update(await ch.read(device, offset, READ_STEP_BYTES))
                digests.append(digest.hexdigest())
        return digests[0] == digests[1]


async def run(plan: Plan, root: Path) -> Results:
    async with (
        two_sites(root, {CCA: plan.volume_bytes}) as world,
        world.host_channel(world.primary) as ch,
    ):
        events = await ch.subscribe()
        return await Bench(plan, root, world, ch, events).run()


# Reporting...


def _table(plan: Plan, res: Results, load: str) -> str:
    raw = res.raw_best_s
    mib = plan.volume_bytes / MIB
    gib = res.best(100).bytes_copied / (1024 * MIB)

    def row(cells: list[str]) -> str:
        widths = (26, 8, 20, 9, 11, 34, 28)
        return "".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [
        f"remcopy bench/resync: resume of a suspended sync pair vs a raw file copy "
        f"(seed {plan.seed})",
        f"  volume {mib:.0f} MiB, {plan.tracks} tracks of 64 KiB, primary and secondary "
        f"controller on 127.0.0.1; best (worst) of {plan.repeats} runs; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {aio.loop_name()}, load average {load}",
        "  time s: RESUME sent -> primary announces DUPLEX; answer s: RESUME sent -> its answer "
        "(PENDING committed on both sides); ratio: resync/raw for 1 % and 10 % (lower is "
        "better), raw/resync for 100 % (higher is better)",
        "",
        row(["", "tracks", "time s", "MiB/s", "answer s", "ratio (target)", "bytes copied"]),
        row(
            [
                "raw copy (shutil.copyfile)",
                "-",
                f"{raw:.4f} ({max(res.raw_s):.4f})",
                f"{mib / raw:,.0f}",
                "-",
                "-",
                f"{plan.volume_bytes:,}",
            ]
        ),
    ]
    for percent in PERCENTS:
        best, worst = res.best(percent), res.worst(percent)
        direction = "raw/resync >=" if percent == 100 else "resync/raw <="
        ok = "bytes ok" if best.bytes_copied == best.expected_bytes else "MISMATCH"
        lines.append(
            row(
                [
                    f"resync {percent} % changed",
                    f"{best.tracks}",
                    f"{best.seconds:.4f} ({worst.seconds:.4f})",
                    f"{best.bytes_copied / MIB / best.seconds:,.0f}",
                    f"{best.reply_s:.4f}",
                    f"{res.ratio(percent):.3f} ({direction} {target(percent):.3f})",
                    f"{best.bytes_copied:,} {ok}",
                ]
            )
        )
    lines += [
        "",
        "  bytes copied vs expected (changed tracks x 64 KiB), every run: "
        + ", ".join(
            f"{r.percent} %: {r.bytes_copied:,}/{r.expected_bytes:,}"
            for p in PERCENTS
            for r in res.resyncs[p]
        ),
        f"  resume with nothing to copy (fixed cost) until DUPLEX: p50 "
        f"{percentile(res.empty_resume_s, 0.5) * 1000:.2f} ms, min "
        f"{min(res.empty_resume_s) * 1000:.2f} ms over {len(res.empty_resume_s)}; of which "
        f"until the answer (both sides committed): p50 "
        f"{percentile(res.empty_answer_s, 0.5) * 1000:.2f} ms",
        f"  one durable pair-state commit (SQLite WAL, fsync) here: p50 "
        f"{percentile(res.commit_s, 0.5) * 1000:.2f} ms, p90 "
        f"{percentile(res.commit_s, 0.9) * 1000:.2f} ms; a resume with nothing to copy makes "
        "one on each side before DUPLEX, one after the other",
        "  CPU in the best full resync, primary / secondary / host: "
        + " / ".join(f"{c / gib:.2f}" for c in res.best(100).cpu_s)
        + " s per GiB copied; busy "
        + " / ".join(f"{c / res.best(100).seconds:.0%}" for c in res.best(100).cpu_s)
        + " of the wall time",
        f"  initial copy at establish: {res.establish_s:.3f} s "
        f"({mib / res.establish_s:,.0f} MiB/s)",
        f"  primary and secondary identical after the last resync: "
        f"{'yes' if res.identical else 'NO'}",
    ]
    return "\n".join(lines)


def _result_json(plan: Plan, res: Results, load: list[float]) -> dict[str, Any]:
    gib = res.best(100).bytes_copied / (1024 * MIB)
    doc: dict[str, Any] = {
        "resync_1pct_ratio": round(res.ratio(1), 4),
        "resync_10pct_ratio": round(res.ratio(10), 4),
        "resync_full_ratio": round(res.ratio(100), 4),
        "raw_copy_s": round(res.raw_best_s, 5),
        "resync_1pct_s": round(res.best(1).seconds, 5),
        "resync_10pct_s": round(res.best(10).seconds, 5),
        "resync_full_s": round(res.best(100).seconds, 5),
        "resync_1pct_target": round(target(1), 4),
        "resync_10pct_target": round(target(10), 4),
        "resync_full_target": round(target(100), 4),
        "resume_empty_s": round(min(res.empty_resume_s), 5),
        "resume_empty_p50_s": round(percentile(res.empty_resume_s, 0.5), 5),
        "resync_full_primary_cpu_s_per_gib": round(res.best(100).cpu_s[0] / gib, 3),
        "resync_full_secondary_cpu_s_per_gib": round(res.best(100).cpu_s[1] / gib, 3),
        "state_commit_p50_s": round(percentile(res.commit_s, 0.5), 5),
        "establish_s": round(res.establish_s, 4),
        "bytes_exact": all(
            r.bytes_copied == r.expected_bytes for runs in res.resyncs.values() for r in runs
        ),
        "identical": res.identical,
        "seed": plan.seed,
        "quick": plan.quick,
        "volume_bytes": plan.volume_bytes,
        "loop": aio.loop_name(),
        "load_1m_start": load[0],
        "load_1m_end": load[1],
    }
    for percent in PERCENTS:
        best = res.best(percent)
        doc[f"resync_{percent}pct_bytes_copied"] = best.bytes_copied
        doc[f"resync_{percent}pct_bytes_expected"] = best.expected_bytes
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/resync.py")
    parser.add_argument("--quick", action="store_true", help="smaller volume; under a minute")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT)
    args = parser.parse_args(argv)
    quick: bool = args.quick
    plan = Plan(
        quick=quick,
        seed=args.seed,
        volume_bytes=VOLUME_BYTES_QUICK if quick else VOLUME_BYTES_FULL,
        repeats=REPEATS_QUICK if quick else REPEATS_FULL,
    )
    print(f"seed {plan.seed}", flush=True)
    load_start = load_average()
    results = main_guard("remcopy-bench-resync-", lambda root: run(plan, root))
    load = [load_start, load_average()]
    print(_table(plan, results, f"{load[0]:.2f} -> {load[1]:.2f}"))
    print("RESULT " + json.dumps(_result_json(plan, results, load), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
