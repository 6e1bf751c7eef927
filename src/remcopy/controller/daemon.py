# Controllers in the background, for operators: start them detached, wait until each is
# ready, and stop them again — `remcopy controller start|stop CONFIG...`.
#
# Why: `remcopy controller serve` runs in the foreground (for a service manager or a terminal).
# An administrator trying remcopy out, and the README's walk-through, want a world of several
# controllers up with one command. Each controller writes its ready line and its log to
# DATA_DIR/controller.log and its process id to DATA_DIR/controller.pid.
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from remcopy.controller import atrest
from remcopy.controller.config import load_controller_config
from remcopy.errors import RemcopyError

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class DaemonError(RemcopyError):
    """a background controller did not start or stop"""


def _paths(config: Path) -> tuple[Path, Path]:
    data_dir = load_controller_config(config).controller.data_dir
    atrest.make_folder(data_dir)
    return data_dir / "controller.log", data_dir / "controller.pid"


def running_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start(config: Path) -> tuple[int, str]:
    """Start one controller detached; returns (pid, its ready line)."""
    log_file, pid_file = _paths(config)
    pid = running_pid(pid_file)
    if pid is not None:
        raise DaemonError(
            f"{config}: a controller is already running (pid {pid}, {pid_file}): stop it first"
        )
    offset = log_file.stat().st_size if log_file.exists() else 0
    with os.fdopen(atrest.open_private(log_file, os.O_WRONLY | os.O_APPEND), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "remcopy", "controller", "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    with os.fdopen(atrest.open_private(pid_file, os.O_WRONLY | os.O_TRUNC), "w") as pid_out:
        pid_out.write(f"{process.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with log_file.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        match = re.search(r"^remcopy controller \S+ ready .*$", text, re.MULTILINE)
        if match:
            return process.pid, match.group(0)
        if process.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise DaemonError(
                f"{config}: the controller exited with {process.returncode}:\n"
                + "\n".join(text.splitlines()[-10:])
            )
        time.sleep(0.05)  # polling the log for the ready line, bounded by the deadline
    process.terminate()
    raise DaemonError(f"{config}: not ready after {READY_TIMEOUT_S} s (log: {log_file})")


def stop(config: Path) -> int | None:
    """SIGTERM the controller of a config and wait until it exited; returns its pid."""
    _log, pid_file = _paths(config)
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            waited, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited = 0
        try:
            os.kill(pid, 0)
        except OSError:
            pid_file.unlink(missing_ok=True)
            return pid
        if waited == pid:
            pid_file.unlink(missing_ok=True)
            return pid
        time.sleep(0.05)  # polling the process, bounded by the deadline
    raise DaemonError(f"{config}: controller pid {pid} did not stop within {STOP_TIMEOUT_S} s")
