"""Edgepoints kept out of routing because a server of theirs was not configured: the file
site.yml's last play writes (merge, read, write), the controller role's Ansible module
that writes it, and the controller, which routes no user there and gives their share away.
No processes beyond the module's interpreter: the edges are in-memory fakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeshot.control import exclusions as X
from edgeshot.control._localnet import LocalNetwork
from edgeshot.control.server import ConfigError, Controller, ControllerConfig

from .netfix import FakeEdge, write_policy

MODULE = (Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "controller" / "library"
          / "edgeshot_exclusions.py")
NC, NA = X.NOT_CONFIGURED, X.NO_ADDRESS


def ex(**servers: tuple[str, str]) -> X.Exclusions:
    return X.Exclusions(servers={n: X.Excluded(edgepoint=ep, reason=why)
                                 for n, (ep, why) in servers.items()})


@pytest.mark.parametrize("previous, judged, configured, missing, expected", [
    # every server configured: nothing excluded
    (ex(), {"n1": "north", "s1": "south"}, ["n1", "s1"], [], ex()),
    # one failed or unreachable: only its entry
    (ex(), {"n1": "north", "s1": "south"}, ["n1"], [], ex(s1=("south", NC))),
    # no address yet: said so
    (ex(), {"n1": "north", "n2": "north"}, ["n1"], ["n2"], ex(n2=("north", NA))),
    # fixed by a later run: back in routing
    (ex(s1=("south", NC)), {"n1": "north", "s1": "south"}, ["n1", "s1"], [], ex()),
    # a run limited to some servers says nothing about the others
    (ex(n2=("north", NC)), {"s1": "south"}, [], [], ex(n2=("north", NC), s1=("south", NC))),
    (ex(n2=("north", NC), s1=("south", NC)), {"s1": "south"}, ["s1"], [], ex(n2=("north", NC))),
    # a server that got its address keeps being judged, with the new reason
    (ex(n2=("north", NA)), {"n2": "north"}, [], [], ex(n2=("north", NC))),
])
def test_merge(previous, judged, configured, missing, expected):
    assert X.merge(previous, judged, configured, missing) == expected


def test_edgepoints_say_which_servers_and_why():
    e = ex(n2=("north", NA), n1=("north", NC), s1=("south", NC))
    assert e.edgepoints() == {"north": f"n1: {NC}; n2: {NA}", "south": f"s1: {NC}"}
    assert ex().edgepoints() == {}


def test_read_write_and_errors_name_the_file_and_field(tmp_path):
    f = tmp_path / "excluded-servers.json"
    assert X.read(f) == X.Exclusions()  # no run has written it yet
    e = ex(s1=("south", NC))
    assert X.write(f, e) is True and X.write(f, e) is False  # unchanged: not rewritten
    assert X.read(f) == e
    assert json.loads(f.read_text())["servers"]["s1"]["edgepoint"] == "south"
    f.write_text("{nope")
    with pytest.raises(X.ExclusionsError, match=f"{f}: not JSON"):
        X.read(f)
    f.write_text(json.dumps({"format": 1, "servers": {"s1": {"reason": "x"}}}))
    with pytest.raises(X.ExclusionsError, match=rf"{f}: servers\.s1\.edgepoint: Field required"):
        X.read(f)
    f.write_text(json.dumps({"format": 2}))
    with pytest.raises(X.ExclusionsError, match=r"format: .*expected \{\"format\": 1"):
        X.read(f)


def test_watched_rereads_only_a_changed_file_and_keeps_the_last_good_one(tmp_path):
    f = tmp_path / "x.json"
    w = X.Watched(f)
    assert w.current == X.Exclusions() and w.refresh() is False
    X.write(f, ex(s1=("south", NC)))
    assert w.refresh() is True and w.current.edgepoints() == {"south": f"s1: {NC}"}
    assert w.refresh() is False
    f.write_text("garbage")  # a bad edit keeps south out of routing
    assert w.refresh() is False and "not JSON" in (w.error or "")
    assert w.current.edgepoints() == {"south": f"s1: {NC}"}
    X.write(f, ex())
    assert w.refresh() is True and w.current == X.Exclusions() and w.error is None
    assert X.Watched(None).refresh() is False


# -- the controller role's module -------------------------------------------------------------


def run_module(tmp_path: Path, **args) -> dict:
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(MODULE), str(argfile)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    return json.loads(proc.stdout)


def test_module_writes_merges_and_reports(tmp_path):
    f = tmp_path / "etc" / "excluded-servers.json"
    f.parent.mkdir()
    judged = {"n1": "north", "n2": "north", "s1": "south"}
    res = run_module(tmp_path, path=str(f), servers=judged, configured=["n1", "n2", "s1"])
    assert res["changed"] is True and res["excluded"] == {}  # the file exists from now on
    assert X.read(f) == X.Exclusions()
    res = run_module(tmp_path, path=str(f), servers=judged, configured=["n1", "n2", "s1"])
    assert res["changed"] is False
    res = run_module(tmp_path, path=str(f), servers={"s1": "south"}, configured=[])
    assert res["changed"] is True and res["excluded"] == {"south": f"s1: {NC}"}
    # check mode says what would change and changes nothing
    res = run_module(tmp_path, path=str(f), servers={"s1": "south"}, configured=["s1"],
                     _ansible_check_mode=True)
    assert res["changed"] is True and X.read(f).edgepoints() == {"south": f"s1: {NC}"}
    f.write_text("garbage")  # replaced by what the run says, with a warning
    res = run_module(tmp_path, path=str(f), servers={"s1": "south"}, configured=["s1"])
    assert res["changed"] is True and "not JSON" in json.dumps(res.get("warnings"))
    assert X.read(f) == X.Exclusions()


# -- the controller ---------------------------------------------------------------------------


@pytest.fixture
async def ctl(tmp_path):
    net = LocalNetwork.create(write_policy(tmp_path), tmp_path / "state")
    base = ControllerConfig.load(net.state_dir / "controller.toml")
    cfg = base.model_copy(update={
        "state_dir": tmp_path / "controller", "deploy_on_start": False,
        "excluded_file": tmp_path / "excluded-servers.json",
        "dispatcher": base.dispatcher.model_copy(update={"enabled": False})})
    edges = {"eu": FakeEdge("eu"), "us": FakeEdge("us")}
    c = Controller(cfg, edges=edges, agents={})
    yield c
    await c.stop()


async def test_an_excluded_edgepoint_is_not_routed_until_its_servers_are_configured(ctl):
    c = ctl
    path = c.config.excluded_file
    c.store.put_version("hello", "1.0", "{}", state="ready")  # as if deployed
    c.store.set_app("hello", primary_version="1.0")
    await c.deploy.push()
    await c.tick()
    assert c.table.chain("hello", "us-east")[0] == "us"
    X.write(path, ex(**{"us-1": ("us", NC)}))
    pushes = c.edges["us"].pushes
    await c.tick()
    sites = {s.name: s.healthy for s in c.routing_inputs()[0]}
    assert sites == {"eu": True, "us": False}  # its edge answers, yet no user goes there
    assert c.table.chain("hello", "us-east") == ("eu",)
    await c.deploy.push("hello")  # its share of the app's instances goes to the others
    assert {o.global_share for o in c.edges["us"].orders} == {0}
    assert {o.global_share for o in c.edges["eu"].orders} == {2}
    pushes = c.edges["us"].pushes
    st = c.deploy.status["us"]
    assert st.error == f"kept out of routing: us-1: {NC}"
    assert {e["name"]: e["error"] for e in c.status()["edgepoints"]}["us"] == st.error
    events = [(e["kind"], e["message"]) for e in c.store.events(limit=100)]
    assert ("edgepoint-down", f"us down: kept out of routing: us-1: {NC}") in events
    # a later run configured it: routed again, and its placements pushed at once
    X.write(path, ex())
    await c.tick()
    assert all(s.healthy for s in c.routing_inputs()[0])
    assert c.edges["us"].pushes == pushes + 1
    assert {o.global_share for o in c.edges["us"].orders} == {1}
    assert c.table.chain("hello", "us-east")[0] == "us"


def test_a_bad_exclusions_file_stops_the_controller_with_its_name(tmp_path):
    net = LocalNetwork.create(write_policy(tmp_path), tmp_path / "state")
    bad = tmp_path / "excluded-servers.json"
    bad.write_text('{"format": 1, "servers": {"us-1": {}}}')
    cfg = ControllerConfig.load(net.state_dir / "controller.toml").model_copy(
        update={"excluded_file": bad, "state_dir": tmp_path / "controller"})
    with pytest.raises(ConfigError, match=rf"{bad}: servers\.us-1\.edgepoint"):
        Controller(cfg, edges={}, agents={})
