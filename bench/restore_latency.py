"""Restore-to-first-response vs cold-boot-to-first-response, pods in slots (root + CRIU).

Baseline and subject run side by side in the same process, same machine:
  cold    start the pod from its source (pidns + slot netns + cgroup) -> first HTTP 200
  eager   criu restore (all pages read at restore)                   -> first HTTP 200
  lazy    criu restore --lazy-pages + lazy-pages daemon              -> first HTTP 200
  8x      eight concurrent eager restores of one appshot: each restore's latency / the lone
          restore's median (target <= 4x)
Each restore includes verification (signature always; checksums cached by file identity),
slot, cgroup and log-pipe set-up, CRIU, health check and the reseed signal.

    sudo .venv/bin/python bench/restore_latency.py [--runs 20] [--apps tiny,hello,shop]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeshot.agent import _criu
from edgeshot.agent import appshots as A
from edgeshot.agent._sys import http_request, set_subreaper

REPO = Path(__file__).resolve().parents[1]

TINY = '''
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
n = 0
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        global n
        n += 1
        body = f"tiny #{n}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


def specs(tmp: Path) -> dict[str, A.PodSpec]:
    (tmp / "tiny").mkdir()
    (tmp / "tiny" / "app.py").write_text(TINY)
    env = {"STORE_PORT": "7001"}
    return {
        "tiny": A.PodSpec(app="tiny", version="1", source_dir=tmp / "tiny", tiers=(
            A.TierSpec(name="web", command=("python3", "app.py"), entry=True, health_path="/",
                       memory_mb=128),)),
        "hello": A.PodSpec(app="hello", version="1", source_dir=REPO / "examples/hello", tiers=(
            A.TierSpec(name="web", command=("python3", "app.py"), entry=True, memory_mb=128,
                       reseed_signal="SIGUSR2"),), warmup=(A.WarmupRequest(path="/", count=5),)),
        "shop": A.PodSpec(app="shop", version="1", source_dir=REPO / "examples/shop/app", tiers=(
            A.TierSpec(name="web", command=("python3", "web.py"), env=env, entry=True,
                       memory_mb=128, reseed_signal="SIGUSR2"),
            A.TierSpec(name="store", command=("python3", "store.py"), port=7001, env=env,
                       memory_mb=64, reseed_signal="SIGUSR2")),
            warmup=(A.WarmupRequest(path="/catalog", count=10),)),
    }


def first_response(inst: A.Instance, t0: float) -> float:
    while True:
        try:
            status, _ = http_request(inst.address, inst.port, "/", timeout=5)
            if status == 200:
                return (time.perf_counter() - t0) * 1000
        except OSError:
            time.sleep(0.0005)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def fmt(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50):7.1f}  p99 {pct(xs, 99):7.1f}  min {min(xs):7.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--apps", default="tiny,hello,shop")
    ap.add_argument("--concurrent", type=int, default=8)
    a = ap.parse_args()
    st = _criu.status()
    if not st.usable:
        print(f"SKIPPED: CRIU unavailable ({st.reason}); nothing to compare")
        return 0
    set_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="edgeshot-bench-"))
    host = A.Host(state_dir=tmp / "state", slot_prefix="bench", slot_subnet="10.251.0.0/24",
                  slots=a.concurrent + 2)
    print(f"CRIU {st.version}, kernel {os.uname().release}, {os.cpu_count()} CPUs, "
          f"{a.runs} runs each; times are command -> first HTTP 200")
    try:
        all_specs = specs(tmp)
        for name in a.apps.split(","):
            run_app(name, all_specs[name], host, tmp, a)
    finally:
        for inst in A.list_instances(host):
            A.stop(inst, host)
        pool = host.pool()
        if pool:
            pool.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run_app(name: str, spec: A.PodSpec, host: A.Host, tmp: Path, a) -> None:
    cold, eager, lazy, criu_e, criu_l = [], [], [], [], []
    shot = A.capture(spec, tmp / f"{name}-shot", host).path
    size = sum(f.stat().st_size for f in (shot / "images").iterdir()) / 1e6
    trust = host.trust()
    A.verify(shot, trust)
    for _ in range(a.runs):
        t0 = time.perf_counter()
        inst = A.start(spec, host)
        cold.append(first_response(inst, t0))
        A.stop(inst, host)
        for is_lazy, out, crit in ((False, eager, criu_e), (True, lazy, criu_l)):
            t0 = time.perf_counter()
            inst = A.restore(shot, host, trust=trust, lazy=is_lazy)
            out.append(first_response(inst, t0))
            crit.append(inst.restore_ms or 0)
            A.stop(inst, host)
    print(f"\n== {name}: images {size:.1f} MB")
    print(f"  cold boot      {fmt(cold)}")
    print(f"  restore eager  {fmt(eager)}   (criu restore alone p50 {pct(criu_e, 50):.1f} ms)")
    print(f"  restore lazy   {fmt(lazy)}   (criu restore alone p50 {pct(criu_l, 50):.1f} ms)")
    best = min(pct(eager, 50), pct(lazy, 50))
    print(f"  ratio cold/restore (p50): {pct(cold, 50) / best:.1f}x")
    if a.concurrent > 1:
        lone = statistics.median(eager)
        lat: list[float] = []
        lock = threading.Lock()
        insts: list[A.Instance] = []

        def one() -> None:
            t0 = time.perf_counter()
            inst = A.restore(shot, host, trust=trust, lazy=False)
            ms = first_response(inst, t0)
            with lock:
                lat.append(ms)
                insts.append(inst)

        for _ in range(3):
            threads = [threading.Thread(target=one) for _ in range(a.concurrent)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for inst in insts:
                A.stop(inst, host)
            insts.clear()
        print(f"  {a.concurrent} concurrent eager restores: {fmt(lat)}; worst/lone "
              f"{max(lat) / lone:.1f}x, p50/lone {pct(lat, 50) / lone:.1f}x (target <= 4x)")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
