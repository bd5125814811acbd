"""Usage deltas (pure, table-driven) and the meter's durable records (SQLite)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edgeshot.agent._usage import Meter, MeterState, Reading, Target, pod_delta, storage_delta
from edgeshot.agent.models import GB

P1, P2 = "1:100.00", "2:100.00"


@pytest.mark.parametrize("case,prev,pod,reading,now,since,want_start,want", [
    ("first reading of a new pod counts from zero",
     MeterState(end=0.0), "a", Reading(memory=GB, cpu_s=2.0, procs={P1: (0, 10, 20)}),
     10.0, 5.0, 5.0, (2.0, 5.0, 10, 20)),
    ("the same pod continues from its last counters",
     MeterState(end=10.0, pod="a", cpu_s=2.0, procs={P1: (0, 10, 20)}), "a",
     Reading(memory=GB, cpu_s=2.5, procs={P1: (0, 15, 20)}), 12.0, 5.0, 10.0,
     (0.5, 2.0, 5, 0)),
    ("a counter that went back is taken as reset, never negative",
     MeterState(end=10.0, pod="a", cpu_s=2.0, procs={P1: (0, 10, 20)}), "a",
     Reading(memory=0, cpu_s=0.25, procs={P1: (0, 3, 4)}), 11.0, 5.0, 10.0,
     (0.25, 0.0, 3, 4)),
    ("a restored pod starts from zero and from its own start, not the snapshot's",
     MeterState(end=10.0, pod="a", cpu_s=9.0, procs={P1: (0, 100, 100)}), "b",
     Reading(memory=GB, cpu_s=0.1, procs={P1: (0, 1, 1)}), 30.0, 28.0, 28.0,
     (0.1, 2.0, 1, 1)),
    ("a new process counts all it did; a gone one counts nothing more",
     MeterState(end=10.0, pod="a", cpu_s=1.0, procs={P1: (0, 10, 10)}), "a",
     Reading(memory=0, cpu_s=1.0, procs={P2: (0, 7, 8)}), 11.0, 0.0, 10.0,
     (0.0, 0.0, 7, 8)),
    ("a recycled pid (other start time) is another process",
     MeterState(end=10.0, pod="a", cpu_s=1.0, procs={"1:100.00": (0, 50, 50)}), "a",
     Reading(memory=0, cpu_s=1.0, procs={"1:200.00": (0, 5, 5)}), 11.0, 0.0, 10.0,
     (0.0, 0.0, 5, 5)),
    ("without a cgroup, CPU is the sum over processes",
     MeterState(end=10.0, pod="a", cpu_s=0.0, procs={P1: (1.0, 0, 0)}), "a",
     Reading(memory=0, cpu_s=None, procs={P1: (1.5, 0, 0), P2: (0.25, 0, 0)}), 11.0, 0.0,
     10.0, (0.75, 0.0, 0, 0)),
])
def test_pod_delta(case, prev, pod, reading, now, since, want_start, want):
    start, d, st = pod_delta(prev, pod, reading, now, since)
    got = (round(d.cpu_seconds, 9), round(d.memory_gb_seconds, 9), d.disk_read_bytes,
           d.disk_write_bytes)
    assert (start, got) == (want_start, want), case
    assert st.pod == pod and st.end == now and st.procs == reading.procs


def test_storage_delta_is_gb_hours_since_the_last_record_or_since_stored():
    start, d, st = storage_delta(MeterState(end=100.0), 2 * GB, 100.0 + 1800, 0.0)
    assert (start, d.storage_gb_hours, st.end) == (100.0, 1.0, 1900.0)
    start, d, _ = storage_delta(MeterState(end=100.0, pod="a"), GB, 4000.0, 400.0)
    assert (start, d.storage_gb_hours) == (400.0, 1.0)  # after a pod: from the snapshot


def _target(key: str = "i1", **kw) -> Target:
    base = dict(key=key, app="hello", version="1", owner="o", vendor="v", since=1000.0,
                interval=1.0)
    base.update(kw)
    return Target(**base)


def test_meter_seq_and_continuity_survive_a_restart(tmp_path: Path):
    db = tmp_path / "usage.db"
    m = Meter(db, source="agent:ep:s", edgepoint="ep")
    me = _target(pod="p1", pids=lambda: [os.getpid()])
    shot = _target("appshot/x", storage_bytes=GB, interval=10.0)
    assert m.tick([me, shot], now=1000.5) == 0  # nothing due yet
    assert m.tick([me, shot], now=1001.0) == 1
    assert m.tick([me, shot], now=1002.0) == 1
    assert m.tick([me, shot], now=1010.0) == 2
    m.close()
    m = Meter(db, source="agent:ep:s", edgepoint="ep")  # a new agent process
    assert m.tick([me], now=1011.0) == 1
    assert m.final(me, now=1011.5) == 1
    recs, head = m.page(0, 100)
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5, 6] and head == 6
    mine = [r for r in recs if r.instance == "i1"]
    assert all(b.start == a.end for a, b in zip(mine, mine[1:], strict=False))
    assert mine[0].start.timestamp() == 1000.0 and mine[-1].end.timestamp() == 1011.5
    assert all(r.cpu_seconds >= 0 and r.disk_read_bytes >= 0 for r in recs)
    st = [r for r in recs if r.instance == "appshot/x"]
    assert len(st) == 1 and st[0].storage_gb_hours == pytest.approx(10 / 3600)
    assert m.page(3, 2)[0][0].seq == 4
    m.close()


def test_a_failed_commit_loses_and_doubles_nothing(tmp_path: Path, monkeypatch):
    m = Meter(tmp_path / "u.db", source="s", edgepoint="ep")
    t = _target(storage_bytes=GB, interval=1.0)
    m.tick([t], now=1001.0)
    real = m.db

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        def executemany(self, sql, rows):
            if "meter_state" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return real.executemany(sql, rows)

    m.db = Failing()
    with pytest.raises(sqlite3.OperationalError):
        m.tick([t], now=1002.0)
    m.db = real
    assert m.tick([t], now=1003.0) == 1
    recs, _ = m.page(0, 10)
    assert [r.seq for r in recs] == [1, 2]  # the failed record was rolled back
    assert recs[1].start == recs[0].end and recs[1].storage_gb_hours == pytest.approx(2 / 3600)


def test_a_usage_database_belongs_to_one_source(tmp_path: Path):
    Meter(tmp_path / "u.db", source="agent:a", edgepoint="ep").close()
    with pytest.raises(RuntimeError, match="belongs to source 'agent:a'"):
        Meter(tmp_path / "u.db", source="agent:b", edgepoint="ep")
