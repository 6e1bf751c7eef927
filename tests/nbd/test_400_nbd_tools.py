# The NBD export against the real tools: nbdinfo, qemu-img, qemu-io and nbdcopy read and
# write remcopy volumes, and what they write is what the native protocol reads back.
from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nbd_world import channel, sha256_file, tool, uri

from common import MiB, controller_spec
from remcopy.controller.nbd_server import export_uri
from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec

Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]
SIZE = 8 * MiB


@pytest.fixture
async def controller(start_controller: Start, tmp_path: Path) -> ControllerProcess:
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=3, size_bytes=SIZE)
    spec.volumes.append(VolumeSpec(lss=0x0A, cca=0x10, volser="A#1", size_bytes=1 * MiB))
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    return await start_controller(spec)


def _random_image(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


async def test_nbdinfo_lists_every_volume_with_its_size(controller: ControllerProcess):
    """`nbdinfo --list` shows one export per volume, named by volser, with the volume's size."""
    result = await tool("nbdinfo", "--list", "--json", uri(controller, ""))
    exports = {e["export-name"]: e for e in json.loads(result.stdout)["exports"]}
    assert set(exports) == {"CN0000", "CN0001", "CN0002", "A#1"}
    assert {name: e["export-size"] for name, e in exports.items()} == {
        "CN0000": SIZE,
        "CN0001": SIZE,
        "CN0002": SIZE,
        "A#1": MiB,
    }
    assert not any(e["is_read_only"] for e in exports.values())
    assert all(e["can_multi_conn"] for e in exports.values())
    assert all(e["can_flush"] and e["can_fua"] and e["can_zero"] for e in exports.values())
    # A volser with '#' is reached through its percent-encoded URI.
    one = await tool("nbdinfo", "--json", export_uri(controller.nbd_address or ("", 0), "A#1"))
    assert json.loads(one.stdout)["exports"][0]["export-size"] == MiB


async def test_qemu_img_convert_copies_an_image_in_and_out_identically(
    controller: ControllerProcess, tmp_path: Path
):
    """`qemu-img convert` writes a raw image into a volume and reads it back byte for byte."""
    source = _random_image(tmp_path / "in.img", SIZE, seed=400)
    await tool("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source),
               uri(controller, "CN0001"))  # fmt: skip
    out = tmp_path / "out.img"
    await tool("qemu-img", "convert", "-f", "raw", "-O", "raw", uri(controller, "CN0001"), str(out))
    assert sha256_file(out) == sha256_file(source)
    async with channel(controller) as ch:  # the native protocol sees the same bytes
        assert await ch.read(0x0A01, SIZE - 4096, 4096) == source.read_bytes()[-4096:]


async def test_qemu_io_random_writes_read_back_verified(controller: ControllerProcess):
    """Random-length writes at random offsets with qemu-io read back with their patterns."""
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    slot = 64 * 1024
    writes = []
    for index in rng.sample(range(1, SIZE // slot - 1), 40):  # slot 0 is zeroed below
        offset = index * slot + rng.randrange(0, slot // 2)
        writes.append((offset, rng.randint(1, slot // 2), rng.randrange(1, 256)))
    writes.append((SIZE - 512, 512, 0x5A))  # the very last sector
    target = uri(controller, "CN0002")
    write_commands = [f"write -P {p:#x} {o} {n}" for o, n, p in writes]
    write_commands.insert(len(writes) // 2, "write -z 0 4096")
    write_commands.append("flush")
    await tool("qemu-io", "-f", "raw", target, *(x for c in write_commands for x in ("-c", c)))
    read_commands = [f"read -P {p:#x} {o} {n}" for o, n, p in writes] + ["read -P 0 0 4096"]
    result = await tool(
        "qemu-io", "-f", "raw", target, *(x for c in read_commands for x in ("-c", c))
    )
    assert "verification failed" not in result.text.lower(), result.text
    assert result.text.count("read ") == len(read_commands)


async def test_nbdcopy_copies_both_ways_over_4_connections(
    controller: ControllerProcess, tmp_path: Path
):
    """nbdcopy fills a volume from a file over 4 connections (multi-conn) and copies it back
    out identically."""
    source = _random_image(tmp_path / "in.img", SIZE, seed=401)
    target = uri(controller, "CN0000")
    await tool("nbdcopy", "--threads=4", "--connections=4", str(source), target)
    out = tmp_path / "out.img"
    await tool("nbdcopy", "--threads=4", "--connections=4", target, str(out))
    assert sha256_file(out) == sha256_file(source)
    assert controller.log_text().count("export CN0000") == 4 + 4


async def test_without_multi_conn_nbdcopy_uses_one_connection(
    start_controller: Start, tmp_path: Path
):
    """With nbd_multi_conn = false the export does not advertise multi-conn, and nbdcopy copies
    in and out over one connection each way."""
    spec = controller_spec(tmp_path, "cntls", 64016, volumes=1, size_bytes=SIZE)
    spec.nbd_listen = "127.0.0.1:0"
    spec.nbd_tls = "off"  # plain NBD clients, loopback
    spec.nbd_multi_conn = False
    controller = await start_controller(spec)
    target = uri(controller, "CN0000")
    info = json.loads((await tool("nbdinfo", "--json", target)).stdout)
    assert info["exports"][0]["can_multi_conn"] is False
    source = _random_image(tmp_path / "in.img", SIZE, seed=402)
    await tool("nbdcopy", "--threads=4", "--connections=4", str(source), target)
    out = tmp_path / "out.img"
    await tool("nbdcopy", "--threads=4", "--connections=4", target, str(out))
    assert sha256_file(out) == sha256_file(source)
    assert controller.log_text().count("export CN0000") == 1 + 1 + 1
