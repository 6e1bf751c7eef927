# Tests for remcopy.controller.config: a good file loads, and every bad one is refused with one
# ConfigError naming the file, the key path and the value, listing all problems at once.
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from remcopy import secretfiles
from remcopy.controller.config import TESTING_KEYS, ControllerConfig, load_controller_config
from remcopy.errors import ConfigError
from remcopy.pki import Site

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

GOOD = """\
plain_tcp = true

[controller]
name = "cntl1"
serial = 64015
listen = "127.0.0.1:7401"
data_dir = "cntl1-data"

[[lss]]
id = "0A"
ssid = "1A00"

[[volumes]]
lss = "0A"
cca = "00"
volser = "PAY001"
size = "64MiB"

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
lss = ["0A"]
"""


def _edited(*edits: tuple[str, str]) -> str:
    """GOOD with each (old, new) applied; every old text must occur exactly once."""
    text = GOOD
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


SECRETS = {"hosta.secret": "s3cret-hosta-key", "hostb.secret": "s3cret-hostb-key"}


def _write(tmp_path: Path, text: str, secrets: dict[str, str] = SECRETS) -> Path:
    """The config and the 0600 secret files it names, in tmp_path."""
    for name, secret in secrets.items():
        (tmp_path / name).write_text(secret + "\n")
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "cntl.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it names secrets: a controller refuses it readable by others
    return path


def _example(tmp_path: Path, name: str) -> Path:
    """A copy of docs/examples/NAME made 0600 (a checkout makes it 0644: refused), with the
    certificates its [tls] names made as the docs say (`remcopy pki` in site-pki/)."""
    path = tmp_path / name
    shutil.copy(EXAMPLES / name, path)
    path.chmod(0o600)
    for secret in ("hosta.secret", "cntl1-cntl2.secret"):  # `remcopy secret new` makes them
        if not (tmp_path / secret).exists():
            secretfiles.new(tmp_path / secret)
    Site(tmp_path / "site-pki").files(path.stem, "controller")
    return path


def _refusal(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_controller_config(path)
    return path, info.value


# A good file -----------------------------------------------------------------------------------


def test_load_controller_config_good_file(tmp_path: Path) -> None:
    """A good file loads with its defaults filled in and data_dir taken from its folder."""
    path = _write(tmp_path, GOOD)

    config = load_controller_config(path)

    section = config.controller
    assert (section.name, section.serial, section.listen) == ("cntl1", 64015, ("127.0.0.1", 7401))
    assert section.data_dir == tmp_path / "cntl1-data"
    assert section.track_size == 64 * 1024
    assert section.format_missing is False
    assert section.shutdown_grace_s == 10.0
    assert [(v.lss, v.cca, v.volser, v.size) for v in config.volumes] == [
        (0x0A, 0x00, "PAY001", 64 * 1024 * 1024),
        (0x0A, 0x01, "PAY002", 1024 * 1024),
    ]
    assert config.ssid_of(0x0A) == 0x1A00
    assert config.volume_path(config.volumes[0]) == tmp_path / "cntl1-data/volumes/PAY001.vol"
    assert [(h.name, h.lss) for h in config.hosts] == [("hosta", None), ("hostb", [0x0A])]
    assert config.peers == []
    assert [h.secret for h in config.hosts] == ["s3cret-hosta-key", "s3cret-hostb-key"]
    assert sorted(tmp_path.iterdir()) == sorted([path, *(tmp_path / n for n in SECRETS)])


def test_load_controller_config_boundaries(tmp_path: Path) -> None:
    """A secret file of exactly 16 bytes, a one-track volume and lower-case hex all load."""
    text = _edited(
        ('size = "1MiB"', "size = 65536"),
        ('ssid = "1A00"', 'ssid = "1a00"'),
        ('volser = "PAY002"', 'volser = "pay002"'),
    )

    secrets = {**SECRETS, "hosta.secret": "0123456789abcdef"}
    config = load_controller_config(_write(tmp_path, text, secrets))

    assert config.hosts[0].secret == "0123456789abcdef"
    assert config.volumes[1].size == 65536
    assert config.volumes[1].volser == "PAY002"
    assert config.ssid_of(0x0A) == 0x1A00


@pytest.mark.parametrize("name", ["cntl1.toml", "cntl2.toml"])
def test_load_controller_config_examples(tmp_path: Path, name: str) -> None:
    """Each example in docs/examples loads with four volumes, host hosta and one peer."""
    config = load_controller_config(_example(tmp_path, name))

    assert len(config.volumes) == 4
    assert [h.name for h in config.hosts] == ["hosta"]
    assert len(config.peers) == 1


def test_load_controller_config_examples_name_each_other(tmp_path: Path) -> None:
    """The two examples name each other as peers with matching serial, address and secret."""
    one = load_controller_config(_example(tmp_path, "cntl1.toml"))
    two = load_controller_config(_example(tmp_path, "cntl2.toml"))

    def as_peer(config: ControllerConfig) -> tuple[str, int, tuple[str, int]]:
        return (config.controller.name, config.controller.serial, config.controller.listen)

    assert (one.peers[0].name, one.peers[0].serial, one.peers[0].address) == as_peer(two)
    assert (two.peers[0].name, two.peers[0].serial, two.peers[0].address) == as_peer(one)
    assert one.peers[0].secret == two.peers[0].secret


# One problem at a time -------------------------------------------------------------------------

# (id, edit of GOOD, key path, text naming the value)
BAD_CASES = [
    ("missing required key", ("serial = 64015\n", ""), "controller.serial", "missing required key"),
    ("wrong type", ('name = "cntl1"', "name = 5"), "controller.name", "(got 5)"),
    ("wrong type size", ('size = "1MiB"', "size = [1]"), "volumes[1].size", "(got [1])"),
    (
        "unknown key",
        ('data_dir = "cntl1-data"', 'data_dir = "cntl1-data"\ncolour = "blue"'),
        "controller.colour",
        "unknown key (got 'blue')",
    ),
    ("duplicate cca", ('cca = "01"', 'cca = "00"'), "volumes[1].cca", "duplicate CCA 00 in LSS 0A"),
    (
        "duplicate volser",
        ('volser = "PAY002"', 'volser = "pay001"\nfile = "other.vol"'),
        "volumes[1].volser",
        "duplicate volser 'PAY001'",
    ),
    (
        "volser bad character",
        ('volser = "PAY002"', 'volser = "PAY-02"'),
        "volumes[1].volser",
        "'PAY-02' is not a volser: '-' is not allowed",
    ),
    (
        "volume in undeclared lss",
        ('lss = "0A"\ncca = "01"', 'lss = "0C"\ncca = "01"'),
        "volumes[1].lss",
        "LSS 0C is not declared",
    ),
    (
        "size not a multiple of the track size",
        ('size = "1MiB"', "size = 1000"),
        "volumes[1].size",
        "multiple of the track size 65536 (got 1000)",
    ),
    ("zero size", ('size = "1MiB"', "size = 0"), "volumes[1].size", "(got 0)"),
    ("bad hex lss", ('id = "0A"', 'id = "0G"'), "lss[0].id", "(got '0G')"),
    ("signed hex lss", ('id = "0A"', 'id = "-1"'), "lss[0].id", "(got '-1')"),
    ("spaced hex lss", ('id = "0A"', 'id = " A"'), "lss[0].id", "(got ' A')"),
    ("short hex cca", ('cca = "01"', 'cca = "1"'), "volumes[1].cca", "(got '1')"),
    ("prefixed hex cca", ('cca = "01"', 'cca = "0x"'), "volumes[1].cca", "(got '0x')"),
    ("bad hex ssid", ('ssid = "1A00"', 'ssid = "1A0"'), "lss[0].ssid", "(got '1A0')"),
    ("integer host lss", ('lss = ["0A"]', "lss = [10]"), "hosts[1].lss[0]", "(got 10)"),
    (
        "listen without port",
        ('listen = "127.0.0.1:7401"', 'listen = "127.0.0.1"'),
        "controller.listen",
        "(got '127.0.0.1')",
    ),
    (
        "listen port out of range",
        ('listen = "127.0.0.1:7401"', 'listen = "127.0.0.1:65536"'),
        "controller.listen",
        "(got '127.0.0.1:65536')",
    ),
    (
        "listen without host",
        ('listen = "127.0.0.1:7401"', 'listen = ":7401"'),
        "controller.listen",
        "(got ':7401')",
    ),
    (
        "listen port in non-ASCII digits",
        ('listen = "127.0.0.1:7401"', 'listen = "127.0.0.1:\u0667\u0664\u0660\u0661"'),
        "controller.listen",
        "(got '127.0.0.1:\u0667\u0664\u0660\u0661')",
    ),
    (
        "size in non-ASCII digits",
        ('size = "1MiB"', 'size = "\u0661MiB"'),
        "volumes[1].size",
        "(got '\u0661MiB')",
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
        "duplicate name 'hosta' (also hosts[0])",
    ),
]


@pytest.mark.parametrize(
    ("edit", "key_path", "value_text"),
    [
        pytest.param(edit, key_path, value_text, id=id_)
        for id_, edit, key_path, value_text in BAD_CASES
    ],
)
def test_load_controller_config_refuses(
    tmp_path: Path, edit: tuple[str, str], key_path: str, value_text: str
) -> None:
    """A file with one bad key is refused with exactly that problem, naming file, key and value."""
    path, error = _refusal(tmp_path, _edited(edit))

    assert error.problems == [error.problems[0]]
    problem = error.problems[0]
    assert problem.startswith(f"{path}: {key_path}: ")
    assert value_text in problem
    assert problem.count("(got ") <= 1
    assert str(error) == f"{path}: 1 problem\n  {problem}"
    assert error.exit_code == 2


def test_load_controller_config_never_shows_a_secret(tmp_path: Path) -> None:
    """A refused secret is never shown: inline, or too short in its file."""
    _, error = _refusal(tmp_path, _edited(('secret_file = "hosta.secret"', 'secret = "Zq9-x"')))

    assert error.problems[0].split(": ")[1] == "hosts[0].secret"
    assert len(error.problems) == 1
    assert "Zq9-x" not in str(error)
    path = _write(tmp_path, GOOD, {**SECRETS, "hostb.secret": "Zq9-x-short"})
    with pytest.raises(ConfigError) as info:
        load_controller_config(path)
    assert "the secret is too short (11 bytes, not shown" in str(info.value)
    assert "Zq9-x" not in str(info.value)


def test_load_controller_config_invalid_toml(tmp_path: Path) -> None:
    """Invalid TOML is refused naming the file and the line of the mistake."""
    path, error = _refusal(tmp_path, _edited(("serial = 64015", "serial = = 64015")))

    assert str(error).startswith(f"{path}: not valid TOML: ")
    assert "line 5" in str(error)


def test_load_controller_config_missing_file(tmp_path: Path) -> None:
    """A file that does not exist is refused naming the file."""
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as info:
        load_controller_config(path)

    assert str(info.value) == f"{path}: cannot read: No such file or directory"


# Every problem at once -------------------------------------------------------------------------


def test_load_controller_config_reports_every_shape_problem(tmp_path: Path) -> None:
    """A file with four malformed keys is refused with all four named."""
    text = _edited(
        ('name = "cntl1"', "name = 5"),
        ('data_dir = "cntl1-data"', 'data_dir = "cntl1-data"\ncolour = "blue"'),
        ('cca = "01"', 'cca = "1"'),
        ('secret_file = "hostb.secret"', 'secret = "short"'),
    )

    path, error = _refusal(tmp_path, text)

    assert [p.split(": ")[1] for p in error.problems] == [
        "hosts[1].secret",
        "controller.name",
        "controller.colour",
        "volumes[1].cca",
    ]
    assert all(p.startswith(f"{path}: ") for p in error.problems)
    assert str(error).startswith(f"{path}: 4 problems\n")
    assert all(f"\n  {p}" in str(error) for p in error.problems)


def test_load_controller_config_reports_every_cross_entry_problem(tmp_path: Path) -> None:
    """A file breaking six rules across entries is refused with all six named."""
    text = _edited(
        ('cca = "01"', 'cca = "00"'),
        ('volser = "PAY002"', 'volser = "PAY001"'),
        ('size = "1MiB"', "size = 1000"),
        ('name = "hostb"', 'name = "hosta"'),
    ) + ('\n[[volumes]]\nlss = "0C"\ncca = "00"\nvolser = "PAY003"\nsize = "1MiB"\n')

    path, error = _refusal(tmp_path, text)

    assert [p.split(": ")[1] for p in error.problems] == [
        "volumes[1].cca",
        "volumes[1].volser",
        "volumes[1].size",
        "volumes[1].file",
        "volumes[2].lss",
        "hosts[1].name",
    ]
    assert all(p.startswith(f"{path}: ") for p in error.problems)
    assert str(error).startswith(f"{path}: 6 problems\n")


# Test-only switches ---------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"REMCOPY_TESTING": "0"}, {"REMCOPY_TESTING": "yes"}])
def test_load_controller_config_refuses_test_only_keys_without_REMCOPY_TESTING_1(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """Each test-only key is one problem naming it; REMCOPY_TESTING must be exactly "1"."""
    path = _write(
        tmp_path,
        GOOD.replace(
            'data_dir = "cntl1-data"\n',
            'data_dir = "cntl1-data"\nplanted_bugs = []\nidentify_delay_s = 0.0\n'
            'volume_faults = {PAY001 = "eio_after:1"}\nplanted_bug_every = 5\n'
            'commit_pause_dir = "pause"\n',
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_controller_config(path, environ=environ)
    assert [p.split(": ")[1] for p in info.value.problems] == [
        f"controller.{key}" for key in TESTING_KEYS
    ]
    assert all("for testing only" in p for p in info.value.problems)


def test_load_controller_config_accepts_test_only_keys_with_REMCOPY_TESTING_1(
    tmp_path: Path,
) -> None:
    """With REMCOPY_TESTING=1 the keys load, and testing() names exactly those set."""
    path = _write(
        tmp_path,
        GOOD.replace('data_dir = "cntl1-data"\n', 'data_dir = "x"\nplanted_bug_every = 5\n'),
    )
    config = load_controller_config(path, environ={"REMCOPY_TESTING": "1"})
    assert config.testing() == {"planted_bug_every": 5}
    assert load_controller_config(_write(tmp_path, GOOD), environ={}).testing() == {}


# TLS or, explicitly, plain TCP on loopback ---------------------------------------------------


def _tls_config(tmp_path: Path, *, key_mode: int = 0o600, listen: str = "127.0.0.1:7401") -> str:
    files = Site(tmp_path / "pki").files("cntl1", "controller")
    files.key.chmod(key_mode)
    return GOOD.replace("plain_tcp = true\n", "").replace(
        'listen = "127.0.0.1:7401"', f'listen = "{listen}"'
    ) + ('\n[tls]\nca = "pki/ca.pem"\ncert = "pki/cntl1.pem"\nkey = "pki/cntl1.key"\n')


def test_tls_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    """[tls] paths relative to the config's folder; a non-loopback listen is fine with TLS."""
    config = load_controller_config(_write(tmp_path, _tls_config(tmp_path, listen="0.0.0.0:7401")))
    files = config.tls_files()
    assert files is not None and files.key == tmp_path / "pki" / "cntl1.key"
    assert not config.plain_tcp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            lambda tmp: GOOD.replace("plain_tcp = true\n", ""),
            "tls: missing: every link is TLS",
        ),
        (
            lambda tmp: GOOD.replace('listen = "127.0.0.1:7401"', 'listen = "0.0.0.0:7401"'),
            "plain_tcp: refused: controller.listen 0.0.0.0:7401 is not a loopback address",
        ),
        (
            lambda tmp: GOOD.replace(
                'listen = "127.0.0.1:7401"',
                'listen = "127.0.0.1:7401"\nnbd_listen = "192.0.2.7:10809"',
            ),
            "controller.nbd_listen 192.0.2.7:10809 is not a loopback address",
        ),
        (
            lambda tmp: _tls_config(tmp, key_mode=0o644),
            "the TLS key is accessible by group or others (mode 0644, expected 0600)",
        ),
        (
            lambda tmp: _tls_config(tmp).replace('cert = "pki/cntl1.pem"', 'cert = "pki/no.pem"'),
            "tls.cert: cannot read",
        ),
    ],
    ids=["no-tls", "plain-not-loopback", "plain-nbd-not-loopback", "key-readable", "no-cert"],
)
def test_links_without_tls_or_with_an_exposed_key_are_refused(tmp_path: Path, text, expected):
    """No [tls] without plain_tcp, plain TCP off loopback, a key others may read: refused."""
    _path, err = _refusal(tmp_path, text(tmp_path))
    assert expected in str(err.problems), err.problems


def test_listen_ports_are_handed_out_from_the_part_given_in_turn() -> None:
    from remcopy.controller import process

    saved = (process._ports[0], process._next_port[0])
    try:
        # A part wide enough that another run's controllers on this machine cannot hold all
        # of it (ten ports failed so while a benchmark ran beside the tests).
        process.use_listen_ports(range(29_000, 30_000))
        first = [process.free_port() for _ in range(3)]
        assert all(29_000 <= port < 30_000 for port in first)
        assert first == sorted(first) and len(set(first)) == 3  # in turn, never one twice
        with pytest.raises(ValueError, match="not a part of"):
            process.use_listen_ports(range(1_000, 2_000))
    finally:
        process._ports[0], process._next_port[0] = saved
