"""Capture: dump a running pod into a signed appshot (or a snapshot of an instance).

Refuses, before dumping, what could not be restored (docs/architecture.md): io_uring
(CRIU cannot dump it; uvloop's libuv uses it), regular files open for writing
(CRIU refuses a restore when a file changed size since the dump) and TCP
connections to outside the pod (they cannot follow the copy elsewhere).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from . import _criu, _package
from ._models import Instance, PodSpec, WarmupRequest
from ._sys import ns_inode, run, write_json

RESTORE_META = "restore.json"
IMAGES = "images"
SOURCE = "source"
_O_ACCMODE = 0o3
_SKIP_SOURCE = {".venv", "__pycache__", ".git", ".pytest_cache", "node_modules"}
MAX_SOURCE_BYTES = 64 << 20


class NotRestorable(RuntimeError):
    """The pod holds something CRIU cannot restore faithfully; ``reasons`` say what to change."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("cannot capture: " + "; ".join(reasons))


class RestoreMeta(BaseModel):
    """What a restore needs beyond CRIU's images (``restore.json`` inside the appshot)."""

    spec: PodSpec  # without env: env may hold secrets (they are in the images anyway)
    pipes: dict[str, str]  # tier -> "pipe:[inode]" of its stdout/stderr at dump time
    tcp_established: bool = False
    source_included: bool = False
    dump_ms: float = 0.0
    # tier -> pids of its processes in the pod's PID namespace (the same after a restore):
    # the reseed signal finds its processes without reading their memory
    tier_pids: dict[str, list[int]] = {}


def _pod_processes(inst: Instance) -> list[int]:
    from ._pods import pod_pids
    return pod_pids(inst)


def _tcp_connections(pid: int) -> list[tuple[str, str]]:
    """ESTABLISHED (local, remote) TCP endpoints in ``pid``'s netns, as hex addr:port."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 3 and f[3] == "01":
                out.append((f[1], f[2]))
    return out


def _is_loopback(hexaddr: str) -> bool:
    addr = hexaddr.split(":")[0]
    if len(addr) == 8:  # IPv4, little-endian
        return addr.endswith("7F")
    return addr in ("00000000000000000000000001000000",) or addr.startswith(
        "0000000000000000FFFF0000") and addr.endswith("7F")


def problems(inst: Instance) -> list[str]:
    """Why this pod could not be restored faithfully (empty list: it can)."""
    found: list[str] = []
    tiers_by_pid = {}
    for pid in _pod_processes(inst):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        tiers_by_pid[pid] = comm
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except FileNotFoundError:
            continue
        fd_dir = Path(f"/proc/{pid}/fd")
        links = {}
        for fd in os.listdir(fd_dir):
            try:
                links[fd] = os.readlink(fd_dir / fd)
            except FileNotFoundError:
                pass
        if "io_uring" in maps or any("io_uring" in t for t in links.values()):
            found.append(f"process {pid} ({comm}) uses io_uring, which CRIU cannot dump: "
                         "run it without io_uring (e.g. uvicorn --loop asyncio instead of uvloop)")
        for fd, target in links.items():
            if not target.startswith("/") or target.startswith(("/dev/", "/proc/", "/sys/")):
                continue
            try:
                flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1]
                            .split()[0], 8)
            except (FileNotFoundError, IndexError, ValueError):
                continue
            if flags & _O_ACCMODE and Path(target.removesuffix(" (deleted)")).is_file():
                found.append(f"process {pid} ({comm}) has {target} open for writing (fd {fd}); "
                             "a file that changes after the dump breaks the restore: write logs "
                             "to stdout/stderr and data outside the pod's process")
    if inst.namespaces and _pod_processes(inst):
        for local, remote in _tcp_connections(inst.pid):
            if not (_is_loopback(local) and _is_loopback(remote)):
                found.append(f"TCP connection {_fmt(local)} -> {_fmt(remote)} to outside the pod "
                             "is open; a restored copy could not continue it (close "
                             "connections to databases/clients before capture, or drain)")
    return found


def _fmt(hexaddr: str) -> str:
    addr, port = hexaddr.split(":")
    if len(addr) == 8:
        ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
        return f"{ip}:{int(port, 16)}"
    return f"[{addr}]:{int(port, 16)}"


def _has_internal_tcp(inst: Instance) -> bool:
    return bool(_tcp_connections(inst.pid))


def dump(inst: Instance, dest: Path, *, wait_connections_s: float = 2.0) -> RestoreMeta:
    """Dump the pod's whole tree into ``dest/images`` (the pod is killed) and write
    ``dest/restore.json``. The caller builds and signs the package around it."""
    if not inst.namespaces or not inst.slot:
        raise NotRestorable(["instance runs without namespaces (cold-started without root)"])
    deadline = time.monotonic() + wait_connections_s
    while (found := problems(inst)) and time.monotonic() < deadline:
        if not all("TCP connection" in f for f in found):
            break
        time.sleep(0.02)  # our own warm-up connections may still be closing
    if found:
        raise NotRestorable(found)
    pipes = dict(inst.pipes)
    if set(pipes) != {t.name for t in inst.spec.tiers}:
        raise NotRestorable(["the instance's log pipes are unknown (started by another agent?)"])
    images = dest / IMAGES
    images.mkdir(parents=True, exist_ok=True, mode=0o700)
    from ._pods import tier_pids
    tiers = tier_pids(inst)
    tcp = _has_internal_tcp(inst)
    args = ["-t", str(inst.pid), "-D", str(images), "--external",
            f"net[{ns_inode(f'/run/netns/{inst.slot}')}]:slot", "--manage-cgroups=ignore"]
    if tcp:
        args.append("--tcp-established")
    else:
        # Nothing established to freeze (checked above; the edge drains first). A lock
        # would stay in the slot after the dump and block its next pod.
        args += ["--network-lock", "skip"]
    work = inst.pod_dir / "dump-work"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    t0 = time.monotonic()
    try:
        _criu.run("dump", [*args, "-W", str(work)], log_file=work / "dump.log")
    finally:
        if tcp:
            unlock_slot(inst.slot)
    dump_ms = (time.monotonic() - t0) * 1000
    shutil.rmtree(work, ignore_errors=True)
    spec = inst.spec.model_copy(update={"tiers": tuple(t.model_copy(update={"env": {}})
                                                       for t in inst.spec.tiers)})
    meta = RestoreMeta(spec=spec, pipes=pipes, tcp_established=tcp, dump_ms=dump_ms,
                       tier_pids=tiers)
    return meta


def record_working_set(stage: Path, spec: PodSpec, state_dir: Path, pool) -> dict:
    """Test-restore the fresh images lazily, replay the warm-up, record the pages served
    and mark them non-lazy (docs/architecture.md: REAP's working set without soft-dirty tracking).

    The test restore is served by ``_workingset.FaultRecorder``, on demand only: every
    page the restore, the health check and the warm-up touch arrives as a recorded fault,
    so the record is the working set itself (CRIU's lazy-pages daemon would push the
    remaining pages in the background right after the restore)."""
    from . import _pods, _restore, _workingset
    inst = _restore.restore(stage, None, state_dir, pool, lazy=True, record_faults=True)
    try:
        _pods.warm_up(inst, spec.warmup or (WarmupRequest(path=spec.entry.health_path or "/"),))
    finally:
        try:
            os.kill(inst.pid, 9)  # nothing more may fault: the PID namespace goes down
        except ProcessLookupError:
            pass
        faults = _restore.finish_recording(inst)
        _pods.stop(inst, pool, grace_s=0.0, keep_dir=True)
        shutil.rmtree(inst.pod_dir, ignore_errors=True)
    return _workingset.mark_eager(stage / IMAGES, faults)


def unlock_slot(slot: str) -> None:
    """Remove the iptables lock CRIU leaves in a netns after dumping established TCP."""
    for tool in ("iptables", "ip6tables"):
        base = ["nsenter", f"--net=/run/netns/{slot}", tool, "-w"]
        for rule in (["-D", "INPUT", "-j", "CRIU"], ["-D", "OUTPUT", "-j", "CRIU"],
                     ["-F", "CRIU"], ["-X", "CRIU"]):
            run([*base, *rule], check=False)


def copy_source(src: Path, dest: Path) -> bool:
    """Copy the app's files into the appshot (small sources only); False when skipped."""
    total = 0
    files = []
    for root, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if d not in _SKIP_SOURCE]
        for n in names:
            p = Path(root) / n
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
                files.append(p)
    if total > MAX_SOURCE_BYTES:
        return False
    for p in files:
        q = dest / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(p, q)
    return True


def package(inst_spec: PodSpec, staging: Path, meta: RestoreMeta, *, key, kind: str,
            instance: str | None = None, working_set=None) -> _package.Manifest:
    """Write restore.json and sign the staging dir (hashes every file)."""
    write_json(staging / RESTORE_META, meta.model_dump(mode="json"))
    tiers = [_package.Tier(name=t.name, command=t.command, port=t.port, entry=t.entry,
                           reseed_signal=t.reseed_signal) for t in inst_spec.tiers]
    return _package.build(
        staging, key=key, app=inst_spec.app, version=inst_spec.version, owner=inst_spec.owner,
        vendor=inst_spec.vendor, tiers=tiers, criu_version=_criu.status().version or "?",
        kind=kind, entry_port=inst_spec.entry.port, instance=instance,
        working_set=working_set or {})
