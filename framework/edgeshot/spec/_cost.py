"""What an instance of an app costs at a network's prices: one function, used by
validation (can the budget pay for the minimum?) and by the plan (estimates and
cost ceilings), so that both always agree.

Assumptions, stated once: a month is 730 hours; an idle instance uses
IDLE_CPU of its CPU limit, a busy one all of it; memory is billed at the
tiers' limits; every instance keeps an appshot the size of its memory limit;
network traffic is not estimated (it depends on users, not on instances);
the peak multiplier applies to the whole month for the upper bound.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from ._catalog import HOURS_PER_MONTH, SECONDS_PER_MONTH
from ._models import Application, Money, Pricing

IDLE_CPU = Decimal("0.05")
CENT = Decimal("0.01")


def instance_month(app: Application, pricing: Pricing, *, busy: bool) -> Decimal:
    """Cost of one instance of `app` running for a whole month."""
    cpu = sum((t.resources.cpu for t in app.tiers), Decimal(0))
    memory_gb = Decimal(sum(t.resources.memory_mb for t in app.tiers)) / 1024
    utilisation = Decimal(1) if busy else IDLE_CPU
    per_second = cpu * utilisation * pricing.cpu_second + memory_gb * pricing.memory_gb_second
    storage = memory_gb * pricing.storage_gb_hour * HOURS_PER_MONTH
    cost = per_second * SECONDS_PER_MONTH + storage
    if busy and pricing.peak is not None:
        cost *= pricing.peak.multiplier
    return cost


def round_money(amount: Decimal) -> Decimal:
    """Cents, half to even: the rounding rule for every estimate."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def money(amount: Decimal, currency: str) -> Money:
    return Money(amount=round_money(amount), currency=currency)
