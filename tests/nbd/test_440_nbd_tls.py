# NBD with TLS and identity (docs/nbd.md, docs/security.md) against a real controller and the
# real tools: nbdinfo, nbdcopy and qemu-img connect with nbds:// and a client certificate; the
# certificate's name is a [[hosts]] entry, and that host sees and opens exactly its grant's
# volumes. Every refusal (no TLS, no/expired/other-CA/unknown certificate, a volume outside
# the grant) is a clear error, logged once, changes nothing, and the next client is served.
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from nbd_world import (
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    RawNbdClient,
    tool,
)

import pki
from common import MiB, Start, run_remcopy
from remcopy.controller.logsafe import escape_name
from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec
from remcopy.host.channel import Channel

SIZE = 1 * MiB
WIDE, WIDE_SECRET = "hostwide", "wide-host-secret-1"  # native only: checks the data
OPT_STARTTLS, OPT_LIST, OPT_GO = 5, 3, 7
REP_ACK, REP_ERR_TLS_REQD, REP_ERR_UNKNOWN = 1, 2**31 + 5, 2**31 + 6
A_VOLUMES, B_VOLUMES = ["VA0000", "VA0001"], ["VB0000"]


@dataclass
class TlsWorld:
    controller: ControllerProcess
    site: pki.Site
    certs: dict[str, Path]  # client certificate folders for libnbd and qemu

    def uri(self, volser: str = "", cert: str | None = "hosta", *, tls: bool = True) -> str:
        assert self.controller.nbd_address is not None
        host, port = self.controller.nbd_address
        query = f"?tls-certificates={self.certs[cert]}" if cert is not None else ""
        return f"{'nbds' if tls else 'nbd'}://{host}:{port}/{volser}{query}"

    def qemu(self, volser: str, cert: str = "hosta") -> list[str]:
        """qemu-img arguments opening `volser` over TLS with a client certificate."""
        assert self.controller.nbd_address is not None
        host, port = self.controller.nbd_address
        return [
            "--object",
            f"tls-creds-x509,id=tls0,endpoint=client,dir={self.certs[cert]}",
            "--image-opts",
            f"driver=nbd,host={host},port={port},export={volser},tls-creds=tls0",
        ]

    def log(self) -> str:
        return self.controller.log_path.read_text(errors="replace")

    async def digests(self) -> dict[str, str]:
        """SHA-256 of every volume, read through the native protocol."""
        out = {}
        async with Channel(self.controller.address, name=WIDE, secret=WIDE_SECRET) as ch:
            for ident in await ch.identify():
                data = await ch.read(ident.device, 0, SIZE)
                out[ident.volser] = hashlib.sha256(data).hexdigest()
        return out


def _spec(root: Path, site: pki.Site, **nbd: object) -> ControllerSpec:
    spec = ControllerSpec(
        name="cntla",
        serial=64015,
        data_dir=root / "cntla",
        lss={0x0A: 0x1A00, 0x0B: 0x1B00},
        volumes=[
            VolumeSpec(lss=0x0A, cca=0, volser="VA0000", size_bytes=SIZE),
            VolumeSpec(lss=0x0A, cca=1, volser="VA0001", size_bytes=SIZE),
            VolumeSpec(lss=0x0B, cca=0, volser="VB0000", size_bytes=SIZE),
        ],
        hosts={WIDE: WIDE_SECRET, "hosta": "hosta-secret-123", "hostb": "hostb-secret-123"},
        host_lss={"hosta": [0x0A], "hostb": [0x0B]},
        nbd_listen="127.0.0.1:0",
        nbd_tls="require",
        tls=site.controller("cntla"),
    )
    for key, value in nbd.items():
        setattr(spec, key, value)
    return spec


@pytest.fixture
async def world(tmp_path: Path, start_controller: Start) -> TlsWorld:
    site = pki.Site.make(tmp_path / "pki")
    other = pki.Site.make(tmp_path / "other-ca")
    certs = {
        "hosta": site.client("hosta"),
        "hostb": site.client("hostb"),
        "no-certificate": site.server_trust_only("no-certificate"),
        "expired": site.client("hosta", folder="expired", expired=True),
        "other-ca": other.client("hosta", folder="other-ca", trust=site),
        "unknown-name": site.client("mallory"),
    }
    controller = await start_controller(_spec(tmp_path, site))
    return TlsWorld(controller=controller, site=site, certs=certs)


# What works --------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "volumes"), [("hosta", A_VOLUMES), ("hostb", B_VOLUMES)])
async def test_nbdinfo_lists_exactly_the_hosts_grant_over_tls(
    world: TlsWorld, host: str, volumes: list[str]
) -> None:
    listed = await tool("nbdinfo", "--list", "--json", world.uri(cert=host))
    document = json.loads(listed.stdout)
    assert document["TLS"] is True
    assert sorted(e["export-name"] for e in document["exports"]) == volumes
    assert world.log().count(f"TLS: host {host}") == 1


async def test_nbdcopy_and_qemu_img_write_and_read_a_granted_volume_over_tls(
    world: TlsWorld, tmp_path: Path
) -> None:
    source = tmp_path / "in.raw"
    source.write_bytes(os.urandom(SIZE))
    await tool("nbdcopy", str(source), world.uri("VA0001"))
    assert (await world.digests())["VA0001"] == hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "out.raw"
    await tool("qemu-img", "convert", "-O", "raw", *world.qemu("VA0001"), str(out))
    assert out.read_bytes() == source.read_bytes()


# Refused -----------------------------------------------------------------------------------

# (case, the tool's argv builder, what the tool says, the one log line, the volume it tried)
REFUSALS: list[tuple[str, list[str], str, str]] = [
    (
        "plain-nbdinfo",
        ["nbdinfo", "@plain:VA0000"],
        "Operation not supported",
        "requires TLS (STARTTLS with a client certificate) and the client did not start it",
    ),
    (
        "plain-nbdinfo-list",
        ["nbdinfo", "--list", "@plain:"],
        "Operation not supported",
        "requires TLS (STARTTLS with a client certificate) and the client did not start it",
    ),
    (
        "plain-qemu-img",
        ["qemu-img", "info", "@plain:VA0000"],
        "TLS negotiation required",
        "requires TLS (STARTTLS with a client certificate) and the client did not start it",
    ),
    (
        "plain-nbdcopy-write",
        ["nbdcopy", "@file", "@plain:VA0000"],
        "nbd_connect_uri",
        "requires TLS (STARTTLS with a client certificate) and the client did not start it",
    ),
    (
        "no-certificate",
        ["nbdinfo", "@no-certificate:VA0000"],
        "nbd_connect_uri",  # the refusal's TLS alert may be lost in the close: see the log
        "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
    ),
    (
        "expired",
        ["nbdinfo", "@expired:VA0000"],
        "nbd_connect_uri",  # the refusal's TLS alert may be lost in the close: see the log
        "TLS handshake failed: client certificate refused: certificate has expired",
    ),
    (
        "other-ca",
        ["nbdinfo", "@other-ca:VA0000"],
        "nbd_connect_uri",  # the refusal's TLS alert may be lost in the close: see the log
        "TLS handshake failed: client certificate refused: unable to get local issuer",
    ),
    (
        "unknown-name-write",
        ["nbdcopy", "@file", "@unknown-name:VA0000"],
        "nbd_connect_uri",
        "the client certificate (name 'mallory') is not a [[hosts]] name of controller cntla",
    ),
    (
        "expired-nbdcopy-write",
        ["nbdcopy", "@file", "@expired:VA0000"],
        "nbd_connect_uri",
        "TLS handshake failed: client certificate refused: certificate has expired",
    ),
    (
        "no-certificate-nbdcopy-read",
        ["nbdcopy", "@no-certificate:VA0000", "@out"],
        "nbd_connect_uri",
        "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
    ),
    (
        "other-ca-nbdcopy-write",  # (qemu-img checks its own certificate before connecting)
        ["nbdcopy", "@file", "@other-ca:VA0000"],
        "nbd_connect_uri",
        "TLS handshake failed: client certificate refused: unable to get local issuer",
    ),
    (
        "unknown-name-qemu-img",
        ["qemu-img", "info", "@qemu-unknown-name:VA0000"],
        "Could not open",
        "the client certificate (name 'mallory') is not a [[hosts]] name of controller cntla",
    ),
    (
        "outside-grant-nbdinfo",
        ["nbdinfo", "@hosta:VB0000"],
        "VB0000",
        "refused export 'VB0000' for host hosta",
    ),
    (
        "outside-grant-nbdcopy-write",
        ["nbdcopy", "@file", "@hosta:VB0000"],
        "server has no export named 'VB0000'",
        "refused export 'VB0000' for host hosta",
    ),
    (
        "outside-grant-nbdcopy-read",
        ["nbdcopy", "@hosta:VB0000", "@out"],
        "server has no export named 'VB0000'",
        "refused export 'VB0000' for host hosta",
    ),
    (
        "outside-grant-qemu-img",
        ["qemu-img", "convert", "-O", "raw", "@qemu-hosta:VB0000", "@out"],
        "Requested export not available",
        "refused export 'VB0000' for host hosta",
    ),
    (
        "other-host-outside-grant",
        ["qemu-img", "info", "@qemu-hostb:VA0000"],
        "Requested export not available",
        "refused export 'VA0000' for host hostb",
    ),
]


def _argv(world: TlsWorld, template: list[str], tmp_path: Path) -> list[str]:
    out: list[str] = []
    for part in template:
        if part == "@file":
            source = tmp_path / "hostile.raw"
            source.write_bytes(b"\xee" * SIZE)
            out.append(str(source))
        elif part == "@out":
            out.append(str(tmp_path / "stolen.raw"))
        elif part.startswith("@qemu-"):
            cert, volser = part[len("@qemu-") :].split(":")
            out += world.qemu(volser, cert)
        elif part.startswith("@plain:"):
            out.append(world.uri(part[len("@plain:") :], None, tls=False))
        elif part.startswith("@"):
            cert, volser = part[1:].split(":")
            out.append(world.uri(volser, cert))
        else:
            out.append(part)
    return out


@pytest.mark.parametrize(
    ("template", "says", "logged"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
async def test_nbd_refusals_are_clear_logged_once_change_nothing(
    world: TlsWorld, tmp_path: Path, template: list[str], says: str, logged: str
) -> None:
    before = await world.digests()
    result = await tool(*_argv(world, template, tmp_path), check=False)
    assert result.returncode != 0, result.text
    assert says in result.text, result.text
    assert not (tmp_path / "stolen.raw").exists() or ((tmp_path / "stolen.raw").stat().st_size == 0)
    assert await world.digests() == before
    # The next legitimate client is served; its lines come after the refusal's.
    await tool("nbdinfo", world.uri("VA0000"))
    log = world.log()
    assert log.count(logged) == 1, log
    assert log.rindex(logged) < log.rindex("export VA0000 for host hosta")
    assert "Traceback" not in log


# By hand: what no tool would send ----------------------------------------------------------


async def _starttls(world: TlsWorld) -> RawNbdClient:
    assert world.controller.nbd_address is not None
    client = await RawNbdClient.open(world.controller.nbd_address)
    await client.greeting()
    client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
    return client


async def test_every_option_before_starttls_gets_err_tls_reqd(world: TlsWorld) -> None:
    client = await _starttls(world)
    try:
        client.option(OPT_LIST)
        assert (await client.option_reply())[:2] == (OPT_LIST, REP_ERR_TLS_REQD)
        client.option(OPT_STARTTLS)
        assert (await client.option_reply())[:2] == (OPT_STARTTLS, REP_ACK)
        client.send(b"this is not a TLS client hello" + bytes(64))
        assert await client.at_eof()
    finally:
        await client.close()
    await tool("nbdinfo", world.uri("VA0000"))  # the next client is served
    log = world.log()
    assert log.count("refused: TLS handshake failed") == 1, log
    assert log.index("refused: TLS handshake failed") < log.index("TLS: host hosta")


async def test_bytes_pipelined_after_starttls_end_the_connection(world: TlsWorld) -> None:
    client = await _starttls(world)
    try:
        client.send(struct.pack("!QII", 0x49484156454F5054, OPT_STARTTLS, 0) + b"\x16\x03\x01")
        assert await client.at_eof()
    finally:
        await client.close()
    await tool("nbdinfo", world.uri("VA0000"))  # the next client is served
    log = world.log()
    assert log.count("STARTTLS: data sent before the server's reply") == 1, log
    assert log.index("STARTTLS: data sent") < log.index("TLS: host hosta")


# Configuration -----------------------------------------------------------------------------


def test_tls_is_required_off_loopback_and_a_readable_key_is_refused(tmp_path: Path) -> None:
    site = pki.Site.make(tmp_path / "pki")
    spec = _spec(tmp_path, site, nbd_listen="0.0.0.0:10809", nbd_tls=None, tls=None)
    config = spec.write(tmp_path / "cntla.toml")
    result = run_remcopy("controller", "check", str(config), catalog=tmp_path / "c.db", code=2)
    assert (
        "plain_tcp: refused: controller.nbd_listen 0.0.0.0:10809 is not a loopback address"
        in " ".join(result.stderr.split())
    )
    spec.plain_tcp = False  # every link TLS: then [tls] is what is missing
    spec.write(tmp_path / "cntla.toml")
    result = run_remcopy("controller", "check", str(config), catalog=tmp_path / "c.db", code=2)
    assert "tls: missing: every link is TLS" in " ".join(result.stderr.split())
    spec.tls = site.controller("cntla")
    spec.tls["key"].chmod(0o644)
    spec.write(tmp_path / "cntla.toml")
    result = run_remcopy("controller", "check", str(config), catalog=tmp_path / "c.db", code=2)
    assert "tls.key:" in result.stderr and "chmod 600" in result.stderr
    spec.tls["key"].chmod(0o600)
    run_remcopy("controller", "check", str(config), catalog=tmp_path / "c.db", code=0)


async def test_off_loopback_tls_is_required_by_default(
    tmp_path: Path, start_controller: Start
) -> None:
    """nbd_listen on the wildcard address and no nbd_tls key: a plain client is refused."""
    site = pki.Site.make(tmp_path / "pki")
    spec = _spec(tmp_path, site, nbd_listen="0.0.0.0:0", nbd_tls=None)
    spec.plain_tcp = False  # off loopback every link is TLS
    controller = await start_controller(spec)
    assert controller.nbd_address is not None
    port = controller.nbd_address[1]
    plain = await tool("nbdinfo", f"nbd://127.0.0.1:{port}/VA0000", check=False)
    assert plain.returncode != 0 and "Operation not supported" in plain.text
    certs = site.client("hosta")
    served = await tool("nbdinfo", f"nbds://127.0.0.1:{port}/VA0000?tls-certificates={certs}")
    assert "export-size: 1048576" in served.text


async def test_on_loopback_tls_links_mean_tls_nbd_unless_the_config_says_off(
    tmp_path: Path, start_controller: Start
) -> None:
    """Every link TLS, NBD on loopback and no nbd_tls key: a local user's plain nbdcopy
    cannot write (plain NBD only where the config says so); its certificate can."""
    site = pki.Site.make(tmp_path / "pki")
    spec = _spec(tmp_path, site, nbd_tls=None)
    spec.plain_tcp = False
    controller = await start_controller(spec)
    assert controller.nbd_address is not None
    host, port = controller.nbd_address
    image = tmp_path / "image"
    image.write_bytes(b"\x5a" * SIZE)
    plain = await tool("nbdcopy", str(image), f"nbd://{host}:{port}/VA0000", check=False)
    assert plain.returncode != 0 and "TLS" in plain.text, plain.text
    assert "plain, no identity" not in controller.log_path.read_text()
    certs = site.client("hosta")
    await tool("nbdcopy", str(image), f"nbds://{host}:{port}/VA0000?tls-certificates={certs}")
    assert "TLS 1.3 with client certificates" in controller.log_path.read_text()


def test_plain_nbd_must_be_asked_for_and_only_on_loopback(tmp_path: Path) -> None:
    site = pki.Site.make(tmp_path / "pki")
    spec = _spec(tmp_path, site, nbd_listen="0.0.0.0:10809", nbd_tls="off")
    spec.plain_tcp = False
    config = spec.write(tmp_path / "cntla.toml")
    result = run_remcopy("controller", "check", str(config), catalog=tmp_path / "c.db", code=2)
    assert (
        "controller.nbd_tls: off refused: nbd_listen 0.0.0.0:10809 is not a loopback address"
        in " ".join(result.stderr.split())
    )
    spec.nbd_listen = "127.0.0.1:10809"
    spec.write(tmp_path / "cntla.toml")
    run_remcopy("controller", "check", str(config), catalog=tmp_path / "c.db", code=0)


# Names from the network in the log ---------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 remcopy.nbd INFO nbd 10.0.0.1:1: export VB0000 for host hostb"


@pytest.mark.parametrize(
    "name",
    [f"x\n{FORGED}", f"x\r\n{FORGED}", f"x\u2028{FORGED}", "x\x1b[2Ky"],
    ids=["newline", "crlf", "line-separator", "terminal-escape"],
)
async def test_an_export_name_cannot_forge_a_log_line(
    tmp_path: Path, start_controller: Start, name: str
) -> None:
    """Plain NBD on loopback (the default there): a GO for a hostile name is refused
    ERR_UNKNOWN and logged escaped, on one line."""
    site = pki.Site.make(tmp_path / "pki")
    controller = await start_controller(_spec(tmp_path, site, nbd_tls=None))
    assert controller.nbd_address is not None
    client = await RawNbdClient.open(controller.nbd_address)
    try:
        await client.greeting()
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        encoded = name.encode()
        client.option(OPT_GO, struct.pack("!I", len(encoded)) + encoded + struct.pack("!H", 0))
        assert (await client.option_reply())[:2] == (OPT_GO, REP_ERR_UNKNOWN)
    finally:
        await client.close()
    host, port = controller.nbd_address
    await tool("nbdinfo", f"nbd://{host}:{port}/VA0000")  # the next client is served
    log = controller.log_path.read_text()
    refused = [line for line in log.splitlines() if "refused export" in line]
    assert len(refused) == 1, log
    assert escape_name(name) in refused[0]
    assert "\x1b" not in log and "\u2028" not in log and "\r" not in log
    assert not any(line.startswith(FORGED) for line in log.splitlines())
