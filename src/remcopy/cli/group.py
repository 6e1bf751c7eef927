# `remcopy group ...`: define, load and operate copy groups.
from __future__ import annotations

#
# Imports: only what defining the commands needs is imported at the top (click, the options,
# PairOp); the catalog, rich, the event loop and the group operations are imported inside the
# command that uses them, so `remcopy group --help` stays fast (cli/lazy.py).
import contextlib
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from remcopy.cli.common import catalog_option, json_option
from remcopy.errors import InputError, RemcopyError
from remcopy.ids import device_number_text
from remcopy.states import PairState
from remcopy.wire.native import PairOp

if TYPE_CHECKING:
    from remcopy.catalog import Catalog
    from remcopy.cli.common import CopyProgress
    from remcopy.groups.asyncstatus import AsyncTotals
    from remcopy.groups.operations import GroupReport
    from remcopy.groups.progress import ProgressCallback
    from remcopy.groups.wait import WaitReport


class GroupOperationFailed(RemcopyError):
    """a group operation did not reach its expected state on every pair"""


class NotConfirmed(RemcopyError):
    """a destructive group operation was not confirmed; nothing was sent"""


# Operations that end pairs or take them over ask first (docs/operations.md): on a terminal a
# question, otherwise --yes, so a script states its intent and a pasted line cannot end a
# group's copies by accident. A dry run sends nothing and asks nothing.
_CONSEQUENCES = {
    "terminate": "both sides become SIMPLEX: the copies end, and a new establish copies every "
    "track again",
    "recover": "the secondaries become writable here and take no more updates from their "
    "primaries (a takeover)",
    "failback": "the copy direction reverses: the recovered volumes become the primaries and "
    "copy back what changed",
    "return-home": "the primary role goes back to the defined primaries: host writes at the "
    "current primaries must have stopped",
}


def _yes_option(f: Any) -> Any:
    return click.option(
        "--yes",
        "-y",
        "yes",
        is_flag=True,
        help="Do it without asking (required when stdin is not a terminal).",
    )(f)


def _must_ask(op: str, name: str, *, yes: bool, dry_run: bool) -> bool:
    """Whether to ask before `op`; refuses (exit 2) when it cannot ask and --yes is missing."""
    if yes or dry_run:
        return False
    if not sys.stdin.isatty():
        raise InputError(
            f"group {op} {name}: asks for confirmation and stdin is not a terminal: pass --yes "
            f"to {op} without asking (--dry-run shows the plan first)"
        )
    return True


def _confirm(catalog: Catalog, op: str, name: str, host_name: str) -> None:
    """Ask on the terminal (stderr: stdout stays for --json); refuse unless the answer is y."""
    from remcopy.cli.output import stderr

    pairs = catalog.group_one(name).pair_count
    stderr.print(f"{op} {name} as {host_name}: {_CONSEQUENCES[op]}", markup=False, highlight=False)
    if not click.confirm(f"{op} {pairs} pairs of {name}?", default=False, err=True):
        raise NotConfirmed(f"group {op} {name}: not confirmed: nothing was sent")


def _wait_option(f: Any) -> Any:
    return click.option(
        "--wait/--no-wait",
        default=None,
        help="Wait until the copies are done (default: on a terminal, with a progress bar).",
    )(f)


def _progress(bars: CopyProgress, wait: bool | None, as_json: bool) -> ProgressCallback | None:
    """The progress callback when the command waits for its copies: asked for, or by default
    on a terminal without --json."""
    from remcopy.cli.output import stderr

    if wait is None:
        wait = stderr.is_terminal and not as_json
    return bars if wait else None


@click.group()
def group() -> None:
    """Copy groups: define them, load them for a host, and run operations on all pairs."""


@group.command("define")
@click.argument("definition", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace a group of the same name.")
@catalog_option
@json_option
def group_define(definition: Path, replace: bool, catalog_location: str, as_json: bool) -> None:
    """Resolve a group DEFINITION through the device maps and store it (all or nothing).

    Every bad pair is named; if any is bad nothing is stored (exit 2).

    \b
    Example:
      remcopy group define groups/payroll.toml
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say
    from remcopy.groups.service import define_group

    with open_catalog(catalog_location) as catalog:
        count = define_group(catalog, definition, replace=replace)
        name = catalog.groups_all()[-1].name if not as_json else None
        del name
    if as_json:
        emit_json({"definition": str(definition), "pairs": count})
    else:
        say(f"{definition}: {count} pairs stored")


@group.command("add")
@click.argument("name")
@click.option(
    "--pair",
    "pairs",
    multiple=True,
    required=True,
    metavar="PRIMARY,SECONDARY",
    help="A pair, each side a volser, HOST:DEVNUM or hardware address (repeatable).",
)
@catalog_option
@json_option
def group_add(name: str, pairs: tuple[str, ...], catalog_location: str, as_json: bool) -> None:
    """Add pairs to group NAME; all or nothing, every bad pair named.

    \b
    Example:
      remcopy group add PAYROLL --pair PAY009,PAYB09 --pair hosta:1A0A,hosta:2B0A
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say
    from remcopy.groups.service import add_pairs

    parsed = []
    for text in pairs:
        primary, sep, secondary = text.partition(",")
        if not sep or not primary.strip() or not secondary.strip():
            raise InputError(f"--pair: expected PRIMARY,SECONDARY (got {text!r})")
        parsed.append((primary.strip(), secondary.strip()))
    with open_catalog(catalog_location) as catalog:
        count = add_pairs(catalog, name, parsed)
    if as_json:
        emit_json({"group": name, "pairs": count})
    else:
        say(f"group {name}: {len(parsed)} pairs added, {count} pairs in all")


@group.command("remove-pair")
@click.argument("name")
@click.argument("keys", nargs=-1, required=True)
@click.option("--host", "host_name", required=True, help="Device numbers are this host's.")
@catalog_option
@json_option
def group_remove_pair(
    name: str, keys: tuple[str, ...], host_name: str, catalog_location: str, as_json: bool
) -> None:
    """Remove the pairs KEYS name (volser, device number, or address) from group NAME.

    \b
    Example:
      remcopy group remove-pair PAYROLL PAY009 1A0A --host hosta
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say
    from remcopy.groups.service import remove_pairs

    with open_catalog(catalog_location) as catalog:
        count = remove_pairs(catalog, name, host_name, keys)
    if as_json:
        emit_json({"group": name, "pairs": count})
    else:
        say(f"group {name}: {len(keys)} pairs removed, {count} pairs left")


@group.command("shadow")
@click.argument("name")
@click.option(
    "--host",
    "host_name",
    required=True,
    help="Act as this host (it must reach the secondary controllers).",
)
@click.option(
    "--to",
    "map_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of `SECONDARY TERTIARY` address lines: where each copy goes.",
)
@click.option("--dry-run", is_flag=True, help="Plan and show; send no pair operation.")
@_wait_option
@catalog_option
@json_option
def group_shadow(
    name: str,
    host_name: str,
    map_file: Path,
    dry_run: bool,
    wait: bool | None,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Start a point-in-time shadow copy of every suspended secondary of group NAME.

    The copies run on the secondaries' controllers; resume waits until they are done.
    On a terminal the command waits for the copies with a progress bar (--no-wait: return
    once they started).

    \b
    Example:
      remcopy group shadow PAYROLL --host hostb --to payroll-shadow.map
    """
    from remcopy import aio
    from remcopy.cli.common import CopyProgress, open_catalog
    from remcopy.groups.service import shadow_group
    from remcopy.workload.image import parse_shadow_map

    tertiaries = {str(s): t for s, t in parse_shadow_map(map_file).items()}
    with open_catalog(catalog_location) as catalog, CopyProgress() as bars:
        report = aio.run(
            shadow_group(
                catalog,
                name,
                host_name,
                tertiaries,
                dry_run=dry_run,
                progress=_progress(bars, wait, as_json),
            )
        )
    _report(report, as_json, "shadowing")


@group.command("load")
@click.argument("name")
@click.option("--host", "host_name", required=True, help="The host to build the map for.")
@catalog_option
@json_option
def group_load(name: str, host_name: str, catalog_location: str, as_json: bool) -> None:
    """Build and store group NAME's map for a host: each pair's device numbers there.

    \b
    Example:
      remcopy group load PAYROLL --host hosta
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say
    from remcopy.groups.service import load_group

    with open_catalog(catalog_location) as catalog:
        loaded, missing = load_group(catalog, name, host_name)
    if as_json:
        emit_json(
            {"group": name, "host": host_name, "pairs": len(loaded.pairs), "not_visible": missing}
        )
        return
    say(
        f"group {name} loaded for {host_name}: {len(loaded.pairs)} pairs"
        + (f", {len(missing)} devices this host cannot see" if missing else "")
    )
    for line in missing[:20]:
        say(f"  {line}")


@group.command("list")
@catalog_option
@json_option
def group_list(catalog_location: str, as_json: bool) -> None:
    """List the groups in the catalog.

    \b
    Example:
      remcopy group list
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, table

    with open_catalog(catalog_location) as catalog:
        groups = catalog.groups_all()
    rows = [
        {
            "group": g.name,
            "pairs": g.pair_count,
            **dict(g.options),
            "direction": "reversed" if g.reversed else "defined",
        }
        for g in groups
    ]
    if as_json:
        emit_json(rows)
        return
    table(
        None,
        ["group", "pairs", "mode", "consistency group", "direction"],
        [
            (
                r["group"],
                r["pairs"],
                r.get("mode", ""),
                r.get("consistency_group", ""),
                r["direction"],
            )
            for r in rows
        ],
    )


@group.command("show")
@click.argument("name")
@click.option("--host", "host_name", required=True, help="Show device numbers of this host.")
@click.option("--pair", "key", help="One pair, by volser, device number or address.")
@catalog_option
@json_option
def group_show(
    name: str, host_name: str, key: str | None, catalog_location: str, as_json: bool
) -> None:
    """Show group NAME's pairs as a host sees them; --pair finds one by any of five keys.

    Primary and secondary are as the pairs copy now: after a failback (direction reversed)
    the defined secondaries are the primaries.

    \b
    Example:
      remcopy group show PAYROLL --host hosta --pair 1A07
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, table
    from remcopy.groups.load import lookup
    from remcopy.groups.service import group_for_host

    with open_catalog(catalog_location) as catalog:
        loaded = group_for_host(catalog, name, host_name)
    pairs = [lookup(loaded.pairs, key)] if key else list(loaded.pairs)

    def num(n: int | None) -> str:
        return "-" if n is None else device_number_text(n)

    if as_json:
        emit_json(
            [
                {
                    "volser": p.volser,
                    "primary": str(p.primary),
                    "secondary": str(p.secondary),
                    "primary_device": num(p.primary_number),
                    "secondary_device": num(p.secondary_number),
                    "direction": loaded.direction,
                }
                for p in pairs
            ]
        )
        return
    table(
        f"group {name} on {host_name} (direction: {_direction_text(loaded.direction)})",
        ["volser", "pri dev", "primary", "sec dev", "secondary"],
        [
            (
                p.volser,
                num(p.primary_number),
                str(p.primary),
                num(p.secondary_number),
                str(p.secondary),
            )
            for p in pairs
        ],
    )


def _direction_text(direction: str) -> str:
    if direction == "reversed":
        return "reversed: the defined secondaries are the primaries"
    return "as defined"


_EXPECT = ["DUPLEX", "SUSPENDED", "PENDING", "RECOVERED", "SIMPLEX"]


def _expect_option(f: Any) -> Any:
    return click.option(
        "--expect",
        type=click.Choice(_EXPECT),
        help="Exit 1 unless every pair is in this state.",
    )(f)


def _watch_options(f: Any) -> Any:
    f = click.option(
        "--interval",
        "interval_s",
        type=click.FloatRange(min=0.1),
        default=2.0,
        show_default=True,
        help="With --watch: seconds between readings.",
    )(f)
    return click.option(
        "--watch", is_flag=True, help="Redraw the per-pair view in place (a terminal only)."
    )(f)


@group.command("pairs")
@click.argument("name")
@click.option("--host", "host_name", required=True, help="Ask as this host.")
@_expect_option
@_watch_options
@catalog_option
@json_option
def group_pairs_command(
    name: str,
    host_name: str,
    expect: str | None,
    watch: bool,
    interval_s: float,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Group NAME pair by pair, both ends read (like pairdisplay -fcx).

    A row per pair: volser, device numbers and addresses of both ends, the state each end
    reports and which ends answered, mode, fence, lag in bytes and seconds, consistency time
    and RPO, changed tracks, copy progress, and the last state change with its time and
    cause (docs/operations.md explains each column). Exit 1 if a pair neither end answers
    for, or with --expect, a pair not in that state.

    \b
    Example:
      remcopy group pairs PAYROLL --host hosta
      remcopy group pairs PAYROLL --host hosta --watch --interval 1
    """
    from rich.live import Live

    from remcopy import aio
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, print_wide, stdout
    from remcopy.cli.pairview import document, refuse_watch, render
    from remcopy.groups.service import group_pairs

    if watch:
        refuse_watch(as_json=as_json, terminal=stdout.is_terminal)
    with open_catalog(catalog_location) as catalog:
        direction = "reversed" if catalog.group_one(name).reversed else "defined"
        if watch:
            with Live(console=stdout, auto_refresh=False) as live:

                def draw(rows: Any) -> None:
                    live.update(render(name, host_name, rows), refresh=True)

                try:
                    aio.run(
                        group_pairs(catalog, name, host_name, watch=draw, interval_s=interval_s)
                    )
                except KeyboardInterrupt:
                    return  # Ctrl-C ends a watch: not an error
        rows = aio.run(group_pairs(catalog, name, host_name))
    if as_json:
        emit_json(document(name, host_name, direction, rows))
    else:
        print_wide(render(name, host_name, rows))
    unread = [r for r in rows if r.answered == "none"]
    odd = [r for r in rows if expect and r.state is not None and r.state.name != expect]
    if unread or odd:
        raise GroupOperationFailed(
            f"group {name}: "
            + "; ".join(
                part
                for part in (
                    f"{len(unread)} pairs not read at either end" if unread else "",
                    f"{len(odd)} pairs not {expect}" if odd else "",
                )
                if part
            )
        )


@group.command("status")
@click.argument("name")
@click.option("--host", "host_name", required=True, help="Ask as this host.")
@_expect_option
@click.option(
    "--reverse", is_flag=True, help="Read the secondaries first (the primaries if they cannot be)."
)
@click.option("--pairs", "per_pair", is_flag=True, help="The per-pair view (as `group pairs`).")
@_watch_options
@catalog_option
@json_option
def group_status_command(
    name: str,
    host_name: str,
    expect: str | None,
    reverse: bool,
    per_pair: bool,
    watch: bool,
    interval_s: float,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Group NAME's pairs by state, the pairs not as expected, lag, last suspend time, and
    the suspend armed for a T still to come; --pairs: a row per pair (`group pairs`).

    Each state is read at the pair's primary (in the group's current direction); where the
    primary cannot be read (its site lost, no path) it is read at the secondary, and said
    so. A pair neither end answers for is UNKNOWN, with why. Exit 1 if any pair is UNKNOWN
    or, with --expect, not in that state.

    \b
    Example:
      remcopy group status PAYROLL --host hosta --expect DUPLEX
      remcopy group status PAYROLL --host hostb    # after losing the primary site
      remcopy group status PAYROLL --host hosta --pairs --watch
    """
    if per_pair:
        click.get_current_context().invoke(
            group_pairs_command,
            name=name,
            host_name=host_name,
            expect=expect,
            watch=watch,
            interval_s=interval_s,
            catalog_location=catalog_location,
            as_json=as_json,
        )
        return
    if watch:
        raise InputError("group status --watch: needs --pairs (the per-pair view is watched)")
    from remcopy import aio
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say, table
    from remcopy.groups.service import group_status_totals

    with open_catalog(catalog_location) as catalog:
        direction = "reversed" if catalog.group_one(name).reversed else "defined"
        statuses, totals = aio.run(group_status_totals(catalog, name, host_name, reverse=reverse))
    counts: dict[str, int] = {}
    read_at = {"primary": 0, "secondary": 0, "unknown": 0}
    for s in statuses:
        counts[s.state_name] = counts.get(s.state_name, 0) + 1
        read_at[s.side or "unknown"] += 1
    odd = [s for s in statuses if s.state is None or (expect and s.state_name != expect)]
    suspended_at = sorted({s.suspend_at_ns for s in statuses if s.suspend_at_ns})
    armed: dict[int, int] = {}
    for s in statuses:
        if s.armed_at_ns:
            armed[s.armed_at_ns] = armed.get(s.armed_at_ns, 0) + 1
    not_read = sorted({s.error for s in statuses if s.error})
    doc = {
        "group": name,
        "direction": direction,
        "pairs": len(statuses),
        "counts": counts,
        "read_at": read_at,
        "not_read": not_read,
        "lag_bytes": sum(s.lag_bytes for s in statuses),
        "lag_s": max((s.lag_ns for s in statuses), default=0) / 1e9,
        "dirty_tracks": sum(s.dirty_tracks for s in statuses),
        "async": None if totals is None else totals.to_json(),
        "suspend_at_ns": suspended_at[-1] if suspended_at else None,
        "armed": [{"at_ns": at, "pairs": n} for at, n in sorted(armed.items())],
        "not_expected": [
            {"pair": s.pair.name, "state": s.state_name, "side": s.side, "error": s.error}
            for s in odd
        ],
        "states": [
            {
                "pair": s.pair.name,
                "state": s.state_name,
                "side": s.side,
                "role": s.role.value,
                "address": str(s.pair.primary if s.side != "secondary" else s.pair.secondary),
                "error": s.error,
            }
            for s in statuses
        ],
    }
    if as_json:
        emit_json(doc)
    else:
        say(
            f"group {name} ({_direction_text(direction)}): {len(statuses)} pairs: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f"; lag {doc['lag_bytes']} bytes, {doc['lag_s']:.3f} s at most; "
            f"{doc['dirty_tracks']} changed tracks"
        )
        if totals is not None:
            say(_async_line(totals))
        for at, n in sorted(armed.items()):
            say(f"suspend armed at {_when(at)} on {n} pairs (`group suspend --cancel` disarms)")
        if read_at["secondary"]:
            say(
                f"{read_at['secondary']} pairs: primary UNKNOWN (not read), state read at the "
                "secondary"
            )
        if read_at["unknown"]:
            say(f"{read_at['unknown']} pairs: UNKNOWN, neither end could be read")
        for line in not_read[:_PAIR_ROWS_MAX]:
            say(f"  {line}")
        if odd:
            table(
                "pairs not as expected",
                ["pair", "state", "read at", "error"],
                [(s.pair.name, s.state_name, s.side or "-", s.error) for s in odd[:50]],
            )
    if odd:
        raise GroupOperationFailed(f"group {name}: {len(odd)} pairs not as expected")


def _async_line(totals: AsyncTotals) -> str:
    """`group status`'s line for the async pairs: journal bytes at both ends, C and RPO."""

    def known(value: int | None) -> str:
        return "not read" if value is None else f"{value} bytes"

    line = (
        f"async: {totals.pairs} pairs; journal at the primaries "
        f"{known(totals.primary_journal_bytes)}, at the secondaries "
        f"{known(totals.secondary_journal_bytes)}"
    )
    if totals.consistency_ns is not None:
        line += f"; consistent at {_when(totals.consistency_ns)}, RPO {totals.rpo_s:.3f} s"
    if totals.not_read:
        line += f"; {len(totals.not_read)} ends not read: " + "; ".join(totals.not_read[:3])
    return line


class WaitTimedOut(RemcopyError):
    """not every pair of the group reached the state before the timeout"""


@group.command("wait")
@click.argument("name")
@click.option("--host", "host_name", required=True, help="Ask as this host.")
@click.option(
    "--state",
    "state_name",
    required=True,
    type=click.Choice([s.name for s in PairState], case_sensitive=False),
    help="The state every pair must reach.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds to wait before giving up (exit 1).",
)
@catalog_option
@json_option
def group_wait(
    name: str,
    host_name: str,
    state_name: str,
    timeout_s: float,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Wait until every pair of group NAME is in STATE; exit 1 at the timeout.

    Follows the controllers' event streams and reads a pair again only when an event names
    it (no polling). At the timeout it names the pairs still away and their states.

    \b
    Example:
      remcopy group establish PAYROLL --host hosta --no-wait
      remcopy group wait PAYROLL --host hosta --state DUPLEX --timeout 600
    """
    from remcopy import aio
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say, table
    from remcopy.groups.wait import wait_group

    state = PairState[state_name.upper()]
    with open_catalog(catalog_location) as catalog:
        report = aio.run(
            wait_group(
                catalog, name, host_name, state, timeout_s=timeout_s, on_waiting=_say_waiting
            )
        )
    away = report.away
    if as_json:
        emit_json(report.to_json())
    else:
        for controller, why in sorted(report.not_subscribed.items()):
            say(f"no events from {controller}: {why}")
        if report.reached:
            say(
                f"group {name}: all {len(report.pairs)} pairs {state.name} after "
                f"{report.elapsed_s:.1f} s ({report.events} events, {report.requeries} re-reads)"
            )
        else:
            say(
                f"group {name}: {len(away)} of {len(report.pairs)} pairs not {state.name} after "
                f"{report.elapsed_s:.1f} s"
            )
            table(
                "pairs still away",
                ["pair", "state", "read at", "error"],
                [
                    (p.pair.name, p.state_name, p.side or "-", p.error)
                    for p in away[:_PAIR_ROWS_MAX]
                ],
            )
            if len(away) > _PAIR_ROWS_MAX:
                say(f"... and {len(away) - _PAIR_ROWS_MAX} more pairs (--json lists them all)")
    if not report.reached:
        shown = ", ".join(f"{p.pair.name} {p.state_name}" for p in away[:5])
        more = f" and {len(away) - 5} more" if len(away) > 5 else ""
        raise WaitTimedOut(
            f"group {name}: wait for {state.name}: {len(away)} pairs still away after "
            f"{timeout_s:g} s: {shown}{more}"
        )


def _say_waiting(report: WaitReport) -> None:
    """The streams are live and the first read is done: say what is awaited (stderr)."""
    from remcopy.cli.output import stderr

    stderr.print(
        f"waiting for {len(report.away)} of {len(report.pairs)} pairs of {report.group} to be "
        f"{report.state.name}",
        markup=False,
        highlight=False,
    )


def _report(report: GroupReport, as_json: bool, expected: str) -> None:
    from remcopy.cli.output import emit_json, say, table

    if as_json:
        emit_json(report.to_json())
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))
        requests = sum(report.requests.values())
        if report.dry_run:
            _print_plan(report)
        else:
            say(
                f"group {report.group}: {report.op} on {len(report.pairs)} pairs in "
                f"{report.elapsed_s * 1e3:.1f} ms, {requests} requests to "
                f"{len(report.requests)} controllers: {counts or 'nothing'}"
                + (f"; copies done in {report.copy_s:.1f} s" if report.copy_s else "")
            )
            if report.already:
                said = sorted({p.message.split(": ", 1)[-1] for p in report.already})
                say(
                    f"{len(report.already)} pairs needed nothing (counted done): "
                    + "; ".join(said[:5])
                )
        if report.cut is not None:
            _say_cut(report.cut)
        if report.op == "suspend" and report.seal:
            _print_seal(report)
        if report.op == "suspend" and report.armed:
            pairs = len(report.pairs) - len(report.failed)
            say(
                f"armed at {_when(report.at_ns)} on {len(report.armed_controllers())} controllers "
                f"({pairs} pairs): they suspend at T; `remcopy group status` shows it, "
                "`--cancel` disarms it"
            )
        elif report.op == "suspend" and not report.dry_run:
            if report.consistent:
                say(
                    f"consistent at T={report.at_ns} "
                    f"({datetime.fromtimestamp(report.at_ns / 1e9).isoformat()}), margin "
                    f"{report.margin_s * 1e3:.1f} ms"
                )
            else:
                say("NOT consistent: some pairs did not suspend at T")
        if report.failed:
            table(
                "pairs that would be refused"
                if report.dry_run
                else "pairs not in the expected state",
                ["pair", "state", "why"],
                [(p.pair.name, p.state.name, p.message) for p in report.failed[:50]],
            )
    if report.dry_run and report.failed:
        raise GroupOperationFailed(
            f"group {report.group}: {report.op} (dry run): {len(report.failed)} pairs would be "
            "refused"
        )
    if report.failed or (
        report.op == "suspend" and not report.consistent and not report.dry_run and not report.armed
    ):
        raise GroupOperationFailed(
            f"group {report.group}: {report.op}: {len(report.failed)} pairs not {expected}"
        )


_PAIR_ROWS_MAX = 50


def _print_plan(report: GroupReport) -> None:
    """A dry run: per controller, the moves, the tracks to copy and the refusals; per pair
    the tracks a copy would move."""
    from remcopy.cli.output import say, table
    from remcopy.groups.preview import plan_summary

    controllers = len(report.requests)
    say(
        f"group {report.group}: {report.op} on {len(report.pairs)} pairs (dry run: no pair "
        f"operation sent; {controllers} controller{'s' if controllers != 1 else ''} would get "
        "one request each)"
    )
    if report.op == "suspend":
        say(
            f"it would suspend at T={report.at_ns} "
            f"({datetime.fromtimestamp(report.at_ns / 1e9).isoformat()}), margin "
            f"{report.margin_s * 1e3:.1f} ms"
        )
    copies = report.op in ("establish", "resume", "failback", "shadow")
    table(
        "plan per controller",
        ["controller", "pairs", "moves", *(["tracks to copy"] if copies else []), "refused"],
        [
            (
                controller,
                entry["pairs"],
                ", ".join(f"{n} {move}" for move, n in sorted(entry["moves"].items())),
                *([entry["tracks"]] if copies else []),
                entry["refused"],
            )
            for controller, entry in plan_summary(report.plan).items()
        ],
    )
    rows = [row for row in report.plan if not row.refused]
    if copies and rows:
        table(
            "tracks each pair would copy",
            ["pair", "device", "move", "tracks"],
            [
                (
                    row.pair.name,
                    str(row.device),
                    row.move(),
                    f"{row.tracks}" if row.tracks_exact else f"<= {row.tracks}",
                )
                for row in rows[:_PAIR_ROWS_MAX]
            ],
        )
        if len(rows) > _PAIR_ROWS_MAX:
            say(f"... and {len(rows) - _PAIR_ROWS_MAX} more pairs (--json lists them all)")


def _print_seal(report: GroupReport) -> None:
    """The suspend record per controller: when it sealed T, late writes refused, host I/O
    held."""
    from remcopy.cli.output import table

    rows = []
    for controller, doc in sorted(report.seal.items()):
        if "sealed_ns" not in doc:
            continue
        rows.append(
            (
                controller,
                f"{(doc['sealed_ns'] - report.at_ns) / 1e6:.3f}",
                f"{(doc['drained_ns'] - report.at_ns) / 1e6:.3f}",
                doc.get("late_writes", 0),
                doc.get("in_flight_at_seal", 0),
                doc.get("host_io_held_ms", 0.0),
            )
        )
    table(
        "seal per controller (ms after T)",
        ["controller", "sealed", "drained", "late writes refused", "in flight", "host I/O held ms"],
        rows,
    )


_COPYING = (PairOp.ESTABLISH, PairOp.RESUME, PairOp.FAILBACK)


def _op_command(op: PairOp, expected: str, doc: str) -> click.Command:
    @click.command(op.name.lower(), help=doc)
    @click.argument("name")
    @click.option("--host", "host_name", required=True, help="Act as this host.")
    @click.option("--dry-run", is_flag=True, help="Plan and show; send no pair operation.")
    @catalog_option
    @json_option
    def command(
        name: str, host_name: str, dry_run: bool, catalog_location: str, as_json: bool, **extra: Any
    ) -> None:
        from remcopy import aio
        from remcopy.cli.common import CopyProgress, open_catalog
        from remcopy.groups.service import operate
        from remcopy.groups.when import suspend_at_ns

        acting = op
        if op is PairOp.SUSPEND and extra.get("cancel"):
            _check_cancel(dry_run, extra)
            acting = PairOp.SUSPEND_CANCEL
        at = suspend_at_ns(extra.get("at"), extra.get("within")) if op is PairOp.SUSPEND else None
        margin = extra.get("margin_ms")
        command_name = op.name.lower()
        ask = command_name in _CONSEQUENCES and _must_ask(
            command_name, name, yes=bool(extra.get("yes")), dry_run=dry_run
        )
        with open_catalog(catalog_location) as catalog:
            if ask:
                _confirm(catalog, command_name, name, host_name)
            with contextlib.ExitStack() as stack:
                # Progress bars (rich.progress) only for operations that copy.
                bars = stack.enter_context(CopyProgress()) if op in _COPYING else None
                report = aio.run(
                    operate(
                        catalog,
                        name,
                        host_name,
                        acting,
                        dry_run=dry_run,
                        at_ns=at,
                        margin_s=None if margin is None else margin / 1000,
                        progress=_progress(bars, extra.get("wait"), as_json)
                        if bars is not None
                        else None,
                        wait=op is not PairOp.SUSPEND or extra.get("wait") is not False,
                        on_armed=None if as_json else _say_armed,
                        force=bool(extra.get("force")),
                    )
                )
        if acting is PairOp.SUSPEND_CANCEL:
            _report_cancel(report, as_json)
            return
        _report(report, as_json, expected)

    if op.name.lower() in _CONSEQUENCES:
        command = _yes_option(command)

    if op in _COPYING:
        command = _wait_option(command)

    if op is PairOp.RECOVER:
        command = click.option(
            "--force",
            is_flag=True,
            help="Async consistency group: recover even if a secondary controller of the "
            "group cannot be reached (the group is then NOT consistent).",
        )(command)

    if op is PairOp.SUSPEND:
        command = click.option(
            "--at",
            help=(
                "Suspend time: ISO date and time, a time of day today (14:05:00.250), "
                "or ns since the epoch."
            ),
        )(command)
        command = click.option(
            "--in", "within", help="Suspend this long from now, e.g. 50ms, 2s, 15m or 3h."
        )(command)
        command = click.option(
            "--margin-ms", type=float, help="Least time from now to T when choosing it."
        )(command)
        command = click.option(
            "--wait/--no-wait",
            default=None,
            help="Wait for T and report 'consistent at T' (default); --no-wait returns once "
            "the suspend is armed on every controller.",
        )(command)
        command = click.option(
            "--cancel",
            is_flag=True,
            help="Disarm the group's armed suspend before its T (nothing else may be given).",
        )(command)
    return command


def _say_cut(cut: dict[str, Any]) -> None:
    """An async consistency group's recover: where its secondaries stand."""
    from remcopy.cli.output import say

    at_ns = int(cut["consistency_ns"])
    line = (
        f"recovered consistent at C={at_ns} "
        f"({datetime.fromtimestamp(at_ns / 1e9).isoformat()}); RPO (loss to C) "
        f"{cut['rpo_s']} s; {cut['updates_not_applied']} updates after C not applied "
        "(their tracks are recorded: a failback copies them back)"
    )
    if not cut["consistent"]:
        line = (
            f"NOT consistent: secondary controller(s) {', '.join(cut['unreachable']) or '?'} "
            f"not reached (--force); the others at C={at_ns}; RPO {cut['rpo_s']} s; "
            f"{cut['updates_not_applied']} updates after C not applied"
        )
    say(line)


def _check_cancel(dry_run: bool, extra: dict[str, Any]) -> None:
    """--cancel takes no time and no other suspend option."""
    given = [
        flag
        for flag, value in (
            ("--at", extra.get("at")),
            ("--in", extra.get("within")),
            ("--margin-ms", extra.get("margin_ms")),
            ("--dry-run", True if dry_run else None),
            ("--wait/--no-wait", extra.get("wait")),
        )
        if value is not None
    ]
    if given:
        raise InputError(
            f"suspend --cancel: {', '.join(given)} cannot be given with --cancel: it disarms "
            "whatever suspend is armed on the group's pairs, with no other option"
        )


def _when(at_ns: int) -> str:
    return f"T={at_ns} ({datetime.fromtimestamp(at_ns / 1e9).isoformat()})"


def _say_armed(report: GroupReport) -> None:
    """A scheduled suspend is armed everywhere: say so before the wait for T."""
    from remcopy.cli.output import stderr

    wait_s = max(0.0, (report.at_ns - time.time_ns()) / 1e9)
    stderr.print(
        f"armed at {_when(report.at_ns)} on {len(report.armed_controllers())} controllers; "
        "waiting "
        f"{wait_s:.1f} s for T (Ctrl-C leaves it armed: `--cancel` disarms it)",
        markup=False,
        highlight=False,
    )


def _report_cancel(report: GroupReport, as_json: bool) -> None:
    from remcopy.cli.output import emit_json, say, table

    if as_json:
        emit_json(report.to_json())
    else:
        say(
            f"group {report.group}: suspend at {_when(report.at_ns)} cancelled: "
            f"{report.disarmed} pairs disarmed on {len(report.requests)} controllers"
        )
        others = [p for p in report.pairs if not p.ok or p.code]
        if others:
            table(
                "pairs not disarmed",
                ["pair", "state", "why"],
                [(p.pair.name, p.state.name, p.message) for p in others[:_PAIR_ROWS_MAX]],
            )
    if report.failed:
        raise GroupOperationFailed(
            f"group {report.group}: suspend --cancel: {len(report.failed)} pairs not disarmed"
        )


for _op, _expected, _doc in (
    (
        PairOp.ESTABLISH,
        "PENDING or DUPLEX",
        "Establish every pair of group NAME.\n\n"
        "\b\nExample:\n  remcopy group establish PAYROLL --host hosta",
    ),
    (
        PairOp.SUSPEND,
        "SUSPENDED at T",
        "Suspend every pair of group NAME at one prospective "
        "time T; reports 'consistent at T'. T may be hours ahead: the suspend is armed on "
        "every controller at once, then waited for (--no-wait: return once armed; --cancel: "
        "disarm before T).\n\n\b\nExample:\n  remcopy group suspend PAYROLL "
        "--host hosta --in 50ms\n  remcopy group suspend PAYROLL --host hosta --at 02:00 "
        "--no-wait\n  remcopy group suspend PAYROLL --host hosta --cancel",
    ),
    (
        PairOp.RESUME,
        "resumed",
        "Resume every pair: copy only the changed tracks.\n\n\b\n"
        "Example:\n  remcopy group resume PAYROLL --host hosta",
    ),
    (
        PairOp.RECOVER,
        "RECOVERED",
        "Take the secondaries over (disaster): writable at the "
        "secondary site. Asks first on a terminal; --yes otherwise.\n\n\b\nExample:\n"
        "  remcopy group recover PAYROLL --host hostb",
    ),
    (
        PairOp.FAILBACK,
        "failed back",
        "Reverse the pairs and copy back what changed on either "
        "side. Asks first on a terminal; --yes otherwise.\n\n\b\nExample:\n"
        "  remcopy group failback PAYROLL --host hostb",
    ),
    (
        PairOp.TERMINATE,
        "SIMPLEX",
        "End every pair of group NAME (both sides SIMPLEX). Asks first on a terminal; --yes "
        "otherwise.\n\n\b\nExample:\n  remcopy group terminate PAYROLL --host hosta\n"
        "  remcopy group terminate PAYROLL --host hosta --yes   # in a script",
    ),
):
    group.add_command(_op_command(_op, _expected, _doc))


@group.command("return-home")
@click.argument("name")
@click.option(
    "--host",
    "host_name",
    required=True,
    help="Act as this host (it must reach both sites' controllers).",
)
@_wait_option
@_yes_option
@catalog_option
@json_option
def group_return_home(
    name: str, host_name: str, wait: bool | None, yes: bool, catalog_location: str, as_json: bool
) -> None:
    """Give the primary role back to group NAME's defined primaries after a failback.

    A planned switch: stop host writes at the current primaries (the defined secondaries)
    first. The defined primaries are recovered and fail back: they become the primaries
    again, copy to the defined secondaries what changed on either side, and the catalog
    records the group as defined. Pairs already home count as done: running it again, or
    on a group never failed back, changes nothing and exits 0. Asks first on a terminal;
    --yes otherwise.

    \b
    Example:
      remcopy group return-home PAYROLL --host hosta
    """
    from remcopy import aio
    from remcopy.cli.common import CopyProgress, open_catalog
    from remcopy.groups.service import return_home

    ask = _must_ask("return-home", name, yes=yes, dry_run=False)
    with open_catalog(catalog_location) as catalog:
        if ask:
            _confirm(catalog, "return-home", name, host_name)
        with CopyProgress() as bars:
            report = aio.run(
                return_home(catalog, name, host_name, progress=_progress(bars, wait, as_json))
            )
    _report(report, as_json, "home")
