"""Markdown for pull-request comments, from jinja2 templates."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jinja2

from ._diff import PlanDiff, _signed
from ._models import Plan

_SECTIONS = (
    ("Network", ("network",)),
    ("Servers", ("controller", "server", "edgepoint")),
    ("Applications (policy)", ("app",)),
    ("Placements", ("placement",)),
)
_SIGN = {"add": "+", "change": "~", "remove": "-"}


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgeshot.plan", "templates"),
        autoescape=False,  # Markdown, not HTML; cells are escaped by `cell`
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals |= {"cell": _cell, "signed": _signed, "sign": _SIGN}
    return env


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`{text}`"


def render_diff_markdown(diff: PlanDiff, network: str) -> str:
    sections = []
    for title, kinds in _SECTIONS:
        changes = [c for c in diff.changes if c.kind in kinds]
        if changes:
            sections.append((title, changes))
    costs = [(f"{c.kind} {c.id}", c.monthly_delta) for c in diff.changes if c.monthly_delta]
    return _env().get_template("diff.md.j2").render(
        diff=diff, network=network, sections=sections, costs=costs
    )


def render_plan_markdown(plan: Plan) -> str:
    return _env().get_template("plan.md.j2").render(plan=plan)
