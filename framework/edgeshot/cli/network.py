"""The network's commands: `edgeshot up|down|status|deploy|rollback|demo|controller`.

Register in the main CLI with::

    from edgeshot.cli.network import controller, demo, deploy, down, rollback, status, up
    for command in (up, down, status, deploy, rollback, demo, controller):
        app.command()(command)

Commands that talk to a running local network find it through ``--state DIR``,
else ``$EDGESHOT_NETWORK``, else the only network under ``./.state/``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import (
    FormatOpt,
    LogFormatOpt,
    OutputFormat,
    StateOpt,
    err,
    fail,
    find_state,
    load_spec,
    print_json,
)

out = Console()

def _client(state: Path, token: str = "operator") -> Any:
    from edgeshot.control._localnet import LocalNetwork, NetworkError
    from edgeshot.control.client import ControllerClient
    try:
        net = LocalNetwork.open(state)
    except NetworkError as exc:
        raise fail(str(exc)) from None
    return net, ControllerClient(net.manifest.controller_url, net.token(token))


def _percent(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise fail(f"--canary {text!r}: give a share such as 10%") from None
    if not 0 < value < 100:
        raise fail(f"--canary {text!r}: between 0% and 100% (exclusive)")
    return max(1, round(value))


async def _wait_serving(client: Any, timeout: float, say: Any, state: Path) -> dict[str, Any]:
    """Until every app has a version serving at every edgepoint's dispatcher (or timeout),
    saying what this run of the controller does (an earlier run's events are history)."""
    from edgeshot.control.client import start_failures
    deadline = time.monotonic() + timeout
    seen = None
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = await client.status()
        seen = st.get("events_from", 0) if seen is None else seen
        for e in await client.events(after=seen, limit=200):
            seen = e["id"]
            say(f"  {e['kind']}: {e['message']}")
        apps = st["apps"]
        if apps and all(a["primary"] and (a["routed"] or not st["dispatcher"]["running"])
                        for a in apps):
            return st
        failed = start_failures(st)
        if failed:
            raise fail("; ".join(failed) + "\nThe network is still up: `edgeshot down --state "
                       f"{state}`, fix the policy or the app, then `edgeshot up` again (a "
                       "changed policy is captured again, an unchanged one retried).")
        await asyncio.sleep(0.5)
    routing = bool(st.get("dispatcher", {}).get("running"))
    waiting = [a["name"] for a in st.get("apps", ())
               if not a["primary"] or (routing and not a["routed"])]
    raise fail(f"not serving after {timeout:.0f} s: {', '.join(waiting) or 'no app'}; the "
               f"network is still up (`edgeshot status --state {state}`, logs in "
               f"{state / 'logs'}; `edgeshot down --state {state}` stops it)")


def up(
    file: Annotated[Path, typer.Argument(help="policy file declaring the network and its apps")],
    local: Annotated[bool, typer.Option("--local", help="rehearse a cloud network's topology "
                                        "on this machine")] = False,
    state: Annotated[Path | None, typer.Option("--state", help="state directory (default "
                                               "./.state/<network>)", file_okay=False)] = None,
    http_port: Annotated[int | None, typer.Option(help="the entry port (default: the policy's)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every app")] = 180.0,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Bring up the network a policy declares, on this machine: agents, one edge process per
    edgepoint (127.0.N.1), the controller and the global dispatcher; capture and distribute
    every app; print the entry and dashboard URLs."""
    from edgeshot.control._localnet import LocalNetwork, NetworkError
    say = out if fmt is OutputFormat.text else err  # stdout carries the JSON result
    spec = load_spec(file)
    name = spec.network.name
    state = state or Path(".state") / name
    try:
        net = LocalNetwork.create(file, state, local=local, http_port=http_port, spec=spec)
        with say.status(f"starting network {name}…"):
            net.start(progress=lambda m: say.print(escape(f"  {m}"), highlight=False))
    except NetworkError as exc:
        raise fail(str(exc)) from None
    from edgeshot.control.client import ControllerClient

    async def wait() -> dict[str, Any]:
        async with ControllerClient(net.manifest.controller_url, net.token()) as c:
            return await _wait_serving(c, timeout,
                                       lambda m: say.print(escape(m), highlight=False,
                                                           soft_wrap=True),
                                       net.state_dir)

    st = asyncio.run(wait())
    if fmt is OutputFormat.json:
        m = net.manifest
        print_json({"network": m.network, "entry_url": m.entry_url,
                    "dashboard_url": m.dashboard_url, "controller_url": m.controller_url,
                    "tokens_dir": str(Path(m.state_dir) / "secrets"), "state_dir": m.state_dir,
                    "status": st})
        return
    _print_up(net, st)


def _print_up(net: Any, st: dict[str, Any]) -> None:
    m = net.manifest
    t = Table(title=f"network {m.network} is up", title_justify="left", show_header=False)
    t.add_row("entry (global dispatcher)", m.entry_url or "—")
    t.add_row("dashboard", m.dashboard_url)
    t.add_row("controller API", m.controller_url)
    t.add_row("tokens (0600)", str(Path(m.state_dir) / "secrets"))
    t.add_row("state", m.state_dir)
    if st.get("dispatcher", {}).get("note"):
        t.add_row("note", st["dispatcher"]["note"])
    if m.edge_note:
        t.add_row("note", m.edge_note)
    out.print(t)
    plan = net.plan()
    for app in plan.apps:
        host = app.hosts[0] if app.hosts else None
        path = app.path_prefix or "/"
        hdr = f"-H 'Host: {host}' " if host else ""
        out.print(f"  {app.name}: curl {hdr}-H 'X-Edgeshot-Region: {plan.edgepoints[0].region}' "
                  f"{m.entry_url}{path}", highlight=False, soft_wrap=True)
    out.print(f"  stop with: edgeshot down --state {m.state_dir}", highlight=False)


def down(state: StateOpt = None) -> None:
    """Stop everything `up` started (instances, agents, edges, controller, dispatcher) and
    check that no process, namespace or mount is left behind."""
    from edgeshot.control._localnet import LocalNetwork, NetworkError
    state = find_state(state)
    try:
        net = LocalNetwork.open(state)
    except NetworkError as exc:
        raise fail(str(exc)) from None
    with out.status(f"stopping network {net.manifest.network}…"):
        cleaned = net.stop()
    for item in cleaned:
        err.print(f"  cleaned up after the fact: {escape(item)}", highlight=False, soft_wrap=True)
    left = net.leftovers()
    if left:
        raise fail("left behind: " + ", ".join(left))
    out.print(f"[green]✓[/] network {net.manifest.network} stopped; nothing left behind",
              highlight=False)


def status(
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.text,
    as_json: Annotated[bool, typer.Option("--json", hidden=True,
                                          help="the same as --format json")] = False,
) -> None:
    """Versions, canaries, instances per edgepoint, health."""
    state = find_state(state)
    net, client = _client(state)

    async def get() -> dict[str, Any]:
        async with client:
            return await client.status()

    from edgeshot.control.client import ControllerError
    try:
        st = asyncio.run(get())
    except ControllerError as exc:
        raise fail(str(exc)) from None
    if as_json or fmt is OutputFormat.json:
        print_json(st)
        return
    print_status(st, out)


def print_status(st: dict[str, Any], console: Console) -> None:
    from edgeshot.cli.bill import budget_text
    d = st["dispatcher"]
    console.print(f"network [bold]{st['network']}[/] ({st['provider']}), up "
                  f"{st['uptime_s']:.0f} s; dispatcher "
                  + (f"[green]on {d['bind']}[/]" if d["running"] else f"[red]off[/] ({d['note']})")
                  + f", tick {d['last_tick_ms']} ms", highlight=False)
    eps = Table(title="edgepoints", title_justify="left")
    for col in ("edgepoint", "region", "health", "load", "slots free", "note"):
        eps.add_column(col)
    for e in st["edgepoints"]:
        cap = e.get("capacity") or {}
        eps.add_row(e["name"], e["region"], "[green]up[/]" if e["healthy"] else "[red]down[/]",
                    f"{(e['load'] or 0):.0%}",
                    f"{cap.get('slots_free', '—')}/{cap.get('slots_total', '—')}",
                    escape(e.get("error") or ""))
    console.print(eps)
    apps = Table(title="applications", title_justify="left")
    for col in ("app", "primary", "canary", "previous", "instances per edgepoint", "last deployment",
                "budget"):
        apps.add_column(col)
    for a in st["apps"]:
        inst = ", ".join(f"{ep}: " + ("+".join(f"{n}×{v}" for v, n in vs.items() if n) or "0")
                         for ep, vs in sorted(a["instances"].items())) or "—"
        dep = a.get("deployment") or {}
        last = (f"#{dep['id']} {dep['kind']} {dep.get('from_version') or '∅'}→{dep['to_version']} "
                f"{dep['phase']}" if dep else "—")
        canary = f"{a['canary']} ({a['canary_weight']}%)" if a["canary"] else "—"
        apps.add_row(a["name"], a["primary"] or "—", canary, a["previous"] or "—", inst, last,
                     budget_text(a.get("budget")))
    console.print(apps)


def deploy(
    target: Annotated[str, typer.Argument(help="a policy file (deploy its app) or an app name "
                                          "(deploy a version the network already has)")],
    version: Annotated[str | None, typer.Option("--version", help="the version to deploy "
                                                "(with a file: overrides the file's)")] = None,
    canary: Annotated[str | None, typer.Option("--canary", help="share of traffic for the new "
                                               "version, e.g. 10%; promoted or rolled back by "
                                               "the analysis")] = None,
    app: Annotated[str | None, typer.Option("--app", help="which app of the file")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow the canary to its "
                                       "end")] = True,
    stage: Annotated[bool, typer.Option("--stage", help="put the version on the edge for the "
                                        "owner's token only (X-Edgeshot-Stage) and run its "
                                        "load test; roll it out later with --version")] = False,
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Roll out a version: captured once, distributed, then a canary (or all at once).
    Exits 3 when the canary analysis rolled it back."""
    share = _percent(canary)
    state = find_state(state)
    net, client = _client(state)
    plan_json = source = load_test = None
    name = target
    if target.endswith(".py") or Path(target).is_file():
        from edgeshot.control._localnet import as_local
        from edgeshot.plan import compile_plan
        spec = load_spec(Path(target))
        apps = [a for a in spec.applications if app is None or a.name == app]
        if len(apps) != 1:
            raise fail(f"{target} declares {[a.name for a in spec.applications]}: "
                        "choose one with --app")
        a = apps[0]
        p = compile_plan(as_local(spec)).app(a.name)
        if version:
            p = p.model_copy(update={"version": version})
        plan_json, source, name = p.model_dump(mode="json"), str(spec.source_dir(a)), a.name
        load_test = a.load_test.model_dump(mode="json") if a.load_test else None
    elif not version:
        raise fail("give --version (or a policy file)")
    if stage:
        from edgeshot.control._staging import stage_command
        code = stage_command(client, name, version=version, plan=plan_json, source_dir=source,
                             load_test=load_test, wait=wait,
                             out=out if fmt is OutputFormat.text else err)
        if fmt is OutputFormat.json:
            print_json({"app": name, "version": version, "stage": True, "exit_code": code,
                        "passed": code == 0})
        raise typer.Exit(code)

    from edgeshot.control.client import ControllerError

    human = fmt is OutputFormat.text
    # progress goes to stderr when stdout carries the JSON result
    say = out if human else err
    events: list[dict[str, Any]] = []

    async def go() -> dict[str, Any]:
        async with client:
            seen = 0  # only this deployment's events: skip the app's earlier ones
            while batch := await client.events(after=seen, app=name, limit=1000):
                seen = batch[-1]["id"]

            def show(e: dict[str, Any], status: Any = None) -> None:
                events.append(e)
                if status is not None:
                    status.update(escape(f"deploying {name}: {e['kind']}: {e['message']}"))
                say.print(escape(f"  {e['kind']}: {e['message']}"), highlight=False,
                          soft_wrap=True)

            # capture and uploads to the agents happen inside the call: follow its events
            with say.status(f"deploying {name}: capture, distribute, roll out…") as status:
                call = asyncio.ensure_future(client.deploy(
                    name, version=version, plan=plan_json, canary=share, source_dir=source))
                while not call.done():
                    await asyncio.wait([call], timeout=0.5)
                    for e in await client.events(after=seen, app=name, limit=200):
                        seen = e["id"]
                        show(e, status)
                dep = call.result()
            say.print(f"deployment #{dep['id']}: {name} {dep.get('from_version') or '∅'} → "
                      f"{dep['to_version']} ({dep['kind']}, {dep['weight']}%)", highlight=False)
            if dep["phase"] != "progressing" or not wait:
                return dep
            while True:
                for e in await client.events(after=seen, app=name, limit=200):
                    seen = e["id"]
                    if e["kind"].startswith(("canary", "promoted")):
                        show(e)
                dep = await client.deployment(dep["id"])
                if dep["phase"] != "progressing":
                    return dep
                await asyncio.sleep(1.0)

    try:
        dep = asyncio.run(go())
    except ControllerError as exc:
        raise fail(str(exc)) from None
    if human:
        color = {"promoted": "green", "rolled_back": "red"}.get(dep["phase"], "yellow")
        out.print(f"[{color}]{dep['phase']}[/]: {name} {dep['to_version']}", highlight=False)
    else:
        print_json({"app": name, "deployment": dep, "events": events})
    if dep["phase"] == "rolled_back":
        raise typer.Exit(3)


def rollback(
    app: Annotated[str, typer.Argument(help="the application")],
    state: StateOpt = None,
) -> None:
    """All traffic back to the previous version, in seconds: no capture, no upload."""
    state = find_state(state)
    net, client = _client(state)
    from edgeshot.control.client import ControllerError

    async def go() -> dict[str, Any]:
        async with client:
            return await client.rollback(app)

    try:
        res = asyncio.run(go())
    except ControllerError as exc:
        raise fail(str(exc)) from None
    out.print(f"[green]✓[/] {app}: {res['from']} → {res['to']} in {res['seconds'] * 1000:.0f} ms "
              f"({', '.join(f'{k}: {v}' for k, v in res['edges'].items())})", highlight=False)


def controller(
    config: Annotated[Path, typer.Option("--config", "-c", help="controller configuration (TOML)",
                                         envvar="EDGESHOT_CONTROLLER_CONFIG", dir_okay=False)],
    log_format: LogFormatOpt = None,
) -> None:
    """Run the controller: the API (the conduit), the global dispatcher, the deployment
    center."""
    from edgeshot.control.server import ConfigError, ControllerConfig, run
    try:
        cfg = ControllerConfig.load(config)
        run(cfg.model_copy(update={"log_format": log_format.value}) if log_format else cfg)
    except (ConfigError, OSError) as exc:
        raise fail(str(exc)) from None


def demo(
    file: Annotated[Path | None, typer.Argument(help="policy file (default: the shop example "
                                                "on a local network)")] = None,
    duration: Annotated[float, typer.Option(help="seconds of the whole show")] = 120.0,
    non_interactive: Annotated[bool, typer.Option("--non-interactive", help="plain progress "
                                                  "lines instead of the live view")] = False,
    users: Annotated[int, typer.Option(help="synthetic users at the peak")] = 30,
    state: Annotated[Path | None, typer.Option("--state", file_okay=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write the outcome as JSON")] = None,
) -> None:
    """The shop on a local edge network: users from three regions routed to their nearest
    edgepoint, instances restored on demand, a broken canary rolled back by itself, then
    scale to zero. Exits 1 when one of its checks fails."""
    from edgeshot.control.demo import DemoOptions, run_demo
    policy = file or _default_demo_policy()
    opts = DemoOptions(policy=policy, state_dir=state or Path(".state") / "demo",
                       duration=duration, interactive=not non_interactive and out.is_terminal,
                       users=users)
    result = run_demo(opts, out)
    if report:
        report.write_text(json.dumps(result.to_json(), indent=1))
    if not result.ok:
        raise typer.Exit(1)


def _default_demo_policy() -> Path:
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        cand = root / "examples" / "shop" / "policy_local.py"
        if cand.exists():
            return cand
    raise fail("examples/shop/policy_local.py not found: give the policy file")


if __name__ == "__main__":  # python -m edgeshot.cli.network COMMAND … (before registration)
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    for _cmd in (up, down, status, deploy, rollback, demo, controller):
        _app.command()(_cmd)
    _app()
