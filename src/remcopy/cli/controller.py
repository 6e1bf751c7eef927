# `remcopy controller ...`: run, check and ask a controller.
from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from remcopy import aio, secretfiles, tls
from remcopy.cli.output import emit_json, say, table
from remcopy.configfile import format_address, parse_address
from remcopy.errors import InputError
from remcopy.host.channel import Channel

CONFIG = click.Path(dir_okay=False, path_type=Path)


@click.group()
def controller() -> None:
    """Run a storage controller, check its config, or ask one for its status."""


@controller.command()
@click.argument("config", type=CONFIG)
def serve(config: Path) -> None:
    """Serve the controller a CONFIG file describes, until SIGTERM or Ctrl-C.

    Prints one line when ready. Exit code 2 with every problem named if the config is bad,
    the port is busy or a volume file cannot be opened.

    \b
    Example:
      remcopy controller serve site-a/cntl1.toml
    """
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)  # a daemon logs its state changes
    from remcopy import logformat
    from remcopy.controller.core import Controller  # the daemon's code: only for `serve`
    from remcopy.controller.server import run_controller

    ctl = Controller.from_config_file(config)
    logformat.use(ctl.config.controller.log_format)
    aio.run(run_controller(ctl))


@controller.command("start")
@click.argument("configs", type=CONFIG, nargs=-1, required=True)
def start_command(configs: tuple[Path, ...]) -> None:
    """Start controllers in the background and wait until each is ready.

    Each logs to DATA_DIR/controller.log; its pid is in DATA_DIR/controller.pid.

    \b
    Example:
      remcopy controller start controllers/*.toml
    """
    from remcopy.controller import daemon

    for config in configs:
        pid, line = daemon.start(config)
        say(f"{config}: pid {pid}: {line}")


@controller.command("stop")
@click.argument("configs", type=CONFIG, nargs=-1, required=True)
def stop_command(configs: tuple[Path, ...]) -> None:
    """Stop controllers started with `remcopy controller start` (SIGTERM, then wait).

    Only a process whose command line is `remcopy controller serve CONFIG` is signalled: a
    stale pid file naming another process is refused (exit 2) and that process left alone.
    Every config is tried; the exit code is that of the worst refusal.

    \b
    Example:
      remcopy controller stop controllers/*.toml
    """
    from remcopy.cli.output import fail
    from remcopy.controller import daemon

    refused: list[daemon.DaemonError] = []
    for config in configs:
        try:
            pid = daemon.stop(config)
        except daemon.DaemonError as exc:
            if len(configs) == 1:
                raise
            fail(str(exc))
            refused.append(exc)
            continue
        say(f"{config}: " + (f"pid {pid} stopped" if pid else "not running"))
    if refused:
        summary = f"controller stop: {len(refused)} of {len(configs)} controllers not stopped"
        if any(isinstance(exc, daemon.PidFileMismatch) for exc in refused):
            raise InputError(f"{summary}: a pid file names another process (above)")
        raise daemon.DaemonError(f"{summary} (above)")


@controller.command()
@click.argument("config", type=CONFIG)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def check(config: Path, as_json: bool) -> None:
    """Check a controller CONFIG file and change nothing (like `nginx -t`).

    \b
    Example:
      remcopy controller check site-a/cntl1.toml
    """
    from remcopy.controller.config import load_controller_config

    cfg = load_controller_config(config)
    summary = {
        "config": str(config),
        "ok": True,
        "name": cfg.controller.name,
        "serial": cfg.controller.serial,
        "listen": format_address(cfg.controller.listen),
        "volumes": len(cfg.volumes),
        "hosts": [h.name for h in cfg.hosts],
        "peers": [p.name for p in cfg.peers],
    }
    testing = cfg.testing()
    if testing:  # only with REMCOPY_TESTING=1: the config was refused otherwise
        summary["testing"] = testing
    if as_json:
        emit_json(summary)
    else:
        say(
            f"{config}: ok: controller {cfg.controller.name} serial "
            f"{cfg.controller.serial}, {len(cfg.volumes)} volumes, "
            f"{len(cfg.hosts)} hosts, {len(cfg.peers)} peers"
        )
        if testing:
            say(_testing_warning(testing))


def _testing_warning(testing: object) -> str:
    """The line that says a controller runs with test-only switches on (`testing` comes from
    the controller's status document: anything but an object is shown as it came)."""
    if isinstance(testing, dict):
        switches = " ".join(f"{key}={value}" for key, value in testing.items())
    else:
        switches = repr(testing)
    return f"WARNING: TESTING ONLY switches are on (never in production): {switches}"


def _address(value: str) -> tuple[str, int]:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise InputError(f"ADDR: {exc}") from None


@controller.command()
@click.argument("addr")
@click.option(
    "--name",
    envvar="REMCOPY_HOST_NAME",
    required=True,
    help="Host name to authenticate as (env REMCOPY_HOST_NAME).",
)
@click.option(
    "--secret-file",
    envvar="REMCOPY_SECRET_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="That host's secret file, 0600 (env REMCOPY_SECRET_FILE; or the secret itself in "
    "env REMCOPY_SECRET). Never on the command line.",
)
@click.option(
    "--pki",
    "pki_dir",
    envvar="REMCOPY_PKI",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with ca.pem, NAME.pem and NAME.key (env REMCOPY_PKI): TLS as host NAME. "
    "Without it: plain TCP, which only a plain_tcp controller on loopback accepts.",
)
@click.option(
    "--controller",
    "controller_name",
    default=None,
    help="The controller's name, which its certificate must carry (needed with --pki).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds to wait for the controller.",
)
def status(
    addr: str,
    name: str,
    secret_file: Path | None,
    pki_dir: Path | None,
    controller_name: str | None,
    as_json: bool,
    timeout_s: float,
) -> None:
    """Show a running controller's volumes and counters, and whether its links are TLS.

    \b
    Example:
      remcopy controller status 127.0.0.1:7401 --controller cntl1 --name hosta \\
          --pki site-pki --secret-file hosta.secret
    """
    address = _address(addr)
    secret = _host_secret(secret_file)
    context = None
    if pki_dir is not None:
        if not controller_name:
            raise InputError("--controller: needed with --pki (the name its certificate carries)")
        context = tls.client_context(
            tls.TlsFiles(
                ca=pki_dir / "ca.pem", cert=pki_dir / f"{name}.pem", key=pki_dir / f"{name}.key"
            ),
            source=f"--pki {pki_dir}",
        )

    async def ask() -> dict[str, object]:
        async with Channel(
            address,
            name=name,
            secret=secret,
            tls=context,
            server_name=controller_name,
            connect_timeout_s=timeout_s,
            timeout_s=timeout_s,
        ) as channel:
            return await channel.status()

    doc = aio.run(ask())
    if as_json:
        emit_json(doc)
        return
    say(
        f"controller {doc['name']} serial {doc['serial']} at {addr}: "
        f"{doc['volumes']} volumes, up {doc['uptime_s']} s, links {doc.get('links', '?')}"
    )
    if doc.get("testing"):
        say(_testing_warning(doc["testing"]))
    devices = doc.get("devices", [])
    assert isinstance(devices, list)
    table(
        None,
        ["address", "volser", "capacity", "state", "role"],
        [
            (d["address"], d["volser"], _size(d["capacity_bytes"]), d["state"], d["role"])
            for d in devices
        ],
    )


def _host_secret(secret_file: Path | None) -> str:
    """The host's secret: from a private file, or from the environment (never argv)."""
    if secret_file is not None:
        return secretfiles.read(secret_file)
    value = os.environ.get(secretfiles.SECRET_ENV_VAR)
    if value is None:
        raise InputError(
            f"--secret-file: missing: give the host's secret file (0600), or the secret in "
            f"the environment variable {secretfiles.SECRET_ENV_VAR}"
        )
    return secretfiles.check_text(value, secretfiles.SECRET_ENV_VAR)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
