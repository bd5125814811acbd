"""An app plan that did not come from `compile_plan` (an owner's deploy, a placement an edge
receives), checked with the same spec models and checks as `edgeshot validate`.

A plan is compiled from a validated spec, so whoever compiled it honestly produced a valid
one; whoever sends one over an API may have written anything. So the plan is turned back
into the spec objects it would have been compiled from (names, versions, routing key,
cleave routes, tiers, warm-up, source) and those are validated as `validate` validates a
policy file; what compiling derives (each route's regular expression) is derived again
and must match. A pure function: no I/O, the same answer on the controller and the edge.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from edgeshot.spec import Application
from edgeshot.spec._checks import check as spec_check
from edgeshot.spec._routes import to_regex

from ._models import AppPlan, Placement

MAX_INSTANCES = 1_000_000  # of one app on one edgepoint: far above any network's


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(plan)"


def _as_spec(app: AppPlan) -> dict[str, Any]:
    """The arguments of the `Application` the plan would have been compiled from (the
    parts a plan does not carry — distribution, SLA — as neutral placeholders: those come
    from the network's own plan, never from the sender)."""
    edge = [{"method": r.method, "path": r.path} for r in app.routes if r.to == "edge"]
    origin = [{"method": r.method, "path": r.path, "transactional": r.transactional}
              for r in app.routes if r.to == "origin"]
    return {
        "name": app.name, "version": app.version,
        "owner": {"id": app.owner, "organisation": app.organisation},
        "vendor": app.vendor, "priority": app.priority,
        "routing": {"hosts": app.hosts, "path_prefix": app.path_prefix},
        "source": {"path": app.source, "install": app.install, "trusted": app.trusted},
        "tiers": [{
            "name": t.name, "command": t.command, "port": t.port, "env": t.env,
            "secrets": t.secrets, "entry": t.entry, "reseed_signal": t.reseed_signal,
            "health": ({"path": t.health_path, "timeout_s": t.health_timeout_s or 2.0,
                        "start_timeout_s": t.start_timeout_s or 30.0}
                       if t.health_path is not None else None),
            "resources": {"cpu": t.cpu, "memory_mb": t.memory_mb}} for t in app.tiers],
        "warmup": list(app.warmup),
        "cleave": {"edge": edge, "origin": origin, "origin_url": app.origin_url,
                   "default": app.default_route, "affinity": app.affinity},
        "load_test": app.load_test,
        "distribution": {}, "sla": {"max_response_ms": 10**9, "users_per_instance": 1},
        "budget": {"monthly": {"amount": app.budget.amount, "currency": app.budget.currency}},
    }


def check_app_plan(app: AppPlan) -> list[str]:
    """Every problem of ``app`` as ``"field: reason"`` lines (empty: it is valid), fields
    named as in a policy file (``routing.hosts``, ``cleave.edge.0.path``, ``tiers.0.env``)."""
    problems: list[str] = []
    try:
        spec = Application.model_validate(_as_spec(app))
    except ValidationError as exc:
        problems += [f"{_where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors(include_url=False)]
    else:
        problems += [f"{f.field or '(app)'}: {f.message}" for f in spec_check(None, [spec])]
    for i, r in enumerate(app.routes):
        if r.to not in ("edge", "origin"):
            problems.append(f"routes.{i}.to: must be 'edge' or 'origin', not {r.to!r}")
        if r.transactional and r.to != "origin":
            problems.append(f"routes.{i}.transactional: only origin routes can be")
        want = to_regex(r.path)
        if r.regex != want:  # compiling derives it: anything else was not compiled here
            problems.append(f"routes.{i}.regex: {r.regex!r} is not what {r.path!r} compiles "
                            f"to ({want!r})")
        else:
            try:
                re.compile(r.regex)
            except re.error as exc:  # pragma: no cover - to_regex escapes everything
                problems.append(f"routes.{i}.regex: {exc}")
    if app.default_route not in ("edge", "origin"):
        problems.append(f"default_route: must be 'edge' or 'origin', not {app.default_route!r}")
    return problems



def check_placement(p: Placement) -> list[str]:
    """Every problem of a placement that did not come from `compile_plan` (an edge's
    input): its names, and numbers within what the spec allows."""
    problems = []
    try:
        Application.model_validate({**_NEUTRAL, "name": p.app, "version": p.version,
                                    "owner": {"id": p.owner}, "priority": p.priority})
    except ValidationError as exc:
        problems += [f"{_where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors(include_url=False)]
    if p.id != f"{p.app}/{p.edgepoint}":
        problems.append(f"id: {p.id[:80]!r} is not '<app>/<edgepoint>'")
    s = p.scaling
    for name, value, lo in (("min", s.min, 0), ("max", s.max, 1),
                            ("users_per_instance", s.users_per_instance, 1),
                            ("max_response_ms", s.max_response_ms, 1),
                            ("idle_s", s.idle_s, 0), ("warm_pool", s.warm_pool, 0),
                            ("global_share", p.global_share, 0),
                            ("cost_ceiling", p.cost_ceiling, 0)):
        if not lo <= value <= MAX_INSTANCES * 1000:
            problems.append(f"scaling.{name}: {value} is not between {lo} and "
                            f"{MAX_INSTANCES * 1000}")
    if s.min > s.max:
        problems.append(f"scaling.min: {s.min} is more than max ({s.max})")
    if not 50 <= s.percentile < 100:
        problems.append(f"scaling.percentile: {s.percentile} is not within [50, 100)")
    return problems


# an app with nothing but what a placement names: for its names and priority
_NEUTRAL = {"routing": {"path_prefix": "/"}, "source": {"path": "."},
            "tiers": [{"name": "web", "command": ["x"]}], "distribution": {},
            "sla": {"max_response_ms": 1, "users_per_instance": 1},
            "budget": {"monthly": "0 EUR"}}
