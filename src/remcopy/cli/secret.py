# `remcopy secret new`: a shared secret with enough randomness, in a private file.
from __future__ import annotations

from pathlib import Path

import click

from remcopy import secretfiles
from remcopy.cli.output import emit_json, say
from remcopy.errors import files_named_by_the_user


@click.group(name="secret")
def secret_group() -> None:
    """Make shared secrets (>= 128 random bits) in 0600 files that configs name."""


@secret_group.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The secret file to write (created 0600).",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def new(out: Path, force: bool, as_json: bool) -> None:
    """Write a fresh random secret (256 bits as 64 hex digits) to a 0600 file.

    \b
    Example:
      remcopy secret new --out site-a/hosta.secret
    """
    with files_named_by_the_user("--out"):
        path = secretfiles.new(out, force=force)
    if as_json:
        emit_json({"schema": 1, "file": str(path), "bits": secretfiles.SECRET_BYTES * 8})
        return
    say(f"secret {path} ({secretfiles.SECRET_BYTES * 8} random bits, mode 0600)")
