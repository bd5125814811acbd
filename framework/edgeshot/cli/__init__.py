"""The `edgeshot` command: the conduit, the provider's single point of control.

Exit codes follow `terraform plan -detailed-exitcode`: 0 success (no
changes), 1 error, 2 success with changes (for `plan --diff`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeshot import __version__
from edgeshot.plan import (
    Plan,
    PlanDiff,
    compile_plan,
    diff,
    read_plan,
    render_diff_markdown,
    render_plan_markdown,
    write_plan,
)
from edgeshot.spec import Spec, SpecError, load

from . import appshot, gitops, network, remote
from . import configure as configuration
from ._common import FormatOpt, OutputFormat, err, fail, load_spec, print_json
from .agent import agent, token
from .bill import bill
from .edge import edge
from .monitoring import monitoring
from .up import cloud_destroy, cloud_up, print_resources
from .up import state_workdir as cloud_state_dir

app = typer.Typer(
    name="edgeshot",
    help="Infrastructure as code for on-demand application processing at the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
)
app.add_typer(appshot.app, name="appshot")
app.add_typer(gitops.app, name="gitops")
# Services (what systemd runs on servers; `edgeshot up` runs them here).
app.command(rich_help_panel="Services")(agent)
app.command(rich_help_panel="Services")(edge)
app.command(rich_help_panel="Services")(network.controller)
app.command(rich_help_panel="Services")(token)
# The network: bring up, roll out, observe, pay.
app.command("down", rich_help_panel="Network")(network.down)
app.command("destroy", rich_help_panel="Network")(cloud_destroy)
app.command(rich_help_panel="Network")(network.status)
app.command(rich_help_panel="Network")(network.deploy)
app.command(rich_help_panel="Network")(network.rollback)
app.command(rich_help_panel="Network")(network.demo)
app.command(rich_help_panel="Network")(bill)
app.command(rich_help_panel="Network")(monitoring)
# The configuration step alone (Ansible), on servers that exist.
app.command("configure", rich_help_panel="Servers")(configuration.configure)
app.command("inventory", rich_help_panel="Servers")(configuration.inventory)
# Remote control of the servers (Fabric over SSH).
remote.register(app)

out = Console()


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"edgeshot {__version__}")
        raise typer.Exit(0)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Policy file (a Python module).")],
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Check a policy file: every problem with file:line, field and what is allowed (exit 1)."""
    if fmt is OutputFormat.json:
        try:
            spec: Spec = load(file)
        except SpecError as exc:
            print_json({"file": str(file), "ok": False, "problems": [
                {"file": p.file, "line": p.line, "path": p.path, "message": p.message,
                 "value": p.value} for p in exc.problems]})
            raise typer.Exit(1) from None
        print_json({"file": str(file), "ok": True, "problems": [],
                    "network": spec.network.name, "provider": spec.network.provider.kind,
                    "edgepoints": [e.name for e in spec.network.edgepoints],
                    "applications": [a.name for a in spec.applications]})
        return
    spec = load_spec(file)
    net = spec.network
    out.print(
        f"[green]✓[/] {escape(str(file))}: network [bold]{net.name}[/] ({net.provider.kind}), "
        f"{len(net.edgepoints)} edgepoint(s), {len(spec.applications)} app(s)",
        highlight=False,
    )


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="Policy file (a Python module).")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the plan as JSON here.")] = None,
    old: Annotated[
        Path | None, typer.Option("--diff", help="Compare with a plan saved earlier (JSON).")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="How to print.")] = Format.table,
    resources: Annotated[bool, typer.Option(
        "--resources", help="Also list the cloud resources `edgeshot up` would create.")] = False,
) -> None:
    """Compile a policy file into a plan; with --diff, show what would change (exit 2 if anything)."""
    previous = _read(old) if old else None
    new = compile_plan(load_spec(file))
    if resources:
        print_resources(new, out)
    if out_file:
        try:
            write_plan(new, out_file)
        except OSError as exc:
            raise fail(f"{out_file}: cannot write the plan ({exc.strerror or exc})") from None
    if previous is None:
        _show_plan(new, fmt)
        return
    changes = diff(previous, new)
    _show_diff(changes, new, fmt)
    raise typer.Exit(2 if not changes.empty else 0)


@app.command(rich_help_panel="Network")
def up(
    file: Annotated[Path, typer.Argument(help="Policy file declaring the network and its apps.")],
    local: Annotated[bool, typer.Option(
        "--local", help="Rehearse any network's topology on this machine.")] = False,
    state: Annotated[Path | None, typer.Option(
        "--state", help="Local network: state directory (default ./.state/<network>).",
        file_okay=False)] = None,
    http_port: Annotated[int | None, typer.Option(
        help="Local network: the entry port (default: the policy's).")] = None,
    timeout: Annotated[float, typer.Option(help="Local network: seconds to wait for every app.")]
    = 180.0,
    stack: Annotated[str | None, typer.Option(
        help="Cloud: Pulumi stack name (default: the network's name).")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Cloud: Pulumi state (default: .edgeshot/pulumi next to FILE).")] = None,
    owner: Annotated[str | None, typer.Option(help="Cloud: who owns the servers.")] = None,
    ssh_key: Annotated[Path | None, typer.Option(
        "--ssh-key", help="Cloud: operators' SSH public key.")] = None,
    policy_pack: Annotated[Path | None, typer.Option(
        "--policy-pack", help="Cloud: policy pack to enforce (default: stacks/policy).")] = None,
    preview: Annotated[bool, typer.Option("--preview", help="Cloud: show the changes only.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Cloud: apply without asking.")] = False,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Bring up the network a policy file declares: here (a Local network, or any with
    --local), or on its cloud through Pulumi's Automation API."""
    spec = load_spec(file)
    if local or spec.network.provider.kind == "local":
        network.up(file, local=local, state=state, http_port=http_port, timeout=timeout, fmt=fmt)
        return
    if fmt is OutputFormat.text:
        cloud_up(file, stack=stack, state_dir=state_dir, owner=owner, ssh_key=ssh_key,
                 policy_pack=policy_pack, preview=preview, yes=yes)
        return
    # JSON for scripts: Pulumi's and the configuration's progress go to stderr, the
    # result (the inventory `up` wrote, the exit code) to stdout
    code = 0
    try:
        with contextlib.redirect_stdout(sys.stderr):
            cloud_up(file, stack=stack, state_dir=state_dir, owner=owner, ssh_key=ssh_key,
                     policy_pack=policy_pack, preview=preview, yes=yes)
    except typer.Exit as exc:
        code = exc.exit_code
    name = stack or spec.network.name
    inventory = cloud_state_dir(file, state_dir) / f"{name}.inventory.json"
    print_json({"network": spec.network.name, "provider": spec.network.provider.kind,
                "stack": name, "preview": preview, "exit_code": code,
                "inventory": json.loads(inventory.read_text()) if inventory.is_file() and
                not preview else None})
    if code:
        raise typer.Exit(code)


def _read(path: Path) -> Plan:
    try:
        return read_plan(path)
    except FileNotFoundError:
        raise fail(f"{path}: no such plan file") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        raise fail(f"{path}: not an edgeshot plan ({detail})") from None
    except (OSError, ValueError) as exc:
        raise fail(f"{path}: cannot be read as a plan ({exc})") from None


def _show_plan(p: Plan, fmt: Format) -> None:
    if fmt is Format.json:
        print(p.to_json(), end="")
    elif fmt is Format.markdown:
        print(render_plan_markdown(p), end="")
    else:
        servers = Table(title=f"Plan for network {p.network} ({p.provider})", title_justify="left")
        for col in ("server", "edgepoint", "region", "location", "type", "roles", "slots", "per month"):
            servers.add_column(col)
        for s in (p.controller, *p.servers):
            servers.add_row(s.name, s.edgepoint or "—", s.region, s.location, s.server_type,
                            ", ".join(s.roles), str(s.slots), str(s.monthly_cost))
        apps = Table(title="Applications", title_justify="left")
        for col in ("app", "version", "owner", "edgepoints", "ceiling", "estimate / month", "budget"):
            apps.add_column(col)
        for a in p.apps:
            apps.add_row(a.name, a.version, a.owner, ", ".join(a.edgepoints), str(a.cost_ceiling),
                         f"{a.estimate_low.amount}–{a.estimate_high}",
                         str(a.budget) + ("" if a.within_budget else " (ceiling applies)"))
        out.print(servers)
        out.print(apps)
        out.print(f"{len(p.servers) + 1} servers, {len(p.placements)} placements; "
                  f"infrastructure {p.infrastructure_monthly}/month", highlight=False)


def _show_diff(changes: PlanDiff, p: Plan, fmt: Format) -> None:
    if fmt is Format.json:
        print(json.dumps({"summary": changes.summary(), **changes.model_dump(mode="json")}, indent=1))
    elif fmt is Format.markdown:
        print(render_diff_markdown(changes, p.network), end="")
    else:
        style = {"add": "green", "change": "yellow", "remove": "red"}
        sign = {"add": "+", "change": "~", "remove": "-"}
        table = Table(title=escape(changes.summary()), title_justify="left", show_lines=False)
        for col in ("", "resource", "field", "before", "after"):
            table.add_column(col)
        for c in changes.changes:
            color = style[c.action]
            table.add_row(f"[{color}]{sign[c.action]}[/]", escape(f"{c.kind} {c.id}"), "", "", "")
            if c.action == "change":
                for f in c.fields:
                    table.add_row("", "", escape(f.path), escape(_brief(f.old)), escape(_brief(f.new)))
        out.print(table if changes.changes else changes.summary(), highlight=False, markup=False)


def _brief(value: object) -> str:
    text = "—" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def main() -> None:
    """Console entry point: no traceback ever reaches a user."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
