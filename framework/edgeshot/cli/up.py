"""`edgeshot up FILE` for a cloud network (Hetzner, AWS, DigitalOcean).

The same program as the stack templates (`edgeshot.provision.program`), run through
Pulumi's Automation API. The state backend and secrets provider are Pulumi's own choices
(`resolve_state`): `--state-dir` (a file backend), else PULUMI_BACKEND_URL /
PULUMI_SECRETS_PROVIDER, else the policy's provider (`Hetzner(backend="s3://…",
secrets_provider="awskms://…")`), else a file backend next to the policy file
(`.edgeshot/pulumi/`) and a passphrase. The Automation API drives the Pulumi CLI:
when it is missing, this says how to install it, together with every other problem
found before anything starts. Tokens and the signing key are made on first use and
kept, encrypted, in the stack's configuration; the inventory is written next to the
state.

Then it configures the servers (`edgeshot.configure.configure`: site.yml over SSH, from
the stack's `inventory`, `secrets` and `signing_public_key` outputs) and reports each
server's result. The stack program does not hold the `Configuration` resource (it
would put one operator's key path and Ansible into every `pulumi up` of the stack
templates), so this is the one place both happen. A server that fails keeps its
edgepoint out of routing (site.yml's last play tells the controller) and the rest of
the rollout goes on; the exit status is non-zero only when nothing usable was
configured (the controller, or every edgepoint, not configured).

Register in the main CLI (the local `up --local` path stays the main CLI's):

    from edgeshot.cli.up import cloud_destroy, cloud_up, print_resources
    app.command("destroy")(cloud_destroy)
    # in `up`: for a cloud network, return cloud_up(file, ...); in `plan --resources`:
    # print_resources(plan)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeshot.configure import Outcome, outcome
from edgeshot.plan import Plan, compile_plan
from edgeshot.spec import SpecError, check_backend, check_secrets_provider, load

from ._common import err

out = Console()

PROVIDER_PLUGINS = {"hetzner": ("hcloud", "pulumi_hcloud"), "aws": ("aws", "pulumi_aws"),
                    "digitalocean": ("digitalocean", "pulumi_digitalocean")}
CREDENTIAL_ENV = {"hetzner": ("HCLOUD_TOKEN",),
                  "digitalocean": ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")}
TOKENS = ("edgeAgentToken", "controllerAgentToken", "controllerEdgeToken")
SSH_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
INSTALL = (
    "the Pulumi CLI is not installed: `edgeshot up` drives it through Pulumi's Automation API "
    "(no `pulumi` on PATH nor in ~/.pulumi/bin). Install it with\n"
    "      curl -fsSL https://get.pulumi.com | sh\n"
    "    (Linux, macOS; Windows and package managers: https://www.pulumi.com/docs/install/), "
    "then run this again. Meanwhile `edgeshot plan FILE --resources` lists what it would create."
)

PROTECTED_HINT = (
    "the controller's server is protected (it holds the usage ledger): keep a copy of "
    "/var/lib/edgeshot-controller first, then `pulumi state unprotect --all` in the stack's workspace "
    "and run `edgeshot destroy` again")


def pulumi_path(env: dict[str, str] | None = None, home: Path | None = None) -> Path | None:
    """The Pulumi CLI: on PATH, or where its installer puts it (~/.pulumi/bin)."""
    env = dict(os.environ) if env is None else env
    found = shutil.which("pulumi", path=env.get("PATH", ""))
    if found:
        return Path(found)
    home = home or Path(env.get("HOME") or Path.home())
    candidate = home / ".pulumi" / "bin" / "pulumi"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def pulumi_color(console: Console) -> str:
    """Pulumi's --color: colours only on a terminal, and never under NO_COLOR (rich reads
    NO_COLOR into `no_color`; Pulumi's output passes through this process)."""
    return "always" if console.is_terminal and not console.no_color else "never"


def default_ssh_key(home: Path) -> Path | None:
    return next((home / ".ssh" / k for k in SSH_KEYS if (home / ".ssh" / k).is_file()), None)


@dataclass(frozen=True)
class StateChoice:
    """Where the stack's state lives and how its secrets are encrypted, and why."""

    backend: str            # a Pulumi backend URL
    secrets_provider: str   # passphrase | default | awskms://… | hashivault://… …
    workdir: Path           # always local: the Automation API's workspace, inventory, host keys
    source: str             # what chose the backend: --state-dir, PULUMI_BACKEND_URL, policy, default


def state_workdir(file: Path, state_dir: Path | None) -> Path:
    """Where `up` keeps its local files whatever the backend: the Automation API's
    workspace, the inventory it wrote, the servers' host keys."""
    return (state_dir or file.resolve().parent / ".edgeshot" / "pulumi").resolve()


def resolve_state(file: Path, provider: Any, state_dir: Path | None,
                  env: dict[str, str]) -> tuple[StateChoice | None, list[str]]:
    """The backend and secrets provider of `up`: --state-dir, else the environment
    (PULUMI_BACKEND_URL, PULUMI_SECRETS_PROVIDER), else the policy's provider, else a file
    backend next to the policy file and a passphrase. Returns (choice, problems)."""
    workdir = state_workdir(file, state_dir)
    problems = []
    chosen: list[tuple[str, str | None]] = [
        ("--state-dir", f"file://{workdir}" if state_dir else None),
        ("PULUMI_BACKEND_URL", env.get("PULUMI_BACKEND_URL") or None),
        ("policy", getattr(provider, "backend", None)),
        ("default", f"file://{workdir}")]
    source, backend = next((s, b) for s, b in chosen if b)
    secrets_chosen = [("PULUMI_SECRETS_PROVIDER", env.get("PULUMI_SECRETS_PROVIDER") or None),
                      ("policy", getattr(provider, "secrets_provider", None))]
    secrets_source, secrets = next(((s, v) for s, v in secrets_chosen if v), ("default", None))
    # the policy's values were checked when it loaded; the environment's are checked here
    for name, check in (("PULUMI_BACKEND_URL", check_backend),
                        ("PULUMI_SECRETS_PROVIDER", check_secrets_provider)):
        if name in (source, secrets_source):
            try:
                check(env[name])
            except ValueError as exc:
                problems.append(f"{name}={env[name]!r}: {exc}")
    if secrets is None:  # Pulumi Cloud encrypts with its own key; elsewhere, a passphrase
        secrets = "default" if backend.startswith("https://") else "passphrase"
    if problems:
        return None, problems
    return StateChoice(backend, secrets, workdir, source), []


def state_problems(choice: StateChoice, env: dict[str, str], home: Path) -> list[str]:
    """What the chosen backend and secrets provider need and the environment lacks."""
    problems = []
    if choice.secrets_provider == "passphrase" and not env.get("PULUMI_CONFIG_PASSPHRASE") \
            and not env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        problems.append(
            "no passphrase for the stack's secrets: the state encrypts tokens and the "
            "signing key with it. `export PULUMI_CONFIG_PASSPHRASE=…` (or "
            "PULUMI_CONFIG_PASSPHRASE_FILE) and keep it: without it they cannot be read again "
            "(or choose a KMS: PULUMI_SECRETS_PROVIDER=awskms://… / hashivault://…)")
    if choice.secrets_provider.startswith("hashivault://"):
        missing = [n for n in ("VAULT_SERVER_URL", "VAULT_SERVER_TOKEN") if not env.get(n)]
        if missing:
            problems.append(f"secrets provider {choice.secrets_provider}: export "
                            f"{' and '.join(missing)} (Vault's address and a token)")
    if choice.backend.startswith("https://") and not env.get("PULUMI_ACCESS_TOKEN") and not (
            home / ".pulumi" / "credentials.json").is_file():
        problems.append(f"backend {choice.backend}: no Pulumi Cloud login: export "
                        "PULUMI_ACCESS_TOKEN (or run `pulumi login` once)")
    if choice.secrets_provider == "default" and not choice.backend.startswith("https://"):
        problems.append(f"secrets provider 'default' is Pulumi Cloud's own, but the backend is "
                        f"{choice.backend}: choose passphrase or a KMS URL")
    return problems


def preflight(plan: Plan, env: dict[str, str] | None = None, ssh_key: Path | None = None,
              home: Path | None = None, state: StateChoice | None = None) -> list[str]:
    """Every reason `up` cannot start, found without running anything."""
    env = dict(os.environ) if env is None else env
    home = home or Path(env.get("HOME") or Path.home())
    problems = []
    if pulumi_path(env, home) is None:
        problems.append(INSTALL)
    state = state or StateChoice("file://", "passphrase", home, "default")
    problems += state_problems(state, env, home)
    names = CREDENTIAL_ENV.get(plan.provider, ())
    if names and not any(env.get(n) for n in names):
        problems.append(f"no {plan.provider} API token: export {' or '.join(names)}")
    key = ssh_key or default_ssh_key(home)
    if key is None:
        problems.append("no SSH public key: pass --ssh-key PATH (none of ~/.ssh/"
                        f"{', ~/.ssh/'.join(SSH_KEYS)} exists)")
    elif not key.is_file():
        problems.append(f"--ssh-key {key}: no such file")
    return problems


def private_key_of(public: Path, env: dict[str, str]) -> tuple[Path | None, str | None]:
    """The SSH private key Ansible uses: the file beside the public key, else the ssh-agent
    (None); or why there is none."""
    private = public.with_suffix("") if public.suffix == ".pub" else None
    if private is not None and private.is_file():
        return private, None
    if env.get("SSH_AUTH_SOCK"):
        return None, None
    return None, (f"no private key for {public} (expected {private or public.name + ' without .pub'}"
                  " or a running ssh-agent): configuring the servers logs in with it")


def cache_dir(env: dict[str, str], home: Path) -> Path:
    """Where scripts/setup.d caches builds (CRIU) and edgeshot keeps its wheelhouse."""
    if env.get("EDGESHOT_CACHE"):
        return Path(env["EDGESHOT_CACHE"])
    return Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "edgeshot"


def criu_source(cache: Path) -> dict[str, Any]:
    """configure() arguments for CRIU on the agents: the newest build that
    scripts/setup.d/20-criu.sh cached here, else the distribution's package (where that one
    fails `criu check`, the agents cold-start and the report says so)."""
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())
    builds = sorted((p for p in cache.glob("criu/*/criu") if os.access(p, os.X_OK)), key=version)
    if builds:
        return {"criu_binary": builds[-1]}
    return {"extra_vars": {"criu_install": "package"}}


def verdict_line(network: str, verdict: Outcome) -> str:
    """The last line of `edgeshot up` (rich markup): what the network can do now."""
    total = len(verdict.configured) + len(verdict.not_configured)
    done = f"{len(verdict.configured)} of {total} servers configured"
    if verdict.unusable is not None:
        return f"[bold red]network {escape(network)} is not usable:[/] {escape(verdict.unusable)}"
    if not verdict.excluded:
        return f"[green]network {escape(network)} is up:[/] {done}; every edgepoint is routed"
    eps = ", ".join(e.edgepoint for e in verdict.excluded)
    return (f"[yellow]network {escape(network)} is up without {escape(eps)}:[/] {done}; "
            "kept out of routing until `edgeshot up` configures their servers")


def new_signing_key() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def stack_settings(plan: Plan, policy_file: Path, existing: dict[str, Any], owner: str | None,
                   ssh_public_key: str | None) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """Config to set on the stack, key -> (value, secret), and what is missing. Keeps what
    the stack has; makes tokens and the signing key the first time."""
    values: dict[str, tuple[str, bool]] = {
        "edgeshot:policyFile": (str(policy_file.resolve()), False)}
    problems = []
    if owner:
        values["edgeshot:owner"] = (owner, False)
    elif "edgeshot:owner" not in existing:
        problems.append("who owns these servers? pass --owner NAME (a team or cost centre; it "
                        "labels every resource and is kept for the next runs)")
    if ssh_public_key:
        values["edgeshot:sshPublicKey"] = (ssh_public_key.strip(), False)
    for name in TOKENS:
        if f"edgeshot:{name}" not in existing:
            values[f"edgeshot:{name}"] = (secrets.token_urlsafe(32), True)
    if "edgeshot:signingKey" not in existing:
        values["edgeshot:signingKey"] = (new_signing_key(), True)
    if plan.provider == "aws" and "aws:region" not in existing:
        values["aws:region"] = (plan.controller.location, False)
    return values, problems


def _fail(problems: list[str]) -> typer.Exit:
    n = len(problems)
    err.print(f"[bold red]edgeshot up cannot start[/] ({n} problem{'s' if n != 1 else ''}):",
              highlight=False, soft_wrap=True)
    for p in problems:
        err.print(f"  - {escape(p)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _load_cloud_plan(file: Path) -> tuple[Plan, Any]:
    """The plan of a cloud network's policy file, and its spec provider (backend, secrets)."""
    try:
        spec = load(file)
        plan = compile_plan(spec)
    except SpecError as exc:
        raise _fail([str(p) for p in exc.problems]) from None
    if plan.provider == "local":
        raise _fail([f"network {plan.network!r} in {file} is local: run it on this machine "
                     f"with `edgeshot up --local {file}`"])
    return plan, spec.network.provider


def _state(file: Path, provider: Any, state_dir: Path | None) -> StateChoice:
    choice, problems = resolve_state(file, provider, state_dir, dict(os.environ))
    if choice is None:
        raise _fail(problems)
    return choice


def _stack(plan: Plan, file: Path, stack_name: str, state: StateChoice) -> Any:
    from pulumi import automation as auto

    from edgeshot.provision import program

    path = pulumi_path()
    assert path is not None  # preflight said so
    root = path.parent.parent if path.parent.name == "bin" and path.parent.parent.name == ".pulumi" \
        else None
    try:
        command = auto.PulumiCommand(root=str(root) if root else None)
    except FileNotFoundError:
        raise _fail([INSTALL]) from None
    project = f"edgeshot-{plan.provider}"
    work = state.workdir / project
    work.mkdir(parents=True, exist_ok=True)
    if state.backend.startswith("file://"):
        Path(state.backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    settings = auto.ProjectSettings(name=project, runtime="python",
                                    backend=auto.ProjectBackend(url=state.backend))
    opts = auto.LocalWorkspaceOptions(
        work_dir=str(work), project_settings=settings, secrets_provider=state.secrets_provider,
        pulumi_command=command,
        # the CLI would let PULUMI_BACKEND_URL override the project's backend: say the same
        env_vars={"EDGESHOT_POLICY_FILE": str(file.resolve()), "PULUMI_SKIP_UPDATE_CHECK": "true",
                  "PULUMI_BACKEND_URL": state.backend})
    provider = plan.provider
    return auto.create_or_select_stack(stack_name, project_name=project,
                                       program=lambda: program(provider), opts=opts)


def _print_inventory(inventory: dict[str, Any], path: Path) -> None:
    table = Table(title=f"{inventory['network']} ({inventory['provider']})", title_justify="left")
    for col in ("server", "role", "edgepoint", "region", "address", "private"):
        table.add_column(col)
    for name, s in [("controller", inventory["controller"]), *inventory["servers"].items()]:
        table.add_row(name, s["role"], s["edgepoint"] or "—", s["region"], s["address"] or "—",
                      s["private_address"] or "—")
    out.print(table)
    out.print(f"inventory: {path}  (secrets: `pulumi stack output secrets --show-secrets` "
              "in the state's workspace)", highlight=False)


def configure_servers(plan: Plan, inventory: Any, secrets: dict[str, str],
                      signing_public_key: str, private_key: Path | None, known_hosts: Path,
                      home: Path, *, wheelhouse: Path | None = None,
                      criu_binary: Path | None = None, **options: Any) -> Any:
    """site.yml over the inventory's servers with this edgeshot (as wheels from its source
    tree, else the same version from the servers' index) and the cached CRIU build; the
    progress view ends with the per-server table. ``wheelhouse``, ``criu_binary``: use
    these as they are instead. ``options``: ``check``, ``diff``, ``limit``, ``on_event``…
    for `configure`. Returns the ConfigureResult."""
    from edgeshot.configure import build_wheelhouse, configure, source_tree

    cache = cache_dir(dict(os.environ), home)
    kwargs: dict[str, Any] = {"criu_binary": criu_binary} if criu_binary else criu_source(cache)
    try:
        project: Path | None = source_tree()
    except FileNotFoundError:
        project = None
    if wheelhouse is not None:
        kwargs["wheelhouse"] = wheelhouse
    elif project is not None:  # this edgeshot, as wheels (the servers need this Python minor)
        kwargs["wheelhouse"] = build_wheelhouse(
            cache / f"wheelhouse-py{sys.version_info[0]}{sys.version_info[1]}", project)
    else:  # installed from a package: the servers' package index has it too
        kwargs["pip_spec"] = f"edgeshot=={metadata.version('edgeshot')}"
    return configure(inventory, plan, secrets=secrets, signing_public_key=signing_public_key,
                     ssh_key=private_key, known_hosts=known_hosts, progress=out,
                     **kwargs, **options)


def _configure(plan: Plan, outputs: dict[str, Any], private_key: Path | None, state: Path,
               stack_name: str, home: Path) -> Outcome:
    """site.yml over the stack's servers; the edgepoints kept out of routing."""
    result = configure_servers(
        plan, outputs["inventory"].value, outputs["secrets"].value,
        outputs["signing_public_key"].value, private_key, state / f"{stack_name}.known_hosts",
        home)
    return outcome(result.summary())


def cloud_up(
    file: Annotated[Path, typer.Argument(help="Policy file of a cloud network.")],
    stack: Annotated[str | None, typer.Option(help="Stack name (default: the network's name).")]
    = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Pulumi state in this directory (default: PULUMI_BACKEND_URL, the "
        "policy's backend, or .edgeshot/pulumi next to FILE).")] = None,
    owner: Annotated[str | None, typer.Option(
        help="Who owns the servers (team or cost centre); kept for the next runs.")] = None,
    ssh_key: Annotated[Path | None, typer.Option(
        "--ssh-key", help="Operators' SSH public key (default: ~/.ssh/id_ed25519.pub…).")] = None,
    policy_pack: Annotated[Path | None, typer.Option(
        "--policy-pack", help="Policy pack to enforce (default: the shipped stacks/policy).")]
    = None,
    preview: Annotated[bool, typer.Option("--preview", help="Show the changes only.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
) -> None:
    """Create or update a cloud network's servers from its policy file (Pulumi Automation API)."""
    plan, provider = _load_cloud_plan(file)
    home = Path(os.environ.get("HOME") or Path.home())
    state = _state(file, provider, state_dir)
    problems = preflight(plan, ssh_key=ssh_key, home=home, state=state)
    key_file = ssh_key or default_ssh_key(home)
    private_key, no_key = (private_key_of(key_file, dict(os.environ))
                           if key_file and key_file.is_file() and not preview else (None, None))
    if problems or no_key:
        raise _fail([*problems, *([no_key] if no_key else [])])
    st = _stack(plan, file, stack or plan.network, state)
    existing = st.get_all_config()
    public_key = key_file.read_text() if key_file and (
        ssh_key or "edgeshot:sshPublicKey" not in existing) else None
    values, problems = stack_settings(plan, file, existing, owner, public_key)
    if problems:
        raise _fail(problems)
    from pulumi import automation as auto
    st.set_all_config({k: auto.ConfigValue(value=v, secret=s) for k, (v, s) in values.items()})
    plugin, package = PROVIDER_PLUGINS[plan.provider]
    st.workspace.install_plugin(plugin, "v" + metadata.version(package))
    packs = []
    pack = policy_pack or Path(__file__).resolve().parents[3] / "stacks" / "policy"
    if (pack / "PulumiPolicy.yaml").is_file():
        packs.append(str(pack))
    color = pulumi_color(out)
    try:
        st.preview(on_output=print, policy_packs=packs or None, color=color)
        if preview:
            return
        if not yes and not typer.confirm("Apply these changes?"):
            raise typer.Exit(1)
        st.up(on_output=print, policy_packs=packs or None, show_secrets=False, color=color)
    except auto.CommandError as exc:
        err.print(f"[bold red]pulumi failed:[/] {escape(str(exc))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    outputs = st.outputs()
    inventory = outputs["inventory"].value
    path = state.workdir / f"{st.name}.inventory.json"
    path.write_text(json.dumps(inventory, indent=1) + "\n")
    _print_inventory(inventory, path)
    try:
        verdict = _configure(plan, outputs, private_key, state.workdir, st.name, home)
    except (ImportError, FileNotFoundError, ValueError, RuntimeError) as exc:
        hint = ("; it needs edgeshot[configure] (ansible-core, ansible-runner)"
                if isinstance(exc, ImportError) else "")
        err.print(f"[bold red]configuring the servers failed:[/] {escape(str(exc) + hint)}; "
                  "the servers are up: run `edgeshot up` again to configure them",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(verdict_line(plan.network, verdict), highlight=False)
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)


def cloud_destroy(
    file: Annotated[Path, typer.Argument(help="Policy file of a cloud network.")],
    stack: Annotated[str | None, typer.Option(help="Stack name (default: the network's name).")]
    = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Pulumi state.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
) -> None:
    """Delete every server and network resource of a cloud network's stack."""
    plan, provider = _load_cloud_plan(file)
    state = _state(file, provider, state_dir)
    problems = [p for p in preflight(plan, ssh_key=None, state=state) if not p.startswith("no SSH")]
    if problems:
        raise _fail(problems)
    st = _stack(plan, file, stack or plan.network, state)
    if not yes and not typer.confirm(f"Destroy every resource of {plan.network}?"):
        raise typer.Exit(1)
    from pulumi import automation as auto
    try:
        st.destroy(on_output=print, color=pulumi_color(out))
    except auto.CommandError as exc:
        err.print(f"[bold red]pulumi failed:[/] {escape(str(exc))}", highlight=False)
        if "protect" in str(exc):
            err.print(PROTECTED_HINT, highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


def print_resources(plan: Plan, console: Console | None = None) -> None:
    """The Pulumi resources `plan` implies, as a tree (for `edgeshot plan FILE --resources`)."""
    console = console or out
    if plan.provider == "local":
        console.print(f"network {plan.network} is local: no cloud resources")
        return
    from edgeshot.provision import implied_resources

    found = implied_resources(plan)
    table = Table(title=f"Pulumi resources for {plan.network} ({plan.provider})",
                  title_justify="left")
    table.add_column("resource")
    table.add_column("type")
    for r in found:
        table.add_row("  " * r.depth + r.name, r.type)
    console.print(table)
    custom = sum(1 for r in found if not r.type.startswith("edgeshot:"))
    console.print(f"{custom} cloud resources in {len(found) - custom} components", highlight=False)
