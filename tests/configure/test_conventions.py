"""Ansible conventions, without servers: ansible.cfg and .ansible-lint at the top of the
repository (plain `ansible-playbook` / `ansible-lint` behave as edgeshot's runs do), the
roles' argument specs (ansible-core enforces them), the roles as a collection that
`ansible-galaxy collection build` accepts, `edgeshot inventory` and `edgeshot configure`."""

from __future__ import annotations

import configparser
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeshot.cli import app
from edgeshot.configure import ANSIBLE_ENV, SSH_ARGS, inventory_from_plan
from edgeshot.plan import compile_plan
from edgeshot.spec import load

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
PLAYBOOKS = ROOT / "playbooks"
BIN = Path(sys.executable).parent
ROLES = ("criu", "haproxy", "edge_agent", "appshot", "controller")
ADDRS = {"north-1": "192.0.2.10", "north-2": "192.0.2.11", "controller": "192.0.2.20"}


def ansible(tool: str, *args: str, cwd: Path = ROOT, env: dict | None = None,
            timeout: int = 180) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**clean, "ANSIBLE_NOCOLOR": "1", **(env or {})})


@pytest.fixture(scope="module")
def plan():
    return compile_plan(load(HERE / "lab_policy.py"))


def test_ansible_cfg_says_what_edgeshot_runs_with():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "ansible.cfg")
    d, ssh = cfg["defaults"], cfg["ssh_connection"]
    assert d["roles_path"] == "playbooks/roles"
    assert d["inventory"] == "inventory/hosts.json"  # what `edgeshot inventory` writes
    assert d["interpreter_python"] == ANSIBLE_ENV["ANSIBLE_PYTHON_INTERPRETER"]
    assert d.getint("timeout") == int(ANSIBLE_ENV["ANSIBLE_TIMEOUT"])
    for key, env in (("retry_files_enabled", "ANSIBLE_RETRY_FILES_ENABLED"),
                     ("deprecation_warnings", "ANSIBLE_DEPRECATION_WARNINGS"),
                     ("system_warnings", "ANSIBLE_SYSTEM_WARNINGS")):
        assert d.getboolean(key) is (ANSIBLE_ENV[env] == "True"), key
    assert ssh.getboolean("pipelining") is (ANSIBLE_ENV["ANSIBLE_PIPELINING"] == "True")
    assert ssh["ssh_args"].startswith(" ".join(SSH_ARGS))
    assert "StrictHostKeyChecking=accept-new" in ssh["ssh_args"]
    # and Ansible itself reads it from the top of the repository
    dump = ansible("ansible-config", "dump", "--only-changed")
    assert dump.returncode == 0, dump.stderr
    assert f"DEFAULT_ROLES_PATH({ROOT / 'ansible.cfg'}) = ['{PLAYBOOKS / 'roles'}']" in dump.stdout
    assert f"DEFAULT_HOST_LIST({ROOT / 'ansible.cfg'}) = ['{ROOT / 'inventory' / 'hosts.json'}']" \
        in dump.stdout


def test_ansible_lint_config_at_the_top():
    cfg = yaml.safe_load((ROOT / ".ansible-lint").read_text())
    assert cfg["profile"] == "production" and cfg["offline"] is True
    assert "framework/" in cfg["exclude_paths"] and "examples/" in cfg["exclude_paths"]


@pytest.mark.parametrize("role", ROLES)
def test_every_role_declares_its_arguments(role):
    specs = yaml.safe_load((PLAYBOOKS / "roles" / role / "meta" / "argument_specs.yml")
                           .read_text())["argument_specs"]
    options = specs["main"]["options"]
    defaults = yaml.safe_load((PLAYBOOKS / "roles" / role / "defaults" / "main.yml").read_text())
    assert set(defaults) == set(options), set(defaults) ^ set(options)
    for name, spec in options.items():
        assert spec["description"] and spec["type"], name
        if "default" in spec:  # documentation says what the role really defaults to
            assert spec["default"] == defaults[name], name
        if "choices" in spec and not str(defaults[name]).startswith("{{"):
            assert defaults[name] in spec["choices"], name


@pytest.mark.parametrize("role, var, value, message", [
    ("criu", "criu_install", "floppy",
     "value of criu_install must be one of: binary, build, package, got: floppy"),
    ("haproxy", "haproxy_disable_packaged_service", "perhaps",
     "haproxy_disable_packaged_service"),
    ("appshot", "appshot_items", [{"url": "https://x"}],
     "missing required arguments: name found in appshot_items"),
])
def test_ansible_enforces_the_argument_specs(tmp_path, role, var, value, message):
    """A wrong value stops the role before its first task (nothing runs on the host)."""
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "validate", "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "the role", "ansible.builtin.include_role": {"name": role},
                   "vars": {var: value}}]}]))
    r = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", str(play))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Validating arguments against arg spec 'main'" in out
    assert message in " ".join(out.split())
    assert "ok=1 " in out and "changed=0" in out  # ok: the include itself


def test_the_roles_build_as_a_collection(tmp_path):
    galaxy = yaml.safe_load((PLAYBOOKS / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("edgeshot", "edge")
    r = ansible("ansible-galaxy", "collection", "build", str(PLAYBOOKS), "--output-path",
                str(tmp_path / "dist"))
    assert r.returncode == 0, r.stdout + r.stderr
    (tarball,) = (tmp_path / "dist").glob("edgeshot-edge-*.tar.gz")
    with tarfile.open(tarball) as t:
        names = set(t.getnames())
        manifest = json.load(t.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["version"] == galaxy["version"]
    for role in ROLES:
        assert f"roles/{role}/meta/argument_specs.yml" in names
        assert f"roles/{role}/tasks/main.yml" in names
    assert not any("__pycache__" in n for n in names)
    # installed, the roles are edgeshot.edge.<role>, documented by their argument specs
    r = ansible("ansible-galaxy", "collection", "install", str(tarball), "-p",
                str(tmp_path / "collections"))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = ansible("ansible-doc", "-t", "role", "--json", "edgeshot.edge.criu",
                  env={"ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections")})
    assert doc.returncode == 0, doc.stderr
    entry = json.loads(doc.stdout)["edgeshot.edge.criu"]["entry_points"]["main"]
    assert entry["options"]["criu_install"]["choices"] == ["binary", "build", "package"]


def test_edgeshot_inventory_writes_what_ansible_reads(tmp_path, plan):
    stack = tmp_path / "inventory.json"
    inv = inventory_from_plan(plan, ADDRS)  # south-1 has no address yet
    stack.write_text(json.dumps(inv.model_dump(mode="json")))
    hosts = tmp_path / "inventory" / "hosts.json"
    r = CliRunner().invoke(app, ["inventory", str(HERE / "lab_policy.py"), "-i", str(stack),
                                 "--out", str(hosts)])
    assert r.exit_code == 0, r.output
    assert "without an address: south-1" in " ".join(r.output.split())
    plan_file = hosts.with_name("plan.json")
    for f in (hosts, plan_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert json.loads(plan_file.read_text())["controller"]["address"] == "192.0.2.20"
    data = json.loads(hosts.read_text())
    assert data["all"]["vars"]["edgeshot_unprovisioned"] == {"south-1": "south"}
    assert data["all"]["vars"]["controller_plan"] == str(plan_file)
    listed = ansible("ansible-inventory", "-i", str(hosts), "--list")
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)
    assert groups["edgeshot_agents"]["hosts"] == ["north-1", "north-2"]
    assert groups["edgeshot_controller"]["hosts"] == ["controller"]
    assert groups["_meta"]["hostvars"]["north-1"]["edgeshot_server"]["edgepoint"] == "north"
    # a plain ansible-playbook from the top reads it (roles from ansible.cfg's roles_path)
    hosts_run = ansible("ansible-playbook", "-i", str(hosts), "--list-hosts",
                        "playbooks/site.yml")
    assert hosts_run.returncode == 0, hosts_run.stderr
    assert "north-1" in hosts_run.stdout and "controller" in hosts_run.stdout
    syntax = ansible("ansible-playbook", "-i", str(hosts), "--syntax-check", "playbooks/site.yml")
    assert syntax.returncode == 0, syntax.stderr


def test_edgeshot_inventory_errors(tmp_path, plan):
    runner = CliRunner()
    r = runner.invoke(app, ["inventory", str(HERE / "lab_policy.py"), "-i",
                            str(tmp_path / "nope.json")])
    assert r.exit_code == 1 and "nope.json: no such file" in " ".join(r.output.split())
    other = inventory_from_plan(plan, ADDRS).model_dump(mode="json") | {"network": "elsewhere"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    r = runner.invoke(app, ["inventory", str(HERE / "lab_policy.py"), "-i",
                            str(tmp_path / "other.json")])
    assert r.exit_code == 1
    assert "is network 'elsewhere', but" in " ".join(r.output.split())


@pytest.fixture
def secrets_file(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    f = tmp_path / "secrets.json"
    f.write_text(json.dumps({"edgeAgentToken": "a" * 40, "controllerAgentToken": "b" * 40,
                             "controllerEdgeToken": "c" * 40, "signingKey": key}))
    f.chmod(0o600)
    return f


def test_edgeshot_configure_passes_check_diff_and_limit(tmp_path, plan, secrets_file,
                                                        monkeypatch):
    """The command's side: what it hands the configuration run (the run itself, in check
    mode with diffs, is tests/configure/test_servers.py's, on real servers)."""
    import importlib

    from edgeshot.configure import ConfigureResult, HostResult
    up = importlib.import_module("edgeshot.cli.up")
    seen = {}

    def fake(plan_, inventory, secrets, public, key, known_hosts, home, *, wheelhouse=None,
             criu_binary=None, **options):
        seen.update(secrets=secrets, public=public, key=key, **options)
        hosts = {n: HostResult(name=n, status="changed" if n == "north-1" else "ok")
                 for n in options["limit"]}
        return ConfigureResult(network="lab", hosts=hosts, status="successful", rc=0,
                               duration_s=0.1, playbooks_hash="x")

    monkeypatch.setattr(up, "configure_servers", fake)
    stack = tmp_path / "inventory.json"
    stack.write_text(json.dumps(inventory_from_plan(plan, ADDRS).model_dump(mode="json")))
    r = CliRunner().invoke(app, ["configure", str(HERE / "lab_policy.py"), "-i", str(stack),
                                 "--secrets", str(secrets_file), "--check", "--diff",
                                 "--limit", "north", "--limit", "controller",
                                 "-e", '{"a": 1, "b": 2}', "-e", "b=3"])
    assert r.exit_code == 0, r.output
    assert seen["check"] is True and seen["diff"] is True
    assert seen["limit"] == ["north-1", "north-2", "controller"]
    assert seen["on_event"] is not None
    assert seen["extra_vars"] == {"a": 1, "b": "3"}
    assert seen["public"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "1 server(s) would change, 0 failed" in " ".join(r.output.split())
    assert "a" * 40 not in r.output


@pytest.mark.parametrize("args, mode, message", [
    ([], 0o600, "pass --secrets FILE"),
    (["--secrets", "{f}", "-e", "novalue"], 0o600, "-e novalue: expected @FILE"),
    (["--secrets", "{f}", "-e", "@/nonexistent.yml"], 0o600, "-e /nonexistent.yml: No such"),
    (["--secrets", "{f}", "-e", "[1]"], 0o600, "-e [1]: expected @FILE"),
    (["--secrets", "{f}"], 0o644, "readable by others"),
    (["--secrets", "{f}", "--limit", "east"], 0o600, "'east' is neither a server"),
    (["--vault-file", "{f}"], 0o600, "--vault-file needs --vault-password-file"),
])
def test_edgeshot_configure_errors(tmp_path, plan, secrets_file, args, mode, message):
    secrets_file.chmod(mode)
    stack = tmp_path / "inventory.json"
    stack.write_text(json.dumps(inventory_from_plan(plan, ADDRS).model_dump(mode="json")))
    r = CliRunner().invoke(app, ["configure", str(HERE / "lab_policy.py"), "-i", str(stack),
                                 *[a.format(f=secrets_file) for a in args]])
    assert r.exit_code == 1
    assert message in " ".join(r.output.split())


def test_diffs_are_printed_and_secrets_hidden(capsys):
    from edgeshot.cli.configure import print_diff
    print_diff({"event": "runner_on_ok", "event_data": {"host": "north-1", "task": "agent.toml",
               "res": {"changed": True, "diff": [{"before": "port = 1\n", "after": "port = 2\n",
                                                  "before_header": "/etc/edgeshot/agent.toml",
                                                  "after_header": "/etc/edgeshot/agent.toml"}]}}})
    print_diff({"event": "runner_on_ok", "event_data": {"host": "north-1", "task": "tokens",
               "res": {"changed": True, "censored": "the output has been hidden"}}})
    print_diff({"event": "runner_on_ok", "event_data": {"host": "north-1", "task": "same",
               "res": {"changed": False, "diff": {"before": "a", "after": "b"}}}})
    text = capsys.readouterr().out
    assert "--- north-1: agent.toml" in text and "-port = 1" in text and "+port = 2" in text
    assert "tokens" not in text and "same" not in text
