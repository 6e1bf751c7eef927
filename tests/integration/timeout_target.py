# Not collected by the suite (its name is no test_*.py): test_216 runs it in a child pytest
# whose timeout stops it while the controllers it started run, and then checks by pid that
# none of them survived.
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from common import controller_spec
from remcopy.controller.process import ControllerProcess

PIDS_ENV = "REMCOPY_TIMEOUT_TARGET_PIDS"
"""Where the child writes `pid config` of each controller it started, one a line."""


def _note(proc: ControllerProcess) -> None:
    assert proc.process is not None
    with open(os.environ[PIDS_ENV], "a") as out:
        out.write(f"{proc.process.pid} {proc.config_path}\n")


@pytest.fixture
async def own_controllers(tmp_path: Path) -> list[ControllerProcess]:
    """Two controllers the test body itself must stop (as a world in a test body is): this
    fixture does not stop them."""
    procs = []
    for i in range(2):
        spec = controller_spec(tmp_path, f"own{i}", 64100 + i, volumes=1)
        proc = await ControllerProcess(spec.write(tmp_path / f"own{i}.toml")).start()
        _note(proc)
        procs.append(proc)
    return procs


async def test_hangs_while_its_controllers_run(tmp_path, start_controller, own_controllers):
    """Starts controllers (one by the start_controller fixture, two of its own), then hangs
    until the timeout stops it; its own cleanup never runs."""
    _note(await start_controller(controller_spec(tmp_path, "fixt", 64110, volumes=1)))
    try:
        await asyncio.Event().wait()  # never set: only the timeout ends this test
    finally:
        # The test's own cleanup, as a world's `async with` has it: not reached on timeout.
        for proc in own_controllers:
            await proc.kill()
