# Operating through a disaster with the CLI alone, on the demo's two-site world (real
# controller processes, real TCP, real files): lose the primary site (kill -9), read the
# group's status from the secondary site, recover (twice), prove no acknowledged write was
# lost, fail back, write at the secondary site, give the primary role back home, and check
# every image on the way. The runbook in docs/groups.md follows the same steps.
from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common import run_remcopy
from remcopy.catalog import Catalog
from remcopy.controller.process import ControllerProcess
from remcopy.demo.world import DemoWorld, plan_world, write_files

PAIRS = 16
pytestmark = pytest.mark.timeout(600)  # ~35 CLI processes and four copies on a loaded machine


def cli(*args: str, world: DemoWorld, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_remcopy(*args, catalog=world.catalog, code=code)


def as_json(*args: str, world: DemoWorld, code: int = 0) -> dict:  # type: ignore[type-arg]
    return json.loads(cli(*args, "--json", world=world, code=code).stdout)


class Sites:
    def __init__(self, world: DemoWorld) -> None:
        self.world = world
        self.procs: dict[str, ControllerProcess] = {}

    async def start(self, prefix: str = "cntl") -> None:
        names = [f"{site}{i}" for site in ("cntla", "cntlb") for i in range(self.world.primaries)]
        for name in names:
            if name.startswith(prefix):
                self.procs[name] = await ControllerProcess(self.world.config(name)).start()

    async def kill(self, prefix: str) -> None:
        for name, proc in self.procs.items():
            if name.startswith(prefix) and proc.running:
                await proc.kill()


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[Sites]:
    world = plan_world(tmp_path / "world", PAIRS)
    write_files(world, [f"127.0.0.1:{port}" for port in world.secondary_ports])
    running = Sites(world)
    try:
        await running.start()
        yield running
    finally:
        await running.kill("cntl")


def verify(world: DemoWorld, host: str, log: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    found = as_json(
        "verify", "--group", "DRILL", "--host", host, "--log", str(log), "--all-acked", *extra,
        world=world,
    )  # fmt: skip
    assert found["consistent"] and found["acked_missing"] == 0, found
    return found


def established(world: DemoWorld) -> None:
    """Both hosts added and scanned, group DRILL defined, loaded for both, DUPLEX."""
    for host in ("hosta", "hostb"):
        cli("host", "add", str(world.host_file(host)), world=world)
        cli("scan", host, world=world)
    cli("group", "define", str(world.group_file), world=world)
    for host in ("hosta", "hostb"):
        cli("group", "load", "DRILL", "--host", host, world=world)
    done = as_json("group", "establish", "DRILL", "--host", "hosta", "--wait", world=world)
    assert done["counts"] == {"DUPLEX": PAIRS}


async def test_disaster_status_recover_failback_and_return_home_with_the_cli(
    sites: Sites, tmp_path: Path
) -> None:
    """Lose the primary site, run the group from the secondary site, fail back and return the
    primary role home, with the CLI alone; every image checks consistent with no
    acknowledged write lost, and every operation run twice exits 0 the second time."""
    world = sites.world
    established(world)
    before = tmp_path / "before.jsonl"
    written = as_json(
        "workload", "run", "--group", "DRILL", "--host", "hosta", "--writes", "240",
        "--seed", "620", "--log", str(before), world=world,
    )  # fmt: skip
    assert written["writes_acked"] == 240 and written["failures"] == []

    # The primary site is lost.
    await sites.kill("cntla")
    lost = as_json("group", "status", "DRILL", "--host", "hostb", world=world)
    assert lost["direction"] == "defined"
    assert lost["counts"] == {"DUPLEX": PAIRS}, "the secondaries' states, not SIMPLEX"
    assert lost["read_at"] == {"primary": 0, "secondary": PAIRS, "unknown": 0}
    assert lost["not_expected"] == []
    assert {s["side"] for s in lost["states"]} == {"secondary"}
    assert {s["role"] for s in lost["states"]} == {"secondary"}
    assert all(s["address"].startswith("6501") for s in lost["states"])
    assert len(lost["not_read"]) == world.primaries  # one reason per primary controller
    assert all(
        why.startswith("controller cntla") and "not reached" in why for why in lost["not_read"]
    ), lost["not_read"]
    text = cli("group", "status", "DRILL", "--host", "hostb", world=world).stdout
    assert f"{PAIRS} pairs: primary UNKNOWN (not read), state read at the secondary" in text
    assert "controller cntla0 not reached: " in text and "Connection refused" in text

    # Recover at the secondary site, twice.
    first = as_json("group", "recover", "DRILL", "--host", "hostb", "--yes", world=world)
    assert (first["counts"], first["failed"], first["already"]) == ({"RECOVERED": PAIRS}, 0, 0)
    again = cli("group", "recover", "DRILL", "--host", "hostb", "--yes", world=world).stdout
    assert f"{PAIRS} pairs needed nothing (counted done): already RECOVERED" in again
    second = as_json("group", "recover", "DRILL", "--host", "hostb", "--yes", world=world)
    assert second["already"] == PAIRS and second["already_states"] == {"RECOVERED": PAIRS}
    recovered = as_json(
        "group", "status", "DRILL", "--host", "hostb", "--expect", "RECOVERED", world=world
    )
    assert recovered["counts"] == {"RECOVERED": PAIRS}
    verify(world, "hostb", before, "--secondary")

    # Site A is back: fail back to it (site B keeps the primary role).
    await sites.start("cntla")
    back = as_json("group", "failback", "DRILL", "--host", "hostb", "--yes", "--wait", world=world)
    assert (back["counts"], back["failed"]) == ({"DUPLEX": PAIRS}, 0)
    shown = as_json("group", "show", "DRILL", "--host", "hostb", world=world)
    assert {p["direction"] for p in shown} == {"reversed"}
    assert all(p["primary"].startswith("6501") for p in shown), "site B's volumes are primaries"
    assert all(p["secondary"].startswith("6401") for p in shown)
    groups = as_json("group", "list", world=world)
    assert [(g["group"], g["direction"]) for g in groups] == [("DRILL", "reversed")]
    reversed_status = as_json(
        "group", "status", "DRILL", "--host", "hostb", "--expect", "DUPLEX", world=world
    )
    assert reversed_status["direction"] == "reversed"
    assert reversed_status["read_at"]["primary"] == PAIRS
    assert {(s["role"], s["address"][:4]) for s in reversed_status["states"]} == {
        ("primary", "6501")
    }
    again = as_json("group", "failback", "DRILL", "--host", "hostb", "--yes", world=world)
    assert (again["failed"], again["already"]) == (0, PAIRS)
    verify(world, "hostb", before)  # site B, the primaries now, holds every write
    resumed = as_json("group", "resume", "DRILL", "--host", "hostb", world=world)
    assert (resumed["failed"], resumed["already_states"]) == (0, {"DUPLEX": PAIRS})

    # Work goes on at site B; then the primary role goes home to site A.
    after = tmp_path / "after.jsonl"
    written = as_json(
        "workload", "run", "--group", "DRILL", "--host", "hostb", "--writes", "240",
        "--seed", "621", "--log", str(after), world=world,
    )  # fmt: skip
    assert written["writes_acked"] == 240 and written["failures"] == []
    home = as_json(
        "group", "return-home", "DRILL", "--host", "hosta", "--yes", "--wait", world=world
    )
    assert (home["op"], home["counts"], home["failed"]) == ("return-home", {"DUPLEX": PAIRS}, 0)
    with Catalog.open(world.catalog) as catalog:
        assert catalog.group_one("DRILL").reversed is False
        logged = [o.op for o in catalog.operations_all(limit=3, target="DRILL")]
    assert logged[0] == "group return-home"
    at_home = as_json(
        "group", "status", "DRILL", "--host", "hosta", "--expect", "DUPLEX", world=world
    )
    assert at_home["direction"] == "defined" and at_home["read_at"]["primary"] == PAIRS
    assert {(s["role"], s["address"][:4]) for s in at_home["states"]} == {("primary", "6401")}
    again = as_json("group", "return-home", "DRILL", "--host", "hosta", "--yes", world=world)
    assert (again["failed"], again["already"]) == (0, PAIRS)
    verify(world, "hosta", after)  # site A holds what was written at site B
    cli("group", "suspend", "DRILL", "--host", "hosta", world=world)
    verify(world, "hostb", after, "--secondary")  # and site B has it all again

    # Terminate twice; then, with both sites down, nothing is made up.
    done = as_json("group", "terminate", "DRILL", "--host", "hosta", "--yes", world=world)
    assert (done["counts"], done["failed"], done["already"]) == ({"SIMPLEX": PAIRS}, 0, 0)
    done = as_json("group", "terminate", "DRILL", "--host", "hosta", "--yes", world=world)
    assert (done["failed"], done["already_states"]) == (0, {"SIMPLEX": PAIRS})
    await sites.kill("cntl")
    dark = as_json("group", "status", "DRILL", "--host", "hosta", world=world, code=1)
    assert dark["counts"] == {"UNKNOWN": PAIRS}
    assert dark["read_at"] == {"primary": 0, "secondary": 0, "unknown": PAIRS}
    assert all(
        s["state"] == "UNKNOWN" and s["side"] is None and "primary: controller cntla" in s["error"]
        and "secondary: controller cntlb" in s["error"]
        for s in dark["states"]
    )  # fmt: skip
    text = cli("group", "status", "DRILL", "--host", "hosta", world=world, code=1)
    assert f"{PAIRS} UNKNOWN" in text.stdout and "pairs not as expected" in text.stdout
    assert f"{PAIRS} pairs: UNKNOWN, neither end could be read" in text.stdout


async def test_site_b_lost_while_it_holds_the_primary_role(sites: Sites, tmp_path: Path) -> None:
    """After a planned failback to site B, site B is lost: status reads site A, recover at
    site A (the current secondaries), and return-home makes site A the primaries again once
    site B is back; no acknowledged write made at site B is lost."""
    world = sites.world
    established(world)
    cli("group", "recover", "DRILL", "--host", "hostb", "--yes", world=world)
    cli("group", "failback", "DRILL", "--host", "hostb", "--yes", "--wait", world=world)
    at_b = tmp_path / "at-b.jsonl"
    written = as_json(
        "workload", "run", "--group", "DRILL", "--host", "hostb", "--writes", "160",
        "--seed", "622", "--log", str(at_b), world=world,
    )  # fmt: skip
    assert written["writes_acked"] == 160

    await sites.kill("cntlb")
    lost = as_json("group", "status", "DRILL", "--host", "hosta", world=world)
    assert (lost["direction"], lost["counts"]) == ("reversed", {"DUPLEX": PAIRS})
    assert {(s["side"], s["role"], s["address"][:4]) for s in lost["states"]} == {
        ("secondary", "secondary", "6401")
    }
    assert all(why.startswith("controller cntlb") for why in lost["not_read"])
    recovered = as_json("group", "recover", "DRILL", "--host", "hosta", "--yes", world=world)
    assert (recovered["counts"], recovered["failed"]) == ({"RECOVERED": PAIRS}, 0)
    verify(world, "hosta", at_b, "--secondary")
    early = as_json(
        "group", "return-home", "DRILL", "--host", "hosta", "--yes", world=world, code=1
    )
    assert early["failed"] == PAIRS, "the failback needs site B"
    with Catalog.open(world.catalog) as catalog:
        assert catalog.group_one("DRILL").reversed is True

    await sites.start("cntlb")
    home = as_json(
        "group", "return-home", "DRILL", "--host", "hosta", "--yes", "--wait", world=world
    )
    assert (home["counts"], home["failed"]) == ({"DUPLEX": PAIRS}, 0)
    at_home = as_json(
        "group", "status", "DRILL", "--host", "hosta", "--expect", "DUPLEX", world=world
    )
    assert at_home["direction"] == "defined"
    assert {(s["role"], s["address"][:4]) for s in at_home["states"]} == {("primary", "6401")}
    verify(world, "hosta", at_b)
