# `remcopy demo`: builds a small world in a folder, starts real controllers, and shows it work.
#
# For now the demo shows the controller core: two controllers started from generated configs,
# every volume identified, data written across track boundaries and read back, a controller
# restarted and the data still there. The full disaster-recovery drill replaces it as the
# remote-copy and group layers land.
from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import tempfile
import time
from pathlib import Path

import click

from remcopy import aio
from remcopy.cli.output import say, table
from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec
from remcopy.errors import RemcopyError
from remcopy.host.channel import Channel

HOST, SECRET = "demohost", "demo-secret-hosta"


class DemoFailed(RemcopyError):
    """a demo check failed"""


def _specs(root: Path, volumes: int) -> list[ControllerSpec]:
    out = []
    for i, (name, serial, ssid) in enumerate((("cntla", 64015, 0x1A00), ("cntlb", 64016, 0x2B00))):
        out.append(
            ControllerSpec(
                name=name,
                serial=serial,
                data_dir=root / name,
                lss={0x0A: ssid},
                volumes=[
                    VolumeSpec(lss=0x0A, cca=c, volser=f"D{i}{c:04X}", size_bytes=8 << 20)
                    for c in range(volumes)
                ],
                hosts={HOST: SECRET},
            )
        )
    return out


async def _run(root: Path, volumes: int, seed: int) -> list[tuple[str, str, str]]:
    steps: list[tuple[str, str, str]] = []

    def step(name: str, started: float, result: str) -> None:
        took = f"{time.perf_counter() - started:.3f}"
        steps.append((name, took, result))
        say(f"  {name:<36} {took:>6} s  {result}")

    rng = random.Random(seed)
    say(f"remcopy demo in {root} (seed {seed})")
    procs = [
        ControllerProcess(spec.write(root / f"{spec.name}.toml")) for spec in _specs(root, volumes)
    ]
    try:
        t = time.perf_counter()
        await asyncio.gather(*(p.start() for p in procs))
        step("start 2 controllers", t, " ".join(p.endpoint for p in procs))
        images: dict[tuple[int, int], bytearray] = {}  # (serial, device) -> expected bytes
        for proc in procs:
            async with Channel(proc.address, name=HOST, secret=SECRET) as channel:
                t = time.perf_counter()
                ids = await channel.identify()
                step(
                    f"identify {proc.name}",
                    t,
                    f"{len(ids)} volumes, "
                    f"{ids[0].serial}:{ids[0].ssid:04X}:{ids[0].device >> 8:02X}:"
                    f"{ids[0].device & 0xFF:02X}={ids[0].volser} ...",
                )
                t = time.perf_counter()
                writes = []
                for _ in range(200):
                    ident = rng.choice(ids)
                    length = rng.randint(1, 200_000)
                    offset = rng.randrange(0, ident.capacity_bytes - length)
                    data = rng.randbytes(length)
                    # One connection applies requests in the order sent, so the model applies
                    # them in that order too.
                    writes.append(channel.write(ident.device, offset, data))
                    image = images.setdefault(
                        (proc.serial, ident.device), bytearray(ident.capacity_bytes)
                    )
                    image[offset : offset + length] = data
                await asyncio.gather(*writes)
                await channel.flush()
                step(f"write 200 random extents to {proc.name}", t, "acked and flushed")
        t = time.perf_counter()
        await procs[0].stop()
        await procs[0].start()
        step(f"restart {procs[0].name}", t, f"ready again at {procs[0].endpoint}")
        t = time.perf_counter()
        bad = []
        for proc in procs:
            async with Channel(proc.address, name=HOST, secret=SECRET) as channel:
                for (serial, device), image in images.items():
                    if serial != proc.serial:
                        continue
                    back = await channel.read(device, 0, len(image))
                    if hashlib.sha256(back).digest() != hashlib.sha256(image).digest():
                        bad.append(f"{serial}:{device:04X}")
        if bad:
            raise DemoFailed(f"demo: volumes read back differently: {', '.join(bad)}")
        step("read back every volume whole", t, f"{len(images)} volumes identical")
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
    return steps


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build the world in this folder and keep it.",
)
@click.option(
    "--volumes",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Volumes per controller.",
)
@click.option("--seed", default=None, type=int, help="Random seed (printed when chosen).")
def demo(keep: Path | None, volumes: int, seed: int | None) -> None:
    """Start two controllers in a fresh folder, write and read through them, restart one.

    \b
    Example:
      remcopy demo
      remcopy demo --keep /tmp/remcopy-demo
    """
    seed = seed if seed is not None else random.randrange(1 << 32)
    root = keep or Path(tempfile.mkdtemp(prefix="remcopy-demo-"))
    try:
        steps = aio.run(_run(root, volumes, seed))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    table("summary", ["step", "seconds", "result"], steps)
