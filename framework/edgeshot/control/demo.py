"""edgeshot.control.demo: `edgeshot demo`, the whole system in a couple of minutes.

On this machine: the shop's local network comes up (agents, one edge process per
edgepoint, the controller, the global dispatcher, the shop's origin); synthetic
users from the edgepoints' regions ramp up (locust, in a child process); each
region is routed to its nearest edgepoint, where instances are restored on
demand; a deliberately broken version (its /catalog fails one time in two) is
rolled out as a canary and rolled back by the analysis, by itself; the users
leave and the instances are snapshotted away (scale to zero); the network goes
down and nothing is left behind. The demo checks each of these and says which
held.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from edgeshot.plan import AppPlan
from edgeshot.spec import Spec, load

from ._config import CanarySection
from ._localnet import LocalNetwork, NetworkError
from .client import ControllerClient, ControllerError, start_failures

BROKEN_WEB = '''"""The shop's web tier with the bug this demo's canary ships.

It hides from the warm-up before capture (and from the agent's health checks): for
real users, whose requests came through the global dispatcher (it sets
X-Edgeshot-Region), /catalog fails one time in two.
"""
import random

import web

_catalog = web.Handler.catalog


def catalog(self):
    if self.headers.get("X-Edgeshot-Region") and random.random() < {fail}:
        self.send_json(500, {{"error": "broken build: the catalog is lost"}})
        return
    _catalog(self)


web.Handler.catalog = catalog

if __name__ == "__main__":
    web.main()
'''


@dataclass
class DemoOptions:
    policy: Path
    state_dir: Path
    duration: float = 120.0
    interactive: bool = True
    users: int = 30
    canary: int = 20  # percent of traffic on the broken version
    fail_rate: float = 0.5
    keep: bool = False  # leave the network up at the end (for a look around)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    gating: bool = True


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.gating)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [vars(c) for c in self.checks], "figures": self.figures}


def demo_spec(spec: Spec, idle_s: int = 3) -> Spec:
    """The policy as declared, with idle times short enough to see scale to zero."""
    apps = tuple(a.model_copy(update={"sla": a.sla.model_copy(update={"idle_s": min(a.sla.idle_s, idle_s)})})
                 for a in spec.applications)
    return spec.model_copy(update={"applications": apps})


class LoadProcess:
    """The locust child process (`_load.py`) and its snapshot file."""

    def __init__(self, state: Path, url: str, host: str | None, regions: list[str],
                 paths: list[dict[str, Any]]) -> None:
        self.dir = state / "load"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = self.dir / "snapshot.json"
        self.control = self.dir / "control"
        self.control.write_text("")
        cfg = {"url": url, "host_header": host, "regions": {r: 1 for r in regions},
               "paths": paths, "out": str(self.out), "control": str(self.control),
               "window_s": 5, "wait_min": 0.2, "wait_max": 0.6}
        (self.dir / "config.json").write_text(json.dumps(cfg))
        self.log = open(self.dir / "locust.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeshot.control._load", str(self.dir / "config.json")],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "ready" not in line:
            raise NetworkError(f"the load generator did not start; see {self.dir / 'locust.log'}")

    def users(self, n: int, rate: float) -> None:
        self.control.write_text(f"users {n} {rate}")

    def snapshot(self) -> dict[str, Any]:
        try:
            return json.loads(self.out.read_text())
        except (FileNotFoundError, ValueError):
            return {"regions": {}, "users": 0}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.control.write_text("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Origin:
    """The provider's origin site for the demo (the shop's checkout), when the policy has one."""

    def __init__(self, spec: Spec, logs: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        url = None
        for a in spec.applications:
            url = a.cleave.origin_url or spec.network.origin
            if url:
                break
        script = Path(spec.base_dir) / "origin" / "checkout.py"
        if url is None or not script.exists():
            return
        parts = urlsplit(str(url))
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            return
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "origin.log", "ab") as f:
            self.proc = subprocess.Popen([sys.executable, str(script)], cwd=script.parent,
                                         env={"PORT": str(parts.port), "PATH": "/usr/bin:/bin"},
                                         stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.url = str(url)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def broken_version(app: AppPlan, source: Path, workdir: Path, fail_rate: float) -> tuple[AppPlan, Path] | None:
    """The app with a bug: its web tier (web.py) wrapped so that /catalog often fails."""
    entry = next(t for t in app.tiers if t.entry)
    if not (source / "web.py").exists() or entry.command[-1] != "web.py":
        return None
    dest = workdir / f"{app.name}-broken"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "broken_web.py").write_text(BROKEN_WEB.format(fail=fail_rate))
    tiers = tuple(t.model_copy(update={"command": (*t.command[:-1], "broken_web.py")})
                  if t.entry else t for t in app.tiers)
    return app.model_copy(update={"version": f"{app.version}-broken", "tiers": tiers}), dest


class Show:
    """What the demo shows: a live view, or one plain line per second."""

    def __init__(self, console: Console, interactive: bool) -> None:
        self.console = console
        self.interactive = interactive
        self.live: Live | None = None
        self.last_line = 0.0

    def __enter__(self) -> Show:
        if self.interactive:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    def note(self, text: str) -> None:
        """Plain text (paths, versions in brackets): never read as markup."""
        self.say(escape(text))

    def update(self, view: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.update(render(view))
        elif time.monotonic() - self.last_line >= 2.0:
            self.last_line = time.monotonic()
            self.console.print(plain(view), highlight=False, soft_wrap=True)


def render(v: dict[str, Any]) -> Group:
    st, load, sla = v.get("status") or {}, v.get("load") or {}, v.get("sla_ms")
    head = f"[bold]{v['phase']}[/]  t={v['elapsed']:.0f}s  users={load.get('users', 0)}"
    eps = Table(title="edgepoints", title_justify="left", expand=False)
    for col in ("edgepoint", "region", "health", "instances (ready per version)",
                "starting", "snapshotted"):
        eps.add_column(col)
    for e in st.get("edgepoints", []):
        inst = (e.get("capacity") or {}).get("instances", {})
        ready = {}
        for a in st.get("apps", []):
            ready.update({f"{v_}": n for v_, n in (a["instances"].get(e["name"]) or {}).items()})
        starting = sum(i.get("starting", 0) for i in inst.values())
        snap = sum(i.get("snapshotted", 0) for i in inst.values())
        eps.add_row(e["name"], e["region"], "[green]up[/]" if e["healthy"] else "[red]down[/]",
                    ", ".join(f"{n}×{ver}" for ver, n in ready.items() if n) or "0",
                    str(starting), str(snap))
    regions = Table(title=f"users by region (last {load.get('window_s', 5)} s; SLA p95 "
                          f"{sla} ms)", title_justify="left")
    for col in ("region", "req/s", "p50 ms", "p95 ms", "errors", "served by"):
        regions.add_column(col)
    for r, d in sorted((load.get("regions") or {}).items()):
        w = d["window"]
        p95 = w["p95_ms"]
        p95s = "—" if p95 is None else (f"[green]{p95:.0f}[/]" if sla and p95 <= sla
                                        else f"[red]{p95:.0f}[/]")
        total = sum(w["edgepoints"].values()) or 1
        served = ", ".join(f"{ep} {n / total:.0%}" for ep, n in
                           sorted(w["edgepoints"].items(), key=lambda kv: -kv[1]))
        regions.add_row(r, f"{w['rps']:.1f}", "—" if w["p50_ms"] is None else f"{w['p50_ms']:.0f}",
                        p95s, str(w["failures"]), served or "—")
    apps = []
    for a in st.get("apps", []):
        dep = a.get("deployment") or {}
        canary = f"canary {a['canary']} at {a['canary_weight']}%" if a["canary"] else "no canary"
        apps.append(escape(f"{a['name']}: primary {a['primary']}, {canary}; last deployment "
                           f"{dep.get('kind', '—')} → {dep.get('to_version', '—')} "
                           f"[{dep.get('phase', '—')}]"))
    events = "\n".join(escape(f"{time.strftime('%H:%M:%S', time.localtime(e['at']))} "
                              f"{e['kind']}: {e['message']}")
                       for e in (v.get("events") or [])[-7:])
    return Group(head, eps, regions, Panel("\n".join(apps) or "—", title="deployments"),
                 Panel(events or "—", title="events"))


def plain(v: dict[str, Any]) -> str:
    st, load = v.get("status") or {}, v.get("load") or {}
    parts = [f"[{v['elapsed']:5.0f}s] {v['phase']}: users={load.get('users', 0)}"]
    for r, d in sorted((load.get("regions") or {}).items()):
        w = d["window"]
        top = max(w["edgepoints"].items(), key=lambda kv: kv[1])[0] if w["edgepoints"] else "-"
        p95 = "—" if w["p95_ms"] is None else f"{w['p95_ms']:.0f}ms"
        parts.append(f"{r}->{top} {w['rps']:.0f}rps p95={p95} err={w['failures']}")
    for a in st.get("apps", []):
        inst = " ".join(f"{ep}:{sum(vs.values())}" for ep, vs in sorted(a["instances"].items()))
        parts.append(f"{a['name']} {a['primary']}"
                     + (f"+{a['canary']}@{a['canary_weight']}%" if a["canary"] else "")
                     + f" [{inst}]")
    return " | ".join(parts)


def run_demo(opts: DemoOptions, console: Console) -> DemoResult:
    return asyncio.run(_run(opts, console))


async def _run(opts: DemoOptions, console: Console) -> DemoResult:
    result = DemoResult()
    spec = demo_spec(load(opts.policy))
    state = Path(opts.state_dir).resolve()
    if (state / "network.json").exists():  # a previous demo: stop it, start afresh
        with _suppress():
            LocalNetwork.open(state).stop()
    shutil.rmtree(state, ignore_errors=True)
    D = max(20.0, opts.duration)
    interval = max(1.5, min(5.0, D / 20))
    canary_cfg = CanarySection(interval_s=interval, threshold=2, iterations=3, min_requests=8,
                               max_error_rate=0.05)
    edge_options = {"stable_window_s": max(4.0, 3 * interval), "panic_window_s": 2.0,
                    "scale_down_delay_s": 2.0, "tick_s": 0.25}
    console.print(f"[bold]edgeshot demo[/]: {opts.policy} on this machine, {D:.0f} s of traffic",
                  highlight=False)
    origin = Origin(spec, state / "logs")
    net: LocalNetwork | None = None
    load_proc: LoadProcess | None = None
    t_start = time.monotonic()
    try:
        net = LocalNetwork.create(opts.policy, state, spec=spec, canary=canary_cfg, tick_s=0.5,
                                  edge_options=edge_options)
        with console.status("starting the network (agents, edges, controller, dispatcher)…"):
            net.start(progress=lambda m: console.print(escape(f"  {m}"), highlight=False))
        plan = net.plan()
        app = plan.apps[0]
        regions = [e.region for e in plan.edgepoints]
        nearest = {e.region: e.name for e in plan.edgepoints}
        async with ControllerClient(net.manifest.controller_url, net.token()) as ctl:
            with console.status("capturing and distributing the apps…"):
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    st = await ctl.status()
                    if all(a["primary"] and a["routed"] for a in st["apps"]) and \
                            _nearest_first(await ctl.routing(), nearest):
                        break
                    if st["dispatcher"]["note"] and not st["dispatcher"]["running"]:
                        raise NetworkError(f"global dispatcher: {st['dispatcher']['note']}")
                    if failed := start_failures(st):
                        raise NetworkError("; ".join(failed))
                    await asyncio.sleep(0.5)
                else:
                    log = (state / "logs" / "controller.log").read_text(errors="replace")
                    raise NetworkError("the apps did not start within 180 s: "
                                       f"{[a for a in st['apps']]}\n{log[-2000:]}")
            for e in await ctl.events(after=st.get("events_from", 0), limit=500):
                if e["kind"] in ("start", "captured", "distributed"):
                    console.print(escape(f"  {e['kind']}: {e['message']}"), highlight=False)
            paths = _paths(spec, app.name)
            load_proc = LoadProcess(state, net.manifest.entry_url or "",
                                    app.hosts[0] if app.hosts else None, regions, paths)
            result.figures["startup_s"] = round(time.monotonic() - t_start, 1)
            await _show(opts, console, ctl, net, load_proc, app, spec, regions, nearest, D,
                        result, state)
    except (NetworkError, ControllerError, OSError) as exc:
        result.checks.append(Check("the network runs", False, str(exc)))
    finally:
        if load_proc is not None:
            load_proc.stop()
        if net is not None and not opts.keep:
            with console.status("stopping everything (edgeshot down)…"):
                cleaned = net.stop()
            left = net.leftovers()
            result.checks.append(Check(
                "down leaves nothing behind", not left,
                "no process, namespace or mount left" if not left else ", ".join(left)))
            if cleaned:
                result.figures["cleaned_after_stop"] = cleaned
        origin.stop()
    result.figures["total_s"] = round(time.monotonic() - t_start, 1)
    _print_result(console, result)
    return result


async def _show(opts: DemoOptions, console: Console, ctl: ControllerClient, net: LocalNetwork,
                load_proc: LoadProcess, app: AppPlan, spec: Spec, regions: list[str],
                nearest: dict[str, str], D: float, result: DemoResult, state: Path) -> None:
    sla = next((p.scaling.max_response_ms for p in net.plan().placements if p.app == app.name),
               None)
    events: list[dict[str, Any]] = []
    seen = 0
    t0 = time.monotonic()
    view: dict[str, Any] = {"phase": "", "elapsed": 0.0, "sla_ms": sla}
    peak_ready: dict[str, int] = {}

    async def refresh(phase: str) -> dict[str, Any]:
        nonlocal seen
        st = await ctl.status()
        new = await ctl.events(after=seen, limit=200)
        if new:
            seen = new[-1]["id"]
            events.extend(new)
        view.update(phase=phase, elapsed=time.monotonic() - t0, status=st,
                    load=load_proc.snapshot(), events=events)
        for a in st["apps"]:
            for ep, vs in a["instances"].items():
                peak_ready[ep] = max(peak_ready.get(ep, 0), sum(vs.values()))
        return st

    with Show(console, opts.interactive) as show:
        # 1. users ramp up from every region
        phase = "1/3 users from every region ramp up"
        show.say(f"[bold]{phase}[/]")
        load_proc.users(opts.users, max(1.0, opts.users / max(2.0, 0.15 * D)))
        ramp_end = time.monotonic() + 0.35 * D
        while time.monotonic() < ramp_end:
            await refresh(phase)
            show.update(view)
            await asyncio.sleep(0.5)
        ramp = load_proc.snapshot()
        # 2. a broken version as a canary
        phase = "2/3 a broken version goes out as a canary"
        show.say(f"[bold]{phase}[/]")
        src = Path(spec.base_dir) / app.source
        made = broken_version(app, src.resolve(), state / "demo-src", opts.fail_rate)
        dep = None
        t_deploy = time.monotonic()
        before_canary = load_proc.snapshot()
        if made is None:
            result.checks.append(Check("broken canary rolled back by itself", False,
                                       f"{app.name} has no web.py entry tier to break", False))
        else:
            broken, src_dir = made
            show.note(f"  deploying {broken.version} with {opts.canary}% of the traffic…")
            # the capacity gate would hold a version never staged: the demo shows the
            # canary analysis instead, past the gate by the operator's logged word
            dep = await ctl.deploy(app.name, plan=broken.model_dump(mode="json"),
                                   canary=opts.canary, source_dir=str(src_dir),
                                   override_gate="the demo shows the canary analysis "
                                                 "catching this version")
            t_rolled = None
            canary_end = time.monotonic() + max(0.35 * D, 60.0)
            while time.monotonic() < canary_end:
                await refresh(phase)
                show.update(view)
                d = await ctl.deployment(dep["id"])
                if d["phase"] != "progressing":
                    t_rolled = time.monotonic()
                    dep = d
                    break
                await asyncio.sleep(0.5)
            else:
                dep = await ctl.deployment(dep["id"])
            rolled = dep["phase"] == "rolled_back"
            reasons = [r for h in dep.get("reasons") or [] for r in h["reasons"]]
            detail = (f"{broken.version} at {opts.canary}%: {dep['phase']} after {dep['checks']} "
                      f"check(s), {t_rolled - t_deploy:.1f} s after the deploy; "
                      + "; ".join(reasons[-2:]) if t_rolled else
                      f"{broken.version}: still {dep['phase']} at the end of the phase")
            result.checks.append(Check("broken canary rolled back by itself",
                                       rolled and any("error rate" in r for r in reasons), detail))
            result.figures["canary_to_rollback_s"] = round(t_rolled - t_deploy, 1) if t_rolled else None
            # a few seconds of traffic on the primary alone again
            settle = time.monotonic() + 3.0
            while time.monotonic() < settle:
                await refresh(phase)
                show.update(view)
                await asyncio.sleep(0.5)
        # a version that fails its load test is stopped at staging (control/_staging.py)
        from ._staging import demo_stage_step
        result.checks.append(Check(*await demo_stage_step(ctl, app, spec, state / "demo-src",
                                                          show.note)))
        after_canary = load_proc.snapshot()
        # 3. users leave: scale to zero
        phase = "3/3 users leave: scale to zero"
        show.say(f"[bold]{phase}[/]")
        load_proc.users(0, 10)
        zero_at = None
        cool_end = time.monotonic() + max(0.3 * D, 45.0)
        while time.monotonic() < cool_end:
            st = await refresh(phase)
            show.update(view)
            ready = sum(sum(vs.values()) for a in st["apps"] for vs in a["instances"].values())
            if ready == 0 and zero_at is None:
                zero_at = time.monotonic()
            if zero_at is not None and time.monotonic() - zero_at > 1.0:
                break
            await asyncio.sleep(0.5)
        final = load_proc.snapshot()
        show.update(view)

    _judge(result, ramp, before_canary, after_canary, final, nearest, peak_ready, zero_at, sla,
           dep, regions)


def _nearest_first(routing: dict[str, dict[str, list[str]]], nearest: dict[str, str]) -> bool:
    """Whether the dispatcher sends every region's users of every app to their nearest
    edgepoint first: the demo's users arrive only then (on a loaded machine an edgepoint may
    take a few ticks to be reported healthy, and its region's users would go elsewhere)."""
    return bool(routing) and all(
        (chains.get(region) or [None])[0] == ep
        for chains in routing.values() for region, ep in nearest.items())


def _judge(result: DemoResult, ramp: dict[str, Any], before: dict[str, Any],
           after: dict[str, Any], final: dict[str, Any], nearest: dict[str, str],
           peak_ready: dict[str, int], zero_at: float | None, sla: int | None,
           dep: dict[str, Any] | None, regions: list[str]) -> None:
    # routing: each region's users on their nearest edgepoint
    details, ok = [], True
    for r in regions:
        d = ramp.get("regions", {}).get(r)
        if not d or d["requests"] < 10:
            ok = False
            details.append(f"{r}: too few requests ({d['requests'] if d else 0})")
            continue
        share = d["edgepoints"].get(nearest[r], 0) / d["requests"]
        ok &= share >= 0.9
        details.append(f"{r}→{nearest[r]} {share:.0%}")
    result.checks.append(Check("users routed to their nearest edgepoint", ok, ", ".join(details)))
    result.checks.append(Check(
        "instances restored on demand at every edgepoint",
        all(peak_ready.get(ep, 0) > 0 for ep in nearest.values()),
        ", ".join(f"{ep}: up to {peak_ready.get(ep, 0)}" for ep in nearest.values())))

    def totals(snap: dict[str, Any]) -> tuple[int, int]:
        rs = snap.get("regions", {}).values()
        return sum(r["requests"] for r in rs), sum(r["failures"] for r in rs)

    req0, fail0 = totals(before)
    req1, fail1 = totals(after)
    req2, fail2 = totals(final)
    outside_req = req0 + (req2 - req1)
    outside_fail = fail0 + (fail2 - fail1)
    rate = outside_fail / outside_req if outside_req else 0.0
    result.checks.append(Check(
        "no failed requests outside the canary", rate <= 0.01,
        f"{outside_fail} of {outside_req} ({rate:.2%}); during the canary "
        f"{fail1 - fail0} of {req1 - req0} (the broken version's 500s)"))
    p95s = [d["p95_ms"] for d in ramp.get("regions", {}).values() if d.get("p95_ms") is not None]
    worst = max(p95s) if p95s else None
    result.checks.append(Check(
        "response time within the SLA (shown)", worst is not None and sla is not None
        and worst <= sla,
        "p95 per region during the ramp: "
        + ", ".join(f"{r} {d['p95_ms']:.0f} ms" for r, d in sorted(ramp.get("regions", {}).items())
                    if d.get("p95_ms") is not None) + f" (SLA {sla} ms at the edge)", gating=False))
    result.checks.append(Check(
        "scale to zero when the users leave", zero_at is not None,
        "no instance serving at any edgepoint" if zero_at else "instances still serving"))
    result.figures["requests"] = req2
    result.figures["failed"] = fail2
    result.figures["regions"] = {r: {k: d[k] for k in ("requests", "failures", "edgepoints",
                                                         "p50_ms", "p95_ms")}
                                 for r, d in final.get("regions", {}).items()}


def _paths(spec: Spec, app_name: str) -> list[dict[str, Any]]:
    app = spec.application(app_name)
    lt = app.load_test
    if lt is None:
        return [{"method": "GET", "path": app.routing.path_prefix or "/", "weight": 1}]
    out = []
    for p in lt.paths:
        path = p.path
        body = None
        if p.method == "POST" and path.startswith("/cart/"):
            path, body = "/cart/{session}", '{"product": "mug", "qty": 1}'
        elif path.startswith("/cart/"):
            path = "/cart/{session}"
        out.append({"method": p.method, "path": path, "weight": p.weight, "body": body})
    return out


def _print_result(console: Console, result: DemoResult) -> None:
    t = Table(title="demo checks", title_justify="left")
    for col in ("", "check", "detail"):
        t.add_column(col)
    for c in result.checks:
        mark = "[green]✓[/]" if c.ok else ("[red]✗[/]" if c.gating else "[yellow]~[/]")
        t.add_row(mark, escape(c.name), escape(c.detail))
    console.print(t)
    console.print(("[bold green]demo passed[/]" if result.ok else "[bold red]demo failed[/]")
                  + f" in {result.figures.get('total_s', 0)} s", highlight=False)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return True
