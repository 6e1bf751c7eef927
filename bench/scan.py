# Scan benchmark: how long a host's device map takes to build and store, and how that
# compares with the "one channel program per device" way the seed calls slow.
#
# What it measures (DESIGN.md section 8, issue 5):
#   - 8 real controller processes, 1,250 volumes each (small sparse files, 1 MiB, five LSSs
#     of up to 256 CCAs per controller), one host definition that reaches all 10,000.
#   - For 1,000 / 4,096 / 10,000 devices (spread evenly over the 8 controllers, a seeded
#     random choice of volumes on each): the wall time of the whole `host.service.scan_host`
#     call — parse the stored host definition, open the channels (connect + authenticate),
#     one identify request per controller through the I/O engine, build the map, and store
#     it in an SQLite catalog in one transaction — repeated, median and best reported; and
#     devices per second. The scan part (scan_host's ScanResult.elapsed_s) and the rest
#     (mostly the catalog store) are shown apart.
#   - Side by side in the same run, against the same controllers: the same scan_host with the
#     engine's concurrency forced to 1 (in_flight_max = per_controller_max = 1) and batching
#     off (one identify per device). On 10,000 devices in the full run; on a subset in
#     --quick, extrapolated linearly to 10,000 (said so in the table).
#   - scan_speedup_vs_serial = serial time for 10,000 / batched time for 10,000.
# Why: the scan is what every group operation's addresses come from; targets are 10,000
# devices in <= 200 ms with the map stored, and >= 50x the serial way.
#
# Output: a table, then as the LAST line `RESULT {json}` (DESIGN.md section 7).
# Usage: python bench/scan.py [--quick] [--seed N]
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from _fleet import (
    HOST,
    MIB,
    Fleet,
    Plan,
    available_mib,
    device_number,
    fleet_running,
    guard,
    host_document,
    host_toml,
    load_average,
    median,
    spread,
    table,
)
from remcopy.catalog import Catalog
from remcopy.host.engine import EngineLimits
from remcopy.host.service import add_host, scan_host

CONTROLLERS: Final = 8
VOLUMES_PER_CONTROLLER: Final = 1250
VOLUME_BYTES: Final = 1 * MIB
SIZES: Final = (1000, 4096, 10000)
TARGET_S: Final = 0.200
TARGET_SPEEDUP: Final = 50.0


@dataclass(slots=True, kw_only=True)
class Timing:
    devices: int
    runs: list[float]
    scan_parts: list[float]
    requests: int

    @property
    def median_s(self) -> float:
        return median(self.runs)

    @property
    def best_s(self) -> float:
        return min(self.runs)


def choose(fleet: Fleet, size: int, rng: random.Random) -> list[int]:
    """`size` device numbers, spread evenly over the controllers, random volumes on each."""
    counts = spread({plan.index: plan.volumes for plan in fleet.plans}, size)
    numbers = []
    for plan in fleet.plans:
        picked = rng.sample(range(plan.volumes), counts[plan.index])
        numbers += [device_number(plan.index, k) for k in picked]
    return sorted(numbers)


async def timed_scan(
    catalog: Catalog, numbers: list[int], *, batch: bool, limits: EngineLimits | None
) -> tuple[float, float, int]:
    """(whole scan_host seconds, the scan part, requests) for one scan, checked complete."""
    started = time.perf_counter()
    result, scan_id = await scan_host(catalog, HOST, numbers=numbers, batch=batch, limits=limits)
    elapsed = time.perf_counter() - started
    if result.failures or scan_id is None or len(result.devices) != len(numbers):
        raise RuntimeError(
            f"scan of {len(numbers)} devices incomplete: {len(result.devices)} mapped, "
            f"{len(result.failures)} failed (first: {result.failures[:1]}), stored={scan_id}"
        )
    return elapsed, result.elapsed_s, result.requests


async def measure(
    catalog: Catalog,
    numbers: list[int],
    repeats: int,
    *,
    batch: bool = True,
    limits: EngineLimits | None = None,
) -> Timing:
    timing = Timing(devices=len(numbers), runs=[], scan_parts=[], requests=0)
    for _ in range(repeats):
        whole, part, requests = await timed_scan(catalog, numbers, batch=batch, limits=limits)
        timing.runs.append(whole)
        timing.scan_parts.append(part)
        timing.requests = requests
    return timing


async def run(root: Path, quick: bool, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    repeats = 3 if quick else 7
    serial_devices = 1000 if quick else 10000
    plans = [
        Plan(
            index=c,
            name=f"scan{c}",
            volumes=VOLUMES_PER_CONTROLLER,
            volser_prefix=f"V{c:X}",
            size_bytes=VOLUME_BYTES,
        )
        for c in range(CONTROLLERS)
    ]
    mem_before = available_mib()
    async with fleet_running(root, plans) as fleet:
        print(
            f"fleet: {CONTROLLERS} controllers x {VOLUMES_PER_CONTROLLER} volumes of "
            f"{VOLUME_BYTES // MIB} MiB started in {fleet.start_s:.2f} s; controllers' RSS "
            f"{fleet.rss_mib():.0f} MiB",
            file=sys.stderr,
        )
        host_file = root / "host.toml"
        host_file.write_text(host_toml(host_document(fleet)))
        catalog = Catalog.open(root / "catalog.db")
        try:
            add_host(catalog, host_file)
            chosen = {size: choose(fleet, size, rng) for size in SIZES}
            await timed_scan(catalog, chosen[SIZES[-1]], batch=True, limits=None)  # warm-up
            batched = {size: await measure(catalog, chosen[size], repeats) for size in SIZES}
            serial_numbers = choose(fleet, serial_devices, rng)
            serial = await measure(
                catalog,
                serial_numbers,
                1,
                batch=False,
                limits=EngineLimits(in_flight_max=1, per_controller_max=1),
            )
            rows_in_catalog = sum(s.entry_count for s in catalog.scans_all(HOST))
        finally:
            catalog.close()
        rss = fleet.rss_mib()
    serial_per_device_s = serial.runs[0] / serial.devices
    serial_10000_s = serial_per_device_s * SIZES[-1]
    big = batched[SIZES[-1]]
    speedup = serial_10000_s / big.median_s
    extrapolated = serial.devices != SIZES[-1]
    rows: list[tuple[object, ...]] = []
    for size in SIZES:
        t = batched[size]
        rows.append(
            (
                f"batched {size}",
                t.median_s * 1e3,
                t.best_s * 1e3,
                median(t.scan_parts) * 1e3,
                (t.median_s - median(t.scan_parts)) * 1e3,
                size / t.median_s,
                t.requests,
            )
        )
    rows.append(
        (
            f"serial {serial.devices}",
            serial.runs[0] * 1e3,
            serial.runs[0] * 1e3,
            serial.scan_parts[0] * 1e3,
            (serial.runs[0] - serial.scan_parts[0]) * 1e3,
            serial.devices / serial.runs[0],
            serial.requests,
        )
    )
    if extrapolated:
        rows.append(
            (f"serial {SIZES[-1]} (extrapolated)", serial_10000_s * 1e3, "", "", "", "", "")
        )
    print(
        table(
            f"scan: {CONTROLLERS} controllers, map stored in SQLite (median of {repeats}; "
            f"serial = concurrency 1, one identify per device, 1 run)",
            ["what", "whole ms", "best ms", "scan ms", "store+rest ms", "devices/s", "requests"],
            rows,
        )
    )
    print()
    print(
        table(
            "against the targets (DESIGN.md section 8)",
            ["figure", "measured", "target", "met"],
            [
                (
                    "scan 10,000 devices, map stored (s)",
                    big.median_s,
                    TARGET_S,
                    big.median_s <= TARGET_S,
                ),
                (
                    "speedup vs serial" + (" (serial extrapolated)" if extrapolated else ""),
                    speedup,
                    f">= {TARGET_SPEEDUP:.0f}",
                    speedup >= TARGET_SPEEDUP,
                ),
            ],
        )
    )
    print(
        f"\nseed {seed}; load average {load_average()}; controllers' RSS at the end {rss:.0f} MiB; "
        f"memory available before {mem_before:.0f} MiB; {rows_in_catalog} map rows stored"
    )
    return {
        "scan_10000_s": round(big.median_s, 6),
        "scan_speedup_vs_serial": round(speedup, 2),
        "scan_10000_best_s": round(big.best_s, 6),
        "scan_10000_scan_part_s": round(median(big.scan_parts), 6),
        "scan_4096_s": round(batched[4096].median_s, 6),
        "scan_1000_s": round(batched[1000].median_s, 6),
        "scan_10000_devices_per_s": round(SIZES[-1] / big.median_s, 1),
        "scan_requests_10000": big.requests,
        "serial_devices_measured": serial.devices,
        "serial_10000_s": round(serial_10000_s, 4),
        "serial_extrapolated": extrapolated,
        "serial_per_device_us": round(serial_per_device_s * 1e6, 2),
        "fleet_start_s": round(fleet.start_s, 3),
        "repeats": repeats,
        "seed": seed,
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, serial on 1,000")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"bench/scan.py seed={seed} quick={args.quick}", file=sys.stderr)
    result = guard("remcopy-bench-scan-", lambda root: run(root, args.quick, seed))
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
