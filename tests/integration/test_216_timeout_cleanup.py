# A test stopped by its timeout stops every controller process it started: a child pytest
# runs a test that starts controllers and hangs, pytest-timeout stops it, and no controller
# it started is still running afterwards (checked by pid in /proc).
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from timeout_target import PIDS_ENV

from remcopy.controller.process import runs_controller

ROOT = Path(__file__).parents[2]
TARGET = Path(__file__).with_name("timeout_target.py")


def test_a_test_stopped_by_its_timeout_leaves_no_controller_running(tmp_path):
    pids_file = tmp_path / "pids"
    env = {**os.environ, PIDS_ENV: str(pids_file)}
    env.pop("PYTEST_ADDOPTS", None)  # the child's options are the ones below
    started: list[tuple[int, Path]] = []
    try:
        # The timeout counts only the test function (its fixtures start the controllers, as
        # long as that takes), so the child is stopped while they all run.
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(TARGET),
                "-p",
                "no:cacheprovider",
                "-p",
                "no:xdist",
                "-o",
                "timeout=1",
                "-o",
                "timeout_func_only=true",
                f"--basetemp={tmp_path / 'child'}",
                "-q",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        output = child.stdout + child.stderr
        if pids_file.exists():
            for line in pids_file.read_text().splitlines():
                pid, config = line.split(" ", 1)
                started.append((int(pid), Path(config)))
        assert child.returncode == 1, output
        assert "Timeout" in output, output
        assert len(started) == 3, output  # two of the test's own, one of start_controller
        alive = [pid for pid, config in started if runs_controller(pid, config)]
        assert not alive, f"controllers left running after the timeout: {alive}\n{output}"
    finally:
        for pid, config in started:  # never leave one behind, even when the check fails
            if runs_controller(pid, config):
                os.kill(pid, signal.SIGKILL)
