# Controllers as real processes: write their configs, start them, wait until ready, stop them.
#
# Why: the demo, the tests and the benchmarks all run real controller processes on 127.0.0.1
# (DESIGN.md section 3, "Real parts"). This module is the one way they do it, so readiness is
# always taken from the controller's ready line (never from a sleep) and every process started
# is stopped again, also on Ctrl-C.
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from remcopy import pki
from remcopy.configfile import parse_address, read_toml
from remcopy.controller import atrest
from remcopy.errors import RemcopyError
from remcopy.host.channel import Channel
from remcopy.wire.native import PeerRole

READY_TIMEOUT_S: Final = 30.0
TESTING_ENV: Final = {"REMCOPY_TESTING": "1"}
"""The environment a controller needs to accept a config's test-only keys (planted_bugs,
volume_faults, identify_delay_s...; docs/security.md). Pass it only to the controllers whose
config sets one: `ControllerProcess(path, extra_env=TESTING_ENV)`."""
_READY = re.compile(r"^remcopy controller (\S+) ready serial=(\d+) listen=(\S+)")
_READY_NBD = re.compile(r" nbd=(\S+)")  # NBD export address, when nbd_listen is configured
_READY_LINKS = re.compile(r" links=(\S+)")  # "tls" or "plain_tcp"


@dataclass(kw_only=True)
class VolumeSpec:
    lss: int
    cca: int
    volser: str
    size_bytes: int


@dataclass(kw_only=True)
class PeerSpec:
    name: str
    serial: int
    address: str
    secret: str
    offer_lss: list[int] | None = None
    """The LSSs offered to this peer for establish; None: every LSS of the controller."""


@dataclass(kw_only=True)
class ControllerSpec:
    """Enough to write a controller config file; see docs/controller-config.md."""

    name: str
    serial: int
    data_dir: Path
    lss: dict[int, int]  # LSS -> SSID
    volumes: list[VolumeSpec] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)  # name -> secret
    host_lss: dict[str, list[int]] = field(default_factory=dict)
    """A host's grant (name -> LSSs); a host not named here may reach every device."""
    peers: list[PeerSpec] = field(default_factory=list)
    listen: str = "127.0.0.1:0"
    track_size_bytes: int = 64 * 1024
    identify_delay_s: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)
    """More [controller] keys, e.g. {"ack_timeout_s": 1.0}."""
    nbd_listen: str | None = None
    """Serve every volume over NBD here (e.g. "127.0.0.1:0"); None: no NBD port."""
    nbd_allow: list[str] | None = None
    """Client networks allowed on the NBD port; None: the default (127.0.0.1 and ::1)."""
    nbd_multi_conn: bool | None = None
    """Advertise NBD multi-conn on every export; None: the config default (yes)."""
    nbd_tls: str | None = None
    """"auto", "require" or "off"; None: the config default (auto: as the links)."""
    tls: dict[str, Path] | None = None
    """The [tls] section: {"ca": ..., "cert": ..., "key": ...} (NBD TLS with plain native
    links); None: none, or the site's when `site` is set."""
    secret_folder: Path | None = None
    """Write each secret to a 0600 file here and name it by `secret_file` (a config keeps
    no secret itself); None: `secrets/` next to data_dir."""
    site: pki.Site | None = None
    """The site whose certificate this controller presents (issued on demand): TLS on every
    link. None: plain_tcp = true (the listen address must be loopback)."""
    plain_tcp: bool | None = None
    """Write plain_tcp = true or not; None: as `site` says (plain without a site)."""

    def toml(self) -> str:
        plain = self.site is None if self.plain_tcp is None else self.plain_tcp
        lines = ["plain_tcp = true", ""] if plain else []
        lines += [
            "[controller]",
            f'name = "{self.name}"',
            f"serial = {self.serial}",
            f'listen = "{self.listen}"',
            f'data_dir = "{self.data_dir}"',
            f"track_size = {self.track_size_bytes}",
            "format_missing = true",
        ]
        if self.identify_delay_s:
            lines.append(f"identify_delay_s = {self.identify_delay_s}")
        lines += [f"{key} = {_toml_value(value)}" for key, value in sorted(self.settings.items())]
        if self.nbd_listen is not None:
            lines.append(f'nbd_listen = "{self.nbd_listen}"')
        if self.nbd_allow is not None:
            lines.append("nbd_allow = [" + ", ".join(f'"{n}"' for n in self.nbd_allow) + "]")
        if self.nbd_multi_conn is not None:
            lines.append(f"nbd_multi_conn = {'true' if self.nbd_multi_conn else 'false'}")
        if self.nbd_tls is not None:
            lines.append(f'nbd_tls = "{self.nbd_tls}"')
        lines.append("")
        if self.site is not None:
            files = self.site.files(self.name, "controller")
            lines += [
                "[tls]",
                f"ca = {_toml_value(str(files.ca))}",
                f"cert = {_toml_value(str(files.cert))}",
                f"key = {_toml_value(str(files.key))}",
                "",
            ]
        elif self.tls is not None:
            lines.append("[tls]")
            lines += [f"{key} = {_toml_value(str(path))}" for key, path in self.tls.items()]
            lines.append("")
        for lss, ssid in sorted(self.lss.items()):
            lines += ["[[lss]]", f'id = "{lss:02X}"', f'ssid = "{ssid:04X}"', ""]
        for vol in self.volumes:
            lines += [
                "[[volumes]]",
                f'lss = "{vol.lss:02X}"',
                f'cca = "{vol.cca:02X}"',
                f'volser = "{vol.volser}"',
                f"size = {vol.size_bytes}",
                "",
            ]
        for name, secret in sorted(self.hosts.items()):
            lines += ["[[hosts]]", f'name = "{name}"', self._secret_line(f"host-{name}", secret)]
            if name in self.host_lss:
                lines.append(f"lss = {_lss_list(self.host_lss[name])}")
            lines.append("")
        for peer in self.peers:
            offer = sorted(self.lss) if peer.offer_lss is None else peer.offer_lss
            lines += [
                "[[peers]]",
                f'name = "{peer.name}"',
                f"serial = {peer.serial}",
                f'address = "{peer.address}"',
                self._secret_line(f"link-{peer.name}", peer.secret),
                f"offer_lss = {_lss_list(offer)}",
                "",
            ]
        return "\n".join(lines)

    def _secret_line(self, key: str, secret: str) -> str:
        """`secret_file = ...`: the secret written 0600 under secret_folder."""
        folder = self.secret_folder or self.data_dir.parent / "secrets"
        path = folder / f"{self.name}-{key}.secret"
        atrest.make_folder(folder)
        write_private(path, secret + "\n")
        return f"secret_file = {_toml_value(str(path))}"

    def write(self, path: Path) -> Path:
        """Write the config 0600 (it may hold secrets: a controller refuses it otherwise)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, self.toml())
        return path


def write_private(path: Path, text: str) -> None:
    """Write a text file that holds secrets: created 0600, an existing one made 0600."""
    with os.fdopen(atrest.open_private(path, os.O_WRONLY | os.O_TRUNC), "w") as out:
        os.fchmod(out.fileno(), atrest.FILE_MODE)  # our own file, rewritten: no wider mode
        out.write(text)


def _lss_list(lss: list[int]) -> str:
    return "[" + ", ".join(f'"{n:02X}"' for n in lss) + "]"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


# Listen ports for configs that name each other are taken below the kernel's ephemeral range
# (32768-60999 on Linux): a port bound to 0 comes from that range, and so does the local port
# of every outgoing connection on the machine, which may take it before the controller binds.
LISTEN_PORTS: Final = range(20000, 32000)
_ports = [LISTEN_PORTS]  # the part this process hands out
_next_port = [random.choice(LISTEN_PORTS)]  # this process hands them out in turn from here


def use_listen_ports(ports: range, *, first: int | None = None) -> None:
    """Hand out only these ports from now on, from `first` on (default: the start): processes
    that build worlds side by side on one machine each take their own part, so one never
    names a port another just chose (both found it free before either bound it)."""
    if not ports or ports.start < LISTEN_PORTS.start or ports.stop > LISTEN_PORTS.stop:
        raise ValueError(f"ports {ports} are not a part of {LISTEN_PORTS}")
    if first is not None and first not in ports:
        raise ValueError(f"first port {first} is not in {ports}")
    _ports[0] = ports
    _next_port[0] = ports.start if first is None else first


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for configs that name each other),
    outside the range outgoing connections take their local ports from; never the same one
    twice in a row of calls from this process (a world asks for several before any binds)."""
    ports = _ports[0]
    span = len(ports)
    for _ in range(span):
        port = ports.start + (_next_port[0] - ports.start) % span
        _next_port[0] = port + 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {ports.start}-{ports.stop - 1}")


# Every controller process this Python process started, by pid: a test stopped by its timeout
# never reaches its own cleanup (pytest-timeout raises inside the event loop, so no `finally`
# of the test's coroutine runs), and tests/conftest.py kills what such a test left running.
_STARTED: Final[dict[int, Path]] = {}


def started_pids() -> set[int]:
    """The pids of every controller process started from this Python process so far."""
    return set(_STARTED)


def kill_left_running(pids: set[int]) -> list[int]:
    """SIGKILL each of these controller processes that still runs; the pids killed. A pid is
    killed only while /proc says it still runs this module's controller with its config (a
    pid reaped meanwhile may have been reused by another process)."""
    killed = []
    for pid in sorted(pids):
        config = _STARTED.get(pid)
        if config is not None and runs_controller(pid, config):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def runs_controller(pid: int, config_path: Path) -> bool:
    """Whether process `pid` is alive (not a zombie) and serves the config at config_path."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and os.fsencode(str(config_path)) in argv


class ControllerStartFailed(RemcopyError):
    """a controller process did not become ready"""


class ControllerProcess:
    """One `remcopy controller serve` process; stderr goes to LOG next to its config."""

    def __init__(
        self,
        config_path: Path,
        *,
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path or config_path.with_suffix(".log")
        self.extra_env = dict(extra_env or {})
        """More environment for every start of this process (e.g. TESTING_ENV): a restart
        runs with what the first start had."""
        self.process: asyncio.subprocess.Process | None = None
        self.name = ""
        self.serial = 0
        self.address: tuple[str, int] = ("", 0)
        self.nbd_address: tuple[str, int] | None = None
        """The NBD export address from the ready line; None when NBD is not configured."""
        self.links = ""
        """"tls" or "plain_tcp", from the ready line."""
        self._drain: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<ControllerProcess {self.name or self.config_path.name} pid={pid} {self.address}>"

    @property
    def endpoint(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def start(
        self,
        *,
        extra_env: dict[str, str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> ControllerProcess:
        """Start the process and wait for its ready line; raises with its log on failure.
        `extra_env` adds to the environment given at construction, for this start only.
        `ready_timeout_s` bounds the wait (raise it for controllers with thousands of
        volumes on a loaded machine)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env, **(extra_env or {})}
        log = os.fdopen(atrest.open_private(self.log_path, os.O_WRONLY | os.O_APPEND), "ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "remcopy",
                "controller",
                "serve",
                str(self.config_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        _STARTED[self.process.pid] = self.config_path
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(ready_timeout_s):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        code = await self.process.wait()
                        raise ControllerStartFailed(
                            f"controller {self.config_path} exited with {code} before ready:\n"
                            f"{self.log_tail()}"
                        )
                    match = _READY.match(raw.decode(errors="replace"))
                    if match:
                        break
        except TimeoutError:
            await self.kill()
            raise ControllerStartFailed(
                f"controller {self.config_path} not ready after "
                f"{ready_timeout_s} s:\n{self.log_tail()}"
            ) from None
        self.name, self.serial = match.group(1), int(match.group(2))
        self.address = parse_address(match.group(3))
        nbd = _READY_NBD.search(raw.decode(errors="replace"))
        self.nbd_address = parse_address(nbd.group(1)) if nbd else None
        links = _READY_LINKS.search(raw.decode(errors="replace"))
        self.links = links.group(1) if links else ""
        self._drain = asyncio.get_running_loop().create_task(self._drain_stdout())
        return self

    def site(self) -> pki.Site | None:
        """The site of this controller's CA (from its config's [tls]); None for plain TCP."""
        section = read_toml(self.config_path).get("tls")
        if self.links != "tls" or not isinstance(section, dict):
            return None
        return pki.Site((self.config_path.parent / str(section["ca"])).parent)

    def channel(self, name: str, secret: str | bytes, **options: Any) -> Channel:
        """A channel to this controller as host (or peer) NAME: over TLS with NAME's
        certificate from the controller's site when the controller speaks TLS."""
        site = self.site()
        kind: pki.Kind = "controller" if options.get("role") is PeerRole.PEER else "host"
        return Channel(
            self.address,
            name=name,
            secret=secret,
            tls=None if site is None else site.client(name, kind),
            server_name=self.name,
            **options,
        )

    async def _drain_stdout(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        while await self.process.stdout.read(65536):
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, *, timeout_s: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await self.process.wait()
            except TimeoutError:
                return await self.kill()
        _STARTED.pop(self.process.pid, None)
        await self._finish_drain()
        return self.process.returncode if self.process.returncode is not None else 0

    def pause(self) -> None:
        """SIGSTOP: the controller stops answering without closing its connections."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGSTOP)

    def unpause(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> int:
        """SIGKILL: the crash a controller must survive without losing acknowledged writes."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        code = await self.process.wait()
        _STARTED.pop(self.process.pid, None)
        await self._finish_drain()
        return code

    async def _finish_drain(self) -> None:
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await self._drain
            self._drain = None
