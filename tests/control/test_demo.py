"""The short demo, as CI runs it: the shop on three local edgepoints, its own checks.

`edgeshot demo --duration 20 --non-interactive` with a policy file on free ports (the
shop as examples/shop declares it); the demo exits non-zero when one of its checks fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .netfix import REPO, write_policy

pytestmark = [pytest.mark.haproxy, pytest.mark.root, pytest.mark.timeout(600)]


def test_the_short_demo_passes_its_own_checks(tmp_path):
    policy = write_policy(tmp_path, app="shop", edgepoints=(
        ("eu", "eu-central"), ("us", "us-east"), ("ap", "ap-southeast")))
    report = tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "edgeshot.cli.network", "demo", str(policy), "--duration", "20",
         "--non-interactive", "--users", "12", "--state", str(tmp_path / "state"),
         "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    out = res.stdout + res.stderr
    assert report.exists(), out[-4000:]
    outcome = json.loads(report.read_text())
    failed = [c for c in outcome["checks"] if c["gating"] and not c["ok"]]
    assert res.returncode == 0 and not failed, (failed, out[-4000:])
    names = {c["name"] for c in outcome["checks"]}
    assert {"users routed to their nearest edgepoint", "broken canary rolled back by itself",
            "scale to zero when the users leave", "down leaves nothing behind"} <= names
    print(json.dumps(outcome["figures"], indent=1))


@pytest.mark.parametrize(("routing", "ready"), [
    ({}, False),                                                     # no table yet
    ({"shop": {"eu-central": ["eu", "us"], "us-east": ["us", "eu"]}}, True),
    ({"shop": {"eu-central": ["eu"], "us-east": ["eu"]}}, False),     # us not healthy yet
    ({"shop": {"eu-central": ["eu"], "us-east": []}}, False),         # us-east unrouted
    ({"shop": {"eu-central": ["eu"]}}, False),                        # region missing
    ({"shop": {"eu-central": ["eu"], "us-east": ["us"]},
      "hello": {"eu-central": ["us"], "us-east": ["us"]}}, False),    # one app not yet
])
def test_the_demo_starts_its_users_once_every_region_reaches_its_nearest_edgepoint(routing, ready):
    from edgeshot.control.demo import _nearest_first
    assert _nearest_first(routing, {"eu-central": "eu", "us-east": "us"}) is ready
