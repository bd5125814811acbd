"""Appshots: turn a running application into a signed frozen image, and back, fast.

The public face of the agent's snapshot/restore machinery (docs/architecture.md,
"Instances are pods; appshots are their frozen images"). Everything a server
holds lives under one state directory (``Host.state_dir``): pods, logs, keys,
snapshots. Where CRIU cannot run (not root, ``criu check`` fails) instances
cold-start from their source instead, and the reason is stated once.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from . import _capture, _criu, _kits, _logpump, _package, _pods, _restore
from ._capture import NotRestorable
from ._models import Instance, PodSpec, TierSpec, WarmupRequest
from ._package import AppshotRejected, IncompatibleCPU, Manifest, TrustStore
from ._slots import SlotPool
from ._sys import Steps, is_root, log

__all__ = [
    "Host", "PodSpec", "TierSpec", "WarmupRequest", "Instance", "Manifest", "CaptureResult",
    "AppshotRejected", "IncompatibleCPU", "NotRestorable", "capture", "restore", "start",
    "snapshot", "stop", "list_instances", "verify", "criu_status", "pack", "unpack",
    "shutdown",
]

DEFAULT_STATE = Path(os.environ.get("EDGESHOT_STATE", "/var/lib/edgeshot" if is_root()
                                    else Path.home() / ".local/state/edgeshot"))


class Host(BaseModel):
    """One server's agent configuration: where state lives and its pool of slots."""

    model_config = ConfigDict(frozen=True)
    state_dir: Path = DEFAULT_STATE
    slot_prefix: str = "es"
    slot_subnet: str = "10.213.0.0/24"
    slots: int = 16
    # pods' cgroups (with a parked launcher inside) made ahead of time, so that starts and
    # restores skip a cgroup migration (an RCU grace period) and a spawn: see _kits
    kits: int = 8
    # CPU priority of CRIU while it restores (the latency-critical part of a start, on a
    # server busy with running pods); restored tasks get their own priority back. None:
    # inherit the agent's.
    restore_nice: int | None = -10
    # lazy restores: the lazy-pages daemon serves page faults only for this long before
    # it pushes the pages the working set left out (off the first requests' path)
    lazy_push_delay_s: float = 1.0

    def pool(self) -> SlotPool | None:
        """The slot pool (created on first use); None without root: no namespaces."""
        if not is_root():
            return None
        pool = SlotPool(self.state_dir, prefix=self.slot_prefix, subnet=self.slot_subnet,
                        size=self.slots)
        pool.ensure()
        if self.kits > 0 and _kits.available():
            _kits.pool().ensure(min(self.kits, self.slots))
            _logpump.client(Path(self.state_dir) / "logs").warm()
        return pool

    @property
    def key_path(self) -> Path:
        return self.state_dir / "keys" / "server.key"

    def key(self) -> _package.Ed25519PrivateKey:
        """This server's signing key (made on first use, 0600): it signs its snapshots."""
        if not self.key_path.exists():
            self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                _package.save_private_key(_package.generate_key(), self.key_path)
            except _package.AppshotError:
                pass  # made concurrently by another process
        return _package.load_private_key(self.key_path)

    def trust(self) -> TrustStore:
        """Keys whose appshots this server restores: its own plus ``trusted.d/*.pub``."""
        d = self.state_dir / "trusted.d"
        store = TrustStore.from_dir(d) if d.is_dir() else TrustStore()
        store.add(self.key())
        return store


class CaptureResult(BaseModel):
    path: Path
    manifest: Manifest
    cold_start_ms: float
    dump_ms: float
    warmup_requests: int


def criu_status() -> _criu.CriuStatus:
    """Whether this server restores (CRIU usable) or cold-starts, and why."""
    return _criu.status()


def start(spec: PodSpec, host: Host = Host()) -> Instance:
    """Cold-start an instance from its installed source (a pod in a slot when root)."""
    return _pods.start(spec, host.state_dir, host.pool(),
                       cold_reason=None if _criu.status().usable else _criu.status().reason)


def capture(spec: PodSpec, dest: Path, host: Host = Host(), *,
            key: _package.Ed25519PrivateKey | None = None, include_source: bool = True,
            tarball: Path | None = None, working_set: bool = True,
            progress: Callable[[str], None] | None = None) -> CaptureResult:
    """Start ``spec`` fresh, wait for health, warm it up, dump it into a signed appshot at
    ``dest`` (atomically: ``dest`` appears complete or not at all). ``progress(step)`` is
    told each step as it starts (a capture takes seconds to minutes).

    Refuses (NotRestorable) what could not be restored, saying what to change.
    """
    say = progress or (lambda _step: None)
    st = _criu.status()
    if not st.usable:
        raise NotRestorable([f"CRIU unavailable: {st.reason}"])
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; appshots are immutable")
    pool = host.pool()
    say(f"starting {spec.app} {spec.version} and waiting for its health check")
    inst = _pods.start(spec, host.state_dir, pool)
    try:
        say(f"warming up ({sum(w.count for w in spec.warmup)} request(s))")
        sent = _pods.warm_up(inst, spec.warmup)
        with _package.staging(dest) as stage:
            say("dumping the running instance (CRIU)")
            meta = _capture.dump(inst, stage)
            if include_source:
                say("copying the source")
                meta.source_included = _capture.copy_source(spec.source_dir,
                                                            stage / _capture.SOURCE)
            ws = {}
            if working_set:
                say("recording the working set (a test restore with the warm-up requests)")
                _capture.write_json(stage / _capture.RESTORE_META, meta.model_dump(mode="json"))
                ws = _capture.record_working_set(stage, spec, host.state_dir, pool)
            say("signing every file")
            manifest = _capture.package(spec, stage, meta, key=key or host.key(),
                                        kind="appshot", working_set=ws)
            _package.publish(stage, dest)
    finally:
        if _pods.pid_alive(inst.pid):
            _pods.stop(inst, pool)
        else:
            _pods.release(inst, pool)
    if tarball is not None:
        say(f"packing {tarball.name}")
        _package.pack(dest, tarball)
    return CaptureResult(path=dest, manifest=manifest, cold_start_ms=inst.ready_ms or 0,
                         dump_ms=meta.dump_ms, warmup_requests=sent)


_VERIFIED: dict[tuple, Manifest] = {}


def _fingerprint(appshot: Path) -> tuple:
    """Identity of every file of an appshot as the kernel records it (inode, size, mode,
    owner, mtime and ctime in ns): any write, chmod, chown or replacement changes it, and
    ctime cannot be set back without root."""
    out = []
    for root, dirs, files in os.walk(appshot):
        dirs.sort()
        for name in sorted(files) + [""]:
            p = os.path.join(root, name) if name else root
            st = os.lstat(p)
            out.append((p, st.st_ino, st.st_size, st.st_mode, st.st_uid, st.st_mtime_ns,
                        st.st_ctime_ns))
    return tuple(out)


def verify(appshot: Path, trust: TrustStore, *, cached: bool = True) -> Manifest:
    """Signature, every checksum, file modes, then CPU compatibility; the manifest if all pass.

    Raises AppshotRejected (untrusted/tampered) or IncompatibleCPU (genuine, wrong hardware).
    The SHA-256 pass (tens of ms per 10 MB) is skipped when this process already verified
    the very same files (same inodes, sizes, modes, mtimes, ctimes) against a key that is
    still trusted; the signature is always checked again.
    """
    appshot = Path(appshot).resolve()
    fp = _fingerprint(appshot) if cached else None
    hit = _VERIFIED.get((str(appshot), fp)) if fp else None
    if hit is not None and hit.signer in trust:
        manifest = hit
        sig = (appshot / _package.SIGNATURE_NAME).read_bytes()
        key = trust.get(hit.signer)
        try:
            key.verify(sig, (appshot / _package.MANIFEST_NAME).read_bytes())
        except Exception:
            _VERIFIED.pop((str(appshot), fp), None)
            manifest = _package.verify(appshot, trust)
    else:
        manifest = _package.verify(appshot, trust)
        if fp is not None and _fingerprint(appshot) == fp:
            _VERIFIED[(str(appshot), fp)] = manifest
    _package.check_cpu(manifest)
    return manifest


def restore(appshot: Path, host: Host = Host(), *, trust: TrustStore | None = None,
            lazy: bool = True, fallback: PodSpec | None = None,
            fallback_trusted: bool = False) -> Instance:
    """A new running instance from a verified appshot or snapshot, in a free slot.

    Untrusted or incompatible appshots are refused; then, only when ``fallback`` (the
    app's separately verified source) is given and ``fallback_trusted``, the instance
    cold-starts from it instead. Without CRIU it cold-starts from ``fallback``, saying why.
    """
    st = _criu.status()
    if not st.usable:
        if fallback is None:
            raise NotRestorable([f"CRIU unavailable ({st.reason}) and no source to cold-start"])
        return _pods.start(fallback, host.state_dir, host.pool(), cold_reason=st.reason)
    steps = Steps()
    try:
        manifest = verify(Path(appshot), trust or host.trust())
    except (AppshotRejected, IncompatibleCPU) as exc:
        if fallback is not None and fallback_trusted:
            log.warning("appshot %s refused (%s); cold-starting from the trusted source",
                        appshot, exc)
            return _pods.start(fallback, host.state_dir, host.pool(), cold_reason=str(exc))
        raise
    steps("verify")
    pool = host.pool()
    assert pool is not None
    return _restore.restore(Path(appshot), manifest, host.state_dir, pool, lazy=lazy,
                            origin=manifest.kind, steps=steps, nice=host.restore_nice,
                            push_delay_s=host.lazy_push_delay_s)


def snapshot(inst: Instance, host: Host = Host(), dest: Path | None = None) -> Path:
    """Scale to zero: dump a running instance (freeing its slot, memory and CPU) into a
    snapshot signed with this server's own key; restoring it continues its state."""
    pool = host.pool()
    dest = Path(dest or host.state_dir / "snapshots" / f"{inst.id}-{int(time.time() * 1000)}")
    try:
        with _package.staging(dest) as stage:
            meta = _capture.dump(inst, stage)
            _capture.package(inst.spec, stage, meta, key=host.key(), kind="snapshot",
                             instance=inst.id)
            _package.publish(stage, dest)
    finally:
        if _pods.pid_alive(inst.pid):
            _pods.stop(inst, pool)
        else:
            _pods.release(inst, pool)
    return dest


def shutdown(host: Host = Host(), wait_s: float = 2.0) -> None:
    """Stop this process's helpers: the kits kept ready (their cgroups are removed) and
    the connection to the host's resident log pump, which exits once no pod writes to it
    and no agent is connected. Pods keep running. Tests and benchmarks call it last; a
    later start or restore makes the helpers again."""
    _kits.pool().close()
    _logpump.client(Path(host.state_dir) / "logs").close(wait_s)


def stop(inst: Instance, host: Host = Host()) -> None:
    """Stop an instance: SIGTERM its tiers, SIGKILL its PID 1, free slot and cgroup."""
    _pods.stop(inst, host.pool())


def list_instances(host: Host = Host()) -> list[Instance]:
    """The instances this server runs (records whose pod init is gone are dropped)."""
    out = []
    for inst in _pods.list_instances(host.state_dir):
        if _pods.pid_alive(inst.pid):
            out.append(inst)
        else:
            _pods.release(inst, host.pool())
    return out


def list_appshots(root: Path) -> list[tuple[Path, Manifest]]:
    """Appshots (and snapshots) under ``root`` with their (unverified) manifests."""
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            m = d / _package.MANIFEST_NAME
            if d.is_dir() and m.is_file() and not _package.is_staging_dir(d):
                try:
                    out.append((d, _package.parse_manifest(m.read_bytes())))
                except AppshotRejected:
                    continue
    return out


def pack(appshot: Path, tarball: Path) -> Path:
    """A tarball of an appshot for transfer (manifest first)."""
    return _package.pack(appshot, tarball)


def unpack(tarball: Path, dest: Path, trust: TrustStore) -> Manifest:
    """Extract and verify a tarball into ``dest`` (nothing appears unless it verifies)."""
    return _package.unpack(tarball, dest, trust)


def _tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgeshot-"))




def pod_spec(app, source_dir: Path, *, secrets: dict[str, str] | None = None,
             reseed_signal: str | None = None) -> PodSpec:
    """Adapter from an ``edgeshot.spec.Application`` (with ``spec.source_dir(app)``).

    ``secrets`` supplies the tiers' declared secret env vars at run time (never stored in
    manifests). ``reseed_signal`` is sent to every tier after a restore (the examples use
    SIGUSR2); None when the app declares no reseed hook.
    """
    tiers = []
    for t in app.tiers:
        env = dict(t.env)
        for name in getattr(t, "secrets", ()):
            if secrets and name in secrets:
                env[name] = secrets[name]
        h = t.health
        tiers.append(TierSpec(
            name=t.name, command=tuple(t.command), port=t.port, env=env, entry=t.name == app.entry_tier.name,
            health_path=h.path if h else None, health_timeout_s=h.timeout_s if h else 2.0,
            start_timeout_s=h.start_timeout_s if h else 30.0, cpu=t.resources.cpu,
            memory_mb=t.resources.memory_mb,
            reseed_signal=reseed_signal or getattr(t, "reseed_signal", None)))
    return PodSpec(
        app=app.name, version=app.version, owner=app.owner.id, vendor=app.vendor_name,
        source_dir=Path(source_dir), tiers=tuple(tiers),
        warmup=tuple(WarmupRequest(method=w.method, path=w.path, count=w.count, body=w.body,
                                   headers=dict(w.headers)) for w in app.warmup))
