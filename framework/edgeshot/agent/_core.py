"""The agent's instance and appshot operations, behind its HTTP API (server.py).

Blocking code (the appshot library runs CRIU, waits for health): the server
runs these methods in worker threads. One lock per instance serialises its
lifecycle (create-from-snapshot, snapshot, stop) and keeps health probes away
from a pod being dumped; the registry lock is only held for bookkeeping.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from pydantic import PrivateAttr

from . import _capture, _package, _pods, _restore
from . import appshots as A
from ._cgroups import PodCgroup
from ._criu import CriuError
from ._metrics import AgentMetrics, InstanceView, StoredView
from ._slots import NoFreeSlot
from ._state import InstanceRecord, StateStore, reconcile
from ._usage import Meter, Target
from .models import (
    NAME_RE,
    Amount,
    AppshotInfo,
    Capacity,
    CaptureRequest,
    CaptureResult,
    CreateInstance,
    UploadStatus,
)

if TYPE_CHECKING:
    from .server import AgentConfig

log = logging.getLogger("edgeshot.agent")


class ApiError(Exception):
    """An error the API reports as ``{"error": message, "code": code}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 detail: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what}")


class AgentHost(A.Host):
    """The library's Host with the agent's signing key and trust directory."""

    signing_key: Path | None = None
    trust_dir: Path | None = None
    _trust: tuple[tuple, _package.TrustStore] | None = PrivateAttr(None)

    @property
    def key_path(self) -> Path:
        return self.signing_key or self.state_dir / "keys" / "server.key"

    @property
    def trusted_dir(self) -> Path:
        return self.trust_dir or self.state_dir / "trusted.d"

    def trust(self) -> _package.TrustStore:
        """Own key plus every key of the trust dir (re-read when the dir changes)."""
        d = self.trusted_dir
        try:
            stamp = (d.stat().st_mtime_ns, *(p.stat().st_mtime_ns for p in sorted(d.iterdir())))
        except FileNotFoundError:
            stamp = ()
        if self._trust is not None and self._trust[0] == stamp:
            return self._trust[1]
        store = _package.TrustStore.from_dir(d) if d.is_dir() else _package.TrustStore()
        store.add(self.key())
        self._trust = (stamp, store)
        return store


def _now() -> datetime:
    return datetime.now(UTC)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name or ""):
        raise ApiError(400, "bad_name", f"{what} {name[:80]!r} is not valid: 1-128 of letters, "
                       "digits, '_.+-', starting with a letter or digit")
    return name


class Agent:
    """One server's agent: its instances, appshots, usage meter and metrics."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        if cfg.criu:
            os.environ["EDGESHOT_CRIU"] = str(cfg.criu)
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir = state
        self.host = AgentHost(state_dir=state, slot_prefix=cfg.slot_prefix,
                              slot_subnet=cfg.slot_subnet, slots=cfg.slots,
                              signing_key=cfg.signing_key, trust_dir=cfg.trust_dir)
        st = A.criu_status()  # the library says once why it cannot restore
        if cfg.restore == "off":
            self.restores, self.cold_reason = False, 'restore = "off" in the agent configuration'
            log.warning("instances will cold-start on this server: %s", self.cold_reason)
        else:
            self.restores = st.usable
            self.cold_reason = None if st.usable else st.reason
        self.pool = self.host.pool()
        self.appshots_dir = state / "appshots"
        self.snapshots_dir = state / "snapshots"
        self.uploads_dir = state / "uploads"
        self.tarballs_dir = state / "tarballs"
        for d in (self.appshots_dir, self.snapshots_dir, self.uploads_dir, self.tarballs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.source = cfg.source or f"agent:{cfg.edgepoint}:{cfg.server}"
        self.metrics = AgentMetrics(cfg.edgepoint)
        self.states = StateStore(state / "agent-state.db")
        self.meter = Meter(state / "usage.db", source=self.source, edgepoint=cfg.edgepoint,
                           retention_s=cfg.usage_retention_days * 86400,
                           on_records=self._on_records)
        self.lock = threading.RLock()
        self.records: dict[str, InstanceRecord] = {}
        self.pods: dict[str, A.Instance] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._shots: dict[str, AppshotInfo] = {}
        self._shot_since: dict[str, float] = {}
        self.started = time.time()
        self.adopted = 0
        self.key_id = _package.key_id(self.host.key())
        self.metrics.watch(self._instance_views, self._stored_views, self._slot_usage)

    # ------------------------------------------------------------------ start-up
    def open(self) -> None:
        """Clean up after a crash, then adopt the instances a previous agent left running."""
        for d in (self.appshots_dir, self.snapshots_dir):
            _package.cleanup_stale(d)
        for p in self.tarballs_dir.glob(".*"):
            p.unlink(missing_ok=True)
        for p in self.appshots_dir.glob(".*.deleting"):
            shutil.rmtree(p, ignore_errors=True)
        a = reconcile(self.states.load(), self.state_dir)
        for rec in a.kept:
            self.records[rec.id] = rec
        for rec, inst in a.adopted:
            rec.attach(inst)
            rec.health = "unknown"
            self.records[rec.id] = rec
            self.pods[rec.id] = inst
            self.states.save(rec)
            log.info("adopted instance %s (pod %s, %s)", rec.id, inst.id, rec.address)
        for rec, inst, why in a.dead:
            log.warning("instance %s not adopted: %s", rec.id, why)
            if inst is not None:
                self.meter.final(self._pod_target(rec, inst))
                _pods.release(inst, self.pool)
            was_snapshotting = rec.state == "snapshotting"
            latest = self._latest_snapshot(rec.id)
            rec.detach()
            if was_snapshotting and latest is not None:
                # the dump finished, the agent died before it could say so
                rec.snapshot = latest
                rec.snapshot_bytes = self._info(self.snapshots_dir / latest).size_bytes
                rec.snapshot_at = _now()
                rec.state = "snapshotted"
            else:
                rec.state = "failed"
                rec.error = f"pod died while no agent watched it: {why}"
            self.records[rec.id] = rec
            self.states.save(rec)
        self.adopted = len(a.adopted)
        kept = {r.snapshot for r in self.records.values() if r.snapshot}
        for d in self.snapshots_dir.iterdir():  # snapshots no instance refers to any more
            if d.is_dir() and not d.name.startswith(".") and d.name not in kept:
                log.info("removing snapshot %s: no instance refers to it", d.name)
                shutil.rmtree(d, ignore_errors=True)
        for name in self._appshot_names():
            self._shot_since.setdefault(name, time.time())

    def close(self) -> None:
        self.meter.close()
        self.states.close()

    # ------------------------------------------------------------------ helpers
    def _on_records(self, n: int) -> None:
        self.metrics.usage_records.labels(edgepoint=self.cfg.edgepoint).inc(n)

    @contextlib.contextmanager
    def _instance_lock(self, instance_id: str, timeout: float = 120) -> Iterator[None]:
        with self.lock:
            lk = self._locks.setdefault(instance_id, threading.Lock())
        if not lk.acquire(timeout=timeout):
            raise ApiError(409, "busy", f"instance {instance_id} is busy with another operation")
        try:
            yield
        finally:
            lk.release()

    def _record(self, instance_id: str) -> InstanceRecord:
        check_name(instance_id, "instance id")
        with self.lock:
            rec = self.records.get(instance_id)
        if rec is None:
            raise not_found(f"instance {instance_id}")
        return rec

    def _save(self, rec: InstanceRecord) -> None:
        self.states.save(rec)

    def _pod_target(self, rec: InstanceRecord, inst: A.Instance) -> Target:
        started = rec.started or inst.started
        return Target(
            key=rec.id, app=rec.app, version=rec.version, owner=rec.owner, vendor=rec.vendor,
            since=started.timestamp(), interval=self.cfg.usage_interval_s, pod=inst.id,
            cgroup=inst.cgroup, pids=None if inst.cgroup else (lambda i=inst: _pods.pod_pids(i)))

    def _snapshot_target(self, rec: InstanceRecord) -> Target:
        return Target(
            key=rec.id, app=rec.app, version=rec.version, owner=rec.owner, vendor=rec.vendor,
            since=(rec.snapshot_at or _now()).timestamp(),
            interval=self.cfg.storage_interval_s, storage_bytes=rec.snapshot_bytes)

    def _appshot_target(self, info: AppshotInfo) -> Target:
        return Target(
            key=f"appshot/{info.name}", app=info.app, version=info.version, owner=info.owner,
            vendor=info.vendor, since=self._shot_since.get(info.name, time.time()),
            interval=self.cfg.storage_interval_s, storage_bytes=info.size_bytes)

    def usage_targets(self) -> list[Target]:
        out = []
        with self.lock:
            for rec in self.records.values():
                if rec.state == "running" and rec.id in self.pods:
                    out.append(self._pod_target(rec, self.pods[rec.id]))
                elif rec.state == "snapshotted" and rec.snapshot:
                    out.append(self._snapshot_target(rec))
        for info in self.list_appshots():
            out.append(self._appshot_target(info))
        return out

    # ------------------------------------------------------------------ appshots
    def _appshot_names(self) -> list[str]:
        return sorted(p.name for p in self.appshots_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and (p / _package.MANIFEST_NAME).is_file())

    def _info(self, path: Path) -> AppshotInfo:
        key = str(path)
        info = self._shots.get(key)
        if info is not None:
            return info
        try:
            m = _package.parse_manifest((path / _package.MANIFEST_NAME).read_bytes())
        except FileNotFoundError:
            raise not_found(f"appshot {path.name}") from None
        except _package.AppshotRejected as exc:
            raise ApiError(422, "appshot_rejected", exc.reason) from None
        info = AppshotInfo(
            name=path.name, kind=m.kind, app=m.app, version=m.version, owner=m.owner,
            vendor=m.vendor, instance=m.instance, created=m.created,
            size_bytes=sum(f.size for f in m.files.values()), signer=m.signer,
            restorable=any(f.startswith(_capture.IMAGES + "/") for f in m.files),
            source_included=any(f.startswith(_capture.SOURCE + "/") for f in m.files))
        self._shots[key] = info
        return info

    def appshot_path(self, name: str) -> Path:
        check_name(name, "appshot name")
        path = self.appshots_dir / name
        if not (path / _package.MANIFEST_NAME).is_file():
            raise not_found(f"appshot {name}")
        return path

    def appshot(self, name: str) -> AppshotInfo:
        return self._info(self.appshot_path(name))

    def list_appshots(self) -> list[AppshotInfo]:
        out = []
        for name in self._appshot_names():
            with contextlib.suppress(ApiError):
                out.append(self._info(self.appshots_dir / name))
        return out

    def list_snapshots(self) -> list[AppshotInfo]:
        out = []
        with self.lock:
            snaps = [(r.snapshot, r) for r in self.records.values() if r.snapshot]
        for n, rec in snaps:
            with contextlib.suppress(ApiError):
                info = self._info(self.snapshots_dir / n)
                out.append(info.model_copy(update={"instance": rec.id, "owner": rec.owner,
                                                   "vendor": rec.vendor}))
        return out

    def verify_appshot(self, name: str) -> AppshotInfo:
        path = self.appshot_path(name)
        try:
            A.verify(path, self.host.trust(), cached=False)
        except _package.IncompatibleCPU as exc:
            raise ApiError(409, "incompatible_cpu", str(exc)) from None
        except _package.AppshotRejected as exc:
            raise ApiError(422, "appshot_rejected", exc.reason) from None
        return self._info(path)

    def delete_appshot(self, name: str) -> None:
        path = self.appshot_path(name)
        with self.lock:
            users = [r.id for r in self.records.values()
                     if r.appshot == name and r.state in ("running", "starting") and r.lazy
                     and r.origin == "appshot"]
        if users:
            raise ApiError(409, "in_use", f"appshot {name} still serves the memory of lazily "
                           f"restored instances {users}; stop them first")
        info = self._info(path)
        self.meter.final(self._appshot_target(info))
        self.meter.forget(f"appshot/{name}")
        gone = path.with_name(f".{name}.{uuid.uuid4().hex[:8]}.deleting")
        os.rename(path, gone)
        shutil.rmtree(gone, ignore_errors=True)
        self._shots.pop(str(path), None)
        self._shot_since.pop(name, None)
        for t in self.tarballs_dir.glob(f"{name}.tar.*"):
            t.unlink(missing_ok=True)

    def tarball(self, name: str) -> Path:
        """A tarball of the appshot for another server (made once, kept)."""
        path = self.appshot_path(name)
        out = self.tarballs_dir / f"{name}{_package.tar_suffix()}"
        if not out.exists():
            A.pack(path, out)
        return out

    def signing_key_pem(self) -> tuple[str, str]:
        key = self.host.key()
        pub = key.public_key()
        from cryptography.hazmat.primitives import serialization
        pem = pub.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return _package.key_id(pub), pem

    def trust_key(self, pem: str) -> str:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise ApiError(422, "bad_key", "not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ApiError(422, "bad_key", "not an Ed25519 public key")
        kid = _package.key_id(key)
        d = self.host.trusted_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        _package.save_public_key(key, d / f"{kid}.pub", overwrite=True)
        return kid

    # ------------------------------------------------------------------ uploads
    def _upload_paths(self, name: str) -> tuple[Path, Path]:
        check_name(name, "appshot name")
        return self.uploads_dir / f"{name}.part", self.uploads_dir / f"{name}.json"

    def upload_status(self, name: str) -> UploadStatus:
        part, meta = self._upload_paths(name)
        if (self.appshots_dir / name / _package.MANIFEST_NAME).is_file():
            info = self.appshot(name)
            return UploadStatus(name=name, offset=info.size_bytes, complete=True)
        if not meta.exists():
            raise not_found(f"upload of {name}")
        import json
        m = json.loads(meta.read_text())
        size = part.stat().st_size if part.exists() else 0
        return UploadStatus(name=name, offset=size, size=m["size"])

    def upload_begin(self, name: str, offset: int, size: int, sha256: str) -> tuple[Path, int]:
        """Check an upload chunk may be appended at ``offset``; returns the part file."""
        import json
        part, meta = self._upload_paths(name)
        if (self.appshots_dir / name).exists():
            raise ApiError(409, "exists", f"appshot {name} exists; appshots are immutable "
                           "(delete it first)")
        if size > self.cfg.max_upload_bytes:
            raise ApiError(413, "too_large", f"{size} bytes exceed max_upload_bytes "
                           f"({self.cfg.max_upload_bytes})")
        if meta.exists():
            m = json.loads(meta.read_text())
            if (m["size"], m["sha256"]) != (size, sha256):
                if offset != 0:
                    raise ApiError(409, "upload_mismatch", "another upload of this name (other "
                                   "size or digest) is in progress; restart at offset 0 to "
                                   "replace it")
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
        if not meta.exists():
            free = shutil.disk_usage(self.state_dir).free
            if free < 2 * size:
                raise ApiError(507, "no_space", f"{free} bytes free, an upload of {size} needs "
                               "twice that (tarball and unpacked appshot)")
            _write_json(meta, {"size": size, "sha256": sha256})
        have = part.stat().st_size if part.exists() else 0
        if offset != have:
            raise ApiError(409, "offset_mismatch", f"upload of {name} is at offset {have}, not "
                           f"{offset}; resume from {have}", detail=[str(have)])
        return part, have

    def upload_finish(self, name: str) -> AppshotInfo:
        """The whole tarball is here: check its digest, unpack and verify it."""
        import json
        part, meta = self._upload_paths(name)
        m = json.loads(meta.read_text())
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        try:
            if h.hexdigest() != m["sha256"]:
                raise ApiError(422, "corrupt_upload", "the uploaded bytes do not match "
                               "Upload-SHA256; upload again from offset 0")
            try:
                A.unpack(part, self.appshots_dir / name, self.host.trust())
            except _package.AppshotRejected as exc:
                raise ApiError(422, "appshot_rejected", exc.reason) from None
            except _package.AppshotError as exc:
                raise ApiError(422, "appshot_rejected", str(exc)) from None
        finally:
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
        self._shot_since[name] = time.time()
        return self.appshot(name)

    def upload_abort(self, name: str) -> None:
        part, meta = self._upload_paths(name)
        if not meta.exists() and not part.exists():
            raise not_found(f"upload of {name}")
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)

    # ------------------------------------------------------------------ capture
    def capture(self, req: CaptureRequest) -> CaptureResult:
        spec = req.spec
        name = check_name(req.appshot_name, "appshot name")
        dest = self.appshots_dir / name
        labels = self.metrics.labels(spec.app, spec.version, spec.owner)
        if dest.exists():
            raise ApiError(409, "exists", f"appshot {name} exists; appshots are immutable")
        if not Path(spec.source_dir).is_dir():
            raise ApiError(422, "no_source", f"source_dir {spec.source_dir} is not a directory "
                           "on this server")
        try:
            if self.restores:
                res = A.capture(spec, dest, self.host, include_source=req.include_source)
                out = CaptureResult(appshot=self._info(dest), cold_start_ms=res.cold_start_ms,
                                    dump_ms=res.dump_ms, warmup_requests=res.warmup_requests)
            else:
                out = self._capture_cold(spec, dest, req.include_source)
        except A.NotRestorable as exc:
            self.metrics.captures.labels(**labels, result="error").inc()
            raise ApiError(422, "not_restorable", str(exc), detail=exc.reasons) from None
        except _pods.PodError as exc:
            self.metrics.captures.labels(**labels, result="error").inc()
            raise ApiError(422, "app_failed", str(exc)) from None
        except FileExistsError:
            raise ApiError(409, "exists", f"appshot {name} exists") from None
        except NoFreeSlot as exc:
            raise ApiError(503, "at_capacity", str(exc)) from None
        except (OSError, CriuError, _package.AppshotError) as exc:  # timeouts, CRIU, disk
            self.metrics.captures.labels(**labels, result="error").inc()
            log.warning("capture of %s %s failed", spec.app, spec.version, exc_info=True)
            raise ApiError(502, "capture_failed", f"capture failed: {exc!r}"[:2000]) from None
        self.metrics.captures.labels(**labels, result="ok").inc()
        self._shot_since[name] = time.time()
        return out

    def _capture_cold(self, spec: A.PodSpec, dest: Path, include_source: bool) -> CaptureResult:
        """No CRIU: check the app starts and answers, then keep its spec and source as an
        appshot that cold-starts (signed like any other)."""
        inst = A.start(spec, self.host)
        try:
            sent = _pods.warm_up(inst, spec.warmup)
        finally:
            A.stop(inst, self.host)
        with _package.staging(dest) as stage:
            meta = _capture.RestoreMeta(spec=spec, pipes={})
            if include_source:
                meta.source_included = _capture.copy_source(spec.source_dir,
                                                            stage / _capture.SOURCE)
            _capture.package(spec, stage, meta, key=self.host.key(), kind="appshot")
            _package.publish(stage, dest)
        return CaptureResult(appshot=self._info(dest), cold_start_ms=inst.ready_ms,
                             warmup_requests=sent)

    # ------------------------------------------------------------------ instances
    def create(self, req: CreateInstance) -> InstanceRecord:
        if req.request_id:
            with self.lock:
                known = self.states.request(req.request_id)
                fut = self._pending.get(req.request_id)
                if known is None and fut is None:
                    fut = self._pending[req.request_id] = concurrent.futures.Future()
                    mine = True
                else:
                    mine = False
            if not mine:
                if fut is not None:
                    return fut.result(timeout=300)
                with self.lock:
                    rec = self.records.get(known or "")
                if rec is None:
                    raise ApiError(409, "request_done", f"request {req.request_id} made "
                                   f"instance {known}, which is gone")
                return rec
            try:
                rec = self._create(req)
            except BaseException as exc:
                with self.lock:
                    self._pending.pop(req.request_id, None)
                fut.set_exception(exc)
                fut.exception()  # mark retrieved
                raise
            self.states.remember_request(req.request_id, rec.id, time.time())
            with self.lock:
                self._pending.pop(req.request_id, None)
            fut.set_result(rec)
            return rec
        return self._create(req)

    def _create(self, req: CreateInstance) -> InstanceRecord:
        t0 = time.monotonic()
        if req.appshot is not None:
            path = self.appshot_path(req.appshot)
            info = self._info(path)
            rec = InstanceRecord(
                id=_pods.new_id(info.app), app=info.app, version=info.version,
                owner=req.owner if req.owner is not None else info.owner,
                vendor=req.vendor if req.vendor is not None else info.vendor,
                state="starting", created=_now(), appshot=info.name, restored_from=info.name)
            with self.lock:
                self._check_capacity(rec)
                self.records[rec.id] = rec
            try:
                with self._instance_lock(rec.id):
                    inst = self._launch(path, info, lazy=req.lazy, origin="appshot")
                    self._started(rec, inst, t0)
            except BaseException:
                with self.lock:
                    self.records.pop(rec.id, None)
                raise
            return rec
        rec = self._record(req.from_snapshot or "")
        with self._instance_lock(rec.id):
            if rec.state == "running":
                raise ApiError(409, "running", f"instance {rec.id} is running")
            if rec.state != "snapshotted":
                raise ApiError(409, "not_snapshotted", f"instance {rec.id} is {rec.state}, "
                               "not snapshotted")
            snap = self.snapshots_dir / rec.snapshot if rec.snapshot else None
            with self.lock:
                self._check_capacity(rec)
                rec.state = "starting"
            try:
                if snap is not None and self.restores:
                    inst = self._launch(snap, self._info(snap), lazy=req.lazy, origin="snapshot")
                    rec.restored_from = rec.snapshot
                else:
                    if not rec.appshot:
                        raise ApiError(409, "no_source", f"instance {rec.id} has neither a "
                                       "snapshot nor an appshot to start from")
                    path = self.appshot_path(rec.appshot)
                    inst = self._launch(path, self._info(path), lazy=False, origin="appshot")
                    rec.restored_from = rec.appshot
                self.meter.final(self._snapshot_target(rec), close=False)
                self._started(rec, inst, t0)
            except BaseException as exc:
                with self.lock:
                    rec.state = "snapshotted"
                    rec.error = str(exc)[:500]
                raise
        return rec

    def _check_capacity(self, rec: InstanceRecord) -> None:
        busy = sum(1 for r in self.records.values()
                   if r.state in ("running", "starting", "snapshotting", "stopping")
                   and r.id != rec.id)
        if busy >= self.cfg.slots:
            raise ApiError(503, "at_capacity", f"all {self.cfg.slots} instance slots of this "
                           "server are in use")

    def _launch(self, path: Path, info: AppshotInfo, *, lazy: bool, origin: str) -> A.Instance:
        labels = self.metrics.labels(info.app, info.version, info.owner)
        try:
            if self.restores and info.restorable:
                inst = A.restore(path, self.host, trust=self.host.trust(), lazy=lazy)
            else:
                inst = self._cold_start(path)
        except _package.IncompatibleCPU as exc:
            self.metrics.restores.labels(**labels, origin=origin, result="error").inc()
            raise ApiError(409, "incompatible_cpu", str(exc)) from None
        except _package.AppshotRejected as exc:
            self.metrics.restores.labels(**labels, origin=origin, result="error").inc()
            raise ApiError(422, "appshot_rejected", exc.reason) from None
        except NoFreeSlot as exc:
            raise ApiError(503, "at_capacity", str(exc)) from None
        except (_pods.PodError, A.NotRestorable, _restore.RestoreError, CriuError, OSError,
                _package.AppshotError) as exc:
            self.metrics.restores.labels(**labels, origin=origin, result="error").inc()
            raise ApiError(502, "start_failed", (str(exc) or repr(exc))[:2000]) from None
        return inst

    def _cold_start(self, path: Path) -> A.Instance:
        # signature and every checksum; no CPU check: a cold start runs no captured memory
        _package.verify(path, self.host.trust())
        meta = _restore.read_meta(path)
        _restore.ensure_source(path, meta)
        return A.start(meta.spec, self.host)

    def _started(self, rec: InstanceRecord, inst: A.Instance, t0: float) -> None:
        with self.lock:
            rec.attach(inst)
            rec.ready_ms = (time.monotonic() - t0) * 1000
            if not self.restores:
                rec.cold_reason = rec.cold_reason or self.cold_reason
            self.pods[rec.id] = inst
        self._save(rec)
        origin = inst.origin
        self.metrics.restores.labels(**self.metrics.labels(rec.app, rec.version, rec.owner),
                                     origin=origin, result="ok").inc()
        self.metrics.restore_latency.labels(
            **self.metrics.labels(rec.app, rec.version, rec.owner),
            origin=origin).observe(rec.ready_ms / 1000)

    def snapshot(self, instance_id: str) -> InstanceRecord:
        rec = self._record(instance_id)
        labels = self.metrics.labels(rec.app, rec.version, rec.owner)
        with self._instance_lock(rec.id):
            if rec.state == "snapshotted":
                raise ApiError(409, "already_snapshotted", f"instance {rec.id} is snapshotted")
            if rec.state != "running":
                raise ApiError(409, "not_running", f"instance {rec.id} is {rec.state}")
            inst = self.pods[rec.id]
            if self.restores and inst.namespaces:
                self._check_dumpable(inst)
            with self.lock:
                rec.state = "snapshotting"
            self._save(rec)
            self.meter.final(self._pod_target(rec, inst))
            old = rec.snapshot
            try:
                if self.restores and inst.namespaces:
                    dest = self.snapshots_dir / f"{rec.id}-{int(time.time() * 1000)}"
                    A.snapshot(inst, self.host, dest)
                    rec.snapshot = dest.name
                    rec.snapshot_bytes = self._info(dest).size_bytes
                    rec.state_kept = True
                else:
                    A.stop(inst, self.host)
                    rec.snapshot = None
                    rec.snapshot_bytes = 0
                    rec.state_kept = False
            except Exception as exc:
                self.metrics.snapshots.labels(**labels, result="error").inc()
                with self.lock:
                    self.pods.pop(rec.id, None)
                    rec.detach()
                    rec.state = "failed"
                    rec.error = f"snapshot failed, the instance was stopped: {exc}"[:2000]
                if _pods.pid_alive(inst.pid):
                    A.stop(inst, self.host)
                self._save(rec)
                raise ApiError(502, "snapshot_failed", rec.error) from None
            with self.lock:
                self.pods.pop(rec.id, None)
                rec.detach()
                rec.state = "snapshotted"
                rec.snapshot_at = _now()
                rec.error = None
            self._save(rec)
            if old and old != rec.snapshot:
                self._remove_snapshot(old)
            self.metrics.snapshots.labels(**labels, result="ok").inc()
        return rec

    def _check_dumpable(self, inst: A.Instance, wait_s: float = 2.0) -> None:
        """Refuse (409) before dumping what cannot be restored, leaving the instance
        running (the edge drains an instance before asking for its snapshot)."""
        deadline = time.monotonic() + wait_s
        while (found := _capture.problems(inst)) and time.monotonic() < deadline:
            if not all("TCP connection" in f for f in found):
                break
            time.sleep(0.02)
        if found:
            raise ApiError(409, "not_restorable", "cannot snapshot now: " + "; ".join(found),
                           detail=found)

    def _latest_snapshot(self, instance_id: str) -> str | None:
        """The newest complete snapshot of an instance (``<id>-<ms>``), if any."""
        best: tuple[int, str] | None = None
        for d in self.snapshots_dir.glob(f"{instance_id}-*"):
            ms = d.name[len(instance_id) + 1:]
            if ms.isdigit() and (d / _package.SIGNATURE_NAME).is_file():
                best = max(best or (0, ""), (int(ms), d.name))
        return best[1] if best else None

    def _remove_snapshot(self, name: str) -> None:
        path = self.snapshots_dir / name
        self._shots.pop(str(path), None)
        shutil.rmtree(path, ignore_errors=True)

    def stop(self, instance_id: str) -> InstanceRecord:
        rec = self._record(instance_id)
        with self._instance_lock(rec.id):
            if rec.state == "running":
                inst = self.pods[rec.id]
                with self.lock:
                    rec.state = "stopping"
                self.meter.final(self._pod_target(rec, inst))
                A.stop(inst, self.host)
            elif rec.state == "snapshotted" and rec.snapshot:
                self.meter.final(self._snapshot_target(rec))
            if rec.snapshot:
                self._remove_snapshot(rec.snapshot)
            with self.lock:
                self.pods.pop(rec.id, None)
                rec.detach()
                rec.state = "stopped"
                rec.snapshot = None
                self.records.pop(rec.id, None)
                self._locks.pop(rec.id, None)
            self.meter.forget(rec.id)
            self.states.delete(rec.id)
        return rec

    def get(self, instance_id: str) -> InstanceRecord:
        return self._record(instance_id)

    def list_instances(self, state: str | None = None, app: str | None = None
                       ) -> list[InstanceRecord]:
        with self.lock:
            recs = list(self.records.values())
        return sorted((r for r in recs if (state is None or r.state == state)
                       and (app is None or r.app == app)), key=lambda r: r.created)

    # ------------------------------------------------------------------ monitoring
    def monitor_once(self) -> None:
        """Probe running instances' health; free the ones whose pod died."""
        with self.lock:
            running = [(r, self.pods.get(r.id)) for r in self.records.values()
                       if r.state == "running"]
        for rec, inst in running:
            if inst is None:
                continue
            with self.lock:
                lk = self._locks.setdefault(rec.id, threading.Lock())
            if not lk.acquire(blocking=False):
                continue  # an operation is under way: it knows better
            try:
                if rec.state != "running":
                    continue
                if not _pods.pid_alive(inst.pid):
                    self._died(rec, inst, "the pod exited")
                    continue
                ok = _pods.check_health(inst, inst.spec.entry, inst.port)
                rec.health = "healthy" if ok else "unhealthy"
            finally:
                lk.release()

    def _died(self, rec: InstanceRecord, inst: A.Instance, why: str) -> None:
        log.warning("instance %s: %s", rec.id, why)
        self.meter.final(self._pod_target(rec, inst))
        _pods.release(inst, self.pool)
        with self.lock:
            self.pods.pop(rec.id, None)
            rec.detach()
            rec.state = "failed"
            rec.error = why
        self._save(rec)

    # ------------------------------------------------------------------ capacity
    def capacity(self) -> Capacity:
        cfg = self.cfg
        cpu_total = float(cfg.cpus or os.cpu_count() or 1)
        vm = psutil.virtual_memory()
        mem_total = float(cfg.memory_mb * 1024 * 1024 if cfg.memory_mb else vm.total)
        cpu_used = mem_used = 0.0
        with self.lock:
            active = [(r, self.pods.get(r.id)) for r in self.records.values()
                      if r.state in ("running", "starting", "snapshotting", "stopping")]
        for _rec, inst in active:
            if inst is None:
                continue
            spec = inst.spec
            cpu_used += float(spec.cpu or 0)
            if spec.memory_mb:
                mem_used += spec.memory_mb * 1024 * 1024
            elif inst.cgroup:
                mem_used += float(PodCgroup(inst.cgroup).memory_bytes() or 0)
        slots_used = float(len(active))
        busy = psutil.cpu_percent(interval=None) / 100 * (os.cpu_count() or 1)
        return Capacity(
            edgepoint=cfg.edgepoint, server=cfg.server,
            cpu=Amount(total=cpu_total, used=cpu_used, free=max(0.0, cpu_total - cpu_used)),
            memory=Amount(total=mem_total, used=mem_used, free=max(0.0, mem_total - mem_used)),
            slots=Amount(total=cfg.slots, used=slots_used, free=max(0.0, cfg.slots - slots_used)),
            cpu_busy=round(busy, 3), memory_available=vm.available, restores=self.restores)

    # ------------------------------------------------------------------ metrics views
    def _instance_views(self) -> list[InstanceView]:
        with self.lock:
            return [InstanceView(r.app, r.version, r.owner, r.state)
                    for r in self.records.values()]

    def _stored_views(self) -> list[StoredView]:
        return [StoredView(i.app, i.version, i.owner, i.kind, i.size_bytes)
                for i in [*self.list_appshots(), *self.list_snapshots()]]

    def _slot_usage(self) -> tuple[int, int]:
        with self.lock:
            used = sum(1 for r in self.records.values()
                       if r.state in ("running", "starting", "snapshotting", "stopping"))
        return used, self.cfg.slots


def _write_json(path: Path, obj: object) -> None:
    from ._sys import write_json
    write_json(path, obj)


def default_server_name() -> str:
    return socket.gethostname().split(".")[0] or "server"
