# The harness proves it can fail: with each known bug planted in the primary controllers
# (config planted_bugs, testing only), the campaign that must catch it fails its check.
from __future__ import annotations

import typing

import pytest

from remcopy.controller.config import ControllerSection
from remcopy.workload.campaigns import CATCHERS, PLANTED_BUGS, hunt_planted_bug

# Iterations a hunt may take before the bug counts as missed. A hunt stops at its first
# finding, most in the first iteration; mirror_late_write needs a write stamped >= T to reach
# the primary while it drains the updates stamped < T, which a loaded machine can miss a few
# iterations in a row.
HUNT_ITERATIONS_MAX = 20
# The bugs whose evidence includes acknowledged writes absent from a secondary (the fourth,
# mirror_late_write, adds a write instead: the secondary is not the cut at T).
LOSING_BUGS = {"drop_update", "skip_changemap_bit", "early_sync_ack"}
# Planted bugs that are not about the data, so no campaign hunts them: crash_background
# kills the heartbeat task, and tests/integration/test_520_failstop_heartbeat.py asserts the
# controller stops (fail-stop).
NOT_DATA_BUGS = {"crash_background"}


def test_every_planted_bug_has_a_campaign_that_catches_it():
    """Each planted bug the controller config accepts names the campaigns that catch it."""
    (literal,) = typing.get_args(ControllerSection.model_fields["planted_bugs"].annotation)
    accepted = set(typing.get_args(literal)) - NOT_DATA_BUGS
    assert accepted == set(PLANTED_BUGS) == set(CATCHERS)
    assert all(CATCHERS[bug] for bug in PLANTED_BUGS)


@pytest.mark.timeout(900)  # a bound on 20 iterations on a loaded machine; most take one
@pytest.mark.parametrize("bug", PLANTED_BUGS)
async def test_a_planted_bug_fails_the_check_of_its_campaign(
    bug, tmp_path, campaign_seed, record_property
):
    """The campaign that must catch a planted bug reports a failed check."""
    campaign = CATCHERS[bug][0]
    result = await hunt_planted_bug(
        bug, campaign, tmp_path, seed=campaign_seed, iterations=HUNT_ITERATIONS_MAX
    )
    print(result.line())
    record_property("figures", result.line())
    assert result.detected, f"{bug} was not caught by {campaign}: {result.line()}"
    assert result.inconsistent_secondaries > 0, result.line()
    if bug in LOSING_BUGS:
        assert result.acked_writes_lost > 0, result.line()
