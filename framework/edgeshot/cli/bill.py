"""`edgeshot bill`: what a month of usage costs, per owner, app and resource.

Register in the main CLI with::

    from edgeshot.cli.bill import bill
    app.command()(bill)

    edgeshot bill --month 2026-11 [--owner X] [--by owner|vendor|organisation]
                  [--format table|csv|json] [--state DIR]

It asks the running controller (`GET /v1/bill`, after pulling every source once
more so that the bill is up to date); when the local network is down it reads the
controller's store in the state directory instead (what was collected before it
stopped).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import StateOpt, err, fail, find_state

out = Console()


class By(StrEnum):
    owner = "owner"
    vendor = "vendor"
    organisation = "organisation"


class BillFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def bill(
    month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (default: this month, "
                                              "in the network's time zone)")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="only this owner's apps")] = None,
    by: Annotated[By, typer.Option("--by", help="owner: the bill; vendor: usage per "
                                   "application across owners (ISV report); organisation: "
                                   "transfer pricing between departments")] = By.owner,
    format: Annotated[BillFormat, typer.Option("--format", help="table, csv or json")] = BillFormat.table,  # noqa: A002
    state: StateOpt = None,
) -> None:
    """What a month of usage costs: per owner, app and resource (peak hours at the peak
    multiplier), with totals that add up to the cent."""
    from edgeshot.control import billing
    try:
        if month is not None:
            billing.month_bounds(month)
    except ValueError as exc:
        raise fail(str(exc)) from None
    data = fetch(find_state(state), month, owner, by.value)
    text = render(data, by.value, format.value)
    if format is BillFormat.table:
        out.print(text, highlight=False) if isinstance(text, str) else out.print(text)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


# ---------------------------------------------------------------------- reading


def fetch(state: Path, month: str | None, owner: str | None, by: str) -> dict[str, Any]:
    """The bill from the running controller, else from its store on disk."""
    from edgeshot.control._localnet import LocalNetwork, NetworkError
    try:
        net = LocalNetwork.open(state)
    except NetworkError as exc:
        raise fail(str(exc)) from None
    try:
        return asyncio.run(_from_api(net, month, owner, by))
    except _Unreachable:
        db = Path(net.manifest.state_dir) / "controller" / "controller.db"
        if db.exists():
            caught_up(net, db)
        return from_store(db, net.plan(), month, owner, by)


def caught_up(net: Any, db: Path) -> None:
    """The network is stopped: first take into the controller's store what the agents and
    edge processes recorded after its last pull (their own stores, on this machine)."""
    from edgeshot.control.metering import collect_stopped, pricing_of
    m = net.manifest
    res = collect_stopped(
        db, pricing_of(net.plan()),
        {s: (Path(a["state_dir"]) / "usage.db", a["edgepoint"]) for s, a in m.agents.items()},
        {ep: Path(e["state_dir"]) / "edge.db" for ep, e in m.edges.items()})
    n = sum(v for v in res.values() if isinstance(v, int))
    bad = {k: v for k, v in res.items() if not isinstance(v, int)}
    err.print(f"the controller is not running: billed from its store, after taking {n} "
              "record(s) from the sources' own stores"
              + (f" (not read: {bad})" if bad else ""), highlight=False, soft_wrap=True)


class _Unreachable(Exception):
    pass


async def _from_api(net: Any, month: str | None, owner: str | None, by: str) -> dict[str, Any]:
    from edgeshot.control.client import ControllerClient, ControllerError
    async with ControllerClient(net.manifest.controller_url, net.token("operator"),
                                timeout=60) as c:
        try:
            await c.collect_usage()
        except ControllerError as exc:
            if exc.status is None:
                raise _Unreachable from None
        try:
            return await c.bill(month=month, owner=owner, by=by)
        except ControllerError as exc:
            if exc.status is None:
                raise _Unreachable from None
            raise fail(str(exc)) from None


def from_store(db_path: Path, plan: Any, month: str | None, owner: str | None,
               by: str) -> dict[str, Any]:
    """The same answers as the API, read from a controller's store (the network is down)."""
    from edgeshot.control import _budgets, billing
    from edgeshot.control import _metering_store as ms
    from edgeshot.control.metering import organisations, pricing_of
    from edgeshot.control.store import Store

    if not db_path.exists():
        raise fail(f"no controller store at {db_path}: has the network run?")
    pricing = pricing_of(plan)
    zone = pricing.peak.timezone if pricing.peak else "UTC"
    month = month or _budgets.current_month(_budgets.now_utc(), zone)
    store = Store(db_path)
    try:
        if by == "vendor":
            usage = ms.month_usage(store.db, month, zone)
            lines = billing.by_vendor(billing.bill(usage, pricing, month), usage)
            return {"month": month, "currency": pricing.currency,
                    "vendors": [v.model_dump(mode="json") for v in lines]}
        the_bill = ms.bill_month(store.db, pricing, month, owner=owner)
        if by == "organisation":
            orgs = billing.by_organisation(the_bill, organisations(plan))
            return {"month": month, "currency": pricing.currency,
                    "organisations": [o.model_dump(mode="json") for o in orgs]}
        return the_bill.model_dump(mode="json")
    finally:
        store.close()


# ---------------------------------------------------------------------- rendering


def _q(x: Any) -> str:
    """A quantity, without trailing noise (6 decimals at most)."""
    d = Decimal(str(x)).quantize(Decimal("0.000001")).normalize()
    return f"{d:f}"


def render(data: dict[str, Any], by: str, fmt: str) -> Any:
    if fmt == "json":
        return json.dumps(data, indent=1)
    rows, cols, title, footer = _rows(data, by)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue()
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="right" if c in ("quantity", "peak", "price", "amount", "share",
                                                  "requests", "owners") else "left")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in r))
    if footer:
        t.add_section()
        t.add_row(*footer)
    return t


def _rows(data: dict[str, Any], by: str) -> tuple[list[list[Any]], list[str], str, list[str]]:
    cur = data.get("currency", "")
    if by == "vendor":
        cols = ["vendor", "app", "owners", "requests", "cpu (CPU-s)", "memory (GB-s)",
                "network (GB)", "disk io (GB)", "storage (GB-h)", "amount"]
        rows = [[v["vendor"], v["app"], v["owners"], v["requests"],
                 *(_q(v["quantities"].get(r, 0)) for r in ("cpu", "memory", "network", "disk_io",
                                                           "storage")),
                 v["amount"]] for v in data["vendors"]]
        total = sum((Decimal(v["amount"]) for v in data["vendors"]), Decimal(0))
        return rows, cols, f"usage per application, {data['month']} ({cur})", \
            ["total", "", "", "", "", "", "", "", "", str(total)]
    if by == "organisation":
        cols = ["organisation", "department (owner)", "amount", "share"]
        rows = []
        for o in data["organisations"]:
            for d in o["departments"]:
                rows.append([o["organisation"], d["owner"], d["amount"], d["share"]])
            rows.append([o["organisation"], "(organisation total)", o["total"], "1"])
        return rows, cols, f"transfer pricing, {data['month']} ({cur})", []
    cols = ["owner", "app", "resource", "quantity", "unit", "peak", "price", "amount"]
    rows = [[ln["owner"], ln["app"], ln["resource"], _q(ln["quantity"]), ln["unit"],
             _q(ln["peak_quantity"]), ln["unit_price"], ln["amount"]] for ln in data["lines"]]
    for t in data["owners"]:
        rows.append([t["key"], "(owner total)", "", "", "", "", "", t["amount"]])
    return rows, cols, f"bill {data['month']} ({cur})", \
        ["total", "", "", "", "", "", "", str(data["total"])]


def budget_text(budget: dict[str, Any] | None) -> str:
    """An app's budget as `edgeshot status` may show it (rich markup), from the `budget`
    field of each app in the controller's status: "41% of 100 EUR, forecast 95.20" or, at
    80 %/100 %, the warning in colour with the cost ceiling."""
    if not budget:
        return "—"
    used = float(budget["used"])
    text = (f"{used:.0%} of {budget['limit']} {budget['currency']}, forecast "
            f"{budget['forecast']}")
    if budget["state"] == "exhausted":
        return f"[bold red]spent: {text}; held at {budget['ceiling']} instance(s)[/]"
    if budget["state"] == "warning":
        return f"[yellow]warning: {text}[/]"
    return text
