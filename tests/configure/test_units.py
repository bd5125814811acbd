"""edgeshot.configure without servers: inventory, Ansible inventory, event folding,
results, the Pulumi provider's methods, the appshot installer, Fabric helpers, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeshot.configure import (
    ConfigureResult,
    HostResult,
    Inventory,
    InventoryError,
    ansible_inventory,
    inventory_from_plan,
)
from edgeshot.configure._inventory import group_name, plan_with_addresses
from edgeshot.configure._run import _fold_stats, _Tracker, pack_wheelhouse
from edgeshot.plan import compile_plan
from edgeshot.spec import load

HERE = Path(__file__).parent
ADDRS = {"north-1": "192.0.2.10", "north-2": "192.0.2.11", "south-1": "192.0.2.12",
         "controller": "192.0.2.20"}


@pytest.fixture(scope="module")
def plan():
    return compile_plan(load(HERE / "lab_policy.py"))


@pytest.fixture(scope="module")
def inv(plan):
    return inventory_from_plan(plan, ADDRS)


# -- inventory ------------------------------------------------------------------------------


def test_inventory_from_plan_has_the_stack_output_shape(plan, inv):
    assert inv.network == "lab"
    assert set(inv.servers) == {"north-1", "north-2", "south-1"}
    assert inv.controller is not None and inv.controller.address == "192.0.2.20"
    n1 = inv.servers["north-1"]
    assert (n1.address, n1.edgepoint, n1.role, n1.roles) == (
        "192.0.2.10", "north", "edge", ("agent", "edge"))
    assert n1.private_address is None  # one network: the given address is the only one
    assert inv.edgepoints["north"].servers == ("north-1", "north-2")
    # the same document parses back, from a mapping, JSON text or a file
    raw = inv.model_dump(mode="json")
    assert Inventory.parse(raw) == inv
    assert Inventory.parse(json.dumps(raw)) == inv


def test_inventory_parse_errors_name_the_problem(tmp_path):
    with pytest.raises(InventoryError, match="no such file"):
        Inventory.parse(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InventoryError, match="not JSON"):
        Inventory.parse(bad)
    with pytest.raises(InventoryError, match="format 7"):
        Inventory.parse({"format": 7, "network": "x"})
    with pytest.raises(InventoryError, match=r"servers\.a\.slots"):
        Inventory.parse({"network": "x", "servers": {"a": {"slots": "many"}}})


def test_targets_select_servers_edgepoints_controller(inv):
    names = lambda t: [h.name for h in inv.select(t)]  # noqa: E731
    assert names(None) == ["north-1", "north-2", "south-1", "controller"]
    assert names("north") == ["north-1", "north-2"]
    assert names("south-1") == ["south-1"]
    assert names("controller") == ["controller"]
    assert names("south,controller") == ["south-1", "controller"]
    with pytest.raises(InventoryError, match="neither a server, an edgepoint"):
        inv.select("east")


def test_ansible_inventory_groups_and_host_vars(inv):
    data = ansible_inventory(inv, inv.hosts(), all_vars={"x": 1},
                             host_vars={"north-2": {"appshot_items": [{"name": "a"}]}})
    groups = data["all"]["children"]
    assert set(groups["edgeshot_agents"]["hosts"]) == {"north-1", "north-2", "south-1"}
    assert set(groups["edgeshot_edges"]["hosts"]) == {"north-1", "south-1"}
    assert set(groups["edgeshot_controller"]["hosts"]) == {"controller"}
    assert set(groups[group_name("north")]["hosts"]) == {"north-1", "north-2"}
    n2 = groups["edgeshot_agents"]["hosts"]["north-2"]
    assert n2["ansible_host"] == "192.0.2.11" and n2["ansible_user"] == "root"
    assert n2["edgeshot_server"]["slot_subnet"] and n2["appshot_items"] == [{"name": "a"}]
    ep = n2["edgeshot_edgepoint"]
    assert ep["edge_host"] == "north-1" and ep["edge_port"] == 7702
    assert [s["agent_url"] for s in ep["servers"]] == ["http://192.0.2.10:7701",
                                                       "http://192.0.2.11:7701"]
    assert data["all"]["vars"]["x"] == 1
    assert {e["name"] for e in data["all"]["vars"]["edgeshot_edgepoints"]} == {"north", "south"}
    assert group_name("eu-central.1") == "edgepoint_eu_central_1"
    # a server the cloud has not created yet is in no agent list and not configured
    partial = inventory_from_plan(inv_plan_of(inv), {"north-1": "192.0.2.10"})
    d = ansible_inventory(partial, [h for h in partial.hosts() if h.address])
    hosts = d["all"]["children"]["edgeshot_agents"]["hosts"]
    assert list(hosts) == ["north-1"]
    assert [s["name"] for s in hosts["north-1"]["edgeshot_edgepoint"]["servers"]] == ["north-1"]


def inv_plan_of(inv):
    return compile_plan(load(HERE / "lab_policy.py"))


def test_plan_with_addresses_fills_what_the_cloud_assigned(plan, inv):
    assert all(s.address is None for s in plan.servers)
    filled = plan_with_addresses(plan, inv)
    assert {s.name: s.address for s in filled.servers} == {
        k: v for k, v in ADDRS.items() if k != "controller"}
    assert filled.controller.address == "192.0.2.20"
    assert filled.placements == plan.placements


# -- results --------------------------------------------------------------------------------


def _results(inv):
    return {h.name: HostResult(name=h.name, address=h.address, edgepoint=h.edgepoint,
                               roles=h.roles) for h in inv.hosts()}


def test_events_fold_into_per_host_results(inv):
    results = _results(inv)
    seen = []
    tr = _Tracker(results, on_event=seen.append)
    ev = [
        {"event": "runner_on_ok", "event_data": {"host": "north-1", "task": "criu",
         "res": {"ansible_facts": {"criu_report": {"usable": True}, "other": 1}}}},
        {"event": "runner_on_failed", "event_data": {"host": "north-2", "task": "Install",
         "res": {"msg": "E: broken\nlast line"}}},
        {"event": "runner_on_failed", "event_data": {"host": "north-2", "task": "ignored",
         "ignore_errors": True, "res": {"msg": "x"}}},
        {"event": "runner_on_unreachable", "event_data": {"host": "south-1", "task": "t",
         "res": {"msg": "ssh: connect to host 192.0.2.12 port 22: No route to host"}}},
        {"event": "runner_on_failed", "event_data": {"host": "controller", "task": "secret",
         "res": {"censored": "the output has been hidden due to the fact that 'no_log: true'"
                             " was specified for this result"}}},
        {"event": "playbook_on_stats", "event_data": {
            "ok": {"north-1": 30, "north-2": 10, "controller": 3},
            "changed": {"north-1": 12}, "failures": {"north-2": 1, "controller": 1},
            "dark": {"south-1": 1}, "skipped": {}}},
    ]
    for e in ev:
        assert tr(e) is True
    _fold_stats(results, tr.stats, inv.hosts())
    assert len(seen) == len(ev)
    r = ConfigureResult(network="lab", hosts=results, status="failed", rc=2, duration_s=1,
                        playbooks_hash="h")
    assert results["north-1"].status == "changed" and results["north-1"].changed == 12
    assert results["north-1"].reports == {"criu": {"usable": True}}
    assert results["north-2"].status == "failed"
    assert results["north-2"].errors == ["Install: last line"]
    assert results["south-1"].status == "unreachable" and "No route" in results["south-1"].errors[0]
    assert "no_log" in results["controller"].errors[0]
    assert r.failed_hosts == ["north-2", "south-1", "controller"]
    assert r.excluded_edgepoints == ["north", "south"]
    assert not r.controller_ok and not r.ok
    assert json.loads(json.dumps(r.summary()))["hosts"]["north-1"]["changed"] == 12


def test_no_stats_means_failed_not_ok(inv):
    results = _results(inv)
    _fold_stats(results, {}, inv.hosts())
    assert {r.status for r in results.values()} == {"failed"}


def test_wheelhouse_tarball_is_deterministic(tmp_path):
    wheels = tmp_path / "w"
    wheels.mkdir()
    (wheels / "a-1-py3-none-any.whl").write_bytes(b"a")
    (wheels / "b-1-py3-none-any.whl").write_bytes(b"b")
    (tmp_path / "o1").mkdir()
    (tmp_path / "o2").mkdir()
    t1, id1 = pack_wheelhouse(wheels, tmp_path / "o1")
    t2, id2 = pack_wheelhouse(wheels, tmp_path / "o2")
    assert id1 == id2 and t1.read_bytes() == t2.read_bytes()
    (wheels / "b-1-py3-none-any.whl").write_bytes(b"b2")
    assert pack_wheelhouse(wheels, tmp_path / "o2")[1] != id1


# -- the Pulumi dynamic provider ------------------------------------------------------------


class _Fake:
    """Stands in for `configure`: records its arguments, returns a prepared result."""

    def __init__(self, statuses):
        self.calls = []
        self.statuses = statuses

    def __call__(self, **kw):
        self.calls.append(kw)
        inv = kw["inventory"]
        hosts = {h.name: HostResult(name=h.name, edgepoint=h.edgepoint, roles=h.roles,
                                    status=self.statuses.get(h.name, "ok"),
                                    changed=1 if self.statuses.get(h.name) == "changed" else 0)
                 for h in inv.hosts()}
        return ConfigureResult(network=inv.network, hosts=hosts, status="successful", rc=0,
                               duration_s=0.1, playbooks_hash="h")


def _props(plan, inv, **over):
    from edgeshot.configure import playbooks_hash
    return {"playbooks_hash": playbooks_hash(), "inventory": inv.model_dump(mode="json"),
            "plan": plan.to_json(), "secrets": {"edgeAgentToken": "t" * 20},
            "signing_public_key": None, "options": {"ssh_key": "/k", "forks": 5,
                                                    "progress": False}, **over}


def test_provider_create_update_run_the_configuration(monkeypatch, plan, inv):
    from edgeshot.configure import resource
    fake = _Fake({"north-1": "changed"})
    monkeypatch.setattr(resource, "_configure", fake)
    p = resource.ConfigurationProvider()
    props = _props(plan, inv)
    assert p.check({}, props).failures == []
    created = p.create(props)
    assert created.id == "lab-configuration"
    kw = fake.calls[0]
    assert kw["ssh_key"] == "/k" and kw["forks"] == 5 and kw["progress"] is False
    assert kw["secrets"] == {"edgeAgentToken": "t" * 20}
    assert kw["plan"].network == "lab" and kw["inventory"] == inv
    outs = created.outs
    assert outs["changed"] == 1 and outs["failed_hosts"] == [] and outs["excluded_edgepoints"] == []
    assert outs["playbooks_hash"] == props["playbooks_hash"]
    # nothing changed: no update; the playbooks or the inventory changed: update
    assert p.diff(created.id, outs, props).changes is False
    assert p.diff(created.id, outs, {**props, "playbooks_hash": "other"}).changes is True
    moved = json.loads(json.dumps(props["inventory"]))
    moved["servers"]["north-2"]["address"] = "192.0.2.99"
    assert p.diff(created.id, outs, {**props, "inventory": moved}).changes is True
    assert p.diff(created.id, outs, {**props, "secrets": {"edgeAgentToken": "u" * 20}}).changes
    assert p.update(created.id, outs, props).outs["changed"] == 1
    assert len(fake.calls) == 2
    assert p.delete(created.id, outs) is None


def test_provider_partial_failure_is_reported_and_retried(monkeypatch, plan, inv):
    from edgeshot.configure import resource
    monkeypatch.setattr(resource, "_configure", _Fake({"south-1": "unreachable"}))
    p = resource.ConfigurationProvider()
    props = _props(plan, inv)
    outs = p.create(props).outs
    assert outs["failed_hosts"] == ["south-1"] and outs["excluded_edgepoints"] == ["south"]
    assert p.diff("x", outs, props).changes is True  # the next `pulumi up` tries again


def test_provider_fails_when_nothing_usable(monkeypatch, plan, inv):
    from edgeshot.configure import resource
    p = resource.ConfigurationProvider()
    monkeypatch.setattr(resource, "_configure", _Fake({"controller": "failed"}))
    with pytest.raises(resource.ConfigurationFailed, match="controller: failed"):
        p.create(_props(plan, inv))
    monkeypatch.setattr(resource, "_configure",
                        _Fake(dict.fromkeys(ADDRS, "unreachable")))
    with pytest.raises(resource.ConfigurationFailed):
        p.create(_props(plan, inv))


def test_provider_check_reports_bad_inputs(plan, inv):
    from edgeshot.configure import resource
    p = resource.ConfigurationProvider()
    res = p.check({}, _props(plan, inv, inventory={"format": 9}, playbooks_hash="",
                             options={"sshkey": "/k"}))
    assert {f.property for f in res.failures} == {"inventory", "playbooks_hash", "options"}


def test_configuration_resource_inputs_under_mocks(plan, inv):
    import pulumi

    from edgeshot.configure import playbooks_hash

    class Mocks(pulumi.runtime.Mocks):
        def __init__(self):
            self.resources = []

        def new_resource(self, args):
            self.resources.append(args)
            return f"{args.name}-id", args.inputs

        def call(self, args):
            return {}

    import asyncio
    loop = asyncio.new_event_loop()  # pulumi's test helper runs on the current loop
    asyncio.set_event_loop(loop)
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    try:
        from edgeshot.configure.resource import Configuration

        @pulumi.runtime.test
        def check():
            c = Configuration("configuration", inventory=inv.model_dump(mode="json"), plan=plan,
                              secrets={"edgeAgentToken": "secret-token-value"},
                              ssh_key="/k", forks=7)

            def verify(args):
                hosts, _ = args
                (r,) = [r for r in mocks.resources if r.name == "configuration"]
                assert r.typ == "pulumi-python:dynamic/edgeshot:Configuration"
                assert r.inputs["playbooks_hash"] == playbooks_hash()
                assert r.inputs["inventory"]["network"] == "lab"
                assert r.inputs["options"]["forks"] == 7
                assert r.inputs["options"]["ssh_key"] == "/k"
                assert "__provider" in r.inputs
            return pulumi.Output.all(c.hosts, c.urn).apply(verify)

        check()
    finally:
        pulumi.runtime.settings.reset_options()
        asyncio.set_event_loop(None)
        loop.close()


# -- the appshot installer (runs on servers) ------------------------------------------------


def _appshot(tmp_path, key, name="hello-1"):
    from edgeshot.agent import _package
    dest = tmp_path / "src" / name
    with _package.staging(dest) as stage:
        (stage / "f").write_text("data")
        _package.build(stage, key=key, app="hello", version="1", owner="o", vendor="v",
                       tiers=[{"name": "web", "command": "true", "entry": True}],
                       criu_version="4.2.1")
        _package.publish(stage, dest)
    return _package.pack(dest, tmp_path / f"{name}.tar.gz")


def test_appshot_install_is_verified_and_idempotent(tmp_path):
    from edgeshot.agent import _package
    from edgeshot.configure import appshot_install as I
    key = _package.generate_key()
    state = tmp_path / "state"
    (state / "trusted.d").mkdir(parents=True)
    _package.save_public_key(key, state / "trusted.d" / "dc.pub")
    tar = _appshot(tmp_path, key)
    first = I.install(tar, "hello-1", state)
    assert first.changed and first.summary()["app"] == "hello"
    assert (state / "appshots" / "hello-1" / "manifest.json").is_file()
    assert not I.install(tar, "hello-1", state).changed
    # a damaged copy in the store is replaced from the tarball
    (state / "appshots" / "hello-1" / "f").chmod(0o600)
    (state / "appshots" / "hello-1" / "f").write_text("evil")
    assert I.install(tar, "hello-1", state).changed
    assert (state / "appshots" / "hello-1" / "f").read_text() == "data"
    # an appshot signed by an untrusted key never reaches the store
    other = _appshot(tmp_path / "o", _package.generate_key(), "rogue")
    with pytest.raises(I.InstallError, match="untrusted"):
        I.install(other, "rogue", state)
    assert not (state / "appshots" / "rogue").exists()
    with pytest.raises(I.InstallError, match="invalid appshot name"):
        I.install(tar, "../x", state)
    assert I.main([str(tar), "hello-1", "--state-dir", str(state)]) == 0


# -- Fabric helpers and the CLI -------------------------------------------------------------


def test_journal_command_and_line_writer():
    from edgeshot.configure.remote import _journal_cmd, _LineWriter
    cmd = _journal_cmd(["agent"], 5, "10 min ago", follow=True)
    assert cmd == ("journalctl --no-pager -o short-iso -n 5 -u edgeshot-agent.service "
                   "--since '10 min ago' -f")
    assert "-u edgeshot-controller.service" in _journal_cmd([], 1, None, follow=False)
    with pytest.raises(ValueError, match="unknown unit"):
        _journal_cmd(["nginx"], 1, None, follow=False)
    got = []
    w = _LineWriter("h", lambda h, line: got.append((h, line)))
    w.write("a\r\nb")
    w.write("c\nd")
    w.flush()
    assert got == [("h", "a"), ("h", "bc"), ("h", "d")]


def test_cli_reports_bad_inventory_and_target(tmp_path, inv):
    import typer
    from typer.testing import CliRunner

    from edgeshot.cli import remote
    app = typer.Typer()
    remote.register(app)
    runner = CliRunner()
    # an error line reads the same whatever the path's length or the terminal's width
    for missing in (tmp_path / "no.json", tmp_path / ("d" * 150) / "no.json"):
        res = runner.invoke(app, ["exec", "true", "--on", "north", "-i", str(missing)])
        assert res.exit_code == 1 and f"{missing}: no such file" in res.output, res.output
    f = tmp_path / "inv.json"
    f.write_text(json.dumps(inv.model_dump(mode="json")))
    res = runner.invoke(app, ["logs", "east", "-i", str(f)])
    assert res.exit_code == 1 and "neither a server, an edgepoint" in res.output
    res = runner.invoke(app, ["ssh", "nowhere", "-i", str(f)])
    assert res.exit_code == 1 and "no server 'nowhere'" in res.output
    assert {c.name for c in app.registered_commands} == {"ssh", "logs", "exec", "push"}
