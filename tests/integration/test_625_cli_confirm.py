# Destructive group operations ask first: terminate, recover, failback and return-home put a
# question on a terminal and need --yes when stdin is not one; a dry run asks nothing. Real
# controller processes; the terminal is a real pseudo-terminal, answered once the question
# has been seen.
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mirror_world import build, host_file, stop

from common import HOST, run_remcopy
from remcopy.catalog import Catalog

ANSWER_TIMEOUT_S = 120.0
QUESTION = b"[y/N]"


def cli(*args: str, catalog: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_remcopy(*args, catalog=catalog, code=code)


def on_a_terminal(*args: str, answer: bytes, catalog: Path) -> tuple[int, str, str]:
    """Run remcopy with a pseudo-terminal as stdin; answer once the question is on stderr.

    Returns (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "remcopy", *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, REMCOPY_CATALOG=str(catalog)),
    )
    os.close(slave)
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    try:
        while QUESTION not in seen:
            ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
            assert ready, f"no question within {ANSWER_TIMEOUT_S} s: {seen!r}"
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, f"remcopy ended without asking: {seen!r}"
            seen += chunk
        os.write(master, answer + b"\n")
        out, err = process.communicate(timeout=ANSWER_TIMEOUT_S)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = (seen + err).decode()
    assert "Traceback" not in stderr, stderr
    return process.returncode, out.decode(), stderr


def counts(catalog: Path) -> dict[str, int]:
    run = cli("group", "status", "PAYROLL", "--host", HOST, "--json", catalog=catalog)
    result: dict[str, int] = json.loads(run.stdout)["counts"]
    return result


@pytest.fixture
async def world(tmp_path):
    w = await build(tmp_path, primaries=2, volumes=4)
    yield w
    await stop(w)


@pytest.mark.parametrize(
    ("op", "host"),
    [("terminate", "hosta"), ("recover", "hostb"), ("failback", "hostb"), ("return-home", "hosta")],
)
def test_destructive_operation_off_a_terminal_needs_yes(op: str, host: str, tmp_path: Path):
    """Without --yes and with stdin not a terminal, the operation exits 2 saying to pass --yes."""
    catalog = tmp_path / "catalog.db"
    Catalog.open(catalog).close()
    run = cli("group", op, "PAYROLL", "--host", host, catalog=catalog, code=2)
    message = " ".join(run.stderr.split())
    assert f"group {op} PAYROLL: asks for confirmation and stdin is not a terminal" in message
    assert f"pass --yes to {op} without asking" in message
    assert run.stdout == ""


async def test_terminate_asks_on_a_terminal_and_does_only_what_was_confirmed(world, tmp_path):
    """Off a terminal: refused, nothing sent. A dry run: no question. On a terminal: 'n' sends
    nothing (exit 1), 'y' terminates every pair; the question never reaches stdout."""
    catalog = tmp_path / "catalog.db"
    cli("host", "add", str(host_file(tmp_path, world)), catalog=catalog)
    cli("scan", HOST, catalog=catalog)
    definition = tmp_path / "payroll.toml"
    definition.write_text(
        '[group]\nname = "PAYROLL"\n'
        '[[pairs]]\nhost = "hosta"\ndevices = "1A00-1A03"\nsecondary_devices = "2B00-2B03"\n'
        '[[pairs]]\nhost = "hosta"\ndevices = "1B00-1B03"\nsecondary_devices = "2B04-2B07"\n'
    )
    cli("group", "define", str(definition), catalog=catalog)
    cli("group", "establish", "PAYROLL", "--host", HOST, "--wait", catalog=catalog)
    assert counts(catalog) == {"DUPLEX": 8}

    cli("group", "terminate", "PAYROLL", "--host", HOST, catalog=catalog, code=2)
    assert counts(catalog) == {"DUPLEX": 8}

    plan = cli("group", "terminate", "PAYROLL", "--host", HOST, "--dry-run", catalog=catalog)
    assert plan.stdout.count("4 DUPLEX -> SIMPLEX") == 2
    assert "[y/N]" not in plan.stderr
    assert counts(catalog) == {"DUPLEX": 8}

    code, out, err = on_a_terminal(
        "group", "terminate", "PAYROLL", "--host", HOST, answer=b"n", catalog=catalog
    )
    assert code == 1, err
    assert "terminate 8 pairs of PAYROLL? [y/N]" in err
    assert "both sides become SIMPLEX" in " ".join(err.split())
    assert "group terminate PAYROLL: not confirmed: nothing was sent" in " ".join(err.split())
    assert out == ""
    assert counts(catalog) == {"DUPLEX": 8}

    code, out, err = on_a_terminal(
        "group", "terminate", "PAYROLL", "--host", HOST, "--json", answer=b"y", catalog=catalog
    )
    assert code == 0, err
    assert "terminate 8 pairs of PAYROLL? [y/N]" in err
    report = json.loads(out)  # the question went to stderr: stdout is the one JSON document
    assert (report["op"], report["counts"], report["failed"]) == ("terminate", {"SIMPLEX": 8}, 0)
    assert counts(catalog) == {"SIMPLEX": 8}


async def test_yes_runs_without_a_question(world, tmp_path):
    """With --yes the operation runs off a terminal and prints no question."""
    catalog = tmp_path / "catalog.db"
    cli("host", "add", str(host_file(tmp_path, world)), catalog=catalog)
    cli("scan", HOST, catalog=catalog)
    definition = tmp_path / "payroll.toml"
    definition.write_text(
        '[group]\nname = "PAYROLL"\n'
        '[[pairs]]\nhost = "hosta"\ndevices = "1A00-1A01"\nsecondary_devices = "2B00-2B01"\n'
    )
    cli("group", "define", str(definition), catalog=catalog)
    cli("group", "establish", "PAYROLL", "--host", HOST, "--wait", catalog=catalog)
    run = cli("group", "terminate", "PAYROLL", "--host", HOST, "-y", catalog=catalog)
    assert "[y/N]" not in run.stderr
    assert counts(catalog) == {"SIMPLEX": 2}
