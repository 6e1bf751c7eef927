# `remcopy pki ...`: a site CA and the certificates of its hosts and controllers (remcopy.pki).
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from remcopy import pki
from remcopy.cli.output import emit_json, say
from remcopy.errors import files_named_by_the_user


@click.group(name="pki")
def pki_group() -> None:
    """Make a site CA and certificates for hosts and controllers (TLS on every link)."""


F = TypeVar("F", bound=Callable[..., Any])


def _folder(help_text: str) -> Callable[[F], F]:
    """The --dir option: the pki folder."""
    return click.option(
        "--dir",
        "folder",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help_text,
    )


@pki_group.command()
@_folder("Folder for ca.pem and ca.key (created 0700).")
@click.option("--days", default=pki.CA_DAYS_DEFAULT, show_default=True, help="CA validity.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing CA (every certificate it signed stops being trusted).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def init(folder: Path, days: int, force: bool, as_json: bool) -> None:
    """Make a site CA: ca.pem (give it to every controller and host) and ca.key (0600).

    \b
    Example:
      remcopy pki init --dir site-pki
    """
    with files_named_by_the_user("--dir"):
        files = pki.init(folder, days=days, force=force)
    _report(files, as_json)


@pki_group.command()
@_folder("The CA's folder (from `remcopy pki init`).")
@click.option("--name", required=True, help="The host's or controller's name, as configs spell it.")
@click.option(
    "--kind",
    type=click.Choice(pki.KINDS),
    default="host",
    show_default=True,
    help="host: a TLS client only; controller: server and client (serves hosts, dials peers).",
)
@click.option("--days", default=pki.CERT_DAYS_DEFAULT, show_default=True, help="Validity.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for NAME.pem and NAME.key (default: the CA's folder).",
)
@click.option("--force", is_flag=True, help="Replace NAME's existing certificate and key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def issue(
    folder: Path,
    name: str,
    kind: pki.Kind,
    days: int,
    out: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Issue a certificate and key (0600) for host or controller NAME, signed by the site CA.

    \b
    Example:
      remcopy pki issue --dir site-pki --name cntl1 --kind controller
      remcopy pki issue --dir site-pki --name hosta
    """
    with files_named_by_the_user("--dir/--out"):
        files = pki.issue(folder, name, kind=kind, days=days, out=out, force=force)
    _report(files, as_json)


@pki_group.command()
@click.argument("cert", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def show(cert: Path, as_json: bool) -> None:
    """Show a certificate's name, kind, issuer and validity.

    \b
    Example:
      remcopy pki show site-pki/hosta.pem
    """
    info = pki.describe(cert)
    if as_json:
        emit_json({"schema": 1, **info})
        return
    for key, value in info.items():
        say(f"{key}: {value}")


def _report(files: pki.Issued, as_json: bool) -> None:
    if as_json:
        emit_json({"schema": 1, "cert": str(files.cert), "key": str(files.key)})
        return
    say(f"certificate {files.cert}")
    say(f"key         {files.key} (0600: keep it private)")
