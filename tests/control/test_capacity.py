"""Staging and capacity tests on a real local network (agents, an edge process with
HAProxy, the controller).

The app serves at most ``CAP_N`` requests at once, each in one second
(tests/dashboards/app): its capacity per instance is known by construction. Its SLA asks
p95 within 1250 ms and 8 users per instance (one user more than the capacity puts the
mean response time at 1.125 s and some requests wait a whole extra second: the p95
crosses the limit; a quarter of a second of margin absorbs a busy machine's overhead);
its load test ramps 10 users from two regions, one more every four seconds (the
failing version's test stops at 6: its knee is at 4).

* A staged version answers only requests that carry a token of its owner
  (``X-Edgeshot-Stage``): not anonymous ones, not a wrong token, not another owner's,
  not through the global dispatcher, not after the edge has polled its agents many
  times (it never adopts the staged instance), and the app never sees the header.
* The capacity test finds the capacity of a version built for 8 users per instance
  within ±20 % and passes it; a version built for 4 is measured within ±20 % of 4 and
  fails; the deployment center refuses to roll the failing one out and rolls out the
  passing one; both results are kept per version and shown on the customer dashboard.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _netkit import as_dispatcher
from dashboards.netkit import AppDef, write_policy  # noqa: I001  (tests/dashboards)
from edgeshot.agent import auth
from edgeshot.control._localnet import LocalNetwork

pytestmark = [pytest.mark.haproxy, pytest.mark.timeout(900)]

LOAD_TEST = ('load_test=LoadTest(users=10, spawn_rate=0.25, duration_s=42, '
             'regions=("eu-central", "us-east"), paths=(WeightedPath(path="/"),)),')
CAP = AppDef("cap", "acme", "capco", idle_s=300, sla_ms=1250, users_per_instance=8,
             service_ms=1000, cap_n=8, cpu="1", extra=LOAD_TEST)


def http(url: str, *, token: str | None = None, method: str = "GET", body: dict | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait(what: str, fn, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Net:
    def __init__(self, net: LocalNetwork) -> None:
        self.net = net
        self.base = net.manifest.controller_url
        self.edge = net.manifest.edges["eu"]["public_url"]
        self.op = net.token("operator")
        self.owner = net.token("owner-acme")
        self.plan = net.plan().app("cap")

    def version(self, v: str, **env: str) -> dict:
        tiers = tuple(t.model_copy(update={"env": {**t.env, **env}}) for t in self.plan.tiers)
        return self.plan.model_copy(update={"version": v, "tiers": tiers}).model_dump(
            mode="json")

    def get(self, path: str = "/version", token: str | None = None,
            via: str | None = None) -> str:
        headers = {"Host": "cap.test", "X-Edgeshot-Region": "eu-central",
                   **as_dispatcher(self.net)}
        if token is not None:
            headers["X-Edgeshot-Stage"] = token
        status, text = http((via or self.edge) + path, headers=headers)
        assert status == 200, (status, text)
        return text.strip()

    def answer(self) -> str | None:
        """The public answer, or None while a rollout is under way (an activator's 502)."""
        status, text = http(self.edge + "/version", headers={"Host": "cap.test"})
        return text.strip() if status == 200 else None

    def stage(self, body: dict) -> tuple[int, dict | str]:
        status, text = http(f"{self.base}/v1/apps/cap/stage", token=self.owner, method="POST",
                            body=body, timeout=300)
        return status, (json.loads(text) if text.startswith("{") else text)

    def tests(self) -> list[dict]:
        status, text = http(f"{self.base}/v1/apps/cap/stage", token=self.owner)
        assert status == 200, text
        return json.loads(text)["capacity_tests"]

    def load_test(self) -> dict:
        from edgeshot.spec import load
        spec = load(Path(self.net.manifest.policy))
        return spec.application("cap").load_test.model_dump(mode="json")


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    d = tmp_path_factory.mktemp("capnet")
    net = LocalNetwork.create(write_policy(d, [CAP], edgepoints=(("eu", "eu-central"),),
                                           slots=6), d / "state", tick_s=0.5,
                              edge_options={"stable_window_s": 10.0, "tick_s": 0.25})
    try:
        net.start(timeout=90)
        n = Net(net)
        wait("cap serving", lambda: json.loads(http(f"{n.base}/v1/status", token=n.op)[1])
             ["apps"][0]["primary"] == "1.0", timeout=240)
        wait("the edge routes cap", lambda: http(
            n.edge + "/healthz", headers={"Host": "cap.test"})[0] == 200, timeout=60)
        yield n
    finally:
        net.stop()
        left = net.leftovers()
        net.remove()
        assert left == []


def test_a_staged_version_answers_only_its_owners_token(cap):
    n = cap
    status, res = n.stage({"plan": n.version("1.1", BODY="staged-1.1"), "run_test": False})
    assert status == 202, res
    (staged,) = [s for s in res["staged"] if s["state"] == "staged"]
    assert staged["version"] == "1.1" and staged["edgepoint"] == "eu"
    assert n.get(token=n.owner) == "staged-1.1"
    # anonymous, a wrong token, another owner's token, the operator's: the public version
    other = auth.issue_token(n.net.state_dir / "tokens" / "controller.toml", "owner-globex",
                             ["owner:globex"])
    for token in (None, "est1_" + "A" * 43, other, n.op, n.owner[:-1]):
        assert {n.get(token=token) for _ in range(5)} == {"ok"}, token
    # never through public routing: the global dispatcher sends no one there
    entry = n.net.manifest.entry_url
    assert {n.get(via=entry) for _ in range(10)} == {"ok"}
    # the edge polls its agents every few seconds and never adopts the staged instance
    time.sleep(12)
    assert {n.get() for _ in range(20)} == {"ok"}
    assert n.get(token=n.owner) == "staged-1.1"
    # the token never reaches the app (nor does any other header name it)
    seen = n.get("/headers", token=n.owner)
    assert "x-edgeshot-stage" not in seen and "x-edgeshot-region" in seen
    # no token, no staging API
    status, _ = http(f"{n.base}/v1/apps/cap/stage", method="POST", body={"version": "1.1"})
    assert status == 401
    status, _ = http(f"{n.base}/v1/apps/cap/stage", token=other, method="POST",
                     body={"version": "1.1"})
    assert status == 404
    # unstaged: the owner's token reaches the public version again, the instance is gone
    status, text = http(f"{n.base}/v1/apps/cap/stage", token=n.owner, method="DELETE")
    assert status == 200 and json.loads(text)["removed"] == ["1.1"]
    assert {n.get(token=n.owner) for _ in range(5)} == {"ok"}


def test_capacity_tests_measure_known_capacities_and_gate_the_rollout(cap):
    n = cap
    lt = n.load_test()
    # 2.0: 8 users per instance by construction
    status, res = n.stage({"plan": n.version("2.0", BODY="v2", CAP_N="8"), "load_test": lt})
    assert status == 202, res
    assert n.get(token=n.owner) == "v2"
    done = wait("2.0's capacity test", lambda: [t for t in n.tests()
                                               if t["version"] == "2.0"
                                               and t["state"] != "running"], timeout=180)
    t2 = done[-1]
    assert t2["state"] == "passed", json.dumps(t2["result"])
    assert 6.4 <= t2["result"]["users_per_instance"] <= 9.6, json.dumps(t2["result"])
    curve = t2["result"]["curve"]
    assert [p["users"] for p in curve] == sorted(p["users"] for p in curve)
    assert max(p["users"] for p in curve) == 10
    # 3.0: 4 users per instance by construction; staging it replaces 2.0 on the edge
    short = {**lt, "users": 6, "duration_s": 26}
    status, res = n.stage({"plan": n.version("3.0", BODY="v3", CAP_N="4"), "load_test": short})
    assert status == 202, res
    assert [s["version"] for s in res["staged"] if s["state"] == "staged"] == ["3.0"]
    done = wait("3.0's capacity test", lambda: [t for t in n.tests()
                                               if t["version"] == "3.0"
                                               and t["state"] != "running"], timeout=180)
    t3 = done[-1]
    assert t3["state"] == "failed", json.dumps(t3["result"])
    assert 3.2 <= t3["result"]["users_per_instance"] <= 4.8, json.dumps(t3["result"])
    assert any("needs 8" in r for r in t3["result"]["reasons"])
    # the deployment center refuses 3.0 (direct or canary) and rolls 2.0 out
    for body in ({"version": "3.0"}, {"version": "3.0", "canary": 10}):
        status, text = http(f"{n.base}/v1/apps/cap/deploy", token=n.owner, method="POST",
                            body=body)
        assert status == 409 and "failed its capacity test" in text, text
    st = json.loads(http(f"{n.base}/v1/status", token=n.op)[1])["apps"][0]
    assert st["primary"] == "1.0" and st["canary"] is None
    status, text = http(f"{n.base}/v1/apps/cap/deploy", token=n.owner, method="POST",
                        body={"version": "2.0"}, timeout=300)
    assert status == 202, text
    wait("2.0 serves the public", lambda: n.answer() == "v2", timeout=60)
    # a version never staged, of an app that declares a load test: refused too
    status, text = http(f"{n.base}/v1/apps/cap/deploy", token=n.owner, method="POST",
                        body={"plan": n.version("4.0")}, timeout=300)
    assert status == 409 and "stage it first" in text, text
    # results are kept per version and shown on the customer dashboard
    status, text = http(f"{n.base}/dash/api/customer", token=n.owner)
    assert status == 200
    (app,) = json.loads(text)["apps"]
    shown = {c["version"]: c for c in app["capacity"]}
    assert shown["2.0"]["state"] == "passed" and shown["3.0"]["state"] == "failed"
    assert shown["2.0"]["users_per_instance"] == t2["result"]["users_per_instance"]
    assert len(shown["3.0"]["curve"]) == len(t3["result"]["curve"])
