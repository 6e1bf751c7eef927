# Shared fixtures: worlds of real controller processes on 127.0.0.1 in a temporary folder.
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from remcopy.controller.process import ControllerProcess, ControllerSpec, VolumeSpec

HOST = "hosta"
SECRET = "s3cret-hosta-key"
MiB = 1024 * 1024


def controller_spec(
    root: Path,
    name: str,
    serial: int,
    *,
    ssid: int = 0x1A00,
    lss: int = 0x0A,
    volumes: int = 4,
    size_bytes: int = 4 * MiB,
    prefix: str | None = None,
    hosts: dict[str, str] | None = None,
) -> ControllerSpec:
    prefix = prefix or name[:2].upper()
    return ControllerSpec(
        name=name,
        serial=serial,
        data_dir=root / name,
        lss={lss: ssid},
        volumes=[
            VolumeSpec(lss=lss, cca=c, volser=f"{prefix}{c:04X}", size_bytes=size_bytes)
            for c in range(volumes)
        ],
        hosts=hosts if hosts is not None else {HOST: SECRET},
    )


Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]


@pytest.fixture
async def start_controller(tmp_path: Path) -> AsyncIterator[Start]:
    """Start controller processes from specs; every one is stopped at teardown."""
    started: list[ControllerProcess] = []

    async def start(spec: ControllerSpec) -> ControllerProcess:
        proc = ControllerProcess(spec.write(tmp_path / f"{spec.name}.toml"))
        started.append(proc)
        return await proc.start()

    yield start
    for proc in started:
        if proc.running:
            await proc.kill()
