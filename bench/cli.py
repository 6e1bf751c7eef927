# CLI start-up and group-load benchmark: how long `remcopy` takes before it does anything, and
# how long reading a 10,000-pair group back from the catalog takes, which every group command
# does first.
#
# What it measures (DESIGN.md section 8: `remcopy --help` <= 150 ms; issue 15 part 4: a
# 10,000-pair group map loaded from the catalog <= 100 ms):
#   - Whole processes, started as a shell starts them (`python -m remcopy ...`), N runs each
#     after one warm-up, median and min of the wall time:
#       `remcopy --help`, `remcopy group --help`, `remcopy states`, `remcopy states --json`;
#     beside them the peer that bounds them all: `python -c pass` (the interpreter alone), and
#     `python -c "import click"`, the least a click CLI imports. The ratio to the interpreter
#     alone says what remcopy adds.
#   - A catalog built in-process the way `host add`, `scan`, `group define` and `group load`
#     leave it, without controllers: one host whose map has 20,000 devices (8 primary and 8
#     secondary controllers, 1,250 volumes each, numbered as bench/_fleet.py numbers them), a
#     10,000-pair group over them, and its group map for that host. On it, median and min of
#     N rounds, each on a freshly opened catalog (as a new `remcopy` process would):
#       open          Catalog.open (engine, first connection, schema check)
#       pairs         catalog.pairs_all(group): the 10,000 pair rows
#       device map    catalog.map_all(host): the host's 20,000 map entries
#       group map     catalog.group_map_all(group, host): the stored 10,000-row group map
#       group load    groups.service.group_for_host: what `remcopy group suspend` and every
#                     other group command call first (open included), the figure with the
#                     100 ms target
#     and the whole `remcopy group show BENCH --host ... --json` process (start-up, imports,
#     the load, 10,000 pairs written as JSON), whose output is parsed to check it is one
#     document.
#   SQLite always (a file under /tmp); PostgreSQL too with --pg URL (an empty database: the
#   benchmark creates the catalog in it; scripts/pg.sh starts a server).
# Why: every operator command pays the start-up, and every group operation pays the load;
# both come before the operation itself.
#
# Output: tables, then as the LAST line `RESULT {json}` (DESIGN.md section 7).
# Usage: python bench/cli.py [--quick] [--runs N] [--pg URL]
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from _fleet import (
    CCAS_PER_LSS,
    HOST,
    SERIAL_BASE,
    cca_of,
    device_number,
    host_secret_file,
    load_average,
    lss_of,
    remove_tree,
    ssid_of,
    table,
)

T = TypeVar("T")

CONTROLLERS: Final = 8  # per side, as bench/groups.py
VOLUMES: Final = 1250  # per controller: 8 x 1,250 = 10,000 pairs
GROUP: Final = "BENCH"
RUNS_FULL: Final = 20
RUNS_QUICK: Final = 7
# Targets (DESIGN.md section 8 and issue 15).
TARGET_HELP_S: Final = 0.150
TARGET_GROUP_LOAD_S: Final = 0.100


def sample(call: Callable[[], T], runs: int) -> tuple[list[float], T]:
    """Wall seconds of `runs` calls after one warm-up call; the last call's value."""
    value = call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - started)
    return times, value


def process(*args: str) -> Callable[[], subprocess.CompletedProcess[str]]:
    """A call that runs `python ARGS` to its end, output captured, and checks its exit."""
    env = dict(os.environ, CI="1")

    def call() -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, check=False
        )
        if run.returncode != 0:
            raise RuntimeError(f"python {' '.join(args)} exited {run.returncode}: {run.stderr}")
        return run

    return call


# The world: one host's map, the group, its group map, stored as the CLI stores them...


def address(side: int, index: int, k: int) -> str:
    serial = SERIAL_BASE + side * CONTROLLERS + index
    return f"{serial}:{ssid_of(side * CONTROLLERS + index, k):04X}:{lss_of(k):02X}:{cca_of(k):02X}"


def build_catalog(location: str, root: Path) -> dict[str, float]:
    """Store the host, its 20,000-device map, the 10,000-pair group and its group map;
    returns the seconds each step took."""
    from remcopy.catalog import Catalog, GroupMapRow, MapEntry, Pair
    from remcopy.groups.service import load_group
    from remcopy.ids import device_number_text

    steps: dict[str, float] = {}
    started = time.perf_counter()
    with Catalog.open(location) as catalog:
        paths = [
            {
                "devices": f"{device_number_text(device_number(c, j * CCAS_PER_LSS))}-"
                f"{device_number_text(device_number(c, min(VOLUMES, (j + 1) * CCAS_PER_LSS) - 1))}",
                "controller": f"c{c}",
                "ssid": f"{ssid_of(c, j * CCAS_PER_LSS):04X}",
                "lss": f"{lss_of(j * CCAS_PER_LSS):02X}",
                "cca": "00",
                "online": True,
            }
            for c in range(2 * CONTROLLERS)
            for j in range(-(-VOLUMES // CCAS_PER_LSS))
        ]
        document = {
            "plain_tcp": True,
            "host": {"name": HOST, "secret_file": host_secret_file(root)},
            "controllers": [
                {"name": f"c{c}", "address": f"127.0.0.1:{7400 + c}"}
                for c in range(2 * CONTROLLERS)
            ],
            "paths": paths,
        }
        catalog.put_host(HOST, document, replace=False)
        entries = [
            MapEntry(
                device_number=device_number_text(device_number(side * CONTROLLERS + c, k)),
                hardware_address=address(side, c, k),
                volser=f"{'PS'[side]}{c:X}{k:04X}",
                capacity_bytes=64 * 1024,
                state="DUPLEX",
                role="primary" if side == 0 else "secondary",
                online=True,
                controller=f"c{side * CONTROLLERS + c}",
            )
            for side in (0, 1)
            for c in range(CONTROLLERS)
            for k in range(VOLUMES)
        ]
        catalog.store_scan(
            HOST, scanned_at_ns=time.time_ns(), entries=entries, failures=[], partial=False
        )
        steps["host and map"] = time.perf_counter() - started
        started = time.perf_counter()
        pairs = [
            Pair(
                primary_address=address(0, c, k),
                secondary_address=address(1, c, k),
                volser=f"P{c:X}{k:04X}",
                mode="sync",
            )
            for c in range(CONTROLLERS)
            for k in range(VOLUMES)
        ]
        catalog.put_group(GROUP, {"mode": "sync", "consistency_group": True}, pairs, replace=False)
        steps["group define"] = time.perf_counter() - started
        started = time.perf_counter()
        group, missing = load_group(catalog, GROUP, HOST)
        assert len(group.pairs) == CONTROLLERS * VOLUMES and not missing, missing[:3]
        rows = catalog.group_map_all(GROUP, HOST)
        assert len(rows) == len(group.pairs) and isinstance(rows[0], GroupMapRow)
        steps["group load (stored)"] = time.perf_counter() - started
    return steps


def load_figures(location: str, runs: int) -> dict[str, list[float]]:
    """Each read on a freshly opened catalog, `runs` times after a warm-up."""
    from remcopy.catalog import Catalog
    from remcopy.groups.service import group_for_host

    def opened(read: Callable[[Catalog], object]) -> Callable[[], object]:
        def call() -> object:
            with Catalog.open(location) as catalog:
                return read(catalog)

        return call

    figures: dict[str, list[float]] = {}
    figures["open"], _ = sample(opened(lambda catalog: None), runs)
    figures["pairs"], pairs = sample(opened(lambda catalog: catalog.pairs_all(GROUP)), runs)
    figures["device map"], _ = sample(opened(lambda catalog: catalog.map_all(HOST)), runs)
    figures["group map"], _ = sample(
        opened(lambda catalog: catalog.group_map_all(GROUP, HOST)), runs
    )
    figures["group load"], _ = sample(
        opened(lambda catalog: group_for_host(catalog, GROUP, HOST)), runs
    )
    assert isinstance(pairs, list) and len(pairs) == CONTROLLERS * VOLUMES
    return figures


def shell_figures(catalog: str, runs: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    for name, args in [
        ("python -c pass", ("-c", "pass")),
        ("python -c 'import click'", ("-c", "import click")),
        ("remcopy --help", ("-m", "remcopy", "--help")),
        ("remcopy group --help", ("-m", "remcopy", "group", "--help")),
        ("remcopy states", ("-m", "remcopy", "states")),
        ("remcopy states --json", ("-m", "remcopy", "states", "--json")),
    ]:
        figures[name], _ = sample(process(*args), runs)
    show = ("-m", "remcopy", "group", "show", GROUP, "--host", HOST, "--catalog", catalog)
    figures["remcopy group show --json (10,000)"], run = sample(process(*show, "--json"), runs)
    document = json.loads(run.stdout)  # exactly one JSON document on stdout
    assert len(document) == CONTROLLERS * VOLUMES, len(document)
    return figures


def stats(samples: Sequence[float]) -> tuple[float, float]:
    return statistics.median(samples), min(samples)


def rows_of(figures: dict[str, list[float]], base: float | None) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for name, samples in figures.items():
        median, least = stats(samples)
        ratio = f"{median / base:.1f}x" if base else ""
        out.append((name, median * 1e3, least * 1e3, ratio))
    return out


def run(root: Path, runs: int, pg_url: str | None) -> dict[str, Any]:
    began = time.perf_counter()
    sqlite_path = str(root / "catalog.db")
    backends = [("sqlite", sqlite_path)] + ([("postgresql", pg_url)] if pg_url else [])
    result: dict[str, Any] = {}
    builds: dict[str, dict[str, float]] = {}
    loads: dict[str, dict[str, list[float]]] = {}
    for backend, location in backends:
        builds[backend] = build_catalog(location, root)
        loads[backend] = load_figures(location, runs)
    shell = shell_figures(sqlite_path, runs)
    interpreter = stats(shell["python -c pass"])[0]
    print(
        table(
            f"whole processes (wall ms, {runs} runs after a warm-up)",
            ["command", "median", "min", "x python -c pass"],
            rows_of(shell, interpreter),
        )
    )
    for backend, figures in loads.items():
        print()
        print(
            table(
                f"{CONTROLLERS * VOLUMES:,}-pair group from the catalog, {backend} "
                f"(ms, {runs} rounds, each on a freshly opened catalog)",
                ["read", "median", "min", ""],
                rows_of(figures, None),
            )
        )
        result[f"group_load_10000_{backend}_s"] = round(stats(figures["group load"])[0], 6)
        result[f"group_load_10000_{backend}_min_s"] = round(stats(figures["group load"])[1], 6)
        result[f"group_map_10000_{backend}_s"] = round(stats(figures["group map"])[0], 6)
        result[f"catalog_open_{backend}_s"] = round(stats(figures["open"])[0], 6)
        print(
            "built in: "
            + ", ".join(f"{step} {seconds:.2f} s" for step, seconds in builds[backend].items())
        )
    help_s, help_min_s = stats(shell["remcopy --help"])
    group_help_s, group_help_min_s = stats(shell["remcopy group --help"])
    result |= {
        "cli_help_s": round(help_s, 4),
        "cli_help_min_s": round(help_min_s, 4),
        "cli_help_ratio_to_python": round(help_s / interpreter, 2),
        "cli_group_help_s": round(group_help_s, 4),
        "cli_group_help_min_s": round(group_help_min_s, 4),
        "cli_states_s": round(stats(shell["remcopy states"])[0], 4),
        "cli_states_json_s": round(stats(shell["remcopy states --json"])[0], 4),
        "cli_group_show_json_10000_s": round(
            stats(shell["remcopy group show --json (10,000)"])[0], 4
        ),
        "python_start_s": round(interpreter, 4),
        "runs": runs,
    }
    load_s = result["group_load_10000_sqlite_s"]
    print()
    print(
        table(
            "against the targets",
            ["figure", "measured", "target", "met"],
            [
                ("`remcopy --help` (s)", help_s, TARGET_HELP_S, help_s <= TARGET_HELP_S),
                (
                    "10,000-pair group load, SQLite (s)",
                    load_s,
                    TARGET_GROUP_LOAD_S,
                    load_s <= TARGET_GROUP_LOAD_S,
                ),
                *(
                    [
                        (
                            "10,000-pair group load, PostgreSQL (s)",
                            result["group_load_10000_postgresql_s"],
                            TARGET_GROUP_LOAD_S,
                            result["group_load_10000_postgresql_s"] <= TARGET_GROUP_LOAD_S,
                        )
                    ]
                    if pg_url
                    else []
                ),
            ],
        )
    )
    print(
        f"\nwhole run {time.perf_counter() - began:.0f} s; load average {load_average()}; "
        f"python {sys.version.split()[0]}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description="CLI start-up and group-load benchmark (see the header of bench/cli.py)."
    )
    parser.add_argument("--quick", action="store_true", help=f"{RUNS_QUICK} runs, not {RUNS_FULL}")
    parser.add_argument("--runs", type=int, default=None, help="runs of each figure")
    parser.add_argument("--pg", metavar="URL", help="also on this (empty) PostgreSQL database")
    args = parser.parse_args()
    runs = args.runs or (RUNS_QUICK if args.quick else RUNS_FULL)
    root = Path(tempfile.mkdtemp(prefix="remcopy-bench-cli-", dir="/tmp"))
    try:
        result = run(root, runs, args.pg)
    finally:
        remove_tree(root)
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
