# `remcopy group pairs` (and `group status --pairs`): the per-pair view, a row per pair like
# Hitachi's `pairdisplay -fcx`, once, as JSON, or redrawn in place on a terminal (--watch).
#
# Imported by the command that uses it (cli/group.py), so `remcopy group --help` stays fast.
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group as Renderables
from rich.table import Table
from rich.text import Text

from remcopy.errors import InputError
from remcopy.ids import device_number_text

if TYPE_CHECKING:
    from remcopy.groups.pairview import PairEnd, PairRow

COLUMNS = (
    "pair",
    "P-dev",
    "P-address",
    "P-state",
    "S-dev",
    "S-address",
    "S-state",
    "answered",
    "mode",
    "fence",
    "lag bytes",
    "lag s",
    "P-journal",
    "S-journal",
    "consistent at",
    "RPO s",
    "changed",
    "copy %",
    "last change",
)
DASH = "-"


def refuse_watch(*, as_json: bool, terminal: bool) -> None:
    """--watch redraws a table on a terminal: refused (exit 2) with --json or without one."""
    if as_json:
        raise InputError(
            "group pairs --watch: cannot be combined with --json (one JSON document is printed "
            "once): drop --watch, or --json to watch the table"
        )
    if not terminal:
        raise InputError(
            "group pairs --watch: stdout is not a terminal (--watch redraws the table in place): "
            "run it on a terminal, or without --watch (add --json for scripts)"
        )


def _time(at_ns: int | None) -> str:
    if not at_ns:
        return DASH
    return datetime.fromtimestamp(at_ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return DASH
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _dev(end: PairEnd) -> str:
    return DASH if end.number is None else device_number_text(end.number)


def row_cells(row: PairRow) -> list[str]:
    """One row of the table, in COLUMNS' order."""
    doc = row.to_json()
    change = doc["last_change"]
    last = DASH
    if change is not None and (change["at_ns"] or change["cause"]):
        last = f"{_time(change['at_ns'])} {change['cause'] or '?'}"
    return [
        row.pair.name,
        _dev(row.primary),
        str(row.primary.address),
        row.primary.state_name,
        _dev(row.secondary),
        str(row.secondary.address),
        row.secondary.state_name,
        row.answered,
        doc["mode"] or DASH,
        doc["fence"] or DASH,
        _num(doc["lag_bytes"]),
        _num(doc["lag_s"]),
        _num(doc["primary"]["journal_bytes"]),
        _num(doc["secondary"]["journal_bytes"]),
        _time(doc["consistency_ns"]),
        _num(doc["rpo_s"]),
        _num(doc["changed_tracks"]),
        _num(doc["copy_percent"], 1),
        last,
    ]


def render(name: str, host: str, rows: list[PairRow]) -> Renderables:
    """The heading line, the table, and why ends could not be read."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in ("P-address", "S-address"))
    for row in rows:
        table.add_row(*row_cells(row))
    read_at = rows[0].read_at_ns if rows else 0
    parts: list[Any] = [
        Text(f"group {name} as {host}: {len(rows)} pairs, read at {_time(read_at)}"),
        table,
    ]
    for row in rows:
        for side, end in (("primary", row.primary), ("secondary", row.secondary)):
            if end.error:
                parts.append(Text(f"  {row.pair.name}: {side} not read: {end.error}"))
    return Renderables(*parts)


def document(name: str, host: str, direction: str, rows: list[PairRow]) -> dict[str, Any]:
    return {
        "group": name,
        "host": host,
        "direction": direction,
        "read_at_ns": rows[0].read_at_ns if rows else None,
        "pairs": [row.to_json() for row in rows],
    }


__all__ = ["COLUMNS", "document", "refuse_watch", "render", "row_cells"]
