"""The capacity test's load generator: locust as a library, in a process of its own.

    python -m edgeshot.control._capacity_run CONFIG.json

CONFIG (0600; the parent deletes it once this process ends): url, host (Host header),
token (sent as X-Edgeshot-Stage), users, spawn_rate, duration_s, paths [[method, path,
weight]…], regions, out. Ramps to `users` at `spawn_rate`, holds until `duration_s`,
then writes every answer to `out` as [seconds since start, users running, ms, ok], and
the number of users running over time (`timeline`).
Users have no think time: each is one request in flight at a time.
"""

from __future__ import annotations

import json
import random
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    paths = [(m, p, int(w)) for m, p, w in cfg["paths"]] or [("GET", "/", 1)]
    regions = cfg.get("regions") or [""]
    base = {"X-Edgeshot-Stage": cfg["token"]}
    if cfg.get("hop"):  # the controller's load speaks as its dispatcher: regions are kept
        base["X-Edgeshot-Hop"] = cfg["hop"]
    if cfg.get("host"):
        base["Host"] = cfg["host"]
    numbering = count()
    weights = [w for _, _, w in paths]

    class StagedUser(FastHttpUser):
        host = cfg["url"]
        wait_time = constant(0)
        network_timeout = 30.0
        connection_timeout = 5.0
        max_retries = 0

        def on_start(self) -> None:
            region = regions[next(numbering) % len(regions)]
            self.headers = dict(base)
            if region:
                self.headers["X-Edgeshot-Region"] = region

        @task
        def request(self) -> None:
            method, path, _ = random.choices(paths, weights)[0]
            with self.client.request(method, path, headers=self.headers, name=path,
                                     catch_response=True) as r:
                if r.status_code and r.status_code < 500:
                    r.success()

    env = Environment(user_classes=[StagedUser], events=events, catch_exceptions=True)
    runner = env.create_local_runner()
    samples: list[list[Any]] = []
    t0 = time.monotonic()

    def on_request(request_type: str, name: str, response_time: float, response_length: int,
                   response: Any = None, context: Any = None, exception: Any = None,
                   **kw: Any) -> None:
        status = getattr(response, "status_code", 0) or 0
        samples.append([round(time.monotonic() - t0, 4), runner.user_count,
                        round(float(response_time), 3),
                        int(exception is None and 0 < status < 500)])

    env.events.request.add_listener(on_request)
    timeline: list[list[float]] = [[0.0, 0]]  # [seconds, users running] at each change

    def watch() -> None:
        while True:
            n = runner.user_count
            if n != timeline[-1][1]:
                timeline.append([round(time.monotonic() - t0, 4), n])
            gevent.sleep(0.01)

    watcher = gevent.spawn(watch)
    runner.start(int(cfg["users"]), spawn_rate=float(cfg["spawn_rate"]))
    gevent.sleep(max(0.0, float(cfg["duration_s"]) - (time.monotonic() - t0)))
    watcher.kill()
    runner.stop()
    runner.quit()
    out = Path(cfg["out"])
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"samples": samples, "timeline": timeline,
                               "elapsed_s": time.monotonic() - t0}))
    tmp.replace(out)


if __name__ == "__main__":
    main()
