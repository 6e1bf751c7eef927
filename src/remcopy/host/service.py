# Host-side services over the catalog: define hosts, scan them, read their maps.
#
# Why: the CLI and the TUI hold no logic (STYLE.md section 8); both call these functions.
# Each one reads or writes the catalog in one transaction, so a failed scan stores nothing.
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from remcopy.catalog import Catalog, Host, MapEntry
from remcopy.catalog import ScanFailure as StoredFailure
from remcopy.catalog.errors import CatalogInputError
from remcopy.host.definition import (
    HostDefinition,
    load_host_definition,
    parse_host_definition,
)
from remcopy.host.engine import EngineLimits
from remcopy.host.scan import Progress, ScanResult, scan
from remcopy.host.session import HostSession


def add_host(catalog: Catalog, path: Path, *, replace: bool = False) -> Host:
    """Check a host definition file whole and store it (nothing is stored if it is bad)."""
    definition = load_host_definition(path)
    return catalog.put_host(definition.name, definition.to_document(), replace=replace)


def host_definition(catalog: Catalog, name: str) -> HostDefinition:
    host = catalog.host_one(name)
    section = host.definition.get("host")
    if isinstance(section, dict) and "secret_file" not in section and "secret" not in section:
        raise CatalogInputError(
            f"catalog: host {name} has no secret_file: its secret was stored in plaintext and "
            "removed (catalog migration 0004): put it in a 0600 file (`remcopy secret new "
            'FILE`), name it in the host file (secret_file = "FILE") and add the host again '
            "with `remcopy host add FILE --replace`"
        )
    return parse_host_definition(dict(host.definition), source=f"catalog host {name}")


async def scan_host(
    catalog: Catalog,
    name: str,
    *,
    numbers: Iterable[int] | None = None,
    partial: bool = False,
    batch: bool = True,
    limits: EngineLimits | None = None,
    progress: Progress | None = None,
) -> tuple[ScanResult, int | None]:
    """Scan a host's devices and store the map; with failures nothing is stored unless
    `partial`. Returns the result and the stored scan id (None when not stored)."""
    definition = host_definition(catalog, name)
    async with HostSession(definition, limits=limits) as session:
        result = await scan(session, numbers=numbers, batch=batch, progress=progress)
    if result.failures and not partial:
        return result, None
    entries = [
        MapEntry(
            device_number=d.device_number,
            hardware_address=str(d.address),
            volser=d.volser,
            capacity_bytes=d.capacity_bytes,
            state=d.state,
            role=d.role,
            online=d.online,
            controller=d.controller,
        )
        for d in result.devices
    ]
    failures = [
        StoredFailure(device_number=f.device_number, reason=f.reason) for f in result.failures
    ]
    scan_id = catalog.store_scan(
        name,
        scanned_at_ns=result.scanned_at_ns,
        entries=entries,
        failures=failures,
        partial=bool(result.failures),
    )
    return result, scan_id
