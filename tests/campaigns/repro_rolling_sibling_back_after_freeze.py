# REPRODUCER, NOT IN THE SUITE (the file name does not match test_*.py, so only an explicit
# `pytest tests/campaigns/repro_rolling_sibling_back_after_freeze.py` runs it). It FAILS on
# the product as of branch rolling (issue 14): a rolling disaster leaves the secondary site
# inconsistent.
#
# The sequence (three primaries cntla0..2, one sync consistency group, nothing but the
# controllers acting on the group): kill -9 of cntla1 (nothing freezes: see
# repro_rolling_kill_primary.py); then cntla0's replication link stalls. cntla0 holds, arms
# itself and cntla2 at T, cannot reach cntla1, and after hold_s announces freeze-incomplete
# and releases (freeze_unreachable = "go"). docs/replication.md section 4.2 says the group is
# still consistent when the unreachable sibling is down. Then cntla1 comes back (as a service
# manager restarts it, Restart=on-failure): it knows nothing of the freeze, its pairs are
# DUPLEX, and it mirrors again while cntla0 and cntla2 are suspended at T. A host writing
# dependent writes across the three controllers now puts a write on cntla1's secondary whose
# predecessor, written to cntla0 or cntla2 after T, is only change-recorded: the secondary site
# holds a later write without the earlier one it depends on.
#
# Why (our reading): the freeze is told to the siblings once, within the hold; nothing makes
# a primary that was down at that moment learn of it when it starts again (it does not ask
# its siblings, and the armed T is persisted only where PEER_FREEZE arrived).
from __future__ import annotations

import pytest

from remcopy.states import PairState
from remcopy.workload.campaigns import ACK_TIMEOUT_S
from remcopy.workload.checker import check_image
from remcopy.workload.faultworld import (
    ITERATION_TIMEOUT_S,
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

            def frozen(events: list) -> bool:
                left = {
                    e.line.split()[1]
                    for e in events
                    if e.line.startswith("pair ") and " DUPLEX -> SUSPENDED" in e.line
                }
                incomplete = any(e.line.startswith("freeze-incomplete") for e in events)
                return addresses <= left and incomplete

            assert await recorder.wait(frozen, timeout_s=ITERATION_TIMEOUT_S), [
                e.line for e in recorder.events
            ]
        await b.start()  # cntla1 comes back
        statuses = await w.session.channels[b.name].query(
            tuple(p.primary.device_key for p in w.group.pairs if p.primary_controller == b.name)
        )
        print("cntla1 after its restart:", [(s.state.name, s.suspend_at_ns) for s in statuses])
        # Dependent writes across the three controllers, as a host goes on writing.
        path = tmp_path / "after.jsonl"
        async with Load(w, path, seed=campaign_seed + 1, writers=6) as after:
            await after.wait(200)
        reader = ImageReader(w.session, w.group, Image.SECONDARY)
        report = await check_image(reader, read_log(path), require_all_acked=False)
        print(report.summary())
        assert report.consistent, report.summary()
        assert {s.state for s in statuses} <= {PairState.SUSPENDED, PairState.SUSPENDED_ERROR}
