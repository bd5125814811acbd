"""Restore: a verified appshot (or snapshot) back into a running pod in a free slot.

Nothing is restored before the signature, every checksum and the CPU have
been checked (restoring a tampered image runs its code as root). The pod's
network namespace was dumped as external (``--external net[…]:slot``) and is
replaced by the free slot's (``--inherit-fd fd[N]:slot``); each tier's log
pipe is replaced by a fresh pipe to a fresh log pump. Copies of one appshot
never collide: each runs in its own PID namespace and slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from . import _criu, _logpump, _package, _workingset
from ._capture import IMAGES, RESTORE_META, SOURCE, RestoreMeta
from ._kits import set_nice
from ._models import Instance
from ._pods import Plumbing, cmdline, ns_pid, pod_pids, save, tier_of, wait_healthy
from ._slots import SlotPool
from ._sys import Steps, log, pid_alive, reap, wait_gone, wait_readable


class RestoreError(RuntimeError):
    pass


def read_meta(appshot_dir: Path) -> RestoreMeta:
    return RestoreMeta.model_validate_json((appshot_dir / RESTORE_META).read_text())


def ensure_source(appshot_dir: Path, meta: RestoreMeta) -> None:
    """The restored processes expect their files at the captured path: put them there
    from the (verified) appshot when this server does not have them yet."""
    src = meta.spec.source_dir
    if src.exists() or not meta.source_included:
        return
    import shutil
    tmp = src.with_name(f".{src.name}.restoring-{os.getpid()}")
    shutil.copytree(appshot_dir / SOURCE, tmp)
    os.replace(tmp, src)


def restore(appshot_dir: Path, manifest: _package.Manifest | None, state_dir: Path,
            pool: SlotPool, *, lazy: bool = False, origin: str = "appshot",
            record_faults: bool = False, steps: Steps | None = None,
            nice: int | None = None, push_delay_s: float = 0.0) -> Instance:
    """Restore a *verified* appshot dir into a new pod; returns when it is healthy.

    ``record_faults`` (capture only): the restore is served by a ``FaultRecorder`` instead
    of CRIU's lazy-pages daemon: every page arrives as a recorded fault, on demand only,
    until ``finish_recording`` (the working set).
    ``steps`` (optional) already holds the caller's steps (verification). ``nice``: the
    CPU priority of CRIU (and the lazy-pages daemon) while it restores; the restored tasks
    get their own back from the images. ``push_delay_s`` (lazy): how long the lazy-pages
    daemon serves page faults only before it pushes the remaining pages (the resident log
    pump relays its socket and holds the "restore finished" word back, see _logpump)."""
    steps = steps or Steps()
    meta = read_meta(appshot_dir)
    ensure_source(appshot_dir, meta)
    spec = meta.spec
    p = Plumbing(spec, state_dir, pool)
    work = p.pod_dir / "restore-work"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    images = appshot_dir / IMAGES
    steps("meta")
    lazy_proc: subprocess.Popen[bytes] | None = None
    ready = recorder = None
    init_pid = None
    try:
        if record_faults:
            recorder = _workingset.FaultRecorder(work / "lazy-pages.socket", images)
        elif lazy:  # started first: it reads the images while slot, cgroup and pipes are made
            if push_delay_s > 0 and not _logpump.client(Path(state_dir) / "logs").can("relay"):
                push_delay_s = 0.0  # a pump from before relays: no delay
            lazy_work = work / "lazy" if push_delay_s > 0 else work
            lazy_work.mkdir(exist_ok=True, mode=0o700)
            ready, status_w = os.pipe()
            try:
                lazy_proc = _criu.popen("lazy-pages", ["-D", str(images), "-W", str(lazy_work),
                                                       "--status-fd", str(status_w)],
                                        log_file=work / "lazy-pages.log", pass_fds=(status_w,))
                if nice is not None:  # it serves the first requests' faults
                    set_nice(lazy_proc.pid, nice)
            finally:
                os.close(status_w)
            steps("lazy-pages spawn")
        p.prepare(steps)
        assert p.slot is not None
        args = ["-D", str(images), "-W", str(work), "--restore-detached",
                "--pidfile", str(work / "pid"), "--manage-cgroups=ignore",
                "--inherit-fd", f"fd[{p.netns_fd()}]:slot"]
        for t, w in zip(spec.tiers, p.child_fds, strict=True):
            args += ["--inherit-fd", f"fd[{w}]:{meta.pipes[t.name]}"]
        if meta.tcp_established:
            args.append("--tcp-established")
        else:
            args += ["--network-lock", "skip"]  # nothing to freeze: the slot is fresh
        if lazy_proc is not None:
            _wait_ready(ready, lazy_proc, work)
            if push_delay_s > 0:
                _relay(work, lazy_work, state_dir, push_delay_s)
            steps("lazy-pages ready")
        if lazy or record_faults:
            args.append("--lazy-pages")
        with _ghost_lock(images, state_dir):
            _criu.run("restore", args, log_file=work / "restore.log",
                      spawn=lambda cmd: p.spawn(cmd, capture_stderr=True, nice=nice),
                      stderr_text=p.stderr_text)
        steps("criu restore")
        init_pid = int((work / "pid").read_text())
        p.close_writers()
        pool.bind(p.slot, p.id, init_pid)
        inst = Instance(
            id=p.id, app=spec.app, version=spec.version, owner=spec.owner, vendor=spec.vendor,
            origin=origin, address=p.slot.address, port=spec.entry.port, slot=p.slot.name,
            pid=init_pid, started=datetime.now(UTC), cgroup=p.cgroup.name if p.cgroup else None,
            pod_dir=p.pod_dir, log_dir=p.log_dir, namespaces=True, spec=spec, pipes=p.pipes,
            restore_ms=steps.ms["criu restore"], lazy=lazy or record_faults, criu_work=work,
            lazy_pid=lazy_proc.pid if lazy_proc else None)
        save(inst)
        steps("record")
        wait_healthy(inst, tiers=(spec.entry,))
        steps("health")
        reseed(inst, meta.tier_pids)
        steps("reseed")
        inst.ready_ms = steps.total()
        inst.timings_ms = steps.ms
        save(inst)
        if recorder is not None:
            _RECORDERS[inst.id] = recorder
        log.info("restored %s into %s in %.1f ms: %s", inst.id, p.slot.name, inst.ready_ms,
                 steps.ms)
        return inst
    except BaseException:
        if init_pid and pid_alive(init_pid):
            os.kill(init_pid, signal.SIGKILL)
            wait_gone(init_pid, 5)
        if recorder is not None:
            recorder.stop()
        if lazy_proc is not None and lazy_proc.poll() is None:
            lazy_proc.kill()
            lazy_proc.wait()
        p.abort()
        raise
    finally:
        p.close_writers()
        if ready is not None:
            os.close(ready)
        reap()


@contextlib.contextmanager
def _ghost_lock(images: Path, state_dir: Path) -> Iterator[None]:
    """Serialize the restores of one appshot that holds ghost files (files deleted while
    open, e.g. gunicorn's worker heartbeat file): CRIU re-creates each at a path derived
    from the original, so two concurrent restores would collide ("Can't create ghost
    regfile: File exists"). Other appshots restore concurrently."""
    if not any(n.startswith(("ghost-file-", "remap-fpath")) for n in os.listdir(images)):
        yield
        return
    locks = Path(state_dir) / "locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = hashlib.sha256(str(images.resolve()).encode()).hexdigest()[:16]
    fd = os.open(locks / f"ghosts-{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _relay(work: Path, lazy_work: Path, state_dir: Path, hold_s: float) -> None:
    """Put the pump between this restore and its lazy-pages daemon (``_logpump._Relay``):
    listen where ``criu restore`` looks for the daemon, connect to the daemon, hand both
    over. The daemon accepts its one connection now and waits for the restore's tasks."""
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        for sock, path, op in ((listen, work / "lazy-pages.socket", "bind"),
                               (daemon, lazy_work / "lazy-pages.socket", "connect")):
            addr, dfd = _logpump._sock_addr(path)
            try:
                getattr(sock, op)(addr)
            finally:
                if dfd is not None:
                    os.close(dfd)
        listen.listen(1)
        _logpump.client(Path(state_dir) / "logs").relay(listen, daemon, hold_s)
    finally:
        listen.close()
        daemon.close()


def _wait_ready(fd: int, proc: subprocess.Popen[bytes], work: Path,
                timeout: float = 10.0) -> None:
    """Block until the lazy-pages daemon reports ready on its status fd (``--status-fd``)."""
    r = wait_readable(fd, timeout)
    if r and os.read(fd, 1) == b"\0":
        return
    if proc.poll() is not None or r:
        raise RestoreError(f"criu lazy-pages exited ({proc.poll()}); see "
                           f"{work / 'lazy-pages.log'}")
    raise RestoreError("criu lazy-pages did not start")


# -- recording the working set ------------------------------------------------------------
_RECORDERS: dict[str, _workingset.FaultRecorder] = {}


def finish_recording(inst: Instance) -> dict[int, set[int]]:
    """The pages a recording restore served on demand (kill its tasks first)."""
    rec = _RECORDERS.pop(inst.id, None)
    return rec.stop() if rec is not None else {}


_SIGNALS = {s.name: s for s in signal.Signals}


def reseed(inst: Instance, tier_pids: dict[str, list[int]] | None = None) -> list[int]:
    """Send each tier's declared reseed signal to its processes (restored copies share their
    random state). Returns the pids signalled.

    With ``tier_pids`` (recorded at capture) processes are matched by their pid in the
    pod's PID namespace; without, by command line, which a lazily restored process may
    not have in memory yet (its stack arrives on first touch)."""
    signals = {t.name: _SIGNALS[t.reseed_signal] for t in inst.spec.tiers if t.reseed_signal}
    if not signals:
        return []
    by_ns = {nsp: name for name, pids in (tier_pids or {}).items() for nsp in pids}
    done = []
    for pid in pod_pids(inst)[1:]:
        if by_ns:
            name = by_ns.get(ns_pid(pid))
        else:
            t = tier_of(cmdline(pid), inst.spec.tiers)
            name = t.name if t else None
        if name in signals:
            try:
                os.kill(pid, signals[name])
            except ProcessLookupError:
                continue
            done.append(pid)
    return done
