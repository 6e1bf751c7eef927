# Group services over the catalog and a host's session: define, load, operate, report.
#
# Why: the CLI and the TUI call these; they hold the sequence (read the catalog, act through
# one host's paths, log the operation with its timing and result) so both front ends behave
# the same, and every operation is in the operation log for an auditor.
from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from remcopy.catalog import Catalog, GroupMapRow, Pair
from remcopy.groups.definition import (
    GroupDefinition,
    MapIndex,
    PairKey,
    definition_document,
    load_group_definition,
    resolve,
)
from remcopy.groups.load import group_map, lookup, unseen
from remcopy.groups.model import Group, GroupOptions, GroupPair
from remcopy.groups.operations import (
    GroupReport,
    PairStatus,
    run_operation,
    shadow,
    status,
    suspend,
)
from remcopy.groups.progress import ProgressCallback, copies_started, follow_copies
from remcopy.host.engine import EngineLimits
from remcopy.host.service import host_definition
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
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


def group_for_host(catalog: Catalog, name: str, host: str) -> Group:
    """The group's pairs as `host` reaches them (its device numbers and controllers)."""
    stored = catalog.group_one(name)
    from remcopy.groups.definition import ResolvedPair

    with _gc_paused():
        index = MapIndex({host: catalog.map_all(host)})
        resolved = [
            ResolvedPair(
                primary=HardwareAddress.parse(p.primary_address),
                secondary=HardwareAddress.parse(p.secondary_address),
                volser=p.volser or "",
                where=name,
            )
            for p in catalog.pairs_all(name)
        ]
        pairs = tuple(group_map(host, resolved, index))
    return Group(name=name, options=options_from(dict(stored.options)), pairs=pairs)


def load_group(catalog: Catalog, name: str, host: str) -> tuple[Group, list[str]]:
    """Build and store the group map for a host; returns it and what the host cannot see."""
    group = group_for_host(catalog, name, host)
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
    return group, unseen(group.pairs)


def _hex(number: int | None) -> str | None:
    return None if number is None else f"{number:04X}"


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
) -> GroupReport:
    """Run one group operation as `host` and record it in the operation log.

    With `progress`, an operation that starts copies (establish, resume, failback) also
    waits until every copy it started is done, calling `progress` with an
    `OperationProgress` after each round of status queries (see groups/progress.py)."""
    group = group_for_host(catalog, name, host)
    if pairs is not None:
        group = Group(name=group.name, options=group.options, pairs=tuple(pairs))
    started_ns = time.time_ns()
    async with HostSession(host_definition(catalog, host), limits=limits) as session:
        if op is PairOp.SUSPEND:
            report = await suspend(session, group, at_ns=at_ns, margin_s=margin_s, dry_run=dry_run)
        else:
            report = await run_operation(session, group, op, dry_run=dry_run)
        if progress is not None and copies_started(report):
            await follow_copies(session, report, progress)
    if not dry_run:
        catalog.log_operation(
            who=who,
            op=f"group {report.op}",
            target=name,
            started_ns=started_ns,
            duration_s=report.elapsed_s,
            result="failed" if report.failed else "ok",
            details=report.to_json(),
        )
    return report


async def group_status(
    catalog: Catalog, name: str, host: str, *, reverse: bool = False
) -> list[PairStatus]:
    group = group_for_host(catalog, name, host)
    if reverse:
        group = group.reversed()
    async with HostSession(host_definition(catalog, host)) as session:
        return await status(session, group)


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
    group = group_for_host(catalog, name, host)
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
    catalog.log_operation(
        who=who,
        op="group shadow",
        target=name,
        started_ns=started_ns,
        duration_s=report.elapsed_s,
        result="failed" if report.failed else "ok",
        details=report.to_json(),
    )
    return report
