# NBD writes take the remote-copy write path: mirrored to the secondary per the pair's mode,
# and a secondary's export is read-only until the secondary is RECOVERED.
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from nbd_world import (
    CMD_READ,
    CMD_WRITE,
    EPERM,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    PRIMARY_LSS,
    SECONDARY_LSS,
    SECONDARY_SERIAL,
    RawNbdClient,
    Sites,
    channel,
    digest,
    sha256_file,
    tool,
    two_sites,
    uri,
)

from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairItem, PairOp, PairOpReply
from suspend_at import suspend_soon


@pytest.fixture
async def sites(tmp_path: Path):
    world = await two_sites(tmp_path)
    yield world
    await world.stop()


def _all_ok(reply: PairOpReply) -> None:
    bad = [r for r in reply.results if r.code]
    assert not bad, [f"{r.device:04X}: {r.message}" for r in bad]


def _item(cca: int, mode: CopyMode) -> PairItem:
    return PairItem(
        device=PRIMARY_LSS << 8 | cca,
        peer_serial=SECONDARY_SERIAL,
        peer_device=SECONDARY_LSS << 8 | cca,
        mode=mode,
    )


async def _establish(sites: Sites, mode: CopyMode) -> None:
    """Pair every primary volume with its secondary and wait until all are DUPLEX."""
    async with channel(sites.primary) as ch:
        events = await ch.subscribe()
        _all_ok(await ch.pair_op(PairOp.ESTABLISH, tuple(_item(c, mode) for c in range(2))))
        duplex: set[str] = set()
        while len(duplex) < sites.volumes:
            duplex.add((await events.wait_until(lambda e: e.new is PairState.DUPLEX)).device)


@pytest.mark.parametrize("mode", [CopyMode.SYNC, CopyMode.ASYNC])
async def test_nbd_write_to_duplex_primary_reaches_the_secondary(
    sites: Sites, tmp_path: Path, mode: CopyMode
):
    """Data nbdcopy and qemu-io write to a DUPLEX primary is on the secondary after suspend at T."""
    await _establish(sites, mode)
    source = tmp_path / "in.img"
    source.write_bytes(random.Random(410).randbytes(sites.size_bytes))
    await tool("nbdcopy", str(source), uri(sites.primary, "PA0000"))
    # One 8 MiB request (two 4 MiB pieces on the write path), then smaller writes over it.
    await tool("qemu-io", "-f", "raw", uri(sites.primary, "PA0001"),
               "-c", "write -P 0x77 0 8M", "-c", "write -P 0xab 0 64k", "-c", "write -z 1M 3M",
               "-c", f"write -P 0xcd {sites.size_bytes - 4096} 4096")  # fmt: skip
    async with channel(sites.primary) as ch:
        await suspend_soon(ch, (_item(0, mode), _item(1, mode)))  # every write above is < T
        primary = [await digest(ch, PRIMARY_LSS << 8 | c, sites.size_bytes) for c in range(2)]
    async with channel(sites.secondary) as sec:
        secondary = [await digest(sec, SECONDARY_LSS << 8 | c, sites.size_bytes) for c in range(2)]
        states = {s.state for s in await sec.query((SECONDARY_LSS << 8, SECONDARY_LSS << 8 | 1))}
    assert states == {PairState.SUSPENDED}
    assert primary[0] == sha256_file(source)
    assert secondary == primary


async def test_secondary_export_is_read_only_until_recovered(sites: Sites):
    """A secondary's export is read-only and refuses writes with EPERM; RECOVERED makes it
    writable."""
    await _establish(sites, CopyMode.SYNC)
    secondary_uri = uri(sites.secondary, "SB0000")
    info = await tool("nbdinfo", "--json", secondary_uri)
    assert json.loads(info.stdout)["exports"][0]["is_read_only"] is True
    # qemu-io sees the read-only flag and will not open the export for writing...
    refused = await tool(
        "qemu-io", "-f", "raw", secondary_uri, "-c", "write -P 0x11 0 4096", check=False
    )
    assert refused.returncode != 0
    assert "Permission denied" in refused.text, refused.text
    # ...and a client that writes anyway gets EPERM on the wire.
    assert sites.secondary.nbd_address is not None
    client = await RawNbdClient.open(sites.secondary.nbd_address)
    try:
        await client.greeting()
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        await client.export_name("SB0000")
        client.request(CMD_WRITE, 7, 0, 4, b"nope")
        assert await client.reply() == (EPERM, 7)
    finally:
        await client.close()
    # The primary is lost; the secondary is taken over.
    await sites.primary.kill()
    async with channel(sites.secondary) as sec:
        _all_ok(await sec.pair_op(PairOp.RECOVER, (PairItem(device=SECONDARY_LSS << 8),)))
        assert (await sec.query((SECONDARY_LSS << 8,)))[0].state is PairState.RECOVERED
    info = await tool("nbdinfo", "--json", secondary_uri)
    assert json.loads(info.stdout)["exports"][0]["is_read_only"] is False
    await tool("qemu-io", "-f", "raw", secondary_uri, "-c", "write -P 0x11 0 4096",
               "-c", "read -P 0x11 0 4096")  # fmt: skip
    # The other secondary is still protected.
    still = await tool(
        "qemu-io", "-f", "raw", uri(sites.secondary, "SB0001"), "-c", "write 0 512", check=False
    )
    assert still.returncode != 0
    assert "Permission denied" in still.text, still.text


async def test_write_refused_when_the_volume_became_a_secondary_after_connecting(sites: Sites):
    """A client that connected while the volume was SIMPLEX gets EPERM once it is a secondary."""
    assert sites.secondary.nbd_address is not None
    client = await RawNbdClient.open(sites.secondary.nbd_address)
    try:
        await client.greeting()
        client.client_flags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        size, _flags = await client.export_name("SB0000")
        assert size == sites.size_bytes
        client.request(CMD_WRITE, 1, 0, 4, b"ok!!")
        assert await client.reply() == (0, 1)
        await _establish(sites, CopyMode.SYNC)
        client.request(CMD_WRITE, 2, 0, 4, b"no!!")
        assert await client.reply() == (EPERM, 2)
        client.request(CMD_READ, 3, 0, 4)
        assert await client.reply() == (0, 3)
        await client.reader.readexactly(4)  # reads still work
    finally:
        await client.close()
