"""Billing: pure functions from usage and `Pricing` to bills, reports and budget limits.

Rules, stated once:
- Quantities: CPU-seconds, memory GB-seconds, network GB (in + out bytes /
  10^9, as clouds bill), disk I/O GB (read + write bytes / 10^9), appshot
  storage GB-hours.
- The peak window is read in its own time zone (daylight-saving changes
  included): the share of a usage interval inside the window is charged at
  `multiplier` times the price. Storage is not a peak resource (it does not
  depend on when users come) and is always charged at the base price.
  A window wall time that does not exist on a DST day is read with the
  offset in force before the change (zoneinfo's fold=0).
- A record of no duration (a reading) is billed at the instant it was taken.
- A usage interval is split proportionally by time across peak boundaries
  and across the month's boundaries (the month is the network's calendar
  month, in the peak window's time zone, UTC without one).
- Money: exact `Decimal` throughout; each bill line is rounded to the cent,
  half to even, and every total is the sum of rounded lines, so app lines add
  up to owner totals and owner totals to the network's total, exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from edgeshot.spec import PeakWindow, Pricing, round_money

GB = Decimal(10**9)
_INSTANT = timedelta(microseconds=1)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Resource = Literal["cpu", "memory", "network", "disk_io", "storage"]
RESOURCES: tuple[Resource, ...] = ("cpu", "memory", "network", "disk_io", "storage")
_UNITS = {"cpu": "CPU-s", "memory": "GB-s", "network": "GB", "disk_io": "GB", "storage": "GB-h"}


@dataclass(frozen=True, slots=True)
class Usage:
    """What billing reads of a usage record or an hourly aggregate (docs/architecture.md fields)."""

    owner: str
    vendor: str
    app: str
    start: datetime
    end: datetime
    cpu_seconds: Decimal = Decimal(0)
    memory_gb_seconds: Decimal = Decimal(0)
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    storage_gb_hours: Decimal = Decimal(0)
    net_in_bytes: int = 0
    net_out_bytes: int = 0
    requests: int = 0
    # The share of the usage inside the peak window, when already known (hourly
    # aggregates are split at the window's boundaries when stored: 0 or 1); None: from
    # `start` and `end`.
    peak_share: Decimal | None = None

    def quantities(self) -> dict[Resource, Decimal]:
        return {
            "cpu": _dec(self.cpu_seconds),
            "memory": _dec(self.memory_gb_seconds),
            "network": Decimal(self.net_in_bytes + self.net_out_bytes) / GB,
            "disk_io": Decimal(self.disk_read_bytes + self.disk_write_bytes) / GB,
            "storage": _dec(self.storage_gb_hours),
        }


def _dec(value: Decimal | float | int) -> Decimal:
    # Floats from meters become the decimal they print as, not their binary expansion.
    return value if isinstance(value, Decimal) else Decimal(str(value))


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BillLine(_Model):
    owner: str
    vendor: str
    app: str
    resource: Resource
    quantity: Decimal
    unit: str
    unit_price: Decimal
    peak_quantity: Decimal  # the part of `quantity` used inside the peak window
    amount: Decimal  # rounded to the cent, half to even


class Total(_Model):
    key: str
    amount: Decimal


class Bill(_Model):
    month: str
    currency: str
    lines: tuple[BillLine, ...]
    apps: tuple[Total, ...]  # key "owner/app"
    owners: tuple[Total, ...]
    total: Decimal


class VendorLine(_Model):
    vendor: str
    app: str
    owners: int
    requests: int
    quantities: dict[str, Decimal]
    amount: Decimal


class Department(_Model):
    owner: str
    amount: Decimal
    share: Decimal  # of the organisation's total, 4 decimals


class OrganisationReport(_Model):
    organisation: str
    currency: str
    departments: tuple[Department, ...]
    total: Decimal


# --- time --------------------------------------------------------------------


def month_bounds(month: str, zone: str = "UTC") -> tuple[datetime, datetime]:
    """'2026-11' -> the month's first and last instants (UTC), as the zone's calendar has it."""
    try:
        year, mon = (int(x) for x in month.split("-"))
        if not 1 <= mon <= 12:
            raise ValueError
    except ValueError:
        raise ValueError(f"month {month!r} must be written YYYY-MM, e.g. 2026-11") from None
    tz = ZoneInfo(zone)
    start = datetime(year, mon, 1, tzinfo=tz)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def _overlap(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> float:
    return max(0.0, (min(a1, b1) - max(a0, b0)).total_seconds())


@lru_cache(maxsize=65536)
def peak_share(start: datetime, end: datetime, peak: PeakWindow | None) -> Decimal:
    """Share of [start, end) inside the peak window, in the window's own time zone."""
    if peak is None or end <= start:
        return Decimal(0)
    tz = ZoneInfo(peak.timezone)
    first = start.astimezone(tz).date() - timedelta(days=1)  # an overnight window from the day before
    last = end.astimezone(tz).date()
    inside = 0.0
    day = first
    while day <= last:
        if _WEEKDAYS[day.weekday()] in peak.weekdays:
            w0 = datetime.combine(day, peak.start, tzinfo=tz)
            w1 = datetime.combine(day + timedelta(days=peak.end <= peak.start), peak.end, tzinfo=tz)
            inside += _overlap(start, end, w0.astimezone(UTC), w1.astimezone(UTC))
        day += timedelta(days=1)
    total = (end - start).total_seconds()
    return Decimal(repr(round(inside / total, 12)))


def peak_windows(start: datetime, end: datetime, peak: PeakWindow | None
                 ) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) inside the peak window (UTC, in order, disjoint)."""
    if peak is None or end <= start:
        return []
    tz = ZoneInfo(peak.timezone)
    day = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date()
    out: list[tuple[datetime, datetime]] = []
    while day <= last:
        if _WEEKDAYS[day.weekday()] in peak.weekdays:
            w0 = datetime.combine(day, peak.start, tzinfo=tz).astimezone(UTC)
            w1 = datetime.combine(day + timedelta(days=peak.end <= peak.start), peak.end,
                                  tzinfo=tz).astimezone(UTC)
            a, b = max(start, w0), min(end, w1)
            if a < b:
                if out and a <= out[-1][1]:
                    out[-1] = (out[-1][0], max(out[-1][1], b))
                else:
                    out.append((a, b))
        day += timedelta(days=1)
    return out


def _zone(pricing: Pricing) -> str:
    return pricing.peak.timezone if pricing.peak else "UTC"


# --- bills -------------------------------------------------------------------


def _prices(pricing: Pricing) -> dict[Resource, Decimal]:
    return {
        "cpu": pricing.cpu_second,
        "memory": pricing.memory_gb_second,
        "network": pricing.network_gb,
        "disk_io": pricing.disk_io_gb,
        "storage": pricing.storage_gb_hour,
    }


def bill(usage: Iterable[Usage], pricing: Pricing, month: str, *, owner: str | None = None) -> Bill:
    """The month's bill: a line per owner, app and resource; totals that add up exactly."""
    m0, m1 = month_bounds(month, _zone(pricing))
    multiplier = pricing.peak.multiplier if pricing.peak else Decimal(1)
    qty: dict[tuple[str, str, str, Resource], Decimal] = defaultdict(Decimal)
    peak_qty: dict[tuple[str, str, str, Resource], Decimal] = defaultdict(Decimal)
    for u in usage:
        if owner is not None and u.owner != owner:
            continue
        span = (u.end - u.start).total_seconds()
        if span <= 0:  # an instant (a reading): billed where it happened, never dropped
            if not m0 <= u.start < m1:
                continue
            in_month = Decimal(1)
            share = (u.peak_share if u.peak_share is not None else
                     Decimal(bool(peak_windows(u.start, u.start + _INSTANT, pricing.peak))))
        else:
            inside = _overlap(u.start, u.end, m0, m1)
            if inside <= 0:
                continue
            in_month = Decimal(1) if inside >= span else Decimal(repr(inside / span))
            share = (u.peak_share if u.peak_share is not None
                     else peak_share(max(u.start, m0), min(u.end, m1), pricing.peak))
        for resource, q in u.quantities().items():
            if not q:
                continue
            key = (u.owner, u.vendor, u.app, resource)
            q *= in_month
            qty[key] += q
            if resource != "storage":
                peak_qty[key] += q * share
    prices = _prices(pricing)
    lines = []
    for key in sorted(qty):
        o, v, a, r = key
        q, p = qty[key], peak_qty[key]
        charged = q + p * (multiplier - 1)
        lines.append(BillLine(owner=o, vendor=v, app=a, resource=r, quantity=q, unit=_UNITS[r],
                              unit_price=prices[r], peak_quantity=p,
                              amount=round_money(charged * prices[r])))
    apps: dict[str, Decimal] = defaultdict(Decimal)
    owners: dict[str, Decimal] = defaultdict(Decimal)
    for line in lines:
        apps[f"{line.owner}/{line.app}"] += line.amount
        owners[line.owner] += line.amount
    return Bill(
        month=month, currency=pricing.currency, lines=tuple(lines),
        apps=tuple(Total(key=k, amount=v) for k, v in sorted(apps.items())),
        owners=tuple(Total(key=k, amount=v) for k, v in sorted(owners.items())),
        total=sum(owners.values(), Decimal(0)),
    )


def by_vendor(the_bill: Bill, usage: Iterable[Usage] = ()) -> tuple[VendorLine, ...]:
    """The ISV's view: usage and charges per application across all its owners."""
    requests: dict[tuple[str, str], int] = defaultdict(int)
    for u in usage:
        requests[(u.vendor, u.app)] += u.requests
    groups: dict[tuple[str, str], list[BillLine]] = defaultdict(list)
    for line in the_bill.lines:
        groups[(line.vendor, line.app)].append(line)
    out = []
    for (vendor, app), lines in sorted(groups.items()):
        quantities: dict[str, Decimal] = defaultdict(Decimal)
        for line in lines:
            quantities[line.resource] += line.quantity
        out.append(VendorLine(vendor=vendor, app=app, owners=len({ln.owner for ln in lines}),
                              requests=requests[(vendor, app)], quantities=dict(quantities),
                              amount=sum((ln.amount for ln in lines), Decimal(0))))
    return tuple(out)


def by_organisation(the_bill: Bill, organisation_of: dict[str, str | None]) -> tuple[OrganisationReport, ...]:
    """Transfer pricing: each department (owner) of an organisation is charged its own usage
    at the network's prices; the organisation pays the sum."""
    groups: dict[str, list[Total]] = defaultdict(list)
    for t in the_bill.owners:
        groups[organisation_of.get(t.key) or t.key].append(t)
    reports = []
    for org, members in sorted(groups.items()):
        total = sum((m.amount for m in members), Decimal(0))
        reports.append(OrganisationReport(
            organisation=org, currency=the_bill.currency, total=total,
            departments=tuple(
                Department(owner=m.key, amount=m.amount,
                           share=(m.amount / total).quantize(Decimal("0.0001")) if total else Decimal(0))
                for m in members
            ),
        ))
    return tuple(reports)


# --- budgets -----------------------------------------------------------------

BudgetState = Literal["ok", "warning", "exhausted"]


def forecast(spent: Decimal, now: datetime, month: str, zone: str = "UTC") -> Decimal:
    """The month's spend if it goes on at the rate so far (linear)."""
    m0, m1 = month_bounds(month, zone)
    elapsed = (min(max(now, m0), m1) - m0).total_seconds()
    if elapsed <= 0:
        return spent
    return spent * Decimal(repr((m1 - m0).total_seconds() / elapsed))


def budget_state(spent: Decimal, limit: Decimal, warn_at: float = 0.8) -> BudgetState:
    """Warned at `warn_at` of the budget, told at 100%."""
    if spent >= limit:
        return "exhausted"
    if spent >= limit * Decimal(repr(warn_at)):
        return "warning"
    return "ok"


def cost_ceiling(
    remaining: Decimal,
    seconds_left: float,
    instance_per_second: Decimal,
    min_instances: int,
    max_instances: int,
) -> int:
    """Instances the rest of the budget can keep busy until the month ends.

    Scale-up stops (the ceiling falls to the minimum) once what remains only
    covers the minimum instances for the rest of the month; never below the
    minimum, never above the policy's maximum.
    """
    if seconds_left <= 0 or instance_per_second <= 0:
        return max_instances
    per_instance = instance_per_second * Decimal(repr(seconds_left))
    affordable = int(max(remaining, Decimal(0)) // per_instance)
    return max(min_instances, min(max_instances, affordable))


