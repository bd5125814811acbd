"""What the controller's API handlers share (``_api.py``, ``_staging.py``): error answers,
who may act on an app, JSON bodies, and the app version a deploy or a stage names."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from edgeshot.agent import auth
from edgeshot.plan import AppPlan, check_app_plan

from ._deploy import DeployError
from ._grants import OwnerGrant, Taken, authorise, keys_of

B = TypeVar("B", bound=BaseModel)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def owned(store: Any, p: auth.Principal, app: str) -> web.Response | None:
    """None when ``p`` may act on ``app``; else the error to answer (404: others' apps do
    not exist for it)."""
    row = store.app(app)
    if row is None or not (p.is_operator or row["owner"] in p.owners):
        return error(404, "not_found", f"no application {app!r}")
    return None


async def body_of(request: web.Request, model: type[B]) -> B | web.Response:
    """The request's JSON body as ``model``, or the error to answer."""
    raw = await request.read()
    if not raw:
        return error(400, "invalid", f"the body must be JSON ({model.__name__})")
    try:  # pydantic's parser: bounded depth (a 200,000-deep body is an error, not a crash)
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return error(400, "invalid", "the body must be JSON: "
                         + exc.errors(include_url=False)[0]["msg"][:200])
        return error(422, "invalid", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                               for e in exc.errors(include_url=False)[:5]))


def int_param(raw: str | None, name: str, default: int, lo: int = 0,
              hi: int = (1 << 63) - 1) -> int | web.Response:
    """An integer query or path parameter within [lo, hi] (SQLite's integers), or the 400
    to answer."""
    if raw is None:
        return default
    try:
        v = int(raw) if len(raw) <= 20 else hi + 1
    except ValueError:
        return error(400, "invalid", f"{name} must be an integer")
    if not lo <= v <= hi:
        return error(400, "invalid", f"{name} must be between {lo} and {hi}")
    return v


def requested_plan(c: Any, p: auth.Principal, name: str, plan: dict[str, Any] | None,
                   version: str | None, verb: str) -> AppPlan | web.Response:
    """The version of app ``name`` a request to ``verb`` it names: its ``plan`` (for an app
    the caller owns, or a new one of its own; ``version`` overrides the plan's), else a
    ``version`` the deployment center has; or the error to answer."""
    if plan is None:
        if (err := owned(c.store, p, name)) is not None:
            return err
        if not version:
            return error(422, "invalid", "give a version, or the version's plan")
        try:
            return c.deploy.app_plan(name, version)
        except DeployError as exc:
            return error(404, "not_found", str(exc))
    try:
        app_plan = AppPlan.model_validate(plan)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        return error(422, "invalid", f"plan.{'.'.join(map(str, e['loc']))}: {e['msg']}")
    if app_plan.name != name:
        return error(422, "invalid", f"the plan is for {app_plan.name!r}, not {name!r}")
    if version and version != app_plan.version:
        app_plan = app_plan.model_copy(update={"version": version})
    row = c.store.app(name)
    owner = row["owner"] if row else app_plan.owner
    if not (p.is_operator or owner in p.owners) or app_plan.owner != owner:
        return error(404 if row else 403, "forbidden", f"token {p.name!r} may not {verb} {name!r}")
    if problems := check_app_plan(app_plan):
        return error(422, "invalid", f"{name} {app_plan.version[:64]!r}: plan.{problems[0]}"
                     + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    base = next((a for a in c.plan.apps if a.name == name), None)
    if base is None:
        return error(422, "invalid", f"{name!r} is not placed in this network's plan")
    if not p.is_operator and (refused := authorise(app_plan, base, *grants_of(c, base.owner))):
        return error(403, "forbidden", f"{name} {app_plan.version}: {refused[0]}"
                     + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""))
    return app_plan


def grants_of(c: Any, owner: str) -> tuple[OwnerGrant, list[Taken], frozenset[str]]:
    """What `authorise` needs beyond the request: the owner's grant in the configuration,
    every routing key of the other owners' apps (the plan's and every version serving or
    staged), the network's own addresses."""
    grant = c.config.owners.get(owner) or OwnerGrant()
    taken = [Taken(k, a.name, a.owner) for a in c.plan.apps if a.owner != owner
             for k in keys_of(a)]
    for row in c.store.apps():
        if row["owner"] == owner:
            continue
        for v in {row["primary_version"], row["canary_version"]} - {None}:
            if (vr := c.store.version(row["name"], v)) is not None:
                taken += [Taken(k, row["name"], row["owner"])
                          for k in keys_of(AppPlan.model_validate_json(vr["plan"]))]
    servers = (*c.plan.servers, c.plan.controller)
    network = frozenset({s.address for s in servers if s.address}
                        | {s.private_address for s in servers if s.private_address}
                        | {c.config.listen})
    return grant, taken, network
