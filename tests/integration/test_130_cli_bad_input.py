# A look over the whole CLI as a new user would: every command has --help with an example,
# and every command given bad input exits 2 (or 1) with a message and no traceback.
from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from remcopy.catalog import Catalog
from remcopy.cli.main import cli, main


def _commands(
    group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every command path, found as click's help finds them (`remcopy` loads its subcommands
    on demand, so they are listed and loaded through the group, not read from a dict)."""
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"`{' '.join((*prefix, name))}` is listed but cannot load"
        path = (*prefix, name)
        if isinstance(command, click.Group):
            out.extend(_commands(command, click.Context(command, info_name=name, parent=ctx), path))
        else:
            out.append(path)
    return out


COMMANDS = _commands(cli, click.Context(cli, info_name="remcopy"))


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["remcopy", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_every_command_is_covered():
    """The sweep sees every command the CLI has (so a new one cannot slip past it)."""
    assert len(COMMANDS) >= 30
    assert ("group", "suspend") in COMMANDS
    assert ("controller", "serve") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_an_example(path, capsys, monkeypatch):
    """`--help` exits 0 and shows an example of the command."""
    code, out, _err = run(capsys, monkeypatch, *path, "--help")
    assert code == 0
    assert "Example:" in out
    assert f"remcopy {' '.join(path)}" in out


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_unknown_option_is_a_usage_error(path, capsys, monkeypatch):
    """An unknown option exits 2, names the option, and prints no traceback."""
    code, _out, err = run(capsys, monkeypatch, *path, "--no-such-option")
    assert code == 2
    assert "no-such-option" in err
    assert "Traceback" not in err


def _bad_inputs(tmp: Path) -> list[tuple[tuple[str, ...], int, str]]:
    missing = str(tmp / "missing.toml")
    catalog = ("--catalog", str(tmp / "c.db"))
    Catalog.open(tmp / "c.db").close()  # an empty catalog: a missing one is test_135's subject
    absent = ("--catalog", str(tmp / "absent.db"))
    junk = tmp / "junk.toml"
    junk.write_text("this is = = not toml")
    return [
        (("controller", "check", missing), 2, "cannot read"),
        (("controller", "check", str(junk)), 2, "not valid TOML"),
        (("controller", "serve", missing), 2, "cannot read"),
        (("controller", "status", "nohost", "--name", "h"), 2, "HOST:PORT"),
        # A secret on the command line is seen by every user in `ps`: the option is gone.
        (
            ("controller", "status", "127.0.0.1:9", "--name", "h", "--secret", "s3cret-xx"),
            2,
            "No such option '--secret'",
        ),
        (("controller", "status", "127.0.0.1:9", "--name", "h"), 2, "--secret-file: missing"),
        (("controller", "start", missing), 2, "cannot read"),
        (
            ("volume", "create", str(tmp / "v"), "--volser", "bad-one", "--size", "1MiB"),
            2,
            "is not a volser",
        ),
        (("volume", "info", missing), 1, "cannot open"),
        (("volume", "relabel", missing, "--volser", "OK1"), 1, "cannot open"),
        (("volume", "export-uri", "PAY001", "--config", missing), 2, "cannot read"),
        (("host", "add", missing, *catalog), 2, "cannot read"),
        (("host", "show", "nohost", *catalog), 2, "no such host"),
        (("scan", "nohost", *catalog), 2, "no such host"),
        (("scan", "nohost", "--range", "1G00", *catalog), 2, "1G00"),
        (("map", "show", "nohost", "--volser", "bad-1", *catalog), 2, "is not a volser"),
        (("map", "diff", "nohost", *catalog), 2, "no such host"),
        (("group", "define", missing, *catalog), 2, "cannot read"),
        (("group", "show", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("group", "load", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("group", "suspend", "NOGROUP", "--host", "h", "--in", "soon", *catalog), 2, "--in"),
        (("group", "suspend", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("group", "add", "NOGROUP", "--pair", "A", *catalog), 2, "PRIMARY,SECONDARY"),
        (("group", "status", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("group", "wait", "NOGROUP", "--host", "h", "--state", "DUPLEX", *catalog), 2, "no such"),
        (("group", "wait", "G", "--host", "h", "--state", "GONE", *catalog), 2, "'GONE'"),
        (("group", "wait", "G", "--host", "h", "--state", "DUPLEX", "--timeout", "0"), 2, "0"),
        (
            ("workload", "run", "--group", "G", "--host", "h", "--log", str(tmp / "l"), *catalog),
            2,
            "no such group: group=G",
        ),
        (
            ("verify", "--group", "G", "--host", "h", "--log", missing, *catalog),
            2,
            f"workload log {missing}: no such file",
        ),
        (("demo", "--pairs", "0"), 2, "0"),
        (("catalog", "init", "mysql://x/y"), 1, "unsupported database: driver=mysql"),
        (("controller", "stop", missing), 2, "cannot read"),
        (("group", "establish", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("group", "resume", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("group", "remove-pair", "NOGROUP", "A", "--host", "h", *catalog), 2, "no such group"),
        (("group", "shadow", "NOGROUP", "--host", "h", "--to", missing, *catalog), 2, missing),
        (("group", "list", *absent), 2, "no catalog at"),
        (("host", "list", *absent), 2, "no catalog at"),
        (("map", "check", *absent), 2, "no catalog at"),
        (("log", "--since", "yesterdayish", *catalog), 2, "--since: expected an age"),
        (("tui", *absent), 2, "no catalog at"),
        (("states", "extra"), 2, "unexpected extra argument (extra)"),
        (("events", "--group", "NOGROUP", *catalog), 2, "no such group"),
        (("events", "--last", "-1", *catalog), 2, "-1 is not in the range"),
        (("group", "pairs", "NOGROUP", "--host", "h", *catalog), 2, "no such group"),
        (("pki", "init"), 2, "Missing option '--dir'"),
        (("pki", "init", "--dir", "/proc/no-such"), 2, "--dir: /proc/no-such"),
        (("pki", "issue", "--dir", str(tmp / "nope"), "--name", "x"), 2, "no site CA here"),
        (("pki", "issue", "--dir", str(tmp), "--name", "bad name"), 2, "not a usable"),
        (("pki", "show", missing), 2, "not a PEM certificate"),
        (("secret", "new"), 2, "Missing option '--out'"),
        (("secret", "new", "--out", "/proc/no-such/s"), 2, "--out: /proc/no-such"),
        *(
            ((("group", verb, "NOGROUP", "--host", "h", *catalog), 2, "pass --yes"))
            for verb in ("failback", "recover", "return-home", "terminate")
        ),
        *(
            ((("group", verb, "NOGROUP", "--host", "h", "--yes", *catalog), 2, "no such group"))
            for verb in ("failback", "recover", "return-home", "terminate")
        ),
    ]


def test_every_command_has_a_bad_input_case(tmp_path):
    """The bad-input list covers every command click lists (new ones included)."""
    covered = {
        path
        for path in COMMANDS
        for args, _, _ in _bad_inputs(tmp_path)
        if args[: len(path)] == path
    }
    assert sorted(set(COMMANDS) - covered) == []


def test_bad_input_gets_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Each command given bad input exits with its code and says what is wrong."""
    for args, expected_code, expected_text in _bad_inputs(tmp_path):
        code, _out, err = run(capsys, monkeypatch, *args)
        assert code == expected_code, (args, code, err)
        assert expected_text, args  # every case names what it expects to be told
        assert expected_text in err, (args, err)
        assert "Traceback" not in err, (args, err)
