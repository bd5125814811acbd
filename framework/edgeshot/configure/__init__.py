"""edgeshot.configure: turn provisioned servers into edge servers, and control them.

    from edgeshot.configure import Inventory, configure
    result = configure(Inventory.parse("inventory.json"), plan, secrets=..., ssh_key=...)
    result.hosts["fsn-1"].status       # ok | changed | failed | unreachable | missing
    result.excluded_edgepoints         # kept out of routing until fixed
    outcome(result.summary()).unusable  # why the network cannot serve, or None

- `configure` runs playbooks/site.yml with ansible-runner, drawing a rich
  progress view, and returns per-host results;
- `Configuration` (edgeshot.configure.resource) is the Pulumi dynamic resource
  that runs it inside `pulumi up`;
- `Fleet` (edgeshot.configure.remote) is remote control over SSH with Fabric:
  commands, logs, appshot pushes over SFTP.

Imports are lazy: the servers import ``edgeshot.configure.appshot_install``
without Ansible or Fabric installed.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Inventory": "_inventory", "InventoryHost": "_inventory", "InventoryError": "_inventory",
    "inventory_from_plan": "_inventory", "ansible_inventory": "_inventory",
    "plan_with_addresses": "_inventory", "site_inventory": "_run", "ANSIBLE_ENV": "_run",
    "SSH_ARGS": "_run",
    "configure": "_run", "ConfigureResult": "_run", "HostResult": "_run",
    "AppshotSource": "_run", "playbooks_hash": "_run", "default_playbooks_dir": "_run",
    "pack_wheelhouse": "_run", "build_wheelhouse": "_wheels", "source_tree": "_wheels",
    "outcome": "_report", "Outcome": "_report", "Exclusion": "_report",
    "Fleet": "remote", "CommandResult": "remote",
    "Configuration": "resource", "ConfigurationProvider": "resource",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'edgeshot.configure' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
