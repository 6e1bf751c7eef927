# The harness proves it can fail: with each known bug planted in the primary controllers (or,
# for a bug of the secondary's side, in the secondary; config planted_bugs, testing only), the
# campaign that must catch it fails its check, for the reason the bug breaks, and the harness
# itself does not fail.
from __future__ import annotations

import typing
from pathlib import Path

import pytest

from remcopy.controller.config import ControllerSection
from remcopy.workload.campaigns import (
    ASYNC_FAULTS,
    CATCHERS,
    CAUGHT_FOR,
    CAUGHT_FOR_ALL,
    HUNT_FAULTS,
    PLANTED_BUGS,
    ROLLING_FAULTS,
    caught_as_expected,
    hunt_planted_bug,
)

# Iterations a hunt may take before the bug counts as missed. A hunt stops at its first
# finding, most in the first iteration; mirror_late_write needs a write stamped >= T to reach
# the primary while it drains the updates stamped < T, which a loaded machine can miss a few
# iterations in a row.
HUNT_ITERATIONS_MAX = 20
# The bugs whose evidence includes acknowledged writes absent from a secondary (the fourth,
# mirror_late_write, adds a write instead: the secondary is not the cut at T).
LOSING_BUGS = {"drop_update", "skip_changemap_bit", "early_sync_ack"}
# Planted bugs a dedicated test catches rather than a campaign: a controller that dies is
# not a verdict on the secondary's data, it is the process's exit.
CAUGHT_BY_TEST = {
    "crash_background": Path(__file__).parents[1]
    / "integration"
    / "test_520_failstop_heartbeat.py",
}


def test_every_planted_bug_has_a_campaign_that_catches_it():
    """Each planted bug the controller config accepts names the campaigns that catch it, or
    the test that does."""
    (literal,) = typing.get_args(ControllerSection.model_fields["planted_bugs"].annotation)
    assert set(typing.get_args(literal)) == set(PLANTED_BUGS) | set(CAUGHT_BY_TEST)
    assert set(PLANTED_BUGS) == set(CATCHERS)
    assert all(CATCHERS[bug] for bug in PLANTED_BUGS)
    for bug, test in CAUGHT_BY_TEST.items():
        assert f'"planted_bugs": ["{bug}"]' in test.read_text()


@pytest.mark.timeout(900)  # a bound on 20 iterations on a loaded machine; most take one
@pytest.mark.parametrize("bug", PLANTED_BUGS)
async def test_a_planted_bug_fails_the_check_of_its_campaign(
    bug, tmp_path, campaign_seed, record_property
):
    """The campaign that must catch a planted bug reports a failed check, for the reason the
    bug breaks, and the harness itself did not fail."""
    campaign = CATCHERS[bug][0]
    result = await hunt_planted_bug(
        bug, campaign, tmp_path, seed=campaign_seed, iterations=HUNT_ITERATIONS_MAX
    )
    print(result.line())
    record_property("figures", result.line())
    assert not result.harness_error, result.line()
    assert result.detected, f"{bug} was not caught by {campaign}: {result.line()}"
    assert caught_as_expected(result), (CAUGHT_FOR[bug], result.line())
    if bug in LOSING_BUGS:
        assert result.inconsistent_secondaries > 0, result.line()
        assert result.acked_writes_lost > 0, result.line()


def test_every_planted_bug_has_an_expected_reason():
    """A new planted bug must say what it is caught for."""
    assert set(CAUGHT_FOR) == set(PLANTED_BUGS)
    assert set(CAUGHT_FOR_ALL) <= set(PLANTED_BUGS)


def test_a_hunt_chooses_only_faults_its_campaign_has():
    """The faults a bug's hunt is narrowed to exist in its first catcher."""
    faults = {"rolling": set(ROLLING_FAULTS), "async_disaster": set(ASYNC_FAULTS)}
    for bug, chosen in HUNT_FAULTS.items():
        assert chosen, bug
        assert set(chosen) <= faults[CATCHERS[bug][0]], (bug, chosen)
