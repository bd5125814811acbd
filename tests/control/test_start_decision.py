"""How `up` starts an app version after earlier runs (control/_deploy.start_decision):
a failed or unfinished start is retried, a changed policy captured again. Pure, table-tested."""

from __future__ import annotations

import json

import pytest

from edgeshot.control._deploy import start_decision

PLAN = json.dumps({"name": "shop", "version": "1.0", "tiers": [{"command": ["python3", "web.py"]}]})
FIXED = json.dumps({"name": "shop", "version": "1.0", "tiers": [{"command": ["python3", "app.py"]}]})
# the same plan, its keys in another order: not a change
REORDERED = json.dumps(dict(reversed(list(json.loads(PLAN).items()))))


def row(state: str, plan: str = PLAN) -> dict:
    return {"state": state, "plan": plan}


CASES = [
    # (stored version row, app row, policy's plan, action, message, replace_plan)
    (None, None, PLAN, "capture", "shop 1.0: capturing", False),
    (row("failed"), {"primary_version": None}, PLAN, "retry",
     "shop 1.0: retrying the failed capture", False),
    (row("failed"), {"primary_version": None}, REORDERED, "retry",
     "shop 1.0: retrying the failed capture", False),
    (row("failed"), {"primary_version": None}, FIXED, "recapture",
     "shop 1.0: policy changed since the failed capture — capturing again", True),
    (row("planned"), {"primary_version": None}, PLAN, "resume",
     "shop 1.0: resuming the unfinished start", False),
    (row("captured"), None, FIXED, "recapture",
     "shop 1.0: policy changed since the unfinished capture — capturing again", True),
    (row("stale", FIXED), None, FIXED, "resume", "shop 1.0: resuming the unfinished start",
     False),
    (row("distributed"), {"primary_version": "1.0"}, PLAN, "serve", None, False),
    (row("distributed"), {"primary_version": "1.0"}, FIXED, "stale",
     "shop 1.0: the policy changed but the version did not; the network keeps serving the "
     "appshot captured before: give the app a new version and `edgeshot deploy` it", False),
    (None, {"primary_version": "0.9"}, PLAN, "serve",
     "shop keeps serving 0.9; roll 1.0 out with `edgeshot deploy`", False),
]


@pytest.mark.parametrize(("stored", "app_row", "plan", "action", "message", "replace"), CASES,
                         ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_start_decision(stored, app_row, plan, action, message, replace):
    d = start_decision("shop", "1.0", plan, stored, app_row)
    assert (d.action, d.message, d.replace_plan) == (action, message, replace)
