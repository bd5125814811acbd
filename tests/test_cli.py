"""The `edgeshot` command: validate, plan, --out/--diff exit codes, errors without tracebacks.

Most cases run in-process through typer's CliRunner (fast); a few run the installed console
script as a real subprocess, all started at once, to prove the entry point itself (exit codes,
no traceback from `main()`, the same bytes whatever the interpreter's hash seed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeshot import __version__
from edgeshot.cli import app
from edgeshot.plan import compile_plan, read_plan
from edgeshot.spec import load

ROOT = Path(__file__).resolve().parent.parent
EDGESHOT = Path(sys.executable).with_name("edgeshot")
SHOP_LOCAL = ROOT / "examples/shop/policy_local.py"
SHOP_HETZNER = ROOT / "examples/shop/policy_hetzner.py"
HELLO = ROOT / "examples/hello/policy.py"

BROKEN = '''\
from edgeshot.spec import (SLA, Application, Budget, Controller, Distribution, EdgeNetwork,
                           Edgepoint, Local, Owner, Pricing, Routing, Source, Tier)

network = EdgeNetwork(
    name="Bad_Name",
    provider=Local(),
    edgepoints=[Edgepoint(name="ep1", region="eu-central", location="local", server_type="local")],
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
)
web = Tier(name="web", command="python3 app.py", ports=8001)
dist = Distribution(min=3, max=2)
app = Application(
    name="hello", version="1", owner=Owner(id="me"), routing=Routing(path_prefix="/"),
    source=Source(path="."), tiers=[web], distribution=dist,
    sla=SLA(max_response_ms=100, users_per_instance=10), budget=Budget(monthly="5 EUR"),
)
'''
BROKEN_PROBLEMS = [  # (line, text): every one must be printed
    (4, "network.name = 'Bad_Name': must be a DNS label"),
    (11, "tiers[0].ports = 8001: unknown field; allowed: command, entry"),
    (12, "distribution: min (3) is more than max (2)"),
]

HELLO_POLICY = '''\
from edgeshot.spec import (SLA, Application, Budget, Controller, Distribution, EdgeNetwork,
                           Edgepoint, Local, Owner, Pricing, Routing, Source, Tier)

network = EdgeNetwork(
    name="hello-net", provider=Local(),
    edgepoints=[Edgepoint(name="here", region="eu-central", location="local",
                          server_type="local"){more_edgepoints}],
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
)
hello = Application(
    name="hello", version="{version}", owner=Owner(id="me"), routing=Routing(path_prefix="/"),
    source=Source(path="."), tiers=[Tier(name="web", command="python3 app.py")],
    distribution=Distribution(min=0, max=2), sla=SLA(max_response_ms=100, users_per_instance=10),
    budget=Budget(monthly="50 EUR"),
)
'''
US = ', Edgepoint(name="there", region="us-east", location="local", server_type="local")'


def hello_policy(directory: Path, name: str, version: str = "1", more_edgepoints: str = "") -> Path:
    path = directory / name
    path.write_text(HELLO_POLICY.format(version=version, more_edgepoints=more_edgepoints))
    return path


def run(*args: str | Path):
    """Invoke the CLI in-process; an exception other than an exit is a failure."""
    # Wide enough that rich tables neither wrap nor shorten what the tests look for.
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


# --- real processes, all started at once -------------------------------------------------


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """name -> CompletedProcess-like (returncode, stdout, stderr) of the real console script."""
    assert EDGESHOT.exists(), f"console script missing: {EDGESHOT}"
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "broken.py").write_text(BROKEN)
    (tmp / "garbage.json").write_text("this is not json\n")
    # A hash seed other than this process's: the plan must not depend on set or dict order.
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    commands = {
        "version": (["--version"], {}),
        "broken": (["validate", "broken.py"], {}),
        "garbage": (["plan", SHOP_HETZNER, "--diff", "garbage.json"], {}),
        "json": (["plan", SHOP_HETZNER, "--format", "json"], {"PYTHONHASHSEED": seed}),
    }
    started = {
        name: subprocess.Popen([str(EDGESHOT), *map(str, args)], cwd=tmp, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "COLUMNS": "200", **env})
        for name, (args, env) in commands.items()
    }
    done = {}
    try:
        for name, proc in started.items():
            out, err = proc.communicate(timeout=60)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def test_real_version(processes):
    p = processes["version"]
    assert (p.returncode, p.stdout, p.stderr) == (0, f"edgeshot {__version__}\n", "")


def test_real_validate_broken_file(processes):
    p = processes["broken"]
    assert p.returncode == 1
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("broken.py: 3 problems\n")
    for line, text in BROKEN_PROBLEMS:
        assert any(ln.strip().startswith(f"broken.py:{line}: ") and text in ln
                   for ln in p.stderr.splitlines()), (line, text, p.stderr)


def test_real_diff_against_garbage(processes):
    p = processes["garbage"]
    assert p.returncode == 1
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("error: garbage.json: not an edgeshot plan (Invalid JSON")


def test_real_plan_json_is_the_same_whatever_the_hash_seed(processes):
    p = processes["json"]
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout == compile_plan(load(SHOP_HETZNER)).to_json()  # compiled here, another seed


# --- version and validate ----------------------------------------------------------------


def test_version():
    r = run("--version")
    assert (r.exit_code, r.stdout) == (0, f"edgeshot {__version__}\n")


def test_no_arguments_shows_help():
    r = CliRunner().invoke(app, [])
    assert "validate" in r.output and "plan" in r.output


@pytest.mark.parametrize(("path", "summary"), [
    (SHOP_LOCAL, "network local (local), 3 edgepoint(s), 1 app(s)"),
    (SHOP_HETZNER, "network acme-edge (hetzner), 3 edgepoint(s), 1 app(s)"),
    (HELLO, "network hello-net (local), 1 edgepoint(s), 1 app(s)"),
])
def test_validate_examples(path, summary):
    r = run("validate", path)
    assert r.exit_code == 0, r.output
    assert summary in r.stdout and "✓" in r.stdout
    assert r.stderr == ""


def test_validate_broken_file_prints_every_problem(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    r = run("validate", path)
    assert r.exit_code == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].endswith("broken.py: 3 problems")
    assert len(lines) == 1 + len(BROKEN_PROBLEMS)
    for (line, text), printed in zip(BROKEN_PROBLEMS, lines[1:], strict=True):
        assert f"broken.py:{line}: " in printed and text in printed


@pytest.mark.parametrize(("content", "message"), [
    ("x = 1/0\n", "the policy file raised ZeroDivisionError: division by zero"),
    ("def broken(:\n", "syntax error"),
    ("import sys\nsys.exit(3)\n", "the policy file raised SystemExit"),
    ("x = 1\n", "declares no EdgeNetwork"),
])
def test_validate_files_that_are_not_policies(tmp_path, content, message):
    path = tmp_path / "policy.py"
    path.write_text(content)
    r = run("validate", path)
    assert r.exit_code == 1
    assert message in r.stderr


def test_validate_missing_file(tmp_path):
    r = run("validate", tmp_path / "nope.py")
    assert r.exit_code == 1
    assert "nope.py: no such policy file" in r.stderr


def test_paths_are_printed_as_written_not_as_markup(tmp_path):
    """A directory named like a rich markup tag ('[v2]') must still be named in messages."""
    directory = tmp_path / "[v2]"
    directory.mkdir()
    ok = hello_policy(directory, "policy.py")
    r = run("validate", ok)
    assert r.exit_code == 0 and "[v2]/policy.py" in r.stdout
    r = run("validate", directory / "missing.py")
    assert r.exit_code == 1 and r.stderr.startswith(f"{directory}/missing.py: 1 problem")
    r = run("plan", ok, "--diff", directory / "old.json")
    assert r.exit_code == 1 and f"{directory}/old.json: no such plan file" in r.stderr


# --- plan --------------------------------------------------------------------------------


def test_plan_table():
    r = run("plan", SHOP_HETZNER)
    assert r.exit_code == 0
    for text in ("Plan for network acme-edge (hetzner)", "fsn-1", "fsn-2", "hel-1", "ash-1",
                 "controller", "Applications", "shop", "5 servers, 3 placements",
                 "infrastructure 28.73 EUR/month"):
        assert text in r.stdout, text


def test_plan_markdown():
    r = run("plan", SHOP_HETZNER, "--format", "markdown")
    assert r.exit_code == 0
    assert r.stdout.startswith("### edgeshot plan: `acme-edge` on hetzner\n")
    assert "| `fsn-2` | fsn |" in r.stdout


@pytest.mark.parametrize("path", [SHOP_LOCAL, SHOP_HETZNER, HELLO])
def test_plan_json_is_the_compiled_plan(path):
    r = run("plan", path, "--format", "json")
    assert r.exit_code == 0
    assert r.stdout == compile_plan(load(path)).to_json()
    assert json.loads(r.stdout)["format"] == 1


def test_plan_of_a_broken_file(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    r = run("plan", path, "--out", tmp_path / "plan.json")
    assert r.exit_code == 1
    assert "3 problems" in r.stderr and r.stdout == ""
    assert not (tmp_path / "plan.json").exists()


def test_plan_unknown_format():
    r = CliRunner().invoke(app, ["plan", str(HELLO), "--format", "yaml"])
    assert r.exit_code == 2 and "yaml" in r.output


# --- --out then --diff ---------------------------------------------------------------


def test_out_writes_the_plan_and_diff_without_change_exits_0(tmp_path):
    out = tmp_path / "plan.json"
    r = run("plan", SHOP_LOCAL, "--out", out)
    assert r.exit_code == 0
    assert out.read_text() == compile_plan(load(SHOP_LOCAL)).to_json()
    assert read_plan(out) == compile_plan(load(SHOP_LOCAL))
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left
    for fmt, expected in [("table", "Plan: 0 to add, 0 to change, 0 to destroy\n"),
                          ("markdown", None), ("json", None)]:
        r = run("plan", SHOP_LOCAL, "--diff", out, "--format", fmt)
        assert r.exit_code == 0, (fmt, r.output)
        if expected:
            assert r.stdout == expected
    r = run("plan", SHOP_LOCAL, "--diff", out, "--format", "markdown")
    assert "No changes." in r.stdout
    r = run("plan", SHOP_LOCAL, "--diff", out, "--format", "json")
    assert json.loads(r.stdout)["changes"] == []


def test_diff_with_a_change_exits_2(tmp_path):
    old = tmp_path / "old.json"
    assert run("plan", hello_policy(tmp_path, "v1.py"), "--out", old).exit_code == 0
    v2 = hello_policy(tmp_path, "v2.py", version="2", more_edgepoints=US)

    r = run("plan", v2, "--diff", old)
    assert r.exit_code == 2
    assert "Plan: 3 to add, 2 to change, 0 to destroy" in r.stdout
    for text in ("~", "app hello", "version", "+", "server there-1", "placement hello/there"):
        assert text in r.stdout, text

    r = run("plan", v2, "--diff", old, "--format", "markdown")
    assert r.exit_code == 2
    assert r.stdout.startswith("### edgeshot plan: `hello-net`\n\n**Plan: 3 to add, 2 to change")
    assert "<summary><code>~ app hello</code> (+27.60 EUR/month)</summary>" in r.stdout
    assert "| `version` | `1` | `2` |" in r.stdout

    r = run("plan", v2, "--diff", old, "--format", "json")
    assert r.exit_code == 2
    data = json.loads(r.stdout)
    assert data["summary"].startswith("Plan: 3 to add, 2 to change, 0 to destroy")
    assert [(c["action"], c["kind"], c["id"]) for c in data["changes"]] == [
        ("add", "server", "there-1"), ("add", "edgepoint", "there"), ("change", "app", "hello"),
        ("change", "placement", "hello/here"), ("add", "placement", "hello/there")]


def test_out_and_diff_on_the_same_file(tmp_path):
    """Compare with the saved plan, then save the new one in its place."""
    saved = tmp_path / "plan.json"
    run("plan", hello_policy(tmp_path, "v1.py"), "--out", saved)
    v2 = hello_policy(tmp_path, "v2.py", version="2")
    assert run("plan", v2, "--diff", saved, "--out", saved).exit_code == 2
    assert run("plan", v2, "--diff", saved).exit_code == 0


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such plan file"),
    ("", "not an edgeshot plan (Invalid JSON"),
    ("garbage", "not an edgeshot plan (Invalid JSON"),
    ("[1, 2]", "not an edgeshot plan ("),
    ('{"format": 1}', "not an edgeshot plan (network: Field required)"),
    (b"\xff\xfe\x00", "cannot be read as a plan"),
    ("dir", "cannot be read as a plan"),
])
def test_diff_against_a_missing_or_garbage_plan(tmp_path, content, message):
    path = tmp_path / "old.json"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    r = run("plan", HELLO, "--diff", path)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"error: {path}: ")
    assert message in r.stderr
    assert len(r.stderr.splitlines()) == 1  # one clear line, not wrapped


def test_out_to_an_unwritable_place(tmp_path):
    policy = hello_policy(tmp_path, "policy.py")
    r = run("plan", policy, "--out", tmp_path / "missing" / "plan.json")
    assert r.exit_code == 1
    assert "plan.json: cannot write the plan (No such file or directory)" in r.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    r = run("plan", policy, "--out", tmp_path / "taken")
    assert r.exit_code == 1 and "taken: cannot write the plan" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.py", "taken"]  # no tmp left


def test_diff_between_the_shop_networks(tmp_path):
    """Local to Hetzner: every server, edgepoint and placement replaced, the shop changed."""
    local = tmp_path / "local.json"
    assert run("plan", SHOP_LOCAL, "--out", local).exit_code == 0
    r = run("plan", SHOP_HETZNER, "--diff", local, "--format", "json")
    assert r.exit_code == 2
    data = json.loads(r.stdout)
    kinds = {(c["action"], c["kind"]) for c in data["changes"]}
    assert {("add", "server"), ("remove", "server"), ("add", "edgepoint"),
            ("remove", "edgepoint"), ("change", "app"), ("change", "network"),
            ("change", "controller"), ("add", "placement"), ("remove", "placement")} == kinds
    assert data["infrastructure_delta"] == {"amount": "28.73", "currency": "EUR"}
    assert "cost +28.73 EUR/month servers" in data["summary"]
