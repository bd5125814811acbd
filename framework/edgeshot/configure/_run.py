"""Run site.yml over an inventory with ansible-runner; per-host results.

    result = configure(inventory, plan, secrets=stack_secrets, ssh_key=key)
    result.excluded_edgepoints   # edgepoints to keep out of routing
    result.hosts["fsn-1"].status # "ok" | "changed" | "failed" | "unreachable"

A host that fails does not stop the others (Ansible carries on with the rest):
its edgepoint is reported in ``excluded_edgepoints`` and stays out of routing
until a later run succeeds. Secrets reach Ansible only through a 0600 file in
a private directory that is removed afterwards; the roles handle them with
``no_log``. The private data dir (inventory, artifacts) is kept only when
asked, and then without the secrets file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeshot.plan import Plan

from ._inventory import Inventory, InventoryHost, ansible_inventory, plan_with_addresses
from ._report import exclusions

HostStatus = Literal["ok", "changed", "failed", "unreachable", "missing"]
# How Ansible runs for edgeshot; ansible.cfg at the top of the repository says the same, so
# that a plain `ansible-playbook` behaves alike (tests/configure compares them).
ANSIBLE_ENV = {
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_TIMEOUT": "15",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_SYSTEM_WARNINGS": "False",
    "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
}
SSH_ARGS = ("-o ControlMaster=auto", "-o ControlPersist=120s", "-o ServerAliveInterval=15",
            "-o ConnectTimeout=10")
SECRET_NAMES = ("edgeAgentToken", "controllerAgentToken", "controllerEdgeToken", "signingKey")
_IGNORED = {"__pycache__", ".git", ".pytest_cache", ".ansible"}


def default_playbooks_dir() -> Path:
    """``$EDGESHOT_PLAYBOOKS``, else the source tree's playbooks/ beside framework/."""
    env = os.environ.get("EDGESHOT_PLAYBOOKS")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "playbooks" / "site.yml"
        if cand.is_file():
            return cand.parent
    raise FileNotFoundError("cannot find playbooks/site.yml: set EDGESHOT_PLAYBOOKS or pass "
                            "playbooks_dir")


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _IGNORED)
        for f in sorted(files):
            if f.endswith((".pyc", ".retry")):
                continue
            out.append(Path(dirpath) / f)
    return out


def playbooks_hash(playbooks_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 over every file of the playbooks (paths and contents): what a run applies."""
    root = Path(playbooks_dir) if playbooks_dir else default_playbooks_dir()
    h = hashlib.sha256()
    for p in _files(root):
        rel = p.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        data = p.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def pack_wheelhouse(wheel_dir: str | os.PathLike[str], dest: str | os.PathLike[str]
                    ) -> tuple[Path, str]:
    """A deterministic tarball of a directory of wheels, under a top directory named by
    its content digest (the edge_agent role's ``edge_agent_wheelhouse_id``)."""
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {wheel_dir}")
    h = hashlib.sha256()
    for w in wheels:
        h.update(w.name.encode() + b"\0" + hashlib.sha256(w.read_bytes()).digest())
    ident = h.hexdigest()[:16]
    out = Path(dest) / f"wheelhouse-{ident}.tar"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            top = tarfile.TarInfo(ident)
            top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, 0
            tf.addfile(top)
            for w in wheels:
                ti = tarfile.TarInfo(f"{ident}/{w.name}")
                ti.size, ti.mode, ti.mtime = w.stat().st_size, 0o644, 0
                with open(w, "rb") as f:
                    tf.addfile(ti, f)
        tmp.replace(out)
    return out, ident


class HostResult(BaseModel):
    """One host's outcome: counts of tasks, errors and what its roles reported."""

    model_config = ConfigDict(extra="forbid")
    name: str
    address: str | None = None
    edgepoint: str | None = None
    roles: tuple[str, ...] = ()
    status: HostStatus = "ok"
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: bool = False
    errors: list[str] = Field(default_factory=list)
    reports: dict[str, Any] = Field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status in ("ok", "changed")


class ConfigureResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: str
    hosts: dict[str, HostResult]
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    duration_s: float
    playbooks_hash: str
    private_data_dir: str | None = None  # kept only when asked
    log_tail: str = ""  # the end of Ansible's output when the run failed

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    @property
    def failed_hosts(self) -> list[str]:
        return [n for n, h in self.hosts.items() if not h.succeeded]

    @property
    def excluded_edgepoints(self) -> list[str]:
        """Edgepoints with a server that failed: kept out of routing until it is fixed."""
        return [e.edgepoint for e in exclusions(self._hosts_data())]

    @property
    def controller_ok(self) -> bool:
        ctl = [h for h in self.hosts.values() if "controller" in h.roles]
        return all(h.succeeded for h in ctl)

    @property
    def ok(self) -> bool:
        return not self.failed_hosts

    def _hosts_data(self) -> dict[str, dict[str, Any]]:
        return {n: {"status": h.status, "edgepoint": h.edgepoint, "roles": list(h.roles),
                    "ok": h.ok, "changed": h.changed, "failed": h.failed,
                    "unreachable": h.unreachable, "errors": h.errors[:5], "reports": h.reports}
                for n, h in self.hosts.items()}

    def summary(self) -> dict[str, Any]:
        """Plain data for Pulumi outputs and JSON reports (no secrets, ever); what
        ``edgeshot.configure._report`` judges."""
        hosts = self._hosts_data()
        return {
            "network": self.network,
            "status": self.status,
            "duration_s": self.duration_s,
            "changed": self.changed,
            "failed_hosts": self.failed_hosts,
            "excluded_edgepoints": [e.edgepoint for e in exclusions(hosts)],
            "hosts": hosts,
        }


@dataclass
class AppshotSource:
    """A packed appshot for the servers of the edgepoints where ``app`` is placed (all
    agents when ``app`` is None): a tarball on this machine or a URL with its SHA-256."""

    name: str
    app: str | None = None
    tarball: Path | None = None
    url: str | None = None
    sha256: str | None = None

    def item(self) -> dict[str, str]:
        if self.tarball is not None:
            return {"name": self.name, "tarball": str(Path(self.tarball).resolve())}
        if self.url and self.sha256:
            return {"name": self.name, "url": self.url, "sha256": self.sha256}
        raise ValueError(f"appshot {self.name}: give a tarball, or a url and its sha256")


EventHandler = Callable[[dict[str, Any]], None]


@dataclass
class _Tracker:
    """Folds ansible-runner events into per-host results (and feeds the progress view)."""

    hosts: dict[str, HostResult]
    on_event: EventHandler | None = None
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        h = self.hosts.get(host) if host else None
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if h is not None:
            if kind == "runner_on_ok":
                facts = res.get("ansible_facts") or {}
                for key, value in facts.items():
                    if key.endswith("_report"):
                        h.reports[key.removesuffix("_report")] = value
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                h.errors.append(f"{data.get('task', '?')}: {_message(res)}")
            elif kind == "runner_on_unreachable":
                h.unreachable = True
                h.errors.append(f"unreachable: {_message(res)}")
        if kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped"):
                self.stats[key] = dict(data.get(key) or {})
        if self.on_event is not None:
            self.on_event(event)
        return True


def _message(res: dict[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if not msg and res.get("censored"):
        msg = res["censored"]
    text = str(msg).strip().splitlines()
    return (text[-1] if text else "failed")[:500]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def site_inventory(inv: Inventory, plan: Plan | None = None, *,
                   plan_file: str | os.PathLike[str] | None = None,
                   hosts: list[InventoryHost] | None = None,
                   host_vars: Mapping[str, Mapping[str, Any]] | None = None,
                   all_vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Ansible inventory site.yml runs on (what `edgeshot inventory` writes and
    `configure` runs with): ``hosts`` (default: every server with an address), the servers
    without one in ``edgeshot_unprovisioned`` (site.yml's last play keeps their edgepoints
    out of routing; ``all_vars`` may narrow it), the network's operators, and
    ``plan_file`` (the plan with the servers' addresses, written by the caller) for the
    controller and the agents."""
    if hosts is None:
        hosts = [h for h in inv.hosts() if h.address]
    variables: dict[str, Any] = {
        "ansible_python_interpreter": ANSIBLE_ENV["ANSIBLE_PYTHON_INTERPRETER"],
        "edgeshot_unprovisioned": {h.name: h.edgepoint for h in inv.servers.values()
                                   if not h.address and h.edgepoint},
    }
    if plan is not None and getattr(plan, "operators", None):
        variables["edgeshot_operators"] = list(plan.operators)
    if plan_file is not None:
        variables |= {"controller_plan": str(plan_file), "edge_agent_plan": str(plan_file)}
    variables |= dict(all_vars or {})
    return ansible_inventory(inv, hosts, host_vars=host_vars, all_vars=variables)


def configure(
    inventory: Inventory | Mapping[str, Any] | str | os.PathLike[str],
    plan: Plan | None = None,
    *,
    secrets: Mapping[str, str] | None = None,
    signing_public_key: str | None = None,
    ssh_key: str | os.PathLike[str] | None = None,
    known_hosts: str | os.PathLike[str] | None = None,
    strict_host_keys: bool = True,
    playbooks_dir: str | os.PathLike[str] | None = None,
    wheelhouse: str | os.PathLike[str] | None = None,
    pip_spec: str | None = None,
    criu_binary: str | os.PathLike[str] | None = None,
    appshots: Iterable[AppshotSource] = (),
    extra_vars: Mapping[str, Any] | None = None,
    vault_file: str | os.PathLike[str] | None = None,
    vault_password_file: str | os.PathLike[str] | None = None,
    limit: Iterable[str] | None = None,
    check: bool = False,
    diff: bool = False,
    forks: int = 20,
    timeout: int | None = None,
    progress: bool | Any = True,
    on_event: EventHandler | None = None,
    keep_private_data_dir: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
) -> ConfigureResult:
    """Run site.yml on the inventory's servers and return each host's result.

    ``secrets``: the stack's ``secrets`` output (edgeAgentToken, controllerAgentToken,
    controllerEdgeToken, signingKey), or put them, vaulted, in ``vault_file`` as
    ``edgeshot_secrets`` with ``vault_password_file``. ``ssh_key``: the private key for
    every server. ``known_hosts``: where host keys are remembered (new keys are accepted
    and recorded, a changed key fails the host); ``strict_host_keys=False`` skips the
    check (throwaway servers only). ``wheelhouse``: a directory of wheels (edgeshot and its
    dependencies) for servers that reach no package index; else ``pip_spec`` is installed
    from the index. ``criu_binary``: a CRIU >= 4.2 to copy (else the criu role's method
    from ``extra_vars``). ``progress``: True for a rich view on stderr, a
    ``rich.console.Console`` to draw on, or False. ``check``: change nothing, report what
    would change (Ansible's check mode); ``diff``: events carry each change's diff
    (``res.diff``; the tasks that handle secrets hide theirs).
    """
    import ansible_runner

    started = time.monotonic()
    inv = inventory if isinstance(inventory, Inventory) else Inventory.parse(inventory)
    books = Path(playbooks_dir) if playbooks_dir else default_playbooks_dir()
    digest = playbooks_hash(books)
    wanted = set(limit) if limit is not None else None
    results: dict[str, HostResult] = {}
    reachable: list[InventoryHost] = []
    for h in inv.hosts():
        if wanted is not None and h.name not in wanted:
            continue
        results[h.name] = HostResult(name=h.name, address=h.address, edgepoint=h.edgepoint,
                                     roles=h.roles)
        if not h.address:
            results[h.name].status = "missing"
            results[h.name].errors.append("no address in the inventory (not provisioned yet?)")
        else:
            reachable.append(h)

    pdd = Path(tempfile.mkdtemp(prefix="edgeshot-configure-", dir=work_dir))
    os.chmod(pdd, 0o700)
    view = None
    log_tail = ""
    try:
        all_vars: dict[str, Any] = {}
        if signing_public_key:
            all_vars["edgeshot_signing_public_key"] = signing_public_key
        if wheelhouse:
            tar, ident = pack_wheelhouse(wheelhouse, pdd)
            all_vars |= {"edge_agent_wheelhouse": str(tar), "edge_agent_wheelhouse_id": ident}
        elif pip_spec:
            all_vars["edge_agent_pip_spec"] = pip_spec
        if criu_binary:
            all_vars |= {"criu_install": "binary",
                         "criu_binary": str(Path(criu_binary).resolve())}
        # servers without an address are not in Ansible's inventory: site.yml's last play
        # still keeps their edgepoints out of routing (those of this run only)
        all_vars["edgeshot_unprovisioned"] = {
            h.name: h.edgepoint for h in inv.servers.values()
            if h.name in results and results[h.name].status == "missing" and h.edgepoint}
        plan_file = None
        if plan is not None:
            plan_file = pdd / "plan.json"
            plan_file.write_text(plan_with_addresses(plan, inv).to_json())
        inv_data = site_inventory(inv, plan, plan_file=plan_file, hosts=reachable,
                                  host_vars=_appshot_vars(inv, plan, list(appshots)),
                                  all_vars=all_vars)
        (pdd / "inventory").mkdir()
        (pdd / "inventory" / "hosts.json").write_text(json.dumps(inv_data, indent=1))

        extra: dict[str, Any] = dict(extra_vars or {})
        if secrets:
            extra["edgeshot_secrets"] = {k: v for k, v in secrets.items() if k in SECRET_NAMES}
        _write_private(pdd / "env" / "extravars", json.dumps(extra))
        cmdline = [*(["--check"] if check else []), *(["--diff"] if diff else [])]
        if vault_file:
            cmdline += ["-e", f"@{Path(vault_file).resolve()}"]
        if vault_password_file:
            cmdline += ["--vault-password-file", str(Path(vault_password_file).resolve())]

        ssh_args = list(SSH_ARGS)
        if strict_host_keys:
            kh = Path(known_hosts) if known_hosts else (
                Path.home() / ".config" / "edgeshot" / "known_hosts")
            kh.parent.mkdir(parents=True, exist_ok=True)
            ssh_args += ["-o StrictHostKeyChecking=accept-new", f"-o UserKnownHostsFile={kh}"]
        else:
            ssh_args += ["-o StrictHostKeyChecking=no", "-o UserKnownHostsFile=/dev/null",
                         "-o LogLevel=ERROR"]
        envvars = {
            **{k: v for k, v in ANSIBLE_ENV.items() if k != "ANSIBLE_PYTHON_INTERPRETER"},
            "ANSIBLE_SSH_ARGS": " ".join(ssh_args),
            "ANSIBLE_HOST_KEY_CHECKING": "True" if strict_host_keys else "False",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(pdd / "cp"),
            "ANSIBLE_ROLES_PATH": str(books / "roles"),
            "ANSIBLE_NOCOLOR": "True",
            "ANSIBLE_FORCE_COLOR": "False",
            "ANSIBLE_HOME": str(pdd / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"),
        }
        bindir = str(Path(_ansible_playbook()).parent)
        envvars["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", os.defpath)])
        if ssh_key:
            envvars["ANSIBLE_PRIVATE_KEY_FILE"] = str(Path(ssh_key).resolve())

        view = _make_view(progress, inv.network, results)
        tracker = _Tracker(results, on_event=_chain(view.event if view else None, on_event))
        if view:
            view.start()
        if not reachable:
            runner_status, rc = "failed", 1
        else:
            r = ansible_runner.run(
                private_data_dir=str(pdd),
                project_dir=str(books),
                playbook="site.yml",
                envvars=envvars,
                cmdline=" ".join(_quote(c) for c in cmdline) or None,
                forks=forks,
                timeout=timeout,
                quiet=True,
                event_handler=tracker,
                suppress_env_files=True,
            )
            runner_status, rc = r.status, r.rc
            if rc != 0:
                with contextlib.suppress(Exception):
                    log_tail = "\n".join(r.stdout.read().splitlines()[-40:])
        _fold_stats(results, tracker.stats, reachable)
    finally:
        if view:
            view.stop()
        with contextlib.suppress(FileNotFoundError):
            (pdd / "env" / "extravars").unlink()
        if not keep_private_data_dir:
            shutil.rmtree(pdd, ignore_errors=True)
    result = ConfigureResult(
        network=inv.network, hosts=results, status=runner_status, rc=rc,
        duration_s=round(time.monotonic() - started, 2), playbooks_hash=digest,
        private_data_dir=str(pdd) if keep_private_data_dir else None, log_tail=log_tail)
    if view:
        view.summary(result)
    return result


def _ansible_playbook() -> str:
    """ansible-playbook beside this interpreter (a venv need not be activated), else PATH."""
    import sys
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise FileNotFoundError("ansible-playbook not found: install edgeshot[configure]")
    return found


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def _chain(*handlers: EventHandler | None) -> EventHandler | None:
    hs = [h for h in handlers if h is not None]
    if not hs:
        return None

    def call(event: dict[str, Any]) -> None:
        for h in hs:
            h(event)
    return call


def _fold_stats(results: dict[str, HostResult], stats: dict[str, dict[str, int]],
                ran: list[InventoryHost]) -> None:
    for h in ran:
        r = results[h.name]
        r.ok = stats.get("ok", {}).get(h.name, 0)
        r.changed = stats.get("changed", {}).get(h.name, 0)
        r.failed = stats.get("failures", {}).get(h.name, 0)
        r.skipped = stats.get("skipped", {}).get(h.name, 0)
        if stats.get("dark", {}).get(h.name):
            r.unreachable = True
        if r.unreachable:
            r.status = "unreachable"
        elif r.failed or (not stats and not r.ok):
            r.status = "failed"
            if not r.errors:
                r.errors.append("the run ended before this host finished")
        else:
            r.status = "changed" if r.changed else "ok"


def _appshot_vars(inv: Inventory, plan: Plan | None, shots: list[AppshotSource]
                  ) -> dict[str, dict[str, Any]]:
    if not shots:
        return {}
    placed: dict[str, set[str]] = {}
    if plan is not None:
        for p in plan.placements:
            placed.setdefault(p.app, set()).add(p.edgepoint)
    out: dict[str, dict[str, Any]] = {}
    for h in inv.servers.values():
        if not h.is_agent:
            continue
        items = [s.item() for s in shots
                 if s.app is None or h.edgepoint in placed.get(s.app, set())
                 or (plan is None)]
        if items:
            out[h.name] = {"appshot_items": items}
    return out


def _make_view(progress: bool | Any, network: str, results: dict[str, HostResult]):
    if progress is False or progress is None:
        return None
    from ._progress import ProgressView
    return ProgressView(network, results, console=None if progress is True else progress)


def secret_file_mode_ok(path: str | os.PathLike[str]) -> bool:
    """True when only the owner may read ``path`` (for vault password and key files)."""
    return not (stat.S_IMODE(os.stat(path).st_mode) & 0o077)
