"""A real local network for the metering pipeline tests: policy files, fast meters, killing
and restarting any of its processes, traffic through the edges, the sources' own stores."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from _netkit import TWO_EDGEPOINTS, hello_app, regions_of, write_network_policy
from edgeshot.control._config import ControllerConfig
from edgeshot.control._localnet import LocalNetwork, Proc, _http_ok, _pid_alive, _write_procs
from edgeshot.control._metering_store import micro


def write_policy(d: Path, *, edgepoints: tuple[tuple[str, str], ...] = TWO_EDGEPOINTS,
                 pricing: str, budget: str = "100 EUR", min_: int = 0, max_: int = 2,
                 global_max: int = 4, slots: int = 4, users_per_instance: int = 10) -> Path:
    app = hello_app(regions_of(edgepoints), min_=min_, max_=max_, global_max=global_max,
                    users_per_instance=users_per_instance, budget=budget)
    return write_network_policy(d, app, name="bill", pricing=f"Pricing({pricing})",
                                subnets=(100, 50), edgepoints=edgepoints, slots=slots)


class Net:
    """A LocalNetwork with meters every 0.5 s and the controller's collector every 0.5 s."""

    def __init__(self, policy: Path, state: Path, *, controller: dict[str, Any] | None = None,
                 edge: dict[str, Any] | None = None) -> None:
        self.net = LocalNetwork.create(
            policy, state, simulate_latency=False,
            agent_options={"usage_interval_s": 0.5, "storage_interval_s": 1.0,
                           "health_interval_s": 0.5},
            edge_options={"usage_interval_s": 0.5, **(edge or {})})
        path = self.net.state_dir / "controller.toml"
        cfg = ControllerConfig.load(path)
        cfg = cfg.model_copy(update={
            "dispatcher": cfg.dispatcher.model_copy(update={"enabled": False}),
            "metering": cfg.metering.model_copy(update={"interval_s": 0.5, "max_backoff_s": 2.0,
                                                        "budget_interval_s": 1.0}),
            **(controller or {})})
        path.write_text(cfg.to_toml())

    @property
    def state(self) -> Path:
        return self.net.state_dir

    def start(self) -> Net:
        self.net.start(timeout=90)
        return self

    def proc(self, name: str) -> Proc:
        live = [p for p in self.net.manifest.processes if p.name == name and _pid_alive(p.pid)]
        assert live, f"no live process {name!r}"
        return live[-1]

    def kill(self, name: str) -> None:
        """SIGKILL (a crash): nothing of the process is cleaned up."""
        p = self.proc(name)
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while _pid_alive(p.pid) and time.monotonic() < deadline:
            try:
                os.waitpid(p.pid, os.WNOHANG)  # type: ignore[arg-type]
            except ChildProcessError:
                pass
            time.sleep(0.02)
        self.net.manifest.processes = [q for q in self.net.manifest.processes if q is not p]
        _write_procs(self.state, self.net.manifest.processes)
        self._dead = p

    def restart(self, name: str, *, after: float = 0.0, timeout: float = 60) -> None:
        """Kill `name` and start it again with the same command line."""
        self.kill(name)
        time.sleep(after)
        p = self._dead
        token = None if p.kind == "controller" else self.net.token("operator")
        q = self.net._spawn(p.name, p.kind, p.argv, p.health_url, Path(p.log).parent.parent
                            if p.kind == "controller" else Path(p.argv[-1]).parent)
        deadline = time.monotonic() + timeout
        while not (q.health_url and _http_ok(q.health_url, token)):
            assert _pid_alive(q.pid), Path(q.log).read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name} not back after {timeout} s"
            time.sleep(0.05)

    def stop(self) -> list[str]:
        return self.net.stop()

    # ------------------------------------------------------------------ the sources' stores

    def agent_records(self, server: str) -> list[tuple]:
        db = Path(self.net.manifest.agents[server]["state_dir"]) / "usage.db"
        return _read(db, 'SELECT seq, instance, app, version, owner, vendor, edgepoint, start, '
                     '"end", cpu_seconds, memory_gb_seconds, disk_read_bytes, disk_write_bytes, '
                     'storage_gb_hours FROM usage ORDER BY seq')

    def edge_records(self, edgepoint: str) -> list[tuple]:
        db = Path(self.net.manifest.edges[edgepoint]["state_dir"]) / "edge.db"
        return _read(db, 'SELECT seq, instance, app, version, owner, vendor, start, "end", '
                     "net_in_bytes, net_out_bytes, requests FROM usage ORDER BY seq")

    def source_rows(self) -> dict[str, list[tuple]]:
        """Every source's records in the controller's stored form: source -> rows of
        (seq, instance, app, version, owner, vendor, edgepoint, start, end, *quantities)."""
        out: dict[str, list[tuple]] = {}
        for server, a in self.net.manifest.agents.items():
            out[f"agent:{a['edgepoint']}:{server}"] = [
                (r[0], *r[1:7], r[7], r[8], micro(r[9]), micro(r[10]), r[11], r[12],
                 micro(r[13]), 0, 0, 0) for r in self.agent_records(server)]
        for ep in self.net.manifest.edges:
            out[f"edge:{ep}"] = [
                (r[0], *r[1:6], ep, _ts(r[6]), _ts(r[7]), 0, 0, 0, 0, 0, r[8], r[9], r[10])
                for r in self.edge_records(ep)]
        return out

    def controller_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.state / 'controller' / 'controller.db'}?mode=ro",
                             uri=True, timeout=30)
        return db


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _read(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


class Traffic:
    """GET / with a Host header, to each address in turn, from `threads` threads; counts
    the answers per address and status."""

    def __init__(self, addresses: list[str], host: str, threads: int = 2,
                 pause_s: float = 0.0) -> None:
        self.addresses = addresses
        self.host = host
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.pause_s = pause_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            for a in self.addresses:
                host, port = a.rsplit(":", 1)
                try:
                    c = http.client.HTTPConnection(host, int(port), timeout=30)
                    c.request("GET", "/", headers={"Host": self.host})
                    r = c.getresponse()
                    r.read()
                    c.close()
                    with self._lock:
                        self.statuses[r.status] += 1
                        (self.ok if r.status == 200 else self.failed)[a] += 1
                except OSError:
                    with self._lock:
                        self.failed[a] += 1
                if self.pause_s:
                    time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def get_json(url: str, token: str, method: str = "GET") -> Any:
    import urllib.request
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
        return json.loads(body) if r.headers.get_content_type() == "application/json" \
            else body.decode()


def wait_for(fn: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 (keep trying until the deadline)
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")
