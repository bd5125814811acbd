"""The agent's instance records on disk, and adoption after an agent restart.

Records live in SQLite (``<state>/agent-state.db``, WAL). ``synchronous=NORMAL``
is enough here: it survives the agent process dying at any point (the case
adoption is for); a power loss takes the pods down with the records anyway.

Adoption: a new agent process reads the records and checks each against the
live system before taking it back: the pod's init still runs, is the same
process (start time, so a recycled pid is not mistaken for it), sits in its
slot's network namespace and in its cgroup. A pod that died while no agent
watched is not adopted: what is left of it (cgroup, slot, pod dir) is freed and
its record says why. Pods the library started without an agent record (e.g.
``edgeshot appshot restore`` on the same state dir) are adopted under their pod
id when they pass the same checks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

from . import _pods
from ._cgroups import PodCgroup
from ._models import Instance
from .models import Health, InstanceInfo, InstanceState, Origin

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, instance TEXT NOT NULL,
                                     created REAL NOT NULL);
"""


class InstanceRecord(BaseModel):
    """What the agent knows of one instance beyond the library's pod record."""

    model_config = ConfigDict(validate_assignment=False)
    id: str
    app: str
    version: str
    owner: str
    vendor: str
    state: InstanceState
    created: datetime
    health: Health = "unknown"
    origin: Origin | None = None
    appshot: str | None = None
    restored_from: str | None = None
    pod: str | None = None  # the library's pod id while running
    pod_pid: int | None = None
    pod_ctime: float | None = None  # start time of the pod init (pid reuse check)
    cgroup: str | None = None
    slot: str | None = None
    address: str | None = None
    started: datetime | None = None  # when the current pod began
    lazy: bool = False
    snapshot: str | None = None
    snapshot_bytes: int = 0
    snapshot_at: datetime | None = None
    state_kept: bool = True
    cold_reason: str | None = None
    ready_ms: float | None = None
    restore_ms: float | None = None
    error: str | None = None

    def info(self, now: datetime | None = None) -> InstanceInfo:
        now = now or datetime.now(UTC)
        running = self.state == "running"
        return InstanceInfo(
            id=self.id, app=self.app, version=self.version, owner=self.owner,
            vendor=self.vendor, state=self.state, health=self.health if running else "unknown",
            address=self.address if running else None, netns=self.slot if running else None,
            created=self.created, age_s=max(0.0, (now - self.created).total_seconds()),
            origin=self.origin, restored_from=self.restored_from, appshot=self.appshot,
            snapshot=self.snapshot, state_kept=self.state_kept, cold_reason=self.cold_reason,
            ready_ms=self.ready_ms, restore_ms=self.restore_ms, error=self.error, pod=self.pod)

    def attach(self, inst: Instance) -> None:
        """Point the record at a (new) running pod."""
        self.pod = inst.id
        self.pod_pid = inst.pid
        self.pod_ctime = process_start(inst.pid)
        self.cgroup = inst.cgroup
        self.slot = inst.slot
        self.address = f"{inst.address}:{inst.port}"
        self.started = inst.started
        self.origin = inst.origin
        self.lazy = inst.lazy
        self.cold_reason = inst.cold_reason
        self.restore_ms = inst.restore_ms
        self.state = "running"
        self.health = "healthy"
        self.error = None

    def detach(self) -> None:
        self.pod = self.pod_pid = self.pod_ctime = self.cgroup = self.slot = None
        self.address = None
        self.started = None
        self.health = "unknown"


def process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class StateStore:
    """Instance records and create-request ids, in SQLite. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def load(self) -> list[InstanceRecord]:
        with self.lock:
            rows = self.db.execute("SELECT data FROM instances").fetchall()
        return [InstanceRecord.model_validate_json(r[0]) for r in rows]

    def save(self, rec: InstanceRecord) -> None:
        data = rec.model_dump_json()
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?)", (rec.id, data))

    def delete(self, instance_id: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM instances WHERE id=?", (instance_id,))
            self.db.execute("DELETE FROM requests WHERE instance=?", (instance_id,))

    def request(self, request_id: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT instance FROM requests WHERE request_id=?",
                                  (request_id,)).fetchone()
        return row[0] if row else None

    def remember_request(self, request_id: str, instance_id: str, now: float) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?)",
                            (request_id, instance_id, now))
            self.db.execute("DELETE FROM requests WHERE created < ?", (now - 86400,))


# ---------------------------------------------------------------- adoption


def pod_problem(inst: Instance, expected_start: float | None) -> str | None:
    """Why ``inst`` is not a live pod we may take back (None: it is)."""
    if not _pods.pid_alive(inst.pid):
        return f"pod init {inst.pid} is gone"
    start = process_start(inst.pid)
    if start is None:
        return f"pod init {inst.pid} cannot be inspected"
    if expected_start is not None and abs(start - expected_start) > 1.0:
        return f"pid {inst.pid} now belongs to another process (started {start:.0f}, " \
               f"the pod started {expected_start:.0f})"
    if inst.slot:
        try:
            if os.stat(f"/proc/{inst.pid}/ns/net").st_ino != \
                    os.stat(f"/run/netns/{inst.slot}").st_ino:
                return f"pid {inst.pid} is not in slot {inst.slot}'s network namespace"
        except FileNotFoundError:
            return f"slot {inst.slot} or pid {inst.pid} vanished"
    if inst.cgroup and inst.pid not in PodCgroup(inst.cgroup).pids():
        return f"pid {inst.pid} is not in cgroup {inst.cgroup}"
    return None


@dataclass
class Adoption:
    adopted: list[tuple[InstanceRecord, Instance]] = field(default_factory=list)
    dead: list[tuple[InstanceRecord, Instance | None, str]] = field(default_factory=list)
    kept: list[InstanceRecord] = field(default_factory=list)  # snapshotted, failed


def reconcile(records: list[InstanceRecord], state_dir: Path) -> Adoption:
    """Match the agent's records with the library's pod records and the live system.

    Pure inspection: nothing is killed or freed here (the caller writes the final usage
    of dead pods first, then frees them).
    """
    out = Adoption()
    pods = {i.id: i for i in _pods.list_instances(state_dir)}
    claimed: set[str] = set()
    for rec in records:
        if rec.state in ("snapshotted", "failed", "stopped"):
            out.kept.append(rec)
            if rec.pod:
                claimed.add(rec.pod)
            continue
        inst = pods.get(rec.pod) if rec.pod else None
        if inst is None:
            out.dead.append((rec, None, "no pod record (the agent stopped before it started)"))
            continue
        claimed.add(inst.id)
        why = pod_problem(inst, rec.pod_ctime)
        if why is None:
            out.adopted.append((rec, inst))
        else:
            out.dead.append((rec, inst, why))
    for pid, inst in pods.items():
        if pid in claimed:
            continue
        rec = InstanceRecord(
            id=inst.id, app=inst.app, version=inst.version, owner=inst.owner,
            vendor=inst.vendor, state="running", created=inst.started, origin=inst.origin)
        why = pod_problem(inst, None)
        if why is None:
            rec.attach(inst)
            out.adopted.append((rec, inst))
        else:
            out.dead.append((rec, inst, why))
    return out


def describe(a: Adoption) -> str:
    return json.dumps({"adopted": [r.id for r, _ in a.adopted],
                       "dead": {r.id: why for r, _, why in a.dead}})
