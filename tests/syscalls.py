# Watching a controller's system calls with strace: what a test can see of durability (kill -9
# keeps the page cache, so only a power loss would show a missing fdatasync) and of the order
# of a durable write and the message that says it is done.
from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from remcopy.controller.process import ControllerProcess


@asynccontextmanager
async def syscalls(
    proc: ControllerProcess,
    out: Path,
    *,
    calls: str = "fdatasync,fsync,msync",
    options: tuple[str, ...] = (),
) -> AsyncIterator[list[str]]:
    """Trace `calls` in every thread of the controller while the body runs (file descriptors
    named with their paths, -y); the list holds the traced lines once the body is done."""
    assert proc.process is not None
    strace = await asyncio.create_subprocess_exec(
        "strace", "-f", "-y", *options, "-e", f"trace={calls}",
        "-p", str(proc.process.pid), "-o", str(out),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert strace.stderr is not None
    lines: list[str] = []
    try:
        # strace says "Process N attached" (with its threads) once it traces them all.
        attached = await strace.stderr.readline()
        assert b"attached" in attached, attached
        yield lines
    finally:
        strace.send_signal(signal.SIGINT)  # detaches from the controller, which goes on
        await strace.wait()
        lines.extend((await asyncio.to_thread(out.read_text)).splitlines())
