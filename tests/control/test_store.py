"""The controller's SQLite store: migrations, WAL, transactions, the network's records."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from edgeshot.control import _store
from edgeshot.control.store import Migration, SchemaTooNew, Store, register


@pytest.fixture
def scratch_component():
    """A throwaway component registered for one test."""
    yield "scratch"
    _store._REGISTRY.pop("scratch", None)


def test_fresh_file_gets_every_migration_once(tmp_path):
    s = Store(tmp_path / "c.db")
    assert "network:1 network state" in s.applied
    assert s.schema()["network"] == 1
    assert s.query("PRAGMA journal_mode")[0][0] == "wal"
    s.close()
    again = Store(tmp_path / "c.db")
    assert again.applied == []
    again.close()


def test_later_migrations_upgrade_in_place_and_keep_data(tmp_path, scratch_component):
    register("scratch", [Migration(1, "t", "CREATE TABLE scratch (k TEXT PRIMARY KEY);")])
    s = Store(tmp_path / "c.db")
    with s.tx() as db:
        db.execute("INSERT INTO scratch VALUES ('kept')")
    s.close()

    def backfill(db: sqlite3.Connection) -> None:
        db.execute("UPDATE scratch SET v = upper(k)")

    register("scratch", [
        Migration(1, "t", "CREATE TABLE scratch (k TEXT PRIMARY KEY);"),
        Migration(2, "column", "ALTER TABLE scratch ADD COLUMN v TEXT;"),
        Migration(3, "backfill", backfill),
    ])
    s = Store(tmp_path / "c.db")
    assert s.applied == ["scratch:2 column", "scratch:3 backfill"]
    assert [tuple(r) for r in s.query("SELECT k, v FROM scratch")] == [("kept", "KEPT")]
    s.close()


def test_a_failing_migration_leaves_nothing_half_done(tmp_path, scratch_component):
    register("scratch", [Migration(1, "bad", "CREATE TABLE half (x INT);\nSELECT * FROM nowhere;")])
    with pytest.raises(sqlite3.OperationalError):
        Store(tmp_path / "c.db", components=["network", "scratch"])
    db = sqlite3.connect(tmp_path / "c.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables and "edgepoints" in tables
    assert db.execute("SELECT version FROM schema_versions WHERE component='scratch'").fetchone() is None
    db.close()


def test_a_file_from_a_newer_controller_is_refused(tmp_path):
    Store(tmp_path / "c.db").close()
    db = sqlite3.connect(tmp_path / "c.db")
    db.execute("UPDATE schema_versions SET version = 99 WHERE component = 'network'")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match="v99 is newer"):
        Store(tmp_path / "c.db")


def test_migration_versions_must_be_in_order():
    with pytest.raises(ValueError, match="1..n"):
        register("x", [Migration(2, "a", "")])


def test_records_round_trip(tmp_path):
    s = Store(tmp_path / "c.db")
    s.upsert_edgepoint("eu", "eu-central", 50.1, 8.7, "http://127.0.1.1:7702", "http://127.0.1.1:8080")
    s.report_edgepoint("eu", True, 0.25, {"load": 0.25})
    (ep,) = s.edgepoints()
    assert ep["healthy"] == 1 and ep["load"] == 0.25 and ep["report"] == {"load": 0.25}
    assert ep["last_seen"] is not None

    s.put_app("shop", "acme-shop", "acme")
    assert s.put_version("shop", "1.0.0", "{}") is True
    assert s.put_version("shop", "1.0.0", '{"x": 1}') is False  # kept as it was
    s.set_version("shop", "1.0.0", appshot="shop-1.0.0", state="distributed")
    assert s.version("shop", "1.0.0")["appshot"] == "shop-1.0.0"
    s.set_app("shop", primary_version="1.0.0")
    assert s.app("shop")["primary_version"] == "1.0.0"
    with pytest.raises(ValueError):
        s.set_app("shop", owner="mallory")

    d1 = s.start_deployment("shop", "canary", "1.0.0", "1.1.0", 10, {"threshold": 2})
    s.update_deployment(d1, phase="progressing", weight=10, good=1, failed=0, checks=1,
                        reasons=["good check 1/3"])
    assert s.active_deployment("shop")["id"] == d1
    d2 = s.start_deployment("shop", "canary", "1.0.0", "1.2.0", 10)
    assert s.deployment(d1)["phase"] == "superseded"
    s.update_deployment(d2, phase="rolled_back", weight=0, good=0, failed=2, checks=2,
                        reasons=["error rate 50.0% > 1.0%"])
    dep = s.deployment(d2)
    assert dep["finished"] and dep["reasons"][0]["reasons"] == ["error rate 50.0% > 1.0%"]
    assert s.active_deployment("shop") is None

    e = s.event("rollback", "shop rolled back", app="shop", data={"to": "1.0.0"})
    assert [x["id"] for x in s.events(after=e - 1)] == [e]
    assert s.events(app="shop")[0]["data"] == {"to": "1.0.0"}


def test_threads_share_one_store(tmp_path):
    s = Store(tmp_path / "c.db")
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                s.event("t", f"{n}-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(s.events(limit=1000)) == 200
