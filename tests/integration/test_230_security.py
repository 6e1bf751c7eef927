# Secure by default (DESIGN.md section 6, docs/security.md) against real controller processes:
# test-only switches refused without REMCOPY_TESTING=1 and shown loudly with it; files at rest
# private to the controller's user; peer-supplied names escaped in the log.
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common import HOST, SECRET, controller_spec, status_args
from helpers import RawClient
from remcopy.catalog import Catalog
from remcopy.controller import statefile
from remcopy.controller.changemap import ChangeMap
from remcopy.controller.journal import Journal
from remcopy.controller.process import TESTING_ENV, ControllerProcess
from remcopy.controller.server import escape_name
from remcopy.controller.volume import Volume
from remcopy.ids import Volser
from remcopy.wire import native

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

    async with proc.channel(name=HOST, secret=SECRET) as channel:
        status = await channel.status()
    human = _remcopy(*status_args(proc, tmp_path))

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

    async with proc.channel(name=HOST, secret=SECRET) as channel:
        status = await channel.status()
    human = _remcopy(*status_args(proc, tmp_path))

    assert "testing" not in status
    assert human.returncode == 0, human.stderr
    assert "TESTING" not in human.stdout
    assert "TESTING" not in proc.log_text()


# At rest --------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in sorted(root.rglob("*"))}


async def test_a_controller_creates_its_files_0600_in_0700_folders(
    start_controller: Start, tmp_path: Path
) -> None:
    """Volumes, change maps, pairs.db with its -wal and -shm: 0600, in 0700 folders."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=2)
    proc = await start_controller(spec)
    async with proc.channel(name=HOST, secret=SECRET) as channel:
        await channel.write(0x0A00, 0, b"x" * 512)  # a running controller, its files open

    modes = _modes(spec.data_dir)

    for name in ("pairs.db", "pairs.db-wal", "pairs.db-shm", "volumes/CN0000.vol"):
        assert name in modes, (name, modes)
    folders = {name for name in modes if (spec.data_dir / name).is_dir()}
    assert folders >= {"volumes", "changemaps"}, modes
    assert {name: mode for name, mode in modes.items() if name in folders} == dict.fromkeys(
        folders, 0o700
    )
    assert {name: mode for name, mode in modes.items() if name not in folders} == {
        name: 0o600 for name in modes if name not in folders
    }
    assert _mode(spec.data_dir) == 0o700
    assert _mode(proc.config_path) == 0o600  # ControllerSpec.write: it holds secrets
    assert _mode(proc.log_path) == 0o600
    assert "accessible by group or others" not in proc.log_text()


def test_the_daemon_writes_its_log_and_pid_file_0600(tmp_path: Path) -> None:
    """`controller start` writes DATA_DIR/controller.log and .pid 0600 in a 0700 data_dir."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=1)
    config = spec.write(tmp_path / "cntla.toml")

    started = _remcopy("controller", "start", str(config))
    try:
        assert started.returncode == 0, started.stderr
        assert _mode(spec.data_dir) == 0o700
        assert _mode(spec.data_dir / "controller.log") == 0o600
        assert _mode(spec.data_dir / "controller.pid") == 0o600
    finally:
        stopped = _remcopy("controller", "stop", str(config))
    assert stopped.returncode == 0, stopped.stderr


def test_the_sqlite_catalog_is_created_0600(tmp_path: Path) -> None:
    """A new SQLite catalog file (and the folder made for it) is the user's alone."""
    path = tmp_path / "site" / "catalog.db"

    with Catalog.open(path):
        modes = _modes(tmp_path / "site")

    assert modes.pop("catalog.db") == 0o600
    assert set(modes.values()) <= {0o600}, modes  # -wal, -shm or -journal take its mode
    assert _mode(tmp_path / "site") == 0o700


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_config_with_secrets_open_to_others_is_refused(
    tmp_path: Path, command: str, mode: int
) -> None:
    """A config naming a secret file that group or others may access exits 2 with the fix."""
    spec = controller_spec(tmp_path, "cntla", 64015)
    config = spec.write(tmp_path / "cntla.toml")
    config.chmod(mode)

    result = _remcopy("controller", command, str(config))

    assert result.returncode == 2, result.stderr
    stderr = _flat(result.stderr)
    assert f"{config}: names secrets (hosts[0].secret_file)" in stderr
    assert f"mode {mode:04o}, expected 0600" in stderr
    assert f"run `chmod 600 {config}`" in stderr
    assert "Traceback" not in result.stderr
    assert not spec.data_dir.exists()


def test_a_config_without_secrets_may_be_readable_by_others(tmp_path: Path) -> None:
    """With no host or peer (no secret) a 0644 config is accepted, as ssh accepts a .pub."""
    spec = controller_spec(tmp_path, "cntla", 64015, hosts={})
    config = spec.write(tmp_path / "cntla.toml")
    config.chmod(0o644)

    result = _remcopy("controller", "check", str(config))

    assert result.returncode == 0, result.stderr


async def test_existing_files_open_to_others_are_left_alone_with_one_warning(
    start_controller: Start, tmp_path: Path
) -> None:
    """A 0644 volume file and 0755 data_dir made by the admin keep their modes; one warning."""
    spec = controller_spec(tmp_path, "cntla", 64015, volumes=2)
    spec.data_dir.mkdir(mode=0o755)
    spec.data_dir.chmod(0o755)
    volume = spec.data_dir / "PRE.vol"
    Volume.create(
        volume, volser=Volser.parse(spec.volumes[0].volser), tracks=64, durable=False
    ).close()
    volume.chmod(0o644)
    config = spec.write(tmp_path / "cntla.toml")
    config.write_text(
        config.read_text().replace(
            f'volser = "{spec.volumes[0].volser}"\n',
            f'volser = "{spec.volumes[0].volser}"\nfile = "PRE.vol"\n',
        )
    )
    assert 'file = "PRE.vol"' in config.read_text()

    proc = await start_controller_from(config)
    try:
        warnings = [ln for ln in proc.log_text().splitlines() if "group or others" in ln]
        assert len(warnings) == 1, proc.log_tail()
        assert "2 files or folders" in warnings[0]
        assert str(volume) in warnings[0] and str(spec.data_dir) in warnings[0]
        assert _mode(volume) == 0o644
        assert _mode(spec.data_dir) == 0o755
        assert _mode(spec.data_dir / "volumes" / f"{spec.volumes[1].volser}.vol") == 0o600
    finally:
        await proc.stop()


async def start_controller_from(config: Path) -> ControllerProcess:
    return await ControllerProcess(config).start()


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """With umask 0 a volume, journal, change map and state file are still 0600 in 0700."""
    old = os.umask(0)
    try:
        volume = Volume.create(tmp_path / "v" / "A.vol", volser=Volser.parse("A"), tracks=4)
        journal = Journal(tmp_path / "journal" / "1.jnl")
        changemap = ChangeMap(tmp_path / "changemaps" / "0A00.map", 4, 65536)
        statefile.write_atomic(tmp_path / "pairs.json", {"devices": {}})
        for closing in (volume, journal, changemap):
            closing.close()
    finally:
        os.umask(old)

    assert _modes(tmp_path) == {
        "v": 0o700,
        "v/A.vol": 0o600,
        "journal": 0o700,
        "journal/1.00000001.jnl": 0o600,  # its first segment
        "changemaps": 0o700,
        "changemaps/0A00.map": 0o600,
        "pairs.json": 0o600,
    }


# Names from the network in the log -------------------------------------------------------------

FORGED = "remcopy.controller INFO authenticated host admin from 10.0.0.1:5000"


@pytest.mark.parametrize(
    "name",
    [f"intruder\n{FORGED}", f"intruder\r\n{FORGED}", f"intruder\u2028{FORGED}", "a\x1b[2Kb"],
    ids=["newline", "crlf", "line-separator", "terminal-escape"],
)
async def test_a_name_in_hello_cannot_forge_a_log_line(
    start_controller: Start, tmp_path: Path, name: str
) -> None:
    """A HELLO name with a newline or control characters is logged escaped, on one line."""
    proc = await start_controller(controller_spec(tmp_path, "cntla", 64015))
    client = await RawClient.to(proc, HOST)
    try:
        reply = await client.hello(name)
        assert isinstance(reply, native.ErrorReply)
    finally:
        client.writer.close()
    async with proc.channel(name=HOST, secret=SECRET):
        pass  # its "authenticated" line comes after the refusal's

    log = proc.log_text()
    refused = [line for line in log.splitlines() if "refused" in line]
    assert len(refused) == 1, log
    assert escape_name(name) in refused[0]
    assert "\x1b" not in log and "\u2028" not in log and "\r" not in log
    assert not any(line.startswith(FORGED) for line in log.splitlines())
    assert f"authenticated host {HOST} from" in log


def test_escape_name_leaves_printable_names_and_escapes_the_rest() -> None:
    """Printable names are unchanged; control characters and backslashes become escapes."""
    assert escape_name("hosta") == "hosta"
    assert escape_name("host a-1.é") == "host a-1.é"
    assert escape_name("a\nb") == "a\\nb"
    assert escape_name("a\\nb") == "a\\\\nb"  # a literal backslash cannot fake an escape
    assert escape_name("a\x1b[31m") == "a\\x1b[31m"
