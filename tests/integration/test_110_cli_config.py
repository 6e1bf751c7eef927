# The controller config through the real CLI: `remcopy controller check` and `serve` run as
# processes, and every bad config ends with exit code 2 and a message naming file, key and
# value on stderr, never a traceback.
from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from remcopy.controller.process import write_private

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
CONFIG_NAME = "cntl.toml"
PROCESS_TIMEOUT_S = 60

GOOD = """\
plain_tcp = true

[controller]
name = "cntl1"
serial = 64015
listen = "127.0.0.1:0"
data_dir = "cntl1-data"
format_missing = true

[[lss]]
id = "0A"
ssid = "1A00"

[[volumes]]
lss = "0A"
cca = "00"
volser = "PAY001"
size = "1MiB"

[[volumes]]
lss = "0A"
cca = "01"
volser = "PAY002"
size = "1MiB"

[[hosts]]
name = "hosta"
secret_file = "hosta.secret"

[[hosts]]
name = "hostb"
secret_file = "hostb.secret"
"""
SECRETS = {"hosta.secret": "s3cret-hosta-key", "hostb.secret": "s3cret-hostb-key"}


def _write_config(folder: Path, text: str) -> None:
    """The config (0600) and the 0600 secret files GOOD names, in `folder`."""
    for name, secret in SECRETS.items():
        write_private(folder / name, secret + "\n")
    write_private(folder / CONFIG_NAME, text)


def _edited(*edits: tuple[str, str]) -> str:
    """GOOD with each (old, new) applied; every old text must occur exactly once."""
    text = GOOD
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _remcopy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remcopy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )


def _flat(text: str) -> str:
    """Text with every run of whitespace made one space (the console wraps long lines)."""
    return " ".join(text.split())


def _files(root: Path) -> list[Path]:
    """Every file and folder under `root` but the secret files GOOD names."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.name not in SECRETS)


# A good file ----------------------------------------------------------------------------------


def test_controller_check_good_file(tmp_path: Path) -> None:
    """`controller check` on a good file exits 0 and says ok."""
    _write_config(tmp_path, GOOD)

    result = _remcopy(tmp_path, "controller", "check", CONFIG_NAME)

    assert result.returncode == 0, result.stderr
    assert _flat(result.stdout).startswith(f"{CONFIG_NAME}: ok: controller cntl1 serial 64015")
    assert result.stderr == ""


def test_controller_check_good_file_json(tmp_path: Path) -> None:
    """`controller check --json` on a good file prints a document with ok true."""
    _write_config(tmp_path, GOOD)

    result = _remcopy(tmp_path, "controller", "check", "--json", CONFIG_NAME)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "config": CONFIG_NAME,
        "ok": True,
        "name": "cntl1",
        "serial": 64015,
        "listen": "127.0.0.1:0",
        "volumes": 2,
        "hosts": ["hosta", "hostb"],
        "peers": [],
        "schema": 1,
    }


@pytest.mark.parametrize("name", ["cntl1.toml", "cntl2.toml"])
def test_controller_check_examples(tmp_path: Path, name: str) -> None:
    """`controller check --json` accepts each example in docs/examples."""
    shutil.copy(EXAMPLES / name, tmp_path / name)
    (tmp_path / name).chmod(0o600)  # it names secrets: a checkout makes it 0644
    for secret in ("hosta.secret", "cntl1-cntl2.secret"):  # made as its comments say
        made = _remcopy(tmp_path, "secret", "new", "--out", secret)
        assert made.returncode == 0, made.stderr
    # The certificates its [tls] names, made as its comments say.
    made = _remcopy(tmp_path, "pki", "init", "--dir", "site-pki")
    assert made.returncode == 0, made.stderr
    controller = name.removesuffix(".toml")
    made = _remcopy(
        tmp_path, "pki", "issue", "--dir", "site-pki", "--name", controller, "--kind", "controller"
    )
    assert made.returncode == 0, made.stderr

    result = _remcopy(tmp_path, "controller", "check", "--json", name)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["volumes"] == 4
    assert document["hosts"] == ["hosta"]
    assert document["peers"] == [{"cntl1.toml": "cntl2", "cntl2.toml": "cntl1"}[name]]


def test_controller_check_creates_nothing(tmp_path: Path) -> None:
    """`controller check` with format_missing creates neither data_dir nor any file."""
    _write_config(tmp_path, GOOD)
    before = _files(tmp_path)

    result = _remcopy(tmp_path, "controller", "check", CONFIG_NAME)

    assert result.returncode == 0, result.stderr
    assert _files(tmp_path) == before
    assert not (tmp_path / "cntl1-data").exists()


# Bad files ------------------------------------------------------------------------------------

# (id, edit of GOOD, key path, text naming the value)
BAD_CASES = [
    ("missing required key", ("serial = 64015\n", ""), "controller.serial", "missing required key"),
    ("wrong type", ('name = "cntl1"', "name = 5"), "controller.name", "(got 5)"),
    (
        "unknown key",
        ("format_missing = true", 'format_missing = true\ncolour = "blue"'),
        "controller.colour",
        "unknown key (got 'blue')",
    ),
    ("duplicate cca", ('cca = "01"', 'cca = "00"'), "volumes[1].cca", "duplicate CCA 00 in LSS 0A"),
    (
        "duplicate volser",
        ('volser = "PAY002"', 'volser = "PAY001"\nfile = "other.vol"'),
        "volumes[1].volser",
        "duplicate volser 'PAY001'",
    ),
    (
        "volser bad character",
        ('volser = "PAY002"', 'volser = "PAY-02"'),
        "volumes[1].volser",
        "(got 'PAY-02')",
    ),
    (
        "volume in undeclared lss",
        ('lss = "0A"\ncca = "01"', 'lss = "0C"\ncca = "01"'),
        "volumes[1].lss",
        "LSS 0C is not declared",
    ),
    (
        "size not a multiple of the track size",
        ('size = "1MiB"\n\n[[hosts]]', "size = 1000\n\n[[hosts]]"),
        "volumes[1].size",
        "(got 1000)",
    ),
    ("bad hex lss", ('id = "0A"', 'id = "0G"'), "lss[0].id", "(got '0G')"),
    ("bad hex cca", ('cca = "01"', 'cca = "1"'), "volumes[1].cca", "(got '1')"),
    ("bad hex ssid", ('ssid = "1A00"', 'ssid = "1A0"'), "lss[0].ssid", "(got '1A0')"),
    (
        "bad listen address",
        ('listen = "127.0.0.1:0"', 'listen = "127.0.0.1"'),
        "controller.listen",
        "(got '127.0.0.1')",
    ),
    (
        "inline secret",
        ('secret_file = "hosta.secret"', 'secret = "abc1234"'),
        "hosts[0].secret",
        "a config keeps no secret itself: write it to a 0600 file (`remcopy secret new --out "
        'FILE`) and name the file: secret_file = "FILE"',
    ),
    (
        "duplicate host name",
        ('name = "hostb"', 'name = "hosta"'),
        "hosts[1].name",
        "duplicate name 'hosta'",
    ),
]


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize(
    ("edit", "key_path", "value_text"),
    [pytest.param(edit, key, value, id=id_) for id_, edit, key, value in BAD_CASES],
)
def test_controller_refuses_bad_config(
    tmp_path: Path, command: str, edit: tuple[str, str], key_path: str, value_text: str
) -> None:
    """`controller check` and `serve` exit 2 naming the file, the bad key and its value."""
    _write_config(tmp_path, _edited(edit))

    result = _remcopy(tmp_path, "controller", command, CONFIG_NAME)

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    stderr = _flat(result.stderr)
    assert f"error: {CONFIG_NAME}: 1 problem " in stderr
    assert f"{CONFIG_NAME}: {key_path}: " in stderr
    assert _flat(value_text) in stderr
    assert "Traceback" not in result.stderr
    assert _files(tmp_path) == [Path(CONFIG_NAME)]


def test_controller_check_json_refuses_bad_config(tmp_path: Path) -> None:
    """`controller check --json` on a bad file exits 2 with the problems on stderr and, on
    stdout, one error document carrying them."""
    _write_config(tmp_path, _edited(('id = "0A"', 'id = "0G"')))

    result = _remcopy(tmp_path, "controller", "check", "--json", CONFIG_NAME)

    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert (document["schema"], document["exit_code"]) == (1, 2)
    assert f"{CONFIG_NAME}: lss[0].id: lss must be 2 hex digits (got '0G')" in document["error"]
    assert f"{CONFIG_NAME}: lss[0].id: " in _flat(result.stderr)


def test_controller_check_reports_every_problem(tmp_path: Path) -> None:
    """`controller check` on a file with three bad keys names all three."""
    text = _edited(
        ('name = "cntl1"', "name = 5"),
        ('ssid = "1A00"', 'ssid = "1A0"'),
        ('secret_file = "hosta.secret"', 'secret = "abc1234"'),
    )
    _write_config(tmp_path, text)

    result = _remcopy(tmp_path, "controller", "check", CONFIG_NAME)

    assert result.returncode == 2
    stderr = _flat(result.stderr)
    assert f"error: {CONFIG_NAME}: 3 problems " in stderr
    for key_path in ("controller.name", "lss[0].ssid", "hosts[0].secret"):
        assert f"{CONFIG_NAME}: {key_path}: " in stderr
    assert "Traceback" not in result.stderr


def test_controller_check_invalid_toml(tmp_path: Path) -> None:
    """`controller check` on invalid TOML exits 2 naming the file and the line."""
    _write_config(tmp_path, _edited(("serial = 64015", "serial = = 64015")))

    result = _remcopy(tmp_path, "controller", "check", CONFIG_NAME)

    assert result.returncode == 2
    stderr = _flat(result.stderr)
    assert f"error: {CONFIG_NAME}: not valid TOML: " in stderr
    assert "line 5" in stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check", "serve"])
def test_controller_refuses_missing_config(tmp_path: Path, command: str) -> None:
    """`controller check` and `serve` on a file that does not exist exit 2 naming it."""
    result = _remcopy(tmp_path, "controller", command, "absent.toml")

    assert result.returncode == 2
    assert _flat(result.stderr) == "error: absent.toml: cannot read: No such file or directory"
    assert _files(tmp_path) == []


# What only serve finds ------------------------------------------------------------------------


def test_controller_serve_port_in_use(tmp_path: Path) -> None:
    """`controller serve` exits 2 naming its listen address when that port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = _edited(('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
        _write_config(tmp_path, text)

        result = _remcopy(tmp_path, "controller", "serve", CONFIG_NAME)

    assert result.returncode == 2, result.stderr
    assert "ready" not in result.stdout
    stderr = _flat(result.stderr)
    assert f"controller.listen: cannot listen on 127.0.0.1:{port}: " in stderr
    assert "Traceback" not in result.stderr


def test_controller_serve_metrics_port_in_use(tmp_path: Path) -> None:
    """`controller serve` exits 2 naming its metrics_listen address when that port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = _edited(
            (
                'listen = "127.0.0.1:0"',
                f'listen = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:{port}"',
            )
        )
        _write_config(tmp_path, text)

        result = _remcopy(tmp_path, "controller", "serve", CONFIG_NAME)

    assert result.returncode == 2, result.stderr
    assert "ready" not in result.stdout
    assert f"controller.metrics_listen: cannot listen on 127.0.0.1:{port}: " in _flat(result.stderr)
    assert "Traceback" not in result.stderr


def test_controller_serve_file_not_a_volume(tmp_path: Path) -> None:
    """`controller serve` exits 2 naming a volume file that holds no label, and leaves it alone."""
    volume_file = tmp_path / "cntl1-data" / "volumes" / "PAY001.vol"
    volume_file.parent.mkdir(parents=True)
    garbage = random.Random(110).randbytes(256 * 1024)
    volume_file.write_bytes(garbage)
    _write_config(tmp_path, GOOD)

    result = _remcopy(tmp_path, "controller", "serve", CONFIG_NAME)

    assert result.returncode == 2, result.stderr
    assert "ready" not in result.stdout
    stderr = _flat(result.stderr)
    assert f"error: {CONFIG_NAME}: cannot open volumes " in stderr
    assert "volumes[0].file: volume file cntl1-data/volumes/PAY001.vol: no remcopy label" in stderr
    assert "Traceback" not in result.stderr
    assert volume_file.read_bytes() == garbage
