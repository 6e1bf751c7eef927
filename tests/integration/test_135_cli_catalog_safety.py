# Catalog safety: a command that reads the catalog, or acts on what it holds, never creates one.
# A mistyped --catalog or REMCOPY_CATALOG exits 2 naming the path and how to make a catalog,
# and leaves no folder and no file behind. `remcopy host add` and `remcopy catalog init` are
# the commands that create one.
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pytest
from test_130_cli_bad_input import COMMANDS

from remcopy.catalog import Catalog
from remcopy.cli.main import cli, main
from remcopy.ids import HardwareAddress
from remcopy.workload import Layout, Volume
from remcopy.workload.log import LogWriter

# Every command that takes --catalog, with arguments that get it as far as opening the catalog.
# `host add` is not here: it creates the catalog (its own test below).
NEEDS_A_CATALOG: dict[tuple[str, ...], tuple[str, ...]] = {
    ("host", "list"): (),
    ("host", "show"): ("hosta",),
    ("scan",): ("hosta",),
    ("map", "show"): ("hosta",),
    ("map", "diff"): ("hosta",),
    ("map", "check"): (),
    ("group", "define"): ("{definition}",),
    ("group", "add"): ("PAYROLL", "--pair", "PAY001,PAYB01"),
    ("group", "remove-pair"): ("PAYROLL", "PAY001", "--host", "hosta"),
    ("group", "load"): ("PAYROLL", "--host", "hosta"),
    ("group", "list"): (),
    ("group", "show"): ("PAYROLL", "--host", "hosta"),
    ("group", "status"): ("PAYROLL", "--host", "hosta"),
    ("group", "pairs"): ("PAYROLL", "--host", "hosta"),
    ("group", "wait"): ("PAYROLL", "--host", "hosta", "--state", "DUPLEX"),
    ("group", "establish"): ("PAYROLL", "--host", "hosta"),
    ("group", "suspend"): ("PAYROLL", "--host", "hosta"),
    ("group", "resume"): ("PAYROLL", "--host", "hosta"),
    ("group", "recover"): ("PAYROLL", "--host", "hostb", "--yes"),
    ("group", "failback"): ("PAYROLL", "--host", "hostb", "--yes"),
    ("group", "terminate"): ("PAYROLL", "--host", "hosta", "--yes"),
    ("group", "return-home"): ("PAYROLL", "--host", "hosta", "--yes"),
    ("group", "shadow"): ("PAYROLL", "--host", "hostb", "--to", "{shadow_map}"),
    ("workload", "run"): ("--group", "PAYROLL", "--host", "hosta", "--log", "{new_log}"),
    ("verify",): ("--group", "PAYROLL", "--host", "hosta", "--log", "{log}"),
    ("tui",): (),
    ("log",): (),
    ("events",): (),
}


def _takes_a_catalog(path: tuple[str, ...]) -> bool:
    command: click.Command = cli
    ctx = click.Context(cli, info_name="remcopy")
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None
        command = found
        ctx = click.Context(command, info_name=name, parent=ctx)
    return any(p.name == "catalog_location" for p in command.params)


def _files(tmp_path: Path) -> dict[str, str]:
    """Arguments that are good files, so that each command gets as far as the catalog."""
    definition = tmp_path / "payroll.toml"
    definition.write_text('[group]\nname = "PAYROLL"\n[[pairs]]\nvolser = "PAY001"\n')
    shadow_map = tmp_path / "shadow.map"
    shadow_map.write_text("65000:2B00:20:00 66000:3C00:30:00\n")
    volumes = tuple(
        Volume(
            address=HardwareAddress.parse(f"{serial}:1A00:0A:00"),
            volser=f"PAY{serial - 64014:03d}",
            controller=f"cntla{serial - 64015}",
            capacity_bytes=1 << 24,
        )
        for serial in (64015, 64016)
    )
    layout = Layout.plan(run_id=1, seed=1, chains=2, volumes=volumes)
    log = tmp_path / "run.jsonl"
    LogWriter.create(log, layout, group="PAYROLL", host="hosta").close(writes=0, stopped="writes")
    return {
        "{definition}": str(definition),
        "{shadow_map}": str(shadow_map),
        "{log}": str(log),
        "{new_log}": str(tmp_path / "new.jsonl"),
    }


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["remcopy", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_every_command_with_a_catalog_is_covered():
    """The table names every command that takes --catalog but host add (so none slips by)."""
    takes = {path for path in COMMANDS if _takes_a_catalog(path)}
    assert takes == {*NEEDS_A_CATALOG, ("host", "add")}


@pytest.mark.parametrize("path", sorted(NEEDS_A_CATALOG), ids=" ".join)
@pytest.mark.parametrize("given_by", ["--catalog", "REMCOPY_CATALOG"])
def test_missing_catalog_exits_2_and_creates_nothing(path, given_by, tmp_path, capsys, monkeypatch):
    """A catalog path that does not exist exits 2 naming it and `catalog init`; nothing is made."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = _files(inputs)
    args = [files.get(arg, arg) for arg in NEEDS_A_CATALOG[path]]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    missing = work / "typo" / "catalog.db"
    if given_by == "--catalog":
        monkeypatch.delenv("REMCOPY_CATALOG", raising=False)
        args += ["--catalog", str(missing)]
    else:
        monkeypatch.setenv("REMCOPY_CATALOG", "typo/catalog.db")
    before = sorted(p.name for p in inputs.iterdir())
    code, out, err = run(capsys, monkeypatch, *path, *args)
    assert code == 2, (path, out, err)
    assert f"no catalog at {missing} (from {given_by}): no such file" in " ".join(err.split())
    assert f"remcopy catalog init {missing}" in " ".join(err.split())
    assert "Traceback" not in err
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in inputs.iterdir()) == before


def test_missing_default_catalog_names_the_default(tmp_path, capsys, monkeypatch):
    """With neither --catalog nor REMCOPY_CATALOG, the error says the default was used."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REMCOPY_CATALOG", raising=False)
    code, _out, err = run(capsys, monkeypatch, "group", "list")
    assert code == 2
    assert f"no catalog at {tmp_path / 'remcopy.db'} (from the default, remcopy.db" in err
    assert list(tmp_path.iterdir()) == []


def _host_file(folder: Path, secret_line: str) -> Path:
    definition = folder / "hosta.toml"
    definition.write_text(
        f'plain_tcp = true\n[host]\nname = "hosta"\n{secret_line}\n\n'
        '[[controllers]]\nname = "cntla0"\naddress = "127.0.0.1:7401"\n\n'
        '[[paths]]\ndevices = "1A00-1A03"\ncontroller = "cntla0"\nssid = "1A00"\nlss = "0A"\n'
        'cca = "00"\n'
    )
    definition.chmod(0o600)
    return definition


def test_host_add_refuses_a_secret_in_the_file(tmp_path, capsys, monkeypatch):
    """A host file with its secret inline: exit 2 naming the fix; the catalog stores no
    secret (nothing at all)."""
    definition = _host_file(tmp_path, 'secret = "s3cret-hosta-key"')
    catalog = tmp_path / "catalog.db"
    code, out, err = run(
        capsys, monkeypatch, "host", "add", str(definition), "--catalog", str(catalog)
    )
    assert code == 2
    assert "the catalog keeps no plaintext secret" in err and "remcopy secret new" in err
    assert "s3cret-hosta-key" not in err + out
    with Catalog.open(catalog, create=False) as opened:
        assert opened.hosts_all() == []


def test_host_add_creates_the_catalog(tmp_path, capsys, monkeypatch):
    """`host add` makes a new catalog, folders included, and stores the host in it."""
    (tmp_path / "hosta.secret").write_text("s3cret-hosta-key\n")
    (tmp_path / "hosta.secret").chmod(0o600)
    definition = _host_file(tmp_path, 'secret_file = "hosta.secret"')
    catalog = tmp_path / "new" / "catalog.db"
    code, out, err = run(
        capsys, monkeypatch, "host", "add", str(definition), "--catalog", str(catalog), "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {"host": "hosta", "devices": 4, "schema": 1}
    code, out, err = run(capsys, monkeypatch, "host", "list", "--catalog", str(catalog), "--json")
    assert code == 0, err
    assert [row["host"] for row in json.loads(out)] == ["hosta"]


def test_catalog_init_creates_once_and_is_safe_twice(tmp_path, capsys, monkeypatch):
    """`catalog init` creates an SQLite catalog (folders too); again, it reports it was there."""
    path = tmp_path / "site" / "catalog.db"
    code, out, err = run(capsys, monkeypatch, "catalog", "init", str(path), "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["created"] is True
    assert first["schema"] == 1
    assert first["catalog"] == f"sqlite+pysqlite:///{path}"
    with Catalog.open(path, create=False) as opened:
        opened.put_host("hosta", {"ranges": []}, replace=False)
    code, out, err = run(capsys, monkeypatch, "catalog", "init", str(path))
    assert code == 0, err
    assert out.strip() == f"catalog already there: sqlite+pysqlite:///{path}"
    with Catalog.open(path, create=False) as opened:
        assert [h.name for h in opened.hosts_all()] == ["hosta"]
    code, out, err = run(capsys, monkeypatch, "group", "list", "--catalog", str(path), "--json")
    assert (code, json.loads(out)) == (0, [])


def test_catalog_init_refuses_a_bad_url(capsys, monkeypatch):
    """An unsupported database URL is refused naming the driver, with no traceback."""
    code, _out, err = run(capsys, monkeypatch, "catalog", "init", "mysql://u@h/db")
    assert code != 0
    assert "unsupported database: driver=mysql" in err
    assert "Traceback" not in err


def test_json_error_is_one_document_on_stdout(tmp_path, capsys, monkeypatch):
    """With --json, an error before the command's document prints one error document on
    stdout, with the schema and the exit code; the message goes to stderr as well."""
    missing = tmp_path / "missing.db"
    code, out, err = run(capsys, monkeypatch, "group", "list", "--catalog", str(missing), "--json")
    assert code == 2
    document = json.loads(out)
    assert sorted(document) == ["error", "exit_code", "schema"]
    assert (document["schema"], document["exit_code"]) == (1, 2)
    assert document["error"].startswith(f"catalog: no catalog at {missing} (from --catalog)")
    assert "no catalog at" in err
    assert list(tmp_path.iterdir()) == []


def test_json_usage_error_is_a_document_too(tmp_path, capsys, monkeypatch):
    """A usage error (a bad --state) with --json prints the error document, exit 2."""
    code, out, err = run(
        capsys, monkeypatch, "group", "wait", "G", "--host", "h", "--state", "NOPE", "--json"
    )
    assert code == 2
    document = json.loads(out)
    assert (document["schema"], document["exit_code"]) == (1, 2)
    assert "'NOPE' is not one of" in document["error"]
    assert "'NOPE' is not one of" in err


def test_json_error_without_json_prints_nothing_on_stdout(tmp_path, capsys, monkeypatch):
    """Without --json an error is a message on stderr only."""
    code, out, _err = run(capsys, monkeypatch, "group", "list", "--catalog", str(tmp_path / "x"))
    assert (code, out) == (2, "")
