"""Usage records: what each instance consumed, as deltas, written durably before served.

Each interval the meter reads every running pod's cumulative counters (CPU
seconds from its cgroup, v2 ``cpu.stat`` or v1 ``cpuacct.usage``; memory from
the cgroup; disk read/write bytes per process from /proc/<pid>/io through
psutil; without a cgroup CPU and memory come from psutil too) and turns them
into deltas against the counters it last *committed* for that pod. The records
and the new counters are written in one SQLite transaction (WAL,
``synchronous=FULL``): a crash either keeps both or neither, so after a restart
the next delta starts exactly where the last record ended, with no gap and no
double count.

Counters reset on restore: a restored pod has a new cgroup and new processes.
Counters are keyed by the pod (its cgroup) and, per process, by (pid, start
time), so a changed pod or a recycled pid starts from zero instead of producing
a negative or doubled delta; a counter that goes backwards is taken as reset.
Storage (appshots and snapshots kept here) is billed as GB-hours to their app.

``seq`` increases by one per record of this agent (``source``), never reused.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from ._cgroups import PodCgroup
from .models import GB, UsageRecord

log = logging.getLogger("edgeshot.agent.usage")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
  seq INTEGER PRIMARY KEY,
  instance TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL,
  owner TEXT NOT NULL, vendor TEXT NOT NULL, edgepoint TEXT NOT NULL,
  start REAL NOT NULL, "end" REAL NOT NULL,
  cpu_seconds REAL NOT NULL, memory_gb_seconds REAL NOT NULL,
  disk_read_bytes INTEGER NOT NULL, disk_write_bytes INTEGER NOT NULL,
  storage_gb_hours REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_end ON usage("end");
CREATE TABLE IF NOT EXISTS meter_state (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""
_COLS = ("seq", "instance", "app", "version", "owner", "vendor", "edgepoint", "start", "end",
         "cpu_seconds", "memory_gb_seconds", "disk_read_bytes", "disk_write_bytes",
         "storage_gb_hours")
_SELECT = ",".join(f'"{c}"' for c in _COLS)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the agent's database: WAL, full fsync at commit, busy timeout."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


# ---------------------------------------------------------------- pure part


@dataclass(frozen=True)
class Reading:
    """Cumulative counters of one pod at one moment.

    ``cpu_s`` is the cgroup's counter (None without a cgroup: then per-process CPU in
    ``procs`` counts). ``procs`` maps "pid:start_time" to (cpu_s, read_bytes, write_bytes).
    """

    memory: int = 0
    cpu_s: float | None = None
    procs: dict[str, tuple[float, int, int]] = field(default_factory=dict)


@dataclass
class MeterState:
    """What the meter last committed for one target."""

    end: float  # epoch seconds: where the next record starts
    pod: str | None = None
    cpu_s: float = 0.0
    procs: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    closed: bool = False  # a final record was written for ``pod``

    def to_json(self) -> str:
        return json.dumps({"end": self.end, "pod": self.pod, "cpu_s": self.cpu_s,
                           "procs": self.procs, "closed": self.closed})

    @classmethod
    def from_json(cls, text: str) -> MeterState:
        d = json.loads(text)
        return cls(end=d["end"], pod=d.get("pod"), cpu_s=d.get("cpu_s", 0.0),
                   procs={k: tuple(v) for k, v in d.get("procs", {}).items()},
                   closed=d.get("closed", False))


@dataclass(frozen=True)
class Delta:
    cpu_seconds: float = 0.0
    memory_gb_seconds: float = 0.0
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    storage_gb_hours: float = 0.0


def pod_delta(prev: MeterState, pod: str, reading: Reading, now: float, since: float
              ) -> tuple[float, Delta, MeterState]:
    """The consumption of ``pod`` since ``prev``: (record start, delta, state to commit).

    Never negative, never doubled: counters of another pod (a restore) or of a process
    not seen before start from zero; a counter below its last value counts as reset. A
    new pod's record starts when the pod did (``since``), not when the last record of
    the instance ended (it was snapshotted in between).
    """
    same = prev.pod == pod  # the same pod's counters continue, closed or not
    start = prev.end if same else max(prev.end, since)
    last_cpu = prev.cpu_s if same else 0.0
    last_procs = prev.procs if same else {}
    read = write = 0
    proc_cpu = 0.0
    for key, (c, r, w) in reading.procs.items():
        lc, lr, lw = last_procs.get(key, (0.0, 0, 0))
        proc_cpu += c - lc if c >= lc else c
        read += r - lr if r >= lr else r
        write += w - lw if w >= lw else w
    if reading.cpu_s is not None:
        cur_cpu = reading.cpu_s
        cpu = cur_cpu - last_cpu if cur_cpu >= last_cpu else cur_cpu
    else:
        cur_cpu = 0.0
        cpu = proc_cpu
    end = max(now, start)
    delta = Delta(cpu_seconds=max(0.0, cpu), memory_gb_seconds=reading.memory / GB * (end - start),
                  disk_read_bytes=max(0, read), disk_write_bytes=max(0, write))
    return start, delta, MeterState(end=end, pod=pod, cpu_s=cur_cpu, procs=dict(reading.procs))


def storage_delta(prev: MeterState, size_bytes: int, now: float, since: float
                  ) -> tuple[float, Delta, MeterState]:
    """Stored bytes over the time since the last record (or since they were stored)."""
    start = prev.end if prev.pod is None else max(prev.end, since)
    end = max(now, start)
    return start, Delta(storage_gb_hours=size_bytes / GB * (end - start) / 3600), \
        MeterState(end=end)


# ---------------------------------------------------------------- reading counters


class CounterReader:
    """Reads pods' cumulative counters, cheaply: metering 200 pods every second must cost
    a few percent of a core. Cgroup file paths are resolved once per cgroup; /proc/<pid>/io
    is read directly; a process's start time (its identity beside the pid) comes from
    psutil once, when the pid is first seen, and again only if its counters go back."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, str, str, str] | None] = {}
        self._start: dict[int, float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self.seen: set[int] = set()  # pids read since the last prune

    def _cg(self, name: str) -> tuple[str, str, str, str] | None:
        """(mode, cpu file, memory file, procs file) of a pod cgroup."""
        if name not in self._files:
            cg = PodCgroup(name)
            if cg.mode == "v2":
                d = str(cg.dirs[0])
                self._files[name] = ("v2", f"{d}/cpu.stat", f"{d}/memory.current",
                                     f"{d}/cgroup.procs")
            elif cg.mode == "v1":
                acct = cg.dirs[1] if len(cg.dirs) == 3 else cg.dirs[0]
                mem = str(cg.dirs[-1])
                self._files[name] = ("v1", f"{acct}/cpuacct.usage",
                                     f"{mem}/memory.usage_in_bytes", f"{mem}/cgroup.procs")
            else:
                self._files[name] = None
        return self._files[name]

    def forget(self, cgroup: str | None) -> None:
        if cgroup:
            self._files.pop(cgroup, None)

    def _start_time(self, pid: int, *, fresh: bool = False) -> float | None:
        if fresh or pid not in self._start:
            try:
                self._start[pid] = psutil.Process(pid).create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._start.pop(pid, None)
                return None
        return self._start[pid]

    def read(self, cgroup: str | None, pids: Callable[[], list[int]] | None,
             last: dict[str, tuple[float, int, int]] | None = None) -> Reading | None:
        """None when the pod's counters are gone (cgroup removed, no process left).
        ``last``: the previous reading's per-process counters (to spot a recycled pid)."""
        cg_cpu: float | None = None
        memory = 0
        plist: list[int] = []
        files = self._cg(cgroup) if cgroup else None
        if files is not None:
            mode, cpu_f, mem_f, procs_f = files
            raw_cpu, raw_mem, raw_procs = _read(cpu_f), _read(mem_f), _read(procs_f)
            if raw_cpu is None and raw_mem is None:
                return None
            if raw_cpu is not None:
                if mode == "v1":
                    cg_cpu = int(raw_cpu) / 1e9
                else:
                    for line in raw_cpu.splitlines():
                        if line.startswith(b"usage_usec"):
                            cg_cpu = int(line.split()[1]) / 1e6
                            break
            memory = int(raw_mem) if raw_mem else 0
            plist = [int(x) for x in raw_procs.split()] if raw_procs else []
        elif cgroup is None and pids is not None:
            plist = pids()
            if not plist:
                return None
        procs: dict[str, tuple[float, int, int]] = {}
        rss = 0
        self.seen.update(plist)
        for pid in plist:
            start = self._start_time(pid)
            if start is None:
                continue
            io = _proc_io(pid)
            if io is None:
                continue
            cpu = 0.0
            if cg_cpu is None and files is None:
                try:
                    p = self._procs.get(pid)
                    if p is None:
                        p = self._procs[pid] = psutil.Process(pid)
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    self._procs.pop(pid, None)
                    continue
            key = f"{pid}:{start:.2f}"
            prev = last.get(key) if last else None
            if prev is not None and (io[0] < prev[1] or io[1] < prev[2]):
                # counters went back: a recycled pid? ask its start time again
                start = self._start_time(pid, fresh=True) or start
                key = f"{pid}:{start:.2f}"
            procs[key] = (cpu, io[0], io[1])
        if cg_cpu is None and files is None:
            memory = rss
        return Reading(memory=memory, cpu_s=cg_cpu, procs=procs)

    def prune(self) -> None:
        """Forget processes not read since the last prune."""
        for d in (self._start, self._procs):
            for pid in [p for p in d if p not in self.seen]:
                del d[pid]
        self.seen = set()


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def _proc_io(pid: int) -> tuple[int, int] | None:
    """(read_bytes, write_bytes) of a process: what it made the block layer read/write."""
    raw = _read(f"/proc/{pid}/io")
    if raw is None:
        return None
    r = w = 0
    for line in raw.splitlines():
        if line.startswith(b"read_bytes:"):
            r = int(line[11:])
        elif line.startswith(b"write_bytes:"):
            w = int(line[12:])
    return r, w


# ---------------------------------------------------------------- the meter


@dataclass
class Target:
    """Something that consumes: a running pod, or stored bytes (snapshot, appshot)."""

    key: str  # instance id, or "appshot/<name>"
    app: str
    version: str
    owner: str
    vendor: str
    since: float  # epoch: when this pod started, or these bytes were stored
    interval: float
    pod: str | None = None  # running pod id: its counters
    cgroup: str | None = None
    pids: Callable[[], list[int]] | None = None  # processes, when there is no cgroup
    storage_bytes: int = 0


class Meter:
    """Turns targets into usage records, durably. Thread-safe (one lock for everything)."""

    def __init__(self, db_path: Path, *, source: str, edgepoint: str,
                 retention_s: float = 35 * 86400,
                 on_records: Callable[[int], None] | None = None) -> None:
        self.db_path = Path(db_path)
        self.source = source
        self.edgepoint = edgepoint
        self.retention_s = retention_s
        self.lock = threading.RLock()
        self.db = connect(self.db_path)
        self.db.executescript(SCHEMA)
        self._check_source()
        self.reader = CounterReader()
        self._states: dict[str, MeterState] = {
            k: MeterState.from_json(v) for k, v in self.db.execute(
                "SELECT key, data FROM meter_state")}
        self._read_lock = threading.Lock()
        self._rdb = connect(self.db_path)
        self._pruned = 0.0
        self._reader_pruned = time.time()
        self.on_records = on_records
        self.tick_seconds = 0.0  # CPU time of the last tick (for the metrics/bench)

    def _check_source(self) -> None:
        row = self.db.execute("SELECT v FROM meta WHERE k='source'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('source', ?)", (self.source,))
        elif row[0] != self.source:
            raise RuntimeError(f"usage database {self.db_path} belongs to source {row[0]!r}, "
                               f"not {self.source!r}: seq numbers continue per source, so "
                               "keep the agent's name or give it a new state dir")

    def close(self) -> None:
        with self.lock:
            self.db.close()
        with self._read_lock:
            self._rdb.close()

    # -- writing ----------------------------------------------------------------
    def state(self, key: str) -> MeterState | None:
        return self._states.get(key)

    def _measure(self, t: Target, now: float) -> tuple[float, Delta, MeterState] | None:
        prev = self._states.get(t.key) or MeterState(end=t.since)
        if t.pod is not None:
            reading = self.reader.read(t.cgroup, t.pids, prev.procs if prev.pod == t.pod
                                       else None)
            if reading is None:
                return None
            return pod_delta(prev, t.pod, reading, now, t.since)
        return storage_delta(prev, t.storage_bytes, now, t.since)

    def tick(self, targets: Callable[[], list[Target]] | list[Target], *,
             now: float | None = None, force: bool = False) -> int:
        """One metering pass over the targets whose interval has elapsed (all with
        ``force``); returns how many records were committed."""
        t0 = time.thread_time()
        with self.lock:
            ts = targets() if callable(targets) else targets
            now = time.time() if now is None else now
            due = []
            for t in ts:
                prev = self._states.get(t.key)
                if prev is None:
                    began = t.since
                elif prev.pod == t.pod:
                    began = prev.end
                else:
                    began = max(prev.end, t.since)
                # ticks come every usage interval, give or take scheduling jitter
                if force or now - began >= t.interval * 0.8:
                    m = self._measure(t, now)
                    if m is not None:
                        due.append((t, *m))
            n = self._commit(due)
            if now - self._pruned > 3600:
                self._prune(now)
            if now - self._reader_pruned > 60:
                self._reader_pruned = now
                self.reader.prune()
        self.tick_seconds = time.thread_time() - t0
        return n

    def final(self, t: Target, *, now: float | None = None, close: bool = True) -> int:
        """The last record of a pod before it goes away (snapshot, stop, death): its
        counters up to now. Later readings of this pod are ignored."""
        with self.lock:
            m = self._measure(t, time.time() if now is None else now)
            if m is None:
                if close and (st := self._states.get(t.key)) is not None and st.pod == t.pod:
                    st.closed = True
                    self._save_states([(t.key, st)])
                return 0
            start, delta, st = m
            st.closed = close and t.pod is not None
            self.reader.forget(t.cgroup)
            return self._commit([(t, start, delta, st)])

    def forget(self, key: str, *, now: float | None = None) -> None:
        """Stop metering ``key`` (its last record was written)."""
        with self.lock:
            self._states.pop(key, None)
            self.db.execute("DELETE FROM meter_state WHERE key=?", (key,))

    def _commit(self, due: list[tuple[Target, float, Delta, MeterState]]) -> int:
        if not due:
            return 0
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM usage").fetchone()[0]
            rows = []
            for t, start, d, st in due:
                seq += 1
                rows.append((seq, t.key, t.app, t.version, t.owner, t.vendor, self.edgepoint,
                             start, st.end, d.cpu_seconds, d.memory_gb_seconds,
                             d.disk_read_bytes, d.disk_write_bytes, d.storage_gb_hours))
            db.executemany(f"INSERT INTO usage VALUES ({','.join('?' * len(_COLS))})", rows)
            db.executemany("INSERT OR REPLACE INTO meter_state VALUES (?, ?)",
                           [(t.key, st.to_json()) for t, _, _, st in due])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for t, _, _, st in due:
            self._states[t.key] = st
        if self.on_records:
            self.on_records(len(rows))
        return len(rows)

    def _save_states(self, items: list[tuple[str, MeterState]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meter_state VALUES (?, ?)",
                            [(k, st.to_json()) for k, st in items])

    def _prune(self, now: float) -> None:
        self._pruned = now
        cut = now - self.retention_s
        # keep the newest record whatever its age: MAX(seq) must survive for seq to go on
        self.db.execute('DELETE FROM usage WHERE "end" < ? AND seq < '
                        "(SELECT MAX(seq) FROM usage)", (cut,))

    # -- serving ----------------------------------------------------------------
    def page(self, after: int, limit: int) -> tuple[list[UsageRecord], int]:
        """Committed records with seq > after (at most ``limit``), and the head seq."""
        with self._read_lock:
            db = self._rdb
            db.execute("BEGIN")
            try:
                rows = db.execute(f"SELECT {_SELECT}"
                                  " FROM usage WHERE seq > ? ORDER BY seq LIMIT ?",
                                  (after, limit)).fetchall()
                head = db.execute("SELECT COALESCE(MAX(seq), 0) FROM usage").fetchone()[0]
            finally:
                db.execute("COMMIT")
        out = []
        for r in rows:
            d = dict(zip(_COLS, r, strict=True))
            d["start"] = datetime.fromtimestamp(d["start"], UTC)
            d["end"] = datetime.fromtimestamp(d["end"], UTC)
            out.append(UsageRecord(source=self.source, **d))
        return out, head
