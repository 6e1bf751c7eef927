# `remcopy volume export-uri`: the nbd:// URI of a volume, from the controller's config, and
# the controller's NBD port across a clean shutdown.
from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nbd_world import CMD_READ, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, RawNbdClient, tool

import pki
from common import MiB, controller_spec
from remcopy.controller.config import load_controller_config
from remcopy.controller.nbd_server import configured_export_uri, export_uri
from remcopy.controller.process import ControllerProcess, ControllerSpec, free_port
from remcopy.errors import InputError

Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]


async def _remcopy(*args: str, check: bool = True):
    return await tool(sys.executable, "-m", "remcopy", *args, check=check)


async def test_export_uri_prints_a_uri_the_tools_open(start_controller: Start, tmp_path: Path):
    """export-uri prints nbd://HOST:PORT/VOLSER from the config; nbdinfo opens it."""
    port = free_port()
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=2, size_bytes=2 * MiB)
    spec.nbd_listen = f"127.0.0.1:{port}"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    controller = await start_controller(spec)
    assert controller.nbd_address == ("127.0.0.1", port)
    config = str(tmp_path / "cntla.toml")
    printed = await _remcopy("volume", "export-uri", "cn0001", "--config", config)
    uri = printed.stdout.decode().strip()
    assert uri == f"nbd://127.0.0.1:{port}/CN0001"
    info = json.loads((await tool("nbdinfo", "--json", uri)).stdout)
    assert info["exports"][0]["export-size"] == 2 * MiB
    as_json = await _remcopy("volume", "export-uri", "CN0000", "--config", config, "--json")
    assert json.loads(as_json.stdout) == {
        "volser": "CN0000",
        "uri": f"nbd://127.0.0.1:{port}/CN0000",
        "host": "127.0.0.1",
        "port": port,
        "schema": 1,
    }
    other_host = await _remcopy(
        "volume", "export-uri", "CN0000", "--config", config, "--host", "::1"
    )
    assert other_host.stdout.decode().strip() == f"nbd://[::1]:{port}/CN0000"


def test_configured_export_uri_refuses_what_has_no_stable_uri(tmp_path: Path):
    """No nbd_listen, port 0, or a wildcard address without a host are refused, named."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=2 * MiB)
    spec.tls = pki.Site.make(tmp_path / "pki").controller("cntla")  # required off loopback
    cases = {
        None: "controller.nbd_listen is not set",
        "127.0.0.1:0": "controller.nbd_listen port is 0",
        "0.0.0.0:10809": "hint: pass --host",
    }
    for listen, message in cases.items():
        spec.nbd_listen = listen
        config = load_controller_config(spec.write(tmp_path / "c.toml"))
        with pytest.raises(InputError, match=message):
            configured_export_uri(config, "CN0000", source="c.toml")
    spec.nbd_listen = "0.0.0.0:10809"
    config = load_controller_config(spec.write(tmp_path / "c.toml"))
    uri, address = configured_export_uri(config, "cn0000", source="c.toml", host="nas1")
    assert (uri, address) == ("nbds://nas1:10809/CN0000", ("nas1", 10809))  # TLS off loopback


async def test_export_uri_of_an_unknown_volser_exits_2(tmp_path: Path):
    """`export-uri` of a volser the config does not hold exits 2 and lists the volsers."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=2 * MiB)
    spec.nbd_listen = "127.0.0.1:10809"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    config = str(spec.write(tmp_path / "c.toml"))
    unknown = await _remcopy("volume", "export-uri", "NOPE", "--config", config, check=False)
    assert unknown.returncode == 2
    assert "no volume NOPE in [[volumes]]: volsers=CN0000" in unknown.stderr


async def test_sigterm_with_an_nbd_client_connected_stops_cleanly(
    start_controller: Start, tmp_path: Path
):
    """SIGTERM closes NBD connections after their requests and the controller exits 0."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=2 * MiB)
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    controller = await start_controller(spec)
    assert controller.nbd_address is not None
    client = await RawNbdClient.open(controller.nbd_address)
    try:
        await client.greeting()
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        await client.export_name("CN0000")
        client.request(CMD_READ, 1, 0, 4096)
        assert await client.reply() == (0, 1)
        await client.reader.readexactly(4096)
        assert await controller.stop() == 0
        assert await client.at_eof()
    finally:
        await client.close()


async def test_ipv6_nbd_port_serves_loopback_clients(start_controller: Start, tmp_path: Path):
    """An NBD port on [::1] reports itself in the ready line and serves ::1 by default."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1, size_bytes=2 * MiB)
    spec.nbd_listen = "[::1]:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    controller = await start_controller(spec)
    assert controller.nbd_address is not None
    assert controller.nbd_address[0] == "::1"
    uri = export_uri(controller.nbd_address, "CN0000")
    assert uri.startswith("nbd://[::1]:")
    info = json.loads((await tool("nbdinfo", "--json", uri)).stdout)
    assert info["exports"][0]["export-size"] == 2 * MiB
