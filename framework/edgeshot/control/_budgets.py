"""Budgets: each app's spend this month, its forecast, its state, and the cost ceiling of
its placements, which follows what remains of the budget.

Pure (`assess`): from the month's spend per app (billed from the stored aggregates),
the plan's apps and placements, the network's prices and the time, per app:

* ``spent`` (the app's lines of this month's bill), ``forecast`` (linear,
  `billing.forecast`), ``state``: ok, ``warning`` from 80 % of the budget,
  ``exhausted`` at 100 % (`billing.budget_state`);
* ``ceiling``: the instances what remains can keep busy until the month ends
  (`billing.cost_ceiling`, an instance priced busy, at the peak multiplier, as the
  plan prices it), never above what the placements' global shares allow and never
  below the floor: scale-up stops once what remains only covers the minimum. The
  floor is each placement's minimum, and at least one instance per placement, as in
  the plan's own ceilings (an app keeps serving its users; spend beyond the budget is
  reported, it is not a kill switch);
* ``ceilings``: that figure divided among the app's placements (`plan.divide`).

The controller feeds ``ceilings`` into the placements it sends to the edge
processes (the resource managers cap scaling at ``min(max, global share, cost
ceiling)``), and raises an event when an app's state changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from edgeshot.plan import AppPlan, Placement, divide
from edgeshot.spec import Pricing, round_money

from . import billing

DEFAULT_WARN_AT = 0.8  # the plan does not carry the spec's Budget.warn_at (yet): its default


@dataclass(frozen=True)
class AppBudget:
    app: str
    owner: str
    month: str
    currency: str
    limit: Decimal
    spent: Decimal
    forecast: Decimal
    remaining: Decimal
    used: float  # spent / limit
    state: billing.BudgetState
    instance_per_second: Decimal  # one instance, busy, at peak prices
    seconds_left: float
    ceiling: int  # the app's, over all its placements
    ceilings: dict[str, int] = field(default_factory=dict)  # placement id -> instances

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("limit", "spent", "forecast", "remaining", "instance_per_second"):
            d[k] = str(d[k])
        d["used"] = round(self.used, 4)
        return d


def current_month(now: datetime, zone: str = "UTC") -> str:
    local = now.astimezone(ZoneInfo(zone))
    return f"{local.year:04d}-{local.month:02d}"


def instance_per_second(app: AppPlan, pricing: Pricing) -> Decimal:
    """What one busy instance of `app` costs per second (CPU and memory at the tiers'
    limits, an appshot the size of its memory, the peak multiplier)."""
    cpu = sum((t.cpu for t in app.tiers), Decimal(0))
    memory_gb = Decimal(sum(t.memory_mb for t in app.tiers)) / 1024
    per = (cpu * pricing.cpu_second + memory_gb * pricing.memory_gb_second
           + memory_gb * pricing.storage_gb_hour / 3600)
    if pricing.peak is not None:
        per *= pricing.peak.multiplier
    return per


def assess(apps: list[AppPlan], placements: list[Placement], spent: dict[str, Decimal],
           pricing: Pricing, now: datetime, warn_at: float = DEFAULT_WARN_AT
           ) -> dict[str, AppBudget]:
    zone = pricing.peak.timezone if pricing.peak else "UTC"
    month = current_month(now, zone)
    _, m1 = billing.month_bounds(month, zone)
    seconds_left = max(0.0, (m1 - now).total_seconds())
    out = {}
    for app in apps:
        mine = [p for p in placements if p.app == app.name]
        limit = app.budget.amount
        s = spent.get(app.name, Decimal(0))
        per = instance_per_second(app, pricing)
        floors = [max(p.scaling.min, 1) for p in mine]
        tops = [max(f, min(p.scaling.max, p.global_share)) for f, p in zip(floors, mine,
                                                                            strict=True)]
        ceiling = billing.cost_ceiling(limit - s, seconds_left, per, sum(floors), sum(tops))
        shares = divide(ceiling, floors, tops) if mine else []
        out[app.name] = AppBudget(
            app=app.name, owner=app.owner, month=month, currency=app.budget.currency,
            limit=limit, spent=s,
            forecast=round_money(billing.forecast(s, now, month, zone)),
            remaining=limit - s, used=float(s / limit) if limit else 1.0,
            state=billing.budget_state(s, limit, warn_at), instance_per_second=per,
            seconds_left=seconds_left, ceiling=ceiling,
            ceilings={p.id: c for p, c in zip(mine, shares, strict=True)})
    return out


def spent_by_app(the_bill: billing.Bill) -> dict[str, Decimal]:
    """Per app (over its owners: an app has one), the amount of its bill lines."""
    out: dict[str, Decimal] = {}
    for line in the_bill.lines:
        out[line.app] = out.get(line.app, Decimal(0)) + line.amount
    return out


def now_utc() -> datetime:
    return datetime.now(UTC)
