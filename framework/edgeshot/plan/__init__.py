"""edgeshot.plan: compile a spec into a plan, compare plans, render them for review.

    plan = compile_plan(load("policy.py"))
    changes = diff(old_plan, plan)
    print(render_diff_markdown(changes, plan.network))
"""

from __future__ import annotations

from pathlib import Path

from ._check import check_app_plan, check_placement
from ._compile import compile_plan
from ._diff import Change, FieldChange, PlanDiff, diff
from ._models import (
    AppPlan,
    EdgepointPlan,
    Money,
    Placement,
    Plan,
    RoutePlan,
    ScalingPolicy,
    ServerPlan,
    TierPlan,
)
from ._render import render_diff_markdown, render_plan_markdown
from ._share import divide


def read_plan(path: str | Path) -> Plan:
    """A plan saved with `edgeshot plan --out`."""
    return Plan.model_validate_json(Path(path).read_text())


def write_plan(plan: Plan, path: str | Path) -> None:
    """Atomically: a reader never sees half a plan."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(plan.to_json())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = [
    "AppPlan", "Change", "EdgepointPlan", "FieldChange", "Money", "Placement", "Plan", "PlanDiff",
    "RoutePlan", "ScalingPolicy", "ServerPlan", "TierPlan", "check_app_plan", "check_placement", "compile_plan", "diff", "divide",
    "read_plan", "render_diff_markdown", "render_plan_markdown", "write_plan",
]
