# `remcopy demo` stopped by Ctrl-C (SIGINT) or SIGTERM in the middle of its drill: it stops
# every controller process it started before it exits, and says so.
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names a file under `root` (the drill's controllers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(root) in cmdline and "controller serve" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_demo_stopped_by_a_signal_stops_its_controllers(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    root = tmp_path / "world"
    with subprocess.Popen(
        # 1,000 pairs: the signal, sent once the scans are done, lands while the drill defines
        # and establishes the group (seconds); 16 pairs could finish first.
        [sys.executable, "-m", "remcopy", "demo", "--pairs", "1000", "--keep", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        # As from a terminal: a test worker may run with SIGINT ignored, and a child inherits
        # that (Python then never turns SIGINT into KeyboardInterrupt).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as demo:
        assert demo.stdout is not None
        try:
            seen = []
            for line in demo.stdout:  # wait until the drill is under way: its controllers run
                seen.append(line)
                if "scan hosta" in line:
                    break
            assert processes_under(root), "".join(seen)
            demo.send_signal(sig)
            rest = demo.stdout.read()
            assert demo.wait(timeout=60) == code, "".join(seen) + rest
        finally:
            if demo.poll() is None:
                demo.kill()
    assert "demo: stopped; every controller process it started was stopped" in rest
    assert processes_under(root) == []
