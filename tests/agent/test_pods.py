"""Pods in slots: real namespaces, cgroups, logs, health, stop (as root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_apps import hello_spec, shop_spec

from edgeshot.agent import _cgroups, _criu
from edgeshot.agent import appshots as A
from edgeshot.agent._sys import http_request

pytestmark = pytest.mark.root


@pytest.mark.criu
def test_criu_installed_and_checked():
    st = _criu.status()
    assert st.usable, st.reason
    major, minor = (int(x) for x in st.version.split(".")[:2])
    assert (major, minor) >= (4, 2)
    # built with RUNDIR=/dev/shm: the kernel-feature cache lives on a tmpfs
    assert Path("/dev/shm/criu.kdat").exists()


def test_pod_in_slot_has_own_namespaces_limits_and_logs(host, cleanup):
    inst = A.start(hello_spec(), host)
    cleanup.append(inst)
    assert inst.slot and inst.address.startswith("10.250.")
    assert http_request(inst.address, inst.port, "/") == (200, b"hello from edgeshot #1\n")
    # PID 1 of its own PID namespace, in the slot's network namespace
    nspid = [ln for ln in Path(f"/proc/{inst.pid}/status").read_text().splitlines()
             if ln.startswith("NSpid:")][0].split()
    assert nspid[-1] == "1" and len(nspid) == 3
    assert os.stat(f"/proc/{inst.pid}/ns/net").st_ino == os.stat(f"/run/netns/{inst.slot}").st_ino
    assert os.stat(f"/proc/{inst.pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    # cgroup limits applied (v1 here, v2 on production hosts)
    cg = _cgroups.PodCgroup(inst.cgroup)
    assert inst.pid in cg.pids()
    if cg.mode == "v1":
        assert (cg.dirs[-1] / "memory.limit_in_bytes").read_text().strip() == str(128 << 20)
        assert (cg.dirs[0] / "cpu.cfs_quota_us").read_text().strip() == "100000"
    # logs go through a pipe to a pump, into a 0600 file outside the pod
    assert os.readlink(f"/proc/{A._pods.pod_pids(inst)[1]}/fd/1").startswith("pipe:")
    log = inst.log_dir / "web.log"
    A.stop(inst, host)
    assert "GET / " in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert not Path(f"/proc/{inst.pid}").exists() or \
        Path(f"/proc/{inst.pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    assert not cg.dirs[-1].exists()
    assert A.list_instances(host) == []


def test_two_tier_pod_tiers_talk_inside_pod(host, cleanup):
    inst = A.start(shop_spec(), host)
    cleanup.append(inst)
    status, body = http_request(inst.address, inst.port, "/catalog")
    assert status == 200 and b"price" in body
    # the store listens on the pod's 127.0.0.1 only: not reachable at the slot address
    with pytest.raises(OSError):
        http_request(inst.address, 7001, "/healthz", timeout=0.5)
    A.stop(inst, host)


def test_start_fails_clearly_when_app_never_gets_healthy(host, tmp_path):
    spec = hello_spec(tier={"command": ("python3", "-c", "import sys; print('boom'); sys.exit(3)"),
                            "start_timeout_s": 5})
    with pytest.raises(A._pods.PodError, match="boom"):
        A.start(spec, host)
    assert A.list_instances(host) == []
