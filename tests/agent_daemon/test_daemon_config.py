"""The agent's configuration file: defaults, relative paths, every problem named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeshot.agent.server import AgentConfig, ConfigError


def test_minimal_config_and_relative_paths(tmp_path: Path):
    f = tmp_path / "agent.toml"
    f.write_text('state_dir = "st"\ntokens_file = "tokens.toml"\n')
    cfg = AgentConfig.load(f)
    assert cfg.state_dir == tmp_path / "st" and cfg.tokens_file == tmp_path / "tokens.toml"
    assert (cfg.port, cfg.usage_interval_s, cfg.restore, cfg.slots) == (7440, 10.0, "auto", 16)
    assert AgentConfig.load(_write(tmp_path, cfg.render())) == cfg  # round trip
    f.write_text('[agent]\nstate_dir = "/x"\ntokens_file = "/t"\nport = 9000\n')
    assert AgentConfig.load(f).port == 9000  # an [agent] table works too


def _write(d: Path, text: str) -> Path:
    p = d / "rendered.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,words", [
    ('tokens_file = "t"\n', "state_dir: Field required"),
    ('state_dir = "s"\ntokens_file = "t"\nprot = 1\n', "prot: Extra inputs are not permitted"),
    ('state_dir = "s"\ntokens_file = "t"\nport = "x"\n', "port: Input should be a valid integer"),
    ('state_dir = "s"\ntokens_file = "t"\nslot_subnet = "10.0.0.0/33"\n', "slot_subnet"),
    ('state_dir = "s"\ntokens_file = "t"\nusage_interval_s = 0\n', "usage_interval_s"),
    ('state_dir = "s"\ntokens_file = "t"\nrestore = "maybe"\n', "restore"),
    ("state_dir = \n", "not valid TOML"),
])
def test_config_problems_are_named(tmp_path: Path, text, words):
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=words):
        AgentConfig.load(f)


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path: Path):
    f = tmp_path / "agent.toml"
    f.write_text(f'state_dir = "{tmp_path}/st"\ntokens_file = "{tmp_path}/missing.toml"\n')
    out = subprocess.run([sys.executable, "-m", "edgeshot.cli.agent", "--config", str(f)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "token file" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
