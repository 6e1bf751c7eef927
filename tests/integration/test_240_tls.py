# The negative matrix of TLS on host and peer links (docs/security.md): a real controller
# process, each bad client refused with a clear error, the refusal logged once (escaped),
# nothing changed, and the next legitimate client served.
from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common import HOST, SECRET, controller_spec, site
from helpers import RawClient
from remcopy import pki, tls
from remcopy.controller.process import ControllerProcess, ControllerSpec, PeerSpec
from remcopy.errors import AuthenticationFailed, BrokenResourceError, RemcopyError
from remcopy.host.channel import Channel
from remcopy.states import CopyMode
from remcopy.wire import auth, native
from remcopy.wire.native import PeerRole

Start = Callable[..., Awaitable[ControllerProcess]]
PEER = "cntlp"
PEER_SECRET = "peer-link-secret-16"
BLOCK = b"\x5a" * 512


def _spec(tmp_path: Path, *, plain: bool = False) -> ControllerSpec:
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.peers.append(PeerSpec(name=PEER, serial=64099, address="127.0.0.1:9", secret=PEER_SECRET))
    spec.settings["auth_failures_max"] = 1000  # every case comes from 127.0.0.1
    if plain:
        spec.site = None
    return spec


async def _served(proc: ControllerProcess) -> dict[str, int]:
    """A legitimate host is served, the volume holds what it held; the counters."""
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        assert await channel.read(0x0A00, 0, len(BLOCK)) == BLOCK
        status = await channel.status()
    counters = status["counters"]
    assert isinstance(counters, dict)
    return counters


async def _prepared(start: Start, tmp_path: Path, *, plain: bool = False) -> ControllerProcess:
    proc = await start(_spec(tmp_path, plain=plain))
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        await channel.write(0x0A00, 0, BLOCK)
    return proc


def _context(
    files: tls.TlsFiles | None, *, ca: Path | None = None, cert: bool = True
) -> ssl.SSLContext:
    """A client context: `files`' certificate (none when cert=False), trusting `ca`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(ca or site().ca))
    if cert and files is not None:
        context.load_cert_chain(str(files.cert), str(files.key))
    return context


def _expired(folder: Path, name: str, kind: pki.Kind) -> tls.TlsFiles:
    """NAME's certificate from the session's CA, valid for one day a year ago."""
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
    out = folder / "expired"
    files = pki.issue(site().folder, name, kind=kind, days=1, not_before=start, out=out)
    return tls.TlsFiles(ca=site().ca, cert=files.cert, key=files.key)


def _other_ca(folder: Path, name: str, kind: pki.Kind) -> tls.TlsFiles:
    return pki.Site(folder / "other-ca").files(name, kind)


# (id, role, name in HELLO, how the client context is made, what the client is told,
#  what the controller logs once)
ClientCase = tuple[str, PeerRole, str, Callable[[Path], ssl.SSLContext], str, str]


def _cases(role: PeerRole) -> list[ClientCase]:
    kind: pki.Kind = "host" if role is PeerRole.HOST else "controller"
    other: pki.Kind = "controller" if kind == "host" else "host"
    me = HOST if role is PeerRole.HOST else PEER
    stranger = "hostq" if role is PeerRole.HOST else "cntlq"
    return [
        (
            "no-certificate",
            role,
            me,
            lambda tmp: _context(None, cert=False),
            "did not accept this TLS client",
            "TLS handshake failed: no client certificate",
        ),
        (
            "expired",
            role,
            me,
            lambda tmp: _context(_expired(tmp, me, kind)),
            "did not accept this TLS client",
            "TLS handshake failed: certificate refused: certificate has expired",
        ),
        (
            "other-ca",
            role,
            me,
            lambda tmp: _context(_other_ca(tmp, me, kind)),
            "did not accept this TLS client",
            "TLS handshake failed: certificate refused: unable to get local issuer certificate",
        ),
        (
            "wrong-name",
            role,
            me,
            lambda tmp: _context(site().files("hostz" if kind == "host" else "cntlz", kind)),
            "authentication failed",
            "certificate names",
        ),
        (
            "wrong-kind",
            role,
            me,
            lambda tmp: _context(_kind_swapped(tmp, me, other)),
            "authentication failed",
            "certificate names",
        ),
        (
            "name-not-configured",
            role,
            stranger,
            lambda tmp: _context(site().files(stranger, kind)),
            "authentication failed",
            "the certificate's name is not in controller cntla's config",
        ),
    ]


def _kind_swapped(tmp: Path, name: str, kind: pki.Kind) -> tls.TlsFiles:
    """NAME's certificate of the other kind (a host's certificate offered by a peer...)."""
    files = pki.issue(site().folder, name, kind=kind, out=tmp / "swapped", force=True)
    return tls.TlsFiles(ca=site().ca, cert=files.cert, key=files.key)


CASES = _cases(PeerRole.HOST) + _cases(PeerRole.PEER)


@pytest.mark.parametrize(
    ("case", "role", "name", "context", "told", "logged"),
    CASES,
    ids=[f"{'host' if c[1] is PeerRole.HOST else 'peer'}-{c[0]}" for c in CASES],
)
async def test_a_bad_client_certificate_is_refused(
    start_controller: Start, tmp_path: Path, case, role, name, context, told, logged
):
    """No, expired, other-CA, wrong-name, wrong-kind and unconfigured client certificates,
    on the host and on the peer role: refused, logged once, nothing changed, next served."""
    proc = await _prepared(start_controller, tmp_path)
    before = await _served(proc)
    secret = SECRET if role is PeerRole.HOST else PEER_SECRET
    channel = Channel(
        proc.address,
        name=name,
        secret=secret,
        role=role,
        tls=context(tmp_path),
        server_name=proc.name,
        connect_timeout_s=10,
    )
    with pytest.raises(AuthenticationFailed) as info:
        async with channel:
            await channel.write(0x0A00, 0, b"\0" * len(BLOCK))
    assert told in str(info.value)
    after = await _served(proc)  # the refusal was logged before this client was served
    assert after["writes"] == before["writes"]
    assert after["auth_refused"] == before["auth_refused"] + 1
    log = proc.log_text()
    refused = [line for line in log.splitlines() if "refused" in line]
    assert len(refused) == 1, log
    assert logged in refused[0], refused


@pytest.mark.parametrize("role", [PeerRole.HOST, PeerRole.PEER], ids=["host", "peer"])
async def test_plain_tcp_to_a_tls_listener_is_refused(start_controller: Start, tmp_path, role):
    """A client without TLS: the controller logs 'not a TLS client hello' once; the client is
    told the controller closed at once and why that may be."""
    proc = await _prepared(start_controller, tmp_path)
    name, secret = (HOST, SECRET) if role is PeerRole.HOST else (PEER, PEER_SECRET)
    with pytest.raises(BrokenResourceError, match="a TLS controller closes a plain-TCP client"):
        async with Channel(proc.address, name=name, secret=secret, role=role):
            pass
    await _served(proc)
    refused = [line for line in proc.log_text().splitlines() if "refused" in line]
    assert len(refused) == 1 and "not a TLS client hello" in refused[0], refused


@pytest.mark.parametrize("role", [PeerRole.HOST, PeerRole.PEER], ids=["host", "peer"])
async def test_tls_to_a_plain_listener_is_refused(start_controller: Start, tmp_path, role):
    """A TLS client at a plain_tcp controller: a clear TLS error on the client, one log line
    on the controller, which serves the next (plain) client."""
    proc = await _prepared(start_controller, tmp_path, plain=True)
    name, secret = (HOST, SECRET) if role is PeerRole.HOST else (PEER, PEER_SECRET)
    kind: pki.Kind = "host" if role is PeerRole.HOST else "controller"
    channel = Channel(
        proc.address,
        name=name,
        secret=secret,
        role=role,
        tls=site().client(name, kind),
        server_name=proc.name,
    )
    with pytest.raises(RemcopyError, match=r"TLS handshake with controller cntla .* failed"):
        async with channel:
            pass
    await _served(proc)
    refused = [line for line in proc.log_text().splitlines() if "refused" in line]
    assert len(refused) == 1, refused
    assert "a TLS client hello: this controller runs with plain_tcp" in refused[0]


@pytest.mark.parametrize(
    "server",
    ["other-ca", "wrong-name"],
)
async def test_a_host_refuses_a_controller_whose_certificate_does_not_prove_it(
    start_controller: Start, tmp_path, server
):
    """The client checks the controller too: a certificate from another CA, or one that names
    another controller, fails the TLS handshake on the client's side, before any secret."""
    spec = _spec(tmp_path)
    if server == "other-ca":
        spec.site = pki.Site(tmp_path / "rogue-ca")
    else:
        spec.name = "cntlx"  # its certificate names cntlx; the host expects cntla
    proc = await start_controller(spec)
    channel = Channel(
        proc.address,
        name=HOST,
        secret=SECRET,
        tls=site().client(HOST),
        server_name="cntla",
    )
    with pytest.raises(AuthenticationFailed, match="certificate refused") as info:
        async with channel:
            pass
    assert "TLS handshake with controller cntla" in str(info.value)
    assert "authenticated" not in proc.log_text()


# The handshake without an oracle...


async def _challenge_bytes(proc: ControllerProcess, name: str) -> tuple[bytes, RawClient]:
    """The raw bytes the controller sends for a HELLO as NAME, before any proof."""
    raw = await RawClient.to(proc, HOST)
    raw.nonce = os.urandom(auth.NONCE_SIZE_BYTES)
    raw.name, raw.role = name, PeerRole.HOST
    raw.writer.write(raw.codec.send(native.Hello(name=name, nonce=raw.nonce)))
    data = await raw.reader.readexactly(16 + 2 + auth.NONCE_SIZE_BYTES + 2 + len("cntla"))
    raw.codec.receive_data(data)
    return data, raw


def _transcript(raw: RawClient, challenge: native.Challenge) -> auth.Transcript:
    return auth.Transcript(
        role=int(PeerRole.HOST),
        client=HOST,
        server="cntla",
        client_nonce=raw.nonce,
        server_nonce=challenge.nonce,
    )


@pytest.mark.parametrize("links", ["tls", "plain_tcp"])
async def test_no_byte_derived_from_a_secret_leaves_before_the_clients_proof(
    start_controller: Start, tmp_path, links
):
    """Two controllers that know host hosta by different secrets send challenges that differ
    only in their random nonce; neither holds the old server proof; a wrong proof gets an
    error, and only a right one gets WELCOME with the controller's proof."""
    challenges = []
    procs = []
    for i, secret in enumerate((SECRET, "another-secret-of-hosta")):
        spec = controller_spec(tmp_path / str(i), "cntla", 64015, hosts={HOST: secret})
        if links == "plain_tcp":
            spec.site = None
        proc = await start_controller(spec)
        procs.append(proc)
        data, raw = await _challenge_bytes(proc, HOST)
        challenge = raw.codec.next_event()
        assert isinstance(challenge, native.Challenge)
        nonce_at = 16 + 2
        assert data[nonce_at : nonce_at + 32] == challenge.nonce
        challenges.append((data[:nonce_at] + data[nonce_at + 32 :], challenge, raw, secret))
    # Everything but the nonce is the same whatever the secret: nothing came from it.
    assert challenges[0][0] == challenges[1][0]
    for shape, challenge, raw, secret in challenges:
        transcript = _transcript(raw, challenge)
        assert auth.server_proof(secret.encode(), transcript) not in shape + challenge.nonce
    # A wrong proof: an error frame, no proof of the controller.
    shape, challenge, raw, secret = challenges[0]
    reply = await raw.prove(b"wrong-secret-guess", challenge)
    assert isinstance(reply, native.ErrorReply)
    assert reply.code == AuthenticationFailed.code
    await raw.close()
    # The right proof: WELCOME carries the controller's proof over the same transcript.
    shape, challenge, raw, secret = challenges[1]
    welcome = await raw.prove(secret.encode(), challenge)
    assert isinstance(welcome, native.Welcome)
    proof = auth.server_proof(secret.encode(), _transcript(raw, challenge))
    assert auth.proofs_equal(welcome.proof, proof)
    await raw.close()


async def test_an_unknown_name_gets_the_same_challenge_as_a_known_one(
    start_controller: Start, tmp_path
):
    """On a plain-TCP controller an unknown host name is challenged like a known one and
    refused only at its proof, with the same message: nothing says which names exist."""
    proc = await _prepared(start_controller, tmp_path, plain=True)
    known, raw_known = await _challenge_bytes(proc, HOST)
    unknown, raw_unknown = await _challenge_bytes(proc, "hostq")
    assert len(known) == len(unknown)
    assert known[:18] == unknown[:18] and known[50:] == unknown[50:]
    errors = []
    for raw in (raw_known, raw_unknown):
        challenge = raw.codec.next_event()
        assert isinstance(challenge, native.Challenge)
        reply = await raw.prove(b"a-guess", challenge)
        assert isinstance(reply, native.ErrorReply)
        errors.append((reply.code, reply.message))
        await raw.close()
    assert errors[0] == errors[1]
    assert HOST not in errors[0][1]
    await _served(proc)


async def test_failed_handshakes_are_limited_per_address(start_controller: Start, tmp_path):
    """After auth_failures_max failures within the window, the address is refused at
    accept (even with the right secret), logged once for the period, counted in status."""
    spec = _spec(tmp_path)
    spec.settings["auth_failures_max"] = 3
    proc = await start_controller(spec)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            async with proc.channel(name=HOST, secret="a-wrong-secret-guess"):
                pass
    for _ in range(2):  # the right secret too: the address is refused before TLS
        with pytest.raises(RemcopyError):
            async with proc.channel(name=HOST, secret=SECRET):
                pass
    log = proc.log_text()
    assert log.count("refusing connections from 127.0.0.1") == 1, log
    assert log.count("wrong secret") == 3


# Peer links between real controllers...


@pytest.mark.parametrize("bad", ["expired", "other-ca", "host-kind"])
async def test_a_primary_whose_certificate_is_refused_cannot_mirror(
    start_controller: Start, tmp_path: Path, bad: str
):
    """A primary controller dials its peer with a certificate the peer refuses (expired,
    another CA's, a host's): the establish fails naming the link, the secondary logs the
    refusal once, nothing is paired there, and it serves the next legitimate client."""
    secondary = controller_spec(tmp_path, "cntlb", 64016, lss=0x20, ssid=0x2B00, prefix="SB")
    primary = controller_spec(tmp_path, "cntla", 64015)
    secondary.peers.append(
        PeerSpec(name="cntla", serial=64015, address="127.0.0.1:9", secret=PEER_SECRET)
    )
    sec = await start_controller(secondary)
    primary.peers.append(
        PeerSpec(name="cntlb", serial=64016, address=sec.endpoint, secret=PEER_SECRET)
    )
    config = primary.write(tmp_path / "cntla.toml")
    files = {
        "expired": lambda: _expired(tmp_path, "cntla", "controller"),
        "other-ca": lambda: _other_ca(tmp_path, "cntla", "controller"),
        "host-kind": lambda: _kind_swapped(tmp_path, "cntla", "host"),
    }[bad]()
    good = site().files("cntla", "controller")
    text = config.read_text()
    text = text.replace(str(good.cert), str(files.cert)).replace(str(good.key), str(files.key))
    config.write_text(text)
    prim = await ControllerProcess(config).start()
    try:
        # The test's host does not check the primary's (bad) certificate, to reach it at all.
        unchecked = _context(site().files(HOST, "host"))
        unchecked.check_hostname = False
        unchecked.verify_mode = ssl.CERT_NONE
        host = Channel(prim.address, name=HOST, secret=SECRET, tls=unchecked, server_name="x")
        async with host as channel:
            item = native.PairItem(
                device=0x0A00,
                peer_serial=64016,
                peer_device=0x2000,
                mode=CopyMode.SYNC,
            )
            reply = await channel.pair_op(native.PairOp.ESTABLISH, (item,))
        [result] = reply.results
        assert result.code != 0
        assert "cntlb" in result.message
    finally:
        await prim.kill()
    async with sec.channel(name=HOST, secret=SECRET) as channel:  # the next one is served
        [status] = await channel.query((0x2000,))
        assert status.state.name == "SIMPLEX"
    log = sec.log_text()
    refused = [line for line in log.splitlines() if "refused" in line]
    assert refused, log
    expected = {
        "expired": "certificate has expired",
        "other-ca": "unable to get local issuer certificate",
        "host-kind": "certificate names host 'cntla', not controller 'cntla'",
    }[bad]
    assert expected in refused[0]
    assert "authenticated peer" not in log


async def test_a_primary_refuses_a_secondary_whose_certificate_it_cannot_verify(
    start_controller: Start, tmp_path: Path
):
    """The dialling controller checks its peer: a secondary whose certificate comes from
    another CA is refused before any secret is used; the establish names the link."""
    secondary = controller_spec(tmp_path, "cntlb", 64016, lss=0x20, ssid=0x2B00, prefix="SB")
    secondary.site = pki.Site(tmp_path / "rogue-ca")
    secondary.peers.append(
        PeerSpec(name="cntla", serial=64015, address="127.0.0.1:9", secret=PEER_SECRET)
    )
    sec = await start_controller(secondary)
    primary = controller_spec(tmp_path, "cntla", 64015)
    primary.peers.append(
        PeerSpec(name="cntlb", serial=64016, address=sec.endpoint, secret=PEER_SECRET)
    )
    prim = await start_controller(primary)
    async with prim.channel(name=HOST, secret=SECRET) as channel:
        item = native.PairItem(
            device=0x0A00, peer_serial=64016, peer_device=0x2000, mode=CopyMode.SYNC
        )
        [result] = (await channel.pair_op(native.PairOp.ESTABLISH, (item,))).results
        assert result.code == AuthenticationFailed.code
        assert "TLS handshake with controller cntlb" in result.message
        assert "certificate refused" in result.message
        [status] = await channel.query((0x0A00,))
        assert status.state.name == "SIMPLEX"
    assert "authenticated peer" not in sec.log_text()
