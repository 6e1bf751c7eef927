# Events held to the host's grant (DESIGN.md section 6, docs/security.md, docs/operations.md
# "Events") against real controller processes over TLS: two hosts limited to different LSSs
# subscribe to one controller; each is sent only the events about its own devices (and the
# controller-wide ones), never an address or volser of the other's; every event says which
# number it follows on from, so a follower takes the holes the filter makes for what they are
# and, across a controller's kill and restart, reports no loss and misses nothing of its own.
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mirror_world import wait_settled
from test_240_authorization import _volumes

from common import Start, site
from remcopy.controller.process import ControllerProcess, ControllerSpec, PeerSpec
from remcopy.events import Event, EventKind
from remcopy.host import follow
from remcopy.host.channel import Channel, Subscription
from remcopy.states import CopyMode, PairState
from remcopy.wire.native import PairItem, PairOp
from suspend_at import suspend_soon

WIDE, HOST_A, HOST_C = "hostwide", "hostlssa", "hostlssc"  # every device; LSS 0A; LSS 0C
SECRETS = {
    WIDE: "wide-host-secret-1",
    HOST_A: "lss-0a-host-secret-1",
    HOST_C: "lss-0c-host-secret-1",
}
SERIAL_P, SERIAL_S = 64015, 64016
LINK = "link-secret-p-to-s"
DEV_A, DEV_C = 0x0A00, 0x0C00


@dataclass
class Site:
    primary: ControllerProcess
    secondary: ControllerProcess


@pytest.fixture
async def world(tmp_path: Path, start_controller: Start) -> Site:
    """cntlp (LSS 0A for HOST_A, 0C for HOST_C) mirrors 0A00 and 0C00 onto cntls; DUPLEX."""
    from remcopy.controller.process import free_port

    s_address = f"127.0.0.1:{free_port()}"
    primary = ControllerSpec(
        name="cntlp",
        serial=SERIAL_P,
        data_dir=tmp_path / "cntlp",
        listen=f"127.0.0.1:{free_port()}",  # the same after a restart
        lss={0x0A: 0x1A00, 0x0C: 0x1C00},
        volumes=_volumes(0x0A, "VA") + _volumes(0x0C, "VC"),
        hosts=dict(SECRETS),
        host_lss={HOST_A: [0x0A], HOST_C: [0x0C]},
        peers=[PeerSpec(name="cntls", serial=SERIAL_S, address=s_address, secret=LINK)],
        site=site(),
    )
    secondary = ControllerSpec(
        name="cntls",
        serial=SERIAL_S,
        data_dir=tmp_path / "cntls",
        listen=s_address,
        lss={0x0B: 0x2B00},
        volumes=_volumes(0x0B, "SB"),
        hosts={WIDE: SECRETS[WIDE]},
        peers=[PeerSpec(name="cntlp", serial=SERIAL_P, address="127.0.0.1:1", secret=LINK)],
        site=site(),
    )
    proc_s = await start_controller(secondary)
    proc_p = await start_controller(primary)
    async with _host(proc_p, WIDE) as wide:
        items = tuple(
            PairItem(device=d, peer_serial=SERIAL_S, peer_device=0x0B00 + i, mode=CopyMode.SYNC)
            for i, d in enumerate((DEV_A, DEV_C))
        )
        assert [r.code for r in (await wide.pair_op(PairOp.ESTABLISH, items)).results] == [0, 0]
        await wait_settled(wide, (DEV_A, DEV_C))
    return Site(primary=proc_p, secondary=proc_s)


def _host(proc: ControllerProcess, name: str) -> Channel:
    return proc.channel(name=name, secret=SECRETS[name])


async def _pair_op(proc: ControllerProcess, name: str, op: PairOp, device: int) -> None:
    async with _host(proc, name) as host:
        reply = await host.pair_op(op, (PairItem(device=device),))
    assert [r.code for r in reply.results] == [0], reply


async def _suspend(proc: ControllerProcess, name: str, device: int) -> None:
    async with _host(proc, name) as host:
        await suspend_soon(host, (PairItem(device=device),))


def _address(device: int) -> str:
    return f"{SERIAL_P}:1{device >> 8:X}00:{device >> 8:02X}:{device & 0xFF:02X}"


async def _events_until_resumed(subscription: Subscription, device: int) -> list[Event]:
    """The subscription's events, replayed and live, up to the STATE event that takes
    `device` out of SUSPENDED."""
    await subscription.wait_until(
        lambda e: e.kind is EventKind.STATE and e.device == _address(device)
        and e.old is PairState.SUSPENDED,
        timeout_s=60,
    )  # fmt: skip
    return list(subscription.seen)


def _follows_on(events: list[Event], position: int) -> None:
    """Each event says it follows on from the one sent before it (or `position`)."""
    for event in events:
        assert event.prev_seq == position, (event, position)
        position = event.seq


async def test_each_host_sees_only_its_own_devices_events(world: Site) -> None:
    """Both hosts suspend and resume their own device, one after the other. Each limited host
    is sent its own STATE and ARMED events (ARMED says its LSS), the controller's START and
    its link's LINK_UP, and nothing that names the other's device or volser; the wide host
    gets both. The numbers each gets have holes, and each event's prev_seq is the number
    sent before it."""
    p = world.primary
    async with _host(p, HOST_A) as a, _host(p, HOST_C) as c, _host(p, WIDE) as wide:
        subs = {
            HOST_A: await a.subscribe(after_seq=0),
            HOST_C: await c.subscribe(after_seq=0),
            WIDE: await wide.subscribe(after_seq=0),
        }
        replayed = {name: sub.take_replayed() for name, sub in subs.items()}
        await _suspend(p, HOST_A, DEV_A)
        await _suspend(p, HOST_C, DEV_C)
        await _pair_op(p, HOST_A, PairOp.RESUME, DEV_A)
        await _pair_op(p, HOST_C, PairOp.RESUME, DEV_C)
        # Each host's last own event comes after every event of the other's: by then the
        # other's would have been sent, were they not filtered.
        seen = {
            HOST_A: await _events_until_resumed(subs[HOST_A], DEV_A),
            HOST_C: await _events_until_resumed(subs[HOST_C], DEV_C),
            WIDE: await _events_until_resumed(subs[WIDE], DEV_C),
        }
    for name, sub in subs.items():
        _follows_on(replayed[name], 0)
        _follows_on(seen[name][len(replayed[name]) :], sub.live_after_seq)
    assert {_address(DEV_A), _address(DEV_C)} <= {e.device for e in seen[WIDE]}
    for name, own, other in ((HOST_A, DEV_A, DEV_C), (HOST_C, DEV_C, DEV_A)):
        events = seen[name]
        devices = {e.device for e in events if e.device}
        assert _address(own) in devices
        assert all(d.split(":")[2] == f"{own >> 8:02X}" for d in devices), (name, devices)
        other_volser = f"V{other >> 8:X}0000"
        for event in events:  # nothing names the other grant's devices or volsers
            shown = str(event.to_json())
            assert f":{other >> 8:02X}:" not in shown, (name, event)
            assert other_volser not in shown, (name, event)
        armed = [e for e in events if e.kind is EventKind.ARMED]
        assert [e.detail["lss"] for e in armed] == [f"{own >> 8:02X}"], (name, armed)
        kinds = {e.kind for e in events}
        assert {EventKind.START, EventKind.LINK_UP} <= kinds
        numbers = [e.seq for e in events]
        assert numbers != list(range(numbers[0], numbers[0] + len(numbers)))  # holes


async def test_a_filtered_follower_sees_no_false_loss_across_a_restart(world: Site) -> None:
    """HOST_A follows (remcopy.host.follow, as `remcopy events --follow` does) while HOST_C's
    device changes; the primary is killed and started again; more changes of both. HOST_A's
    follower reconnects once per restart, reports no loss and no GAP, and passes on every
    event of its own exactly once."""
    p = world.primary
    passed: list[Event] = []
    retries: list[str] = []
    arrived = asyncio.Event()

    def on_event(event: Event) -> None:
        passed.append(event)
        arrived.set()

    async def until(met: Callable[[Event], bool]) -> Event:
        try:
            async with asyncio.timeout(60):
                while True:
                    found = [e for e in passed if met(e)]
                    if found:
                        return found[-1]
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            raise AssertionError(f"not passed on: last {passed[-5:]}; retries {retries}") from None

    channel = _host(p, HOST_A)
    async with asyncio.TaskGroup() as tasks:
        following = tasks.create_task(
            follow.follow(
                {p.name: channel},
                on_event=on_event,
                on_retry=lambda name, pause_s, why: retries.append(why),
                shown=follow.EventFilter(),
            )
        )
        await until(lambda e: e.kind is EventKind.START)
        await _suspend(p, HOST_C, DEV_C)  # not HOST_A's: holes in its numbers
        await _suspend(p, HOST_A, DEV_A)
        await until(lambda e: e.device == _address(DEV_A) and e.new is PairState.SUSPENDED)
        await p.kill()
        await p.start()
        starts = [e for e in passed if e.kind is EventKind.START]
        await until(lambda e: e.kind is EventKind.START and e not in starts)
        async with _host(p, WIDE) as wide:
            items = (PairItem(device=DEV_C), PairItem(device=DEV_A))
            assert [r.code for r in (await wide.pair_op(PairOp.RESUME, items)).results] == [0, 0]
        await until(lambda e: e.device == _address(DEV_A) and e.old is PairState.SUSPENDED)
        following.cancel()
    assert retries  # the kill
    assert not any("did not come" in why for why in retries), retries  # no false loss
    assert not any(e.kind is EventKind.GAP for e in passed)
    numbers = [e.seq for e in passed]
    assert numbers == sorted(set(numbers))  # each once, in order
    assert all(e.device.split(":")[2] == "0A" for e in passed if e.device)
    assert len([e for e in passed if e.kind is EventKind.START]) == 2


async def test_a_filtered_subscriber_past_the_end_is_still_told_a_gap(world: Site) -> None:
    """Loss stays visible through the filter: resuming after a number the controller never
    reached gives a GAP (then the live stream), to a limited host too."""
    async with _host(world.primary, HOST_A) as a:
        subscription = await a.subscribe(after_seq=10**12)
        (gap,) = subscription.take_replayed()
    assert gap.kind is EventKind.GAP
    assert gap.seq == subscription.live_after_seq
