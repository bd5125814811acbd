"""Restore: a verified appshot (or snapshot) back into a running pod in a free slot.

Nothing is restored before the signature, every checksum and the CPU have
been checked (restoring a tampered image runs its code as root). The pod's
network namespace was dumped as external (``--external net[…]:slot``) and is
replaced by the free slot's (``--inherit-fd fd[N]:slot``); each tier's log
pipe is replaced by a fresh pipe to a fresh log pump. Copies of one appshot
never collide: each runs in its own PID namespace and slot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from . import _criu, _package
from ._capture import IMAGES, RESTORE_META, SOURCE, RestoreMeta
from ._models import Instance
from ._pods import Plumbing, pod_pids, save, wait_healthy
from ._slots import SlotPool
from ._sys import log, pid_alive, reap, wait_gone


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
            record_faults: bool = False) -> Instance:
    """Restore a *verified* appshot dir into a new pod; returns when it is healthy.

    ``record_faults`` (capture only): the lazy-pages daemon logs every fault it serves,
    to record the working set."""
    meta = read_meta(appshot_dir)
    ensure_source(appshot_dir, meta)
    spec = meta.spec
    p = Plumbing(spec, state_dir, pool)
    p.prepare()
    assert p.slot is not None
    work = p.pod_dir / "restore-work"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    images = appshot_dir / IMAGES
    nsfd = os.open(p.slot.netns_path, os.O_RDONLY)
    lazy_proc: subprocess.Popen[bytes] | None = None
    init_pid = None
    t0 = time.monotonic()
    try:
        args = ["-D", str(images), "-W", str(work), "--restore-detached",
                "--pidfile", str(work / "pid"), "--manage-cgroups=ignore",
                "--inherit-fd", f"fd[{nsfd}]:slot"]
        for t, w in zip(spec.tiers, p.write_fds, strict=True):
            args += ["--inherit-fd", f"fd[{w}]:{meta.pipes[t.name]}"]
        if meta.tcp_established:
            args.append("--tcp-established")
        else:
            args += ["--network-lock", "skip"]  # nothing to freeze: the slot is fresh
        if lazy:
            lazy_proc = _criu.popen("lazy-pages", ["-D", str(images), "-W", str(work)],
                                    log_file=work / "lazy-pages.log",
                                    verbosity=4 if record_faults else 2)
            _wait_socket(work / "lazy-pages.socket", lazy_proc)
            args.append("--lazy-pages")
        _criu.run("restore", args, log_file=work / "restore.log",
                  pass_fds=(nsfd, *p.write_fds), preexec_fn=p.join_cgroup)
        init_pid = int((work / "pid").read_text())
        restore_ms = (time.monotonic() - t0) * 1000
        p.close_writers()
        pool.bind(p.slot, p.id, init_pid)
        inst = Instance(
            id=p.id, app=spec.app, version=spec.version, owner=spec.owner, vendor=spec.vendor,
            origin=origin, address=p.slot.address, port=spec.entry.port, slot=p.slot.name,
            pid=init_pid, started=datetime.now(UTC), cgroup=p.cgroup.name if p.cgroup else None,
            pod_dir=p.pod_dir, log_dir=p.log_dir, namespaces=True, spec=spec, pipes=p.pipes,
            restore_ms=restore_ms, lazy=lazy, criu_work=work,
            lazy_pid=lazy_proc.pid if lazy_proc else None)
        save(inst)
        wait_healthy(inst, tiers=(spec.entry,))
        inst.ready_ms = (time.monotonic() - t0) * 1000
        log.info("restored %s into %s: criu %.1f ms, healthy after %.1f ms", inst.id,
                 p.slot.name, restore_ms, inst.ready_ms)
        reseed(inst)
        save(inst)
        return inst
    except BaseException:
        if init_pid and pid_alive(init_pid):
            os.kill(init_pid, signal.SIGKILL)
            wait_gone(init_pid, 5)
        if lazy_proc is not None and lazy_proc.poll() is None:
            lazy_proc.kill()
            lazy_proc.wait()
        p.abort()
        raise
    finally:
        os.close(nsfd)
        reap()


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RestoreError(f"criu lazy-pages exited ({proc.returncode}); see "
                               f"{path.parent / 'lazy-pages.log'}")
        if time.monotonic() > deadline:
            raise RestoreError("criu lazy-pages did not start")
        time.sleep(0.001)


_SIGNALS = {s.name: s for s in signal.Signals}


def reseed(inst: Instance) -> list[int]:
    """Send each tier's declared reseed signal to its processes (restored copies share their
    random state). Returns the pids signalled."""
    def norm(argv: tuple[str, ...]) -> tuple[str, ...]:
        return (os.path.basename(argv[0]), *argv[1:]) if argv else argv

    wanted = {norm(t.command): _SIGNALS[t.reseed_signal]
              for t in inst.spec.tiers if t.reseed_signal}
    if not wanted:
        return []
    done = []
    for pid in pod_pids(inst)[1:]:
        try:
            argv = norm(tuple(a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes()
                              .rstrip(b"\0").split(b"\0")))
        except FileNotFoundError:
            continue
        for cmd, sig in wanted.items():
            if argv == cmd or argv[-len(cmd) + 1:] == cmd[1:] and argv[0].startswith(cmd[0]):
                os.kill(pid, sig)
                done.append(pid)
    return done
