# Benchmark: the controller core's I/O path over loopback, side by side with the local limit.
#
# What is measured, and why: a host's reads and writes reach a volume through the native
# protocol (host.channel -> TCP -> controller.server -> core -> volume file). Remote copy
# adds to this path, so its cost against plain file I/O is the first thing to know. This
# benchmark starts one real controller process on 127.0.0.1 and measures, in the same run:
# - sequential 64 KiB writes over a whole fresh volume at queue depth 16 and 1 (no flush in
#   the timed part), then sequential 64 KiB reads of it, in MiB/s;
# - the local limit next to it: plain os.pwrite / os.pread of 64 KiB blocks on a fresh sparse
#   file of the same size in the same folder, through the same page cache. Both sides write a
#   fresh sparse file (the controller formats its volumes sparse) and read it back warm, so
#   neither is a warm second pass against a cold first one. Dirty pages are flushed, untimed,
#   after every write pass so one pass's writeback does not land in the next;
# - 4 KiB random writes at queue depth 1 and 32 in IOPS, and QD1 latency p50 / p99, on a
#   prewritten region (overwrites of cached pages: the request path, not block allocation);
# - the CPU seconds per GiB the controller and the host (this process) spent in a pass, from
#   /proc and os.times(): on a 2-CPU machine it says which side is the bottleneck;
# - the native codec alone (encode + decode of a 64 KiB write and its reply, in process): the
#   ceiling the protocol's Python code sets before any socket or disk;
# - all of it twice: uvloop on both ends (the default), then plain asyncio on both ends
#   (REMCOPY_LOOP=asyncio for the controller), to show what the event loop is worth.
# Sequential passes run 3 rounds (2 with --quick), local and controller alternating, and the
# best round counts: the machines are shared and page-cache writes to fresh files vary a lot
# here (a first pass after a large flush can be 2-4x slower, local or not), so the best round
# is the least disturbed one on either side; the worst is shown next to it. The load average
# before and after is printed. The main figures (the RESULT keys DESIGN.md section 7 names)
# come from the uvloop run; a ratio is controller MiB/s (best queue depth, named in the
# table) over the local limit.
#
# Run: .venv/bin/python bench/io.py [--quick] [--seed N]. The last line is `RESULT {json}`.
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from remcopy import pki
from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec
from remcopy.host.channel import Channel
from remcopy.wire import auth, native

T = TypeVar("T")

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
BLOCK_SEQ_BYTES: Final = 64 * KIB
BLOCK_RAND_BYTES: Final = 4 * KIB
SEQ_QDS: Final = (16, 1)
RAND_QDS: Final = (1, 32)
ROUNDS_FULL: Final = 3
ROUNDS_QUICK: Final = 2
# 1 GiB is well past every buffer on the path (1 MiB socket reads, 4 MiB write buffers) and
# fits the page cache of these machines many times; --quick keeps the whole run under a minute.
VOLUME_BYTES_FULL: Final = 1 * GIB
VOLUME_BYTES_QUICK: Final = 256 * MIB
WARMUP_BYTES: Final = 32 * MIB
RAND_REGION_BYTES: Final = 64 * MIB
RAND_OPS_FULL: Final = {1: 20_000, 32: 100_000}
RAND_OPS_QUICK: Final = {1: 4_000, 32: 20_000}
RAND_WARMUP_OPS: Final = 500
CODEC_FRAMES_FULL: Final = 20_000
CODEC_FRAMES_QUICK: Final = 5_000
# The controller takes up to 1 MiB off the socket per wake-up: sixteen 64 KiB frames. The
# codec measurement feeds it batches of the same size.
CODEC_BATCH_FRAMES: Final = 16
SEED_DEFAULT: Final = 20261126
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")

LSS: Final = 0x0A
SSID: Final = 0x1A00
HOST: Final = "benchhost"
SECRET: Final = "bench-io-host-secret"
# Devices (CCA) on the controller: a scratch volume for warm-ups, the random-write region,
# then one fresh volume per sequential write pass (queue depth x round).
CCA_WARMUP: Final = 0
CCA_RAND: Final = 1


def _cca_seq(qd: int, round_: int) -> int:
    return 2 + round_ * len(SEQ_QDS) + SEQ_QDS.index(qd)


def _device(cca: int) -> int:
    return LSS << 8 | cca


@dataclass(kw_only=True)
class Plan:
    quick: bool
    seed: int
    volume_bytes: int
    rounds: int
    rand_ops: dict[int, int]
    codec_frames: int


@dataclass(kw_only=True)
class Pass:
    """One timed pass: throughput and the CPU seconds both processes spent per GiB."""

    mib_s: float
    controller_cpu_s_per_gib: float = 0.0
    host_cpu_s_per_gib: float = 0.0


@dataclass(kw_only=True)
class LoopResult:
    """Every figure of one run with one event loop on both ends."""

    loop: str
    local_write: list[float] = field(default_factory=list)  # MiB/s per round
    local_read: list[float] = field(default_factory=list)
    local_rand_iops: float = 0.0
    write: dict[int, list[Pass]] = field(default_factory=dict)  # QD -> one Pass per round
    read: dict[int, list[Pass]] = field(default_factory=dict)
    rand_iops: dict[int, float] = field(default_factory=dict)
    qd1_p50_us: float = 0.0
    qd1_p99_us: float = 0.0

    def best(self, passes: dict[int, list[Pass]]) -> tuple[int, Pass]:
        """The queue depth with the fastest round, and that round."""
        return max(
            ((qd, p) for qd, rounds in passes.items() for p in rounds), key=lambda x: x[1].mib_s
        )

    @property
    def write_ratio(self) -> float:
        return self.best(self.write)[1].mib_s / max(self.local_write)

    @property
    def read_ratio(self) -> float:
        return self.best(self.read)[1].mib_s / max(self.local_read)


# The local limit...


def _create_sparse(path: Path, size: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    return fd


def _local_write_pass(fd: int, size: int, block: bytes) -> float:
    """Write [0, size) in blocks; MiB/s. Flushes afterwards, untimed."""
    step = len(block)
    started = time.perf_counter()
    for offset in range(0, size, step):
        os.pwrite(fd, block, offset)
    took = time.perf_counter() - started
    os.fdatasync(fd)
    return size / MIB / took


def _local_read_pass(fd: int, size: int, step: int) -> float:
    started = time.perf_counter()
    for offset in range(0, size, step):
        os.pread(fd, step, offset)
    return size / MIB / (time.perf_counter() - started)


def local_seq_round(path: Path, size: int, block: bytes) -> tuple[float, float]:
    """Write a fresh sparse file, read it back: (write MiB/s, read MiB/s)."""
    fd = _create_sparse(path, size)
    try:
        write = _local_write_pass(fd, size, block)
        read = _local_read_pass(fd, size, len(block))
    finally:
        os.close(fd)
        path.unlink()
    return write, read


def local_rand(path: Path, block: bytes, offsets: list[int]) -> float:
    """4 KiB pwrite IOPS at random offsets of a prewritten region."""
    fd = _create_sparse(path, RAND_REGION_BYTES)
    small = block[:BLOCK_RAND_BYTES]
    try:
        _local_write_pass(fd, RAND_REGION_BYTES, block)
        for offset in offsets[-RAND_WARMUP_OPS:]:
            os.pwrite(fd, small, offset)
        started = time.perf_counter()
        for offset in offsets:
            os.pwrite(fd, small, offset)
        iops = len(offsets) / (time.perf_counter() - started)
        os.fdatasync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return iops


# The native codec alone...


def _ready_codecs() -> tuple[native.Connection, native.Connection]:
    """A client and a server codec taken through the handshake frames (proofs not checked)."""
    client, server = native.Connection(native.Side.CLIENT), native.Connection(native.Side.SERVER)
    nonce = bytes(auth.NONCE_SIZE_BYTES)
    proof = bytes(auth.PROOF_SIZE_BYTES)
    exchanges: list[tuple[native.Connection, native.Connection, native.Message]] = [
        (client, server, native.Hello(name=HOST, nonce=nonce)),
        (server, client, native.Challenge(name="bench", nonce=nonce)),
        (client, server, native.Proof(proof=proof)),
        (server, client, native.Welcome(serial=1, name="bench", proof=proof)),
    ]
    for sender, receiver, msg in exchanges:
        receiver.receive_data(sender.send(msg))
        assert isinstance(receiver.next_event(), type(msg))
    return client, server


def measure_codec(frames: int, block: bytes) -> float:
    """MiB/s of 64 KiB writes through both codecs in one process: request and reply."""
    client, server = _ready_codecs()
    device = _device(CCA_WARMUP)
    done = 0
    started = time.perf_counter()
    while done < frames:
        batch = b"".join(
            client.send(
                native.WriteRequest(
                    request_id=done + i + 1, device=device, offset=0, timestamp_ns=1, data=block
                )
            )
            for i in range(CODEC_BATCH_FRAMES)
        )
        server.receive_data(batch)
        replies = []
        while isinstance(msg := server.next_event(), native.Message):
            replies.append(server.send(native.WriteReply(request_id=msg.request_id)))
        client.receive_data(b"".join(replies))
        while isinstance(client.next_event(), native.Message):
            pass
        done += CODEC_BATCH_FRAMES
    return done * len(block) / MIB / (time.perf_counter() - started)


# The controller over loopback...


def _spec(data_dir: Path, plan: Plan) -> ControllerSpec:
    sizes = {CCA_WARMUP: WARMUP_BYTES, CCA_RAND: RAND_REGION_BYTES}
    for round_ in range(plan.rounds):
        for qd in SEQ_QDS:
            sizes[_cca_seq(qd, round_)] = plan.volume_bytes
    return ControllerSpec(
        name="benchio",
        serial=64099,
        data_dir=data_dir,
        lss={LSS: SSID},
        volumes=[
            VolumeSpec(lss=LSS, cca=cca, volser=f"BIO{cca:03d}", size_bytes=size)
            for cca, size in sizes.items()
        ],
        hosts={HOST: SECRET},
    )


def _writer(ch: Channel, device: int, data: bytes) -> Callable[[int], Awaitable[int]]:
    def op(offset: int) -> Awaitable[int]:
        return ch.write(device, offset, data)

    return op


def _reader(ch: Channel, device: int, length: int) -> Callable[[int], Awaitable[bytes]]:
    def op(offset: int) -> Awaitable[bytes]:
        return ch.read(device, offset, length)

    return op


async def _pipelined(qd: int, items: Iterable[T], op: Callable[[T], Awaitable[object]]) -> float:
    """Run op over items with at most qd in flight (qd tasks sharing one iterator); seconds."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await op(item)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(qd)))
    return time.perf_counter() - started


async def _latencies_qd1(
    op: Callable[[int], Awaitable[object]], items: list[int]
) -> tuple[list[int], float]:
    """Each op's latency in ns, one at a time, and the seconds the whole run took."""
    out = []
    clock = time.perf_counter_ns
    first = clock()
    for item in items:
        started = clock()
        await op(item)
        out.append(clock() - started)
    return out, (clock() - first) / 1e9


def _percentile_us(samples_ns: list[int], fraction: float) -> float:
    ordered = sorted(samples_ns)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class LoopBench:
    """One controller with one event loop, and every measurement made against it."""

    def __init__(
        self,
        root: Path,
        plan: Plan,
        loop: str,
        block: bytes,
        offsets: list[int],
        *,
        tls: bool = False,
    ):
        self.root = root
        self.plan = plan
        self.block = block
        self.offsets = offsets
        self.loop = loop
        self.tls = tls
        self.result = LoopResult(loop=f"{loop}+tls" if tls else loop)
        self.controller_pid = 0

    async def run(self) -> LoopResult:
        loop = self.loop
        data_dir = self.root / self.result.loop
        spec = _spec(data_dir, self.plan)
        if self.tls:  # TLS 1.3 with client certificates, as a production link
            spec.site = pki.Site(self.root / "pki")
        proc = ControllerProcess(spec.write(data_dir / "controller.toml"))
        await proc.start(extra_env={"REMCOPY_LOOP": loop})
        assert proc.process is not None
        self.controller_pid = proc.process.pid
        try:
            async with proc.channel(name=HOST, secret=SECRET) as ch:
                await self._sequential(ch)
                await self._random(ch)
        finally:
            code = await proc.stop()
            if code != 0:
                print(f"warning: controller ({loop}) exited with {code}:\n{proc.log_tail()}")
            shutil.rmtree(data_dir, ignore_errors=True)
        return self.result

    async def _timed(self, qd: int, op: Callable[[int], Awaitable[object]]) -> Pass:
        size = self.plan.volume_bytes
        controller0, host0 = _process_cpu_s(self.controller_pid), _own_cpu_s()
        took = await _pipelined(qd, range(0, size, len(self.block)), op)
        gib = size / GIB
        return Pass(
            mib_s=size / MIB / took,
            controller_cpu_s_per_gib=(_process_cpu_s(self.controller_pid) - controller0) / gib,
            host_cpu_s_per_gib=(_own_cpu_s() - host0) / gib,
        )

    async def _sequential(self, ch: Channel) -> None:
        result, block, step = self.result, self.block, len(self.block)
        warm = _device(CCA_WARMUP)
        for qd in SEQ_QDS:
            await _pipelined(qd, range(0, WARMUP_BYTES, step), _writer(ch, warm, block))
            await _pipelined(qd, range(0, WARMUP_BYTES, step), _reader(ch, warm, step))
        await ch.flush((warm,))
        local_seq_round(self.root / "local-warmup.img", WARMUP_BYTES, block)
        for round_ in range(self.plan.rounds):
            write, read = local_seq_round(
                self.root / "local-seq.img", self.plan.volume_bytes, block
            )
            result.local_write.append(write)
            result.local_read.append(read)
            for qd in SEQ_QDS:
                device = _device(_cca_seq(qd, round_))
                await _pipelined(qd, range(0, WARMUP_BYTES, step), _writer(ch, warm, block))
                result.write.setdefault(qd, []).append(
                    await self._timed(qd, _writer(ch, device, block))
                )
                await ch.flush((device,))
                result.read.setdefault(qd, []).append(
                    await self._timed(qd, _reader(ch, device, step))
                )

    async def _random(self, ch: Channel) -> None:
        result, plan = self.result, self.plan
        result.local_rand_iops = local_rand(
            self.root / "local-rand.img", self.block, self.offsets[: plan.rand_ops[1]]
        )
        device = _device(CCA_RAND)
        write4k = _writer(ch, device, self.block[:BLOCK_RAND_BYTES])
        await _pipelined(
            16, range(0, RAND_REGION_BYTES, len(self.block)), _writer(ch, device, self.block)
        )
        for qd in RAND_QDS:
            ops = self.offsets[: plan.rand_ops[qd]]
            await _pipelined(qd, self.offsets[-RAND_WARMUP_OPS:], write4k)
            if qd == 1:
                samples, took = await _latencies_qd1(write4k, ops)
                result.rand_iops[qd] = len(ops) / took
                result.qd1_p50_us = _percentile_us(samples, 0.50)
                result.qd1_p99_us = _percentile_us(samples, 0.99)
            else:
                result.rand_iops[qd] = len(ops) / await _pipelined(qd, ops, write4k)
        await ch.flush((device,))


# Running and reporting...


def _run_loop(loop: str, main: Coroutine[Any, Any, T]) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("note: uvloop is not installed: only the asyncio run is measured")
        return ["asyncio"]
    return ["uvloop", "asyncio"]


def run(plan: Plan) -> tuple[dict[str, LoopResult], float]:
    """Every loop's figures, and the codec's MiB/s; the temp folder is removed in any case."""
    rng = random.Random(plan.seed)
    block = rng.randbytes(BLOCK_SEQ_BYTES)
    slots = RAND_REGION_BYTES // BLOCK_RAND_BYTES
    offsets = [rng.randrange(slots) * BLOCK_RAND_BYTES for _ in range(max(plan.rand_ops.values()))]
    results: dict[str, LoopResult] = {}
    root = Path(tempfile.mkdtemp(prefix="remcopy-bench-io-", dir="/tmp"))
    try:
        codec_mib_s = measure_codec(plan.codec_frames, block)
        for loop in _loops():
            results[loop] = _run_loop(loop, LoopBench(root, plan, loop, block, offsets).run())
        # The same measurements over TLS, on the main loop, in the same run (tls_cost_ratio).
        main_loop = _loops()[0]
        bench = LoopBench(root, plan, main_loop, block, offsets, tls=True)
        results[f"{main_loop}+tls"] = _run_loop(main_loop, bench.run())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results, codec_mib_s


def _table(plan: Plan, results: dict[str, LoopResult], codec_mib_s: float, load: str) -> str:
    runs = list(results.values())

    def spread(values: list[float]) -> str:
        return f"{max(values):,.0f} ({min(values):,.0f})"

    def cpu(p: Pass) -> str:
        return f"{p.controller_cpu_s_per_gib:.2f} / {p.host_cpu_s_per_gib:.2f}"

    rows: list[tuple[str, list[str]]] = [
        ("local pwrite 64 KiB            MiB/s", [spread(r.local_write) for r in runs]),
        *(
            (
                f"controller write 64 KiB QD{qd:<3}  MiB/s",
                [spread([p.mib_s for p in r.write[qd]]) for r in runs],
            )
            for qd in SEQ_QDS
        ),
        (
            "  write_64k_ratio (best QD)",
            [f"{r.write_ratio:.3f} QD{r.best(r.write)[0]}" for r in runs],
        ),
        ("  CPU s/GiB controller / host", [cpu(r.best(r.write)[1]) for r in runs]),
        ("local pread 64 KiB             MiB/s", [spread(r.local_read) for r in runs]),
        *(
            (
                f"controller read 64 KiB QD{qd:<4}  MiB/s",
                [spread([p.mib_s for p in r.read[qd]]) for r in runs],
            )
            for qd in SEQ_QDS
        ),
        ("  read_64k_ratio (best QD)", [f"{r.read_ratio:.3f} QD{r.best(r.read)[0]}" for r in runs]),
        ("  CPU s/GiB controller / host", [cpu(r.best(r.read)[1]) for r in runs]),
        ("local pwrite 4 KiB random       IOPS", [f"{r.local_rand_iops:,.0f}" for r in runs]),
        *(
            (f"controller write 4 KiB QD{qd:<4}   IOPS", [f"{r.rand_iops[qd]:,.0f}" for r in runs])
            for qd in RAND_QDS
        ),
        (
            "  QD1 latency p50 / p99          µs",
            [f"{r.qd1_p50_us:.0f} / {r.qd1_p99_us:.0f}" for r in runs],
        ),
    ]
    width = max(len(label) for label, _ in rows)
    col = 22
    return "\n".join(
        [
            f"remcopy bench/io: controller core over loopback vs local pwrite/pread "
            f"(seed {plan.seed})",
            f"  volume {plan.volume_bytes // MIB} MiB, fresh sparse files both sides, page cache, "
            f"no flush in the timed part; {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, load average {load}",
            f"  column: event loop of host and controller; MiB/s as best (worst) of {plan.rounds} "
            f"rounds; main figures from {runs[0].loop}",
            "",
            " " * width + "".join(f"{r.loop:>{col}}" for r in runs),
            *(label.ljust(width) + "".join(f"{c:>{col}}" for c in cells) for label, cells in rows),
            "",
            f"codec alone (encode + decode, 64 KiB write and reply, one process): "
            f"{codec_mib_s:,.0f} MiB/s",
        ]
    )


def _result_json(
    plan: Plan, results: dict[str, LoopResult], codec_mib_s: float, load: list[float]
) -> dict[str, Any]:
    main = next(iter(results.values()))
    write_qd, write = main.best(main.write)
    read_qd, read = main.best(main.read)
    doc: dict[str, Any] = {
        "write_64k_ratio": round(main.write_ratio, 4),
        "read_64k_ratio": round(main.read_ratio, 4),
        "write_4k_qd1_iops": round(main.rand_iops[1]),
        "write_4k_qd32_iops": round(main.rand_iops[32]),
        "loop": main.loop,
        "write_64k_mib_s": round(write.mib_s, 1),
        "write_64k_qd": write_qd,
        "local_write_64k_mib_s": round(max(main.local_write), 1),
        "read_64k_mib_s": round(read.mib_s, 1),
        "read_64k_qd": read_qd,
        "local_read_64k_mib_s": round(max(main.local_read), 1),
        "write_64k_controller_cpu_s_per_gib": round(write.controller_cpu_s_per_gib, 3),
        "write_64k_host_cpu_s_per_gib": round(write.host_cpu_s_per_gib, 3),
        "read_64k_controller_cpu_s_per_gib": round(read.controller_cpu_s_per_gib, 3),
        "read_64k_host_cpu_s_per_gib": round(read.host_cpu_s_per_gib, 3),
        "qd1_4k_p50_us": round(main.qd1_p50_us, 1),
        "qd1_4k_p99_us": round(main.qd1_p99_us, 1),
        "local_write_4k_iops": round(main.local_rand_iops),
        "codec_64k_mib_s": round(codec_mib_s, 1),
    }
    slow = results.get("asyncio")
    if slow is not None and slow is not main:
        doc |= {
            "asyncio_write_64k_ratio": round(slow.write_ratio, 4),
            "asyncio_read_64k_ratio": round(slow.read_ratio, 4),
            "asyncio_write_4k_qd1_iops": round(slow.rand_iops[1]),
            "asyncio_write_4k_qd32_iops": round(slow.rand_iops[32]),
        }
    secured = next((r for r in results.values() if r.loop.endswith("+tls")), None)
    if secured is not None:
        tls_write, tls_read = secured.best(secured.write)[1], secured.best(secured.read)[1]
        doc |= {
            # TLS / plain throughput at each one's best queue depth, 64 KiB, same run.
            "tls_cost_ratio": round(tls_write.mib_s / write.mib_s, 4),
            "tls_read_cost_ratio": round(tls_read.mib_s / read.mib_s, 4),
            "tls_write_64k_mib_s": round(tls_write.mib_s, 1),
            "tls_read_64k_mib_s": round(tls_read.mib_s, 1),
            "tls_qd1_4k_p50_us": round(secured.qd1_p50_us, 1),
        }
    doc |= {
        "seed": plan.seed,
        "quick": plan.quick,
        "volume_bytes": plan.volume_bytes,
        "load_1m_start": load[0],
        "load_1m_end": load[1],
    }
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/io.py")
    parser.add_argument("--quick", action="store_true", help="smaller volume; under a minute")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT)
    args = parser.parse_args(argv)
    plan = Plan(
        quick=args.quick,
        seed=args.seed,
        volume_bytes=VOLUME_BYTES_QUICK if args.quick else VOLUME_BYTES_FULL,
        rounds=ROUNDS_QUICK if args.quick else ROUNDS_FULL,
        rand_ops=dict(RAND_OPS_QUICK if args.quick else RAND_OPS_FULL),
        codec_frames=CODEC_FRAMES_QUICK if args.quick else CODEC_FRAMES_FULL,
    )
    # SIGTERM takes the Ctrl-C path, so the controller is stopped and the folder removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"seed {plan.seed}", flush=True)
    load_start = os.getloadavg()[0]
    try:
        results, codec_mib_s = run(plan)
    except KeyboardInterrupt:
        print("interrupted: controller stopped, temp folder removed", file=sys.stderr)
        return 130
    load = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print(_table(plan, results, codec_mib_s, f"{load[0]:.2f} -> {load[1]:.2f}"))
    print("RESULT " + json.dumps(_result_json(plan, results, codec_mib_s, load), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
