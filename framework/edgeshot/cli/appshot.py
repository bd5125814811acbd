"""`edgeshot appshot …`: capture, restore, snapshot, list and verify on this machine.

For local use (the agent daemon exposes the same operations over its API).
Pods started here keep running after the command exits; `stop` ends them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeshot.agent import appshots as A

from ._common import FormatOpt, OutputFormat, err, fail, print_json

app = typer.Typer(help="Appshots: frozen running apps, restored in milliseconds.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
out = Console()

StateOpt = Annotated[Path, typer.Option("--state-dir", help="agent state (pods, keys, logs)",
                                        envvar="EDGESHOT_STATE")]


def _host(state_dir: Path) -> A.Host:
    return A.Host(state_dir=state_dir, kits=0)  # one command: no kits kept ready


def _cold_note() -> None:
    st = A.criu_status()
    if not st.usable:
        err.print(f"[yellow]CRIU unavailable, instances cold-start:[/] {escape(st.reason)}",
                  soft_wrap=True)


def _spec(policy: Path, app_name: str | None, reseed: str | None) -> A.PodSpec:
    from edgeshot.spec import SpecError, load
    try:
        spec = load(policy)
    except SpecError as exc:
        raise fail(str(exc)) from None
    apps = spec.applications
    if app_name:
        application = spec.application(app_name)
    elif len(apps) == 1:
        application = apps[0]
    else:
        raise fail(f"{policy} declares {len(apps)} apps; choose one with --app")
    return A.pod_spec(application, spec.source_dir(application), reseed_signal=reseed)


@app.command()
def capture(
    policy: Annotated[Path, typer.Argument(help="policy file declaring the app")],
    out_dir: Annotated[Path, typer.Option("--out", help="appshot directory to create")],
    app_name: Annotated[str | None, typer.Option("--app")] = None,
    tarball: Annotated[Path | None, typer.Option(help="also write a .tar.gz/.tar.zst")] = None,
    reseed_signal: Annotated[str | None, typer.Option(
        help="signal the app reseeds on after a restore, e.g. SIGUSR2")] = None,
    state_dir: StateOpt = A.DEFAULT_STATE,
) -> None:
    """Start the app fresh, warm it up, and dump it into a signed appshot."""
    spec = _spec(policy, app_name, reseed_signal)
    # progress on stderr: a status line on a terminal, one line a step otherwise
    with err.status(f"capturing {spec.app} {spec.version}…") as status:
        def step(text: str) -> None:
            status.update(escape(f"capturing {spec.app} {spec.version}: {text}…"))
            if not err.is_terminal:
                err.print(escape(f"  {text}"), highlight=False, soft_wrap=True)
        try:
            res = A.capture(spec, out_dir, _host(state_dir), tarball=tarball, progress=step)
        except A.NotRestorable as exc:
            raise fail("; ".join(exc.reasons)) from None
    m = res.manifest
    out.print(f"captured {m.app} {m.version} into {res.path} ({len(m.files)} files, signer "
              f"{m.signer}): cold start {res.cold_start_ms:.0f} ms, {res.warmup_requests} "
              f"warm-up requests, dump {res.dump_ms:.0f} ms")


@app.command()
def restore(
    appshot: Annotated[Path, typer.Argument(help="appshot or snapshot directory")],
    count: Annotated[int, typer.Option(min=1, max=64, help="copies to restore")] = 1,
    lazy: Annotated[bool, typer.Option(help="lazy pages (memory on first touch)")] = True,
    state_dir: StateOpt = A.DEFAULT_STATE,
) -> None:
    """Verify an appshot and restore running instances from it (each in its own slot)."""
    _cold_note()
    host = _host(state_dir)
    for _ in range(count):
        try:
            inst = A.restore(appshot, host, lazy=lazy)
        except (A.AppshotRejected, A.IncompatibleCPU, A.NotRestorable) as exc:
            raise fail(str(exc)) from None
        out.print(f"{inst.id} {inst.url} ({inst.origin}, criu {inst.restore_ms or 0:.1f} ms, "
                  f"healthy after {inst.ready_ms or 0:.1f} ms)")


@app.command()
def snapshot(
    instance: Annotated[str, typer.Argument(help="instance id (see `list`)")],
    out_dir: Annotated[Path | None, typer.Option("--out")] = None,
    state_dir: StateOpt = A.DEFAULT_STATE,
) -> None:
    """Dump a running instance to free its resources; restoring it continues its state."""
    host = _host(state_dir)
    inst = next((i for i in A.list_instances(host) if i.id == instance), None)
    if inst is None:
        raise fail(f"no running instance {instance}")
    try:
        path = A.snapshot(inst, host, out_dir)
    except A.NotRestorable as exc:
        raise fail("; ".join(exc.reasons)) from None
    out.print(f"snapshot of {instance} in {path}")


@app.command()
def stop(
    instance: Annotated[str, typer.Argument(help="instance id (see `list`)")],
    state_dir: StateOpt = A.DEFAULT_STATE,
) -> None:
    """Stop a running instance."""
    host = _host(state_dir)
    inst = next((i for i in A.list_instances(host) if i.id == instance), None)
    if inst is None:
        raise fail(f"no running instance {instance}")
    A.stop(inst, host)
    out.print(f"stopped {instance}")


@app.command("list")
def list_(
    appshots: Annotated[Path | None, typer.Option(help="directory holding appshots")] = None,
    state_dir: StateOpt = A.DEFAULT_STATE,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Running instances, and the appshots/snapshots kept here."""
    host = _host(state_dir)
    if fmt is OutputFormat.json:
        print_json({
            "instances": [{"id": i.id, "app": i.app, "version": i.version, "origin": i.origin,
                           "url": i.url, "slot": i.slot, "ready_ms": i.ready_ms}
                          for i in A.list_instances(host)],
            "appshots": [{"path": str(path), "kind": m.kind, "app": m.app, "version": m.version,
                          "owner": m.owner, "created": m.created.isoformat(timespec="seconds"),
                          "signer": m.signer}
                         for root in [p for p in (appshots, state_dir / "snapshots") if p]
                         for path, m in A.list_appshots(root)]})
        return
    t = Table("instance", "app", "version", "origin", "address", "slot", "ready ms")
    for i in A.list_instances(host):
        t.add_row(i.id, i.app, i.version, i.origin, i.url, i.slot or "-",
                  f"{i.ready_ms:.1f}" if i.ready_ms else "-")
    out.print(t)
    shots = Table("appshot", "kind", "app", "version", "owner", "created", "signer")
    for root in [p for p in (appshots, state_dir / "snapshots") if p]:
        for path, m in A.list_appshots(root):
            shots.add_row(str(path), m.kind, m.app, m.version, m.owner,
                          m.created.isoformat(timespec="seconds"), m.signer)
    out.print(shots)


@app.command()
def verify(
    appshot: Annotated[Path, typer.Argument(help="appshot directory")],
    state_dir: StateOpt = A.DEFAULT_STATE,
) -> None:
    """Check signature, every checksum, file modes and CPU compatibility."""
    try:
        m = A.verify(appshot, _host(state_dir).trust())
    except (A.AppshotRejected, A.IncompatibleCPU) as exc:
        raise fail(str(exc)) from None
    out.print(f"ok: {m.kind} {m.app} {m.version} of {m.owner or '-'}, signed by {m.signer}, "
              f"{len(m.files)} files verified, CPU compatible")
