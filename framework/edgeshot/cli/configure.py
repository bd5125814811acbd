"""`edgeshot configure` and `edgeshot inventory`: the configuration step on its own.

`edgeshot up` provisions, then configures. These two run only the second half, on servers
that exist: `configure` runs site.yml (optionally in check mode with diffs, or limited to
some servers); `inventory` writes the Ansible inventory (and the plan beside it) that a
plain `ansible-playbook playbooks/site.yml` reads through the repository's ansible.cfg.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ._common import fail
from .remote import DEFAULT_INVENTORY, InventoryOpt, KnownHostsOpt

out = Console()
PolicyArg = Annotated[Path, typer.Argument(help="The network's policy file.")]
DEFAULT_HOSTS = Path("inventory") / "hosts.json"  # what ansible.cfg's `inventory` names


def _plan_and_inventory(file: Path, inventory: Path) -> tuple[Any, Any]:
    from edgeshot.configure import Inventory, InventoryError
    from edgeshot.plan import compile_plan
    from edgeshot.spec import SpecError, load

    try:
        plan = compile_plan(load(file))
    except SpecError as exc:
        raise fail(f"{file}: " + "; ".join(str(p) for p in exc.problems)) from None
    try:
        inv = Inventory.parse(inventory)
    except InventoryError as exc:
        raise fail(str(exc)) from None
    if inv.network != plan.network:
        raise fail(f"{inventory} is network {inv.network!r}, but {file} declares "
                   f"{plan.network!r}")
    return plan, inv


def _secrets(path: Path | None) -> dict[str, str]:
    """The stack's `secrets` output (`pulumi stack output secrets --show-secrets --json`)."""
    from edgeshot.configure._run import SECRET_NAMES, secret_file_mode_ok

    if path is None:
        return {}
    try:
        if not secret_file_mode_ok(path):
            raise fail(f"{path}: readable by others; it holds the network's tokens: "
                       f"chmod 600 {path}")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise fail(f"{path}: no such file (write it with `pulumi stack output secrets "
                   "--show-secrets --json > FILE`, mode 0600)") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise fail(f"{path}: expected an object with {', '.join(SECRET_NAMES)}")
    missing = [n for n in SECRET_NAMES if not data.get(n)]
    if missing:
        raise fail(f"{path}: missing {', '.join(missing)} (the stack's `secrets` output has "
                   "them all)")
    return {n: str(data[n]) for n in SECRET_NAMES}


def _extra_vars(items: list[str] | None) -> dict[str, Any]:
    """``-e`` as ansible-playbook reads it: ``@FILE`` (YAML or JSON), a JSON object, or
    ``key=value``; later ones win."""
    import yaml

    merged: dict[str, Any] = {}
    for item in items or []:
        where = item
        try:
            if item.startswith("@"):
                where = item[1:]
                value = yaml.safe_load(Path(where).read_text())
            elif item.lstrip().startswith("{"):
                value = json.loads(item)
            else:
                key, sep, val = item.partition("=")
                if not sep or not key:
                    raise ValueError("expected @FILE, a JSON object or key=value")
                value = {key: val}
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise fail(f"-e {where}: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(value, dict):
            raise fail(f"-e {where}: expected variables (an object), got "
                       f"{type(value).__name__}")
        merged |= value
    return merged


def print_diff(event: dict[str, Any]) -> None:
    """Show the diff of a changed (or, in check mode, would-change) task; tasks handling
    secrets (no_log) carry none."""
    data = event.get("event_data") or {}
    res = data.get("res") if isinstance(data.get("res"), dict) else {}
    if event.get("event") != "runner_on_ok" or not res.get("changed") or not res.get("diff"):
        return
    diffs = res["diff"] if isinstance(res["diff"], list) else [res["diff"]]
    for d in diffs:
        if not isinstance(d, dict):
            continue
        head = f"--- {data.get('host')}: {data.get('task')}"
        if "prepared" in d:
            text = str(d["prepared"])
        else:
            before, after = str(d.get("before", "")), str(d.get("after", ""))
            text = "".join(difflib.unified_diff(
                before.splitlines(keepends=True), after.splitlines(keepends=True),
                str(d.get("before_header", "before")), str(d.get("after_header", "after"))))
        if text.strip():
            out.print(head, highlight=False, markup=False, soft_wrap=True)
            out.print(text.rstrip("\n"), highlight=False, markup=False, soft_wrap=True)


def configure(
    file: PolicyArg,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    secrets: Annotated[Path | None, typer.Option(
        "--secrets", help="The stack's secrets (JSON, 0600: `pulumi stack output secrets "
        "--show-secrets --json`).")] = None,
    vault_file: Annotated[Path | None, typer.Option(
        "--vault-file", help="Or: an Ansible Vault file defining edgeshot_secrets.")] = None,
    vault_password_file: Annotated[Path | None, typer.Option(
        "--vault-password-file", help="Its password file (0600).")] = None,
    key: Annotated[Path | None, typer.Option(
        "--key", "-k", envvar="EDGESHOT_SSH_KEY",
        help="SSH private key for the servers (default: the ssh-agent).")] = None,
    known_hosts: KnownHostsOpt = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Change nothing; report what would change.")] = False,
    diff: Annotated[bool, typer.Option(
        "--diff", help="Show each change (files, templates; never secrets).")] = False,
    limit: Annotated[list[str] | None, typer.Option(
        "--limit", help="Only these: a server, an edgepoint or 'controller' (repeat, or "
        "separate with commas).")] = None,
    extra_vars: Annotated[list[str] | None, typer.Option(
        "--extra-vars", "-e", help="Role variables: @FILE (YAML/JSON), a JSON object or "
        "key=value (repeat).")] = None,
    wheelhouse: Annotated[Path | None, typer.Option(
        "--wheelhouse", file_okay=False, help="Install edgeshot from these wheels as they are "
        "(default: this edgeshot, built into the cache).")] = None,
    criu_binary: Annotated[Path | None, typer.Option(
        "--criu-binary", dir_okay=False, help="The CRIU to copy to the agents (default: the "
        "newest one scripts/setup.d built into the cache).")] = None,
) -> None:
    """Configure the network's servers (site.yml) without provisioning anything."""
    plan, inv = _plan_and_inventory(file, inventory)
    tokens = _secrets(secrets)
    variables = _extra_vars(extra_vars)
    if not tokens and not vault_file:
        raise fail("the servers need the network's tokens: pass --secrets FILE (the stack's "
                   "`secrets` output) or --vault-file FILE --vault-password-file FILE")
    if vault_file and not vault_password_file:
        raise fail("--vault-file needs --vault-password-file")
    names = None
    if limit:
        from edgeshot.configure import InventoryError
        try:
            names = [h.name for h in inv.select(",".join(limit))]
        except InventoryError as exc:
            raise fail(str(exc)) from None
    public = ""
    if tokens:
        from edgeshot.provision import public_key_of
        try:
            public = public_key_of(tokens["signingKey"])
        except (ValueError, TypeError) as exc:
            raise fail(f"{secrets}: signingKey is not an Ed25519 private key ({exc})") from None
    from edgeshot.configure import InventoryError, outcome

    from .up import configure_servers, verdict_line

    home = Path(os.environ.get("HOME") or Path.home())
    try:
        result = configure_servers(
            plan, inv, tokens, public, key, known_hosts or (
                home / ".config" / "edgeshot" / "known_hosts"), home,
            check=check, diff=diff, limit=names, on_event=print_diff if diff else None,
            vault_file=vault_file, vault_password_file=vault_password_file,
            extra_vars=variables, wheelhouse=wheelhouse, criu_binary=criu_binary)
    except (InventoryError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise fail(f"configuring the servers failed: {exc}") from None
    if check:
        changed = sum(1 for h in result.hosts.values() if h.status == "changed")
        failed = len(result.failed_hosts)
        out.print(f"check mode: nothing changed; {changed} server(s) would change, "
                  f"{failed} failed", highlight=False)
        raise typer.Exit(1 if failed else 0)
    verdict = outcome(result.summary())
    out.print(verdict_line(plan.network, verdict), highlight=False)
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)


def inventory(
    file: PolicyArg,
    stack_inventory: InventoryOpt = DEFAULT_INVENTORY,
    out_file: Annotated[Path, typer.Option(
        "--out", help="The Ansible inventory to write (the plan goes beside it).")]
    = DEFAULT_HOSTS,
) -> None:
    """Write the Ansible inventory of a network (and its plan beside it) for a plain
    `ansible-playbook playbooks/site.yml` (see ansible.cfg)."""
    from edgeshot.agent._sys import write_private
    from edgeshot.configure import plan_with_addresses, site_inventory

    plan, inv = _plan_and_inventory(file, stack_inventory)
    plan_file = out_file.resolve().with_name("plan.json")
    data = site_inventory(inv, plan, plan_file=plan_file)
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(plan_file, plan_with_addresses(plan, inv).to_json())
        write_private(out_file, json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise fail(f"{out_file}: cannot write the inventory ({exc.strerror or exc})") from None
    hosts = [h.name for h in inv.hosts() if h.address]
    missing = [h.name for h in inv.hosts() if not h.address]
    out.print(f"{escape(str(out_file))}: {len(hosts)} server(s) of network "
              f"{escape(inv.network)}" + (f"; without an address: {', '.join(missing)}"
                                          if missing else "")
              + f"; plan: {escape(str(plan_file))}", highlight=False, soft_wrap=True)
