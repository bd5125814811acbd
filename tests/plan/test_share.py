"""`divide`: an app's global limit shared among its placements (a pure function)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeshot.plan import divide

CASES = [
    # (why, total, mins, maxes, expected)
    ("even split, remainder to the first", 10, [0, 0, 0], [4, 4, 4], [4, 3, 3]),
    ("two left over go to the first two", 5, [0, 0, 0], [4, 4, 4], [2, 2, 1]),
    ("one left over goes to the first", 4, [0, 0, 0], [4, 4, 4], [2, 1, 1]),
    ("less than one each: the first ones", 2, [0, 0, 0], [4, 4, 4], [1, 1, 0]),
    ("zero total, zero minimums", 0, [0, 0], [2, 2], [0, 0]),
    ("minimums first, then the rest evenly", 5, [1, 1], [4, 4], [3, 2]),
    ("exactly the minimums", 2, [1, 1], [4, 4], [1, 1]),
    ("total below the minimums: the minimums (infeasible)", 1, [1, 1], [4, 4], [1, 1]),
    ("never over a maximum: surplus is not handed out", 100, [0, 0], [3, 4], [3, 4]),
    ("a full placement's part goes to the others", 7, [0, 0, 0], [1, 5, 5], [1, 3, 3]),
    ("uneven maxima, remainder to the first open", 5, [0, 0, 0], [1, 4, 4], [1, 2, 2]),
    ("uneven minima: the rest spread evenly", 9, [2, 0], [3, 10], [3, 6]),
    ("the rest evenly, not levelled", 6, [0, 4], [10, 10], [1, 5]),
    ("unlimited: every maximum", None, [0, 1], [2, 3], [2, 3]),
    ("unlimited ignores minima", None, [2, 2], [2, 5], [2, 5]),
    ("one placement takes all it may", 3, [0], [8], [3]),
    ("one placement capped", 30, [0], [8], [8]),
    ("no placements", 5, [], [], []),
    ("no placements, unlimited", None, [], [], []),
]


@pytest.mark.parametrize(("total", "mins", "maxes", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_divide(total, mins, maxes, expected):
    assert divide(total, mins, maxes) == expected


def test_divide_does_not_touch_its_arguments():
    mins, maxes = [1, 1], [4, 4]
    divide(5, mins, maxes)
    assert (mins, maxes) == ([1, 1], [4, 4])


@st.composite
def problems(draw):
    n = draw(st.integers(0, 8))
    mins = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    maxes = [m + draw(st.integers(0, 8)) for m in mins]
    total = draw(st.none() | st.integers(0, 80))
    return total, mins, maxes


@settings(max_examples=150, deadline=None)
@given(problems())
def test_divide_properties(problem):
    total, mins, maxes = problem
    shares = divide(total, mins, maxes)
    assert len(shares) == len(mins)
    if total is None:
        assert shares == maxes
        return
    if sum(mins) > total:  # infeasible: the minimums stand, nothing more
        assert shares == mins
        return
    assert all(lo <= s <= hi for lo, s, hi in zip(mins, shares, maxes, strict=True))
    assert sum(shares) == min(total, sum(maxes))
    # What remains after the minimums is spread evenly: a placement that could take more
    # got at most one less than any other, and no less than any open one after it.
    extra = [s - lo for s, lo in zip(shares, mins, strict=True)]
    for i in range(len(shares)):
        if shares[i] < maxes[i]:
            assert all(e <= extra[i] + 1 for e in extra)
            assert all(extra[i] >= extra[j] for j in range(i + 1, len(shares))
                       if shares[j] < maxes[j])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10), st.integers(0, 3), st.integers(0, 6), st.integers(0, 60))
def test_equal_bounds_differ_by_at_most_one_first_ones_larger(n, lo, span, total):
    """The compiler's case: every placement of an app has the same min and max."""
    hi = lo + span
    shares = divide(max(total, lo * n), [lo] * n, [hi] * n)
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)
