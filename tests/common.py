# Values and builders shared by the test suites (imported as `common`; conftest.py keeps
# only fixtures, so test folders with their own conftest never shadow these names).
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec
from remcopy.pki import Site

HOST = "hosta"
SECRET = "s3cret-hosta-key"
MiB = 1024 * 1024


_SITES: list[Site] = []


def use_site(site_: Site) -> None:
    """conftest.py: the session's certificates (made once, issued per name on demand)."""
    _SITES[:] = [site_]


def site() -> Site:
    """The session's site CA and certificates: every test controller speaks TLS by default."""
    assert _SITES, "the session fixture did not set up the site's certificates"
    return _SITES[0]


def controller_spec(
    root: Path,
    name: str,
    serial: int,
    *,
    ssid: int = 0x1A00,
    lss: int = 0x0A,
    volumes: int = 4,
    size_bytes: int = 4 * MiB,
    prefix: str | None = None,
    hosts: dict[str, str] | None = None,
    plain_tcp: bool = False,
) -> ControllerSpec:
    """A controller with `volumes` volumes in one LSS; TLS with the session site's
    certificate on every link, or plain TCP on loopback (raw-frame tests of the plain
    listener)."""
    prefix = prefix or name[:2].upper()
    return ControllerSpec(
        name=name,
        serial=serial,
        data_dir=root / name,
        lss={lss: ssid},
        volumes=[
            VolumeSpec(lss=lss, cca=c, volser=f"{prefix}{c:04X}", size_bytes=size_bytes)
            for c in range(volumes)
        ],
        hosts=hosts if hosts is not None else {HOST: SECRET},
        site=None if plain_tcp else site(),
    )


def host_tls(name: str = HOST) -> dict[str, str]:
    """The [tls] table of host NAME's definition: the session site's certificate."""
    files = site().files(name, "host")
    return {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}


def host_tls_toml(name: str = HOST) -> str:
    """host_tls as TOML lines, to put at the top of a host file."""
    return "[tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in host_tls(name).items()) + "\n"


def secret_file_line(name: str, secret: str) -> str:
    """`secret_file = "PATH"` for a host file: the secret written to a 0600 file in the
    session site's folder (the catalog keeps no plaintext secret: a host file names a file)."""
    from remcopy.controller import atrest
    from remcopy.controller.process import write_private

    folder = site().folder / "secrets"
    atrest.make_folder(folder)
    path = folder / f"{name}-{hashlib.sha256(secret.encode()).hexdigest()[:12]}.secret"
    write_private(path, secret + "\n")
    return f'secret_file = "{path}"'


def status_args(proc: ControllerProcess, folder: Path, *, secret: str = SECRET) -> list[str]:
    """`remcopy controller status` arguments for host HOST at `proc`: its secret in a 0600
    file, TLS with the session site's certificate when the controller speaks TLS."""
    secret_file = folder / f"{HOST}-{len(secret)}.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    args = [
        "controller",
        "status",
        proc.endpoint,
        "--name",
        HOST,
        "--secret-file",
        str(secret_file),
    ]
    site_ = proc.site()
    if site_ is not None:
        site_.files(HOST, "host")
        args += ["--pki", str(site_.folder), "--controller", proc.name]
    return args


def run_remcopy(
    *args: str, catalog: Path, code: int | None = 0, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """`remcopy ARGS` as a user runs it (its own process, no terminal on stdin, the catalog
    in REMCOPY_CATALOG): never a traceback, and the exit code `code` unless it is None."""
    run = subprocess.run(
        [sys.executable, "-m", "remcopy", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=dict(os.environ, REMCOPY_CATALOG=str(catalog)),
    )
    assert "Traceback" not in run.stderr, run.stderr
    if code is not None:
        assert run.returncode == code, (args, run.returncode, run.stdout, run.stderr)
    return run


class Start(Protocol):
    """The start_controller fixture (tests/conftest.py): start a controller from a spec."""

    def __call__(
        self, spec: ControllerSpec, *, extra_env: dict[str, str] | None = None
    ) -> Awaitable[ControllerProcess]: ...
