"""What the controller's API handlers share (``_api.py``, ``_staging.py``): error answers,
who may act on an app, JSON bodies, and the app version a deploy or a stage names."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from edgeshot.agent import auth
from edgeshot.plan import AppPlan

from ._deploy import DeployError

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
    try:
        return model.model_validate(await request.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "invalid", "the body must be JSON")
    except ValidationError as exc:
        return error(422, "invalid", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                               for e in exc.errors(include_url=False)))


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
        return error(422, "invalid", f"plan: {exc.errors(include_url=False)[0]['msg']}")
    if app_plan.name != name:
        return error(422, "invalid", f"the plan is for {app_plan.name!r}, not {name!r}")
    if version and version != app_plan.version:
        app_plan = AppPlan.model_validate({**app_plan.model_dump(), "version": version})
    row = c.store.app(name)
    owner = row["owner"] if row else app_plan.owner
    if not (p.is_operator or owner in p.owners) or app_plan.owner != owner:
        return error(404 if row else 403, "forbidden", f"token {p.name!r} may not {verb} {name!r}")
    return app_plan
