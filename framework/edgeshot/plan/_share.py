"""Dividing an app's global limits among its placements: a pure function.

The controller divides (an edgepoint never decides alone what is global):
every placement first gets its minimum, then what remains is spread evenly,
never above a placement's own maximum; a remainder goes to the placements
listed first (the distribution policy's order), so the result is stable.
"""

from __future__ import annotations


def divide(total: int | None, mins: list[int], maxes: list[int]) -> list[int]:
    """Shares of `total` (None: unlimited) with mins[i] <= share[i] <= maxes[i] where possible."""
    if total is None:
        return list(maxes)
    shares = list(mins)
    left = total - sum(shares)
    open_ = [i for i in range(len(shares)) if shares[i] < maxes[i]]
    while left > 0 and open_:
        each = max(1, left // len(open_))
        still_open = []
        for i in open_:
            if left == 0:
                still_open.append(i)
                continue
            give = min(each, maxes[i] - shares[i], left)
            shares[i] += give
            left -= give
            if shares[i] < maxes[i]:
                still_open.append(i)
        open_ = still_open
    return shares
