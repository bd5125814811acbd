"""Staging: a version on the edge that only its provider's token reaches, and the
capacity test that must pass before the public gets it.

``edgeshot deploy policy.py --stage`` (``POST /v1/apps/{app}/stage``):

1. the version is captured and distributed like any deployment (`DeploymentCenter.prepare`);
2. the controller starts one instance of it on a server of one of the app's edgepoints
   (through the agent, like a restore) — the edge's resource manager never sees it;
3. the edgepoint's placement gets a *stage route* (`edge.models.StageRoute`): the SHA-256
   of every token of the app's owner, plus one of a token the controller draws for its
   own load test, and the staged instance's address. HAProxy sends a request of the app
   to the staged version only when its ``X-Edgeshot-Stage`` header hashes to one of those
   (``sha2(256)`` in the frontend), strips the header before any app sees it, and never
   routes anyone else there: no weight, no public backend, no dispatcher entry;
4. when the app declares a `LoadTest`, it runs against the staged instance
   (`_capacity.run`: locust, sessions from the declared regions) and its result — the
   users per instance the version sustains within its SLA, the response-time curve,
   the verdict — is kept per version (``capacity_tests``) and shown on the customer
   dashboard.

The deployment center asks `gate()` before any rollout (direct or canary): a version
whose capacity test failed, or is still running, is refused; so is a version of an app
that declares a load test but never went through staging. A version that passed is
unstaged once it is rolled out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeshot.agent import auth
from edgeshot.agent.auth import OPERATOR, requires
from edgeshot.agent.client import AgentError
from edgeshot.plan import AppPlan

from . import _capacity
from ._deploy import DeployError, appshot_name
from ._http import body_of, owned, requested_plan
from ._http import error as _err
from ._store import Migration, register

log = logging.getLogger("edgeshot.staging")

_MIGRATIONS = [
    Migration(1, "staged versions and capacity tests", """
        CREATE TABLE staged_versions (
            app TEXT NOT NULL,
            version TEXT NOT NULL,
            edgepoint TEXT NOT NULL,
            server TEXT NOT NULL,
            instance TEXT,
            address TEXT,
            state TEXT NOT NULL,        -- staged | removed | failed
            load_test TEXT,             -- the LoadTest it was staged with (JSON)
            detail TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            PRIMARY KEY (app, version)
        );
        CREATE TABLE capacity_tests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            app TEXT NOT NULL,
            version TEXT NOT NULL,
            edgepoint TEXT NOT NULL,
            state TEXT NOT NULL,        -- running | passed | failed | error
            spec TEXT NOT NULL,         -- the LoadSpec run (JSON)
            result TEXT,                -- CapacityResult (JSON)
            started REAL NOT NULL,
            finished REAL
        );
        CREATE INDEX capacity_tests_version ON capacity_tests (app, version, id);
    """),
]
register("staging", _MIGRATIONS)

class StageError(Exception):
    pass


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, max_length=64)
    plan: dict[str, Any] | None = Field(None, description="the version's AppPlan (JSON)")
    source_dir: str | None = Field(None, max_length=4096)
    load_test: dict[str, Any] | None = Field(None, description="the app's LoadTest (JSON)")
    edgepoint: str | None = Field(None, max_length=64)
    run_test: bool = True


class Staging:
    def __init__(self, controller: Any) -> None:
        self.c = controller
        self.store = controller.store
        self.store.migrate(["staging"])
        self.keys: dict[tuple[str, str], str] = {}  # the controller's own stage tokens
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        d = controller.deploy
        d.stage_route = self.route
        d.gate = self.gate
        with self.store.tx() as db:  # tests a previous controller process did not finish
            db.execute("UPDATE capacity_tests SET state = 'error', finished = ?, result = ? "
                       "WHERE state = 'running'",
                       (time.time(), json.dumps({"reasons": [
                           "the controller restarted during the test: stage it again"]})))

    # ------------------------------------------------------------------ reading

    def staged(self, app: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store.query(
            "SELECT * FROM staged_versions WHERE app = ? ORDER BY created", (app,))]

    def tests(self, app: str, version: str | None = None) -> list[dict[str, Any]]:
        if version is None:
            rows = self.store.query("SELECT * FROM capacity_tests WHERE app = ? ORDER BY id",
                                    (app,))
        else:
            rows = self.store.query("SELECT * FROM capacity_tests WHERE app = ? AND "
                                    "version = ? ORDER BY id", (app, version))
        out = []
        for r in rows:
            d = dict(r)
            d["spec"] = json.loads(d["spec"])
            d["result"] = json.loads(d["result"]) if d["result"] else None
            out.append(d)
        return out

    def describe(self, app: str) -> dict[str, Any]:
        staged = [{k: v for k, v in s.items() if k != "load_test"} for s in self.staged(app)]
        return {"app": app, "staged": staged, "capacity_tests": self.tests(app)}

    def route(self, app: str, edgepoint: str) -> dict[str, Any] | None:
        """The stage route of `app` at `edgepoint` (edge.models.StageRoute, JSON)."""
        rows = self.store.query("SELECT version, instance, address FROM staged_versions WHERE "
                                "app = ? AND edgepoint = ? AND state = 'staged'",
                                (app, edgepoint))
        if not rows or not rows[0]["address"]:
            return None
        version = rows[0]["version"]
        row = self.store.app(app)
        owner = row["owner"] if row else None
        hashes = {r.sha256 for r in self.c.tokens.records if f"owner:{owner}" in r.scopes}
        key = self.keys.get((app, version))
        if key:
            hashes.add(auth.token_hash(key))
        if not hashes:
            return None
        return {"version": version, "token_sha256": sorted(hashes),
                "servers": [{"name": rows[0]["instance"], "address": rows[0]["address"]}]}

    def gate(self, app: AppPlan) -> str | None:
        """Why a rollout of `app` must not happen (None: it may)."""
        tests = self.tests(app.name, app.version)
        if tests:
            t = tests[-1]
            reasons = "; ".join((t["result"] or {}).get("reasons", [])) or t["state"]
            if t["state"] == "running":
                return (f"{app.name} {app.version}: its capacity test is still running; "
                        "it is rolled out once it has passed")
            if t["state"] != "passed":
                return f"{app.name} {app.version} failed its capacity test: {reasons}"
            self._spawn(self._unstage_after_rollout(app.name, app.version))
            return None
        base = next((a for a in self.c.plan.apps if a.name == app.name), None)
        declared = app.load_test or (base.load_test if base else None) or self.store.query(
            "SELECT 1 FROM staged_versions WHERE app = ? AND load_test IS NOT NULL LIMIT 1",
            (app.name,))
        first = not (self.store.app(app.name) or {}).get("primary_version")
        if declared and not first:  # a first version has nothing to stage beside
            return (f"{app.name} {app.version} has not passed its capacity test: stage it "
                    "first (edgeshot deploy … --stage)")
        return None

    # ------------------------------------------------------------------ staging

    async def stage(self, app: AppPlan, *, source_dir: Path | None = None,
                    load_test: dict[str, Any] | None = None, edgepoint: str | None = None,
                    run_test: bool = True) -> dict[str, Any]:
        d = self.c.deploy
        async with d.lock(app.name):
            self.store.put_app(app.name, app.owner, app.vendor)
            if not self.store.put_version(app.name, app.version, app.model_dump_json()):
                row = self.store.version(app.name, app.version)
                if row and row["state"] != "distributed":
                    self.store.set_version(app.name, app.version, plan=app.model_dump_json())
            await d.prepare(app, source_dir)
        cur = self.store.app(app.name) or {}
        if not cur.get("primary_version"):
            raise StageError(f"{app.name} has no version serving: a staged version rides on "
                             "the app's placements, deploy a first version")
        if cur["primary_version"] == app.version:
            raise StageError(f"{app.name} {app.version} is the primary version already")
        ep = self._edgepoint(app.name, edgepoint)
        await self.unstage(app.name, reason=f"replaced by {app.version}", push=False)
        server, info = await self._start_instance(app, ep)
        key = auth.new_token()
        self.keys[(app.name, app.version)] = key
        now = time.time()
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO staged_versions (app, version, edgepoint, server, "
                       "instance, address, state, load_test, detail, created, updated) VALUES "
                       "(?, ?, ?, ?, ?, ?, 'staged', ?, NULL, ?, ?)",
                       (app.name, app.version, ep, server, info.id, info.address,
                        json.dumps(load_test) if load_test else None, now, now))
        errors = await d.push(app.name)
        if errors.get(ep):
            await self._stop(server, info.id)
            self._set_state(app.name, app.version, "failed", f"edge {ep}: {errors[ep]}")
            raise StageError(f"the edge of {ep} did not take the staged route: {errors[ep]}")
        self.store.event("staged", f"{app.name} {app.version} staged at {ep} (instance "
                         f"{info.id} on {server}); reachable only with the owner's token",
                         app=app.name, edgepoint=ep)
        if load_test and run_test:
            self.start_test(app, ep, key, load_test)
        return self.describe(app.name)

    def _edgepoint(self, app: str, wanted: str | None) -> str:
        placed = [p.edgepoint for p in self.c.plan.placements if p.app == app]
        if not placed:
            raise StageError(f"{app} is placed on no edgepoint")
        if wanted is not None:
            if wanted not in placed:
                raise StageError(f"{app} is not placed on {wanted!r} (placed on "
                                 f"{', '.join(placed)})")
            placed = [wanted]
        status = self.c.deploy.status
        for ep in placed:
            st = status.get(ep)
            if st is not None and st.healthy and (st.capacity or {}).get("mode") == "haproxy":
                return ep
        raise StageError(f"no edgepoint of {app} ({', '.join(placed)}) is healthy with HAProxy "
                         "on its data path (staging routes by token in HAProxy)")

    async def _start_instance(self, app: AppPlan, ep: str) -> tuple[str, Any]:
        servers = [s.name for s in self.c.plan.servers if s.edgepoint == ep]
        last: Exception | None = None
        for server in servers:
            agent = self.c.agents[server]
            try:
                cap = await agent.capacity()
                if cap.slots.free < 1:
                    last = StageError(f"{server} has no free instance slot")
                    continue
                info = await agent.create_instance(appshot_name(app.name, app.version),
                                                   owner=app.owner, vendor=app.vendor)
                if info.state != "running" or not info.address:
                    await self._stop(server, info.id)
                    raise StageError(f"{info.id} is {info.state} without an address")
                return server, info
            except (AgentError, StageError) as exc:
                last = exc
                log.warning("staging %s %s on %s: %s", app.name, app.version, server, exc)
        raise StageError(f"no server of {ep} could run {app.name} {app.version}: {last}")

    async def _stop(self, server: str, instance: str | None) -> None:
        agent = self.c.agents.get(server)
        if agent is None or not instance:
            return
        with contextlib.suppress(AgentError):
            await agent.stop_instance(instance)

    def _set_state(self, app: str, version: str, state: str, detail: str | None = None) -> None:
        with self.store.tx() as db:
            db.execute("UPDATE staged_versions SET state = ?, detail = ?, updated = ? WHERE "
                       "app = ? AND version = ?", (state, detail, time.time(), app, version))

    async def unstage(self, app: str, version: str | None = None, *, reason: str = "unstaged",
                      push: bool = True) -> list[str]:
        """Take the staged version(s) of `app` off the edge; returns the versions removed."""
        rows = [s for s in self.staged(app) if s["state"] == "staged"
                and (version is None or s["version"] == version)]
        for s in rows:
            for tid, t in list(self.tasks.items()):
                test = self.store.query("SELECT app, version FROM capacity_tests WHERE id = ?",
                                        (tid,))
                if test and (test[0]["app"], test[0]["version"]) == (app, s["version"]):
                    t.cancel()
            self._set_state(app, s["version"], "removed", reason)
            self.keys.pop((app, s["version"]), None)
        if rows and push:
            await self.c.deploy.push(app)
        for s in rows:
            await self._stop(s["server"], s["instance"])
            self.store.event("unstaged", f"{app} {s['version']}: {reason}", app=app,
                             edgepoint=s["edgepoint"])
        return [s["version"] for s in rows]

    async def _unstage_after_rollout(self, app: str, version: str) -> None:
        await asyncio.sleep(0)
        async with self.c.deploy.lock(app):
            pass  # the rollout that asked the gate holds the lock until it is done
        cur = self.store.app(app) or {}
        if version in (cur.get("primary_version"), cur.get("canary_version")):
            await self.unstage(app, version, reason="rolled out")

    # ------------------------------------------------------------------ capacity tests

    def start_test(self, app: AppPlan, ep: str, key: str, load_test: dict[str, Any]) -> int:
        placement = next(p for p in self.c.plan.placements
                         if p.app == app.name and p.edgepoint == ep)
        spec = _capacity.LoadSpec.of(load_test, placement.scaling)
        with self.store.tx() as db:
            cur = db.execute("INSERT INTO capacity_tests (app, version, edgepoint, state, spec, "
                             "started) VALUES (?, ?, ?, 'running', ?, ?)",
                             (app.name, app.version, ep,
                              json.dumps(_capacity.spec_json(spec)), time.time()))
            test_id = int(cur.lastrowid or 0)
        self.store.event("capacity-test", f"{app.name} {app.version}: load test started at "
                         f"{ep} ({spec.users} users, {spec.duration_s:g} s)", app=app.name,
                         edgepoint=ep)
        self.tasks[test_id] = self._spawn(self._run_test(test_id, app, ep, key, spec))
        return test_id

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        return t

    async def _run_test(self, test_id: int, app: AppPlan, ep: str, key: str,
                        spec: _capacity.LoadSpec) -> None:
        from ._controller import edge_public
        url = "http://" + edge_public(self.c.plan, ep)
        host = app.hosts[0] if app.hosts else None
        work = self.c.state_dir / "capacity" / f"{test_id}-{app.name}-{app.version}"
        try:
            hop_file = self.c.config.dispatcher.hop_token_file
            res = await _capacity.run(url, host, key, spec, work,
                                      hop=auth.read_secret(hop_file) if hop_file else None)
            state, result = ("passed" if res.passed else "failed"), res.to_json()
        except asyncio.CancelledError:
            state, result = "error", {"reasons": ["stopped: the version was unstaged"]}
        except Exception as exc:
            log.exception("capacity test %d failed to run", test_id)
            state, result = "error", {"reasons": [f"the test did not run: {exc}"]}
        finally:
            self.tasks.pop(test_id, None)
        with self.store.tx() as db:
            db.execute("UPDATE capacity_tests SET state = ?, result = ?, finished = ? WHERE "
                       "id = ?", (state, json.dumps(result), time.time(), test_id))
        self.store.event(f"capacity-{state}",
                         f"{app.name} {app.version}: " + "; ".join(result.get("reasons", [])),
                         app=app.name, edgepoint=ep, data={
                             "users_per_instance": result.get("users_per_instance")})

    async def stop(self) -> None:
        for t in list(self.tasks.values()):
            t.cancel()
        for t in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


# ---------------------------------------------------------------------- API

STAGING_KEY = web.AppKey("staging", Staging)


def _staging(request: web.Request) -> Staging:
    return request.app[STAGING_KEY]


def _owned(request: web.Request, app: str) -> web.Response | None:
    return owned(_staging(request).store, request["principal"], app)


@requires(OPERATOR, "owner:*")
async def post_stage(request: web.Request) -> web.Response:
    s = _staging(request)
    p: auth.Principal = request["principal"]
    name = request.match_info["app"]
    body = await body_of(request, StageRequest)
    if isinstance(body, web.Response):
        return body
    plan = requested_plan(s.c, p, name, body.plan, body.version, "stage")
    if isinstance(plan, web.Response):
        return plan
    if body.source_dir and not p.is_operator:
        return _err(403, "forbidden", "only operators may name a source directory")
    if body.load_test is not None:
        from edgeshot.spec import LoadTest
        try:
            LoadTest.model_validate(body.load_test)
        except (ValidationError, ValueError) as exc:
            return _err(422, "invalid", f"load_test: {exc}")
    try:
        res = await s.stage(plan, source_dir=Path(body.source_dir) if body.source_dir else None,
                            load_test=body.load_test, edgepoint=body.edgepoint,
                            run_test=body.run_test)
    except (StageError, DeployError) as exc:
        return _err(409, "stage_failed", str(exc))
    return web.json_response(res, status=202)


@requires(OPERATOR, "owner:*")
async def get_stage(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    if (err := _owned(request, name)) is not None:
        return err
    return web.json_response(_staging(request).describe(name))


@requires(OPERATOR, "owner:*")
async def delete_stage(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    if (err := _owned(request, name)) is not None:
        return err
    removed = await _staging(request).unstage(name, request.query.get("version"),
                                              reason="unstaged by request")
    return web.json_response({"app": name, "removed": removed})


def mount_staging(app: web.Application, controller: Any) -> Staging:
    """Staging's hooks in the deployment center and its API routes."""
    s = Staging(controller)
    app[STAGING_KEY] = s
    app.router.add_post("/v1/apps/{app}/stage", post_stage)
    app.router.add_get("/v1/apps/{app}/stage", get_stage)
    app.router.add_delete("/v1/apps/{app}/stage", delete_stage)

    async def stop(_app: web.Application) -> None:
        await s.stop()

    app.on_shutdown.append(stop)
    return s


# ---------------------------------------------------------------------- CLI


def stage_command(client: Any, app: str, *, version: str | None, plan: dict[str, Any] | None,
                  source_dir: str | None, load_test: dict[str, Any] | None, wait: bool,
                  out: Any) -> int:
    """`edgeshot deploy … --stage`: stage, then follow the capacity test (exit status 0
    when it passed or none was declared, 3 when it failed)."""
    from rich.markup import escape

    from .client import ControllerError

    async def go() -> int:
        async with client:
            with out.status(f"staging {app}: capture, distribute, start one instance…"):
                res = await client.stage(app, version=version, plan=plan,
                                         source_dir=source_dir, load_test=load_test)
            staged = [s for s in res["staged"] if s["state"] == "staged"]
            for s in staged:
                out.print(escape(f"staged: {app} {s['version']} at {s['edgepoint']} — only "
                                 "requests with your token in X-Edgeshot-Stage reach it"),
                          highlight=False)
            v = staged[-1]["version"] if staged else version
            if not load_test:
                out.print("no load test declared: nothing stands between it and a rollout",
                          highlight=False)
                return 0
            if not wait:
                return 0
            with out.status(f"capacity test of {app} {v} ({load_test['users']} users, "
                            f"{load_test['duration_s']} s)…"):
                while True:
                    tests = [t for t in (await client.staging(app))["capacity_tests"]
                             if t["version"] == v]
                    if tests and tests[-1]["state"] != "running":
                        break
                    await asyncio.sleep(1.0)
            t = tests[-1]
            r = t["result"] or {}
            for p in r.get("curve", []):
                ms = "—" if p["p_ms"] is None else f"{p['p_ms']:.0f} ms"
                out.print(f"  {p['users']:>4} users  p{r.get('percentile', 95):g} {ms:>8}  "
                          f"{p['rps']:7.1f} req/s  errors {p['error_rate']:.1%}",
                          highlight=False)
            color = "green" if t["state"] == "passed" else "red"
            out.print(f"[{color}]{t['state']}[/]: " + escape("; ".join(r.get("reasons", []))),
                      highlight=False)
            return 0 if t["state"] == "passed" else 3

    try:
        return asyncio.run(go())
    except ControllerError as exc:
        out.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return 1


# ---------------------------------------------------------------------- the demo

SLOW_WEB = '''"""The shop's web tier, slowed down: every /catalog takes {delay_ms} ms more (a version
that must not reach the public: its load test fails at staging)."""
import time

import web

_catalog = web.Handler.catalog


def catalog(self):
    time.sleep({delay_s})
    _catalog(self)


web.Handler.catalog = catalog

if __name__ == "__main__":
    web.main()
'''


async def demo_stage_step(ctl: Any, app: AppPlan, spec: Any, workdir: Path,
                          say: Any = print, delay_ms: int = 300,
                          duration_s: int = 15) -> tuple[str, bool, str, bool]:
    """`edgeshot demo`'s staging step: a slowed-down version of the app is staged, its
    declared load test (shortened to `duration_s`) fails, and the rollout is refused.
    Returns a check: (name, ok, detail, gating)."""
    import shutil

    from .client import ControllerError

    name = "a slow version is stopped at staging"
    declared = spec.application(app.name).load_test
    src = (Path(spec.base_dir) / app.source).resolve()
    entry = next((t for t in app.tiers if t.entry), app.tiers[0])
    if declared is None or not (src / "web.py").exists() or entry.command[-1] != "web.py":
        return name, False, f"{app.name} declares no load test (or has no web.py)", False
    dest = workdir / f"{app.name}-slow"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "slow_web.py").write_text(SLOW_WEB.format(delay_ms=delay_ms,
                                                      delay_s=delay_ms / 1000))
    tiers = tuple(t.model_copy(update={"command": (*t.command[:-1], "slow_web.py")})
                  if t is entry else t for t in app.tiers)
    slow = app.model_copy(update={"version": f"{app.version}-slow", "tiers": tiers})
    lt = declared.model_copy(update={"duration_s": min(declared.duration_s, duration_s)})
    try:
        say(f"  staging {slow.version} (every /catalog {delay_ms} ms slower) and running its "
            f"load test ({lt.users} users, {lt.duration_s} s)…")
        await ctl.stage(app.name, plan=slow.model_dump(mode="json"), source_dir=str(dest),
                        load_test=lt.model_dump(mode="json"))
        deadline = time.monotonic() + lt.duration_s + 120
        test = None
        while time.monotonic() < deadline:
            tests = [t for t in (await ctl.staging(app.name))["capacity_tests"]
                     if t["version"] == slow.version]
            if tests and tests[-1]["state"] != "running":
                test = tests[-1]
                break
            await asyncio.sleep(1.0)
        if test is None:
            return name, False, f"{slow.version}: the load test did not end in time", True
        reasons = "; ".join((test["result"] or {}).get("reasons", []))
        try:
            await ctl.deploy(app.name, version=slow.version)
            refused = None
        except ControllerError as exc:
            refused = str(exc)
        ok = test["state"] == "failed" and refused is not None
        detail = (f"{slow.version}: load test {test['state']} ({reasons}); rollout "
                  + (f"refused: {refused}" if refused else "NOT refused"))
        say(f"  {detail}")
        return name, ok, detail, True
    except ControllerError as exc:
        return name, False, f"staging {slow.version} failed: {exc}", True
    finally:
        with contextlib.suppress(Exception):
            await ctl.unstage(app.name)
