# The CLI as a user runs it: real processes, exit codes 0/1/2, JSON on stdout, no tracebacks.
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from common import HOST, SECRET, controller_spec
from remcopy.controller.process import ControllerProcess, ControllerSpec
from remcopy.states import PairAction, PairState

Start = Callable[[ControllerSpec], Awaitable[ControllerProcess]]


def remcopy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remcopy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_states_json_lists_every_state_and_action():
    """`remcopy states --json` has one row per (state, action), from the running table."""
    run = remcopy("states", "--json")
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert len(rows) == len(PairState) * len(PairAction)
    resume = {r["state"]: r for r in rows if r["action"] == "resume"}
    assert resume["SUSPENDED"]["result"] == "PENDING"
    assert resume["SIMPLEX"]["refused"] is True
    assert "pair is SIMPLEX" in resume["SIMPLEX"]["message"]
    human = remcopy("states")
    assert human.returncode == 0 and "SUSPENDED_ERROR" in human.stdout


def test_volume_create_and_info(tmp_path: Path):
    """`volume create` makes a labelled file, `volume info` reads it, overwriting is refused."""
    path = tmp_path / "PAY001.vol"
    run = remcopy("volume", "create", str(path), "--volser", "pay001", "--size", "2MiB", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["volser"] == "PAY001"
    info = remcopy("volume", "info", str(path), "--json")
    assert json.loads(info.stdout)["capacity_bytes"] == 2 * 1024 * 1024
    again = remcopy("volume", "create", str(path), "--volser", "PAY001", "--size", "2MiB")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_volume_create_bad_input_exits_2_naming_the_value(tmp_path: Path):
    """Bad volser, bad size and a size off the track grid each exit 2 with the value named."""
    cases = [
        (["--volser", "PAY-01", "--size", "1MiB"], "'PAY-01' is not a volser"),
        (["--volser", "PAY001", "--size", "lots"], "'lots'"),
        (["--volser", "PAY001", "--size", "100000"], "(got 100000)"),
    ]
    for args, expected in cases:
        run = remcopy("volume", "create", str(tmp_path / "x.vol"), *args)
        assert run.returncode == 2, (args, run.stderr)
        assert expected in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
        assert not (tmp_path / "x.vol").exists()


async def test_controller_status_reports_volumes(start_controller: Start, tmp_path: Path):
    """`controller status --json` shows the running controller's volumes; a table without."""
    proc = await start_controller(controller_spec(tmp_path, "cntla", 64015, volumes=2))
    run = remcopy(
        "controller", "status", proc.endpoint, "--name", HOST, "--secret", SECRET, "--json"
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["serial"] == 64015 and doc["volumes"] == 2
    assert [d["address"] for d in doc["devices"]] == ["64015:1A00:0A:00", "64015:1A00:0A:01"]
    table = remcopy("controller", "status", proc.endpoint, "--name", HOST, "--secret", SECRET)
    assert "64015:1A00:0A:01" in table.stdout and "CN0001" in table.stdout
    wrong = remcopy(
        "controller", "status", proc.endpoint, "--name", HOST, "--secret", "wrong-secret"
    )
    assert wrong.returncode == 1 and "wrong secret" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    bad = remcopy("controller", "status", "nowhere", "--name", HOST, "--secret", SECRET)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
