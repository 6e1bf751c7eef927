# `remcopy volume ...`: make and inspect volume files.
from __future__ import annotations

from pathlib import Path

import click

from remcopy.cli.output import emit_json, say
from remcopy.configfile import parse_size
from remcopy.controller.config import load_controller_config
from remcopy.controller.nbd_server import configured_export_uri
from remcopy.controller.volume import TRACK_SIZE_DEFAULT_BYTES, Volume
from remcopy.errors import InputError
from remcopy.ids import Volser


def _size(what: str, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


@click.group()
def volume() -> None:
    """Create and inspect volume files."""


@volume.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--volser", required=True, help="Volume serial: 1-6 of A-Z 0-9 @ # $.")
@click.option("--size", required=True, help="Capacity, e.g. 64MiB (a multiple of the track).")
@click.option(
    "--track-size",
    default=str(TRACK_SIZE_DEFAULT_BYTES),
    show_default=True,
    help="Track size in bytes or with a unit, e.g. 64KiB.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def create(file: Path, volser: str, size: str, track_size: str, as_json: bool) -> None:
    """Create a sparse volume FILE with its label. Refuses to overwrite a file.

    \b
    Example:
      remcopy volume create data/PAY001.vol --volser PAY001 --size 64MiB
    """
    name = Volser.parse(volser)
    capacity = _size("--size", size)
    track = _size("--track-size", track_size)
    if capacity <= 0 or track <= 0 or capacity % track:
        raise InputError(
            f"--size: must be a positive multiple of the track size {track} (got {capacity})"
        )
    vol = Volume.create(file, volser=name, tracks=capacity // track, track_size_bytes=track)
    _report(vol, as_json)
    vol.close()


@volume.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--volser", required=True, help="The new volume serial.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def relabel(file: Path, volser: str, as_json: bool) -> None:
    """Write a new volser into a volume FILE's label (stop its controller first).

    \b
    Example:
      remcopy volume relabel data/PAY001.vol --volser PAY101
    """
    name = Volser.parse(volser)
    vol = Volume.open(file)
    try:
        vol.relabel(name)
        _report(vol, as_json)
    finally:
        vol.close()


@volume.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def info(file: Path, as_json: bool) -> None:
    """Show a volume FILE's label.

    \b
    Example:
      remcopy volume info data/PAY001.vol
    """
    vol = Volume.open(file, read_only=True)
    _report(vol, as_json)
    vol.close()


def _report(vol: Volume, as_json: bool) -> None:
    doc = {
        "file": str(vol.path),
        "volser": str(vol.volser),
        "tracks": vol.tracks,
        "track_size_bytes": vol.track_size_bytes,
        "capacity_bytes": vol.capacity_bytes,
    }
    if as_json:
        emit_json(doc)
    else:
        say(
            f"{vol.path}: volser {vol.volser}, {vol.tracks} tracks of "
            f"{vol.track_size_bytes} bytes ({vol.capacity_bytes} bytes)"
        )


# --- NBD export (docs/nbd.md) ---


@volume.command("export-uri")
@click.argument("volser")
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config file of the controller that holds the volume.",
)
@click.option(
    "--host",
    default=None,
    help="Host name or address clients reach the controller at (default: from nbd_listen).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def export_uri(volser: str, config: Path, host: str | None, as_json: bool) -> None:
    """Print the nbd:// URI under which the controller CONFIG exports volume VOLSER.

    The URI is built from the config's controller.nbd_listen (which must name a fixed port)
    and works with nbdinfo, nbdcopy, qemu-img and qemu-io. The controller need not be running.

    \b
    Example:
      remcopy volume export-uri PAY001 --config site-a/cntl1.toml
      qemu-img info "$(remcopy volume export-uri PAY001 --config site-a/cntl1.toml)"
    """
    cfg = load_controller_config(config)
    uri, (uri_host, port) = configured_export_uri(cfg, volser, source=str(config), host=host)
    if as_json:
        name = str(Volser.parse(volser))
        emit_json({"volser": name, "uri": uri, "host": uri_host, "port": port})
    else:
        say(uri)
