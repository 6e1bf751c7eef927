# Test helpers that speak the native protocol by hand, to do what a well-behaved client never
# would: replay a nonce, reflect a challenge, skip the handshake, send garbage.
from __future__ import annotations

import asyncio
import os
import socket
import ssl
from pathlib import Path

from remcopy.controller.process import ControllerProcess
from remcopy.wire import auth, native


class RawClient:
    """A native-protocol client with every step exposed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = native.Connection(native.Side.CLIENT)

    @classmethod
    async def open(
        cls,
        address: tuple[str, int],
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> RawClient:
        reader, writer = await asyncio.open_connection(
            *address, ssl=tls, server_hostname=server_name if tls else None
        )
        return cls(reader, writer)

    @classmethod
    async def to(cls, proc: ControllerProcess, name: str, kind: str = "host") -> RawClient:
        """A raw connection to `proc` as NAME: over TLS with NAME's certificate when the
        controller speaks TLS (the certificate is issued by the session's site on demand)."""
        site = proc.site()
        tls = (
            None
            if site is None
            else site.client(name, "controller" if kind == "controller" else "host")
        )
        return await cls.open(proc.address, tls=tls, server_name=proc.name)

    async def receive(self) -> native.Message | None:
        """The next message from the controller, or None when it closed the connection."""
        while True:
            event = self.codec.next_event()
            if isinstance(event, native.Message):
                return event
            if event is native.CLOSED:
                return None
            self.codec.receive_data(await self.reader.read(65536))

    async def hello(
        self, name: str, *, nonce: bytes | None = None, role: native.PeerRole = native.PeerRole.HOST
    ) -> native.Message | None:
        self.nonce = nonce if nonce is not None else os.urandom(auth.NONCE_SIZE_BYTES)
        self.name, self.role = name, role
        self.writer.write(self.codec.send(native.Hello(name=name, nonce=self.nonce, role=role)))
        return await self.receive()

    async def prove(self, secret: bytes, challenge: native.Challenge) -> native.Message | None:
        transcript = auth.Transcript(
            role=int(self.role),
            client=self.name,
            server=challenge.name,
            client_nonce=self.nonce,
            server_nonce=challenge.nonce,
        )
        proof = auth.client_proof(secret, transcript)
        self.writer.write(self.codec.send(native.Proof(proof=proof)))
        return await self.receive()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


class NotifySocket:
    """The service manager's end of sd_notify: a bound unix datagram socket (a path, or an
    abstract name), what NOTIFY_SOCKET holds for it, and the messages that arrived."""

    TIMEOUT_S = 30.0

    def __init__(self, folder: Path, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if abstract:
            name = f"remcopy-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.value = "@" + name
        else:
            path = folder / "notify.sock"
            self.sock.bind(str(path))
            self.value = str(path)
        self.messages: list[dict[str, str]] = []

    async def receive(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.TIMEOUT_S):
            data = await loop.sock_recv(self.sock, 4096)
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    async def until(self, key: str) -> dict[str, str]:
        """The next message that sets `key` (others, such as WATCHDOG=1, are passed over)."""
        while True:
            message = await self.receive()
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()
