"""The deployment center: capture once, distribute, roll out with a canary, roll back.

* **Capture** an app version once, on one agent of an edgepoint it is placed on
  (the agent starts it from its source, warms it up, dumps it into a signed
  appshot).
* **Distribute** it to every server of the edgepoints the distribution policy
  names: the other agents trust the capturing agent's signing key, receive the
  packed appshot (resumable upload) and verify it on arrival (signature, every
  checksum). The previous version's appshot stays where it is.
* **Roll out**: the edges get the new version with a traffic weight (the canary
  share); every interval the canary's figures are compared with the SLA
  (`canary.analyse`); it is promoted, or rolled back after N failed checks.
* **Roll back**: the primary's weight goes back to 100% (or the previous version
  becomes the primary again), which is one call per edgepoint: no capture, no
  upload, the appshot is already on every server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshot.agent.client import AgentClient, AgentError, NotFound
from edgeshot.agent.models import PodSpec, TierSpec, WarmupRequest
from edgeshot.plan import AppPlan, Placement, Plan, divide

from ._canary import Action, CanaryPolicy, CanaryState, Figures, Phase, analyse
from ._edges import (
    EdgeLink,
    EdgeStatus,
    PlacementOrder,
    PlacementRefused,
    VersionFigures,
    VersionOrder,
)
from ._store import Store

log = logging.getLogger("edgeshot.deploy")


class DeployError(Exception):
    pass


def pod_spec(app: AppPlan, base_dir: Path, source_dir: Path | None = None) -> PodSpec:
    """What an agent needs to start (and capture) an app version, from its plan."""
    tiers = tuple(
        TierSpec(name=t.name, command=tuple(t.command), port=t.port, env=dict(t.env),
                 entry=t.entry, health_path=t.health_path,
                 health_timeout_s=t.health_timeout_s or 2.0,
                 start_timeout_s=t.start_timeout_s or 30.0, cpu=t.cpu, memory_mb=t.memory_mb,
                 reseed_signal=t.reseed_signal)
        for t in app.tiers)
    warmup = tuple(WarmupRequest(**w) for w in app.warmup)  # type: ignore[arg-type]
    src = source_dir or (Path(base_dir) / app.source)
    return PodSpec(app=app.name, version=app.version, owner=app.owner, vendor=app.vendor,
                   source_dir=Path(src).resolve(), tiers=tiers, warmup=warmup)


def appshot_name(app: str, version: str) -> str:
    return f"{app}-{version}"


@dataclass(frozen=True)
class StartDecision:
    """What `up` does with an app's planned version, given what the store remembers."""

    action: str  # capture | retry | recapture | resume | serve | stale
    message: str | None  # said to the user (an event of kind "start"); None: nothing new
    replace_plan: bool = False  # the stored plan (and what was made from it) is out of date


def start_decision(app: str, version: str, plan_json: str, stored: dict[str, Any] | None,
                   app_row: dict[str, Any] | None) -> StartDecision:
    """Decide how `up` starts ``app`` ``version`` (its plan ``plan_json``) from the stored
    version row (``versions``) and app row (``apps``) of earlier runs. A failed or
    unfinished start is retried; a changed policy replaces what was made from the old one
    (a version that already serves keeps its appshot: versions are immutable). Pure."""
    what = f"{app} {version}"
    primary = (app_row or {}).get("primary_version")
    same = stored is None or json.loads(stored["plan"]) == json.loads(plan_json)
    if primary == version:
        if same:
            return StartDecision("serve", None)
        return StartDecision("stale", f"{what}: the policy changed but the version did not; "
                             "the network keeps serving the appshot captured before: give the "
                             "app a new version and `edgeshot deploy` it")
    if primary is not None:
        return StartDecision("serve", f"{app} keeps serving {primary}; roll {version} out "
                             "with `edgeshot deploy`")
    if stored is None:
        return StartDecision("capture", f"{what}: capturing")
    earlier = "failed" if stored["state"] == "failed" else "unfinished"
    if not same:
        return StartDecision("recapture", f"{what}: policy changed since the {earlier} capture "
                             "— capturing again", replace_plan=True)
    if earlier == "failed":
        return StartDecision("retry", f"{what}: retrying the failed capture")
    return StartDecision("resume", f"{what}: resuming the unfinished start")


class DeploymentCenter:
    def __init__(self, store: Store, plan: Plan, base_dir: Path, cache_dir: Path,
                 agents: dict[str, AgentClient], edges: dict[str, EdgeLink],
                 policy: CanaryPolicy, interval_s: float) -> None:
        self.store = store
        self.plan = plan
        self.base_dir = Path(base_dir)
        self.cache = Path(cache_dir)
        self.agents = agents
        self.edges = edges
        self.policy = policy
        self.interval_s = interval_s
        self.servers = {s.name: s for s in plan.servers}
        self.placements: dict[str, list[Placement]] = {}
        for p in plan.placements:
            self.placements.setdefault(p.app, []).append(p)
        self.status: dict[str, EdgeStatus] = {}  # the latest report of each edge process
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_check: dict[int, float] = {}
        self._trusted: set[tuple[str, str]] = set()  # (server, signer) pairs set up
        self.refused: dict[str, frozenset[str]] = {}  # per edgepoint: placements it refused
        # the cost ceiling sent with a placement: the plan's, until metering follows budgets
        self.ceiling: Callable[[Placement], int] = lambda p: p.cost_ceiling
        # staging (control/_staging.py): a staged version's route per (app, edgepoint), and
        # the gate that refuses to roll out a version that failed its capacity test
        self.stage_route: Callable[[str, str], dict[str, Any] | None] = lambda app, ep: None
        self.gate: Callable[[AppPlan], str | None] = lambda app: None

    def lock(self, app: str) -> asyncio.Lock:
        return self._locks.setdefault(app, asyncio.Lock())

    # ------------------------------------------------------------------ the plan

    def register_plan(self) -> dict[str, StartDecision]:
        """Apps and their planned versions into the store; per app, how `up` starts it
        (``start_decision``). A version whose policy changed since a failed or unfinished
        start gets the new plan here; ``start_app`` removes what the old one left."""
        out = {}
        for app in self.plan.apps:
            plan_json = app.model_dump_json()
            decision = start_decision(app.name, app.version, plan_json,
                                      self.store.version(app.name, app.version),
                                      self.store.app(app.name))
            self.store.put_app(app.name, app.owner, app.vendor)
            if not self.store.put_version(app.name, app.version, plan_json) \
                    and decision.replace_plan:
                self.store.set_version(app.name, app.version, plan=plan_json, state="stale",
                                       detail="policy changed", appshot=None)
            out[app.name] = decision
        return out

    async def forget(self, app: AppPlan) -> None:
        """Remove what an out-of-date plan of ``app``'s version left (appshots on the
        agents, partial uploads, the controller's tarball), so that nothing captured from
        it is taken for the new one; the version is then planned afresh."""
        name = appshot_name(app.name, app.version)

        async def one(server: str) -> None:
            agent = self.agents[server]
            try:
                with contextlib.suppress(NotFound):  # no partial upload there
                    await agent.abort_upload(name)
                with contextlib.suppress(NotFound):  # none there: nothing to remove
                    await agent.delete_appshot(name)
            except AgentError as exc:
                raise DeployError(f"{name} from the earlier policy could not be removed "
                                  f"from {server}: {exc}") from exc

        await asyncio.gather(*(one(s) for s in self.servers_of(app.name)))
        for path in (self.cache / f"{name}.tar", self.cache / f"{name}.tar.part"):
            path.unlink(missing_ok=True)
        for d in self.store.distributions(app.name, app.version):
            self.store.set_distribution(app.name, app.version, d["server"], "deleted",
                                        "policy changed")
        self.store.set_version(app.name, app.version, state="planned", detail=None)

    def app_plan(self, app: str, version: str) -> AppPlan:
        row = self.store.version(app, version)
        if row is None:
            raise DeployError(f"{app} has no version {version!r}")
        return AppPlan.model_validate_json(row["plan"])

    def servers_of(self, app: str) -> list[str]:
        """Every server of the edgepoints the app is placed on, edge hosts first."""
        eps = [p.edgepoint for p in self.placements.get(app, [])]
        out = []
        for ep in eps:
            out += [s.name for s in self.plan.servers if s.edgepoint == ep]
        return out

    # ------------------------------------------------------------------ capture, distribute

    async def prepare(self, app: AppPlan, source_dir: Path | None = None,
                      progress: Any = None) -> str:
        """Capture the version once and put its appshot on every server that needs it."""
        name = appshot_name(app.name, app.version)
        row = self.store.version(app.name, app.version)
        if row is not None and row["state"] == "stale":  # made from an earlier plan
            await self.forget(app)
            row = self.store.version(app.name, app.version)
        targets = self.servers_of(app.name)
        done = {d["server"] for d in self.store.distributions(app.name, app.version)
                if d["state"] == "verified"}
        if row and row["state"] == "distributed" and set(targets) <= done:
            return name
        if not targets:
            raise DeployError(f"{app.name} is placed on no edgepoint")
        spec = pod_spec(app, self.base_dir, source_dir)
        if not spec.source_dir.exists():
            raise DeployError(f"{app.name} {app.version}: source {spec.source_dir} not found")
        origin = await self._capture(app, spec, name, targets, done)
        await self._distribute(app, name, origin, [t for t in targets if t != origin], done)
        self.store.set_version(app.name, app.version, appshot=name, state="distributed",
                               detail=None)
        self.store.event("distributed", f"{name} on {len(targets)} server(s)", app=app.name)
        return name

    async def _capture(self, app: AppPlan, spec: PodSpec, name: str, targets: list[str],
                       done: set[str]) -> str:
        for server in targets:  # a server that has it already is the origin
            if server in done:
                return server
        last: Exception | None = None
        for server in targets:
            agent = self.agents[server]
            try:
                existing = await agent.get_appshot(name)
            except AgentError:
                existing = None
            try:
                if existing is None:
                    t0 = time.monotonic()
                    res = await agent.capture(spec, name=name)
                    self.store.event(
                        "captured", f"{name} captured on {server} in "
                        f"{time.monotonic() - t0:.1f} s ({res.appshot.size_bytes >> 20} MiB, "
                        f"{'CRIU images' if res.appshot.restorable else 'cold start only'})",
                        app=app.name, data={"server": server,
                                            "restorable": res.appshot.restorable})
                self.store.set_version(app.name, app.version, appshot=name, state="captured")
                self.store.set_distribution(app.name, app.version, server, "verified")
                done.add(server)
                return server
            except AgentError as exc:
                last = exc
                log.warning("capture of %s on %s failed: %s", name, server, exc)
                self.store.event("capture-failed", f"{name} on {server}: {exc}", app=app.name)
        self.store.set_version(app.name, app.version, state="failed", detail=str(last))
        raise DeployError(f"capture of {name} failed everywhere: {last}")

    async def _distribute(self, app: AppPlan, name: str, origin: str, targets: list[str],
                          done: set[str]) -> None:
        todo = [t for t in targets if t not in done]
        if not todo:
            return
        src = self.agents[origin]
        signer, pem = await src.signing_key()
        self.cache.mkdir(parents=True, exist_ok=True)
        tarball = self.cache / f"{name}.tar"
        if not tarball.exists():
            await src.download_appshot(name, tarball)

        async def one(server: str) -> None:
            agent = self.agents[server]
            try:
                if (server, signer) not in self._trusted:
                    await agent.trust_key(pem)
                    self._trusted.add((server, signer))
                try:
                    await agent.get_appshot(name)
                except AgentError:
                    await agent.upload_appshot(tarball, name)
                await agent.verify_appshot(name)  # verified on arrival, and once more here
                self.store.set_distribution(app.name, app.version, server, "verified")
            except AgentError as exc:
                self.store.set_distribution(app.name, app.version, server, "failed", str(exc))
                raise DeployError(f"{name} to {server}: {exc}") from exc

        await asyncio.gather(*(one(s) for s in todo))
        tarball.unlink(missing_ok=True)

    # ------------------------------------------------------------------ what edges serve

    def orders(self, edgepoint: str) -> list[PlacementOrder]:
        """Every placement the edge process of `edgepoint` serves, as it should now."""
        out = []
        healthy = {name for name, st in self.status.items() if st.healthy}
        for app_row in self.store.apps():
            app = app_row["name"]
            placed = self.placements.get(app, [])
            mine = [p for p in placed if p.edgepoint == edgepoint]
            if not mine or not app_row["primary_version"]:
                continue
            shares = self._shares(placed, healthy)
            versions = self._versions(app_row)
            # A canary runs beside the primary (as Flagger's canary deployment does): one
            # instance more than the primary's limits allow, and at least one instance per
            # version while it lasts, so that it gets its share of the traffic even where
            # the load asks for a single instance.
            extra = 1 if app_row["canary_version"] else 0
            for p in mine:
                placement = p.model_dump(mode="json")
                if extra:
                    scaling = placement["scaling"]
                    scaling["min"] = max(scaling["min"], len(versions))
                    scaling["max"] = max(scaling["max"] + extra, scaling["min"])
                out.append(PlacementOrder(
                    id=p.id, app=app, edgepoint=edgepoint,
                    global_share=shares[p.edgepoint] + extra if shares[p.edgepoint] else 0,
                    cost_ceiling=self.ceiling(p) + extra, versions=versions,
                    placement=placement, stage=self.stage_route(app, edgepoint)))
        return out

    def _versions(self, app_row: dict[str, Any]) -> tuple[VersionOrder, ...]:
        app, primary = app_row["name"], app_row["primary_version"]
        canary, weight = app_row["canary_version"], app_row["canary_weight"] or 0
        out = []
        for version, w in ((primary, 100 - (weight if canary else 0)),
                           (canary, weight if canary else 0)):
            if version is None:
                continue
            row = self.store.version(app, version)
            out.append(VersionOrder(version=version, appshot=appshot_name(app, version),
                                    weight=w, plan=json.loads(row["plan"]) if row else {}))
        return tuple(out)

    def _shares(self, placed: list[Placement], healthy: set[str]) -> dict[str, int]:
        """The app's global maximum divided among its healthy placements (a failed
        edgepoint's share goes to the others); unknown health counts as healthy."""
        total = sum(p.global_share for p in placed)
        known = set(self.status)
        up = [p for p in placed if p.edgepoint in healthy or p.edgepoint not in known]
        if not up or len(up) == len(placed):
            return {p.edgepoint: p.global_share for p in placed}
        shares = divide(total, [p.scaling.min for p in up], [p.scaling.max for p in up])
        out = {p.edgepoint: 0 for p in placed}
        out.update({p.edgepoint: s for p, s in zip(up, shares, strict=True)})
        return out

    async def push(self, app: str | None = None) -> dict[str, str | None]:
        """Send the orders to the edge processes (of `app`'s edgepoints, or all)."""
        eps = ([p.edgepoint for p in self.placements.get(app, [])] if app
               else [e.name for e in self.plan.edgepoints])
        return dict(await asyncio.gather(*(self._push_one(ep) for ep in eps)))

    async def push_edgepoint(self, edgepoint: str) -> str | None:
        return (await self._push_one(edgepoint))[1]

    async def _push_one(self, ep: str) -> tuple[str, str | None]:
        link = self.edges.get(ep)
        if link is None:
            return ep, "no edge process"
        try:
            await link.set_placements(self.orders(ep))
            self.refused.pop(ep, None)
            return ep, None
        except PlacementRefused as exc:
            self.refused[ep] = exc.ids
            log.warning("%s refused placements: %s", ep, exc)
            return ep, f"refused: {exc}"
        except Exception as exc:  # an edge down must not stop the others
            log.warning("placements to %s failed: %s", ep, exc)
            return ep, str(exc) or type(exc).__name__

    # ------------------------------------------------------------------ deploy, rollback

    async def start_app(self, app: AppPlan, source_dir: Path | None = None) -> None:
        """First version of an app: prepare it and make it the primary."""
        async with self.lock(app.name):
            await self.prepare(app, source_dir)
            self.store.set_app(app.name, primary_version=app.version, canary_version=None,
                               canary_weight=0)
            dep = self.store.start_deployment(app.name, "initial", None, app.version, 100)
            self.store.update_deployment(dep, phase="promoted", weight=100, good=0, failed=0,
                                         checks=0, reasons=["first version"])
            self.store.event("started", f"{app.name} {app.version} serving", app=app.name)
        await self.push(app.name)

    async def deploy(self, app: AppPlan, canary: int | None, source_dir: Path | None = None,
                     policy: CanaryPolicy | None = None, override: str | None = None) -> int:
        """Roll out `app` (a new or known version). With `canary` (percent), the analysis
        decides; without, the version becomes the primary at once. ``override``: an
        operator's reason to roll out past the gate (logged)."""
        async with self.lock(app.name):
            if (refused := self.gate(app)) is not None:
                if override is None:
                    self.store.event("deploy-refused", f"{app.name} {app.version}: {refused}",
                                     app=app.name)
                    raise DeployError(refused)
                log.warning("gate overridden for %s %s: %s (refused: %s)", app.name,
                            app.version, override, refused)
                self.store.event("gate-overridden", f"{app.name} {app.version}: {override} "
                                 f"(the gate said: {refused})", app=app.name,
                                 data={"reason": override, "refused": refused})
            self.store.put_app(app.name, app.owner, app.vendor)
            if not self.store.put_version(app.name, app.version, app.model_dump_json()):
                row = self.store.version(app.name, app.version)
                if row and row["state"] != "distributed" \
                        and json.loads(row["plan"]) != json.loads(app.model_dump_json()):
                    self.store.set_version(app.name, app.version, plan=app.model_dump_json(),
                                           state="stale", detail="plan changed")
            await self.prepare(app, source_dir)
            cur = self.store.app(app.name) or {}
            primary = cur.get("primary_version")
            if primary == app.version and not cur.get("canary_version"):
                raise DeployError(f"{app.name} {app.version} is already the primary version")
            pol = policy or self.policy
            if primary is None or not canary:
                dep = self.store.start_deployment(app.name, "direct", primary, app.version, 100)
                self.store.set_app(app.name, primary_version=app.version,
                                   previous_version=primary, canary_version=None,
                                   canary_weight=0)
                self.store.update_deployment(dep, phase="promoted", weight=100, good=0,
                                             failed=0, checks=0, reasons=["no canary"])
                self.store.event("promoted", f"{app.name} {app.version} (no canary)",
                                 app=app.name)
            else:
                weight = max(1, min(99, int(canary)))
                dep = self.store.start_deployment(app.name, "canary", primary, app.version,
                                                  weight, asdict(pol))
                self.store.set_app(app.name, canary_version=app.version, canary_weight=weight)
                self.store.event("canary", f"{app.name} {app.version} gets {weight}% "
                                 f"(primary {primary})", app=app.name)
                self._last_check[dep] = time.monotonic()
            before = {k: cur.get(k) for k in ("primary_version", "previous_version",
                                              "canary_version", "canary_weight")}
        await self.push(app.name)
        refused = {ep: ids for ep, ids in self.refused.items()
                   if any(i.startswith(f"{app.name}/") for i in ids)}
        if refused:  # the old version keeps serving: back to it everywhere
            eps = ", ".join(sorted(refused))
            async with self.lock(app.name):
                self.store.set_app(app.name, **before)
                self.store.update_deployment(dep, phase="rolled_back", weight=0, good=0,
                                             failed=0, checks=0,
                                             reasons=[f"refused by edgepoint(s) {eps}"])
                self.store.event("deploy-refused", f"{app.name} {app.version}: edgepoint(s) "
                                 f"{eps} refused its placements", app=app.name)
            await self.push(app.name)
            raise DeployError(f"{app.name} {app.version}: edgepoint(s) {eps} refused its "
                              "placements; the previous version keeps serving")
        return dep

    async def rollback(self, app: str) -> dict[str, Any]:
        """All traffic back to the version before: abort a canary, or make the previous
        version the primary again. No capture, no upload."""
        t0 = time.monotonic()
        async with self.lock(app):
            cur = self.store.app(app)
            if cur is None:
                raise DeployError(f"no application {app!r}")
            active = self.store.active_deployment(app)
            if cur["canary_version"]:
                to, gone = cur["primary_version"], cur["canary_version"]
                self.store.set_app(app, canary_version=None, canary_weight=0)
                if active:
                    self.store.update_deployment(active["id"], phase="rolled_back", weight=0,
                                                 good=active["good"], failed=active["failed"],
                                                 checks=active["checks"],
                                                 reasons=["rolled back by request"])
            else:
                to, gone = cur["previous_version"], cur["primary_version"]
                if not to:
                    raise DeployError(f"{app} has no previous version to roll back to")
                row = self.store.version(app, to)
                if not row or row["state"] != "distributed":
                    raise DeployError(f"{app} {to} is not on the servers any more")
                dep = self.store.start_deployment(app, "rollback", gone, to, 100)
                self.store.set_app(app, primary_version=to, previous_version=gone)
                self.store.update_deployment(dep, phase="promoted", weight=100, good=0,
                                             failed=0, checks=0, reasons=["rollback"])
        errors = await self.push(app)
        took = time.monotonic() - t0
        self.store.event("rollback", f"{app}: {gone} -> {to} in {took * 1000:.0f} ms",
                         app=app, data={"from": gone, "to": to, "seconds": took})
        return {"app": app, "from": gone, "to": to, "seconds": took,
                "edges": {ep: e or "ok" for ep, e in errors.items()}}

    # ------------------------------------------------------------------ canary analysis

    def figures(self, app: str) -> dict[str, VersionFigures]:
        """Per version, summed over the app's edgepoints (latency: request-weighted)."""
        acc: dict[str, list[float]] = {}
        for st in self.status.values():
            for p in st.placements.values():
                if p.app != app:
                    continue
                for v, f in p.versions.items():
                    a = acc.setdefault(v, [0, 0, 0.0, 0.0, 0])
                    a[0] += f.requests
                    a[1] += f.errors
                    if f.latency_ms is not None:
                        a[2] += f.latency_ms * max(1, f.requests)
                        a[3] += max(1, f.requests)
                    a[4] += f.ready
        return {v: VersionFigures(int(a[0]), int(a[1]), a[2] / a[3] if a[3] else None, int(a[4]))
                for v, a in acc.items()}

    async def check_canaries(self, now: float | None = None) -> list[tuple[str, Action]]:
        """One analysis step for every canary whose interval has passed."""
        now = time.monotonic() if now is None else now
        done = []
        for app_row in self.store.apps():
            app = app_row["name"]
            dep = self.store.active_deployment(app)
            if dep is None or dep["kind"] != "canary" or not app_row["canary_version"]:
                continue
            last = self._last_check.setdefault(dep["id"], now)
            if now - last < self.interval_s:
                continue
            self._last_check[dep["id"]] = now
            action = await self._check(app_row, dep)
            if action is not None:
                done.append((app, action))
        return done

    async def _check(self, app_row: dict[str, Any], dep: dict[str, Any]) -> Action | None:
        app = app_row["name"]
        figs = self.figures(app)  # the edges' recent window

        def window(version: str | None) -> Figures | None:
            f = figs.get(version) if version else None
            return Figures(f.requests, f.errors, f.latency_ms) if f is not None else None

        canary = window(dep["to_version"]) or Figures(0, 0, None)
        primary = window(dep["from_version"])
        pol = CanaryPolicy(**dep["policy"]) if dep.get("policy") else self.policy
        state = CanaryState(weight=dep["weight"], phase=Phase.progressing, good=dep["good"],
                            failed=dep["failed"], checks=dep["checks"])
        verdict = analyse(state, canary, primary, pol)
        async with self.lock(app):
            cur = self.store.active_deployment(app)
            if cur is None or cur["id"] != dep["id"]:
                return None  # superseded or rolled back meanwhile
            st = verdict.state
            self.store.update_deployment(dep["id"], phase=st.phase.value, weight=st.weight,
                                         good=st.good, failed=st.failed, checks=st.checks,
                                         reasons=list(verdict.reasons))
            text = "; ".join(verdict.reasons)
            if verdict.action is Action.rollback:
                self.store.set_app(app, canary_version=None, canary_weight=0)
                self.store.event("canary-rolled-back", f"{app} {dep['to_version']}: {text}",
                                 app=app, data={"reasons": list(verdict.reasons)})
            elif verdict.action is Action.promote:
                self.store.set_app(app, primary_version=dep["to_version"],
                                   previous_version=dep["from_version"], canary_version=None,
                                   canary_weight=0)
                self.store.event("promoted", f"{app} {dep['to_version']}: {text}", app=app)
            elif verdict.action is Action.advance:
                self.store.set_app(app, canary_weight=st.weight)
                self.store.event("canary", f"{app} {dep['to_version']}: {text}", app=app)
            else:
                self.store.event("canary-check", f"{app} {dep['to_version']}: {text}", app=app,
                                 data={"action": verdict.action.value,
                                       "requests": canary.requests, "errors": canary.errors,
                                       "latency_ms": canary.latency_ms})
        if verdict.action in (Action.rollback, Action.promote, Action.advance):
            await self.push(app)
        return verdict.action
