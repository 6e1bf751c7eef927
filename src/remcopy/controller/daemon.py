# Controllers in the background, for operators: start them detached, wait until each is
# ready, and stop them again — `remcopy controller start|stop CONFIG...`.
#
# Why: `remcopy controller serve` runs in the foreground (for a service manager or a terminal).
# An administrator trying remcopy out, and the README's walk-through, want a world of several
# controllers up with one command. Each controller writes its ready line and its log to
# DATA_DIR/controller.log and its process id to DATA_DIR/controller.pid.
#
# Rule: a pid file is a claim, not proof. After a reboot or a crash the number in it may name
# any process; signalling it could kill a database. Before `stop` signals (and before `start`
# refuses because one is running), the process's command line (/proc/PID/cmdline) must be
# `remcopy controller serve` of this very config file; anything else is named and left alone.
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from remcopy.controller import atrest
from remcopy.controller.config import load_controller_config
from remcopy.errors import RemcopyError

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# How much of a foreign command line a refusal shows: enough to recognise the process.
COMMAND_SHOWN_MAX_CHARS = 200


class DaemonError(RemcopyError):
    """a background controller did not start or stop"""


class PidFileMismatch(DaemonError):
    """the pid file names a process that is not this config's controller; it was not signalled"""

    exit_code = 2

    def __init__(self, config: Path, pid_file: Path, pid: int, what: str) -> None:
        super().__init__(
            f"controller stop: {config}: {pid_file} names pid {pid}, which is not this config's "
            f"controller: it is {what}; not signalled: hint: a stale pid file (a reboot or a "
            "crash?): check that process, and remove the pid file if the controller is not "
            "running"
        )
        self.config = config
        self.pid_file = pid_file
        self.pid = pid
        self.what = what


def _paths(config: Path) -> tuple[Path, Path]:
    data_dir = load_controller_config(config).controller.data_dir
    atrest.make_folder(data_dir)
    return data_dir / "controller.log", data_dir / "controller.pid"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessIdentity:
    """What /proc says process `pid` is."""

    pid: int
    argv: tuple[str, ...]
    """Its command line; empty for a kernel thread or a zombie."""
    cwd: Path | None
    """Its working directory, to resolve a relative config path; None if not readable."""
    name: str
    """Its short name (/proc/PID/comm), for processes without a command line."""
    zombie: bool
    """It has exited and waits to be reaped: nothing to signal."""

    def serves(self, config: Path) -> bool:
        """Whether this is `remcopy [OPTIONS] controller serve CONFIG` for `config`."""
        for i, word in enumerate(self.argv):
            if os.path.basename(word) != "remcopy":  # `python -m remcopy` or the script
                continue
            rest = self.argv[i + 1 :]
            for j in range(len(rest) - 2):
                if rest[j : j + 2] == ("controller", "serve"):
                    return _same_file(Path(rest[j + 2]), self.cwd, config)
        return False

    def describe(self) -> str:
        """The process for a message: its command line, or its name for a kernel thread."""
        if not self.argv:
            return f"[{self.name}]"
        text = " ".join(self.argv)
        if len(text) > COMMAND_SHOWN_MAX_CHARS:
            text = text[: COMMAND_SHOWN_MAX_CHARS - 3] + "..."
        return f"`{text}`"


def _same_file(given: Path, cwd: Path | None, config: Path) -> bool:
    if not given.is_absolute():
        if cwd is None:
            return given == config or given.absolute() == config.absolute()
        given = cwd / given
    try:
        return given.samefile(config)
    except OSError:
        return given.resolve() == config.resolve()


def identify(pid: int) -> ProcessIdentity | None:
    """What process `pid` is, from /proc; None if there is no such process."""
    proc = Path("/proc") / str(pid)
    try:
        raw = (proc / "cmdline").read_bytes()
        stat = (proc / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        return ProcessIdentity(pid=pid, argv=(), cwd=None, name="unreadable", zombie=False)
    try:
        cwd: Path | None = Path(os.readlink(proc / "cwd"))
    except OSError:
        cwd = None
    # stat: "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so split at the last.
    name, _, after = stat.partition(" (")[2].rpartition(") ")
    argv = tuple(word.decode(errors="replace") for word in raw.split(b"\0") if word)
    return ProcessIdentity(
        pid=pid, argv=argv, cwd=cwd, name=name, zombie=after.startswith(("Z", "X"))
    )


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def controller_pid(config: Path, pid_file: Path) -> tuple[int | None, ProcessIdentity | None]:
    """(pid, None) if the pid file names this config's running controller; (None, None) if it
    names no live process; (None, identity) if it names some other process."""
    pid = _read_pid(pid_file)
    if pid is None:
        return None, None
    identity = identify(pid)
    if identity is None or identity.zombie:
        return None, None
    if identity.serves(config):
        return pid, None
    return None, identity


def start(config: Path) -> tuple[int, str]:
    """Start one controller detached; returns (pid, its ready line)."""
    log_file, pid_file = _paths(config)
    # A pid file naming another process is stale: it is overwritten below, that process
    # untouched.
    pid, _other = controller_pid(config, pid_file)
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
    """SIGTERM the controller of a config and wait until it exited; returns its pid.

    Signals only a process whose command line is `remcopy controller serve` of this config
    (PidFileMismatch, exit 2, otherwise: that process is named and left alone). A pid file
    naming no live process is removed: nothing is running.
    """
    _log, pid_file = _paths(config)
    pid = _read_pid(pid_file)
    try:
        # A pidfd holds on to the process of that number now: if it exits and the number is
        # reused, the signal below goes nowhere instead of to the newcomer, and its exit can
        # be waited for without polling.
        pidfd = None if pid is None else os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    if pid is None or pidfd is None:
        pid_file.unlink(missing_ok=True)
        return None
    try:
        identity = identify(pid)
        if identity is None or identity.zombie:
            pid_file.unlink(missing_ok=True)
            return None
        if not identity.serves(config):
            raise PidFileMismatch(config, pid_file, pid, identity.describe())
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it exited since it was checked: stopped all the same
        except PermissionError:
            raise DaemonError(
                f"controller stop: {config}: not allowed to signal pid {pid} "
                f"({identity.describe()}): hint: run as the user that started it"
            ) from None
        waiter = select.poll()
        waiter.register(pidfd, select.POLLIN)  # readable once the process has exited
        if not waiter.poll(STOP_TIMEOUT_S * 1000):
            raise DaemonError(
                f"controller stop: {config}: controller pid {pid} did not stop within "
                f"{STOP_TIMEOUT_S} s"
            )
    finally:
        os.close(pidfd)
    pid_file.unlink(missing_ok=True)
    return pid
