"""Restore-to-first-response vs cold-boot-to-first-response, pods in slots (root + CRIU).

Baseline and subject run side by side in the same process, same machine, interleaved:
  cold    start the pod from its source (pidns + slot netns + cgroup) -> first HTTP 200
  eager   appshots.restore(lazy=False): every page read at restore      -> first HTTP 200
  lazy    appshots.restore(lazy=True): the recorded working set read at restore, the rest
          served by the lazy-pages daemon                                -> first HTTP 200
  8x      eight concurrent restores of one appshot: each restore's latency / the lone
          restore's median (target <= 4x)
Each restore includes verification (signature always; checksums cached by file identity),
slot, cgroup and log pipes, CRIU, health check and the reseed signal; the per-step medians
are printed (Instance.timings_ms). The agent's steady state is measured: its kits (cgroups
with a parked launcher, see edgeshot.agent._kits) are ready before each timed start.

Apps: tiny (http.server), hello and shop (examples; shop is two tiers), httpbin under
gunicorn and a pandas + scikit-learn data app that fits a model at start-up. The last two
come from PyPI (bench/requirements-apps.txt), installed by this script into a venv of their
own under ~/.cache/edgeshot/ (EDGESHOT_CACHE) on first use, not into the project.

    sudo .venv/bin/python bench/restore_latency.py [--runs 20] [--apps tiny,httpbin,data]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeshot.agent import _cgroups, _criu, _kits, _workingset
from edgeshot.agent import appshots as A
from edgeshot.agent._sys import http_request, set_subreaper

REPO = Path(__file__).resolve().parents[1]
APPS_REQUIREMENTS = REPO / "bench" / "requirements-apps.txt"

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


def python() -> str:
    """The real interpreter (not a version manager's shim script: a cold boot through a
    shim would pay for the shim and flatter every ratio)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def apps_venv() -> Path:
    """A venv with httpbin, gunicorn, pandas and scikit-learn (made once, cached)."""
    req = APPS_REQUIREMENTS.read_bytes()
    cache = Path(os.environ.get("EDGESHOT_CACHE", Path.home() / ".cache" / "edgeshot"))
    venv = cache / f"bench-apps-{hashlib.sha256(req).hexdigest()[:10]}"
    if (venv / ".installed").exists():
        return venv
    print(f"installing the benchmark apps into {venv} (once) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python(), "-m", "venv", str(venv)], check=True)
    with open(venv.parent / f"{venv.name}.pip.log", "wb") as logf:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                        str(APPS_REQUIREMENTS)], check=True, stdout=logf, stderr=logf)
    (venv / ".installed").touch()
    return venv


def specs(tmp: Path, wanted: set[str]) -> dict[str, A.PodSpec]:
    (tmp / "tiny").mkdir(exist_ok=True)
    (tmp / "tiny" / "app.py").write_text(TINY)
    py = python()
    env = {"STORE_PORT": "7001"}
    out = {
        "tiny": A.PodSpec(app="tiny", version="1", source_dir=tmp / "tiny", tiers=(
            A.TierSpec(name="web", command=(py, "app.py"), entry=True, health_path="/",
                       memory_mb=128),)),
        "hello": A.PodSpec(app="hello", version="1", source_dir=REPO / "examples/hello", tiers=(
            A.TierSpec(name="web", command=(py, "app.py"), entry=True, memory_mb=128,
                       reseed_signal="SIGUSR2"),), warmup=(A.WarmupRequest(path="/", count=5),)),
        "shop": A.PodSpec(app="shop", version="1", source_dir=REPO / "examples/shop/app", tiers=(
            A.TierSpec(name="web", command=(py, "web.py"), env=env, entry=True,
                       memory_mb=128, reseed_signal="SIGUSR2"),
            A.TierSpec(name="store", command=(py, "store.py"), port=7001, env=env,
                       memory_mb=64, reseed_signal="SIGUSR2")),
            warmup=(A.WarmupRequest(path="/catalog", count=10),)),
    }
    if wanted & {"httpbin", "data"}:
        venv = apps_venv()
        (tmp / "httpbin").mkdir(exist_ok=True)
        out["httpbin"] = A.PodSpec(app="httpbin", version="1", source_dir=tmp / "httpbin", tiers=(
            # one sync worker: two processes (master + worker); gunicorn binds to $PORT
            A.TierSpec(name="web", command=(str(venv / "bin" / "gunicorn"), "-w", "1",
                                            "--worker-tmp-dir", "/dev/shm", "httpbin:app"),
                       entry=True, health_path="/status/200", memory_mb=256),),
            warmup=(A.WarmupRequest(path="/get", count=5), A.WarmupRequest(path="/headers"),
                    A.WarmupRequest(path="/json")))
        out["data"] = A.PodSpec(app="data", version="1", source_dir=REPO / "bench/apps/dataapp",
                                tiers=(A.TierSpec(name="web", command=(str(venv / "bin" / "python"),
                                                                       "app.py"),
                                                  entry=True, health_path="/healthz",
                                                  memory_mb=1024, start_timeout_s=120),),
                                warmup=(A.WarmupRequest(path="/predict?size=80&rooms=3&age=12",
                                                        count=5),
                                        A.WarmupRequest(path="/stats")))
    return out


FIRST_PATH = {"tiny": "/", "hello": "/", "shop": "/catalog", "httpbin": "/get",
              "data": "/predict?size=120&rooms=4&age=30"}


def first_response(inst: A.Instance, t0: float, path: str) -> float:
    while True:
        try:
            status, _ = http_request(inst.address, inst.port, path, timeout=30)
            if status == 200:
                return (time.perf_counter() - t0) * 1000
        except OSError:
            time.sleep(0.0005)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def fmt(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50):7.1f}  p99 {pct(xs, 99):7.1f}  min {min(xs):7.1f} ms"


def steps_line(timings: list[dict[str, float]]) -> str:
    keys: list[str] = []
    for t in timings:
        keys += [k for k in t if k not in keys]
    return "  ".join(f"{k} {statistics.median(t.get(k, 0.0) for t in timings):.1f}"
                     for k in keys)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def steady(host: A.Host, n: int = 1) -> None:
    """Wait for the agent's background work (kits) to be done before a timed start."""
    if host.kits:
        _kits.pool().wait_ready(n)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--apps", default="tiny,hello,shop,httpbin,data")
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of concurrent restores")
    ap.add_argument("--kits", type=int, default=8, help="kits the agent keeps ready (0: none)")
    ap.add_argument("--tmpfs", action="store_true", help="keep the appshots on /dev/shm")
    a = ap.parse_args()
    st = _criu.status()
    if not st.usable:
        print(f"SKIPPED: CRIU unavailable ({st.reason}); nothing to compare")
        return 0
    set_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="edgeshot-bench-"))
    shots = Path(tempfile.mkdtemp(prefix="edgeshot-bench-shots-", dir="/dev/shm")) if a.tmpfs \
        else tmp
    host = A.Host(state_dir=tmp / "state", slot_prefix="bench", slot_subnet="10.251.0.0/24",
                  slots=a.concurrent + 2, kits=a.kits)
    names = a.apps.split(",")
    print(f"CRIU {st.version}, kernel {os.uname().release}, {os.cpu_count()} CPUs, "
          f"{a.runs} runs each, kits {a.kits}, appshots on {'tmpfs' if a.tmpfs else 'disk'}; "
          f"times are command -> first HTTP 200; load average at start {load()}", flush=True)
    try:
        all_specs = specs(tmp, set(names))
        for name in names:
            run_app(name, all_specs[name], host, shots, a)
    finally:
        for inst in A.list_instances(host):
            A.stop(inst, host)
        pool = host.pool()
        A.shutdown(host)
        if pool:
            pool.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
        if a.tmpfs:
            shutil.rmtree(shots, ignore_errors=True)
    print(f"\nload average at end {load()}")
    return 0


def pod_cpu_ms(inst: A.Instance) -> float:
    """CPU time charged to the pod's cgroup so far (the pod's processes, and the launcher
    or CRIU that ran in it): a figure the load on the machine hardly changes."""
    sec = _cgroups.PodCgroup(inst.cgroup).cpu_seconds() if inst.cgroup else None
    return (sec or 0.0) * 1000


def run_app(name: str, spec: A.PodSpec, host: A.Host, shots: Path, a) -> None:
    cold, eager, lazy = [], [], []
    t_cold, t_eager, t_lazy = [], [], []
    cpu: dict[str, list[float]] = {"cold": [], "eager": [], "lazy": []}
    path = FIRST_PATH[name]
    res = A.capture(spec, shots / f"{name}-shot", host)
    shot = res.path
    size = sum(f.stat().st_size for f in (shot / "images").iterdir()) / 1e6
    hot, cold_pages = _workingset.count_lazy(shot / "images")
    ws = sum(n for runs in res.manifest.working_set.values() for _, n in runs)
    trust = host.trust()
    A.verify(shot, trust)
    for _ in range(a.runs):
        steady(host)
        t0 = time.perf_counter()
        inst = A.start(spec, host)
        cold.append(first_response(inst, t0, path))
        cpu["cold"].append(pod_cpu_ms(inst))
        t_cold.append(inst.timings_ms)
        A.stop(inst, host)
        for is_lazy, out, steps in ((False, eager, t_eager), (True, lazy, t_lazy)):
            steady(host)
            t0 = time.perf_counter()
            inst = A.restore(shot, host, trust=trust, lazy=is_lazy)
            out.append(first_response(inst, t0, path))
            cpu["lazy" if is_lazy else "eager"].append(pod_cpu_ms(inst))
            steps.append(inst.timings_ms)
            A.stop(inst, host)
    print(f"\n== {name}: images {size:.1f} MB; working set {ws} pages ({ws * 4096 / 1e6:.1f} MB); "
          f"a lazy restore reads {hot} pages, the lazy-pages daemon serves {cold_pages}; "
          f"cold start at capture {res.cold_start_ms:.0f} ms; load {load()}")
    print(f"  cold boot      {fmt(cold)}")
    print(f"  restore eager  {fmt(eager)}")
    print(f"  restore lazy   {fmt(lazy)}")
    print(f"  ratio cold/restore (p50): eager {pct(cold, 50) / pct(eager, 50):.1f}x, "
          f"lazy {pct(cold, 50) / pct(lazy, 50):.1f}x")
    if all(cpu.values()):
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"  pod cgroup CPU at first response, median: cold {c['cold']:.0f} ms, eager "
              f"{c['eager']:.0f} ms, lazy {c['lazy']:.0f} ms (+ the lazy-pages daemon's); "
              f"cold/eager {c['cold'] / max(c['eager'], 0.1):.1f}x")
    print(f"  steps, median ms: cold  {steps_line(t_cold)}")
    print(f"                    eager {steps_line(t_eager)}")
    print(f"                    lazy  {steps_line(t_lazy)}")
    if a.concurrent > 1:
        use_lazy = pct(lazy, 50) < pct(eager, 50)  # the faster mode, against its lone p50
        concurrent(name, shot, host, trust, a, path, lazy=use_lazy,
                   lone=statistics.median(lazy if use_lazy else eager))
    sys.stdout.flush()


def concurrent(name: str, shot: Path, host: A.Host, trust, a, path: str, *, lazy: bool,
               lone: float) -> None:
    lat: list[float] = []
    lock = threading.Lock()
    insts: list[A.Instance] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            t0 = time.perf_counter()
            inst = A.restore(shot, host, trust=trust, lazy=lazy)
            ms = first_response(inst, t0, path)
            with lock:
                lat.append(ms)
                insts.append(inst)
        except BaseException as exc:  # reported below
            errors.append(exc)

    for _ in range(a.rounds):
        steady(host, a.concurrent)
        threads = [threading.Thread(target=one) for _ in range(a.concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for inst in insts:
            A.stop(inst, host)
        insts.clear()
    if errors:
        print(f"  {a.concurrent} concurrent restores: {len(errors)} failed: {errors[0]}")
    if lat:
        print(f"  {a.concurrent} concurrent {'lazy' if lazy else 'eager'} restores: {fmt(lat)}; "
              f"worst/lone {max(lat) / lone:.1f}x, p50/lone {pct(lat, 50) / lone:.1f}x "
              f"(target <= 4x); load {load()}")


if __name__ == "__main__":
    sys.exit(main())
