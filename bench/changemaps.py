# Benchmark: change maps at 10,000 devices per controller, two layouts side by side.
#
# What is measured, and why: a controller keeps one change map per device
# (`controller/changemap.py`). The older layout made each map its own file
# `DATA_DIR/changemaps/LLCC.map` mapped on its own (`ChangeMap(path, ...)`, still there to
# migrate such files). At 10,000 devices per controller that is 10,000 files, 10,000 mappings
# and, because CPython's `mmap.mmap` keeps a dup() of the file descriptor for the map's
# lifetime, 10,000 open descriptors. The controller now uses one file per controller holding
# every device's bitmap at a fixed, page-aligned offset behind a directory, mapped once
# (`ChangeMapFile`; each device's map is a `ChangeMap` over its slice, so mark, mark_intent,
# release, clear_if and count are the same code in both layouts and only the layout differs).
#
# For each volume size (1 GiB and 16 GiB at 64 KiB tracks: 2 KiB and 32 KiB of bitmap per
# device) and each layout, in separate processes so descriptor, map and RSS figures do not mix:
# - create: a first start, every map file (or the one file) made and closed;
# - open: a restart, a new process opens every device's map (page cache warm: the files were
#   just written; a cold start after a reboot would add the reads); open descriptors and
#   mappings counted from /proc/self/fd and /proc/self/maps, RSS from /proc/self/status;
# - a random 1 % of every device's tracks set (bits OR-ed in bulk, so every bitmap page is
#   touched as real use spread over time would), RSS after;
# - flush all: msync of everything dirtied, as a host FLUSH naming every device calls it
#   (`Replicator.flush_changemaps`): one msync per device for the older layout; for the
#   per-controller file both one msync of the whole file and one per device (its page
#   range); then the same again with nothing dirty (what every later host FLUSH costs);
#   fsync of the one file next to it;
# - flush one: one 4 KiB write marked on one device, then that device's flush (msync of its
#   pages), p50 over 50 devices; for the one file also fsync of the whole file instead;
# - 100,000 random 4 KiB writes marked (`ChangeMap.mark`) on random devices, time and RSS after;
#   count() on every device (QUERY, status) timed;
# - limits: with the soft descriptor limit at 1024 (systemd's default for services), how many
#   devices' maps open; and with the machine's soft limit while one descriptor per device is
#   already held for its volume (the controller keeps each volume file open); vm.max_map_count
#   against the mappings used;
# - a check, not a figure: a new process opens the maps again and finds the same bits on every
#   device (the one file's slots keep their offsets and do not overlap). The one file's count
#   is higher: its flush steps XOR two more patterns in.
#
# Run: .venv/bin/python bench/changemaps.py [--quick] [--seed N]. --quick uses 2,000 devices.
# The last line is `RESULT {json}`; times are in seconds.
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bitarray import bitarray

from remcopy.controller.changemap import ChangeMap, ChangeMapFile
from remcopy.errors import VolumeIOError

SEED_DEFAULT: Final = 20261206
DEVICES_FULL: Final = 10_000
DEVICES_QUICK: Final = 2_000
TRACK_BYTES: Final = 64 * 1024
GIB: Final = 1024**3
VOLUME_SIZES_BYTES: Final = (1 * GIB, 16 * GIB)
DIRTY_FRACTION: Final = 0.01
WRITES: Final = 100_000
WRITE_BYTES: Final = 4096
FLUSH_ONE_SAMPLES: Final = 50
NOFILE_SERVICE_DEFAULT: Final = 1024  # systemd DefaultLimitNOFILE soft value
PAGE_BYTES: Final = mmap.PAGESIZE
LAYOUTS: Final = ("per_device", "per_controller")


# Measuring inside one process...


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _resources(map_dir: Path) -> dict[str, int]:
    maps = Path("/proc/self/maps").read_text().splitlines()
    status = _proc_status()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "maps": len(maps),
        "maps_changemap": sum(1 for line in maps if str(map_dir) in line),
        "rss_bytes": status["VmRSS"],
        "rss_anon_bytes": status["RssAnon"],
        "rss_file_bytes": status["RssFile"],
    }


def _keys(devices: int) -> list[int]:
    return list(range(devices))  # LLCC: LSS = key >> 8, CCA = key & 0xFF


class _Opened:
    def __init__(self, layout: str, root: Path, devices: int, tracks: int) -> None:
        self.layout = layout
        self.controller: ChangeMapFile | None = None
        if layout == "per_device":
            self.maps: dict[int, ChangeMap] = {
                key: ChangeMap(root / f"{key:04X}.map", tracks, TRACK_BYTES)
                for key in _keys(devices)
            }
        else:
            self.controller = ChangeMapFile(
                root, dict.fromkeys(_keys(devices), (tracks, TRACK_BYTES))
            )
            self.maps = dict(self.controller.maps)

    def close(self) -> None:
        if self.controller is not None:
            self.controller.close()
        else:
            for one in self.maps.values():
                one.close()


def _timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def child_create(layout: str, root: Path, devices: int, tracks: int) -> dict[str, Any]:
    start = time.perf_counter()
    opened = _Opened(layout, root, devices, tracks)
    created_s = time.perf_counter() - start
    opened.close()
    disk = sum(p.stat().st_blocks * 512 for p in root.iterdir())
    apparent = sum(p.stat().st_size for p in root.iterdir())
    return {"create_s": created_s, "disk_bytes": disk, "file_bytes": apparent}


def child_run(layout: str, root: Path, devices: int, tracks: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    out: dict[str, Any] = {"layout": layout, "devices": devices, "tracks": tracks}
    out["before"] = _resources(root)
    start = time.perf_counter()
    opened = _Opened(layout, root, devices, tracks)
    out["open_s"] = time.perf_counter() - start
    out["opened"] = _resources(root)
    maps = opened.maps

    # A random 1 % of every device's tracks, in bulk (every bitmap page touched).
    masks = []
    for _ in range(8):  # 8 patterns, device i gets i % 8 (drawing 10,000 is slow in Python)
        mask = bitarray(tracks, endian="big")
        mask.setall(0)
        mask[rng.sample(range(tracks), int(tracks * DIRTY_FRACTION))] = 1
        masks.append(mask)
    start = time.perf_counter()
    for key, one in maps.items():
        one._bits |= masks[key % len(masks)]
    out["dirty_1pct_s"] = time.perf_counter() - start
    out["dirty_bits"] = sum(one.count() for one in maps.values())
    out["dirtied"] = _resources(root)

    def flush_each() -> None:
        for one in maps.values():
            one.flush()

    out["flush_all_s"] = _timed(flush_each)
    out["flush_all_clean_s"] = _timed(flush_each)
    if opened.controller is not None:
        controller = opened.controller
        for key, one in maps.items():  # dirty again, then one msync of the whole file
            one._bits ^= masks[(key + 1) % len(masks)]
        out["flush_all_one_msync_s"] = _timed(controller.flush_all)
        out["flush_all_one_msync_clean_s"] = _timed(controller.flush_all)
        for key, one in maps.items():
            one._bits ^= masks[(key + 2) % len(masks)]
        out["fsync_all_s"] = _timed(controller.fsync)
        out["fsync_all_clean_s"] = _timed(controller.fsync)

    # Flush one: a write marked on one device, then its flush.
    keys = list(maps)
    samples: list[float] = []
    fsync_samples: list[float] = []
    for key in rng.sample(keys, min(FLUSH_ONE_SAMPLES, len(keys))):
        one = maps[key]
        one.mark(rng.randrange(tracks) * TRACK_BYTES, WRITE_BYTES)
        samples.append(_timed(one.flush))
        if opened.controller is not None:
            one.mark(rng.randrange(tracks) * TRACK_BYTES, WRITE_BYTES)
            fsync_samples.append(_timed(opened.controller.fsync))
    out["flush_one_p50_s"] = statistics.median(samples)
    out["flush_one_max_s"] = max(samples)
    if fsync_samples:
        out["fsync_one_dirty_p50_s"] = statistics.median(fsync_samples)

    # 100,000 random writes marked through the product's mark().
    volume_bytes = tracks * TRACK_BYTES
    writes = [
        (maps[rng.choice(keys)], rng.randrange(volume_bytes // WRITE_BYTES) * WRITE_BYTES)
        for _ in range(WRITES)
    ]
    start = time.perf_counter()
    for one, offset in writes:
        one.mark(offset, WRITE_BYTES)
    out["mark_100k_s"] = time.perf_counter() - start
    del writes
    out["marked"] = _resources(root)
    out["count_all_s"] = _timed(lambda: [one.count() for one in maps.values()])
    out["counts"] = [maps[key].count() for key in sorted(maps)]
    out["close_s"] = _timed(opened.close)
    return out


def child_limit(layout: str, root: Path, devices: int, tracks: int, held: int) -> dict[str, Any]:
    """Open every device's map under the soft descriptor limit this process was given, with
    `held` descriptors already open (the volumes'); report how many opened."""
    volumes = [os.open("/dev/null", os.O_RDONLY) for _ in range(held)]
    opened_maps: list[ChangeMap] = []
    error = ""
    controller: ChangeMapFile | None = None
    try:
        if layout == "per_device":
            for key in _keys(devices):
                opened_maps.append(ChangeMap(root / f"{key:04X}.map", tracks, TRACK_BYTES))
        else:
            controller = ChangeMapFile(root, dict.fromkeys(_keys(devices), (tracks, TRACK_BYTES)))
            opened_maps = list(controller.maps.values())
    except (OSError, VolumeIOError) as exc:
        error = "EMFILE" if "Too many open files" in str(exc) else str(exc)[:60]
    result: dict[str, Any] = {
        "opened": len(opened_maps),
        "counts": [one.count() for one in opened_maps] if not error else [],
        "error": error,
        "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
    if controller is not None:
        controller.close()
    else:
        for one in opened_maps:
            one.close()
    for fd in volumes:
        os.close(fd)
    return result


# The parent: one child process per layout and step...


def _child(args: list[str], nofile_soft: int | None = None) -> dict[str, Any]:
    def limit() -> None:
        if nofile_soft is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile_soft, hard), hard))

    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=limit,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args}: exit {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _case(layout: str, base: Path, devices: int, tracks: int, seed: int) -> dict[str, Any]:
    root = base / f"{layout}-{tracks}"
    root.mkdir()
    common = [layout, str(root), str(devices), str(tracks), str(seed)]
    try:
        created = _child(["create", *common])
        ran = _child(["run", *common])
        ran.update(created)
        ran["limit_1024"] = _child(["limit", *common, "0"], NOFILE_SERVICE_DEFAULT)
        ran["limit_with_volumes"] = _child(["limit", *common, str(devices)])
        # The bits a new process finds are the ones the run left, device by device.
        counts = ran.pop("counts")
        reopened = _child(["limit", *common, "0"])
        ran["reopened_same_bits"] = not reopened["error"] and reopened["counts"] == counts
        ran["limit_1024"].pop("counts")
        ran["limit_with_volumes"].pop("counts")
        ran["bits_at_close"] = sum(counts)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return ran


def _delta(run: dict[str, Any], stage: str, field: str) -> int:
    value: int = run[stage][field] - run["before"][field]
    return value


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _ms(s: float) -> str:
    return f"{s * 1000:,.2f}"


def _table(runs: dict[str, dict[str, Any]], devices: int, load: list[float]) -> str:
    map_max = int(Path("/proc/sys/vm/max_map_count").read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lines = [
        f"remcopy bench/changemaps: {devices:,} devices' change maps, one file per device "
        "(the older layout) vs one file per controller (the controller's)",
        f"  {os.cpu_count()} CPUs, Python {platform.python_version()}, ext4 under /tmp; "
        f"load average {load[0]} at start, {load[1]} at end; RLIMIT_NOFILE here {soft}/{hard}, "
        f"vm.max_map_count {map_max}",
        "  each layout in its own processes; deltas over the process before opening; "
        "times in ms unless named",
        "",
    ]
    rows: list[tuple[str, Any]] = [
        (
            "volume / bitmap per device",
            lambda r: f"{r['tracks'] * 64 // 2**20} GiB / {r['tracks'] // 8 // 1024} KiB",
        ),
        ("files on disk: apparent MiB", lambda r: _mib(r["file_bytes"])),
        ("files on disk: allocated MiB", lambda r: _mib(r["disk_bytes"])),
        ("first start: create all, s", lambda r: f"{r['create_s']:.3f}"),
        ("restart: open all, s", lambda r: f"{r['open_s']:.3f}"),
        ("open descriptors added", lambda r: f"{_delta(r, 'opened', 'fds'):,}"),
        ("mappings added", lambda r: f"{_delta(r, 'opened', 'maps'):,}"),
        ("RSS added after open, MiB", lambda r: _mib(_delta(r, "opened", "rss_bytes"))),
        ("RSS added after 1 % dirty, MiB", lambda r: _mib(_delta(r, "dirtied", "rss_bytes"))),
        ("  of which file pages, MiB", lambda r: _mib(_delta(r, "dirtied", "rss_file_bytes"))),
        ("flush all (msync each), dirty", lambda r: _ms(r["flush_all_s"])),
        ("flush all (msync each), clean", lambda r: _ms(r["flush_all_clean_s"])),
        ("flush all (1 msync), dirty", lambda r: _ms(r.get("flush_all_one_msync_s", -1))),
        ("flush all (1 msync), clean", lambda r: _ms(r.get("flush_all_one_msync_clean_s", -1))),
        ("fsync file, 1 % dirty", lambda r: _ms(r.get("fsync_all_s", -1))),
        (
            "flush one device p50 (max)",
            lambda r: f"{_ms(r['flush_one_p50_s'])} ({_ms(r['flush_one_max_s'])})",
        ),
        ("fsync file, one device dirty p50", lambda r: _ms(r.get("fsync_one_dirty_p50_s", -1))),
        ("mark 100,000 writes, s", lambda r: f"{r['mark_100k_s']:.3f}"),
        ("RSS added after marks, MiB", lambda r: _mib(_delta(r, "marked", "rss_bytes"))),
        ("count() every device", lambda r: _ms(r["count_all_s"])),
        ("close all", lambda r: _ms(r["close_s"])),
        ("bits set at close", lambda r: f"{r['bits_at_close']:,}"),
        ("a new process reads the same bits", lambda r: "yes" if r["reopened_same_bits"] else "NO"),
        (
            "opened, soft nofile 1024",
            lambda r: (
                f"{r['limit_1024']['opened']:,}"
                + (f" ({r['limit_1024']['error']})" if r["limit_1024"]["error"] else "")
            ),
        ),
        (
            f"opened, soft {soft} + volume fds",
            lambda r: (
                f"{r['limit_with_volumes']['opened']:,}"
                + (
                    f" ({r['limit_with_volumes']['error']})"
                    if r["limit_with_volumes"]["error"]
                    else ""
                )
            ),
        ),
    ]
    names = list(runs)
    width = 36
    lines.append(f"{'':<{width}}" + "".join(f"{n:>24}" for n in names))
    for label, cell in rows:
        values = []
        for name in names:
            text = cell(runs[name])
            values.append("-" if text.startswith("-1") else text)
        lines.append(f"{label:<{width}}" + "".join(f"{v:>24}" for v in values))
    return "\n".join(lines)


def _result(
    runs: dict[str, dict[str, Any]], devices: int, quick: bool, seed: int, load: list[float]
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "devices": devices,
        "quick": quick,
        "seed": seed,
        "nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "max_map_count": int(Path("/proc/sys/vm/max_map_count").read_text()),
        "load_1m_start": load[0],
        "load_1m_end": load[1],
    }
    for name, r in runs.items():
        doc[f"{name}_open_s"] = round(r["open_s"], 4)
        doc[f"{name}_create_s"] = round(r["create_s"], 4)
        doc[f"{name}_fds"] = _delta(r, "opened", "fds")
        doc[f"{name}_maps"] = _delta(r, "opened", "maps")
        doc[f"{name}_rss_open_bytes"] = _delta(r, "opened", "rss_bytes")
        doc[f"{name}_rss_dirty_bytes"] = _delta(r, "dirtied", "rss_bytes")
        doc[f"{name}_rss_marked_bytes"] = _delta(r, "marked", "rss_bytes")
        doc[f"{name}_flush_all_s"] = round(r["flush_all_s"], 5)
        doc[f"{name}_flush_all_clean_s"] = round(r["flush_all_clean_s"], 5)
        doc[f"{name}_flush_one_p50_s"] = round(r["flush_one_p50_s"], 6)
        doc[f"{name}_mark_100k_s"] = round(r["mark_100k_s"], 4)
        doc[f"{name}_count_all_s"] = round(r["count_all_s"], 5)
        doc[f"{name}_disk_bytes"] = r["disk_bytes"]
        doc[f"{name}_reopened_same_bits"] = r["reopened_same_bits"]
        doc[f"{name}_opened_nofile_1024"] = r["limit_1024"]["opened"]
        doc[f"{name}_opened_with_volume_fds"] = r["limit_with_volumes"]["opened"]
        for extra in (
            "flush_all_one_msync_s",
            "flush_all_one_msync_clean_s",
            "fsync_all_s",
            "fsync_one_dirty_p50_s",
        ):
            if extra in r:
                doc[f"{name}_{extra}"] = round(r[extra], 6)
    for size in {r["tracks"] for r in runs.values()}:
        a, b = runs[f"per_device_{size}"], runs[f"per_controller_{size}"]
        doc[f"open_ratio_{size}"] = round(b["open_s"] / a["open_s"], 3)
        doc[f"flush_all_ratio_{size}"] = round(b["flush_all_one_msync_s"] / a["flush_all_s"], 4)
        doc[f"flush_all_clean_ratio_{size}"] = round(
            b["flush_all_one_msync_clean_s"] / a["flush_all_clean_s"], 4
        )
    return doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        step, layout, root, devices, tracks, seed = argv[1:7]
        if step == "create":
            out = child_create(layout, Path(root), int(devices), int(tracks))
        elif step == "run":
            out = child_run(layout, Path(root), int(devices), int(tracks), int(seed))
        else:
            out = child_limit(layout, Path(root), int(devices), int(tracks), int(argv[7]))
        print(json.dumps(out))
        return 0
    parser = argparse.ArgumentParser(prog="bench/changemaps.py")
    parser.add_argument("--quick", action="store_true", help=f"{DEVICES_QUICK:,} devices")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT)
    args = parser.parse_args(argv)
    devices = DEVICES_QUICK if args.quick else DEVICES_FULL
    load = [round(os.getloadavg()[0], 2)]
    base = Path(tempfile.mkdtemp(prefix="remcopy-bench-changemaps-", dir="/tmp"))
    runs: dict[str, dict[str, Any]] = {}
    try:
        for volume_bytes in VOLUME_SIZES_BYTES:
            tracks = volume_bytes // TRACK_BYTES
            for layout in LAYOUTS:
                print(f"  {layout}, {tracks} tracks ...", file=sys.stderr, flush=True)
                runs[f"{layout}_{tracks}"] = _case(layout, base, devices, tracks, args.seed)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load.append(round(os.getloadavg()[0], 2))
    print(_table(runs, devices, load))
    print("RESULT " + json.dumps(_result(runs, devices, args.quick, args.seed, load)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
