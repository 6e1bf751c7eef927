# Fault campaigns: a seed per test run (REMCOPY_CAMPAIGN_SEED replays one). The figures the
# tests record are printed at the end of the run by hooks in tests/conftest.py.
from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def campaign_seed() -> int:
    """The seed of this test's schedule: REMCOPY_CAMPAIGN_SEED, or a fresh random one."""
    text = os.environ.get("REMCOPY_CAMPAIGN_SEED")
    seed = int(text) if text else random.randrange(1 << 32)
    print(f"campaign seed {seed} (replay: REMCOPY_CAMPAIGN_SEED={seed})")
    return seed
