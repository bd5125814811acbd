"""The controller and its deployment center against real agents (real processes, real
capture, real uploads) and in-memory edge processes whose figures the test sets.

Two edgepoints, eu and us, one server each; the hello app on both.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgeshot.agent.client import AgentClient, Unauthorized
from edgeshot.control._localnet import LocalNetwork
from edgeshot.control.server import Controller, ControllerConfig, build_app

from .netfix import FakeEdge, write_policy

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctlnet")
    n = LocalNetwork.create(write_policy(d), d / "state")
    n.start(services=("agent",))
    yield n
    n.stop()
    assert n.leftovers() == []
    n.remove()


@pytest.fixture
async def ctl(net, tmp_path):
    base = ControllerConfig.load(net.state_dir / "controller.toml")
    cfg = base.model_copy(update={
        "state_dir": tmp_path / "controller", "deploy_on_start": False,
        "dispatcher": base.dispatcher.model_copy(update={"enabled": False}),
        "canary": base.canary.model_copy(update={"interval_s": 0.01, "threshold": 2,
                                                 "iterations": 2, "min_requests": 10})})
    edges = {"eu": FakeEdge("eu"), "us": FakeEdge("us")}
    c = Controller(cfg, edges=edges)
    c.fake = edges  # type: ignore[attr-defined]
    yield c
    # leave no instance behind on the shared agents
    for agent in c.agents.values():
        for inst in await agent.list_instances():
            await agent.stop_instance(inst.id)
    await c.stop()


def version(c: Controller, v: str):
    app = c.plan.app("hello")
    return app.model_copy(update={"version": v})


async def checks(c: Controller, n: int) -> list:
    out = []
    for _ in range(n):
        await c.poll_edges()
        await asyncio.sleep(0.02)
        out += await c.deploy.check_canaries()
    return out


async def test_capture_once_distribute_everywhere_then_canary_rollback_promote_and_rollback(ctl):
    c, eu, us = ctl, ctl.fake["eu"], ctl.fake["us"]
    # -- first version: captured on one agent, uploaded and verified on the other
    await c.deploy.start_app(c.plan.app("hello"))
    dist = c.store.distributions("hello", "1.0")
    assert {d["server"]: d["state"] for d in dist} == {"eu-1": "verified", "us-1": "verified"}
    for agent in c.agents.values():
        names = {a.name for a in await agent.list_appshots()}
        assert "hello-1.0" in names
    assert eu.weights("hello") == us.weights("hello") == {"1.0": 100}
    (order,) = eu.orders
    assert order.id == "hello/eu" and order.versions[0].appshot == "hello-1.0"
    assert order.versions[0].plan["version"] == "1.0"
    captures = [e for e in c.store.events(limit=1000) if e["kind"] == "captured"]
    assert len(captures) == 1

    # -- a broken canary: 10% of the traffic, errors above the SLA -> rolled back by itself
    dep = await c.deploy.deploy(version(c, "1.1"), canary=10)
    assert eu.weights("hello") == {"1.0": 90, "1.1": 10}
    assert us.weights("hello") == {"1.0": 90, "1.1": 10}
    assert [a.value for _, a in await checks(c, 1)] == ["wait"]  # no traffic yet: no verdict
    seen = []
    for _ in range(2):
        for e in (eu, us):
            e.add("hello", "1.0", 200, 0)
            e.add("hello", "1.1", 20, 10)  # 50% errors
        seen += [a.value for _, a in await checks(c, 1)]
    assert seen == ["hold", "rollback"]
    assert c.store.deployment(dep)["phase"] == "rolled_back"
    assert eu.weights("hello") == {"1.0": 100}
    app = c.store.app("hello")
    assert app["primary_version"] == "1.0" and app["canary_version"] is None
    assert any(e["kind"] == "canary-rolled-back" and "error rate" in e["message"]
               for e in c.store.events(limit=1000))

    # -- a good canary is promoted after two good checks
    dep = await c.deploy.deploy(version(c, "1.2"), canary=20)
    assert eu.weights("hello") == {"1.0": 80, "1.2": 20}
    seen = []
    for _ in range(2):
        for e in (eu, us):
            e.add("hello", "1.0", 200, 0)
            e.add("hello", "1.2", 50, 0, latency_ms=30)
        seen += [a.value for _, a in await checks(c, 1)]
    assert seen == ["hold", "promote"]
    assert eu.weights("hello") == {"1.2": 100}
    app = c.store.app("hello")
    assert (app["primary_version"], app["previous_version"]) == ("1.2", "1.0")

    # -- rollback: back to 1.0 with no capture and no upload, in well under 5 s
    uploads_before = [d for d in c.store.distributions("hello")]
    res = await c.deploy.rollback("hello")
    assert (res["from"], res["to"]) == ("1.2", "1.0")
    assert res["seconds"] < 5 and set(res["edges"].values()) == {"ok"}
    assert eu.weights("hello") == us.weights("hello") == {"1.0": 100}
    assert c.store.distributions("hello") == uploads_before
    captures = [e for e in c.store.events(limit=1000) if e["kind"] == "captured"]
    assert len(captures) == 3  # 1.0, 1.1, 1.2: never again for the rollback
    # and rolling back a rollback goes forward again
    res = await c.deploy.rollback("hello")
    assert (res["from"], res["to"]) == ("1.0", "1.2")


async def test_a_failed_edgepoint_gives_its_share_away_and_is_routed_around(ctl):
    c, eu, us = ctl, ctl.fake["eu"], ctl.fake["us"]
    await c.deploy.start_app(c.plan.app("hello"))
    await c.tick()
    assert c.table.chain("hello", "us-east")[0] == "us"
    assert {o.global_share for o in eu.orders} == {2}  # global max 3 over two: 2 + 1
    assert {o.global_share for o in us.orders} == {1}
    us.healthy = False
    await c.tick()
    assert c.table.chain("hello", "us-east") == ("eu",)
    await c.deploy.push("hello")
    assert {o.global_share for o in eu.orders} == {2}  # its max is 2: the rest is unused
    events = [e["kind"] for e in c.store.events(limit=1000)]
    assert "edgepoint-down" in events
    us.healthy = True
    pushes = us.pushes
    await c.tick()
    assert us.pushes == pushes + 1  # back: it gets its placements again at once
    assert c.table.chain("hello", "us-east")[0] == "us"
    # an edgepoint at capacity for the app sheds new users
    eu.at_capacity = {"hello/eu"}
    await c.tick()
    assert c.table.chain("hello", "eu-central")[0] == "us"


async def test_the_api_is_the_conduit_with_scoped_tokens(ctl, net):
    c = ctl
    await c.deploy.start_app(c.plan.app("hello"))
    async with TestClient(TestServer(build_app(c))) as http:
        async def call(method, path, token=None, **kw):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = await http.request(method, path, headers=headers, **kw)
            return r.status, (await r.json() if r.content_type == "application/json"
                              else await r.text())

        op, owner = net.token("operator"), net.token("owner-acme")
        vendor = net.token("vendor-acme-isv")
        assert (await call("GET", "/v1/health"))[0] == 200
        assert (await call("GET", "/v1/status"))[0] == 401
        assert (await call("GET", "/v1/status", "est1_" + "x" * 43))[0] == 401
        st, body = await call("GET", "/v1/status", op)
        assert st == 200 and [a["name"] for a in body["apps"]] == ["hello"]
        assert body["apps"][0]["primary"] == "1.0" and body["agents"]
        st, body = await call("GET", "/v1/status", owner)
        assert [a["name"] for a in body["apps"]] == ["hello"] and body["agents"] == []
        st, body = await call("GET", "/v1/status", vendor)
        assert [a["name"] for a in body["apps"]] == ["hello"]
        assert (await call("GET", "/v1/routing", owner))[0] == 403
        # another owner sees nothing and can touch nothing
        from edgeshot.agent import auth
        other = auth.issue_token(net.state_dir / "tokens" / "controller.toml", "owner-zed",
                                 ["owner:zed"])
        c.tokens.reload()
        st, body = await call("GET", "/v1/status", other)
        assert st == 200 and body["apps"] == []
        assert (await call("POST", "/v1/apps/hello/rollback", other))[0] == 404
        assert (await call("GET", "/v1/apps/hello/deployments", other))[0] == 404
        st, body = await call("GET", "/v1/events", other)
        assert st == 200 and body["events"] == []
        # deploy through the API: the owner's own app, a known version or a plan
        plan = version(c, "2.0").model_dump(mode="json")
        st, body = await call("POST", "/v1/apps/hello/deploy", other, json={"plan": plan})
        assert st in (403, 404)
        st, body = await call("POST", "/v1/apps/hello/deploy", owner,
                              json={"plan": plan, "canary": 10})
        assert st == 202 and body["deployment"]["kind"] == "canary"
        assert c.fake["eu"].weights("hello") == {"1.0": 90, "2.0": 10}
        st, body = await call("POST", "/v1/apps/hello/deploy", owner,
                              json={"plan": plan, "source_dir": "/etc"})
        assert st == 403  # only operators name source directories
        st, body = await call("POST", "/v1/apps/hello/deploy", owner, json={"canary": 500})
        assert st == 422
        st, body = await call("POST", "/v1/apps/hello/deploy", owner, data=b"{nope")
        assert st == 400
        st, body = await call("POST", "/v1/apps/hello/rollback", owner)
        assert st == 200 and body["to"] == "1.0"
        st, body = await call("GET", "/metrics", op)
        assert st == 200 and 'edgeshot_controller_version_weight_ratio{app="hello"' in body


async def test_agents_answer_and_are_polled(ctl):
    await ctl.poll_agents()
    assert all(a["healthy"] for a in ctl.store.agents())
    async with AgentClient(ctl.store.agents()[0]["url"], "est1_wrong") as bad:
        with pytest.raises(Unauthorized):
            await bad.health()


async def test_a_changed_plan_replaces_what_the_old_one_left_on_the_agents(ctl):
    """A version that never became the primary, whose policy changed: `up` (register_plan,
    start_app) removes the appshots captured from the old plan and captures anew; nothing
    made from the old plan is taken for the new one."""
    c = ctl
    app = c.plan.app("hello")
    await c.deploy.start_app(app)  # captured (or found) on the agents: hello-1.0
    before = {s: (await a.get_appshot("hello-1.0")).created for s, a in c.agents.items()}
    c.store.set_app("hello", primary_version=None)  # as if it never started serving
    assert c.deploy.register_plan()["hello"].action == "resume"  # same plan: kept
    tier = app.tiers[0].model_copy(update={"env": {"GREETING": "changed"}})
    changed = app.model_copy(update={"tiers": (tier,)})
    c.deploy.plan = c.plan.model_copy(update={"apps": (changed,)})
    decision = c.deploy.register_plan()["hello"]
    assert (decision.action, decision.replace_plan) == ("recapture", True)
    assert c.store.version("hello", "1.0")["state"] == "stale"
    seen = c.store.last_event_id()
    await c.deploy.start_app(changed)
    captured = [e for e in c.store.events(after=seen) if e["kind"] == "captured"]
    assert len(captured) == 1, captured
    for s, a in c.agents.items():
        assert (await a.get_appshot("hello-1.0")).created > before[s]
    row = c.store.version("hello", "1.0")
    assert row["state"] == "distributed" and '"GREETING":"changed"' in row["plan"]
    assert c.fake["eu"].orders[-1].versions[0].plan["tiers"][0]["env"] == {"GREETING": "changed"}


async def test_a_deploy_an_edge_refuses_fails_and_the_old_version_keeps_serving(ctl):
    from edgeshot.control._deploy import DeployError
    c, eu, us = ctl, ctl.fake["eu"], ctl.fake["us"]
    await c.deploy.start_app(c.plan.app("hello"))
    eu.refuse.add("hello 1.5")
    with pytest.raises(DeployError, match="edgepoint.s. eu refused its placements; the "
                       "previous version keeps serving"):
        await c.deploy.deploy(version(c, "1.5"), canary=None)
    assert c.store.app("hello")["primary_version"] == "1.0"
    assert eu.weights("hello") == us.weights("hello") == {"1.0": 100}
    (dep,) = [d for d in c.store.deployments("hello") if d["to_version"] == "1.5"]
    assert dep["phase"] == "rolled_back"
    assert dep["reasons"][-1]["reasons"] == ["refused by edgepoint(s) eu"]
    kinds = [e["kind"] for e in c.store.events(limit=1000, app="hello")]
    assert "deploy-refused" in kinds
