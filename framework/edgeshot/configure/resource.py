"""One `pulumi up` provisions and configures: a Pulumi dynamic resource that runs site.yml.

    network = EdgeNetwork(plan.network, plan, settings)          # edgeshot.provision
    Configuration("configuration", inventory=network.inventory, plan=plan,
                  secrets=network.secrets, signing_public_key=settings.signing_public_key,
                  ssh_key="~/.ssh/edgeshot")

Its inputs are the playbooks' content hash and the inventory (plus the plan, the
secrets and the run's options): when any of them changes, `pulumi up` runs the
configuration again (`create`/`update` call `edgeshot.configure.configure`). A
run whose hosts partly failed is not an error: the outputs name the failed hosts
and the edgepoints kept out of routing (site.yml's last play has told the
controller not to route to them), and the next `pulumi up` retries them (`diff`
reports a change while any host failed). Only a run that leaves nothing to route
to (the controller or every edgepoint not configured) makes the resource fail
(`edgeshot.configure._report.outcome`, as `edgeshot up` judges it).

The provider's methods are plain Python: the tests call them directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

# Inputs whose change means: configure again.
WATCHED = ("playbooks_hash", "inventory", "plan", "secrets", "signing_public_key", "options")
OPTIONS = ("ssh_key", "known_hosts", "strict_host_keys", "wheelhouse", "pip_spec",
           "criu_binary", "extra_vars", "forks", "timeout", "playbooks_dir", "progress")


class ConfigurationFailed(Exception):
    """The run configured nothing usable (the controller or every server failed)."""


def _configure(**kwargs: Any):
    """The configuration run (a seam for tests)."""
    from ._run import configure
    return configure(**kwargs)


class ConfigurationProvider(ResourceProvider):
    """create/update run site.yml over the inventory; delete leaves the servers alone
    (their own resources remove them)."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from ._inventory import Inventory, InventoryError
        failures = []
        try:
            Inventory.parse(news.get("inventory") or {})
        except InventoryError as exc:
            failures.append(CheckFailure("inventory", str(exc)))
        if not news.get("playbooks_hash"):
            failures.append(CheckFailure("playbooks_hash", "missing"))
        unknown = set(news.get("options") or {}) - set(OPTIONS)
        if unknown:
            failures.append(CheckFailure("options", f"unknown option(s) {sorted(unknown)}"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in WATCHED if olds.get(k) != news.get(k)]
        retry = bool(olds.get("failed_hosts"))
        return DiffResult(changes=bool(changed) or retry, replaces=[], stables=[],
                          delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._apply(props)
        return CreateResult(id_=f"{outs['network']}-configuration", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        from edgeshot.plan import Plan

        from ._inventory import Inventory
        from ._report import outcome, why
        from ._run import playbooks_hash

        opts = dict(props.get("options") or {})
        books = opts.get("playbooks_dir")
        if books and playbooks_hash(books) != props.get("playbooks_hash"):
            raise ConfigurationFailed(
                f"the playbooks in {books} changed since this program read them; run again")
        inv = Inventory.parse(props["inventory"])
        plan = Plan.model_validate_json(props["plan"]) if props.get("plan") else None
        result = _configure(
            inventory=inv, plan=plan, secrets=props.get("secrets") or None,
            signing_public_key=props.get("signing_public_key") or None,
            ssh_key=opts.get("ssh_key"), known_hosts=opts.get("known_hosts"),
            strict_host_keys=opts.get("strict_host_keys", True),
            playbooks_dir=books, wheelhouse=opts.get("wheelhouse"),
            pip_spec=opts.get("pip_spec"), criu_binary=opts.get("criu_binary"),
            extra_vars=opts.get("extra_vars"), forks=int(opts.get("forks") or 20),
            timeout=opts.get("timeout"), progress=opts.get("progress", True))
        summary = result.summary()
        verdict = outcome(summary)
        if verdict.unusable is not None:
            bad = "; ".join(f"{n}: {why(summary['hosts'][n])}" for n in verdict.not_configured)
            raise ConfigurationFailed(f"configuring network {inv.network} failed: "
                                      f"{verdict.unusable} ({bad or 'no servers'})")
        for ex in verdict.excluded:
            pulumi.log.warn(f"edgepoint {ex.edgepoint} kept out of routing until the next "
                            f"`pulumi up` configures it: {ex.why}")
        return {
            **{k: props.get(k) for k in WATCHED},
            "network": inv.network,
            "changed": summary["changed"],
            "failed_hosts": summary["failed_hosts"],
            "excluded_edgepoints": summary["excluded_edgepoints"],
            "hosts": summary["hosts"],
            "duration_s": result.duration_s,
        }


class Configuration(Resource, module="edgeshot", name="Configuration"):
    """The configuration of a network's servers, as one resource of the stack.

    Outputs: ``hosts`` (per server: status ok/changed/failed/unreachable/missing, counts,
    errors, what its roles reported), ``failed_hosts``, ``excluded_edgepoints``,
    ``changed``.
    """

    hosts: pulumi.Output[dict[str, Any]]
    failed_hosts: pulumi.Output[list[str]]
    excluded_edgepoints: pulumi.Output[list[str]]
    changed: pulumi.Output[int]

    def __init__(self, name: str, *, inventory: pulumi.Input[dict[str, Any]],
                 plan: Any = None, secrets: pulumi.Input[dict[str, str]] | None = None,
                 signing_public_key: pulumi.Input[str] | None = None,
                 ssh_key: str | os.PathLike[str] | None = None,
                 known_hosts: str | os.PathLike[str] | None = None,
                 playbooks_dir: str | os.PathLike[str] | None = None,
                 wheelhouse: str | os.PathLike[str] | None = None,
                 pip_spec: str | None = None, criu_binary: str | os.PathLike[str] | None = None,
                 extra_vars: dict[str, Any] | None = None, forks: int = 20,
                 timeout: int | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        from ._run import default_playbooks_dir, playbooks_hash

        books = Path(playbooks_dir) if playbooks_dir else default_playbooks_dir()
        options = {k: v for k, v in {
            "ssh_key": str(Path(ssh_key).expanduser()) if ssh_key else None,
            "known_hosts": str(Path(known_hosts).expanduser()) if known_hosts else None,
            "playbooks_dir": str(books.resolve()),
            "wheelhouse": str(Path(wheelhouse).resolve()) if wheelhouse else None,
            "pip_spec": pip_spec,
            "criu_binary": str(Path(criu_binary).resolve()) if criu_binary else None,
            "extra_vars": extra_vars, "forks": forks, "timeout": timeout,
        }.items() if v is not None}
        props = {
            "playbooks_hash": playbooks_hash(books),
            "inventory": inventory,
            "plan": plan.to_json() if plan is not None and hasattr(plan, "to_json") else plan,
            "secrets": pulumi.Output.secret(secrets) if secrets is not None else None,
            "signing_public_key": signing_public_key,
            "options": options,
            "network": None, "changed": None, "failed_hosts": None,
            "excluded_edgepoints": None, "hosts": None, "duration_s": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["secrets"]))
        super().__init__(ConfigurationProvider(), name, props, opts)
