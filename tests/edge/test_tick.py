"""When a tick reads HAProxy's counters before deciding (``observe_due``)."""

from __future__ import annotations

import math

import pytest

from edgeshot.edge.service import observe_due


@pytest.mark.parametrize("urgent, since_observed_s, tick_s, due", [
    (False, 0.0, 0.1, True),         # a regular tick always observes
    (False, 5.0, 0.1, True),
    (True, math.inf, 0.1, True),     # never observed yet: even a user waiting cannot skip it
    (True, 0.03, 0.1, False),        # a user waits: decide on a fresh enough observation
    (True, 0.0999, 0.1, False),
    (True, 0.1, 0.1, True),          # demand that keeps waking the loop cannot starve it
    (True, 2.0, 0.1, True),
])
def test_observe_due(urgent: bool, since_observed_s: float, tick_s: float, due: bool) -> None:
    assert observe_due(urgent, since_observed_s, tick_s) is due
