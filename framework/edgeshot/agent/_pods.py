"""Pods: an application's tiers in their own PID namespace, in a slot's netns, in a cgroup.

Start: ``nsenter --net=/run/netns/<slot> unshare --pid --fork setsid sh -c …``
(not ``ip netns exec``, which makes a mount namespace CRIU trips on). PID 1 of
the pod is a tiny ``sh`` that starts the tiers and waits; a restored PID 1
ignores SIGTERM, so stop sends SIGTERM to the tiers, then SIGKILL to PID 1,
which takes the whole PID namespace down.

Without root there are no namespaces: tiers run as plain processes, each on a
free port through $PORT, and the instance says why (``cold_reason``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ._cgroups import PodCgroup
from ._models import Instance, PodSpec, TierSpec, WarmupRequest
from ._slots import Slot, SlotPool
from ._sys import (
    http_request,
    is_root,
    log,
    pid_alive,
    reap,
    set_subreaper,
    wait_gone,
    write_json,
)

FIRST_FD = 3  # tier i's log pipe is fd FIRST_FD + i in the pod init (sh: single digits)


class PodError(RuntimeError):
    """A pod could not be started or did not become healthy."""


def new_id(app: str) -> str:
    return f"{app}-{uuid.uuid4().hex[:10]}"


def pods_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "pods"


# -- plumbing shared by cold start and restore --------------------------------------------
class Plumbing:
    """Slot, cgroup and log pipes prepared for one pod before its processes exist."""

    def __init__(self, spec: PodSpec, state_dir: Path, pool: SlotPool | None,
                 pod_id: str | None = None) -> None:
        self.spec = spec
        self.id = pod_id or new_id(spec.app)
        self.pod_dir = pods_dir(state_dir) / self.id
        self.log_dir = Path(state_dir) / "logs" / self.id
        self.pool = pool
        self.slot: Slot | None = None
        self.cgroup: PodCgroup | None = None
        self.write_fds: list[int] = []
        self.pipes: dict[str, str] = {}
        self.pump: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        set_subreaper()
        if self.pool is not None:
            self.slot = self.pool.acquire(self.id)
            self.cgroup = PodCgroup(self.id)
            if self.cgroup.mode != "none":
                self.cgroup.create(cpu=self.spec.cpu, memory_mb=self.spec.memory_mb)
            else:
                self.cgroup = None
        reads = []
        for t in self.spec.tiers:
            r, w = os.pipe()
            reads.append(r)
            self.write_fds.append(w)
            self.pipes[t.name] = os.readlink(f"/proc/self/fd/{w}")
        args = [f"{t.name}={fd}" for t, fd in zip(self.spec.tiers, reads, strict=True)]
        self.pump = subprocess.Popen(
            [sys.executable, "-m", "edgeshot.agent._logpump", str(self.log_dir), *args],
            pass_fds=reads, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        for r in reads:
            os.close(r)

    def join_cgroup(self) -> None:
        """preexec_fn: the child joins the pod's cgroup before it execs."""
        if self.cgroup is not None:
            self.cgroup.join()

    def close_writers(self) -> None:
        for w in self.write_fds:
            try:
                os.close(w)
            except OSError:
                pass
        self.write_fds = []

    def abort(self) -> None:
        """Undo a failed start or restore."""
        self.close_writers()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.slot is not None and self.pool is not None:
            self.pool.release(self.slot)
        if self.pump is not None:
            try:
                self.pump.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.pump.kill()


def _init_script(spec: PodSpec, ports: dict[str, int], env_rewrite: dict[str, str]) -> str:
    """The pod's PID 1: start every tier with its log pipe as stdout/stderr, then wait."""
    src = shlex.quote(str(spec.source_dir))
    n = len(spec.tiers)
    lines = ["unset ES_INIT", f"cd {src} || exit 1"]
    for i, t in enumerate(spec.tiers):
        env = {**{k: env_rewrite.get(v, v) for k, v in t.env.items()}, "PORT": str(ports[t.name])}
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        closes = " ".join(f"{FIRST_FD + j}>&-" for j in range(n))
        cmd = " ".join(shlex.quote(c) for c in t.command)
        fd = FIRST_FD + i
        lines.append(f"( export {exports}; exec {cmd} ) </dev/null >&{fd} 2>&{fd} {closes} &")
    lines.append("exec " + " ".join(f"{FIRST_FD + j}>&-" for j in range(n)))
    lines.append("wait")
    return "\n".join(lines) + "\n"


def _dup_to(fds: list[int]):
    """preexec helper: place fds at FIRST_FD, FIRST_FD+1, … in the child."""
    def move() -> None:
        high = [os.dup(fd) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, FIRST_FD + i)
            os.close(fd)
        os.closerange(FIRST_FD + len(fds), 65536)  # nothing else leaks into the pod
    return move


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(spec: PodSpec, state_dir: Path, pool: SlotPool | None, *,
          cold_reason: str | None = None) -> Instance:
    """Cold-start ``spec`` as a pod (in a slot when ``pool`` is given) and wait for health."""
    if pool is not None and not is_root():
        raise PodError("pods in slots need root")
    p = Plumbing(spec, state_dir, pool)
    p.prepare()
    t0 = time.monotonic()
    try:
        if p.slot is not None:
            ports = {t.name: t.port for t in spec.tiers}
            rewrite: dict[str, str] = {}
        else:  # no namespaces: every tier on a free port; env values naming a port follow it
            ports = {t.name: _free_port() for t in spec.tiers}
            rewrite = {str(t.port): str(ports[t.name]) for t in spec.tiers}
        script = _init_script(spec, ports, rewrite)
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "ES_INIT": script,
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        # In a pod, setsid makes PID 1 a session leader (CRIU dumps no foreign session);
        # without namespaces start_new_session does it (setsid there would fork and exit).
        prefix = (["nsenter", f"--net={p.slot.netns_path}", "unshare", "--pid", "--fork",
                   "setsid"] if p.slot else [])
        argv = [*prefix, "sh", "-c", 'eval "$ES_INIT"']
        fds = p.write_fds

        def preexec() -> None:
            p.join_cgroup()
            _dup_to(fds)()

        launcher = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    close_fds=False, preexec_fn=preexec,
                                    start_new_session=True)
        p.close_writers()
        init_pid = _pod_init(launcher) if p.slot else launcher.pid
        inst = Instance(
            id=p.id, app=spec.app, version=spec.version, owner=spec.owner, vendor=spec.vendor,
            origin="cold", address=p.slot.address if p.slot else "127.0.0.1",
            port=ports[spec.entry.name], slot=p.slot.name if p.slot else None, pid=init_pid,
            started=datetime.now(UTC), cgroup=p.cgroup.name if p.cgroup else None,
            pod_dir=p.pod_dir, log_dir=p.log_dir, namespaces=p.slot is not None,
            cold_reason=cold_reason, spec=spec, pipes=p.pipes)
        if pool is not None and p.slot is not None:
            pool.bind(p.slot, p.id, init_pid)
        save(inst)
        wait_healthy(inst, ports=ports)
        inst.ready_ms = (time.monotonic() - t0) * 1000
        save(inst)
        return inst
    except BaseException:
        launcher_pid = locals().get("launcher").pid if "launcher" in locals() else None
        _kill_tree(p, locals().get("init_pid"), group=None if p.slot else launcher_pid)
        p.abort()
        raise


def _pod_init(launcher: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """The host pid of the pod's PID 1: the child `unshare --fork` made."""
    deadline = time.monotonic() + timeout
    path = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    while time.monotonic() < deadline:
        try:
            kids = path.read_text().split()
        except FileNotFoundError:
            kids = []
        if kids:
            return int(kids[0])
        if launcher.poll() is not None:
            raise PodError(f"pod launcher exited with {launcher.returncode}")
        time.sleep(0.002)
    raise PodError("pod init did not appear")


def _kill_tree(p: Plumbing, init_pid: int | None, group: int | None = None) -> None:
    if group:  # without namespaces the instance is its own process group
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if init_pid:
        try:
            os.kill(init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(init_pid, 5)
    reap()


def tier_ports(inst: Instance) -> dict[str, int]:
    if inst.namespaces:
        return {t.name: t.port for t in inst.spec.tiers}
    return {inst.spec.entry.name: inst.port}


def check_health(inst: Instance, tier: TierSpec, port: int) -> bool:
    """One health probe of one tier: the entry at its address, others inside the pod."""
    netns = None
    host = inst.address
    if not tier.entry:
        if inst.namespaces and inst.slot:
            netns, host = f"/run/netns/{inst.slot}", "127.0.0.1"
        else:
            host = "127.0.0.1"
    try:
        if tier.health_path is None:
            from ._sys import socket_in_netns
            s = socket_in_netns(netns) if netns else socket.socket()
            with s:
                s.settimeout(tier.health_timeout_s)
                s.connect((host, port))
            return True
        status, _ = http_request(host, port, tier.health_path, timeout=tier.health_timeout_s,
                                 netns=netns)
        return 200 <= status < 400
    except OSError:
        return False


def wait_healthy(inst: Instance, ports: dict[str, int] | None = None,
                 tiers: tuple[TierSpec, ...] | None = None) -> None:
    """Wait until every tier answers its health check (or its start timeout passes)."""
    ports = ports or tier_ports(inst)
    for t in tiers or inst.spec.tiers:
        if t.name not in ports:
            continue
        deadline = time.monotonic() + t.start_timeout_s
        while not check_health(inst, t, ports[t.name]):
            if not pid_alive(inst.pid):
                raise PodError(f"pod {inst.id} exited before {t.name} was healthy; "
                               f"logs in {inst.log_dir}: {_tail(inst.log_dir / f'{t.name}.log')}")
            if time.monotonic() > deadline:
                raise PodError(f"tier {t.name} of {inst.id} not healthy after "
                               f"{t.start_timeout_s}s; logs in {inst.log_dir}")
            time.sleep(0.003)


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def warm_up(inst: Instance, requests: tuple[WarmupRequest, ...]) -> int:
    """Send the declared warm-up requests to the entry tier; returns how many were sent."""
    sent = 0
    for w in requests:
        for _ in range(w.count):
            status, _ = http_request(inst.address, inst.port, w.path, method=w.method,
                                     body=w.body.encode() if w.body is not None else None,
                                     headers=w.headers, timeout=30)
            if status >= 500:
                raise PodError(f"warm-up {w.method} {w.path} answered {status}")
            sent += 1
    return sent


def pod_pids(inst: Instance) -> list[int]:
    """Every process of the pod (init first), from /proc children links."""
    out, todo = [], [inst.pid]
    while todo:
        pid = todo.pop()
        if not pid_alive(pid):
            continue
        out.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except FileNotFoundError:
            pass
    return out


def save(inst: Instance) -> None:
    write_json(inst.pod_dir / "pod.json", inst.model_dump(mode="json"))


def load(pod_dir: Path) -> Instance:
    return Instance.model_validate_json((pod_dir / "pod.json").read_text())


def list_instances(state_dir: Path) -> list[Instance]:
    out = []
    root = pods_dir(state_dir)
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "pod.json").exists():
                out.append(load(d))
    return out


def stop(inst: Instance, pool: SlotPool | None, *, grace_s: float = 2.0,
         keep_dir: bool = False) -> None:
    """SIGTERM the tiers, then SIGKILL the pod's PID 1 (which ends the PID namespace)."""
    pids = pod_pids(inst)
    for pid in pids[1:]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids[1:]):
        reap()
        time.sleep(0.01)
    for pid in [pids[0]] if inst.namespaces and pids else pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not inst.namespaces:  # its own process group: also what escaped the tree
        try:
            os.killpg(inst.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if not wait_gone(inst.pid, 10):
        log.warning("pod %s init %d did not exit", inst.id, inst.pid)
    release(inst, pool, keep_dir=keep_dir)


def release(inst: Instance, pool: SlotPool | None, *, keep_dir: bool = False) -> None:
    """Free what a pod held once its processes are gone (cgroup, slot, record)."""
    if inst.cgroup:
        PodCgroup(inst.cgroup).remove()
    if pool is not None and inst.slot:
        pool.release(pool.slot(int(inst.slot.rsplit("slot", 1)[1])))
    (inst.pod_dir / "pod.json").unlink(missing_ok=True)
    if not keep_dir:
        shutil.rmtree(inst.pod_dir, ignore_errors=True)
    reap()
