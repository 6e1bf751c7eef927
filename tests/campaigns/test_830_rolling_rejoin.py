# A rolling disaster: one primary of a sync consistency group dies, then another's link
# stalls and the survivors freeze the group without it (freeze-incomplete: it cannot answer).
# When the dead primary starts again it must not mirror: it asks its siblings whether the
# group froze while it was down, and joins the cut at T in SUSPENDED_ERROR
# (controller/freeze.py, "rejoin"). Found by the rolling campaign: before the rejoin, the
# returning primary mirrored again and the secondary site held writes whose predecessors,
# written to the frozen siblings after T, were only change-recorded.
from __future__ import annotations

import pytest

from remcopy.events import EventKind
from remcopy.states import PairState
from remcopy.workload.campaigns import ACK_TIMEOUT_S
from remcopy.workload.checker import check_image
from remcopy.workload.faultworld import (
    ITERATION_TIMEOUT_S,
    Arrival,
    Load,
    Shape,
    recorded,
    world,
)
from remcopy.workload.image import Image, ImageReader
from remcopy.workload.log import read_log

pytestmark = pytest.mark.timeout(300)
HOLD_S = 2.0  # the product's default: a controller restart here takes longer than this


async def test_a_primary_that_was_down_during_a_freeze_does_not_mirror_when_it_returns(
    tmp_path, campaign_seed
):
    """A primary that was down while its group froze comes back suspended at the freeze's T,
    so the secondary site stays a consistent cut."""
    shape = Shape(
        primaries=3,
        links=True,
        primary_settings=(("ack_timeout_s", ACK_TIMEOUT_S), ("hold_s", HOLD_S)),
    )
    async with world(tmp_path, shape) as w:
        a, b, c = w.primaries
        async with recorded([a, c]) as recorder:
            async with Load(w, tmp_path / "before.jsonl", seed=campaign_seed, writers=6) as load:
                await load.wait(60)
                await b.kill()  # the chains that meet cntla1 end there
            w.links[0].stall()  # then cntla0's link: cntla0 holds and freezes the group
            addresses = {str(p.primary) for p in w.group.pairs if p.primary_controller != b.name}

            def frozen(arrivals: list[Arrival]) -> bool:
                events = [a.event for a in arrivals]
                left = {
                    e.device
                    for e in events
                    if e.old is PairState.DUPLEX
                    and e.new in (PairState.SUSPENDED, PairState.SUSPENDED_ERROR)
                }
                incomplete = any(
                    e.kind is EventKind.FREEZE and e.detail.get("phase") == "incomplete"
                    for e in events
                )
                return addresses <= left and incomplete

            assert await recorder.wait(frozen, timeout_s=ITERATION_TIMEOUT_S), [
                a.event.text for a in recorder.events
            ]
        await b.start()  # cntla1 comes back
        # Dependent writes across the three controllers, as a host goes on writing (those to
        # cntla1 wait until it learned the group froze).
        path = tmp_path / "after.jsonl"
        async with Load(w, path, seed=campaign_seed + 1, writers=6) as after:
            await after.wait(200)
        statuses = await w.session.channels[b.name].query(
            tuple(p.primary.device_key for p in w.group.pairs if p.primary_controller == b.name)
        )
        print("cntla1 after its restart:", [(s.state.name, s.suspend_at_ns) for s in statuses])
        reader = ImageReader(w.session, w.group, Image.SECONDARY)
        report = await check_image(reader, read_log(path), require_all_acked=False)
        print(report.summary())
        assert report.consistent, report.summary()
        assert {s.state for s in statuses} <= {PairState.SUSPENDED, PairState.SUSPENDED_ERROR}
        siblings = [
            await w.session.channels[p.name].query(
                tuple(g.primary.device_key for g in w.group.pairs if g.primary_controller == p.name)
            )
            for p in (a, c)
        ]
        stamps = {s.suspend_at_ns for batch in [statuses, *siblings] for s in batch}
        assert len(stamps) == 1 and 0 not in stamps, stamps  # the same cut at T as theirs
