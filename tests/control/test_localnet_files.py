"""The local network's files, before any process runs: plan, tokens, configurations."""

from __future__ import annotations

import stat

import pytest

from edgeshot.agent import auth
from edgeshot.control._localnet import LocalNetwork, Manifest, NetworkError, as_local
from edgeshot.control.server import ControllerConfig
from edgeshot.edge.service import EdgeConfig
from edgeshot.spec import load

from .netfix import REPO

HETZNER = REPO / "examples" / "shop" / "policy_hetzner.py"
LOCAL = REPO / "examples" / "shop" / "policy_local.py"


def test_a_cloud_network_needs_local_to_run_here(tmp_path):
    with pytest.raises(NetworkError, match="add --local"):
        LocalNetwork.create(HETZNER, tmp_path / "s")


def test_local_rehearses_a_cloud_topology_on_loopback(tmp_path):
    spec = load(HETZNER)
    local = as_local(spec)
    assert [e.name for e in local.network.edgepoints] == [e.name for e in spec.network.edgepoints]
    assert [e.region for e in local.network.edgepoints] == [e.region for e in spec.network.edgepoints]
    net = LocalNetwork.create(HETZNER, tmp_path / "s", local=True)
    plan = net.plan()
    assert plan.provider == "local"
    assert all(s.address and s.address.startswith("127.0.") for s in plan.servers)
    assert len(plan.servers) == sum(e.servers for e in spec.network.edgepoints)
    assert net.manifest.entry_url.startswith("http://127.0.0.1:")


def test_files_tokens_and_configurations(tmp_path):
    net = LocalNetwork.create(LOCAL, tmp_path / "s")
    m = Manifest.read(tmp_path / "s")
    assert m.network == "local" and m.dashboard_url.endswith("/dash")
    # secrets: 0600, and each service accepts exactly the scopes it should
    for path in m.tokens.values():
        assert stat.S_IMODE((tmp_path / "s" / "secrets" / path.split("/")[-1]).stat().st_mode) == 0o600
    agent_tokens = auth.TokenStore.from_file(tmp_path / "s" / "tokens" / "agent-eu.toml")
    edge_tokens = auth.TokenStore.from_file(tmp_path / "s" / "tokens" / "edge.toml")
    ctl_tokens = auth.TokenStore.from_file(tmp_path / "s" / "tokens" / "controller.toml")
    assert agent_tokens.authenticate(net.token("controller-agent")).has(auth.CONTROLLER_AGENT)
    assert agent_tokens.authenticate(net.token("edge-agent-eu")).has(auth.EDGE_AGENT)
    assert agent_tokens.authenticate(net.token("edge-agent-us")) is None  # a token per edge
    for ep in ("eu", "us", "ap"):  # each edge has its own, its agents accept only it
        assert f"edge-agent-{ep}.token" in open(m.edges[ep]["config"]).read()
        for s in (s for s in net.plan().servers if s.edgepoint == ep):
            assert f"agent-{ep}.toml" in open(m.agents[s.name]["config"]).read()
    assert agent_tokens.authenticate(net.token("controller-edge")) is None
    assert edge_tokens.authenticate(net.token("controller-edge")).has(auth.CONTROLLER_EDGE)
    assert edge_tokens.authenticate(net.token("controller-agent")) is None
    op = net.token("operator")  # one operator token for every service
    assert all(s.authenticate(op).is_operator for s in (agent_tokens, edge_tokens, ctl_tokens))
    owner = ctl_tokens.authenticate(net.token("owner-acme-shop"))
    assert owner.owners == {"acme-shop"} and not owner.is_operator
    assert agent_tokens.authenticate(net.token("owner-acme-shop")) is None
    # agents: their own address, slot subnet and netns prefix
    prefixes = [a["slot_prefix"] for a in m.agents.values()]
    assert len(set(prefixes)) == len(prefixes) and all(len(p) <= 6 for p in prefixes)
    assert len({a["slot_subnet"] for a in m.agents.values()}) == len(m.agents)
    # edges: on their edgepoint's address, with their agents
    for ep, e in m.edges.items():
        edge_cfg = EdgeConfig.load(e["config"])
        assert edge_cfg.edgepoint == ep and edge_cfg.agents
        assert {a.name for a in edge_cfg.agents} == {
            s for s, a in m.agents.items() if a["edgepoint"] == ep}
    cfg = ControllerConfig.load(tmp_path / "s" / "controller.toml")
    assert cfg.dispatcher.simulate_latency and set(cfg.edges) == {"eu", "us", "ap"}
    # a second network elsewhere gets other netns prefixes
    other = LocalNetwork.create(LOCAL, tmp_path / "t")
    assert not set(prefixes) & {a["slot_prefix"] for a in other.manifest.agents.values()}
