# Benchmark: the controller's NBD export side by side with `nbdkit file` and `qemu-nbd`.
#
# What is measured, and why: administrators copy images into and out of volumes with stock
# NBD tools, so the export is judged against the servers those tools normally talk to
# (DESIGN.md section 8: write >= 0.7x and read >= 0.8x `nbdkit file`; >= 1.0x `qemu-nbd`).
# In one run, on the same machine and the same file system:
# - remcopy: one controller process (uvloop) exporting one SIMPLEX volume of SIZE bytes, with
#   the default settings (multi-conn advertised);
# - nbdkit: `nbdkit file` serving a sparse file of the same size;
# - qemu-nbd: `qemu-nbd -f raw --cache=writeback --aio=threads` on another such file.
# For each server, in rounds that alternate the servers:
# - `nbdcopy SRC nbd://...` (write: a file of random bytes into the export), then
#   `nbdcopy nbd://... null:` (read: the export out, discarded, so the local side costs
#   nothing). nbdcopy uses its defaults: multi-conn where the server advertises it (one
#   connection per thread, 2 here), 64 requests of 256 KiB in flight per connection. No
#   flush in the timed part; dirty pages are written back (sync) untimed after each pass so
#   one pass's writeback does not land in the next. The best round counts (the machines are
#   shared and page-cache writes vary a lot here); the worst is shown next to it.
# - remcopy with multi-conn not advertised (`nbd_multi_conn = false`, a second controller), so
#   nbdcopy uses one connection instead of one per thread. The issue asks to advertise
#   multi-conn only if it does not cut throughput: `multi_conn_*_vs_single` tracks it.
# - the controller's CPU seconds per GiB in each pass (/proc): steadier than wall time on a
#   shared 2-CPU machine, and what a Python server spends.
# - `fio --ioengine=nbd` random 4 KiB and 64 KiB reads and writes at queue depth 1, time
#   based, on a prewritten region: IOPS and mean latency. This is the request path's
#   round-trip cost, where a Python server pays most.
# - with TLS, in the same rounds: a controller with `nbd_tls = "require"` (TLS 1.3, a client
#   certificate naming a configured host) and `nbdkit --tls=require --tls-verify-peer` with
#   the same CA and server certificate (made here with trustme), both through
#   `nbds://...?tls-certificates=DIR`: `nbd_tls_write_vs_nbdkit_tls`,
#   `nbd_tls_read_vs_nbdkit_tls` and `tls_cost_write_ratio` / `tls_cost_read_ratio` (the TLS
#   controller's MB/s over the plain one's).
# MB/s is 10^6 bytes per second. Ratios are remcopy / peer (above 1 means remcopy is faster).
#
# Run: .venv/bin/python bench/nbd.py [--quick]. The last line is `RESULT {json}`.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trustme

from remcopy import aio
from remcopy.controller import atrest
from remcopy.controller.nbd_server import export_uri
from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec, free_port

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
MB: Final = 1_000_000
SIZE_FULL_BYTES: Final = 1 * GIB
SIZE_QUICK_BYTES: Final = 256 * MIB
ROUNDS_FULL: Final = 3
ROUNDS_QUICK: Final = 2
FIO_MS_FULL: Final = 5000
FIO_MS_QUICK: Final = 500
# fio works on a region that every server has already written (no block allocation timed).
FIO_REGION_BYTES: Final = 64 * MIB
FIO_JOBS: Final = (("randwrite", 4 * KIB), ("randread", 4 * KIB), ("randwrite", 64 * KIB),
                   ("randread", 64 * KIB))  # fmt: skip
# A peer server writes its pid file once it listens; how long to wait for that.
SERVER_READY_TIMEOUT_S: Final = 30.0
TOOL_TIMEOUT_S: Final = 600.0
FIO_SERVERS: Final = ("remcopy", "nbdkit", "qemu-nbd")
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
VOLSER: Final = "BENCH0"

_PIDS: list[int] = []  # peer servers started, killed on any way out
_CONTROLLERS: list[ControllerProcess] = []


@dataclass
class Server:
    name: str
    uri: str
    pid: int
    writes: list[float] = field(default_factory=list)  # seconds per pass
    reads: list[float] = field(default_factory=list)
    write_cpu: list[float] = field(default_factory=list)  # server CPU seconds per pass
    read_cpu: list[float] = field(default_factory=list)
    multi_conn: bool = False  # as nbdinfo reports it
    fio: dict[str, tuple[float, float]] = field(default_factory=dict)  # job -> iops, mean µs


async def run(*argv: str) -> str:
    """Run a command to its end; its stdout, or an error naming it with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {process.returncode}: {stderr.decode(errors='replace')}"
        )
    return stdout.decode(errors="replace")


async def daemonise(log: Path, *argv: str) -> None:
    """Start a server that forks into the background once it listens; wait for the parent.

    Its output goes to `log`, not to pipes: the daemon would hold a pipe open forever.
    """
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    async with asyncio.timeout(SERVER_READY_TIMEOUT_S):
        code = await process.wait()
    if code != 0:
        output = log.read_text(errors="replace")  # noqa: ASYNC240 (a failure path)
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {output}")


async def timed(*argv: str) -> float:
    started = time.perf_counter()
    await run(*argv)
    return time.perf_counter() - started


async def wait_pid_file(path: Path) -> int:
    """The pid a daemonising server wrote once it listens (bounded wait)."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()  # noqa: ASYNC240 (a few bytes, local)
            if text:
                return int(text)
        await asyncio.sleep(0.01)
    raise RuntimeError(f"no pid file {path} after {SERVER_READY_TIMEOUT_S} s")


async def stop_peer(pid: int) -> None:
    """SIGTERM a peer server we started (not our child: it daemonised), SIGKILL if it stays."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError once it is gone
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
    _PIDS.remove(pid)


def sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


@dataclass
class Certificates:
    """One CA; a server certificate for 127.0.0.1 (the controller's [tls], and nbdkit's
    folder) and a client certificate for host `bench` (libnbd's folder)."""

    tls: dict[str, Path]
    nbdkit_dir: Path
    client_dir: Path

    @classmethod
    def make(cls, root: Path) -> Certificates:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost", common_name="benchnbd")
        client = ca.issue_cert("bench", common_name="bench")
        nbdkit_dir, client_dir = root / "nbdkit-tls", root / "client-tls"
        for folder in (nbdkit_dir, client_dir):
            atrest.make_folder(folder)
            ca.cert_pem.write_to_path(str(folder / "ca-cert.pem"))
        server.cert_chain_pems[0].write_to_path(str(nbdkit_dir / "server-cert.pem"))
        _private(nbdkit_dir / "server-key.pem", server.private_key_pem.bytes())
        client.cert_chain_pems[0].write_to_path(str(client_dir / "client-cert.pem"))
        _private(client_dir / "client-key.pem", client.private_key_pem.bytes())
        tls = {
            "ca": nbdkit_dir / "ca-cert.pem",
            "cert": nbdkit_dir / "server-cert.pem",
            "key": nbdkit_dir / "server-key.pem",
        }
        return cls(tls=tls, nbdkit_dir=nbdkit_dir, client_dir=client_dir)


def _private(path: Path, data: bytes) -> None:
    with os.fdopen(atrest.open_private(path, os.O_WRONLY | os.O_TRUNC), "wb") as out:
        out.write(data)


async def start_controller(
    root: Path,
    name: str,
    size: int,
    *,
    multi_conn: bool | None = None,
    certificates: Certificates | None = None,
) -> Server:
    spec = ControllerSpec(
        name=name,
        serial=64015,
        data_dir=root / name,
        lss={0x0A: 0x1A00},
        volumes=[VolumeSpec(lss=0x0A, cca=0, volser=VOLSER, size_bytes=size)],
        nbd_listen="127.0.0.1:0",
        nbd_multi_conn=multi_conn,
    )
    if certificates is not None:
        spec.nbd_tls, spec.tls = "require", certificates.tls
        spec.hosts = {"bench": "bench-host-secret"}  # the client certificate's name
    controller = ControllerProcess(spec.write(root / f"{name}.toml"))
    _CONTROLLERS.append(controller)
    await controller.start()
    assert controller.process is not None and controller.nbd_address is not None
    uri = export_uri(controller.nbd_address, VOLSER, tls=certificates is not None)
    if certificates is not None:
        return Server("remcopy-tls", f"{uri}?tls-certificates={certificates.client_dir}",
                      controller.process.pid)  # fmt: skip
    return Server(
        "remcopy" if multi_conn is None else f"remcopy-{'mc' if multi_conn else '1c'}",
        uri,
        controller.process.pid,
    )


@contextlib.asynccontextmanager
async def servers(root: Path, size: int) -> AsyncIterator[list[Server]]:
    """Start remcopy (twice), nbdkit and qemu-nbd on `size` bytes; stop them on the way out."""
    try:
        certificates = Certificates.make(root)
        found = [
            await start_controller(root, "benchnbd", size),
            await start_controller(root, "benchnbd1c", size, multi_conn=False),
            await start_controller(root, "benchnbdtls", size, certificates=certificates),
        ]
        port = free_port()
        nbdkit_image = sparse_file(root / "nbdkit.img", size)
        await daemonise(
            root / "nbdkit.log",
            *("nbdkit", "-p", str(port), "-i", "127.0.0.1", "-P", str(root / "nbdkit.pid")),
            *("file", str(nbdkit_image)),
        )
        pid = await wait_pid_file(root / "nbdkit.pid")
        _PIDS.append(pid)
        found.append(Server("nbdkit", f"nbd://127.0.0.1:{port}/", pid))
        port = free_port()
        nbdkit_tls_image = sparse_file(root / "nbdkit-tls.img", size)
        await daemonise(
            root / "nbdkit-tls.log",
            *("nbdkit", "-p", str(port), "-i", "127.0.0.1", "-P", str(root / "nbdkit-tls.pid")),
            *("--tls=require", f"--tls-certificates={certificates.nbdkit_dir}"),
            *("--tls-verify-peer", "file", str(nbdkit_tls_image)),
        )
        pid = await wait_pid_file(root / "nbdkit-tls.pid")
        _PIDS.append(pid)
        found.append(
            Server(
                "nbdkit-tls",
                f"nbds://127.0.0.1:{port}/?tls-certificates={certificates.client_dir}",
                pid,
            )
        )
        port = free_port()
        qemu_image = sparse_file(root / "qemu.img", size)
        await daemonise(
            root / "qemu-nbd.log",
            *("qemu-nbd", "--fork", "--pid-file", str(root / "qemu-nbd.pid")),
            *("-p", str(port), "-b", "127.0.0.1", "-f", "raw", "--cache=writeback"),
            *("--aio=threads", "--shared=16", "--persistent", str(qemu_image)),
        )
        pid = await wait_pid_file(root / "qemu-nbd.pid")
        _PIDS.append(pid)
        found.append(Server("qemu-nbd", f"nbd://127.0.0.1:{port}/", pid))
        for server in found:
            info = json.loads(await run("nbdinfo", "--json", server.uri))
            server.multi_conn = bool(info["exports"][0]["can_multi_conn"])
        yield found
    finally:
        for pid in list(_PIDS):
            await stop_peer(pid)
        for controller in _CONTROLLERS:
            code = await controller.stop()
            if code != 0:
                print(f"warning: controller {controller.name} exited with {code}:\n"
                      f"{controller.log_tail()}", file=sys.stderr)  # fmt: skip


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


async def fio_job(uri: str, rw: str, block: int, runtime_ms: int) -> tuple[float, float]:
    """IOPS and mean completion latency (µs) of one fio job at queue depth 1."""
    out = await run(
        "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={block}",
        "--iodepth=1", f"--size={FIO_REGION_BYTES}", "--time_based", f"--runtime={runtime_ms}ms",
        "--randrepeat=0", "--output-format=json",
    )  # fmt: skip
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["write" if "write" in rw else "read"]
    return float(side["iops"]), float(side["clat_ns"]["mean"]) / 1000


async def measure(root: Path, quick: bool) -> dict[str, Any]:
    size = SIZE_QUICK_BYTES if quick else SIZE_FULL_BYTES
    rounds = ROUNDS_QUICK if quick else ROUNDS_FULL
    fio_ms = FIO_MS_QUICK if quick else FIO_MS_FULL
    source = root / "source.img"
    rng = random.Random(20261126)
    with source.open("wb") as f:
        for _ in range(size // (64 * MIB)):
            f.write(rng.randbytes(64 * MIB))
    os.sync()
    load_before = os.getloadavg()[0]
    async with servers(root, size) as found:
        for round_index in range(rounds):
            order = found if round_index % 2 == 0 else list(reversed(found))
            for server in order:
                cpu = cpu_s(server.pid)
                server.writes.append(await timed("nbdcopy", str(source), server.uri))
                server.write_cpu.append(cpu_s(server.pid) - cpu)
                os.sync()
                cpu = cpu_s(server.pid)
                server.reads.append(await timed("nbdcopy", server.uri, "null:"))
                server.read_cpu.append(cpu_s(server.pid) - cpu)
        for server in found:
            if server.name in FIO_SERVERS:
                for rw, block in FIO_JOBS:
                    server.fio[f"{rw}_{block // KIB}k"] = await fio_job(
                        server.uri, rw, block, fio_ms
                    )
    return {
        "size": size,
        "rounds": rounds,
        "servers": found,
        "load": (load_before, os.getloadavg()[0]),
    }


def mb_s(size: int, seconds: float) -> float:
    return size / seconds / MB


def cpu_per_gib(samples: list[float], size: int) -> float:
    """The least CPU a pass took, per GiB moved."""
    return min(samples) * GIB / size


def report(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    size: int = result["size"]
    found: list[Server] = result["servers"]
    by_name = {s.name: s for s in found}
    best = {s.name: (mb_s(size, min(s.writes)), mb_s(size, min(s.reads))) for s in found}
    worst = {s.name: (mb_s(size, max(s.writes)), mb_s(size, max(s.reads))) for s in found}
    print(
        f"NBD export, nbdcopy of {size // MIB} MiB, best of {result['rounds']} rounds "
        f"(worst in brackets), MB/s = 10^6 B/s; {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, controller loop {aio.loop_name()}"
    )
    header = ("server", "multi-conn", "write MB/s", "read MB/s", "write ratio", "read ratio")
    print(
        f"{header[0]:<10} {header[1]:>10} {header[2]:>20} {header[3]:>20} {header[4]:>12} "
        f"{header[5]:>11}   CPU s/GiB write, read"
    )
    for server in found:
        name = server.name
        (w, r), (ww, rw) = best[name], worst[name]
        ours = best["remcopy-tls" if name.endswith("-tls") else "remcopy"]
        rw_ratio, rr_ratio = ours[0] / w, ours[1] / r
        cells = f"{w:>9.0f} ({ww:>7.0f}) {r:>9.0f} ({rw:>7.0f})"
        cpu = f"{cpu_per_gib(server.write_cpu, size):.2f}, {cpu_per_gib(server.read_cpu, size):.2f}"
        multi = "yes" if server.multi_conn else "no"
        print(f"{name:<10} {multi:>10} {cells} {rw_ratio:>12.2f} {rr_ratio:>11.2f}   {cpu}")
    print("(ratio = remcopy / that server, remcopy-tls / that server for the -tls rows; CPU = the")
    print(" server process's user + system seconds)")
    print()
    print("fio --ioengine=nbd, queue depth 1: IOPS (mean latency µs)")
    jobs = [f"{rw}_{block // KIB}k" for rw, block in FIO_JOBS]
    print(f"{'server':<10} " + " ".join(f"{job:>20}" for job in jobs))
    for name in FIO_SERVERS:
        cells = [
            f"{by_name[name].fio[j][0]:>10.0f} ({by_name[name].fio[j][1]:>6.0f})" for j in jobs
        ]
        print(f"{name:<10} " + " ".join(f"{c:>20}" for c in cells))
    print(f"load average {result['load'][0]:.2f} before, {result['load'][1]:.2f} after")
    figures: dict[str, Any] = {
        "write_vs_nbdkit": round(best["remcopy"][0] / best["nbdkit"][0], 3),
        "read_vs_nbdkit": round(best["remcopy"][1] / best["nbdkit"][1], 3),
        "write_vs_qemu_nbd": round(best["remcopy"][0] / best["qemu-nbd"][0], 3),
        "read_vs_qemu_nbd": round(best["remcopy"][1] / best["qemu-nbd"][1], 3),
        "multi_conn_write_vs_single": round(best["remcopy"][0] / best["remcopy-1c"][0], 3),
        "multi_conn_read_vs_single": round(best["remcopy"][1] / best["remcopy-1c"][1], 3),
        "nbd_tls_write_vs_nbdkit_tls": round(best["remcopy-tls"][0] / best["nbdkit-tls"][0], 3),
        "nbd_tls_read_vs_nbdkit_tls": round(best["remcopy-tls"][1] / best["nbdkit-tls"][1], 3),
        "tls_cost_write_ratio": round(best["remcopy-tls"][0] / best["remcopy"][0], 3),
        "tls_cost_read_ratio": round(best["remcopy-tls"][1] / best["remcopy"][1], 3),
        "nbdkit_tls_cost_write_ratio": round(best["nbdkit-tls"][0] / best["nbdkit"][0], 3),
        "nbdkit_tls_cost_read_ratio": round(best["nbdkit-tls"][1] / best["nbdkit"][1], 3),
    }
    for server in found:
        key = server.name.replace("-", "_")
        figures[f"{key}_write_mb_s"] = round(best[server.name][0], 1)
        figures[f"{key}_read_mb_s"] = round(best[server.name][1], 1)
        figures[f"{key}_write_cpu_s_per_gib"] = round(cpu_per_gib(server.write_cpu, size), 3)
        figures[f"{key}_read_cpu_s_per_gib"] = round(cpu_per_gib(server.read_cpu, size), 3)
    for job in jobs:
        for peer in ("nbdkit", "qemu-nbd"):
            ratio = by_name["remcopy"].fio[job][0] / by_name[peer].fio[job][0]
            figures[f"fio_{job}_iops_vs_{peer.replace('-', '_')}"] = round(ratio, 3)
        figures[f"fio_{job}_remcopy_iops"] = round(by_name["remcopy"].fio[job][0], 1)
    figures["size_bytes"] = size
    figures["quick"] = quick
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB, 2 rounds: under a minute")
    args = parser.parse_args()
    for tool in ("nbdcopy", "nbdkit", "qemu-nbd", "fio"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/nbd.py: {tool} is not installed: run scripts/setup.sh")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="remcopy-bench-nbd-", dir="/tmp"))
    started = time.perf_counter()
    try:
        result = aio.run(measure(root, args.quick))
    finally:
        for pid in _PIDS:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for controller in _CONTROLLERS:
            if controller.process is not None and controller.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(controller.process.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    figures = report(result, args.quick)
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    print("RESULT " + json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
