"""The roles' token templates, rendered by Ansible's own template module (on this machine,
into a temporary directory only) and read back by the services' token store."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from edgeshot.agent import auth

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "playbooks" / "roles" / "edge_agent"


def _render(tmp_path: Path, template: str, variables: dict) -> Path:
    dest = tmp_path / Path(template).stem
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": variables,
             "tasks": [{"ansible.builtin.template": {"src": str(ROLE / "templates" / template),
                                                     "dest": str(dest), "mode": "0600"}}]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    bin_dir = Path(sys.executable).parent
    res = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", "localhost,",
                          str(tmp_path / "play.yml")], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1",
                              "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
                              "HOME": str(tmp_path)}, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return dest


def _default(name: str):
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())[name]


def test_the_edge_accepts_extra_tokens_such_as_prometheus_metrics_token(tmp_path):
    controller, metrics = auth.new_token(), auth.new_token()
    path = _render(tmp_path, "edge-tokens.toml.j2", {
        "edgeshot_server": {"edgepoint": "north"},
        "edgeshot_secrets": {"controllerEdgeToken": controller},
        "edge_agent_edge_extra_tokens": [{
            "name": "prometheus", "sha256": hashlib.sha256(metrics.encode()).hexdigest(),
            "scopes": ["metrics"]}]})
    store = auth.TokenStore.from_file(path)
    assert store.authenticate(metrics).scopes == {auth.METRICS}
    assert store.authenticate(controller).scopes == {auth.CONTROLLER_EDGE}
    assert store.authenticate(auth.new_token()) is None


def test_without_extra_tokens_the_edge_accepts_only_the_controller(tmp_path):
    controller = auth.new_token()
    path = _render(tmp_path, "edge-tokens.toml.j2", {
        "edgeshot_server": {"edgepoint": "north"},
        "edgeshot_secrets": {"controllerEdgeToken": controller},
        "edge_agent_edge_extra_tokens": _default("edge_agent_edge_extra_tokens")})
    assert path.read_text().count("[[token]]") == 1
    assert auth.TokenStore.from_file(path).authenticate(controller).scopes == \
        {auth.CONTROLLER_EDGE}
