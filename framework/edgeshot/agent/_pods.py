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
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from edgeshot.spec import CommandError, expand_command, tier_environment

from . import _kits, _logpump
from ._cgroups import PodCgroup
from ._models import Instance, PodSpec, TierSpec, WarmupRequest
from ._slots import Slot, SlotPool
from ._sys import (
    Steps,
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
    """Slot, cgroup and log pipes prepared for one pod before its processes exist.

    With a kit (``_kits``: a parked launcher already in a fresh cgroup, with pipes) the
    pod's first process is launched without a spawn or a cgroup migration on the way."""

    def __init__(self, spec: PodSpec, state_dir: Path, pool: SlotPool | None,
                 pod_id: str | None = None) -> None:
        self.spec = spec
        self.id = pod_id or new_id(spec.app)
        self.pod_dir = pods_dir(state_dir) / self.id
        self.log_dir = Path(state_dir) / "logs" / self.id
        self.pool = pool
        self.slot: Slot | None = None
        self.cgroup: PodCgroup | None = None
        self.kit: _kits.Kit | None = None
        self.write_fds: list[int] = []  # this process's write ends (no kit)
        self.child_fds: list[int] = []  # the write ends as the launched command sees them
        self.pipes: dict[str, str] = {}
        self._nsfd = -1  # the slot's netns, opened here (no kit)
        self._ns_child = -1  # its fd number in the launched command

    def prepare(self, steps: Steps | None = None, *, kits: bool = True) -> None:
        steps = steps or Steps()
        try:
            self.pod_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            set_subreaper()
            if self.pool is not None:
                self.slot = self.pool.acquire(self.id)
                steps("slot")
                kit = _kits.pool().take() if kits and _kits.available() else None
                if kit is not None:
                    try:
                        self.cgroup = kit.adopt(self.id, cpu=self.spec.cpu,
                                                memory_mb=self.spec.memory_mb)
                        self.kit = kit
                    except OSError as exc:
                        log.warning("kit %s unusable (%s): joining a cgroup instead",
                                    kit.name, exc)
                        kit.discard()
                if self.kit is None:
                    self.cgroup = PodCgroup(self.id)
                    if self.cgroup.mode != "none":
                        self.cgroup.create(cpu=self.spec.cpu, memory_mb=self.spec.memory_mb)
                    else:
                        self.cgroup = None
                steps("cgroup" if self.kit is None else "cgroup (kit)")
            names = [t.name for t in self.spec.tiers]
            reads: dict[str, int] = {}
            try:
                if self.kit is not None:
                    reads = dict(zip(names, self.kit.take_reads(len(names)), strict=True))
                    self.child_fds = self.kit.writes[:len(names)]
                    self.pipes = dict(zip(names, self.kit.pipes, strict=False))
                else:
                    for name in names:
                        r, w = os.pipe()
                        reads[name] = r
                        self.write_fds.append(w)
                        self.pipes[name] = os.readlink(f"/proc/self/fd/{w}")
                    self.child_fds = list(self.write_fds)
                # the server's resident log pump takes the read ends (no process per pod)
                _logpump.client(self.log_dir.parent).add(self.log_dir, reads)
            finally:
                for r in reads.values():
                    os.close(r)
            steps("log pipes")
        except BaseException:
            self.abort()
            raise

    def netns_fd(self) -> int:
        """The fd number under which the launched command finds the slot's netns."""
        assert self.slot is not None
        if self.kit is not None:
            self._ns_child = max(self.kit.writes) + 1
            return self._ns_child
        if self._nsfd < 0:
            self._nsfd = os.open(self.slot.netns_path, os.O_RDONLY)
        return self._nsfd

    def spawn(self, argv: list[str], *, env: dict[str, str] | None = None,
              place_fds: bool = False, capture_stderr: bool = False,
              nice: int | None = None) -> subprocess.Popen[bytes]:
        """Launch the pod's first process (``criu restore`` or the cold-start launcher) in
        the pod's cgroup, with its log pipes (at FIRST_FD… when ``place_fds``) and, when
        ``netns_fd`` was asked for, the slot's netns; at CPU priority ``nice``."""
        if self.kit is None:
            cmd = _launcher(self.child_fds, argv) if place_fds else argv
            fds = (*self.child_fds, *([self._nsfd] if self._nsfd >= 0 else []))
            # no preexec_fn (Python then vforks instead of copying the agent): the cgroup
            # is joined by a tiny sh in front of the command
            proc = subprocess.Popen(self.join_argv(cmd), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE if capture_stderr else subprocess.DEVNULL,
                                    pass_fds=fds, start_new_session=True)
            if nice is not None:
                _kits.set_nice(proc.pid, nice)
            return proc
        kit, n = self.kit, len(self.child_fds)
        parts = []
        unused = kit.writes[n:]
        if unused:
            parts.append("exec " + " ".join(f"{w}>&-" for w in unused))
        if env is not None:
            parts.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
        if self._ns_child >= 0:
            assert self.slot is not None
            parts.append(f"exec {self._ns_child}<{shlex.quote(str(self.slot.netns_path))} "
                         "|| exit 125")
        if place_fds and self.child_fds:
            parts.append(_fd_moves(self.child_fds))
        if not capture_stderr:
            parts.append("exec 2>/dev/null")
        parts.append("exec " + " ".join(shlex.quote(a) for a in argv))
        proc = kit.launch("; ".join(parts), nice=nice)
        if not capture_stderr:
            kit.stderr()  # closes this side: nothing is wanted from it
        return proc

    def stderr_text(self, proc: subprocess.Popen[bytes]) -> str:
        """What the launched command wrote to stderr (once it exited)."""
        if self.kit is not None:
            return self.kit.stderr()
        if proc.stderr is not None:
            try:
                return proc.stderr.read().decode(errors="replace")
            finally:
                proc.stderr.close()
        return ""

    def join_argv(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that it runs in the pod's cgroup (see PodCgroup.join_argv)."""
        return self.cgroup.join_argv(argv) if self.cgroup is not None else argv

    def join_cgroup(self) -> None:
        """preexec_fn: the child joins the pod's cgroup before it execs (kept for callers;
        the agent itself uses ``spawn``, which lets Python vfork)."""
        if self.cgroup is not None:
            self.cgroup.join()

    def close_writers(self) -> None:
        for w in self.write_fds:
            try:
                os.close(w)
            except OSError:
                pass
        self.write_fds = []
        if self._nsfd >= 0:
            os.close(self._nsfd)
            self._nsfd = -1

    def abort(self) -> None:
        """Undo a failed start or restore."""
        self.close_writers()
        if self.kit is not None:
            launched = self.kit.proc is None or self.kit.proc.stdin is None \
                or self.kit.proc.stdin.closed
            if not launched:
                self.kit.discard()  # the bash leaves the cgroup; remove() below drops it
            else:
                self.kit.stderr()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if self.slot is not None and self.pool is not None:
            self.pool.release(self.slot)
            self.slot = None


def _init_script(spec: PodSpec, ports: dict[str, int], env_rewrite: dict[str, str]) -> str:
    """The pod's PID 1: start every tier with its log pipe as stdout/stderr, then wait."""
    src = shlex.quote(str(spec.source_dir))
    n = len(spec.tiers)
    lines = ["unset ES_INIT", f"cd {src} || exit 1"]
    for i, t in enumerate(spec.tiers):
        env = tier_environment({k: env_rewrite.get(v, v) for k, v in t.env.items()},
                               ports[t.name])
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        closes = " ".join(f"{FIRST_FD + j}>&-" for j in range(n))
        cmd = " ".join(shlex.quote(c) for c in launch_command(t, env))
        fd = FIRST_FD + i
        lines.append(f"( export {exports}; exec {cmd} ) </dev/null >&{fd} 2>&{fd} {closes} &")
    lines.append("exec " + " ".join(f"{FIRST_FD + j}>&-" for j in range(n)))
    lines.append("wait")
    return "\n".join(lines) + "\n"


def launch_command(tier: TierSpec, env: dict[str, str]) -> tuple[str, ...]:
    """The argv a tier runs: its command with $PORT and its env expanded (no shell; see
    edgeshot.spec.expand_command), or PodError naming the word at fault."""
    try:
        return expand_command(tier.command, env)
    except CommandError as exc:
        raise PodError(f"tier {tier.name}: command word {exc.index} ({exc.word!r}): {exc}") \
            from None


def _fd_moves(fds: list[int]) -> str:
    """bash commands that place ``fds`` at FIRST_FD, FIRST_FD+1, … and close the originals
    (the init script's ``sh`` only knows single-digit fds; bash moves any)."""
    base = max(fds) + 1  # lift every pipe above all of them first: no move clobbers another
    lift = " ".join(f"{base + i}>&{fd}" for i, fd in enumerate(fds))
    drop = " ".join(f"{fd}>&-" for fd in fds)
    place = " ".join(f"{FIRST_FD + i}>&{base + i} {base + i}>&-" for i in range(len(fds)))
    return f"exec {lift}; exec {drop}; exec {place}"


def _launcher(fds: list[int], argv: list[str]) -> list[str]:
    """``argv`` behind a ``bash`` that places the log pipes (``_fd_moves``); Popen closes
    every other fd, so nothing else leaks into the pod."""
    if not fds:
        return argv
    return ["/bin/bash", "-c", f'{_fd_moves(fds)}; exec "$@"', "bash", *argv]


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
    steps = Steps()
    p.prepare(steps)
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
        launcher = p.spawn([*prefix, "sh", "-c", 'eval "$ES_INIT"'], env=env, place_fds=True)
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
        steps("launch")
        wait_healthy(inst, ports=ports)
        steps("health")
        inst.ready_ms = (time.monotonic() - t0) * 1000
        inst.timings_ms = steps.ms
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
        pause = 0.0002  # a restored tier usually answers the first probe: poll tightly
        while not check_health(inst, t, ports[t.name]):
            if not pid_alive(inst.pid):
                raise PodError(f"pod {inst.id} exited before {t.name} was healthy; "
                               f"logs in {inst.log_dir}: {_tail(inst.log_dir / f'{t.name}.log')}")
            if time.monotonic() > deadline:
                raise PodError(f"tier {t.name} of {inst.id} not healthy after "
                               f"{t.start_timeout_s}s; logs in {inst.log_dir}")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.005)


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


def _norm(argv: tuple[str, ...]) -> tuple[str, ...]:
    return (os.path.basename(argv[0]), *argv[1:]) if argv else argv


def cmdline(pid: int) -> tuple[str, ...]:
    """A process's argv (empty when unreadable: gone, or its stack not yet restored)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, OSError):
        return ()
    return tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw \
        else ()


def tier_of(argv: tuple[str, ...], tiers: tuple[TierSpec, ...]) -> TierSpec | None:
    """The tier whose command ``argv`` runs (interpreters may show a longer path)."""
    a = _norm(argv)
    if not a:
        return None
    for t in tiers:
        try:  # what the tier runs: its command as launched (a slot pod's PORT is its port)
            cmd = _norm(expand_command(t.command, tier_environment(t.env, t.port)))
        except CommandError:  # its env is not kept (a restored pod's spec): as declared
            cmd = _norm(t.command)
        if a == cmd or len(cmd) > 1 and a[-len(cmd) + 1:] == cmd[1:] and a[0].startswith(cmd[0]):
            return t
    return None


def ns_pid(pid: int) -> int | None:
    """``pid`` as its own PID namespace numbers it (from the kernel, not its memory)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return None


def tier_pids(inst: Instance) -> dict[str, list[int]]:
    """tier -> the pod-namespace pids of its processes, matched by command line. A restored
    copy has the same pids, so its tiers are known without reading its memory (a lazily
    restored process's command line may not be there yet). Empty when a command line
    cannot be read."""
    out: dict[str, list[int]] = {}
    for pid in pod_pids(inst)[1:]:
        argv = cmdline(pid)
        nsp = ns_pid(pid)
        if not argv or nsp is None:
            if pid_alive(pid):
                return {}
            continue
        t = tier_of(argv, inst.spec.tiers)
        if t is not None:
            out.setdefault(t.name, []).append(nsp)
    return out


def save(inst: Instance) -> None:
    # no fsync: a pod record describes processes that a machine crash ends anyway
    write_json(inst.pod_dir / "pod.json", inst.model_dump(mode="json"), durable=False)


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
    """Free what a pod held once its processes are gone (lazy-pages daemon, cgroup, slot,
    record)."""
    _end_lazy_daemon(inst)
    if inst.cgroup:
        PodCgroup(inst.cgroup).remove()
    if pool is not None and inst.slot:
        pool.release(pool.slot(int(inst.slot.rsplit("slot", 1)[1])))
    (inst.pod_dir / "pod.json").unlink(missing_ok=True)
    if not keep_dir:
        shutil.rmtree(inst.pod_dir, ignore_errors=True)
    reap()


def _end_lazy_daemon(inst: Instance) -> None:
    """A lazily restored pod's lazy-pages daemon has nothing left to serve once the pod is
    gone; it waits for the restore's "finished" word (held back by the log pump's relay)
    and would otherwise outlive the pod, e.g. one stopped within the hold, or stopped by an
    agent other than the one that restored it. Only that daemon is killed: its pid must
    still run ``criu lazy-pages`` with a work directory inside this pod's."""
    pid = inst.lazy_pid
    if not pid or not pid_alive(pid):
        return
    argv = cmdline(pid)
    if "lazy-pages" not in argv or not any(a.startswith(str(inst.pod_dir)) for a in argv):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_gone(pid, 5)
