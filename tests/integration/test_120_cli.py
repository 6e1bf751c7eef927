# The CLI as a user runs it: real processes, exit codes 0/1/2, JSON on stdout, no tracebacks.
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from common import HOST, SECRET, controller_spec, status_args
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
    run = remcopy(*status_args(proc, tmp_path), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["serial"] == 64015 and doc["volumes"] == 2
    assert [d["address"] for d in doc["devices"]] == ["64015:1A00:0A:00", "64015:1A00:0A:01"]
    table = remcopy(*status_args(proc, tmp_path))
    assert "64015:1A00:0A:01" in table.stdout and "CN0001" in table.stdout
    assert "links tls" in table.stdout and doc["links"] == "tls"
    wrong = remcopy(*status_args(proc, tmp_path, secret="wrong-secret-of-16"))
    assert wrong.returncode == 1 and "authentication failed" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    bad = remcopy(
        "controller",
        "status",
        "nowhere",
        "--name",
        HOST,
        env={**os.environ, "REMCOPY_SECRET": SECRET},
    )
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


# One JSON document on stdout, whatever stdout is. A 10,000-pair `group suspend --json` from
# bench/groups.py once came out cut short ("line 8127, column 2": about 220 kB of a 270 kB
# document). A write to a descriptor whose open file description is non-blocking (a flag
# shared by every process holding it: an event loop that registered it, uvloop among them)
# stops at what the pipe or socket buffer holds and raises BlockingIOError; Python's buffered
# stdout then drops the rest, silently: exit 0, nothing on stderr.

_BIG_PAIRS = 10_000


def _big_group_catalog(path: Path) -> None:
    """A catalog holding host HOST, its map, and group BIG of 10,000 pairs it sees."""
    from remcopy.catalog import Catalog, MapEntry, Pair

    def address(serial: int, ssid: int, k: int) -> str:
        return f"{serial}:{ssid:04X}:{k // 256:02X}:{k % 256:02X}"

    def entry(k: int, side: int) -> MapEntry:
        return MapEntry(
            device_number=f"{side * 0x4000 + k:04X}",
            hardware_address=address(64015 + side, 0x1A00 + side, k),
            volser=f"{'PS'[side]}{k:05X}",
            capacity_bytes=65536,
            state="DUPLEX",
            role=("primary", "secondary")[side],
            online=True,
            controller=f"cntl{side}",
        )

    with Catalog.open(path) as catalog:
        catalog.put_host(HOST, {"host": {"name": HOST}}, replace=False)
        catalog.store_scan(
            HOST,
            scanned_at_ns=1,
            entries=[entry(k, side) for side in (0, 1) for k in range(_BIG_PAIRS)],
            failures=[],
            partial=False,
        )
        pairs = [
            Pair(
                primary_address=address(64015, 0x1A00, k),
                secondary_address=address(64016, 0x1A01, k),
                volser=f"P{k:05X}",
                mode="sync",
            )
            for k in range(_BIG_PAIRS)
        ]
        catalog.put_group("BIG", {"mode": "sync"}, pairs, replace=False)


def test_json_is_one_whole_document_on_a_nonblocking_socket(tmp_path: Path):
    """A 1.7 MB `--json` document arrives whole and alone on a non-blocking socket, with a
    narrow terminal and debug logging on: the rest goes to stderr."""
    catalog = tmp_path / "big.db"
    _big_group_catalog(catalog)
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)  # O_NONBLOCK on the description the child's stdout shares
    with ours, (tmp_path / "stderr").open("w+") as err:
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", "remcopy", "-vv", "group", "show", "BIG"),
                *("--host", HOST, "--catalog", str(catalog), "--json"),
            ],
            stdout=theirs.fileno(),
            stderr=err,
            env=dict(os.environ, COLUMNS="20", CI="1"),
        )
        theirs.close()
        chunks = []
        while chunk := ours.recv(65536):
            chunks.append(chunk)
        assert child.wait(timeout=60) == 0
        err.seek(0)
        stderr = err.read()
    assert "Traceback" not in stderr and "BlockingIOError" not in stderr, stderr[-2000:]
    document = json.loads(b"".join(chunks))
    assert len(document) == _BIG_PAIRS
    assert document[-1]["volser"] == f"P{_BIG_PAIRS - 1:05X}"
