"""`edgeshot bill`: the command over a network that is down (it reads the controller's store),
in every format and view."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from edgeshot.cli.bill import bill
from edgeshot.control import _metering_store as ms
from edgeshot.control._localnet import LocalNetwork
from edgeshot.control.store import Store

from .netkit import write_policy


def rec(seq: int, owner: str, app: str, hour: int, cpu: float, out_bytes: int) -> SimpleNamespace:
    start = datetime(2026, 11, 3, hour, tzinfo=UTC)
    return SimpleNamespace(seq=seq, instance=f"{app}-1", app=app, version="1", owner=owner,
                           vendor="acme-isv", edgepoint="eu", start=start,
                           end=start.replace(minute=10), cpu_seconds=cpu, memory_gb_seconds=0.0,
                           disk_read_bytes=0, disk_write_bytes=0, storage_gb_hours=0.0,
                           net_in_bytes=0, net_out_bytes=out_bytes, requests=3)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    d = tmp_path_factory.mktemp("billcli")
    net = LocalNetwork.create(write_policy(d, pricing='cpu_second="0.01", '
                                           'memory_gb_second="0", network_gb="1"'), d / "state")
    store = Store(net.state_dir / "controller" / "controller.db")
    recs = [rec(1, "acme", "hello", 10, 100.0, 10**9), rec(2, "acme", "hello", 11, 50.5, 0),
            rec(3, "globex", "blog", 12, 25.0, 2 * 10**9)]
    with store.tx() as db:
        ms.ensure_source(db, "agent:eu:eu-1", "agent", "agent/eu-1")
        ms.ingest(db, "agent:eu:eu-1", 0, ms.rows_of(recs, "agent:eu:eu-1"), 3, 3,
                  ms.Splitter(None))
    store.close()
    return net.state_dir


def run(*args: str) -> str:
    app = typer.Typer()
    app.command()(bill)
    app.command("noop")(lambda: None)  # a group, so that `bill` is a subcommand
    res = CliRunner().invoke(app, ["bill", *args])
    assert res.exit_code == 0, res.output
    return res.stdout  # (the note that the network is down goes to stderr)


def test_json_bill_from_the_store_when_the_network_is_down(state):
    data = json.loads(run("--month", "2026-11", "--format", "json", "--state", str(state)))
    lines = {(ln["owner"], ln["app"], ln["resource"]): Decimal(ln["amount"])
             for ln in data["lines"]}
    assert lines == {("acme", "hello", "cpu"): Decimal("1.50"),
                     ("acme", "hello", "network"): Decimal("1.00"),
                     ("globex", "blog", "cpu"): Decimal("0.25"),
                     ("globex", "blog", "network"): Decimal("2.00")}
    assert Decimal(data["total"]) == Decimal("4.75")


def test_csv_owner_filter_and_table(state):
    rows = list(csv.reader(io.StringIO(run("--month", "2026-11", "--owner", "globex",
                                           "--format", "csv", "--state", str(state)))))
    assert rows[0][:3] == ["owner", "app", "resource"]
    assert {r[0] for r in rows[1:]} == {"globex"} and rows[-1][-1] == "2.25"
    table = run("--month", "2026-11", "--state", str(state))
    assert "bill 2026-11 (EUR)" in table and "4.75" in table


def test_vendor_and_organisation_views(state):
    v = json.loads(run("--month", "2026-11", "--by", "vendor", "--format", "json",
                       "--state", str(state)))
    assert {(x["app"], x["owners"], x["requests"]) for x in v["vendors"]} == {
        ("blog", 1, 3), ("hello", 1, 6)}
    o = json.loads(run("--month", "2026-11", "--by", "organisation", "--format", "json",
                       "--state", str(state)))
    assert {x["organisation"]: x["total"] for x in o["organisations"]} == {
        "acme": "2.50", "globex": "2.25"}


def test_a_bad_month_is_refused(state):
    app = typer.Typer()
    app.command()(bill)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["bill", "--month", "2026-13", "--state", str(state)])
    assert res.exit_code == 1 and "YYYY-MM" in res.output


@pytest.mark.parametrize(("budget", "want"), [
    (None, "—"),
    ({"used": 0.41, "limit": "100", "currency": "EUR", "forecast": "95.20", "state": "ok",
      "ceiling": 4}, "41% of 100 EUR, forecast 95.20"),
    ({"used": 0.85, "limit": "100", "currency": "EUR", "forecast": "130.00",
      "state": "warning", "ceiling": 2}, "[yellow]warning: 85% of 100 EUR"),
    ({"used": 1.02, "limit": "100", "currency": "EUR", "forecast": "140.00",
      "state": "exhausted", "ceiling": 1}, "held at 1 instance(s)"),
])
def test_budget_text_for_status(budget, want):
    from edgeshot.cli.bill import budget_text
    assert want in budget_text(budget)
