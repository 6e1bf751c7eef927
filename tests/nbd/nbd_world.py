# Helpers for the NBD tests: controllers with an NBD port, the real NBD tools run as
# subprocesses, and a raw NBD client that does what a well-behaved client never would.
from __future__ import annotations

import asyncio
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from common import HOST, SECRET, MiB, site
from remcopy.controller.nbd_server import export_uri
from remcopy.controller.process import (
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
)
from remcopy.host.channel import Channel

TOOL_TIMEOUT_S = 60.0
LINK_SECRET = "nbd-link-secret-a-b"
PRIMARY_SERIAL = 64015
SECONDARY_SERIAL = 65000
PRIMARY_LSS = 0x0A
SECONDARY_LSS = 0x20


@dataclass
class ToolResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace") + self.stderr


async def tool(*argv: str, check: bool = True) -> ToolResult:
    """Run an NBD tool to its end; with check, a non-zero exit fails with its output."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TOOL_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    result = ToolResult(argv, process.returncode, stdout, stderr.decode(errors="replace"))
    if check:
        assert result.returncode == 0, (
            f"{' '.join(argv)} exited {result.returncode}:\n{result.text}"
        )
    return result


def uri(proc: ControllerProcess, volser: str) -> str:
    assert proc.nbd_address is not None, "controller started without nbd_listen"
    return export_uri(proc.nbd_address, volser)


def channel(proc: ControllerProcess) -> Channel:
    return proc.channel(name=HOST, secret=SECRET)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def digest(ch: Channel, device: int, size: int) -> str:
    """SHA-256 of a volume read through the native protocol."""
    h = hashlib.sha256()
    for offset in range(0, size, MiB):
        h.update(await ch.read(device, offset, min(MiB, size - offset)))
    return h.hexdigest()


@dataclass
class Sites:
    """A primary controller and a secondary controller, peered both ways, both exporting NBD."""

    primary: ControllerProcess
    secondary: ControllerProcess
    size_bytes: int
    volumes: int
    procs: list[ControllerProcess] = field(default_factory=list)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.running:
                await proc.kill()


async def two_sites(root: Path, *, volumes: int = 2, size_bytes: int = 8 * MiB) -> Sites:
    """Start the secondary (volumes SB0000..) then the primary (PA0000..), NBD on both."""
    port_a, port_b = free_port(), free_port()

    def spec(name: str, serial: int, lss: int, ssid: int, prefix: str, port: int, peer: PeerSpec):
        return ControllerSpec(
            site=site(),
            name=name,
            serial=serial,
            data_dir=root / name,
            listen=f"127.0.0.1:{port}",
            nbd_listen="127.0.0.1:0",
            nbd_tls="off",  # plain NBD clients, loopback
            lss={lss: ssid},
            volumes=[
                VolumeSpec(lss=lss, cca=c, volser=f"{prefix}{c:04X}", size_bytes=size_bytes)
                for c in range(volumes)
            ],
            hosts={HOST: SECRET},
            peers=[peer],
        )

    secondary_spec = spec(
        "cntlb",
        SECONDARY_SERIAL,
        SECONDARY_LSS,
        0x2B00,
        "SB",
        port_b,
        PeerSpec(
            name="cntla", serial=PRIMARY_SERIAL, address=f"127.0.0.1:{port_a}", secret=LINK_SECRET
        ),
    )
    primary_spec = spec(
        "cntla",
        PRIMARY_SERIAL,
        PRIMARY_LSS,
        0x1A00,
        "PA",
        port_a,
        PeerSpec(
            name="cntlb",
            serial=SECONDARY_SERIAL,
            address=f"127.0.0.1:{port_b}",
            secret=LINK_SECRET,
        ),
    )
    secondary = ControllerProcess(secondary_spec.write(root / "cntlb.toml"))
    primary = ControllerProcess(primary_spec.write(root / "cntla.toml"))
    sites = Sites(primary, secondary, size_bytes, volumes, procs=[secondary, primary])
    try:
        await secondary.start()
        await primary.start()
    except BaseException:
        await sites.stop()
        raise
    return sites


# A raw NBD client (proto.md), for the bad-client tests.

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_EXPORT_NAME = 1
REP_ERR_UNSUP = 2**31 + 1
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
EINVAL, ENOSPC, EPERM = 22, 28, 1


class RawNbdClient:
    """Bytes to an NBD server by hand; simple replies only (no structured replies asked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: tuple[str, int]) -> RawNbdClient:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def greeting(self) -> int:
        """Read the server's greeting; returns its handshake flags."""
        magic, option_magic, flags = struct.unpack("!QQH", await self.reader.readexactly(18))
        assert (magic, option_magic) == (NBDMAGIC, IHAVEOPT)
        return int(flags)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def client_flags(self, flags: int = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) -> None:
        self.send(struct.pack("!I", flags))

    def option(self, option: int, data: bytes = b"") -> None:
        self.send(struct.pack("!QII", IHAVEOPT, option, len(data)) + data)

    async def option_reply(self) -> tuple[int, int, bytes]:
        """(option, reply type, data) of the next option reply."""
        magic, option, reply, length = struct.unpack("!QIII", await self.reader.readexactly(20))
        assert magic == OPTION_REPLY_MAGIC
        return option, reply, await self.reader.readexactly(length)

    async def export_name(self, name: str) -> tuple[int, int]:
        """NBD_OPT_EXPORT_NAME (flags already sent with NO_ZEROES); returns (size, flags)."""
        self.option(OPT_EXPORT_NAME, name.encode())
        size, flags = struct.unpack("!QH", await self.reader.readexactly(10))
        return int(size), int(flags)

    def request(
        self, command: int, handle: int, offset: int, length: int, data: bytes = b""
    ) -> None:
        self.send(struct.pack("!IHHQQI", REQUEST_MAGIC, 0, command, handle, offset, length) + data)

    async def reply(self) -> tuple[int, int]:
        """(error, handle) of the next simple reply; a READ's data follows it."""
        magic, error, handle = struct.unpack("!IIQ", await self.reader.readexactly(16))
        assert magic == SIMPLE_REPLY_MAGIC
        return int(error), int(handle)

    async def at_eof(self) -> bool:
        """Wait until the server closes; True if it did (rather than sending more)."""
        return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
