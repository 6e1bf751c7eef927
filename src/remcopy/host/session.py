# A host's open channels to every controller its I/O definition names.
#
# Why: scan, group operations and the workload all act *as a host*: through that host's
# paths and with that host's secret, so a controller only ever sees devices the host may
# reach. A HostSession owns one Channel per controller and closes them all on exit.
from __future__ import annotations

from remcopy import tls
from remcopy.host.channel import Channel
from remcopy.host.definition import HostDefinition
from remcopy.host.engine import EngineLimits, IOEngine


class HostSession:
    """`async with HostSession(definition) as session:` gives channels and an engine."""

    def __init__(self, definition: HostDefinition, *, limits: EngineLimits | None = None) -> None:
        self.definition = definition
        files = definition.tls_files()
        context = None if files is None else tls.client_context(files, source=definition.name)
        self.channels = {
            entry.name: Channel(
                entry.address,
                name=definition.host.name,
                secret=definition.host.secret,
                tls=context,
                server_name=entry.name,
                timeout_s=entry.timeout_s,
            )
            for entry in definition.controllers
        }
        self.engine = IOEngine(self.channels, limits)

    def __repr__(self) -> str:
        return f"<HostSession {self.definition.name} controllers={len(self.channels)}>"

    async def __aenter__(self) -> HostSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
