# `remcopy group pairs` / `group status --pairs`: a row per pair with both ends read. Real
# controller processes; every value the view shows is compared with the controllers' own
# query answers, read over a host channel of the test's own.
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mirror_world import build, channel, host_file, stop

from common import HOST, run_remcopy
from remcopy.wire.native import DeviceStatus

READ_TIMEOUT_S = 120.0


def cli(*args: str, catalog: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_remcopy(*args, catalog=catalog, code=code)


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


@pytest.fixture
def catalog(world, tmp_path) -> Path:
    """PAYROLL (sync) on cntla0 and ASYNC (async) on cntla1, both to cntlb; DUPLEX."""
    path = tmp_path / "catalog.db"
    cli("host", "add", str(host_file(tmp_path, world)), catalog=path)
    cli("scan", HOST, catalog=path)
    for name, mode, devices, secondaries in (
        ("PAYROLL", "sync", "1A00-1A03", "2B00-2B03"),
        ("ASYNC", "async", "1B00-1B03", "2B04-2B07"),
    ):
        definition = tmp_path / f"{name}.toml"
        definition.write_text(
            f'[group]\nname = "{name}"\nmode = "{mode}"\n[[pairs]]\nhost = "hosta"\n'
            f'devices = "{devices}"\nsecondary_devices = "{secondaries}"\n'
        )
        cli("group", "define", str(definition), catalog=path)
        cli("group", "establish", name, "--host", HOST, "--wait", catalog=path)
    return path


async def answers(world, index: int) -> dict[str, DeviceStatus]:
    """The query answers of primary controller `index`'s devices and of their secondaries,
    by hardware address."""
    primary = world.primaries[index]
    out: dict[str, DeviceStatus] = {}
    for proc, serial, ssid in ((primary, 64015 + index, "1A00"), (world.secondary, 65000, "2B00")):
        async with channel(proc) as ch:
            for s in await ch.query():
                if s.status == 0:
                    out[f"{serial}:{ssid}:{s.device >> 8:02X}:{s.device & 0xFF:02X}"] = s
    return out


def view(name: str, catalog: Path, *more: str) -> dict:  # type: ignore[type-arg]
    run = cli("group", "pairs", name, "--host", HOST, "--json", *more, catalog=catalog)
    return json.loads(run.stdout)


def assert_rows_match(doc: dict, known: dict[str, DeviceStatus]) -> None:  # type: ignore[type-arg]
    """Every row's values are its controllers' own answers."""
    for row in doc["pairs"]:
        p = known[row["primary"]["address"]]
        s = known[row["secondary"]["address"]]
        assert row["answered"] == "both"
        assert (row["primary"]["state"], row["primary"]["role"]) == (p.state.name, p.role.value)
        assert (row["secondary"]["state"], row["secondary"]["role"]) == (
            s.state.name,
            s.role.value,
        )
        assert row["state"] == p.state.name
        assert row["mode"] == p.mode.value  # type: ignore[union-attr]
        assert row["fence"] == p.fence.value
        assert row["consistency_group"] == p.consistency_group
        assert row["lag_bytes"] == p.lag_bytes
        assert row["primary"]["journal_bytes"] == p.journal_bytes
        assert row["secondary"]["journal_bytes"] == s.journal_bytes
        assert row["changed_tracks"] == p.dirty_tracks
        assert row["tracks"] == p.tracks
        assert row["copy_left_tracks"] == p.copy_left_tracks
        assert row["last_change"] == {"at_ns": p.changed_at_ns, "cause": p.change_cause}
        assert row["suspend_at_ns"] == (p.suspend_at_ns or None)


async def test_pair_view_equals_the_controllers_query_answers(world, catalog):
    """After establish: both ends, DUPLEX, the last change the copy's end, 100 % copied; a
    sync pair is consistent as of the reading (RPO 0), an async one as of its group's C."""
    doc = view("PAYROLL", catalog)
    assert (doc["schema"], doc["group"], doc["host"], len(doc["pairs"])) == (1, "PAYROLL", HOST, 4)
    known = await answers(world, 0)
    assert_rows_match(doc, known)
    first = doc["pairs"][0]
    assert (first["pair"], first["primary"]["device_number"]) == ("P00000", "1A00")
    assert (first["secondary"]["device_number"], first["secondary"]["state"]) == ("2B00", "DUPLEX")
    assert first["primary"]["address"] == "64015:1A00:0A:00"
    assert first["secondary"]["address"] == "65000:2B00:20:00"
    for row in doc["pairs"]:
        assert (row["state"], row["mode"], row["copy_percent"]) == ("DUPLEX", "sync", 100.0)
        assert row["last_change"]["cause"] == "copy-done"
        assert row["consistency_ns"] == doc["read_at_ns"] and row["rpo_s"] == 0.0
        assert row["lag_bytes"] == 0 and row["lag_s"] == 0.0
    known = await answers(world, 1)
    other = view("ASYNC", catalog)
    assert_rows_match(other, known)
    for row in other["pairs"]:
        # An async consistency group: the secondary's own consistency time C (read after the
        # answers above, so not older than theirs), and the RPO from it.
        asked = known[row["secondary"]["address"]].consistency_time_ns
        assert row["mode"] == "async" and asked > 0
        assert asked <= row["consistency_ns"] <= other["read_at_ns"]
        assert row["rpo_s"] == (other["read_at_ns"] - row["consistency_ns"]) / 1e9


async def test_pair_view_shows_a_suspend_with_its_cause_and_time(world, catalog):
    """A suspend at T: each row SUSPENDED at both ends, last change `suspend` at T,
    consistent at T; a write after it shows as a changed track and a copy share below 100 %,
    as the primary's controller counts them."""
    report = json.loads(
        cli("group", "suspend", "PAYROLL", "--host", HOST, "--json", catalog=catalog).stdout
    )
    at_ns = report["at_ns"]
    assert report["consistent"] and at_ns > 0
    async with channel(world.primaries[0]) as ch:
        await ch.write(0x0A01, 0, b"x" * 4096)
    doc = view("PAYROLL", catalog)
    assert_rows_match(doc, await answers(world, 0))
    for row in doc["pairs"]:
        assert (row["primary"]["state"], row["secondary"]["state"]) == ("SUSPENDED", "SUSPENDED")
        assert row["last_change"] == {"at_ns": at_ns, "cause": "suspend"}
        assert row["consistency_ns"] == at_ns
        assert row["rpo_s"] == (doc["read_at_ns"] - at_ns) / 1e9
    changed = {row["pair"]: (row["changed_tracks"], row["copy_percent"]) for row in doc["pairs"]}
    tracks = doc["pairs"][1]["tracks"]
    assert changed["P00001"] == (1, round(100.0 * (tracks - 1) / tracks, 1))
    assert changed["P00000"] == (0, 100.0)
    # The human table says the same, and `group status --pairs` is the same view.
    table = cli("group", "status", "PAYROLL", "--host", HOST, "--pairs", catalog=catalog).stdout
    assert "group PAYROLL as hosta: 4 pairs" in table
    for column in ("P-state", "S-state", "answered", "lag s", "RPO s", "copy %", "last change"):
        assert column in table
    lines = [line for line in table.splitlines() if line.startswith("P00001")]
    assert len(lines) == 1
    assert "suspend" in lines[0] and "SUSPENDED" in lines[0] and "both" in lines[0]


async def test_pair_view_when_the_secondary_is_down(world, catalog):
    """The secondary's controller stopped: each row says only the primary answered, with
    why, and still shows the primary's answer; then the primary's too: exit 1."""
    await world.secondary.kill()
    doc = view("PAYROLL", catalog)
    for row in doc["pairs"]:
        assert row["answered"] == "primary"
        assert row["secondary"]["state"] is None
        assert "cntlb" in row["secondary"]["error"]
        assert row["primary"]["role"] == "primary"
    # Neither end answers: every row says so, UNKNOWN, and the command exits 1 saying why.
    await world.primaries[0].kill()
    run = cli("group", "pairs", "PAYROLL", "--host", HOST, "--json", catalog=catalog, code=1)
    rows = json.loads(run.stdout)["pairs"]
    assert {(r["answered"], r["state"], r["lag_bytes"]) for r in rows} == {
        ("none", "UNKNOWN", None)
    }
    assert "group PAYROLL: 4 pairs not read at either end" in " ".join(run.stderr.split())


async def test_pair_view_bad_input_exits_2_with_one_line(catalog):
    """An unknown group, --watch without a terminal, --watch with --json, and status --watch
    without --pairs: exit 2, one clear line, no document on stdout but the JSON error."""
    unknown = cli("group", "pairs", "NOPE", "--host", HOST, catalog=catalog, code=2)
    assert "NOPE" in unknown.stderr and "Traceback" not in unknown.stderr
    watch = cli("group", "pairs", "PAYROLL", "--host", HOST, "--watch", catalog=catalog, code=2)
    assert "stdout is not a terminal" in watch.stderr
    assert watch.stdout == ""
    both = cli("group", "pairs", "PAYROLL", "--host", HOST, "--watch", "--json",
               catalog=catalog, code=2)  # fmt: skip
    assert "cannot be combined with --json" in both.stderr
    assert json.loads(both.stdout)["exit_code"] == 2
    status = cli("group", "status", "PAYROLL", "--host", HOST, "--watch", catalog=catalog, code=2)
    assert "needs --pairs" in status.stderr


def start_watch(catalog: Path, terminal: int) -> subprocess.Popen[bytes]:
    """`group pairs PAYROLL --watch` with its stdout on `terminal`, a pseudo-terminal."""
    command = ["group", "pairs", "PAYROLL", "--host", HOST, "--watch", "--interval", "0.2"]
    return subprocess.Popen(
        [sys.executable, "-m", "remcopy", *command],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=dict(os.environ, REMCOPY_CATALOG=str(catalog), TERM="xterm", COLUMNS="250"),
    )


async def test_pair_view_watch_redraws_on_a_terminal_until_ctrl_c(catalog):
    """--watch on a terminal (a pseudo-terminal here): the view is drawn, drawn again after a
    suspend with the new states, and Ctrl-C ends it with exit 0."""
    leader, follower = pty.openpty()
    process = start_watch(catalog, follower)
    os.close(follower)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + READ_TIMEOUT_S
        while text not in seen:
            ready, _, _ = select.select([leader], [], [], deadline - time.monotonic())
            assert ready, f"no {text!r} in {seen[-2000:]!r}"
            seen += os.read(leader, 65536)

    try:
        read_until(b"DUPLEX")
        assert b"SUSPENDED" not in seen
        cli("group", "suspend", "PAYROLL", "--host", HOST, catalog=catalog)
        read_until(b"SUSPENDED")
        assert b"\x1b[1A" in seen  # drawn again in place: the cursor went back up over the view
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=READ_TIMEOUT_S)
        assert process.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        os.close(leader)
