# `remcopy log`: the operation log from the catalog, for an administrator or an auditor.
#
# Every group operation run through the CLI, the TUI or the demo is logged in the catalog with
# who ran it, what, on which target, when, how long it took, how it ended and its report (T,
# consistency, per-controller seal figures). This command reads it back, newest first.
from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from remcopy.cli.common import catalog_option, json_option


@click.command("log")
@click.option("--group", "target", default=None, help="Only operations on this group.")
@click.option("--op", default=None, help="Only this operation, e.g. 'group suspend'.")
@click.option(
    "--since",
    default=None,
    help="Only operations started at or after this: an age (30m, 2h) or a time (ISO).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=100_000),
    default=50,
    show_default=True,
    help="At most this many operations (the newest).",
)
@catalog_option
@json_option
def log(
    target: str | None,
    op: str | None,
    since: str | None,
    limit: int,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Show the operation log: who ran what on which target, when, and how it ended.

    Newest first; for a suspend also T and whether the group was consistent at T; --json
    adds each operation's counts.

    \b
    Example:
      remcopy log --group PAYROLL --since 2h
    """
    from remcopy.cli.common import open_catalog
    from remcopy.cli.output import emit_json, say, table
    from remcopy.groups.when import parse_since

    since_ns = parse_since(since) if since else 0
    with open_catalog(catalog_location) as catalog:
        found = catalog.operations_all(limit=limit, target=target, op=op)
    rows = [
        _row(o.id, o.who, o.op, o.target, o.started_ns, o.duration_s, o.result, o.details)
        for o in found
        if o.started_ns >= since_ns
    ]
    if as_json:
        emit_json({"operations": rows})
        return
    if not rows:
        say("no operation logged" + (" matches" if target or op or since else ""))
        return
    table(
        "operation log (newest first)",
        ["when", "operation", "target", "seconds", "result"],
        [
            [
                r["started"].replace("T", " "),
                r["op"],
                r["target"],
                f"{r['duration_s']:.3f}",
                r["result"] + _outcome(r),
            ]
            for r in rows
        ],
    )


def _row(
    number: int,
    who: str,
    op: str,
    target: str,
    started_ns: int,
    duration_s: float,
    result: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """One operation as the log shows it; T and consistency only for operations that have
    them (a suspend)."""
    at_ns = int(details.get("at_ns") or 0)
    return {
        "id": number,
        "who": who,
        "op": op,
        "target": target,
        "started_ns": started_ns,
        "started": datetime.fromtimestamp(started_ns / 1e9).isoformat(timespec="milliseconds"),
        "duration_s": round(duration_s, 6),
        "result": result,
        "pairs": details.get("pairs"),
        "failed": details.get("failed"),
        "at_ns": at_ns or None,
        "at": datetime.fromtimestamp(at_ns / 1e9).isoformat(timespec="milliseconds")
        if at_ns
        else None,
        "consistent": details.get("consistent") if op == "group suspend" else None,
        "armed": bool(details.get("armed")),
    }


def _outcome(row: dict[str, Any]) -> str:
    """What a suspend ended as, for the table: consistent at T, or only armed for T."""
    if row["consistent"] is None or not row["at"]:
        return ""
    at = row["at"].split("T")[1]
    if row["armed"]:
        return f": armed for {at}"
    return f": {'consistent' if row['consistent'] else 'NOT consistent'} at {at}"
