"""Remote control with Fabric against the configured throwaway servers: commands per
edgepoint (ThreadingGroup and SerialGroup), logs and following them, `edgeshot ssh/logs/
exec/push` through the CLI, and appshots pushed over SFTP and installed verified."""

from __future__ import annotations

import json
import threading
import time

import pytest

# The first test brings the lab up and configures it (minutes on a busy machine).
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def fleet(first_run, inventory, lab, lab_dir):
    from edgeshot.configure.remote import Fleet
    return Fleet(inventory, key_filename=lab.servers["north-1"].key,
                 known_hosts=lab_dir / "known_hosts")


@pytest.fixture(scope="module")
def cli(first_run, inventory, lab, lab_dir, tmp_path_factory):
    import typer
    from typer.testing import CliRunner

    from edgeshot.cli import remote
    app = typer.Typer()
    remote.register(app)
    inv_file = tmp_path_factory.mktemp("inv") / "inventory.json"
    inv_file.write_text(json.dumps(inventory.model_dump(mode="json")))
    env = {"EDGESHOT_INVENTORY": str(inv_file), "EDGESHOT_SSH_KEY": str(lab.servers["north-1"].key),
           "EDGESHOT_KNOWN_HOSTS": str(lab_dir / "known_hosts"), "COLUMNS": "200"}

    def invoke(*args: str):
        return CliRunner().invoke(app, list(args), env=env)
    return invoke


def test_exec_on_an_edgepoint_threaded_and_serial(fleet):
    res = fleet.run("hostname; systemctl is-active edgeshot-agent", "north")
    assert list(res) == ["north-1", "north-2"]
    for name, r in res.items():
        assert r.ok and r.stdout.split() == [name, "active"], r
    serial = fleet.run("hostname", "south,controller", parallel=False)
    assert {n: r.stdout.strip() for n, r in serial.items()} == {"south-1": "south-1",
                                                                "controller": "controller"}
    failed = fleet.run("test -e /etc/edgeshot/edge.toml", "north")
    assert failed["north-1"].ok and not failed["north-2"].ok and failed["north-2"].exited == 1


def test_an_unreachable_server_has_its_own_result(fleet, lab):
    lab.set_link(lab.servers["north-2"], up=False)
    try:
        t = time.monotonic()
        res = fleet.run("true", "north")
        took = time.monotonic() - t
    finally:
        lab.set_link(lab.servers["north-2"], up=True)
    assert res["north-1"].ok
    assert not res["north-2"].ok and res["north-2"].exited is None and res["north-2"].error
    assert took < 30


def test_logs_and_follow(fleet, lab):
    res = fleet.logs("north-1", units=["agent"], lines=20)
    lines = res["north-1"].stdout.splitlines()
    assert res["north-1"].ok and 0 < len(lines) <= 20
    assert all(" north-1 " in line for line in lines), lines  # journal lines of north-1
    got: list[tuple[str, str]] = []
    done = threading.Event()

    def follow():
        fleet.follow_logs("north", lambda h, line: got.append((h, line)), units=["agent"],
                          lines=0, duration=6)
        done.set()
    t = threading.Thread(target=follow)
    t.start()
    time.sleep(2)
    fleet.run("systemctl restart edgeshot-agent", "north-2")
    assert done.wait(30)
    t.join()
    assert any(h == "north-2" and "edgeshot agent" in line for h, line in got), got[-10:]
    assert fleet.run("systemctl is-active edgeshot-agent", "north-2")["north-2"].ok or \
        _wait_active(fleet, "north-2")


def _wait_active(fleet, name, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fleet.run("systemctl is-active edgeshot-agent", name)[name].ok:
            return True
        time.sleep(0.5)
    return False


def test_cli_ssh_exec_logs(cli):
    r = cli("ssh", "south-1", "cat", "/etc/hostname")
    assert r.exit_code == 0 and r.stdout.strip() == "south-1"
    r = cli("ssh", "south-1", "exit", "3")
    assert r.exit_code == 3
    r = cli("exec", "systemctl is-active edgeshot-edge", "--on", "south")
    assert r.exit_code == 0 and "south-1 active" in r.stdout
    r = cli("exec", "test -e /etc/edgeshot/edge.toml", "--on", "north", "--serial")
    assert r.exit_code == 1  # north-2 has no edge process
    r = cli("logs", "controller", "-n", "5", "--unit", "controller")
    assert r.exit_code == 0 and "controller" in r.stdout
    r = cli("logs", "south-1", "--follow", "--for", "2", "-n", "3")
    assert r.exit_code == 0 and "south-1" in r.stdout


def test_push_appshot_over_sftp(fleet, lab, tmp_path, stack_secrets, cli):
    from edgeshot.agent import _package
    from edgeshot.configure.remote import parse_install_output
    dest = tmp_path / "hello-2"
    with _package.staging(dest) as stage:
        (stage / "app.py").write_text("print('v2')\n")
        _package.build(stage, key=stack_secrets["_key"], app="hello", version="2", owner="lab",
                       vendor="lab", tiers=[{"name": "web", "command": "python3 app.py",
                                             "entry": True}], criu_version="4.2.1")
        _package.publish(stage, dest)
    tar = _package.pack(dest, tmp_path / "hello-2.tar.gz")
    res = fleet.push_appshot(tar, "hello-2", "north")
    for name in ("north-1", "north-2"):
        info = parse_install_output(res[name])
        assert res[name].ok and info["ok"] and info["changed"], res[name]
        assert (info["app"], info["version"]) == ("hello", "2")
    again = fleet.push_appshot(tar, "hello-2", "north-1")
    assert parse_install_output(again["north-1"])["changed"] is False
    # signed by a key no server trusts: refused, nothing reaches the store
    rogue_dir = tmp_path / "rogue"
    with _package.staging(rogue_dir) as stage:
        (stage / "app.py").write_text("evil\n")
        _package.build(stage, key=_package.generate_key(), app="hello", version="3",
                       owner="lab", vendor="lab",
                       tiers=[{"name": "web", "command": "true", "entry": True}],
                       criu_version="4.2.1")
        _package.publish(stage, rogue_dir)
    rogue = _package.pack(rogue_dir, tmp_path / "rogue.tar.gz")
    bad = fleet.push_appshot(rogue, "rogue", "south-1")["south-1"]
    assert not bad.ok and "untrusted" in parse_install_output(bad)["error"]
    assert lab.servers["south-1"].ssh("test -e /var/lib/edgeshot/appshots/rogue",
                                      check=False).returncode == 1
    # the CLI's push, and the agent lists what arrived
    r = cli("push", str(tar), "--name", "hello-2", "--on", "south")
    assert r.exit_code == 0 and "installed" in r.stdout
    listed = lab.servers["south-1"].ssh("ls /var/lib/edgeshot/appshots").stdout.split()
    assert sorted(listed) == ["hello-1", "hello-2"]
