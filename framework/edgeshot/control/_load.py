"""Synthetic users from several regions: locust as a library, in a process of its own.

Locust monkey-patches the standard library for gevent when imported, so it never
runs inside the asyncio processes of edgeshot: the demo (and capacity tests)
start this module as a child process and steer it through a control file (its whole content is one command):

    users <n> <spawn_rate>     ramp to n users (spread over the regions by weight)
    quit                       stop the users and exit (so does the parent's exit)

and read what it measured from a JSON snapshot file, rewritten every half second:
per region, requests, failures, status codes, which edgepoint served them (the
dispatcher's ``X-Edgeshot-Edgepoint`` header) and latency percentiles over the
last `window_s` seconds and since the start. Users come and go: a share of the
requests (`session_churn`) starts a new session (new cookies), as new visitors do,
so that affinity does not pin everyone to the instances of the first minute.

    python -m edgeshot.control._load CONFIG.json
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, events
from locust.env import Environment


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


class Meter:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.recent: deque[tuple[float, str, float, bool, str, int]] = deque()
        self.totals: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def add(self, region: str, ms: float, ok: bool, edgepoint: str, status: int) -> None:
        now = time.time()
        self.recent.append((now, region, ms, ok, edgepoint, status))
        t = self.totals.setdefault(region, {"requests": 0, "failures": 0, "edgepoints": {},
                                            "status": {}, "all_ms": []})
        t["requests"] += 1
        t["failures"] += 0 if ok else 1
        t["edgepoints"][edgepoint] = t["edgepoints"].get(edgepoint, 0) + 1
        t["status"][str(status)] = t["status"].get(str(status), 0) + 1
        if len(t["all_ms"]) < 200_000:
            t["all_ms"].append(ms)

    def snapshot(self, users: int) -> dict[str, Any]:
        now = time.time()
        while self.recent and self.recent[0][0] < now - self.window_s:
            self.recent.popleft()
        regions: dict[str, Any] = {}
        for region, t in self.totals.items():
            win = [r for r in self.recent if r[1] == region]
            ms = [r[2] for r in win if r[3]]
            regions[region] = {
                "requests": t["requests"], "failures": t["failures"],
                "edgepoints": dict(t["edgepoints"]), "status": dict(t["status"]),
                "p50_ms": _percentile(t["all_ms"], 50), "p95_ms": _percentile(t["all_ms"], 95),
                "window": {"requests": len(win), "failures": sum(1 for r in win if not r[3]),
                           "rps": len(win) / self.window_s,
                           "p50_ms": _percentile(ms, 50), "p95_ms": _percentile(ms, 95),
                           "edgepoints": _count(r[4] for r in win)},
            }
        return {"at": now, "elapsed_s": now - self.started, "users": users, "regions": regions,
                "window_s": self.window_s}


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def user_classes(cfg: dict[str, Any]) -> list[type[FastHttpUser]]:
    classes = []
    paths = cfg.get("paths") or [{"method": "GET", "path": "/", "weight": 1}]
    churn = float(cfg.get("session_churn", 0.1))  # share of requests that start a new session
    host_header = cfg.get("host_header")
    for region, weight in cfg["regions"].items():
        headers = {"X-Edgeshot-Region": region}
        if host_header:
            headers["Host"] = host_header

        def make_task(method: str, path: str, body: str | None):
            def run(self: FastHttpUser) -> None:
                if random.random() < churn:  # this visitor leaves, a new one comes
                    self.session_id = os.urandom(4).hex()
                    jar = getattr(self.client, "cookiejar", None)
                    if jar is not None:
                        jar.clear()
                p = path.replace("{session}", self.session_id)
                with self.client.request(method, p, headers=self.region_headers, data=body,
                                         name=f"{method} {path}", catch_response=True,
                                         context={"region": self.region}) as r:
                    if r.status_code and r.status_code < 500:
                        r.success()
            return run

        tasks = {make_task(p.get("method", "GET"), p["path"], p.get("body")): int(p.get("weight", 1))
                 for p in paths}

        def on_start(self: FastHttpUser) -> None:
            self.session_id = os.urandom(4).hex()

        cls = type(f"Users_{region.replace('-', '_')}", (FastHttpUser,), {
            "weight": int(weight), "tasks": tasks, "region_headers": headers,
            "region": region, "wait_time": between(cfg.get("wait_min", 0.2),
                                                   cfg.get("wait_max", 0.6)),
            "on_start": on_start, "host": cfg["url"], "network_timeout": 10.0,
            "connection_timeout": 5.0, "max_retries": 0,
        })
        classes.append(cls)
    return classes


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    out = Path(cfg["out"])
    meter = Meter(float(cfg.get("window_s", 10)))
    classes = user_classes(cfg)
    env = Environment(user_classes=classes, events=events, catch_exceptions=True)

    def on_request(request_type: str, name: str, response_time: float, response_length: int,
                   response: Any = None, context: Any = None, exception: Any = None,
                   **kw: Any) -> None:
        headers = getattr(response, "headers", None) or {}
        ep = headers.get("X-Edgeshot-Edgepoint") or headers.get("x-edgeshot-edgepoint") or "-"
        status = getattr(response, "status_code", 0) or 0
        region = (context or {}).get("region", "?")
        meter.add(region, float(response_time), exception is None and 0 < status < 500, ep,
                  int(status))

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()

    def writer() -> None:
        while True:
            snap = meter.snapshot(runner.user_count)
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(json.dumps(snap))
            os.replace(tmp, out)
            gevent.sleep(0.5)

    gevent.spawn(writer)
    control = Path(cfg["control"])
    parent = os.getppid()
    seen = ""
    print("ready", flush=True)
    while True:  # steered through the control file (gevent-friendly polling)
        gevent.sleep(0.1)
        if os.getppid() != parent:
            break  # the demo went away: stop
        try:
            text = control.read_text()
        except FileNotFoundError:
            continue
        if text == seen:
            continue
        seen = text
        parts = text.split()
        if not parts:
            continue
        if parts[0] == "users" and len(parts) >= 2:
            n = int(parts[1])
            rate = float(parts[2]) if len(parts) > 2 else max(1.0, n / 2)
            if n == 0:
                runner.stop()
            else:
                runner.start(n, spawn_rate=rate)
            print(f"users {n}", flush=True)
        elif parts[0] == "quit":
            break
    runner.quit()
    snap = meter.snapshot(0)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(snap))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
