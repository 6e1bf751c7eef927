# Group services over the catalog and a host's session: define, load, operate, report.
#
# Why: the CLI and the TUI call these; they hold the sequence (read the catalog, act through
# one host's paths, log the operation with its timing and result) so both front ends behave
# the same, and every operation is in the operation log for an auditor.
from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from remcopy.catalog import Catalog, GroupMapRow, Pair
from remcopy.groups.asyncstatus import AsyncTotals, async_totals
from remcopy.groups.definition import (
    GroupDefinition,
    MapIndex,
    PairKey,
    definition_document,
    load_group_definition,
    resolve,
)
from remcopy.groups.load import lookup, unseen
from remcopy.groups.model import Group, GroupOptions, GroupPair, group_pair
from remcopy.groups.operations import (
    ArmedCallback,
    GroupReport,
    PairStatus,
    cancel,
    recover,
    run_operation,
    shadow,
    status,
    suspend,
    swap_home,
)
from remcopy.groups.pairview import PairRow, pair_rows
from remcopy.groups.progress import ProgressCallback, copies_started, follow_copies
from remcopy.host.engine import EngineLimits
from remcopy.host.service import host_definition
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress, device_number_text
from remcopy.states import CopyMode, FencePolicy
from remcopy.wire.native import PairOp


def map_index(catalog: Catalog) -> MapIndex:
    return MapIndex({host.name: catalog.map_all(host.name) for host in catalog.hosts_all()})


def _taken(catalog: Catalog) -> dict[str, str]:
    """Every address already in a group, and which group (a group's own pairs count as its
    own, so re-storing a group does not refuse its pairs)."""
    out = {}
    for group in catalog.groups_all():
        for pair in catalog.pairs_all(group.name):
            out[pair.primary_address] = group.name
            out[pair.secondary_address] = group.name
    return out


def define_group(catalog: Catalog, path: Path, *, replace: bool = False) -> int:
    """Resolve a definition through every host's map and store it whole; returns pairs."""
    definition = load_group_definition(path)
    pairs = resolve(definition, map_index(catalog), taken=_taken(catalog))
    catalog.put_group(
        definition.name,
        definition_document(definition),
        [
            Pair(
                primary_address=str(p.primary),
                secondary_address=str(p.secondary),
                volser=p.volser,
                mode=definition.options.mode.value,
            )
            for p in pairs
        ],
        replace=replace,
    )
    return len(pairs)


def options_from(document: dict[str, Any]) -> GroupOptions:
    return GroupOptions(
        mode=CopyMode(document.get("mode", "sync")),
        consistency_group=bool(document.get("consistency_group", True)),
        fence=FencePolicy(document.get("fence", "never")),
        margin_s=float(document.get("margin_s", 0.05)),
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building many small acyclic objects.

    A 10,000-pair group load makes ~100,000 objects (rows, records, addresses, pairs) that
    all stay alive; every 700 allocations the collector ran and walked the ever older ones
    again, which doubled the load (bench/cli.py: 0.5 s -> 0.2 s on SQLite). Nothing built
    here forms a cycle, so pausing frees nothing late; reference counting still frees the
    rest at once."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def group_for_host(catalog: Catalog, name: str, host: str, *, as_defined: bool = False) -> Group:
    """The group's pairs as `host` reaches them (its device numbers and controllers), in
    the direction the catalog records: after a failback each pair's primary is the defined
    secondary (`as_defined`: as the definition has them, whatever the direction)."""
    stored = catalog.group_one(name)
    with _gc_paused():
        rows = catalog.pairs_as_seen(name, host)
        primaries = HardwareAddress.parse_many([row[0] for row in rows])
        secondaries = HardwareAddress.parse_many([row[1] for row in rows])
        pairs = tuple(
            group_pair(
                volser or "",
                primary,
                secondary,
                primary_controller or "",
                secondary_controller or "",
                None if primary_number is None else int(primary_number, 16),
                None if secondary_number is None else int(secondary_number, 16),
            )
            for primary, secondary, (
                _,
                _,
                volser,
                primary_controller,
                primary_number,
                secondary_controller,
                secondary_number,
            ) in zip(primaries, secondaries, rows, strict=True)
        )
    group = Group(name=name, options=options_from(dict(stored.options)), pairs=pairs)
    return group.reversed() if stored.reversed and not as_defined else group


def load_group(catalog: Catalog, name: str, host: str) -> tuple[Group, list[str]]:
    """Build and store the group map for a host; returns it (in the group's current
    direction) and what the host cannot see. The stored rows are keyed by the defined pairs."""
    group = group_for_host(catalog, name, host, as_defined=True)
    rows = [
        GroupMapRow(
            primary_address=str(p.primary),
            secondary_address=str(p.secondary),
            volser=p.volser or None,
            primary_device=_hex(p.primary_number),
            secondary_device=_hex(p.secondary_number),
        )
        for p in group.pairs
    ]
    catalog.store_group_map(name, host, rows, loaded_at_ns=time.time_ns())
    if catalog.group_one(name).reversed:
        group = group.reversed()
    return group, unseen(group.pairs)


def _hex(number: int | None) -> str | None:
    return None if number is None else device_number_text(number)


async def operate(
    catalog: Catalog,
    name: str,
    host: str,
    op: PairOp,
    *,
    who: str = "remcopy",
    dry_run: bool = False,
    at_ns: int | None = None,
    margin_s: float | None = None,
    limits: EngineLimits | None = None,
    pairs: Sequence[GroupPair] | None = None,
    progress: ProgressCallback | None = None,
    wait: bool = True,
    on_armed: ArmedCallback | None = None,
    force: bool = False,
) -> GroupReport:
    """Run one group operation as `host` and record it in the operation log.

    A suspend with T far ahead is armed, then waited for (`on_armed` is called in between);
    wait=False returns once armed. SUSPEND_CANCEL disarms the group's armed suspend.
    Operations act on the pairs in the direction the catalog records, except failback: it
    always makes the defined secondaries the primaries (sent to them: they must be
    RECOVERED), and once every pair is failed back the catalog records the group as
    reversed. `return_home` gives the primary role back.

    With `progress`, an operation that starts copies (establish, resume, failback) also
    waits until every copy it started is done, calling `progress` with an
    `OperationProgress` after each round of status queries (see groups/progress.py)."""
    group = group_for_host(catalog, name, host, as_defined=op is PairOp.FAILBACK)
    if pairs is not None:
        group = Group(
            name=group.name,
            options=group.options,
            pairs=tuple(pairs),
            is_reversed=group.is_reversed,
        )
    started_ns = time.time_ns()
    async with HostSession(host_definition(catalog, host), limits=limits) as session:
        if op is PairOp.SUSPEND:
            report = await suspend(
                session,
                group,
                at_ns=at_ns,
                margin_s=margin_s,
                dry_run=dry_run,
                wait=wait,
                on_armed=on_armed,
            )
        elif op is PairOp.SUSPEND_CANCEL:
            report = await cancel(session, group)
        elif op is PairOp.RECOVER and not dry_run:
            report = await recover(session, group, force=force)
        else:
            report = await run_operation(session, group, op, dry_run=dry_run)
        if progress is not None and copies_started(report):
            await follow_copies(session, report, progress)
    if not dry_run:
        if op is PairOp.FAILBACK and pairs is None and report.pairs and not report.failed:
            catalog.set_group_direction(name, reversed=True)
        _log(catalog, who, name, started_ns, report)
    return report


def _log(catalog: Catalog, who: str, name: str, started_ns: int, report: GroupReport) -> None:
    catalog.log_operation(
        who=who,
        op=f"group {report.op}",
        target=name,
        started_ns=started_ns,
        duration_s=report.elapsed_s,
        result="failed" if report.failed else "ok",
        details=report.to_json(),
    )


async def return_home(
    catalog: Catalog,
    name: str,
    host: str,
    *,
    who: str = "remcopy",
    limits: EngineLimits | None = None,
    progress: ProgressCallback | None = None,
) -> GroupReport:
    """Give the primary role back to the defined primaries, as `host` (it must reach them):
    recover them (they are the secondaries after a failback), then fail back to them, so
    they copy to the defined secondaries again. Pairs already home count as done; once
    every pair is home the catalog records the group as defined. Stop host writes to the
    current primaries first: a planned switch, not a disaster (see docs/groups.md).

    With `progress`, also waits until every copy back to the defined secondaries is done."""
    group = group_for_host(catalog, name, host, as_defined=True).reversed()
    started_ns = time.time_ns()
    async with HostSession(host_definition(catalog, host), limits=limits) as session:
        report = await swap_home(session, group)
        if progress is not None and copies_started(report):
            await follow_copies(session, report, progress)
    report.op = "return-home"
    if report.pairs and not report.failed:
        catalog.set_group_direction(name, reversed=False)
    _log(catalog, who, name, started_ns, report)
    return report


PairRowsCallback = Callable[[list[PairRow]], None]
"""Called with every reading of a watched group's pairs."""


async def group_pairs(
    catalog: Catalog,
    name: str,
    host: str,
    *,
    watch: PairRowsCallback | None = None,
    interval_s: float = 2.0,
) -> list[PairRow]:
    """Every pair of group `name` with both ends read (groups/pairview.py). With `watch`: read
    again every `interval_s` seconds, passing each reading to `watch`, until cancelled."""
    group = group_for_host(catalog, name, host)
    async with HostSession(host_definition(catalog, host)) as session:
        rows = await pair_rows(session, group)
        while watch is not None:
            watch(rows)
            await asyncio.sleep(interval_s)  # a display's refresh rate, not a synchronisation
            rows = await pair_rows(session, group)
        return rows


async def group_status(
    catalog: Catalog, name: str, host: str, *, reverse: bool = False
) -> list[PairStatus]:
    """Every pair's state, read at its primary in the group's current direction (at its
    secondary when the primary cannot be read); `reverse` reads the other end first."""
    group = group_for_host(catalog, name, host)
    async with HostSession(host_definition(catalog, host)) as session:
        return await status(session, group, first="secondary" if reverse else "primary")


async def group_status_totals(
    catalog: Catalog, name: str, host: str, *, reverse: bool = False
) -> tuple[list[PairStatus], AsyncTotals | None]:
    """group_status, and for the async pairs both ends added up (asyncstatus.py)."""
    group = group_for_host(catalog, name, host)
    async with HostSession(host_definition(catalog, host)) as session:
        statuses = await status(session, group, first="secondary" if reverse else "primary")
        return statuses, await async_totals(session, group, statuses)


def _stored_keys(catalog: Catalog, name: str) -> list[tuple[PairKey, PairKey]]:
    return [
        (
            PairKey(text=p.primary_address, where=f"group {name}"),
            PairKey(text=p.secondary_address, where=f"group {name}"),
        )
        for p in catalog.pairs_all(name)
    ]


def _store(catalog: Catalog, name: str, keys: list[tuple[PairKey, PairKey]]) -> int:
    """Resolve a group's whole new pair list and store it, all or nothing."""
    stored = catalog.group_one(name)
    options = options_from(dict(stored.options))
    definition = GroupDefinition(name=name, options=options, keys=tuple(keys))
    pairs = resolve(definition, map_index(catalog), taken=_taken(catalog))
    catalog.put_group(
        name,
        dict(stored.options),
        [
            Pair(
                primary_address=str(p.primary),
                secondary_address=str(p.secondary),
                volser=p.volser,
                mode=options.mode.value,
            )
            for p in pairs
        ],
        replace=True,
    )
    return len(pairs)


def add_pairs(catalog: Catalog, name: str, pairs: Sequence[tuple[str, str]]) -> int:
    """Add pairs, each side given by any key (volser, HOST:DEVNUM, address); all or nothing.
    Returns the group's new pair count."""
    new = [
        (PairKey(text=a, where=f"--pair {a},{b}"), PairKey(text=b, where=f"--pair {a},{b}"))
        for a, b in pairs
    ]
    return _store(catalog, name, _stored_keys(catalog, name) + new)


def remove_pairs(catalog: Catalog, name: str, host: str, keys: Sequence[str]) -> int:
    """Remove the pairs that keys name (any of the five keys, as `host` sees them)."""
    group = group_for_host(catalog, name, host, as_defined=True)
    doomed = {str(lookup(group.pairs, key).primary) for key in keys}
    kept = [k for k in _stored_keys(catalog, name) if k[0].text not in doomed]
    return _store(catalog, name, kept)


async def shadow_group(
    catalog: Catalog,
    name: str,
    host: str,
    tertiaries: dict[str, HardwareAddress],
    *,
    who: str = "remcopy",
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
) -> GroupReport:
    """Start the shadow copies of a suspended group (secondary -> tertiary), as `host`.
    With `progress`, also wait until every copy is done (as `operate`)."""
    group = group_for_host(catalog, name, host)
    started_ns = time.time_ns()
    async with HostSession(host_definition(catalog, host)) as session:
        report = await shadow(session, group, tertiaries, dry_run=dry_run)
        if progress is not None and copies_started(report):
            await follow_copies(session, report, progress)
    if dry_run:
        return report
    _log(catalog, who, name, started_ns, report)
    return report
