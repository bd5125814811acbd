"""`edgeshot ssh | logs | exec | push`: reach a network's servers from one place (Fabric).

Register in the main CLI with::

    from edgeshot.cli import remote
    remote.register(app)          # adds ssh, logs, exec and push (help panel "Remote control")

The servers come from the inventory (the Pulumi stack's output:
``pulumi stack output inventory --json > inventory.json``), named by
``--inventory`` or ``EDGESHOT_INVENTORY``; the SSH key by ``--key`` or
``EDGESHOT_SSH_KEY``. A TARGET is a server, an edgepoint, ``controller`` or
``all``; commas join several.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import fail

out = Console()
err = Console(stderr=True)

InventoryOpt = Annotated[Path, typer.Option(
    "--inventory", "-i", envvar="EDGESHOT_INVENTORY",
    help="the stack's inventory (JSON: `pulumi stack output inventory --json`)")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key", "-k", envvar="EDGESHOT_SSH_KEY", help="SSH private key for the servers")]
UserOpt = Annotated[str | None, typer.Option("--user", help="SSH user (default: inventory's)")]
KnownHostsOpt = Annotated[Path | None, typer.Option(
    "--known-hosts", envvar="EDGESHOT_KNOWN_HOSTS",
    help="where server host keys are remembered (default ~/.config/edgeshot/known_hosts)")]
DEFAULT_INVENTORY = Path("inventory.json")


def _fleet(inventory: Path, key: Path | None, user: str | None, known_hosts: Path | None):
    from edgeshot.configure import InventoryError
    from edgeshot.configure.remote import Fleet
    try:
        return Fleet(inventory, key_filename=key, user=user, known_hosts=known_hosts)
    except InventoryError as exc:
        raise fail(str(exc)) from None  # soft-wrapped: paths stay whole


def _targets(fleet, target: str | None) -> None:
    from edgeshot.configure import InventoryError
    try:
        fleet.hosts(target)
    except InventoryError as exc:
        raise fail(str(exc)) from None  # soft-wrapped: paths stay whole


def ssh(
    server: Annotated[str, typer.Argument(help="the server (its name in the plan)")],
    command: Annotated[list[str] | None, typer.Argument(
        help="run this instead of a login shell")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    key: KeyOpt = None,
    user: UserOpt = None,
    known_hosts: KnownHostsOpt = None,
) -> None:
    """Open a shell on SERVER (or run COMMAND there and exit with its status)."""
    fleet = _fleet(inventory, key, user, known_hosts)
    from edgeshot.configure import InventoryError
    try:
        fleet.inventory.host(server)
    except InventoryError as exc:
        raise fail(str(exc)) from None  # soft-wrapped: paths stay whole
    if command:
        res = fleet.run(" ".join(command), server)[server]
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        if res.error:
            err.print(f"[bold red]{escape(server)}:[/] {escape(res.error)}", highlight=False)
        raise typer.Exit(res.exited if res.exited is not None else 255)
    if sys.stdin.isatty():
        raise typer.Exit(fleet.shell(server))
    os.execvp("ssh", fleet.ssh_argv(server))  # no terminal for Fabric to hand over


def logs(
    target: Annotated[str | None, typer.Argument(
        help="a server, an edgepoint, 'controller' or 'all' (default)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="lines of history per server")] = 50,
    unit: Annotated[list[str] | None, typer.Option(
        "--unit", "-u", help="agent, edge, controller or routes (default: all)")] = None,
    since: Annotated[str | None, typer.Option(help="journalctl --since, e.g. '10 min ago'")] = None,
    duration: Annotated[float | None, typer.Option(
        "--for", help="with --follow: stop after this many seconds")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    key: KeyOpt = None,
    user: UserOpt = None,
    known_hosts: KnownHostsOpt = None,
) -> None:
    """Show (or --follow) the logs of edgeshot's services on servers, prefixed by server."""
    fleet = _fleet(inventory, key, user, known_hosts)
    _targets(fleet, target)
    units = unit or []
    try:
        if follow:
            lock = threading.Lock()

            def write(host: str, line: str) -> None:
                with lock:
                    out.print(f"[cyan]{escape(host)}[/] {escape(line)}", highlight=False,
                              soft_wrap=True)
            results = fleet.follow_logs(target, write, units=units, lines=lines, since=since,
                                        duration=duration)
        else:
            results = fleet.logs(target, units=units, lines=lines, since=since)
            for name, r in results.items():
                for line in r.stdout.splitlines():
                    out.print(f"[cyan]{escape(name)}[/] {escape(line)}", highlight=False,
                              soft_wrap=True)
    except ValueError as exc:
        raise fail(str(exc)) from None  # soft-wrapped: paths stay whole
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    failed = {n: r for n, r in results.items() if not r.ok}
    for name, r in failed.items():
        err.print(f"[bold red]{escape(name)}:[/] {escape(r.error or r.stderr.strip() or 'failed')}",
                  highlight=False)
    raise typer.Exit(1 if failed else 0)


def exec_(
    command: Annotated[str, typer.Argument(help="shell command to run on each server")],
    on: Annotated[str, typer.Option("--on", help="a server, an edgepoint, 'controller' or 'all'")],
    serial: Annotated[bool, typer.Option("--serial", help="one server after another")] = False,
    timeout: Annotated[float | None, typer.Option(help="seconds per server")] = None,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    key: KeyOpt = None,
    user: UserOpt = None,
    known_hosts: KnownHostsOpt = None,
) -> None:
    """Run COMMAND on every server of an edgepoint (or any target); one result per server."""
    fleet = _fleet(inventory, key, user, known_hosts)
    _targets(fleet, on)
    results = fleet.run(command, on, parallel=not serial, timeout=timeout)
    for name, r in results.items():
        for line in r.stdout.rstrip("\n").splitlines():
            out.print(f"[cyan]{escape(name)}[/] {escape(line)}", highlight=False, soft_wrap=True)
        for line in r.stderr.rstrip("\n").splitlines():
            err.print(f"[cyan]{escape(name)}[/] [red]{escape(line)}[/]", highlight=False,
                      soft_wrap=True)
    _summary(results)
    raise typer.Exit(0 if all(r.ok for r in results.values()) else 1)


def push(
    tarball: Annotated[Path, typer.Argument(help="a packed appshot (.tar.gz/.tar.zst)",
                                            exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option("--name", help="the appshot's name in the store")],
    on: Annotated[str, typer.Option("--on", help="a server, an edgepoint or 'all'")],
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    key: KeyOpt = None,
    user: UserOpt = None,
    known_hosts: KnownHostsOpt = None,
) -> None:
    """Copy an appshot over SFTP to the agents of a target and install it there, verified
    (for when the controller cannot reach an agent's API)."""
    from edgeshot.configure.remote import parse_install_output
    fleet = _fleet(inventory, key, user, known_hosts)
    _targets(fleet, on)
    try:
        results = fleet.push_appshot(tarball, name, on)
    except ValueError as exc:
        raise fail(str(exc)) from None  # soft-wrapped: paths stay whole
    table = Table(title=f"appshot {escape(name)}", title_justify="left")
    for col in ("server", "result", "detail"):
        table.add_column(col)
    for host, r in results.items():
        info = parse_install_output(r) if r.exited is not None else {"error": r.error}
        ok = r.ok and info.get("ok")
        detail = (f"{info.get('app')} {info.get('version')}, signer {info.get('signer')}, "
                  f"{'installed' if info.get('changed') else 'already there'}") if ok else \
            str(info.get("error") or r.error or r.stderr.strip())
        table.add_row(escape(host), "[green]ok[/]" if ok else "[bold red]failed[/]",
                      escape(detail))
    out.print(table)
    raise typer.Exit(0 if all(r.ok for r in results.values()) else 1)


def _summary(results) -> None:
    table = Table(title_justify="left")
    for col in ("server", "result", "exit"):
        table.add_column(col)
    for name, r in results.items():
        state = "[green]ok[/]" if r.ok else (
            "[bold red]unreachable[/]" if r.exited is None else "[bold red]failed[/]")
        table.add_row(escape(name), state, "—" if r.exited is None else str(r.exited))
        if r.error:
            table.add_row("", f"[red]{escape(r.error)}[/]", "")
    err.print(table)


def register(app: typer.Typer, panel: str | None = "Remote control") -> None:
    """Add ``ssh``, ``logs``, ``exec`` and ``push`` to the main CLI."""
    app.command("ssh", rich_help_panel=panel)(ssh)
    app.command("logs", rich_help_panel=panel)(logs)
    app.command("exec", rich_help_panel=panel)(exec_)
    app.command("push", rich_help_panel=panel)(push)
