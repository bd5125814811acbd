"""How a configuration run is judged, from its plain-data summary (what `edgeshot up`
prints and exits with, what the Pulumi resource fails on): a failed server keeps its
edgepoint out of routing; only a run that leaves nothing to route to is a failure."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from edgeshot.configure import ConfigureResult, HostResult, outcome
from edgeshot.configure._report import render

UNREACHABLE = "unreachable: ssh: connect to host 192.0.2.12 port 22: No route to host"
LAB = {"north-1": ("north", ("agent", "edge")), "north-2": ("north", ("agent",)),
       "south-1": ("south", ("agent", "edge")), "controller": (None, ("controller",))}


def summary(**status: str) -> dict:
    """The lab's four servers, ok unless named: status, or status=first error."""
    hosts = {}
    for name, (ep, roles) in LAB.items():
        st, _, error = status.get(name.replace("-", "_"), "ok").partition("=")
        hosts[name] = {"status": st, "edgepoint": ep, "roles": list(roles), "ok": 9,
                       "changed": 0, "failed": int(st == "failed"),
                       "unreachable": st == "unreachable", "errors": [error] if error else [],
                       "reports": {}}
    return {"network": "lab", "status": "failed", "hosts": hosts}


@pytest.mark.parametrize("data, excluded, unusable", [
    (summary(), {}, None),
    (summary(north_2="changed"), {}, None),
    (summary(south_1=f"unreachable={UNREACHABLE}"),
     {"south": "south-1 unreachable: ssh: connect to host 192.0.2.12 port 22: No route to host"},
     None),
    (summary(north_2="failed=Install CRIU: E: broken", north_1="missing=no address"),
     {"north": "north-1 missing: no address; north-2 failed: Install CRIU: E: broken"}, None),
    # without the controller nothing is routed
    (summary(controller="failed=Write the controller's configuration: disk full"), {},
     "the controller was not configured (controller failed: Write the controller's "
     "configuration: disk full): nothing is routed"),
    (summary(north_1="failed", south_1="unreachable"),
     {"north": "north-1 failed", "south": "south-1 unreachable"},
     "every edgepoint has a server that was not configured: nothing is routed"),
    (summary(north_1="failed", north_2="failed", south_1="failed", controller="unreachable"),
     {"north": "north-1 failed; north-2 failed", "south": "south-1 failed"},
     "no server was configured"),
    ({"hosts": {}}, {}, "the inventory has no servers"),
])
def test_outcome(data, excluded, unusable):
    v = outcome(data)
    assert {e.edgepoint: e.why for e in v.excluded} == excluded
    assert v.unusable == unusable
    assert v.exit_code == (0 if unusable is None else 1)
    assert len(v.configured) + len(v.not_configured) == len(data["hosts"])


def text(renderable) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_render_shows_every_server_and_why_an_edgepoint_is_excluded():
    data = summary(south_1=f"unreachable={UNREACHABLE}")
    data["hosts"]["north-2"]["reports"] = {"criu": {"usable": False, "reason": "criu check "
                                                    "failed"}}
    out = text(render(data, "network lab: failed in 42 s"))
    assert "network lab: failed in 42 s" in out
    rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") > 3}
    assert set(rows) >= {"north-1", "north-2", "south-1", "controller"}
    assert "unreachable" in rows["south-1"] and "No route to host" in rows["south-1"]
    assert "cold-starts: criu check failed" in rows["north-2"]
    assert ("kept out of routing: south (south-1 unreachable: ssh: connect to host "
            "192.0.2.12 port 22: No route to host)") in out
    assert "kept out of routing" not in text(render(summary(), "t"))


def test_the_result_summary_is_what_outcome_reads_and_holds_no_secret():
    hosts = {n: HostResult(name=n, edgepoint=ep, roles=roles,
                           status="unreachable" if n == "south-1" else "ok",
                           errors=[UNREACHABLE] if n == "south-1" else [])
             for n, (ep, roles) in LAB.items()}
    r = ConfigureResult(network="lab", hosts=hosts, status="failed", rc=4, duration_s=3.5,
                        playbooks_hash="h")
    s = json.loads(json.dumps(r.summary()))  # plain data: a Pulumi output as it is
    assert s["hosts"]["south-1"]["edgepoint"] == "south"
    assert s["hosts"]["controller"]["roles"] == ["controller"]
    assert s["excluded_edgepoints"] == r.excluded_edgepoints == ["south"]
    assert (s["network"], s["duration_s"]) == ("lab", 3.5)
    assert [e.edgepoint for e in outcome(s).excluded] == ["south"]
    assert not any(k in json.dumps(s) for k in ("Token", "signingKey", "secrets"))
