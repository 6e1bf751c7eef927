# `remcopy controller stop` signals only the controller its config started: a stale pid file
# naming another process (after a reboot, a crash) is refused with exit 2 naming the pid and
# what it is, and that process is not signalled. Real controller processes, started and stopped
# through the CLI; a decoy process stands in for whatever took the old pid.
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import controller_spec
from remcopy.controller.daemon import identify

DECOY = "import sys; sys.stdin.read()  # remcopy-test-decoy"


def remcopy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "remcopy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert "Traceback" not in run.stderr, run.stderr
    return run


class Site:
    """Controller configs in a folder, and the controllers and decoys a test started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: dict[Path, int] = {}
        self.decoys: list[subprocess.Popen[bytes]] = []

    def config(self, name: str, serial: int) -> Path:
        return controller_spec(self.root, name, serial, volumes=1).write(self.root / f"{name}.toml")

    def pid_file(self, config: Path) -> Path:
        return self.root / config.stem / "controller.pid"

    def start(self, config: Path, *, cwd: Path | None = None, arg: str | None = None) -> int:
        run = remcopy("controller", "start", arg or str(config), cwd=cwd)
        assert run.returncode == 0, run.stderr
        match = re.search(r": pid (\d+): remcopy controller \S+ ready", run.stdout)
        assert match, run.stdout
        self.started[config] = int(match.group(1))
        return self.started[config]

    def decoy(self) -> subprocess.Popen[bytes]:
        """A process that is no controller; it ends when its stdin closes (exit 0)."""
        process = subprocess.Popen([sys.executable, "-c", DECOY], stdin=subprocess.PIPE)
        self.decoys.append(process)
        return process

    def stop_all(self) -> None:
        for config, pid in self.started.items():
            identity = identify(pid)
            if identity is not None and identity.serves(config):
                os.kill(pid, signal.SIGTERM)
        for process in self.decoys:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    made.stop_all()


def ended_normally(decoy: subprocess.Popen[bytes]) -> int:
    """End a decoy by closing its stdin; its exit code (-15 had it been sent SIGTERM)."""
    assert decoy.stdin is not None
    decoy.stdin.close()
    return decoy.wait(timeout=60)


def test_controller_stop_refuses_a_pid_file_naming_another_process(site: Site) -> None:
    """A pid file naming a live non-controller exits 2 naming it; it is not signalled."""
    config = site.config("cntla0", 64015)
    pid = site.start(config)
    decoy = site.decoy()
    site.pid_file(config).write_text(f"{decoy.pid}\n")

    run = remcopy("controller", "stop", str(config))

    assert run.returncode == 2, run.stderr
    message = " ".join(run.stderr.split())
    assert f"names pid {decoy.pid}, which is not this config's controller" in message
    assert "remcopy-test-decoy" in message  # what the process is: its command line
    assert "not signalled" in message
    assert decoy.poll() is None
    assert site.pid_file(config).read_text() == f"{decoy.pid}\n"  # left for a person to judge
    identity = identify(pid)
    assert identity is not None and identity.serves(config)  # the controller still runs

    site.pid_file(config).write_text(f"{pid}\n")
    run = remcopy("controller", "stop", str(config))
    assert (run.returncode, run.stdout) == (0, f"{config}: pid {pid} stopped\n"), run.stderr
    assert not site.pid_file(config).exists()
    assert ended_normally(decoy) == 0


def test_controller_stop_refuses_another_configs_controller(site: Site) -> None:
    """A pid file naming the controller of another config is refused; that one keeps running."""
    first, second = site.config("cntla0", 64015), site.config("cntla1", 64016)
    first_pid, second_pid = site.start(first), site.start(second)
    site.pid_file(first).write_text(f"{second_pid}\n")

    run = remcopy("controller", "stop", str(first))

    assert run.returncode == 2, run.stderr
    message = " ".join(run.stderr.split())
    assert f"names pid {second_pid}" in message
    assert f"controller serve {second}" in message
    identity = identify(second_pid)
    assert identity is not None and identity.serves(second)

    site.pid_file(first).write_text(f"{first_pid}\n")
    run = remcopy("controller", "stop", str(first), str(second))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"{first}: pid {first_pid} stopped",
        f"{second}: pid {second_pid} stopped",
    ]


def test_controller_stop_goes_on_past_a_refusal_and_exits_2(site: Site) -> None:
    """With several configs, a stale one is refused, the others are stopped, and the exit is 2."""
    stale, good = site.config("cntla0", 64015), site.config("cntla1", 64016)
    stale_pid, good_pid = site.start(stale), site.start(good)
    decoy = site.decoy()
    site.pid_file(stale).write_text(f"{decoy.pid}\n")

    run = remcopy("controller", "stop", str(stale), str(good))

    assert run.returncode == 2, run.stderr
    assert run.stdout == f"{good}: pid {good_pid} stopped\n"
    message = " ".join(run.stderr.split())
    assert f"names pid {decoy.pid}" in message
    assert "1 of 2 controllers not stopped" in message
    assert ended_normally(decoy) == 0
    identity = identify(stale_pid)
    assert identity is not None and identity.serves(stale)


def test_controller_stop_finds_a_controller_started_with_a_relative_path(
    site: Site, tmp_path: Path
) -> None:
    """Started as `controller start cntla0.toml` in its folder, it stops by an absolute path
    from anywhere (the relative path is read against the controller's working folder)."""
    config = site.config("cntla0", 64015)
    pid = site.start(config, cwd=site.root, arg="cntla0.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = remcopy("controller", "stop", str(config), cwd=elsewhere)
    assert (run.returncode, run.stdout) == (0, f"{config}: pid {pid} stopped\n"), run.stderr


def test_controller_stop_of_an_exited_process_says_not_running(site: Site) -> None:
    """A pid file naming no live process: nothing to signal, the pid file is removed."""
    config = site.config("cntla0", 64015)
    gone = site.decoy()
    assert ended_normally(gone) == 0
    site.pid_file(config).parent.mkdir(parents=True, exist_ok=True)
    site.pid_file(config).write_text(f"{gone.pid}\n")
    run = remcopy("controller", "stop", str(config))
    assert (run.returncode, run.stdout) == (0, f"{config}: not running\n"), run.stderr
    assert not site.pid_file(config).exists()


def test_controller_start_over_a_stale_pid_file_starts_and_leaves_that_process(
    site: Site,
) -> None:
    """`start` does not take a stale pid file for a running controller: it starts one, and
    the process the file named is untouched."""
    config = site.config("cntla0", 64015)
    decoy = site.decoy()
    site.pid_file(config).parent.mkdir(parents=True, exist_ok=True)
    site.pid_file(config).write_text(f"{decoy.pid}\n")
    pid = site.start(config)
    assert site.pid_file(config).read_text() == f"{pid}\n"
    run = remcopy("controller", "start", str(config))
    assert run.returncode == 1
    assert f"a controller is already running (pid {pid}" in " ".join(run.stderr.split())
    assert ended_normally(decoy) == 0
