# `remcopy host ...`, `remcopy scan`, `remcopy map ...`: hosts, scans and device maps.
#
# The catalog, rich, the event loop and the host services are imported inside the commands
# that use them, so `--help` stays fast (cli/lazy.py).
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from remcopy.cli.common import ControllerProgress, catalog_option, json_option, open_catalog
from remcopy.errors import InvalidIdentifier, RemcopyError
from remcopy.ids import DeviceNumber, HardwareAddress, Volser, device_number_text

if TYPE_CHECKING:
    from remcopy.catalog import MapEntry


class ScanFailed(RemcopyError):
    """some devices did not answer the scan"""


@click.group()
def host() -> None:
    """Define hosts: their device numbers and the paths to their controllers."""


@host.command("add")
@click.argument("definition", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace a host of the same name.")
@catalog_option
@json_option
def host_add(definition: Path, replace: bool, catalog_location: str, as_json: bool) -> None:
    """Check a host DEFINITION file and store it in the catalog (all or nothing).

    The first host of a new catalog creates it (every other command needs an existing one).

    \b
    Example:
      remcopy host add hosts/hosta.toml
    """
    from remcopy.cli.output import emit_json, say
    from remcopy.host.service import add_host, host_definition

    with open_catalog(catalog_location, create=True) as catalog:
        stored = add_host(catalog, definition, replace=replace)
        devices = len(host_definition(catalog, stored.name).devices())
    if as_json:
        emit_json({"host": stored.name, "devices": devices})
    else:
        say(f"host {stored.name}: {devices} device numbers stored")


@host.command("list")
@catalog_option
@json_option
def host_list(catalog_location: str, as_json: bool) -> None:
    """List the hosts in the catalog.

    \b
    Example:
      remcopy host list --json
    """
    from remcopy.cli.output import emit_json, table
    from remcopy.host.service import host_definition

    with open_catalog(catalog_location) as catalog:
        rows: list[dict[str, Any]] = []
        for stored in catalog.hosts_all():
            definition = host_definition(catalog, stored.name)
            scans = catalog.scans_all(stored.name)
            rows.append(
                {
                    "host": stored.name,
                    "devices": len(definition.devices()),
                    "controllers": [c.name for c in definition.controllers],
                    "last_scan_ns": scans[0].scanned_at_ns if scans else None,
                }
            )
    if as_json:
        emit_json(rows)
        return
    table(
        None,
        ["host", "devices", "controllers", "scanned"],
        [
            (
                r["host"],
                r["devices"],
                ",".join(r["controllers"]),
                "yes" if r["last_scan_ns"] else "never",
            )
            for r in rows
        ],
    )


@host.command("show")
@click.argument("name")
@catalog_option
@json_option
def host_show(name: str, catalog_location: str, as_json: bool) -> None:
    """Show a host's definition: controllers and device-number paths.

    \b
    Example:
      remcopy host show hosta
    """
    from remcopy.cli.output import emit_json, table
    from remcopy.host.service import host_definition

    with open_catalog(catalog_location) as catalog:
        definition = host_definition(catalog, name)
    if as_json:
        doc = definition.to_document()
        doc["host"].pop("secret", None)
        emit_json(doc)
        return
    table(
        f"host {name}",
        ["devices", "controller", "ssid", "lss", "cca", "online"],
        [
            (
                f"{device_number_text(p.devices[0])}-{device_number_text(p.devices[1])}",
                p.controller,
                f"{p.ssid:04X}",
                f"{p.lss:02X}",
                f"{p.cca:02X}",
                "yes" if p.online else "no",
            )
            for p in definition.paths
        ],
    )


def _range(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [n.value for n in DeviceNumber.range_parse(text)]


@click.command()
@click.argument("name")
@click.option("--range", "device_range", help="Device numbers to scan, e.g. 1A00-1AFF.")
@click.option("--partial", is_flag=True, help="Store the map even if some devices failed.")
@click.option(
    "--serial", is_flag=True, help="One device per request, one at a time (slow, for comparison)."
)
@catalog_option
@json_option
def scan(
    name: str,
    device_range: str | None,
    partial: bool,
    serial: bool,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Scan host NAME's devices through its controllers and store its device map.

    Devices that do not answer are listed with the reason; then nothing is stored (exit 1)
    unless --partial.

    \b
    Example:
      remcopy scan hosta --range 1A00-1AFF
    """
    from remcopy import aio
    from remcopy.cli.output import emit_json, say, table
    from remcopy.host.engine import EngineLimits
    from remcopy.host.service import scan_host

    numbers = _range(device_range)
    limits = EngineLimits(in_flight_max=1, per_controller_max=1) if serial else None
    with open_catalog(catalog_location) as catalog, ControllerProgress() as bars:
        result, scan_id = aio.run(
            scan_host(
                catalog,
                name,
                numbers=numbers,
                partial=partial,
                batch=not serial,
                limits=limits,
                progress=bars.update,
            )
        )
    doc = {
        "host": name,
        "devices": len(result.devices),
        "failures": [
            {"device": f.device_number, "controller": f.controller, "reason": f.reason}
            for f in result.failures
        ],
        "stored": scan_id is not None,
        "scan_id": scan_id,
        "elapsed_s": round(result.elapsed_s, 6),
        "requests": result.requests,
    }
    if as_json:
        emit_json(doc)
    else:
        say(
            f"scan {name}: {len(result.devices)} devices mapped, {len(result.failures)} "
            f"failed, {result.requests} requests, {result.elapsed_s:.3f} s; "
            + ("map stored" if scan_id is not None else "nothing stored")
        )
        if result.failures:
            table(
                "failed devices",
                ["device", "controller", "reason"],
                [(f.device_number, f.controller, f.reason) for f in result.failures[:50]],
            )
    if result.failures:
        raise ScanFailed(
            f"scan {name}: {len(result.failures)} devices did not answer"
            + ("" if partial else ": nothing stored (use --partial to store the rest)")
        )


@click.group("map")
def map_group() -> None:
    """Read device maps: show, diff against the previous scan, check across hosts."""


def _entry_json(entry: MapEntry) -> dict[str, object]:
    return {
        "device": entry.device_number,
        "address": entry.hardware_address,
        "volser": entry.volser,
        "capacity_bytes": entry.capacity_bytes,
        "state": entry.state,
        "role": entry.role,
        "online": entry.online,
        "controller": entry.controller,
    }


@map_group.command("show")
@click.argument("name")
@click.option("--volser", help="Only this volser.")
@click.option("--device", help="Only this device number.")
@click.option("--address", help="Only this hardware address.")
@catalog_option
@json_option
def map_show(
    name: str,
    volser: str | None,
    device: str | None,
    address: str | None,
    catalog_location: str,
    as_json: bool,
) -> None:
    """Show host NAME's device map (device number, hardware address, volser, state).

    \b
    Example:
      remcopy map show hosta --volser PAY001
    """
    from remcopy.cli.output import emit_json, table

    try:
        v = str(Volser.parse(volser)) if volser else None
        d = str(DeviceNumber.parse(device)) if device else None
        a = str(HardwareAddress.parse(address)) if address else None
    except InvalidIdentifier as exc:
        raise InvalidIdentifier(f"map show: {exc}") from None
    with open_catalog(catalog_location) as catalog:
        if v or d or a:
            entries = catalog.map_find_all(name, volser=v, device=d, address=a)
        else:
            entries = catalog.map_all(name)
    if as_json:
        emit_json([_entry_json(e) for e in entries])
        return
    table(
        f"device map of {name}",
        ["device", "address", "volser", "state", "role", "online"],
        [
            (
                e.device_number,
                e.hardware_address,
                e.volser,
                e.state,
                e.role,
                "yes" if e.online else "no",
            )
            for e in entries
        ],
    )


@map_group.command("diff")
@click.argument("name")
@catalog_option
@json_option
def map_diff(name: str, catalog_location: str, as_json: bool) -> None:
    """What changed in host NAME's map since the scan before the last.

    \b
    Example:
      remcopy map diff hosta
    """
    from remcopy.cli.output import emit_json, say, table

    with open_catalog(catalog_location) as catalog:
        diff = catalog.map_diff(name)
    rows: list[tuple[str, str, str, str]] = []
    rows += [("new", e.device_number, "", f"{e.hardware_address} {e.volser}") for e in diff.new]
    rows += [("gone", e.device_number, f"{e.hardware_address} {e.volser}", "") for e in diff.gone]
    rows += [("volser", c.device_number, c.old, c.new) for c in diff.volser_changed]
    rows += [("address", c.device_number, c.old, c.new) for c in diff.address_changed]
    if as_json:
        emit_json([{"change": k, "device": d, "old": o, "new": n} for k, d, o, n in rows])
        return
    if not rows:
        say(f"map of {name}: no changes since the previous scan")
        return
    table(f"changes in the map of {name}", ["change", "device", "old", "new"], rows)


@map_group.command("check")
@catalog_option
@json_option
def map_check(catalog_location: str, as_json: bool) -> None:
    """Check every host's map against the others: what no single host can see.

    Exit code 1 when there are conflicts.

    \b
    Example:
      remcopy map check
    """
    from remcopy.cli.output import emit_json, say, table

    with open_catalog(catalog_location) as catalog:
        conflicts = catalog.map_check_all()
    if as_json:
        emit_json([{"kind": str(c.kind), "message": c.message} for c in conflicts])
    elif conflicts:
        table("map conflicts", ["kind", "what"], [(str(c.kind), c.message) for c in conflicts])
    else:
        say("maps agree: no conflicts")
    if conflicts:
        raise ScanFailed(f"map check: {len(conflicts)} conflicts")
