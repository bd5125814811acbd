"""The agent daemon's overhead, each figure beside its baseline in the same run.

1. Restore through the API (client -> HTTP -> auth -> agent -> library -> healthy) vs the
   library call ``appshots.restore()`` in this process, alternating, same appshot.
   Target (issue 4): API p50 <= library p50 + 3 ms.
2. Idle RSS of the agent process vs a bare aiohttp server process. Target: <= 60 MB.
3. Usage recording for 200 instances at 1 s intervals (200 real cgroups, each holding a
   sleeping process; the meter reads cgroup + /proc counters and commits the records to
   SQLite with fsync) vs merely reading the same counter files. Target: <= 5% of one core.

    sudo .venv/bin/python bench/agent_overhead.py [--runs 30] [--instances 200] [--ticks 10]

Needs root for slots, cgroups and CRIU (without, it says so and measures what it can).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "framework"))

from edgeshot.agent import _package, auth  # noqa: E402
from edgeshot.agent import appshots as A  # noqa: E402
from edgeshot.agent._cgroups import PodCgroup  # noqa: E402
from edgeshot.agent._sys import http_request, set_subreaper  # noqa: E402
from edgeshot.agent._usage import Meter, Target  # noqa: E402
from edgeshot.agent.client import AgentClient  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Agent:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _port()
        self.token = auth.issue_token(root / "tokens.toml", "bench", [auth.CONTROLLER_AGENT])
        (root / "agent.toml").write_text(
            f'state_dir = "state"\ntokens_file = "tokens.toml"\nport = {self.port}\n'
            f'slot_prefix = "bag"\nslot_subnet = "10.249.1.0/24"\nslots = 4\n'
            f"access_log = false\nlog_level = \"WARNING\"\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeshot.cli.agent", "--config", str(root / "agent.toml")],
            cwd=root, stdout=open(root / "agent.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http_request("127.0.0.1", self.port, "/v1/health",
                                headers={"Authorization": f"Bearer {self.token}"})[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"agent did not start:\n{(root / 'agent.log').read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)


# ---------------------------------------------------------------- 1. restore


async def bench_restore(agent: Agent, runs: int, lazy: bool) -> dict:
    hello = A.PodSpec(
        app="hello", version="1.0", owner="bench", vendor="bench",
        source_dir=REPO / "examples" / "hello",
        tiers=(A.TierSpec(name="web", command=("python3", "app.py"), entry=True, cpu="0.5",
                          memory_mb=96, reseed_signal="SIGUSR2"),),
        warmup=(A.WarmupRequest(path="/", count=3),))
    lib_host = A.Host(state_dir=agent.root / "lib-state", slot_prefix="bli",
                      slot_subnet="10.249.2.0/24", slots=4)
    api, lib, inside, api_cpu, lib_cpu = [], [], [], [], []
    me = psutil.Process(agent.proc.pid)

    def agent_cpu() -> float:
        """CPU seconds of all the agent's threads, in ns precision (schedstat)."""
        total = 0
        for task in Path(f"/proc/{me.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total / 1e9
    async with AgentClient(agent.url, agent.token) as c:
        await c.capture(hello, name="hello-1.0")
        shot = agent.root / "state" / "appshots" / "hello-1.0"
        key = _package.load_private_key(agent.root / "state" / "keys" / "server.key")
        trust = _package.TrustStore([key.public_key()])
        for _ in range(2):  # warm both paths (verify caches, slot set-up, page cache)
            i = await c.create_instance("hello-1.0", lazy=lazy)
            await c.stop_instance(i.id)
            A.stop(A.restore(shot, lib_host, trust=trust, lazy=lazy), lib_host)
        for _ in range(runs):
            c0, t0 = agent_cpu(), time.perf_counter()
            i = await c.create_instance("hello-1.0", lazy=lazy)
            api.append((time.perf_counter() - t0) * 1000)
            api_cpu.append((agent_cpu() - c0) * 1000)
            inside.append(i.ready_ms or 0.0)  # the agent's own create -> healthy
            assert http_request(i.host, i.port, "/")[0] == 200
            await c.stop_instance(i.id)
            c0, t0 = time.process_time(), time.perf_counter()
            inst = A.restore(shot, lib_host, trust=trust, lazy=lazy)
            lib.append((time.perf_counter() - t0) * 1000)
            lib_cpu.append((time.process_time() - c0) * 1000)
            assert http_request(inst.address, inst.port, "/")[0] == 200
            A.stop(inst, lib_host)
        await c.delete_appshot("hello-1.0")
    pool = lib_host.pool()
    if pool is not None:
        pool.destroy()
    return {"api": api, "lib": lib, "inside": inside, "api_cpu": api_cpu, "lib_cpu": lib_cpu}


# ---------------------------------------------------------------- 2. idle RSS


BARE = """
import asyncio, sys
from aiohttp import web
async def h(r): return web.Response(text="ok")
app = web.Application(); app.router.add_get("/", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def bench_rss(agent: Agent) -> tuple[float, float]:
    port = _port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http_request("127.0.0.1", port, "/")
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(2.0)  # idle: a few meter and health ticks
        agent_rss = psutil.Process(agent.proc.pid).memory_info().rss / 2**20
        bare_rss = psutil.Process(bare.pid).memory_info().rss / 2**20
    finally:
        bare.terminate()
        bare.wait()
    return agent_rss, bare_rss


# ---------------------------------------------------------------- 3. metering


def bench_metering(root: Path, n: int, ticks: int) -> dict:
    use_cg = os.geteuid() == 0
    sleepers, cgroups, targets = [], [], []
    try:
        for k in range(n):
            p = subprocess.Popen(["sleep", "3600"])
            sleepers.append(p)
            name = f"bench-meter-{os.getpid()}-{k}"
            if use_cg:
                cg = PodCgroup(name)
                cg.create(cpu=None, memory_mb=None)
                cg.join(p.pid)
                cgroups.append(cg)
            targets.append(Target(
                key=f"inst-{k}", app="bench", version="1", owner="o", vendor="v",
                since=time.time(), interval=1.0, pod=f"pod-{k}",
                cgroup=name if use_cg else None,
                pids=None if use_cg else (lambda pid=p.pid: [pid])))
        meter = Meter(root / "usage.db", source="bench", edgepoint="ep")
        cpu_meter: list[float] = []
        cpu_floor: list[float] = []
        files = [(cg.dirs[1] / "cpuacct.usage" if cg.mode == "v1" else cg.dirs[0] / "cpu.stat",
                  cg.dirs[-1] / ("memory.usage_in_bytes" if cg.mode == "v1" else
                                 "memory.current"),
                  cg.dirs[-1] / "cgroup.procs") for cg in cgroups]
        for _ in range(ticks):
            t_next = time.monotonic() + 1.0
            t0 = time.thread_time()
            meter.tick(lambda: targets)
            cpu_meter.append(time.thread_time() - t0)
            t0 = time.thread_time()
            for group in files:  # the floor: read the very same counter files
                for f in group:
                    f.read_bytes()
            for p in sleepers:
                Path(f"/proc/{p.pid}/io").read_bytes()
            cpu_floor.append(time.thread_time() - t0)
            time.sleep(max(0.0, t_next - time.monotonic()))
        records = meter.page(0, 100_000)[0]
        meter.close()
        return {"meter": cpu_meter[1:], "floor": cpu_floor[1:], "records": len(records),
                "cgroups": use_cg}
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        for cg in cgroups:
            cg.remove()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--lazy", action="store_true", help="lazy-pages restores (default eager)")
    ap.add_argument("--parts", default="rss,restore,metering",
                    help="comma-separated subset of rss,restore,metering")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    set_subreaper()
    root = Path(tempfile.mkdtemp(prefix="edgeshot-bench-agent-"))
    out: dict = {}
    agent = Agent(root) if parts & {"rss", "restore"} else None
    try:
        if agent is None:
            pass
        elif "rss" in parts:
            agent_rss, bare_rss = bench_rss(agent)
            out["rss"] = {"agent_mb": agent_rss, "bare_aiohttp_mb": bare_rss}
            print(f"idle RSS: agent {agent_rss:.1f} MB, bare aiohttp server {bare_rss:.1f} MB "
                  f"({agent_rss / bare_rss:.2f}x); target <= 60 MB: "
                  f"{'met' if agent_rss <= 60 else 'MISSED'}")
        if agent is None or "restore" not in parts:
            pass
        elif A.criu_status().usable:
            r = asyncio.run(bench_restore(agent, args.runs, args.lazy))
            api50, lib50 = statistics.median(r["api"]), statistics.median(r["lib"])
            out["restore"] = {k: {"p50": statistics.median(v), "p90": pct(v, 90)}
                              for k, v in r.items()}
            paired = statistics.median(a - b for a, b in zip(r["api"], r["lib"], strict=True))
            http = [a - b for a, b in zip(r["api"], r["inside"], strict=True)]
            out["restore"]["paired_diff_p50"] = paired
            out["restore"]["http_p50"] = statistics.median(http)
            print(f"restore -> healthy ({'lazy' if args.lazy else 'eager'}, {args.runs} runs): "
                  f"API p50 {api50:.1f} ms p90 {pct(r['api'], 90):.1f} ms; library p50 "
                  f"{lib50:.1f} ms p90 {pct(r['lib'], 90):.1f} ms; overhead p50 "
                  f"{api50 - lib50:+.1f} ms ({api50 / lib50:.2f}x); target <= +3 ms: "
                  f"{'met' if api50 - lib50 <= 3 else 'MISSED'}")
            time.sleep(2.0)
            after = psutil.Process(agent.proc.pid).memory_info().rss / 2**20
            out["rss"] = {**out.get("rss", {}), "agent_after_restores_mb": after}
            print(f"  agent RSS after its {args.runs + 2} restores and stops, idle: "
                  f"{after:.1f} MB")
            ac, lc = statistics.median(r["api_cpu"]), statistics.median(r["lib_cpu"])
            print(f"  CPU time per restore (not counting criu and other child processes): "
                  f"agent process {ac:.1f} ms vs library caller {lc:.1f} ms: the API adds "
                  f"{ac - lc:+.1f} ms of CPU")
            print(f"  median of per-run differences API - library {paired:+.1f} ms; HTTP, auth, "
                  f"JSON and thread hand-off around the agent's create (client time - the "
                  f"agent's own create->healthy) p50 {statistics.median(http):.1f} ms, "
                  f"p90 {pct(http, 90):.1f} ms")
        else:
            print(f"restore: skipped, CRIU unavailable ({A.criu_status().reason})")
    finally:
        if agent is not None:
            agent.stop()
            if os.geteuid() == 0:
                from edgeshot.agent._slots import SlotPool
                SlotPool(root / "state", prefix="bag", subnet="10.249.1.0/24", size=4).destroy()
    if "metering" not in parts:
        print(json.dumps(out))
        shutil.rmtree(root, ignore_errors=True)
        return
    m = bench_metering(root, args.instances, args.ticks)
    meter_pct = statistics.mean(m["meter"]) * 100
    floor_pct = statistics.mean(m["floor"]) * 100
    out["metering"] = {"instances": args.instances, "meter_core_pct": meter_pct,
                       "floor_core_pct": floor_pct, "records": m["records"]}
    print(f"usage recording, {args.instances} instances at 1 s "
          f"({'cgroups' if m['cgroups'] else 'psutil only'}): {meter_pct:.2f}% of one core "
          f"(max tick {max(m['meter']) * 1000:.1f} ms CPU); reading the same counters alone "
          f"{floor_pct:.2f}% ({meter_pct / max(floor_pct, 1e-9):.1f}x); {m['records']} "
          f"records; target <= 5%: {'met' if meter_pct <= 5 else 'MISSED'}")
    print(json.dumps(out))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
