# REPRODUCER, NOT IN THE SUITE (the file name does not match test_*.py, so only an explicit
# `pytest tests/campaigns/repro_rolling_kill_primary.py` runs it). It FAILS on the product as
# of branch rolling (issue 14), which is the point: it shows a gap, not a flaky test.
#
# What it shows: kill -9 of one primary controller of a consistency group (three primaries,
# sync, dependent writes across them, nothing but the controllers running) freezes nothing.
# The surviving primaries announce no hold and no freeze and keep every pair DUPLEX (the
# campaign waits FREEZE_WAIT_S); the killed one, restarted, reports DUPLEX too. The secondary
# stays a consistent cut holding every acknowledged write (sync), so no check of the image
# fails: what fails is "every reachable pair left DUPLEX" and "every pair at one T".
#
# Why (our reading of controller/replication.py and freeze.py): a freeze starts only from a
# replication error on one of the controller's own devices (a failed or unconfirmed update,
# a heartbeat not answered). Heartbeats run only on links that carry mirroring pairs
# (`Replicator._mirroring_peers`), so nothing watches the links between sibling primaries,
# and the death of a sibling is no replication error anywhere: no controller ever holds.
from __future__ import annotations

import pytest

from remcopy.workload.campaigns import CampaignSettings, run_campaign

pytestmark = pytest.mark.timeout(300)


async def test_kill_9_of_one_primary_freezes_the_rest_of_the_group(tmp_path, campaign_seed):
    """After kill -9 of one primary, the other primaries of the group freeze it at one T."""
    settings = CampaignSettings(iterations=1, seed=campaign_seed, faults=("kill",))
    result = await run_campaign("rolling", tmp_path, settings)
    print(result.line())
    assert not result.harness_error, result.line()
    assert not result.findings, "\n".join(result.findings)
