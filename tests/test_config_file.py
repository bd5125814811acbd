"""One TOML writer for every file edgeshot writes (service configurations, token files):
whatever a value holds, the file reads back as written."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from edgeshot._config_file import toml_text
from edgeshot.agent import auth
from edgeshot.agent.server import AgentConfig
from edgeshot.control._config import ControllerConfig
from edgeshot.edge.service import EdgeConfig

AWKWARD = ["plain", "new\nline", 'quote " and \\ backslash', "tab\tand\r\nCRLF", "ünïcødé ✓",
           "'single'", "#not a comment", "trailing\\", "\x1b[31mescape", "]]\n[table]"]


@pytest.mark.parametrize("value", AWKWARD)
def test_any_string_reads_back(value: str) -> None:
    data = {"key": value, "list": [value, "x"], "table": {value: value}}
    assert tomllib.loads(toml_text(data)) == data


def test_values_of_other_types_are_written_as_toml_has_them() -> None:
    when = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
    text = toml_text({"none": None, "path": Path("/a b/c"), "money": Decimal("1.50"),
                      "net": IPv4Network("10.0.0.0/8"), "tuple": (1, 2), "flag": True,
                      "when": when, "nested": {"gone": None, "kept": 1.5}},
                     header="first line\n\nthird")
    assert text.startswith("# first line\n#\n# third\n\n")
    assert tomllib.loads(text) == {"path": "/a b/c", "money": "1.50", "net": "10.0.0.0/8",
                                   "tuple": [1, 2], "flag": True, "when": when,
                                   "nested": {"kept": 1.5}}


def test_service_configurations_round_trip_with_awkward_values(tmp_path: Path) -> None:
    odd = tmp_path / 'dir "with"\nnewline'
    agent = AgentConfig(state_dir=odd, tokens_file=odd / "t.toml", source="agent:ep1:\nx")
    f = tmp_path / "agent.toml"
    f.write_text(agent.render())
    assert AgentConfig.load(f) == agent
    edge = EdgeConfig(edgepoint="ep1", state_dir=odd, tokens_file=odd / "t.toml",
                      agent_token_file=odd / "a", agents=[{"name": "s1", "url": "http://a\n"}])
    f = tmp_path / "edge.toml"
    f.write_text(edge.render())
    assert EdgeConfig.load(f) == edge
    ctl = ControllerConfig(state_dir=odd, plan=odd / "plan.json", base_dir=odd,
                           tokens_file=odd / "tokens.toml", agent_token_file=odd / "a",
                           edge_token_file=odd / "e", edges={"ep 1": "http://x\n"},
                           agents={'s"1': "http://y"})
    f = tmp_path / "controller.toml"
    f.write_text(ctl.to_toml())
    assert ControllerConfig.load(f) == ctl


def test_token_files_round_trip(tmp_path: Path) -> None:
    when = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
    records = [auth.TokenRecord(name="edge-ep1", sha256="ab" * 32, scopes=("edge-agent",),
                                created=when),
               auth.TokenRecord(name="owner-acme", sha256="cd" * 32, scopes=("owner:acme",))]
    f = tmp_path / "tokens.toml"
    f.write_text(auth.render_token_file(records))
    f.chmod(0o600)
    assert f.read_text().startswith("# edgeshot tokens")
    assert auth.read_token_file(f)[0] == records


def test_a_servers_controller_configuration_with_a_stats_port_still_loads(tmp_path: Path) -> None:
    """The controller role writes the plan's stats port; the dispatcher serves its stats on
    a unix socket whatever the number (0: none). A number must not stop the controller."""
    path = tmp_path / "controller.toml"
    for port in (8404, 0):
        path.write_text("".join(f'{k} = "{tmp_path / k}"\n' for k in (
            "state_dir", "plan", "base_dir", "tokens_file", "agent_token_file",
            "edge_token_file")) + f"[dispatcher]\nstats_port = {port}\n")
        assert ControllerConfig.load(path).dispatcher.stats_port == port
