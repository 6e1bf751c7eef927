# `remcopy workload run` and `remcopy verify`: write dependent chains, then prove an image
# consistent (docs/consistency.md). Front ends only: the work is in remcopy.workload.
#
# Exit codes: workload run: 0 ran and made progress, 1 a chain failed or nothing was
# acknowledged, 2 bad input. verify: 0 consistent, 1 inconsistent, 2 bad input (a bad log, a
# group or host the catalog lacks, a volume this host cannot read).
from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import datetime
from pathlib import Path

import click

from remcopy import aio
from remcopy.cli.common import catalog_option, json_option, open_catalog
from remcopy.cli.output import emit_json, say, table
from remcopy.errors import InputError, RemcopyError
from remcopy.groups.model import Group
from remcopy.groups.operations import status
from remcopy.groups.service import group_for_host
from remcopy.host.definition import HostDefinition
from remcopy.host.service import host_definition
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import PairState
from remcopy.workload.checker import check_image
from remcopy.workload.image import Image, ImageReader, parse_shadow_map
from remcopy.workload.layout import RING_SLOTS_DEFAULT, SIZES_DEFAULT, parse_sizes
from remcopy.workload.log import WorkloadLog, read_log
from remcopy.workload.report import CheckReport
from remcopy.workload.workload import Workload, WorkloadStats, check_stop

SECONDS_DEFAULT = 10.0


class WorkloadFailed(RemcopyError):
    """the workload did not run cleanly: a chain failed or nothing was acknowledged"""


class ImageInconsistent(RemcopyError):
    """the image is not a consistent cut of the workload's writes"""


def _err(text: str) -> None:
    click.echo(text, err=True)


@click.group()
def workload() -> None:
    """The dependent-write workload: chains of writes across a group's primaries."""


@workload.command("run")
@click.option("--group", "group_name", required=True, help="Write this group's primaries.")
@click.option("--host", "host_name", required=True, help="Write as this host.")
@click.option("--writers", type=int, default=8, show_default=True, help="Chains (writer tasks).")
@click.option("--seconds", type=float, help=f"Run this long (default {SECONDS_DEFAULT:g}).")
@click.option("--writes", type=int, help="Stop after this many writes in all (not with --seconds).")
@click.option("--seed", type=int, help="Seed of every random choice (printed when not given).")
@click.option(
    "--sizes",
    default=",".join(f"{s // 1024}k" for s in SIZES_DEFAULT),
    show_default=True,
    help="Data record sizes, multiples of 4k; a repeated size is picked more often.",
)
@click.option(
    "--ring-slots",
    type=int,
    default=RING_SLOTS_DEFAULT,
    show_default=True,
    help="Most slots per chain per volume before a chain overwrites its own records.",
)
@click.option(
    "--log",
    "log_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The log of acknowledged writes (a new file).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing log file.")
@click.option("--fsync", is_flag=True, help="fsync the log after every batch (power-loss safe).")
@catalog_option
@json_option
def workload_run(
    group_name: str,
    host_name: str,
    writers: int,
    seconds: float | None,
    writes: int | None,
    seed: int | None,
    sizes: str,
    ring_slots: int,
    log_path: Path,
    overwrite: bool,
    fsync: bool,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Write chains of dependent writes to every primary of a group and log each ack.

    Each chain issues a write only after its previous write was acknowledged and logged; odd
    chains write a data record, then an index record naming it on another controller's
    volume. DESTROYS the data in the region it writes at the start of every primary: run it
    on volumes meant for testing. Ctrl-C stops it cleanly.

    \b
    Example:
      remcopy workload run --group PAYROLL --host hosta --seconds 30 --log run1.jsonl
      remcopy verify --group PAYROLL --host hosta --log run1.jsonl --secondary
    """
    if seconds is not None and writes is not None:
        raise InputError("workload run: give --seconds or --writes, not both")
    if seconds is None and writes is None:
        seconds = SECONDS_DEFAULT
    check_stop(duration_s=seconds, writes=writes, stop_event=None)
    size_mix = parse_sizes(sizes)
    with open_catalog(catalog_location) as catalog:
        group = group_for_host(catalog, group_name, host_name)
        definition = host_definition(catalog, host_name)
    stats = aio.run(
        _run(
            definition,
            group,
            writers=writers,
            seconds=seconds,
            writes=writes,
            seed=seed,
            sizes=size_mix,
            ring_slots=ring_slots,
            log_path=log_path,
            overwrite=overwrite,
            fsync=fsync,
        )
    )
    if as_json:
        emit_json(stats.to_json())
    else:
        _show_stats(stats)
    if stats.failures or not stats.progressed:
        why = (
            f"{len(stats.failures)} of {stats.chains} chains failed"
            if stats.failures
            else "no write was acknowledged"
        )
        raise WorkloadFailed(f"workload on group {group_name}: {why}")


async def _run(
    definition: HostDefinition,
    group: Group,
    *,
    writers: int,
    seconds: float | None,
    writes: int | None,
    seed: int | None,
    sizes: tuple[int, ...],
    ring_slots: int,
    log_path: Path,
    overwrite: bool,
    fsync: bool,
) -> WorkloadStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with HostSession(definition) as session:
        runner = Workload(
            session, group, writers=writers, sizes=sizes, seed=seed, ring_slots_max=ring_slots
        )
        layout = await runner.setup(log_path, overwrite_log=overwrite, fsync=fsync)
        _err(
            f"workload: seed {runner.seed} run {layout.run_id:016x}: {layout.chains} chains over "
            f"{len(layout.volumes)} volumes on {len(layout.controllers)} controllers, "
            f"{layout.ring_slots} slots of {layout.slot_bytes} bytes per chain per volume; "
            f"log {log_path}"
        )
        try:
            await runner.run(duration_s=seconds, writes=writes, stop_event=stop)
        finally:
            runner.close()
        return runner.metrics()


def _show_stats(stats: WorkloadStats) -> None:
    rate = stats.writes_acked / stats.elapsed_s if stats.elapsed_s else 0.0
    say(
        f"workload: {stats.writes_acked} writes acknowledged ({stats.bytes_acked} bytes) by "
        f"{stats.chains} chains in {stats.elapsed_s:.2f} s ({rate:.0f}/s); latency p50 "
        f"{stats.latency_p50_s * 1e3:.3f} ms p99 {stats.latency_p99_s * 1e3:.3f} ms; "
        f"{stats.late_write_retries} late-write retries, {stats.busy_retries} busy retries; "
        f"stopped: {stats.stopped}; seed {stats.seed}; log {stats.log_path}"
    )
    if stats.failures:
        table(
            "chains that failed",
            ["chain", "seq", "volume", "why"],
            [(f.chain, f.seq, f.volume, f.message) for f in stats.failures],
        )


@click.command("verify")
@click.option("--group", "group_name", required=True, help="The group the workload wrote.")
@click.option("--host", "host_name", required=True, help="Read as this host.")
@click.option(
    "--log",
    "log_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The workload's log.",
)
@click.option("--secondary", is_flag=True, help="Check the secondaries (default: the primaries).")
@click.option(
    "--shadow",
    "shadow_map",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check the shadow copies: a file of 'SECONDARY TERTIARY' address lines.",
)
@click.option("--all-acked", is_flag=True, help="Also fail if any acknowledged write is missing.")
@click.option(
    "--at",
    "at_text",
    help="Also check the cut is exactly at suspend time T: ns since the epoch, or 'auto' "
    "(the T every pair is SUSPENDED at).",
)
@catalog_option
@json_option
def verify(
    group_name: str,
    host_name: str,
    log_path: Path,
    secondary: bool,
    shadow_map: Path | None,
    all_acked: bool,
    at_text: str | None,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Decide whether an image of a group is a consistent cut of a workload's writes.

    Reads the primaries (default), the secondaries (--secondary) or the shadow copies of the
    secondaries (--shadow MAP) and reports, per chain, the prefix present and the first
    violation. Exit 0 consistent, 1 inconsistent, 2 bad input.

    \b
    Example:
      remcopy verify --group PAYROLL --host hosta --log run1.jsonl --secondary --at auto
      remcopy verify --group PAYROLL --host hosta --log run1.jsonl --all-acked
    """
    if secondary and shadow_map is not None:
        raise InputError("verify: give --secondary or --shadow, not both")
    image = Image.SHADOW if shadow_map else Image.SECONDARY if secondary else Image.PRIMARY
    log = read_log(log_path)
    if log.group and log.group != group_name:
        raise InputError(
            f"verify: log {log_path} records a run on group {log.group}, not {group_name}"
        )
    tertiaries = parse_shadow_map(shadow_map) if shadow_map is not None else None
    at_ns = _at_ns(at_text)
    with open_catalog(catalog_location) as catalog:
        group = group_for_host(catalog, group_name, host_name)
        definition = host_definition(catalog, host_name)
    report = aio.run(
        _verify(
            definition,
            group,
            log,
            image,
            tertiaries=tertiaries,
            require_all_acked=all_acked,
            at_ns=at_ns,
        )
    )
    if as_json:
        emit_json(report.to_json())
    else:
        _show_report(report)
    if not report.consistent:
        raise ImageInconsistent(report.summary())


def _at_ns(text: str | None) -> int | str | None:
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().isascii() and text.strip().isdigit():
        return int(text)
    raise InputError(f"--at: expected ns since the epoch or 'auto' (got {text!r})")


async def _verify(
    definition: HostDefinition,
    group: Group,
    log: WorkloadLog,
    image: Image,
    *,
    tertiaries: dict[HardwareAddress, HardwareAddress] | None,
    require_all_acked: bool,
    at_ns: int | str | None,
) -> CheckReport:
    async with HostSession(definition) as session:
        reader = ImageReader(session, group, image, tertiaries=tertiaries)
        reader.check_routes(v.address for v in log.layout.volumes)
        if image is Image.SECONDARY:
            await _warn_if_not_frozen(session, group)
        if at_ns == "auto":
            at_ns = await _suspend_time(session, group)
        assert not isinstance(at_ns, str)
        return await check_image(
            reader,
            log,
            require_all_acked=require_all_acked,
            at_ns=at_ns,
            name=reader.name,
            image=reader.describe(),
        )


# The secondaries are a fixed image only while their pairs do not copy to them.
_FROZEN = {PairState.SUSPENDED, PairState.SUSPENDED_ERROR, PairState.RECOVERED}


async def _warn_if_not_frozen(session: HostSession, group: Group) -> None:
    statuses = await status(session, group)
    moving = [s for s in statuses if s.state is not None and s.state not in _FROZEN]
    if moving:
        counts: dict[str, int] = {}
        for s in moving:
            counts[s.state_name] = counts.get(s.state_name, 0) + 1
        shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        _err(
            f"verify: warning: {shown} pairs of group {group.name} still copy to their "
            "secondaries: the image may change while it is read; suspend the group first"
        )


async def _suspend_time(session: HostSession, group: Group) -> int:
    statuses = await status(session, group)
    times = {s.suspend_at_ns for s in statuses if s.state is PairState.SUSPENDED}
    odd = [s for s in statuses if s.state is not PairState.SUSPENDED]
    if odd or len(times) != 1 or 0 in times:
        shown = ", ".join(f"{s.pair.name} {s.state_name}" for s in odd[:5])
        raise InputError(
            f"--at auto: the pairs of group {group.name} are not all SUSPENDED at one T"
            + (f" ({shown})" if shown else f" (times {sorted(times)})")
        )
    return times.pop()


def _show_report(report: CheckReport) -> None:
    say(report.summary())
    rows = []
    for chain in report.chains:
        first = chain.first_violation
        rows.append(
            (
                chain.chain,
                "indexed" if chain.indexed else "plain",
                chain.logged,
                chain.prefix,
                chain.acked_missing,
                chain.unlogged,
                "ok" if first is None else f"{first.reason.value}: {first.message}",
            )
        )
    table(
        None,
        ["chain", "kind", "logged", "prefix", "acked absent", "unlogged", "first violation"],
        rows,
    )
    if report.cut_window_ns is not None:
        lo, hi = report.cut_window_ns
        say(f"cut time T: after {_when(lo)}, at or before {_when(hi)}")
    if report.stamp_window_ns is not None:
        lo, hi = report.stamp_window_ns
        say(f"timestamp cut: every write stamped < T present for T in ({lo}, {hi or 'inf'}]")
    else:
        say("timestamp cut: none (no T splits the stamps of present and absent writes)")
    cross = [v for v in report.violations if v.reason.name in ("NO_COMMON_TIME", "NOT_CUT_AT_T")]
    for violation in cross[:20]:
        say(f"{violation.reason.value}: {violation.message}")
    sys.stdout.flush()


def _when(ns: int | None) -> str:
    if ns is None:
        return "(open)"
    if ns == 0:
        return "the start"
    return f"{ns} ({datetime.fromtimestamp(ns / 1e9).isoformat(timespec='microseconds')})"
