"""Failed authentications per source (`auth.Throttle`): a bucket of failures that refills."""

from __future__ import annotations

import pytest

from edgeshot.agent.auth import Throttle

# (events, expected retry_after of "a" after them): "f" a failure of a, "g" one of another
# source, a number the seconds that pass
CASES = [
    ("", None),
    ("ff", None),  # under the burst
    ("fff", 3),  # at the burst (3): until one failure has drained (3 s each)
    ("ffff", 6),
    ("ffff 3", 3),
    ("ffff 6", None),
    ("ffffff", 12),
    ("gggggg", None),  # another address's failures are its own
    ("ffff 100 ffff", 6),
]


@pytest.mark.parametrize("events,expected", CASES, ids=[c[0] or "nothing" for c in CASES])
def test_throttle(events, expected):
    now = [0.0]
    t = Throttle(burst=3, refill_s=3.0, clock=lambda: now[0])
    for part in events.split():
        if part.isdigit():
            now[0] += int(part)
            continue
        for c in part:
            t.failed("a" if c == "f" else "b")
    assert t.retry_after("a") == expected


def test_counts_for_the_metrics_and_bounded_memory():
    now = [0.0]
    t = Throttle(burst=1, refill_s=1.0, clock=lambda: now[0], max_sources=10)
    for i in range(100):
        t.failed(f"10.0.0.{i}")
    assert t.failures == 100 and len(t._level) <= 10
    t.failed("x")
    assert t.retry_after("x") is not None and t.throttled == 1
