# Authorization on every path (DESIGN.md section 6, docs/security.md) against real controller
# processes: a host sees and reaches only the devices of its grant (status, identify, query,
# read, write), whether a device outside it exists or not; a peer controller sends only pair
# operations and updates, establishes only onto the LSSs its [[peers]] entry offers, and acts
# only on pairs it is a member of. Every refusal changes nothing, is logged once, and the next
# legitimate client is served. Every link is TLS: each host and peer presents its certificate.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from mirror_world import wait_settled

from common import MiB, Start
from common import site as tls_site
from remcopy.controller.process import (
    ControllerProcess,
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
)
from remcopy.errors import DeviceNotAllowed, NotOffered, RemcopyError
from remcopy.host.channel import Channel
from remcopy.states import CopyMode, PairState
from remcopy.wire import native
from remcopy.wire.native import PairItem, PairOp

WIDE, NARROW = "hostwide", "hostnarrow"  # every device; LSS 0B only
WIDE_SECRET, NARROW_SECRET = "wide-host-secret-1", "narrow-host-secret-1"
LINK_AB, LINK_CB = "link-secret-a-to-b", "link-secret-c-to-b"
SERIAL_A, SERIAL_B, SERIAL_C = 64015, 64016, 64017
OFFERED = 0x0B00  # cntlb's LSS 0B is offered to cntla
NOT_OFFERED = 0x0C00  # cntlb's LSS 0C is offered to nobody
C_ONLY = 0x0D00  # cntlb's LSS 0D is offered to cntlc only


@dataclass
class Site:
    a: ControllerProcess
    b: ControllerProcess
    b_config: Path


def _volumes(lss: int, prefix: str, count: int = 2) -> list[VolumeSpec]:
    return [
        VolumeSpec(lss=lss, cca=c, volser=f"{prefix}{c:04X}", size_bytes=1 * MiB)
        for c in range(count)
    ]


@pytest.fixture
async def site(tmp_path: Path, start_controller: Start) -> Site:
    """cntla (LSS 0A) pairs onto cntlb (LSS 0B offered to it, 0C to nobody, 0D to cntlc)."""
    b_address = f"127.0.0.1:{free_port()}"
    a = ControllerSpec(
        name="cntla",
        serial=SERIAL_A,
        data_dir=tmp_path / "cntla",
        lss={0x0A: 0x1A00},
        volumes=_volumes(0x0A, "AA"),
        hosts={WIDE: WIDE_SECRET},
        peers=[PeerSpec(name="cntlb", serial=SERIAL_B, address=b_address, secret=LINK_AB)],
        site=tls_site(),  # TLS on every link: each client's certificate names it
    )
    b = ControllerSpec(
        name="cntlb",
        serial=SERIAL_B,
        data_dir=tmp_path / "cntlb",
        listen=b_address,
        lss={0x0B: 0x2B00, 0x0C: 0x2C00, 0x0D: 0x2D00},
        volumes=_volumes(0x0B, "BB") + _volumes(0x0C, "BC") + _volumes(0x0D, "BD"),
        hosts={WIDE: WIDE_SECRET, NARROW: NARROW_SECRET},
        host_lss={NARROW: [0x0B]},
        peers=[
            PeerSpec(
                name=name, serial=serial, address="127.0.0.1:1", secret=secret, offer_lss=[lss]
            )
            for name, serial, secret, lss in [
                ("cntla", SERIAL_A, LINK_AB, 0x0B),
                ("cntlc", SERIAL_C, LINK_CB, 0x0D),
            ]
        ],
        site=tls_site(),
    )
    proc_a = await start_controller(a)
    proc_b = await start_controller(b)
    return Site(a=proc_a, b=proc_b, b_config=tmp_path / "cntlb.toml")


def _host(proc: ControllerProcess, name: str, secret: str) -> Channel:
    return proc.channel(name=name, secret=secret)


def _peer(proc: ControllerProcess, name: str, secret: str) -> Channel:
    return proc.channel(name=name, secret=secret, role=native.PeerRole.PEER)


async def _states(proc: ControllerProcess) -> dict[int, PairState]:
    async with _host(proc, WIDE, WIDE_SECRET) as channel:
        return {s.device: s.state for s in await channel.query()}


def _log(proc: ControllerProcess) -> str:
    return proc.log_path.read_text(errors="replace")


# A host limited to LSS 0B ----------------------------------------------------------------------


async def test_a_limited_host_sees_only_its_grant_in_status_identify_and_query(site: Site) -> None:
    async with _host(site.b, NARROW, NARROW_SECRET) as narrow:
        status = await narrow.status()
        identities = await narrow.identify()
        statuses = await narrow.query()
    assert [d["address"].split(":")[2] for d in status["devices"]] == ["0B", "0B"]
    assert status["volumes"] == 2
    assert sum(status["states"].values()) == 2
    assert [i.device for i in identities] == [0x0B00, 0x0B01]
    assert [s.device for s in statuses] == [0x0B00, 0x0B01]
    async with _host(site.b, WIDE, WIDE_SECRET) as wide:  # the unlimited host sees all six
        assert (await wide.status())["volumes"] == 6


OUTSIDE = [0x0C00, 0x0D01, 0x0CFF, 0x0A00]  # two that exist, two that do not
VERBS = ["identify", "query", "read", "write"]


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("device", OUTSIDE, ids=[f"{d:04X}" for d in OUTSIDE])
async def test_a_limited_host_is_refused_outside_its_grant_alike_whether_it_exists(
    site: Site, verb: str, device: int
) -> None:
    """The same refusal (DeviceNotAllowed, no volser, no size) for a device that exists and
    one that does not; nothing is written; the host's own devices still work."""
    async with _host(site.b, WIDE, WIDE_SECRET) as wide:
        before = await wide.read(0x0C00, 0, 4096)
    async with _host(site.b, NARROW, NARROW_SECRET) as narrow:
        if verb in ("identify", "query"):
            answers = await getattr(narrow, verb)((device,))
            assert [(a.device, a.status) for a in answers] == [(device, DeviceNotAllowed.code)]
            assert getattr(answers[0], "volser", "") == ""
        else:
            io = (
                narrow.read(device, 0, 4096)
                if verb == "read"
                else narrow.write(device, 0, b"\xee" * 4096)
            )
            with pytest.raises(DeviceNotAllowed) as refused:
                await io
            message = str(refused.value)
            assert f"LSS {device >> 8:02X} CCA {device & 0xFF:02X} is not in the host's grant" in (
                message
            )
            assert "BC" not in message and "capacity" not in message
        await narrow.write(0x0B00, 0, b"\x11" * 4096)  # its own device: served
        assert await narrow.read(0x0B00, 0, 4096) == b"\x11" * 4096
    async with _host(site.b, WIDE, WIDE_SECRET) as wide:
        assert await wide.read(0x0C00, 0, 4096) == before


# Peers ---------------------------------------------------------------------------------------


def _establish_item(device: int) -> PairItem:
    return PairItem(
        device=device,
        peer_serial=SERIAL_A,
        peer_device=0x0A00,
        mode=CopyMode.SYNC,
        size_bytes=1 * MiB,
    )


@pytest.mark.parametrize(
    ("peer", "secret", "device"),
    [
        ("cntla", LINK_AB, NOT_OFFERED),
        ("cntla", LINK_AB, C_ONLY),
        ("cntla", LINK_AB, 0x0CFF),
        ("cntlc", LINK_CB, OFFERED),
    ],
    ids=["0C-offered-to-nobody", "0D-offered-to-another-peer", "absent-device", "0B-not-offered"],
)
async def test_a_peer_cannot_establish_onto_a_volume_not_offered_to_it(
    site: Site, peer: str, secret: str, device: int
) -> None:
    before = await _states(site.b)
    async with _peer(site.b, peer, secret) as link:
        reply = await link.pair_op(PairOp.PEER_ESTABLISH, (_establish_item(device),))
    assert [(r.device, r.code) for r in reply.results] == [(device, NotOffered.code)]
    assert reply.results[0].message.endswith(
        "is not offered to it on controller cntlb ([[peers]] offer_lss)"
    )
    assert await _states(site.b) == before
    assert _log(site.b).count("is not offered to it") == 1
    # The next legitimate establish, by a host at cntla onto the offered LSS, is served.
    async with _host(site.a, WIDE, WIDE_SECRET) as host:
        item = PairItem(
            device=0x0A00, peer_serial=SERIAL_B, peer_device=OFFERED, mode=CopyMode.SYNC
        )
        done = await host.pair_op(PairOp.ESTABLISH, (item,))
    assert [r.code for r in done.results] == [0]


PEER_ACTIONS = [
    (PairOp.PEER_STATE, {"action": "suspend"}),
    (PairOp.PEER_STATE, {"action": "terminate"}),
    (PairOp.PEER_CHANGEMAP, {}),
    (PairOp.PEER_FAILBACK, {}),
]


@pytest.mark.parametrize(
    ("op", "options"), PEER_ACTIONS, ids=["suspend", "terminate", "changemap", "failback"]
)
async def test_a_peer_cannot_act_on_a_pair_it_is_not_a_member_of(
    site: Site, op: PairOp, options: dict[str, str]
) -> None:
    """cntla's pair 0A00 -> 0B00; cntlc (a peer of cntlb too) may not touch 0B00."""
    async with _host(site.a, WIDE, WIDE_SECRET) as host:
        item = PairItem(
            device=0x0A00, peer_serial=SERIAL_B, peer_device=OFFERED, mode=CopyMode.SYNC
        )
        assert [r.code for r in (await host.pair_op(PairOp.ESTABLISH, (item,))).results] == [0]
        await wait_settled(host, (0x0A00,))  # DUPLEX: the copy no longer changes its state
    before = await _states(site.b)
    async with _peer(site.b, "cntlc", LINK_CB) as link:
        reply = await link.pair_op(
            op, (PairItem(device=OFFERED, peer_serial=SERIAL_A),), options=options
        )
    assert [(r.device, r.code) for r in reply.results] == [(OFFERED, NotOffered.code)]
    assert reply.data == b""  # no change map left the controller
    assert await _states(site.b) == before
    assert _log(site.b).count("controller 64017 is not the other side of a pair") == 1
    async with _host(site.a, WIDE, WIDE_SECRET) as host:  # the member still acts on it
        reply = await host.pair_op(PairOp.TERMINATE, (PairItem(device=0x0A00),))
    assert [r.code for r in reply.results] == [0]
    assert (await _states(site.b))[OFFERED] is PairState.SIMPLEX


HOST_VERBS = ["status", "identify", "query", "read", "write", "flush"]


@pytest.mark.parametrize("verb", HOST_VERBS)
async def test_a_peer_is_refused_host_verbs(site: Site, verb: str) -> None:
    async with _peer(site.b, "cntla", LINK_AB) as link:
        calls = {
            "status": lambda: link.status(),
            "identify": lambda: link.identify(),
            "query": lambda: link.query(),
            "read": lambda: link.read(OFFERED, 0, 4096),
            "write": lambda: link.write(OFFERED, 0, b"\x22" * 4096),
            "flush": lambda: link.flush(),
        }
        with pytest.raises(RemcopyError) as refused:
            await calls[verb]()
    assert refused.value.code == NotOffered.code
    assert "a peer controller sends pair operations and replication updates" in str(refused.value)
    async with _host(site.b, WIDE, WIDE_SECRET) as wide:
        assert await wide.read(OFFERED, 0, 4096) != b"\x22" * 4096
