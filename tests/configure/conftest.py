"""Fixtures: a lab of throwaway Debian servers booted with systemd-nspawn, and site.yml
applied to it once per session.

The lab (see _servers.py): north-1 (agent + edge) and north-2 (agent) form edgepoint
north, south-1 (agent + edge) is edgepoint south, and a controller. north-1 and
south-1 run with every capability and a writable /proc/sys, as a real server does,
so CRIU passes `criu check` there; north-2 keeps systemd-nspawn's confinement, so
`criu check` fails there and its agent must cold-start. Nothing here touches the
machine that runs the tests beyond its own namespaces, links and temporary files;
the session fails if any of them is left behind.

The skip policy (tests marked ``root``) is tests/conftest.py's: under CI=true
these tests run. Tools missing as root are an error that names the setup script.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from edgeshot.plan import compile_plan
from edgeshot.spec import load

from . import _servers as S

HERE = Path(__file__).parent
REPO = HERE.parent.parent
PLAYBOOKS = REPO / "playbooks"
SERVERS = {"north-1": "full", "north-2": "confined", "south-1": "full", "controller": "confined"}
# Slower background loops than production's: four servers share the test machine's cores.
QUIET = {
    "edge_agent_extra_config": {"health_interval_s": 10, "usage_interval_s": 60},
    "edge_agent_edge_extra_config": {"tick_s": 2, "capacity_interval_s": 10,
                                     "usage_interval_s": 60},
    "controller_extra_config": {"tick_s": 5, "agent_poll_s": 30},
}


# What Ansible's own modules install on a target when missing (the apt module's bindings).
ANSIBLE_TARGET_PACKAGES = ("python3-apt",)


def role_packages() -> tuple[str, ...]:
    """Every package the roles install (their ``*_packages`` defaults) and Ansible's own
    needs, for the mirror."""
    pkgs: set[str] = set(ANSIBLE_TARGET_PACKAGES)
    for defaults in PLAYBOOKS.glob("roles/*/defaults/main.yml"):
        for key, value in (yaml.safe_load(defaults.read_text()) or {}).items():
            if key.endswith("_packages") and "build" not in key and isinstance(value, list):
                pkgs.update(value)
    return tuple(sorted(pkgs))


def criu_binary() -> Path | None:
    """The CRIU scripts/setup.d/20-criu.sh installed for this project (>= 4.2)."""
    for cand in (Path(sys.prefix) / "bin" / "criu",
                 *sorted(S.CACHE.parent.glob("criu/*/criu"), reverse=True)):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand.resolve()
    return None


@pytest.fixture(scope="session")
def lab_dir():
    d = Path(tempfile.mkdtemp(prefix="es-lab-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def lab(lab_dir):
    """Four booted servers on a private LAN; powered off and removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, systemd-nspawn)")
    missing = S.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup.d/40-nspawn.sh as root "
                    "(part of `make system`)", pytrace=False)
    t0 = time.monotonic()
    base = S.rootfs()
    lab = S.Lab(workdir=lab_dir)
    lab.repo = S.mirror(role_packages(), base)
    key = S.ssh_key(lab_dir)
    try:
        lab.up()
        for name, mode in SERVERS.items():
            lab.add(name, base, key, mode=mode)
        lab.wait_ready()
        print(f"\nlab: {len(lab.servers)} servers booted in {time.monotonic() - t0:.1f} s")
        yield lab
    finally:
        left = lab.close()
    assert not left, f"left behind: {left}"


@pytest.fixture(scope="session")
def plan():
    return compile_plan(load(HERE / "lab_policy.py"))


@pytest.fixture(scope="session")
def inventory(lab, plan):
    from edgeshot.configure import inventory_from_plan
    return inventory_from_plan(plan, {n: s.address for n, s in lab.servers.items()})


@pytest.fixture(scope="session")
def stack_secrets():
    """As the stack's `secrets` output holds them (random per session)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    return {
        "edgeAgentToken": "est1_" + secrets.token_urlsafe(32),
        "controllerAgentToken": "est1_" + secrets.token_urlsafe(32),
        "controllerEdgeToken": "est1_" + secrets.token_urlsafe(32),
        "signingKey": key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode(),
        "_key": key,
    }


@pytest.fixture(scope="session")
def signing_public_key(stack_secrets):
    from cryptography.hazmat.primitives import serialization
    return stack_secrets["_key"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="session")
def wheelhouse(lab_dir):
    """edgeshot (fresh) and its dependencies (cached) as wheels: the servers reach no index.
    The session keeps its own copy: the cache is shared with other runs (other checkouts,
    `edgeshot up`), which rebuild its edgeshot wheel, and a run must see one wheelhouse."""
    from edgeshot.configure import build_wheelhouse
    shared = build_wheelhouse(S.CACHE.parent / f"wheelhouse-py{sys.version_info[0]}"
                              f"{sys.version_info[1]}", REPO)
    return Path(shutil.copytree(shared, lab_dir / "wheelhouse"))


@pytest.fixture(scope="session")
def appshot_tarball(lab_dir, stack_secrets):
    """A small appshot signed by the deployment center's key, packed for transfer."""
    from edgeshot.agent import _package
    root = lab_dir / "appshots"
    dest = root / "hello-1"
    with _package.staging(dest) as stage:
        (stage / "source").mkdir()
        (stage / "source" / "app.py").write_text("print('hello')\n")
        _package.build(stage, key=stack_secrets["_key"], app="hello", version="1", owner="lab",
                       vendor="lab", tiers=[{"name": "web", "command": "python3 app.py",
                                             "entry": True}], criu_version="4.2.1")
        _package.publish(stage, dest)
    return _package.pack(dest, root / "hello-1.tar.gz")


@pytest.fixture(scope="session")
def configure_kwargs(lab, plan, stack_secrets, signing_public_key, wheelhouse, appshot_tarball,
                     lab_dir):
    from edgeshot.configure import AppshotSource
    crit = criu_binary()
    assert crit is not None, "no CRIU >= 4.2 built: run scripts/setup.d/20-criu.sh (make system)"
    return dict(
        plan=plan,
        secrets={k: v for k, v in stack_secrets.items() if not k.startswith("_")},
        signing_public_key=signing_public_key,
        ssh_key=lab.servers["north-1"].key,
        known_hosts=lab_dir / "known_hosts",
        playbooks_dir=PLAYBOOKS,
        wheelhouse=wheelhouse,
        criu_binary=crit,
        appshots=[AppshotSource(name="hello-1", app="hello", tarball=appshot_tarball)],
        work_dir=lab_dir,
        # the test machine calls the agents' APIs as an operator would
        extra_vars={**QUIET, "edge_agent_firewall_allow": [f"{lab.host_address}/32"]},
    )


@pytest.fixture(scope="session")
def first_run(inventory, configure_kwargs):
    """site.yml applied once to the bare servers (the tests below build on it)."""
    import io

    from rich.console import Console

    from edgeshot.configure import configure
    buf = io.StringIO()
    result = configure(inventory, progress=Console(file=buf, width=160),
                       keep_private_data_dir=True, **configure_kwargs)
    print(buf.getvalue())
    return Run(result, buf.getvalue())


@dataclass
class Run:
    result: object
    output: str
