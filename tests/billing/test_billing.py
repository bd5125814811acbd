"""Table-driven tests of the billing rules (edgeshot.control.billing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from edgeshot.control.billing import (
    Usage,
    bill,
    budget_state,
    by_organisation,
    by_vendor,
    cost_ceiling,
    forecast,
    month_bounds,
    peak_share,
)
from edgeshot.spec import PeakWindow, Pricing

BERLIN = PeakWindow(start="08:00", end="20:00", multiplier="2", timezone="Europe/Berlin")
NIGHT = PeakWindow(start="22:00", end="02:00", multiplier="3", timezone="UTC",
                   weekdays=("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
KOLKATA = PeakWindow(start="09:00", end="10:00", multiplier="2", timezone="Asia/Kolkata")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "window", "share"),
    [
        # Monday 2 Nov 2026, Berlin is UTC+1: 06:00-08:00 UTC is 07:00-09:00 local.
        (utc(2026, 11, 2, 6), utc(2026, 11, 2, 8), BERLIN, "0.5"),
        (utc(2026, 11, 2, 7), utc(2026, 11, 2, 19), BERLIN, "1"),
        (utc(2026, 11, 2, 19), utc(2026, 11, 2, 21), BERLIN, "0"),
        # Saturday: not a peak day.
        (utc(2026, 11, 7, 10), utc(2026, 11, 7, 11), BERLIN, "0"),
        # Summer time (UTC+2) after 29 March 2026: 06:00 UTC is 08:00 local.
        (utc(2026, 3, 30, 5), utc(2026, 3, 30, 7), BERLIN, "0.5"),
        # The DST change itself (Sunday 25 Oct 2026) is a Sunday: no peak.
        (utc(2026, 10, 25, 0), utc(2026, 10, 26, 0), BERLIN, "0"),
        # Friday 23 Oct (summer) vs Monday 26 Oct (winter): the window moves in UTC.
        (utc(2026, 10, 23, 6), utc(2026, 10, 23, 7), BERLIN, "1"),
        (utc(2026, 10, 26, 6), utc(2026, 10, 26, 7), BERLIN, "0"),
        # An overnight window spans midnight.
        (utc(2026, 11, 3, 23), utc(2026, 11, 4, 1), NIGHT, "1"),
        (utc(2026, 11, 4, 1), utc(2026, 11, 4, 3), NIGHT, "0.5"),
        # A half-hour time zone (UTC+5:30): 09:00 local is 03:30 UTC.
        (utc(2026, 11, 2, 3), utc(2026, 11, 2, 4), KOLKATA, "0.5"),
        (utc(2026, 11, 2, 3), utc(2026, 11, 2, 4), None, "0"),
    ],
)
def test_peak_share(start: datetime, end: datetime, window: PeakWindow | None, share: str) -> None:
    assert peak_share(start, end, window) == Decimal(share)


PRICING = Pricing(currency="EUR", cpu_second="0.001", memory_gb_second="0.0001", network_gb="0.05",
                  disk_io_gb="0.02", storage_gb_hour="0.01", peak=BERLIN)


def usage(owner: str, app: str, start: datetime, hours: int = 1, vendor: str = "v", **q: object) -> Usage:
    return Usage(owner=owner, vendor=vendor, app=app, start=start, end=start + timedelta(hours=hours), **q)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # Off-peak CPU: 1000 s x 0.001.
        ([usage("a", "x", utc(2026, 11, 7, 10), cpu_seconds=Decimal(1000))], {("a", "x", "cpu"): "1.00"}),
        # Peak CPU is doubled.
        ([usage("a", "x", utc(2026, 11, 2, 10), cpu_seconds=Decimal(1000))], {("a", "x", "cpu"): "2.00"}),
        # Half in the peak: 1000 x (0.5 + 0.5 x 2) x 0.001 = 1.50.
        ([usage("a", "x", utc(2026, 11, 2, 6), hours=2, cpu_seconds=Decimal(1000))], {("a", "x", "cpu"): "1.50"}),
        # Storage is never a peak resource.
        ([usage("a", "x", utc(2026, 11, 2, 10), storage_gb_hours=Decimal(100))], {("a", "x", "storage"): "1.00"}),
        # Network: in + out bytes, decimal GB.
        ([usage("a", "x", utc(2026, 11, 7, 10), net_in_bytes=10**9, net_out_bytes=3 * 10**9)],
         {("a", "x", "network"): "0.20"}),
        # Disk I/O: read + write.
        ([usage("a", "x", utc(2026, 11, 7, 10), disk_read_bytes=5 * 10**9, disk_write_bytes=5 * 10**9)],
         {("a", "x", "disk_io"): "0.20"}),
        # Rounding: half to even at the cent (0.125 -> 0.12, 0.135 -> 0.14).
        ([usage("a", "x", utc(2026, 11, 7, 10), cpu_seconds=Decimal(125))], {("a", "x", "cpu"): "0.12"}),
        ([usage("a", "x", utc(2026, 11, 7, 10), cpu_seconds=Decimal(135))], {("a", "x", "cpu"): "0.14"}),
        # Floats from meters are read as the decimal they print as.
        ([usage("a", "x", utc(2026, 11, 7, 10), cpu_seconds=0.1 + 0.2)], {("a", "x", "cpu"): "0.00"}),
        # Outside the month (Berlin's calendar): 31 Oct 23:30 UTC is already 1 Nov 00:30 local.
        ([usage("a", "x", utc(2026, 10, 31, 22), hours=2, cpu_seconds=Decimal(2000))],
         {("a", "x", "cpu"): "1.00"}),
        ([usage("a", "x", utc(2026, 12, 1, 0), cpu_seconds=Decimal(1000))], {}),
    ],
)
def test_bill_lines(records: list[Usage], expected: dict[tuple[str, str, str], str]) -> None:
    result = bill(records, PRICING, "2026-11")
    got = {(ln.owner, ln.app, ln.resource): str(ln.amount) for ln in result.lines}
    assert got == expected


def test_totals_add_up_exactly() -> None:
    records = [
        usage(f"owner{i % 3}", f"app{i % 5}", utc(2026, 11, 1 + i % 28, i % 24), vendor=f"v{i % 2}",
              cpu_seconds=Decimal(i * 7) / 3, memory_gb_seconds=Decimal(i) / 7, net_out_bytes=i * 12345,
              storage_gb_hours=Decimal(i) / 11)
        for i in range(400)
    ]
    result = bill(records, PRICING, "2026-11")
    for total in result.apps:
        owner, app = total.key.split("/")
        assert total.amount == sum(ln.amount for ln in result.lines if (ln.owner, ln.app) == (owner, app))
    for total in result.owners:
        assert total.amount == sum(t.amount for t in result.apps if t.key.startswith(total.key + "/"))
    assert result.total == sum(t.amount for t in result.owners)
    assert all(ln.amount == ln.amount.quantize(Decimal("0.01")) for ln in result.lines)
    # Filtering by owner gives that owner's lines, the same amounts.
    only = bill(records, PRICING, "2026-11", owner="owner1")
    assert only.total == next(t.amount for t in result.owners if t.key == "owner1")


def test_vendor_and_organisation_reports() -> None:
    records = [
        usage("shop-eu", "shop", utc(2026, 11, 7, 10), vendor="acme", cpu_seconds=Decimal(1000), requests=10),
        usage("shop-us", "shop", utc(2026, 11, 7, 11), vendor="acme", cpu_seconds=Decimal(3000), requests=30),
        usage("blog", "blog", utc(2026, 11, 7, 11), vendor="wp", cpu_seconds=Decimal(500), requests=5),
    ]
    result = bill(records, PRICING, "2026-11")
    vendors = {(v.vendor, v.app): v for v in by_vendor(result, records)}
    assert vendors[("acme", "shop")].owners == 2
    assert vendors[("acme", "shop")].requests == 40
    assert vendors[("acme", "shop")].amount == Decimal("4.00")
    orgs = {r.organisation: r for r in by_organisation(result, {"shop-eu": "acme", "shop-us": "acme"})}
    assert orgs["acme"].total == Decimal("4.00")
    assert {d.owner: d.share for d in orgs["acme"].departments} == {"shop-eu": Decimal("0.25"),
                                                                    "shop-us": Decimal("0.75")}
    assert orgs["blog"].total == Decimal("0.50")


@pytest.mark.parametrize(
    ("month", "zone", "start", "end"),
    [
        ("2026-11", "UTC", utc(2026, 11, 1), utc(2026, 12, 1)),
        ("2026-12", "UTC", utc(2026, 12, 1), utc(2027, 1, 1)),
        # October in Berlin holds the DST change: 31 days minus... one hour more (25 h day).
        ("2026-10", "Europe/Berlin", utc(2026, 9, 30, 22), utc(2026, 10, 31, 23)),
    ],
)
def test_month_bounds(month: str, zone: str, start: datetime, end: datetime) -> None:
    assert month_bounds(month, zone) == (start, end)


@pytest.mark.parametrize("bad", ["2026-13", "nov", "2026/11", ""])
def test_month_bounds_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_bounds(bad)


@pytest.mark.parametrize(
    ("spent", "limit", "state"),
    [("0", "100", "ok"), ("79.99", "100", "ok"), ("80", "100", "warning"),
     ("99.99", "100", "warning"), ("100", "100", "exhausted"), ("130", "100", "exhausted")],
)
def test_budget_state(spent: str, limit: str, state: str) -> None:
    assert budget_state(Decimal(spent), Decimal(limit), 0.8) == state


def test_forecast_is_linear_over_the_month() -> None:
    # 10 of 30 days gone, 10 EUR spent -> 30 EUR.
    assert forecast(Decimal(10), utc(2026, 11, 11), "2026-11") == Decimal(30)
    assert forecast(Decimal(10), utc(2026, 12, 5), "2026-11") == Decimal(10)


@pytest.mark.parametrize(
    ("remaining", "seconds_left", "per_second", "lo", "hi", "ceiling"),
    [
        ("100", 1000, "0.01", 0, 50, 10),  # 100 / (0.01 x 1000)
        ("100", 1000, "0.01", 0, 5, 5),  # never above the policy's max
        ("15", 1000, "0.01", 1, 50, 1),  # only the minimum is covered: scale-up stops
        ("0", 1000, "0.01", 2, 50, 2),  # exhausted: the minimum stays
        ("-5", 1000, "0.01", 0, 50, 0),
        ("100", 0, "0.01", 0, 7, 7),  # the month is over
    ],
)
def test_cost_ceiling(remaining: str, seconds_left: float, per_second: str, lo: int, hi: int,
                      ceiling: int) -> None:
    assert cost_ceiling(Decimal(remaining), seconds_left, Decimal(per_second), lo, hi) == ceiling
