# `remcopy pki` and `remcopy secret`, and the files they make as configs use them: a site CA
# and certificates, secrets of >= 128 random bits in 0600 files, and every file that must be
# private refused (exit 2, naming the file and the fix) when others can read it.
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from common import HOST, controller_spec, run_remcopy
from remcopy.controller.process import ControllerProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pki_init_and_issue_make_private_keys_and_refuse_to_overwrite(tmp_path: Path):
    """init: ca.pem + ca.key 0600 in a 0700 folder; issue: NAME.pem/.key with the name and
    kind; running either again is refused (exit 2) and changes nothing; --force replaces."""
    pki_dir = tmp_path / "site-pki"
    catalog = tmp_path / "unused.db"
    run_remcopy("pki", "init", "--dir", str(pki_dir), catalog=catalog)
    assert _mode(pki_dir) == 0o700 and _mode(pki_dir / "ca.key") == 0o600
    run_remcopy(
        "pki",
        "issue",
        "--dir",
        str(pki_dir),
        "--name",
        "cntl1",
        "--kind",
        "controller",
        catalog=catalog,
    )
    out = run_remcopy(
        "pki", "issue", "--dir", str(pki_dir), "--name", "hosta", "--json", catalog=catalog
    )
    assert json.loads(out.stdout)["key"] == str(pki_dir / "hosta.key")
    assert _mode(pki_dir / "hosta.key") == 0o600
    shown = json.loads(
        run_remcopy("pki", "show", str(pki_dir / "cntl1.pem"), "--json", catalog=catalog).stdout
    )
    assert (shown["name"], shown["kind"]) == ("cntl1", "controller")
    before = (pki_dir / "hosta.pem").read_bytes()
    again = run_remcopy(
        "pki", "issue", "--dir", str(pki_dir), "--name", "hosta", catalog=catalog, code=2
    )
    assert "exists already (use --force to replace)" in again.stderr
    assert (pki_dir / "hosta.pem").read_bytes() == before
    run_remcopy("pki", "init", "--dir", str(pki_dir), catalog=catalog, code=2)
    run_remcopy(
        "pki", "issue", "--dir", str(pki_dir), "--name", "hosta", "--force", catalog=catalog
    )
    assert (pki_dir / "hosta.pem").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--name", "host\nx"], "is not a usable certificate name"),
        (["--name", "hosta", "--days", "0"], "--days: must be 1 to 36500 days"),
        (["--name", "hosta", "--kind", "printer"], "Invalid value for '--kind'"),
    ],
    ids=["bad-name", "bad-days", "bad-kind"],
)
def test_pki_issue_refuses_bad_input(tmp_path: Path, args, expected):
    pki_dir = tmp_path / "pki"
    catalog = tmp_path / "unused.db"
    run_remcopy("pki", "init", "--dir", str(pki_dir), catalog=catalog)
    run = run_remcopy("pki", "issue", "--dir", str(pki_dir), *args, catalog=catalog, code=2)
    assert expected in run.stderr
    assert sorted(p.name for p in pki_dir.iterdir()) == ["ca.key", "ca.pem"]


def test_pki_issue_without_a_ca_names_the_fix(tmp_path: Path):
    run = run_remcopy(
        "pki",
        "issue",
        "--dir",
        str(tmp_path / "none"),
        "--name",
        "hosta",
        catalog=tmp_path / "unused.db",
        code=2,
    )
    assert "no site CA here" in run.stderr and "remcopy pki init" in run.stderr


def test_secret_new_writes_256_random_bits_0600_and_never_overwrites(tmp_path: Path):
    catalog = tmp_path / "unused.db"
    path = tmp_path / "secrets" / "hosta.secret"
    run_remcopy("secret", "new", "--out", str(path), catalog=catalog)
    first = path.read_text().strip()
    assert len(first) == 64 and int(first, 16) >= 0
    assert _mode(path) == 0o600
    again = run_remcopy("secret", "new", "--out", str(path), catalog=catalog, code=2)
    assert "exists already" in again.stderr and path.read_text().strip() == first
    run_remcopy("secret", "new", "--out", str(path), "--force", catalog=catalog)
    assert path.read_text().strip() != first


def _with_secret_file(tmp_path: Path, mode: int) -> Path:
    """cntla's config naming hosta's secret by file (made by `remcopy secret new`)."""
    secret = tmp_path / "hosta.secret"
    run_remcopy("secret", "new", "--out", str(secret), catalog=tmp_path / "unused.db")
    secret.chmod(mode)
    config = controller_spec(tmp_path, "cntla", 64015).write(tmp_path / "cntla.toml")
    text = config.read_text()
    start = text.index("[[hosts]]")
    config.write_text(text[:start] + f'[[hosts]]\nname = "{HOST}"\nsecret_file = "hosta.secret"\n')
    return config


async def test_a_config_names_a_secret_file_and_the_host_proves_it(tmp_path: Path):
    """secret_file (relative to the config) is the host's secret: a host knowing the file's
    content is served over TLS."""
    config = _with_secret_file(tmp_path, 0o600)
    proc = await ControllerProcess(config).start()
    try:
        secret = (tmp_path / "hosta.secret").read_text().strip()
        async with proc.channel(name=HOST, secret=secret) as channel:
            assert len(await channel.identify()) == 4
    finally:
        await proc.kill()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["world", "group", "other"])
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, mode: int):
    config = _with_secret_file(tmp_path, mode)
    run = run_remcopy("controller", "check", str(config), catalog=tmp_path / "x.db", code=2)
    assert "hosts[0].secret_file" in run.stderr
    assert f"mode {mode:04o}, expected 0600" in run.stderr
    assert f"chmod 600 {tmp_path / 'hosta.secret'}" in run.stderr


def test_a_tls_key_others_can_read_is_refused(tmp_path: Path):
    spec = controller_spec(tmp_path, "cntla", 64015)
    config = spec.write(tmp_path / "cntla.toml")
    assert spec.site is not None
    key = spec.site.files("cntla", "controller").key
    key.chmod(0o644)
    try:
        run = run_remcopy("controller", "check", str(config), catalog=tmp_path / "x.db", code=2)
    finally:
        key.chmod(0o600)  # the session's site serves the other tests
    assert "tls.key" in run.stderr and "the TLS key is accessible by group or others" in run.stderr


def test_secret_and_secret_file_together_are_refused(tmp_path: Path):
    config = _with_secret_file(tmp_path, 0o600)
    config.write_text(config.read_text() + 'secret = "inline-secret-16-chars"\n')
    run = run_remcopy("controller", "check", str(config), catalog=tmp_path / "x.db", code=2)
    assert "give secret_file or secret, not both" in run.stderr


def test_a_host_definition_whose_tls_key_others_can_read_is_refused(tmp_path: Path):
    """`host add` checks the host's key like a controller's: exit 2, nothing stored."""
    pki_dir = tmp_path / "pki"
    catalog = tmp_path / "catalog.db"
    run_remcopy("pki", "init", "--dir", str(pki_dir), catalog=catalog)
    run_remcopy("pki", "issue", "--dir", str(pki_dir), "--name", HOST, catalog=catalog)
    (pki_dir / f"{HOST}.key").chmod(0o640)
    definition = tmp_path / "hosta.toml"
    definition.write_text(
        f'[tls]\nca = "pki/ca.pem"\ncert = "pki/{HOST}.pem"\nkey = "pki/{HOST}.key"\n\n'
        f'[host]\nname = "{HOST}"\nsecret = "s3cret-hosta-key"\n\n'
        '[[controllers]]\nname = "cntla"\naddress = "127.0.0.1:7401"\n\n'
        '[[paths]]\ndevices = "1A00-1A03"\ncontroller = "cntla"\nssid = "1A00"\nlss = "0A"\n'
        'cca = "00"\n'
    )
    definition.chmod(0o600)
    run = run_remcopy("host", "add", str(definition), catalog=catalog, code=2)
    assert "tls.key" in run.stderr and "(mode 0640, expected 0600)" in run.stderr
    listed = run_remcopy("host", "list", "--json", catalog=catalog)  # nothing stored
    assert HOST not in listed.stdout
