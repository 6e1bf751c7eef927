# Secure by default (DESIGN.md section 6, docs/security.md) against real controller processes:
# test-only switches refused without REMCOPY_TESTING=1 and shown loudly with it; files at rest
# private to the controller's user; peer-supplied names escaped in the log.
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common import HOST, SECRET, controller_spec
from remcopy.controller.process import TESTING_ENV, ControllerProcess
from remcopy.host.channel import Channel

Start = Callable[..., Awaitable[ControllerProcess]]
PROCESS_TIMEOUT_S = 60


def _remcopy(*args: str, testing: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI with REMCOPY_TESTING=1 only when `testing` (never inherited from here)."""
    env = {k: v for k, v in os.environ.items() if k != "REMCOPY_TESTING"}
    if testing:
        env.update(TESTING_ENV)
    return subprocess.run(
        [sys.executable, "-m", "remcopy", *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
        env=env,
    )


def _flat(text: str) -> str:
    return " ".join(text.split())


# Test-only switches ---------------------------------------------------------------------------

TESTING_SETTINGS: list[tuple[str, object]] = [
    ("planted_bugs", ["no_hold"]),
    ("planted_bug_every", 3),
    ("volume_faults.CN0000", "eio_after:5"),
    ("identify_delay_s", 0.5),
]


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize(("key", "value"), TESTING_SETTINGS, ids=[k for k, _ in TESTING_SETTINGS])
def test_a_test_only_key_is_refused_without_REMCOPY_TESTING(
    tmp_path: Path, command: str, key: str, value: object
) -> None:
    """A config with a test-only key exits 2 naming the key and saying it is for testing."""
    spec = controller_spec(tmp_path, "cntla", 64015, prefix="CN")
    spec.settings[key] = value
    config = spec.write(tmp_path / "cntla.toml")

    result = _remcopy("controller", command, str(config))

    assert result.returncode == 2, result.stderr
    name = key.split(".")[0]
    assert f"controller.{name}: for testing only" in _flat(result.stderr)
    assert "REMCOPY_TESTING=1" in _flat(result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "cntla").exists()  # refused before anything was created


def test_a_refused_test_only_key_is_listed_with_the_other_problems(tmp_path: Path) -> None:
    """The refusal comes with every other problem of the file, in one pass."""
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.settings.update({"planted_bugs": ["no_hold"], "hold_s": -1})
    config = spec.write(tmp_path / "cntla.toml")

    result = _remcopy("controller", "check", str(config))

    assert result.returncode == 2
    assert "2 problems" in result.stderr
    assert "controller.planted_bugs: for testing only" in _flat(result.stderr)
    assert "controller.hold_s" in result.stderr


def test_check_with_REMCOPY_TESTING_accepts_and_shows_the_switches(tmp_path: Path) -> None:
    """With the variable `check` accepts the key and says loudly that it is on."""
    spec = controller_spec(tmp_path, "cntla", 64015)
    spec.settings["planted_bugs"] = ["no_hold"]
    config = spec.write(tmp_path / "cntla.toml")

    human = _remcopy("controller", "check", str(config), testing=True)
    as_json = _remcopy("controller", "check", "--json", str(config), testing=True)

    assert human.returncode == 0, human.stderr
    assert "WARNING: TESTING ONLY switches are on" in human.stdout
    assert "planted_bugs=['no_hold']" in human.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["testing"] == {"planted_bugs": ["no_hold"]}


async def test_a_controller_with_REMCOPY_TESTING_starts_and_status_shows_the_switches(
    start_controller: Start, tmp_path: Path
) -> None:
    """With the variable the controller serves; its status and log name every switch on."""
    spec = controller_spec(tmp_path, "cntla", 64015, prefix="CN")
    spec.settings.update(
        {"planted_bugs": ["no_hold"], "planted_bug_every": 3, "volume_faults.CN0001": "eio_after:2"}
    )
    proc = await start_controller(spec, extra_env=TESTING_ENV)

    async with Channel(proc.address, name=HOST, secret=SECRET) as channel:
        status = await channel.status()
    human = _remcopy("controller", "status", proc.endpoint, "--name", HOST, "--secret", SECRET)

    assert status["testing"] == {
        "planted_bugs": ["no_hold"],
        "planted_bug_every": 3,
        "volume_faults": {"CN0001": "eio_after:2"},
    }
    assert human.returncode == 0, human.stderr
    warning = [line for line in human.stdout.splitlines() if "TESTING ONLY" in line]
    assert len(warning) == 1
    assert warning[0].startswith("WARNING: TESTING ONLY switches are on")
    assert "planted_bugs=['no_hold']" in warning[0]
    assert "TESTING ONLY switches are on" in proc.log_text()


async def test_a_production_controller_status_has_no_testing_section(
    start_controller: Start, tmp_path: Path
) -> None:
    """Without test-only keys the status document has no "testing" and no warning."""
    proc = await start_controller(controller_spec(tmp_path, "cntla", 64015))

    async with Channel(proc.address, name=HOST, secret=SECRET) as channel:
        status = await channel.status()
    human = _remcopy("controller", "status", proc.endpoint, "--name", HOST, "--secret", SECRET)

    assert "testing" not in status
    assert human.returncode == 0, human.stderr
    assert "TESTING" not in human.stdout
    assert "TESTING" not in proc.log_text()
