"""A budget reached during a load test stops scale-up at the app's minimum and warns the
provider (status, events, API, metrics). Real agents and a real edge process (HAProxy);
the controller in this process, its budget clock set near the month's end so that a few
seconds of CPU are what remains of the month's budget."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgeshot.control import billing
from edgeshot.control._budgets import current_month, now_utc
from edgeshot.control.server import Controller, ControllerConfig, build_app
from edgeshot.edge.client import EdgeClient

from .netkit import Net, Traffic, write_policy

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.haproxy, pytest.mark.timeout(600)]

CPU_PRICE = Decimal(1)  # EUR per CPU-second: a busy hello instance (0.25 CPU) costs 0.25 EUR/s


@pytest.fixture
def net(tmp_path):
    n = Net(write_policy(tmp_path, edgepoints=(("eu", "eu-central"),),
                         pricing=f'cpu_second="{CPU_PRICE}", memory_gb_second="0", network_gb="0"',
                         budget="8 EUR", min_=0, max_=3, global_max=3, users_per_instance=1),
            tmp_path / "state")
    n.net.start(services=("agent", "edge"), timeout=90)
    yield n
    left = n.stop()
    assert n.net.leftovers() == [], left


async def placement(edge: EdgeClient) -> dict:
    load = await edge.load()
    p = next(p for p in load.placements if p.app == "hello")
    return {"ready": p.ready, "starting": p.starting, "limit": p.limit,
            "limited_by": p.limited_by, "desired": p.desired}


async def test_budget_reached_under_load_stops_scale_up_at_the_minimum_and_warns(net, tmp_path):
    base = ControllerConfig.load(net.state / "controller.toml")
    cfg = base.model_copy(update={"state_dir": tmp_path / "controller"})
    c = Controller(cfg)
    m = c.metering
    async with TestClient(TestServer(build_app(c))) as api:
        op = {"Authorization": f"Bearer {net.net.token('operator')}"}
        owner = {"Authorization": f"Bearer {net.net.token('owner-acme')}"}
        edge = EdgeClient(net.net.manifest.edges["eu"]["url"], net.net.token("operator"))
        addr = net.net.manifest.edges["eu"]["public_url"].removeprefix("http://")
        try:
            deadline = time.monotonic() + 180
            while not (c.store.app("hello") or {}).get("primary_version"):
                assert time.monotonic() < deadline, c.store.events(limit=50)
                await asyncio.sleep(0.2)
            # what is spent so far (capture, first restore) is counted; the month's end is
            # put where what remains pays for 3.5 busy instances: scale-up to 3 is allowed
            await m.collector.collect_now()
            real = now_utc()
            spent0 = sum((ln.amount for ln in m.bill(current_month(real)).lines), Decimal(0))
            limit = Decimal(8)
            assert spent0 < Decimal("0.5") * limit, spent0
            per = Decimal("0.25") * CPU_PRICE
            seconds_left = float((limit - spent0) / (per * Decimal("3.5")))
            _, m1 = billing.month_bounds(current_month(real))
            frozen = m1 - timedelta(seconds=seconds_left)
            m.clock = lambda: frozen  # the budget's clock stands still: only spending moves
            await m.update_budgets()
            b = m.budgets["hello"]
            assert (b.ceiling, b.state) == (3, "ok"), b
            seen: list[dict] = []
            with Traffic([addr], "hello.test", threads=4):
                # load: instances are added while the budget allows, then held at the minimum
                deadline = time.monotonic() + 240
                while m.budgets["hello"].state != "exhausted":
                    assert time.monotonic() < deadline, (m.budgets["hello"], seen[-3:])
                    await asyncio.sleep(0.5)
                    seen.append(await placement(edge))
                exhausted_at = len(seen)
                for _ in range(8):  # load goes on: no scale-up past the minimum
                    await asyncio.sleep(0.5)
                    seen.append(await placement(edge))
            b = m.budgets["hello"]
            print(f"spent before the load {spent0} EUR; {len(seen)} observations:", seen)
            assert b.ceiling == 1 and b.ceilings == {"hello/eu": 1}, b
            assert b.spent >= b.limit and b.remaining <= 0
            assert max(s["ready"] + s["starting"] for s in seen[:exhausted_at]) >= 2, seen
            tail = seen[exhausted_at + 4:]
            assert all(s["limit"] == 1 and s["limited_by"] == "cost_ceiling" for s in tail), seen
            assert all(s["ready"] + s["starting"] <= 1 for s in tail), seen
            # told: events (owner's token sees them), status, budgets API, metrics
            r = await api.get("/v1/events?limit=1000", headers=owner)
            kinds = [e["kind"] for e in (await r.json())["events"]]
            assert kinds.index("budget-warning") < kinds.index("budget-exhausted"), kinds
            r = await api.get("/v1/status", headers=owner)
            (app,) = (await r.json())["apps"]
            assert app["budget"]["state"] == "exhausted" and app["budget"]["ceiling"] == 1
            r = await api.get("/v1/budgets", headers=owner)
            (row,) = (await r.json())["budgets"]
            assert row["state"] == "exhausted" and Decimal(row["spent"]) >= Decimal(8)
            r = await api.get("/metrics", headers=op)
            text = await r.text()
            assert 'edgeshot_controller_cost_ceiling_instances{app="hello",edgepoint="eu",' \
                   'owner="acme"} 1.0' in text
            assert 'edgeshot_controller_budget_used_ratio{app="hello",owner="acme"}' in text
        finally:
            await edge.close()
            for agent in c.agents.values():
                for inst in await agent.list_instances():
                    await agent.stop_instance(inst.id)
