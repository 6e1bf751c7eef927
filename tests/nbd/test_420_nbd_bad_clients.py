# Hostile and careless NBD clients get the spec's answers, and the controller goes on serving:
# garbage in the handshake, oversize requests, I/O past the end, addresses not allowed.
from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nbd_world import (
    CMD_DISC,
    CMD_READ,
    CMD_WRITE,
    EINVAL,
    ENOSPC,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    IHAVEOPT,
    REP_ERR_UNSUP,
    RawNbdClient,
    tool,
    uri,
)

from common import MiB, controller_spec
from remcopy.controller.config import load_controller_config
from remcopy.controller.nbd_server import CONNECTIONS_MAX
from remcopy.controller.process import ControllerProcess, ControllerSpec
from remcopy.errors import ConfigError
from remcopy.wire.nbd import REQUEST_SIZE_MAX_BYTES

Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]
SIZE = 64 * MiB  # over REQUEST_SIZE_MAX_BYTES, so an oversize request is inside it


@pytest.fixture
async def controller(start_controller: Start, tmp_path: Path) -> ControllerProcess:
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=SIZE)
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    return await start_controller(spec)


async def _still_serving(controller: ControllerProcess) -> None:
    result = await tool("nbdinfo", "--list", "--json", uri(controller, ""))
    assert b'"CN0000"' in result.stdout


async def _connected(controller: ControllerProcess) -> RawNbdClient:
    assert controller.nbd_address is not None
    client = await RawNbdClient.open(controller.nbd_address)
    await client.greeting()
    return client


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GARBAGE!" * 8, id="bad-client-flags"),
        pytest.param(struct.pack("!I", FLAG_FIXED_NEWSTYLE) + b"\xff" * 40, id="bad-option-magic"),
        pytest.param(struct.pack("!IQII", FLAG_FIXED_NEWSTYLE, IHAVEOPT, 7, 3), id="cut-short"),
    ],
)
async def test_garbage_during_handshake_is_dropped_and_the_controller_goes_on(
    controller: ControllerProcess, garbage: bytes
):
    """Garbage in the handshake ends that connection (a hard disconnect); others are served."""
    client = await _connected(controller)
    try:
        client.send(garbage)
        client.writer.write_eof()  # the cut-short message is never completed
        assert await client.at_eof()
    finally:
        await client.close()
    await _still_serving(controller)
    assert "nbd 127.0.0.1:" in controller.log_text()


async def test_unknown_option_is_answered_unsupported_and_the_handshake_goes_on(
    controller: ControllerProcess,
):
    """An unknown option gets NBD_REP_ERR_UNSUP; the client can still choose an export."""
    client = await _connected(controller)
    try:
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        client.option(99, b"whatever")
        option, reply, message = await client.option_reply()
        assert (option, reply) == (99, REP_ERR_UNSUP)
        assert message == b"option not supported: unknown (99)"
        size, _flags = await client.export_name("CN0000")
        assert size == SIZE
    finally:
        await client.close()


async def test_oversize_and_out_of_range_requests_get_the_specs_errors(
    controller: ControllerProcess,
):
    """Oversize READ/WRITE get EINVAL, a write past the end ENOSPC, a read past the end EINVAL;
    the connection stays in step and the last sector reads fine."""
    client = await _connected(controller)
    try:
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        await client.export_name("CN0000")
        too_big = REQUEST_SIZE_MAX_BYTES + 1
        client.request(CMD_READ, 1, 0, too_big)
        assert await client.reply() == (EINVAL, 1)
        # The payload of a refused write goes past (discarded unbuffered) before the error.
        client.request(CMD_WRITE, 2, 0, too_big, bytes(too_big))
        assert await client.reply() == (EINVAL, 2)
        client.request(CMD_WRITE, 3, SIZE - 1, 2, b"xy")
        assert await client.reply() == (ENOSPC, 3)
        client.request(CMD_READ, 4, SIZE - 1, 2)
        assert await client.reply() == (EINVAL, 4)
        client.request(CMD_READ, 5, 2**64 - 512, 512)
        assert await client.reply() == (EINVAL, 5)
        client.request(CMD_WRITE, 6, SIZE - 512, 512, b"L" * 512)
        assert await client.reply() == (0, 6)
        client.request(CMD_READ, 7, SIZE - 512, 512)
        assert await client.reply() == (0, 7)
        assert await client.reader.readexactly(512) == b"L" * 512
        client.request(CMD_DISC, 8, 0, 0)
        assert await client.at_eof()
    finally:
        await client.close()
    await _still_serving(controller)


async def test_client_that_vanishes_mid_request_leaves_the_controller_serving(
    controller: ControllerProcess,
):
    """A client that closes in the middle of a write's payload is dropped; others are served."""
    client = await _connected(controller)
    try:
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        await client.export_name("CN0000")
        client.request(CMD_WRITE, 1, 0, 65536, b"half" * 1000)
        client.writer.write_eof()
        assert await client.at_eof()
    finally:
        await client.close()
    await _still_serving(controller)


async def test_address_outside_the_allow_list_is_refused_and_logged(
    start_controller: Start, tmp_path: Path
):
    """A client address outside controller.nbd_allow is disconnected before the greeting."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=SIZE)
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    spec.nbd_allow = ["10.0.0.0/8", "::1"]
    controller = await start_controller(spec)
    refused = await tool("nbdinfo", "--list", uri(controller, ""), check=False)
    assert refused.returncode != 0
    assert "not in controller.nbd_allow (10.0.0.0/8, ::1/128)" in controller.log_text()


def test_nbd_allow_with_a_bad_network_is_a_config_error(tmp_path: Path):
    """A malformed nbd_allow entry is named with its key path and value."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=SIZE)
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    spec.nbd_allow = ["127.0.0.1/8", "not-an-address"]
    path = spec.write(tmp_path / "bad.toml")
    with pytest.raises(ConfigError) as info:
        load_controller_config(path)
    message = str(info.value)
    assert "controller.nbd_allow[0]" in message and "has host bits set" in message
    assert "controller.nbd_allow[1]" in message and "'not-an-address'" in message


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_pipelined_large_reads_keep_controller_memory_bounded(
    controller: ControllerProcess,
):
    """48 pipelined 32 MiB reads (1.5 GiB) from a slow reader leave peak memory bounded."""
    assert controller.process is not None
    before = _peak_rss_bytes(controller.process.pid)
    client = await _connected(controller)
    try:
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        await client.export_name("CN0000")
        count = 48
        for handle in range(count):
            client.request(CMD_READ, handle, 0, REQUEST_SIZE_MAX_BYTES)
        for handle in range(count):
            assert await client.reply() == (0, handle)
            await client.reader.readexactly(REQUEST_SIZE_MAX_BYTES)
    finally:
        await client.close()
    grown = _peak_rss_bytes(controller.process.pid) - before
    assert grown < 160 * MiB, f"controller peak memory grew by {grown / MiB:.0f} MiB"


async def test_connections_past_the_limit_are_closed_and_logged(
    start_controller: Start, tmp_path: Path
):
    """The connection after CONNECTIONS_MAX open ones is closed at once; the others work.
    Each has chosen its export (a client not known yet counts against the smaller caps on
    unauthenticated connections, test_250)."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=SIZE)
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    controller = await start_controller(spec)
    clients = []
    for _ in range(CONNECTIONS_MAX):
        client = await _connected(controller)
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        assert (await client.export_name("CN0000"))[0] == SIZE
        clients.append(client)
    try:
        assert controller.nbd_address is not None
        extra = await RawNbdClient.open(controller.nbd_address)
        assert await extra.at_eof()
        await extra.close()
        first = clients[0]
        first.request(CMD_READ, 1, 0, 512)
        assert await first.reply() == (0, 1)
    finally:
        for client in clients:
            await client.close()
    assert f"already {CONNECTIONS_MAX} connections (the limit)" in controller.log_text()
