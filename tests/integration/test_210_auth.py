# Who may talk to a controller: hosts prove they know their secret before anything is done
# for them, and every refusal is a clear error frame plus a log line, while others go on.
# Each handshake test runs on a TLS controller (certificate + secret) and on a plain-TCP
# loopback controller (secret only): the handshake is the same on both.
from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest

from common import HOST, SECRET, controller_spec
from helpers import RawClient
from remcopy.controller.process import ControllerProcess, ControllerSpec
from remcopy.errors import (
    AuthenticationFailed,
    DeviceNotAllowed,
    RemoteProtocolError,
    VersionMismatch,
    error_from_wire,
)
from remcopy.wire import native

Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]


@pytest.fixture(params=["tls", "plain_tcp"])
async def controller(request, start_controller: Start, tmp_path) -> ControllerProcess:
    spec = controller_spec(
        tmp_path, "cntla", 64015, hosts={HOST: SECRET, "hostb": "hostb-secret-key"}
    )
    if request.param == "plain_tcp":
        spec.site = None
    proc = await start_controller(spec)
    assert proc.links == request.param
    return proc


def _names_no_host(err: Exception) -> None:
    """A refusal tells the client nothing about which hosts exist."""
    assert "authentication failed" in str(err)
    assert HOST not in str(err) and "hostb" not in str(err)


async def _still_serves(proc: ControllerProcess) -> None:
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        assert len(await channel.identify()) == 4


def _error(msg: native.Message | None) -> Exception:
    assert isinstance(msg, native.ErrorReply), msg
    return error_from_wire(msg.code, msg.message)


async def test_unknown_host_is_refused_and_logged(controller: ControllerProcess):
    """A host missing from the config is refused with an error that names no host, and one
    escaped log line says why."""
    with pytest.raises(AuthenticationFailed) as info:
        async with controller.channel(name="intruder", secret="whatever-secret"):
            pass
    _names_no_host(info.value)
    log = controller.log_text()
    why = (
        "certificate's name is not in controller cntla"
        if controller.links == "tls"
        else ("host intruder: unknown name")
    )
    assert log.count(why) == 1, log
    await _still_serves(controller)


async def test_wrong_secret_is_refused_and_the_controller_proves_nothing(
    controller: ControllerProcess,
):
    """The client proves first: with a wrong secret it is refused, and nothing it received
    before (the challenge) was computed from the secret."""
    with pytest.raises(AuthenticationFailed) as info:
        async with controller.channel(name=HOST, secret="not-the-secret"):
            pass
    _names_no_host(info.value)
    raw = await RawClient.to(controller, HOST)
    challenge = await raw.hello(HOST)
    assert isinstance(challenge, native.Challenge)
    err = _error(await raw.prove(b"not-the-secret", challenge))
    assert isinstance(err, AuthenticationFailed)
    assert await raw.receive() is None  # and the connection is closed
    await raw.close()
    assert controller.log_text().count("host hosta: wrong secret") == 2
    await _still_serves(controller)


async def test_replayed_challenge_is_refused(controller: ControllerProcess):
    """A HELLO that reuses a nonce the controller has seen is refused."""
    first = await RawClient.to(controller, HOST)
    challenge = await first.hello(HOST)
    assert isinstance(challenge, native.Challenge)
    assert isinstance(await first.prove(SECRET.encode(), challenge), native.Welcome)
    replay = await RawClient.to(controller, HOST)
    err = _error(await replay.hello(HOST, nonce=first.nonce))
    assert isinstance(err, AuthenticationFailed)
    _names_no_host(err)
    await first.close()
    await replay.close()
    assert controller.log_text().count("replayed challenge refused") == 1
    await _still_serves(controller)


async def test_reflected_challenge_is_refused(controller: ControllerProcess):
    """A client that sends the controller's own nonce back as its challenge is refused."""
    first = await RawClient.to(controller, HOST)
    challenge = await first.hello(HOST)
    assert isinstance(challenge, native.Challenge)
    mirror = await RawClient.to(controller, HOST)
    err = _error(await mirror.hello(HOST, nonce=challenge.nonce))
    assert isinstance(err, AuthenticationFailed)
    _names_no_host(err)
    await first.close()
    await mirror.close()
    assert controller.log_text().count("reflected challenge refused") == 1
    await _still_serves(controller)


async def test_nothing_is_done_before_authentication(controller: ControllerProcess):
    """A request sent instead of HELLO is refused and never executed."""
    raw = await RawClient.to(controller, HOST)
    reader, writer = raw.reader, raw.writer
    frame = native.encode(
        native.WriteRequest(
            request_id=1, device=0x0A00, offset=0, timestamp_ns=1, data=b"\xff" * 512
        )
    )
    writer.write(frame)
    codec = native.Connection(native.Side.CLIENT)
    codec.send(native.Hello(name="x", nonce=b"\0" * 32))  # expect handshake frames back
    codec.receive_data(await reader.read(65536))
    err = _error(codec.next_event())  # type: ignore[arg-type]
    assert isinstance(err, RemoteProtocolError)
    assert "before authentication" in str(err)
    writer.close()
    async with controller.channel(name=HOST, secret=SECRET) as channel:
        assert await channel.read(0x0A00, 0, 512) == bytes(512)
    assert "before authentication" in controller.log_text()


async def test_other_protocol_version_is_refused_naming_both(controller: ControllerProcess):
    """A HELLO of another protocol version is answered with both versions named."""
    raw = await RawClient.to(controller, HOST)
    writer = raw.writer
    body = struct.pack("!HB32s", 7, 1, b"\1" * 32) + struct.pack("!H", 5) + b"hosta"
    writer.write(struct.pack("!IBBHQ", 12 + len(body), native.Hello.KIND, 0, 0, 0) + body)
    await writer.drain()
    raw.codec.send(native.Hello(name="x", nonce=b"\0" * 32))
    err = _error(await raw.receive())
    assert isinstance(err, VersionMismatch)
    assert "version 7" in str(err)
    assert f"version {native.PROTOCOL_VERSION}" in str(err)
    await raw.close()
    await _still_serves(controller)


async def test_garbage_instead_of_hello_is_refused(controller: ControllerProcess):
    """Random bytes get a closed connection (after a protocol error frame, on plain TCP; the
    TLS handshake fails first on a TLS listener) and one log line; others go on."""
    reader, writer = await asyncio.open_connection(*controller.address)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    if controller.links == "plain_tcp":
        raw = RawClient(reader, writer)
        err = _error(await raw.receive())  # the controller answers with an error frame...
        assert isinstance(err, RemoteProtocolError), err
        assert await raw.receive() is None  # ...then closes
        writer.close()
        await _still_serves(controller)  # after the refusal was logged (one loop, in order)
        assert "refused" in controller.log_text()
    else:
        assert await reader.read() == b""  # the TLS handshake fails: closed, no answer
        writer.close()
        await _still_serves(controller)
        assert controller.log_text().count("TLS handshake failed: not a TLS client hello") == 1


async def test_host_reaches_only_its_granted_lss(start_controller: Start, tmp_path):
    """A host whose entry names LSSs is refused devices outside them, with a log line."""
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.lss[0x0B] = 0x1B00
    spec.host_lss[HOST] = [0x0B]
    config = spec.write(tmp_path / "cntla.toml")
    assert 'lss = ["0B"]' in config.read_text()
    proc = ControllerProcess(config)
    await proc.start()
    try:
        async with proc.channel(name=HOST, secret=SECRET) as channel:
            with pytest.raises(DeviceNotAllowed, match="not in the host's grant"):
                await channel.read(0x0A00, 0, 1)
            assert await channel.identify() == ()
        assert "not in the host's grant" in proc.log_text()
    finally:
        await proc.kill()
