# `remcopy catalog init` on both backends: it creates the catalog once, says so, and then every
# command that needs an existing catalog finds it; a database without the schema is "no catalog".
from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from remcopy.catalog import Catalog, CatalogNotFound
from remcopy.cli.main import main


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["remcopy", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_catalog_init_creates_the_catalog_once(
    new_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before init a read-only command finds no catalog; init creates it; init again finds it."""
    url = new_database()
    code, out, err = run(capsys, monkeypatch, "group", "list", "--catalog", url, "--json")
    assert code == 2
    assert "no catalog at" in err and json.loads(out)["exit_code"] == 2
    with pytest.raises(CatalogNotFound):
        Catalog.open(url, create=False)

    code, out, err = run(capsys, monkeypatch, "catalog", "init", url, "--json")
    assert code == 0, err
    assert json.loads(out)["created"] is True
    code, out, err = run(capsys, monkeypatch, "catalog", "init", url, "--json")
    assert code == 0, err
    assert json.loads(out)["created"] is False
    code, out, err = run(capsys, monkeypatch, "group", "list", "--catalog", url, "--json")
    assert (code, json.loads(out)) == (0, [])
