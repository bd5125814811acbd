"""The `edgeshot` command in scripts and shells: `--format json`, shell completion, NO_COLOR,
and output that does not depend on the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeshot.cli import app
from edgeshot.cli.up import pulumi_color

ROOT = Path(__file__).resolve().parent.parent
EDGESHOT = Path(sys.executable).with_name("edgeshot")
SHOP_LOCAL = ROOT / "examples/shop/policy_local.py"
SHOP_HETZNER = ROOT / "examples/shop/policy_hetzner.py"
runner = CliRunner()

BROKEN = '''\
from edgeshot.spec import (SLA, Application, Budget, Controller, Distribution, EdgeNetwork,
                           Edgepoint, Hetzner, Owner, PeakWindow, Pricing, Routing, Source, Tier)

network = EdgeNetwork(
    name="net", provider=Hetzner(),
    edgepoints=[Edgepoint(name="ep1", region="eu-central", location="fsn9", server_type="cx22")],
    controller=Controller(location="nbg1", server_type="cx22"),
    pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01",
                    peak=PeakWindow(start="08:00", end="18:00", multiplier="0.5")),
)
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR",
                                                            "COLUMNS", "TERM")}
    return {**env, **extra}


def test_validate_json_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(BROKEN)
    res = runner.invoke(app, ["validate", str(bad), "--format", "json"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    found = sorted((p["line"], p["path"]) for p in doc["problems"])
    # the peak window's error hides neither the location nor anything else
    assert found == [(6, "network.edgepoints[ep1].location"),
                     (9, "network.pricing.peak.multiplier")]
    assert all(p["file"].endswith("bad.py") and p["message"] for p in doc["problems"])


def test_validate_json_on_a_good_file() -> None:
    res = runner.invoke(app, ["validate", str(SHOP_LOCAL), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["network"] == "local" and doc["provider"] == "local"
    assert doc["applications"] and doc["edgepoints"]


def test_up_json_for_a_cloud_network_reports_why_it_cannot_start(tmp_path: Path) -> None:
    """Progress and problems on stderr, one JSON result on stdout, the same exit code."""
    env = _env(HOME=str(tmp_path), PATH="/usr/bin:/bin")
    res = subprocess.run([str(EDGESHOT), "up", str(SHOP_HETZNER), "--format", "json",
                          "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc == {"network": doc["network"], "provider": "hetzner", "stack": doc["network"],
                   "preview": False, "exit_code": 1, "inventory": None}
    assert "the Pulumi CLI is not installed" in " ".join(res.stderr.split())


def test_shell_completion_is_installable_and_completes() -> None:
    # the shell is named, not detected from the parent processes (CI runs under `sh -c`,
    # which has no completion): typer takes the name only with detection off
    res = subprocess.run([str(EDGESHOT), "--show-completion", "bash"], capture_output=True,
                         text=True, timeout=60,
                         env=_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert res.returncode == 0 and "_EDGESHOT_COMPLETE" in res.stdout
    res = subprocess.run([str(EDGESHOT)], capture_output=True, text=True, timeout=60,
                         env=_env(_EDGESHOT_COMPLETE="complete_bash",
                                  COMP_WORDS="edgeshot monit", COMP_CWORD="1"))
    assert res.stdout.split() == ["monitoring"]
    res = subprocess.run([str(EDGESHOT)], capture_output=True, text=True, timeout=60,
                         env=_env(_EDGESHOT_COMPLETE="complete_bash",
                                  COMP_WORDS="edgeshot validate --for", COMP_CWORD="2"))
    assert res.stdout.split() == ["--format"]


@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_is_honoured(tmp_path: Path, no_color: bool) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(BROKEN)
    env = _env(FORCE_COLOR="1", **({"NO_COLOR": "1"} if no_color else {}))
    res = subprocess.run([str(EDGESHOT), "validate", str(bad)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 1
    coloured = "\x1b[31m" in res.stderr or "\x1b[1;31m" in res.stderr
    assert coloured is not no_color, repr(res.stderr[:200])


@pytest.mark.parametrize(("terminal", "no_color", "want"), [
    (True, False, "always"), (True, True, "never"), (False, False, "never")])
def test_pulumi_output_passes_through_with_our_colour_rules(
        terminal: bool, no_color: bool, want: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    console = Console(force_terminal=terminal, no_color=no_color)
    assert pulumi_color(console) == want


def test_errors_do_not_depend_on_the_terminal_width(tmp_path: Path) -> None:
    long = tmp_path / ("a-rather-long-directory-name-" * 4) / "inventory.json"
    outs = []
    for columns in ("40", "200"):
        res = subprocess.run([str(EDGESHOT), "exec", "true", "--on", "all", "-i", str(long)],
                             capture_output=True, text=True, env=_env(COLUMNS=columns),
                             timeout=60)
        assert res.returncode == 1
        outs.append(res.stderr)
    assert outs[0] == outs[1] and str(long) in outs[0]


def test_agent_log_format_json_from_the_command_line(tmp_path: Path) -> None:
    """`edgeshot agent --log-format json` (the daemon it execs) logs one JSON object a
    line; the edge and the controller take the same option."""
    from _netkit import free_ports
    from edgeshot.agent import auth
    auth.issue_token(tmp_path / "tokens.toml", "op", ["operator"])
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "st"\ntokens_file = "tokens.toml"\nport = {free_ports(1)[0]}\n'
                   'slots = 1\nrestore = "off"\n')
    p = subprocess.Popen([str(EDGESHOT), "agent", "--config", str(cfg), "--log-format", "json"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                         env=_env(), start_new_session=True)
    lines = []
    try:
        for line in p.stderr:  # type: ignore[union-attr]
            lines.append(json.loads(line))
            if " up on " in lines[-1]["message"]:
                break
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert lines and all(d["service"] == "agent" and d["level"] in ("info", "warning")
                         for d in lines), lines
    for command in ("edge", "controller"):
        res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--log-format" in res.output


def test_json_log_lines_survive_any_message() -> None:
    import logging

    from edgeshot._logging import JsonFormatter
    try:
        raise ValueError("boom")
    except ValueError:
        import sys as _sys
        exc = _sys.exc_info()
    record = logging.LogRecord("edgeshot.x", logging.ERROR, __file__, 1,
                               'a "quoted"\nmulti-line %s', ("ünï",), exc)
    line = JsonFormatter("edge").format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == 'a "quoted"\nmulti-line ünï' and doc["service"] == "edge"
    assert doc["level"] == "error" and "ValueError: boom" in doc["exception"]
