"""Without root there is no CRIU and no namespaces: instances cold-start and say why.

Runs as any user: as root, the agent is made to see an unprivileged uid.
"""

from __future__ import annotations

import logging
import os

import pytest
from agent_apps import HELLO

from edgeshot.agent import _criu
from edgeshot.agent import appshots as A
from edgeshot.agent._pods import PodError
from edgeshot.agent._sys import http_request


@pytest.fixture
def unprivileged(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    _criu.status.cache_clear()
    yield
    monkeypatch.undo()
    _criu.status.cache_clear()


def test_without_root_instances_cold_start_and_say_why(unprivileged, tmp_path, caplog):
    host = A.Host(state_dir=tmp_path)
    spec = A.PodSpec(app="hello", version="1", source_dir=HELLO,
                     tiers=(A.TierSpec(name="web", command=("python3", "app.py"), entry=True),))
    with caplog.at_level(logging.WARNING, logger="edgeshot.agent"):
        st = A.criu_status()
        A.criu_status()
    assert not st.usable and "not root" in st.reason
    said = [r.getMessage() for r in caplog.records if "cold-start" in r.getMessage()]
    assert said == [f"CRIU unavailable, instances will cold-start: {st.reason}"]  # once
    assert host.pool() is None
    inst = A.start(spec, host)
    try:
        assert not inst.namespaces and inst.slot is None and "not root" in inst.cold_reason
        assert inst.port != 8000  # each instance on its own free port through $PORT
        assert http_request(inst.address, inst.port, "/") == (200, b"hello from edgeshot #1\n")
        with pytest.raises(A.NotRestorable, match="CRIU unavailable"):
            A.capture(spec, tmp_path / "shot", host)
    finally:
        A.stop(inst, host)
    assert A.list_instances(host) == []
    with pytest.raises(ProcessLookupError):  # nothing of the instance's process group is left
        os.killpg(inst.pid, 0)
    assert not os.path.exists(f"/proc/{inst.pid}") or \
        open(f"/proc/{inst.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_command_gets_its_port_and_env_expanded_without_a_shell(unprivileged, tmp_path):
    """`python3 -m http.server $PORT`: $PORT is the free port this instance got (not 8000),
    ${SITE} comes from the tier's env, and a value with shell syntax stays one literal word."""
    site = tmp_path / "src" / "my site"
    site.mkdir(parents=True)
    (site / "index.html").write_text("served from the expanded directory\n")
    host = A.Host(state_dir=tmp_path / "state")
    spec = A.PodSpec(app="static", version="1", source_dir=tmp_path / "src", tiers=(A.TierSpec(
        name="web", entry=True, health_path="/", env={"SITE": "my site", "JUNK": "$(touch x)"},
        command=("python3", "-m", "http.server", "$PORT", "--directory", "${SITE}",
                 "--bind", "0.0.0.0"),),))
    inst = A.start(spec, host)
    try:
        assert inst.port != 8000
        assert http_request(inst.address, inst.port, "/") == (
            200, b"served from the expanded directory\n")
    finally:
        A.stop(inst, host)
    bad = spec.model_copy(update={"tiers": (spec.tiers[0].model_copy(
        update={"command": ("python3", "-m", "http.server", "$PROT")}),)})
    with pytest.raises(PodError, match=r"tier web: command word 3 \('\$PROT'\): \$PROT is not "
                                         r"set for this tier; allowed: \$JUNK, \$PORT, \$SITE"):
        A.start(bad, host)
    assert A.list_instances(host) == []
    assert not (tmp_path / "src" / "x").exists()
