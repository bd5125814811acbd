"""A real local network: agents, edge processes with their HAProxy, the controller and the
global dispatcher, real pods restored from appshots (CRIU as root), real HTTP.

Three edgepoints: eu (Frankfurt, 2 slots), us (Ashburn), ap (Singapore); the probe app
(tests/control/apps/probe) on all of them, one user per instance, at most 4 per edgepoint.
The tests run in order on one network; the last one takes it down.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from _netkit import running
from edgeshot.control._localnet import LocalNetwork
from edgeshot.control.client import ControllerClient

from .netfix import write_policy

pytestmark = [pytest.mark.haproxy, pytest.mark.root, pytest.mark.timeout(900)]

EDGE_OPTIONS = {"stable_window_s": 6.0, "panic_window_s": 2.0, "scale_down_delay_s": 2.0,
                "tick_s": 0.25}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from edgeshot.control._config import CanarySection
    d = tmp_path_factory.mktemp("net")
    policy = write_policy(d, app="probe", edgepoints=(("eu", "eu-central", 2),
                                                      ("us", "us-east"), ("ap", "ap-southeast")),
                          users_per_instance=1, max_per_edgepoint=4)
    n = LocalNetwork.create(policy, d / "state", tick_s=0.5, edge_options=EDGE_OPTIONS,
                            canary=CanarySection(interval_s=1.5, threshold=2, iterations=2,
                                                 min_requests=10, max_error_rate=0.05))
    with running(n):
        yield n



async def get(session: aiohttp.ClientSession, net: LocalNetwork, region: str, path: str = "/",
              cookie_ep: str | None = None) -> tuple[int, str, str, str]:
    headers = {"Host": "probe.test", "X-Edgeshot-Region": region}
    if cookie_ep:
        headers["Cookie"] = f"edgeshot_ep={cookie_ep}"
    async with session.get(net.manifest.entry_url + path, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=30)) as r:
        body = await r.text()
        return (r.status, r.headers.get("X-Edgeshot-Edgepoint", "-"),
                r.headers.get("X-Probe-Version", "-"), body)


def fresh() -> aiohttp.ClientSession:
    """A client that keeps no cookies: every request is a new user."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def test_users_from_two_regions_land_on_their_nearest_edgepoints(net):
    async with fresh() as s:
        for region, ep in (("eu-central", "eu"), ("us-east", "us"), ("eu-west", "eu"),
                           ("us-west", "us"), ("ap-southeast", "ap")):
            status, served, version, body = await get(s, net, region)
            assert (status, served, version) == (200, ep, "1.0"), (region, body)


async def test_an_edgepoint_at_capacity_sheds_new_users_to_the_next(net):
    stop = asyncio.Event()
    served_eu: list[str] = []

    async def busy_user() -> None:  # keeps one request in flight at eu, on and on
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                status, ep, _, _ = await get(s, net, "eu-central", "/slow", cookie_ep="eu")
                served_eu.append(ep)

    users = [asyncio.create_task(busy_user()) for _ in range(6)]
    try:
        async with ControllerClient(net.manifest.controller_url, net.token()) as c:
            deadline = time.monotonic() + 60
            at_capacity = False
            while time.monotonic() < deadline and not at_capacity:
                st = await c.status()
                eu = next(e for e in st["edgepoints"] if e["name"] == "eu")
                at_capacity = "probe/eu" in (eu.get("capacity") or {}).get("at_capacity", [])
                await asyncio.sleep(0.3)
            assert at_capacity, "eu never reported the probe at capacity"
            routing = await c.routing()
            deadline = time.monotonic() + 10
            while routing["probe"]["eu-central"][0] == "eu" and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                routing = await c.routing()
            assert routing["probe"]["eu-central"][0] != "eu"
        async with fresh() as s:
            status, ep, _, _ = await get(s, net, "eu-central")
            assert status == 200 and ep in ("us", "ap")  # a new user goes elsewhere...
            status, ep, _, _ = await get(s, net, "eu-central", cookie_ep="eu")
            assert status == 200 and ep == "eu"  # ...a user of eu stays
    finally:
        stop.set()
        await asyncio.gather(*users)
    assert set(served_eu) == {"eu"}


async def _traffic_until(net: LocalNetwork, done, timeout: float, regions=("eu-central", "us-east",
                                                                           "ap-southeast")):
    """New users from the regions until done() is true; returns the answers."""
    answers: list[tuple[int, str, str]] = []
    deadline = time.monotonic() + timeout
    async with fresh() as s:
        while time.monotonic() < deadline:
            batch = await asyncio.gather(*(get(s, net, r) for r in regions for _ in range(3)))
            answers += [(st, ep, v) for st, ep, v, _ in batch]
            if await done():
                return answers
            await asyncio.sleep(0.05)
    raise AssertionError(f"not done after {timeout} s; last answers {answers[-6:]}")


def version_plan(net: LocalNetwork, version: str, **env: str) -> dict:
    app = net.plan().app("probe")
    tiers = tuple(t.model_copy(update={"env": {**t.env, "APP_VERSION": version, **env}})
                  for t in app.tiers)
    return app.model_copy(update={"version": version, "tiers": tiers}).model_dump(mode="json")


async def test_a_broken_canary_rolls_back_by_itself_and_a_good_one_is_promoted(net):
    async with ControllerClient(net.manifest.controller_url, net.token()) as c:
        dep = await c.deploy("probe", plan=version_plan(net, "1.1", FAIL_RATE="0.6"), canary=30)
        assert dep["phase"] == "progressing" and dep["weight"] == 30

        async def finished() -> bool:
            return (await c.deployment(dep["id"]))["phase"] != "progressing"

        answers = await _traffic_until(net, finished, 120)
        final = await c.deployment(dep["id"])
        assert final["phase"] == "rolled_back", final
        assert any("error rate" in r for h in final["reasons"] for r in h["reasons"])
        assert {v for _, _, v in answers} <= {"1.0", "1.1", "-"}
        assert (await c.status())["apps"][0]["canary"] is None

        dep = await c.deploy("probe", plan=version_plan(net, "1.2"), canary=30)
        answers = await _traffic_until(net, lambda: finished_dep(c, dep["id"]), 120)
        final = await c.deployment(dep["id"])
        assert final["phase"] == "promoted", final
        assert any(v == "1.2" for _, _, v in answers)
        st = (await c.status())["apps"][0]
        assert (st["primary"], st["previous"], st["canary"]) == ("1.2", "1.0", None)
        # all new users now get 1.2
        async with fresh() as s:
            got = await asyncio.gather(*(get(s, net, "us-east") for _ in range(10)))
        assert {v for _, _, v, _ in got} == {"1.2"}


async def finished_dep(c: ControllerClient, dep_id: int) -> bool:
    return (await c.deployment(dep_id))["phase"] != "progressing"


async def test_rollback_moves_all_traffic_to_the_old_version_without_capture_or_upload(net):
    async with ControllerClient(net.manifest.controller_url, net.token()) as c:
        captures = [e for e in await c.events(limit=1000) if e["kind"] == "captured"]
        distributed = [e for e in await c.events(limit=1000) if e["kind"] == "distributed"]
        t0 = time.monotonic()
        res = await c.rollback("probe")
        assert (res["from"], res["to"]) == ("1.2", "1.0")
        streak = 0
        async with fresh() as s:
            while streak < 30:
                got = await asyncio.gather(*(get(s, net, r) for r in ("eu-central", "us-east",
                                                                      "ap-southeast")))
                streak = streak + 3 if {v for _, _, v, _ in got} == {"1.0"} else 0
                assert time.monotonic() - t0 < 60
        took = time.monotonic() - t0
        after = await c.events(limit=1000)
        assert [e for e in after if e["kind"] == "captured"] == captures
        assert [e for e in after if e["kind"] == "distributed"] == distributed
        print(f"rollback: command to all traffic on 1.0 in {took:.2f} s")


async def test_killing_an_edgepoint_under_traffic_loses_no_idempotent_request(net):
    results: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def user() -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                try:
                    status, ep, _, _ = await get(s, net, "us-east")
                    results.append((status, ep))
                except aiohttp.ClientError as exc:
                    results.append((0, repr(exc)))

    tasks = [asyncio.create_task(user()) for _ in range(6)]
    await asyncio.sleep(2.0)
    before = len(results)
    edge = next(p for p in net.manifest.processes if p.name == "edge us")
    haproxy_pid = int((Path(net.manifest.edges["us"]["state_dir"]) / "run" / "haproxy.pid")
                      .read_text().split()[0])
    for pid in (edge.pid, haproxy_pid):  # the edgepoint dies: edge process and data path
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(4.0)
    stop.set()
    await asyncio.gather(*tasks)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    assert "us" in {ep for _, ep in results[:before]}  # (us sheds to eu when it is full)
    assert {ep for _, ep in results[-20:]} <= {"eu", "ap"}
    async with ControllerClient(net.manifest.controller_url, net.token()) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = await c.status()
            if not next(e for e in st["edgepoints"] if e["name"] == "us")["healthy"]:
                break
            await asyncio.sleep(0.3)
        routing = await c.routing()
        assert "us" not in routing["probe"]["us-east"]


def test_zz_down_leaves_nothing_behind(net):
    cleaned = net.stop()
    assert net.leftovers() == []
    # what had to be removed after the processes stopped (the killed edgepoint's pods)
    print("cleaned after stop:", cleaned)
