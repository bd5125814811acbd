"""Fixtures for the agent's real-CRIU tests.

The skip policy for tests marked ``root`` or ``criu`` (skip with the reason where
they cannot run, fail under CI=true) lives in tests/conftest.py, for every suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeshot.agent import appshots as A
from edgeshot.agent._sys import reap, set_subreaper

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _our_netns(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"{prefix}-")]


def _procs_under(path: Path) -> list[int]:
    """Processes whose cwd or cmdline points into ``path`` (pods, pumps, criu)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(p / "cwd")
            cmd = (p / "cmdline").read_bytes()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if state == "Z":
            continue
        if cwd.startswith(str(path)) or str(path).encode() in cmd:
            found.append(int(p.name))
    return found


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway agent host: its own state dir, slot prefix and subnet.

    Teardown stops every instance, removes slots and cgroups, then fails the
    session if any namespace, process, mount or cgroup was left behind.
    """
    if os.geteuid() != 0:
        reason = "needs root (namespaces, cgroups, CRIU)"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    set_subreaper()
    state = tmp_path_factory.mktemp("agent-state")
    n = os.getpid() % 250
    h = A.Host(state_dir=state, slot_prefix=f"t{os.getpid() % 100000}",
               slot_subnet=f"10.250.{n}.0/24", slots=10)
    yield h
    leftovers = []
    for inst in A.list_instances(h):
        leftovers.append(f"instance {inst.id}")
        A.stop(inst, h)
    pool = h.pool()
    assert pool is not None
    A.shutdown(h)  # kits kept ready and the log pump connection: nothing may outlive us
    slot_inodes = {os.stat(s.netns_path).st_ino: s.name for s in pool.slots()
                   if s.netns_path.exists()}
    for p in Path("/proc").iterdir():
        try:
            ino = os.stat(p / "ns" / "net").st_ino if p.name.isdigit() else None
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if ino in slot_inodes:
            leftovers.append(f"process {p.name} in {slot_inodes[ino]}")
            os.kill(int(p.name), 9)
    pool.destroy()
    reap()
    for d in (Path("/sys/fs/cgroup/memory/edgeshot"), Path("/sys/fs/cgroup/cpu/edgeshot"),
              Path("/sys/fs/cgroup/edgeshot")):
        if d.is_dir():
            ours = {p.name for p in (state / "logs").iterdir()} if (state / "logs").is_dir() \
                else set()  # every pod of this session has a log dir (other sessions' don't)
            for sub in d.iterdir():
                if sub.is_dir() and sub.name in ours:
                    if (sub / "cgroup.procs").read_text().strip():
                        leftovers.append(f"cgroup {sub} still has processes")
                if sub.is_dir() and sub.name.startswith(f"kit-{os.getpid()}-"):
                    leftovers.append(f"kit cgroup {sub}")
    if ns := _our_netns(h.slot_prefix):
        leftovers.append(f"netns {ns}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if f"{h.slot_prefix}-" in links:
        leftovers.append("veth/bridge links of the test pool")
    if procs := _procs_under(state):
        leftovers.append(f"processes {procs}")
    if str(state) in Path("/proc/self/mountinfo").read_text():
        leftovers.append("mounts under the state dir")
    shutil.rmtree(state, ignore_errors=True)
    assert not leftovers, f"left behind after the session: {leftovers}"


@pytest.fixture
def cleanup(host):
    """Instances registered here are stopped after the test even when it fails."""
    insts: list[A.Instance] = []
    yield insts
    for inst in insts:
        if Path(f"/proc/{inst.pid}").exists():
            A.stop(inst, host)
    for inst in A.list_instances(host):
        A.stop(inst, host)
