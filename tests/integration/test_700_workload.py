# The dependent-write workload against real controllers, and the checker's verdict on the
# images a group suspend at T leaves: the secondaries (and a shadow copy of them) are a cut
# at T, the primaries hold every acknowledged write. Then the same through the CLI.
from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from mirror_world import (
    SECONDARY_LSS,
    SECONDARY_SERIAL,
    TERTIARY_LSS,
    World,
    all_ok,
    build,
    channel,
    primary_serial,
    stop,
)

from common import HOST, SECRET, host_tls, host_tls_toml, secret_file_line
from remcopy.catalog import Catalog
from remcopy.cli.workload import verify as verify_command
from remcopy.errors import InputError
from remcopy.groups import Group, GroupOptions, GroupPair, run_operation, suspend
from remcopy.groups.service import define_group, operate
from remcopy.host.definition import parse_host_definition
from remcopy.host.service import add_host, scan_host
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress
from remcopy.states import CopyMode
from remcopy.wire.native import PairItem, PairOp
from remcopy.workload import (
    Image,
    ImageReader,
    LoggedWrite,
    WorkloadStats,
    check_image,
    read_log,
    run_workload,
)

SIZES = (4096, 4096, 16384)


def _session(world: World) -> HostSession:
    assert world.secondary is not None
    controllers = [{"name": p.name, "address": p.endpoint} for p in world.primaries]
    controllers.append({"name": "cntlb", "address": world.secondary.endpoint})
    paths = [
        {
            "devices": f"{0x1000 * (i + 1):04X}-{0x1000 * (i + 1) + world.volumes - 1:04X}",
            "controller": p.name,
            "ssid": "1A00",
            "lss": "0A",
            "cca": "00",
        }
        for i, p in enumerate(world.primaries)
    ]
    definition = parse_host_definition(
        {
            "tls": host_tls(HOST),
            "host": {"name": HOST, "secret": SECRET},
            "controllers": controllers,
            "paths": paths,
        },
        source="test",
    )
    return HostSession(definition)


def _group(world: World) -> Group:
    pairs = []
    for i, proc in enumerate(world.primaries):
        for cca in range(world.volumes):
            pairs.append(
                GroupPair(
                    volser=f"P{i}{cca:04X}",
                    primary=HardwareAddress.of(
                        serial=primary_serial(i), ssid=0x1A00, lss=0x0A, cca=cca
                    ),
                    secondary=HardwareAddress.of(
                        serial=SECONDARY_SERIAL,
                        ssid=0x2B00,
                        lss=SECONDARY_LSS,
                        cca=world.secondary_device(i, cca) & 0xFF,
                    ),
                    primary_controller=proc.name,
                    secondary_controller="cntlb",
                )
            )
    return Group(name="PAYROLL", options=GroupOptions(mode=CopyMode.SYNC), pairs=tuple(pairs))


def _tertiary(secondary: HardwareAddress) -> HardwareAddress:
    return HardwareAddress.of(
        serial=secondary.serial, ssid=0x3B00, lss=TERTIARY_LSS, cca=secondary.cca
    )


class Acks:
    """Counts acknowledged writes; `wait(n)` returns once n were seen (or the run ended)."""

    def __init__(self) -> None:
        self.count = 0
        self.writes: list[LoggedWrite] = []
        self._changed = asyncio.Event()

    def __call__(self, write: LoggedWrite) -> None:
        self.count += 1
        self.writes.append(write)
        self._changed.set()

    async def wait(self, count: int, run: asyncio.Task[WorkloadStats]) -> None:
        while self.count < count:
            assert not run.done(), f"the workload ended after {self.count} writes: {run.result()}"
            self._changed.clear()
            changed = asyncio.create_task(self._changed.wait())
            await asyncio.wait([changed, run], return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()


async def test_workload_suspended_at_T_leaves_a_consistent_cut_at_the_secondaries(tmp_path):
    """Secondaries and their shadow copies are the cut at T; primaries hold every ack."""
    world = await build(tmp_path, primaries=2, volumes=2)
    log_path = tmp_path / "run.jsonl"
    try:
        group = _group(world)
        async with _session(world) as session:
            events = [await session.channels[p.name].subscribe() for p in world.primaries]
            report = await run_operation(session, group, PairOp.ESTABLISH)
            assert not report.failed, report.to_json()
            for sub in events:
                for _ in range(world.volumes):
                    await sub.wait_for(r"-> DUPLEX")
            acks, stop_writing = Acks(), asyncio.Event()
            seed = random.randrange(1 << 32)
            print(f"workload seed {seed}")  # shown by pytest when the test fails
            run = asyncio.create_task(
                run_workload(
                    session,
                    group,
                    writers=6,
                    sizes=SIZES,
                    seed=seed,
                    log_path=log_path,
                    stop_event=stop_writing,
                    on_ack=acks,
                )
            )
            await acks.wait(150, run)
            suspended = await suspend(session, group, margin_s=0.05)
            await acks.wait(acks.count + 60, run)  # writes after T, change-recorded
            stop_writing.set()
            stats = await run
            assert suspended.consistent, suspended.to_json()
            at_ns = suspended.at_ns
            assert not stats.failures and stats.writes_acked == acks.count
            assert any(w.stamp_ns >= at_ns for w in acks.writes)
            assert stats.controllers == 2 and stats.volumes == 4
            log = read_log(log_path)
            assert log.ended and len(log.writes) == stats.writes_acked

            secondaries = await check_image(
                ImageReader(session, group, Image.SECONDARY),
                log,
                require_all_acked=False,
                at_ns=at_ns,
                image="secondaries",
            )
            assert secondaries.consistent, secondaries.summary()
            assert secondaries.acked_missing == sum(w.stamp_ns >= at_ns for w in log.writes)
            assert sum(c.prefix for c in secondaries.chains) == sum(
                w.stamp_ns < at_ns for w in log.writes
            )
            assert secondaries.stamp_window_ns is not None
            lo, hi = secondaries.stamp_window_ns
            assert lo < at_ns and hi is not None and at_ns <= hi

            primaries = await check_image(
                ImageReader(session, group, Image.PRIMARY), log, require_all_acked=True
            )
            assert primaries.consistent, primaries.summary()
            assert primaries.acked_missing == 0
            assert [c.prefix for c in primaries.chains] == list(stats.chain_seq)

            cntlb = session.channels["cntlb"]
            shadow_events = await cntlb.subscribe()
            tertiaries = {p.secondary: _tertiary(p.secondary) for p in group.pairs}
            items = tuple(
                PairItem(device=s.device_key, peer_device=t.device_key)
                for s, t in tertiaries.items()
            )
            all_ok(await cntlb.pair_op(PairOp.SHADOW, items))
            for _ in items:
                await shadow_events.wait_for(r"^shadow .* done")
            shadows = await check_image(
                ImageReader(session, group, Image.SHADOW, tertiaries=tertiaries),
                log,
                require_all_acked=False,
                at_ns=at_ns,
            )
            assert shadows.consistent, shadows.summary()
            assert [c.prefix for c in shadows.chains] == [c.prefix for c in secondaries.chains]
    finally:
        await stop(world)


# The same through the CLI. Until `workload` and `verify` are registered in cli/main.py, the
# commands are added to the `remcopy` group here, exactly as main.py will add them.
_MAIN = (
    "from remcopy.cli import main as m; from remcopy.cli.workload import verify, workload; "
    "m.cli.add_command(workload); m.cli.add_command(verify); m.main()"
)


def cli(*args: str, catalog: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REMCOPY_CATALOG=str(catalog))
    run = subprocess.run(
        [sys.executable, "-c", _MAIN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == code, (args, run.returncode, run.stdout, run.stderr)
    return run


def _host_file(tmp_path: Path, world: World) -> Path:
    assert world.secondary is not None
    p0, p1 = world.primaries
    path = tmp_path / "hosta.toml"
    path.write_text(f"""{host_tls_toml(HOST)}
[host]
name = "{HOST}"
{secret_file_line(HOST, SECRET)}
[[controllers]]
name = "{p0.name}"
address = "{p0.endpoint}"
[[controllers]]
name = "{p1.name}"
address = "{p1.endpoint}"
[[controllers]]
name = "cntlb"
address = "{world.secondary.endpoint}"
[[paths]]
devices = "1A00-1A01"
controller = "{p0.name}"
ssid = "1A00"
lss = "0A"
cca = "00"
[[paths]]
devices = "1B00-1B01"
controller = "{p1.name}"
ssid = "1A00"
lss = "0A"
cca = "00"
[[paths]]
devices = "2B00-2B03"
controller = "cntlb"
ssid = "2B00"
lss = "20"
cca = "00"
online = false
""")
    return path


async def test_cli_workload_run_and_verify_exit_0_1_2(tmp_path):
    """`verify` after `workload run` exits 0 when consistent, 1 when damaged, 2 on bad input."""
    world = await build(tmp_path, primaries=2, volumes=2)
    catalog_path = tmp_path / "catalog.db"
    log_path = tmp_path / "run.jsonl"
    try:
        # The set-up is test_600's CLI flow; here it goes through the same API in-process.
        definition = tmp_path / "payroll.toml"
        definition.write_text("""
[group]
name = "PAYROLL"
mode = "sync"
[[pairs]]
host = "hosta"
devices = "1A00-1A01"
secondary_devices = "2B00-2B01"
[[pairs]]
host = "hosta"
devices = "1B00-1B01"
secondary_devices = "2B02-2B03"
""")
        catalog = Catalog.open(str(catalog_path))
        try:
            add_host(catalog, _host_file(tmp_path, world))
            _, stored = await scan_host(catalog, HOST)
            assert stored is not None
            assert define_group(catalog, definition) == 4
            async with channel(world.primaries[0]) as ch0, channel(world.primaries[1]) as ch1:
                events = [await ch0.subscribe(), await ch1.subscribe()]
                established = await operate(catalog, "PAYROLL", HOST, PairOp.ESTABLISH)
                assert not established.failed, established.to_json()
                for sub in events:
                    for _ in range(world.volumes):
                        await sub.wait_for(r"-> DUPLEX")
        finally:
            catalog.close()
        ran = cli(
            "workload", "run", "--group", "PAYROLL", "--host", HOST, "--writers", "4",
            "--writes", "300", "--sizes", "4k,16k", "--seed", "700", "--log", str(log_path),
            "--json", catalog=catalog_path,
        )  # fmt: skip
        stats = json.loads(ran.stdout)
        assert stats["writes_acked"] == 300 and stats["failures"] == []
        assert stats["seed"] == 700 and "workload: seed 700" in ran.stderr
        verify = ("verify", "--group", "PAYROLL", "--host", HOST, "--log", str(log_path))
        checked = json.loads(cli(*verify, "--all-acked", "--json", catalog=catalog_path).stdout)
        assert checked["consistent"] and checked["acked_missing"] == 0
        assert sum(c["prefix"] for c in checked["chains"]) == 300

        catalog = Catalog.open(str(catalog_path))
        try:
            suspended = await operate(catalog, "PAYROLL", HOST, PairOp.SUSPEND)
        finally:
            catalog.close()
        assert suspended.consistent, suspended.to_json()
        secondary = cli(*verify, "--secondary", "--at", "auto", catalog=catalog_path)
        assert "secondaries of group PAYROLL: consistent" in secondary.stdout

        last = read_log(log_path).chain(0)[-1]
        ch = channel(world.primaries[last.volume.serial - primary_serial(0)])
        async with ch:
            await ch.write(last.volume.device_key, last.offset, bytes(last.length))
        broken = cli(*verify, "--all-acked", "--json", catalog=catalog_path, code=1)
        assert "NOT consistent" in broken.stderr
        report = json.loads(broken.stdout)
        assert not report["consistent"]
        assert report["chains"][0]["first_violation"]["reason"] in ("missing", "acked_missing")
        assert [c["violations"] for c in report["chains"][1:]] == [0, 0, 0]
        assert any(
            v["reason"] == "acked_missing"
            and v["message"].startswith(f"chain 0: acknowledged seq {last.seq} ")
            for v in report["violations"]
        )

        bad = cli(*verify[:-1], str(tmp_path / "nosuch.jsonl"), catalog=catalog_path, code=2)
        assert "no such file" in bad.stderr
        both = CliRunner().invoke(verify_command, [*verify[1:], "--secondary", "--shadow", "m"])
        assert isinstance(both.exception, InputError) and "not both" in str(both.exception)
    finally:
        await stop(world)
