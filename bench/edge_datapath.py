"""The edgepoint's data path, side by side in one run (root; HAProxy, wrk, CRIU).

    sudo .venv/bin/python bench/edge_datapath.py [--only throughput,zero,step] [--rounds 5]

A real agent restores a tiny keep-alive HTTP app (``bench/apps/tiny``: node when it
can be captured, else Python asyncio) into a pod in a slot; a real edge process routes
to it. Three benchmarks (issue 5):

* **throughput**: wrk (``-c 32``) against (a) the instance directly at its slot address,
  (b) one plain hand-written HAProxy in front of it, (c) the edgeshot edgepoint (routing
  maps, cleave, cookies, request logs). Rounds alternate the three; medians reported.
  Targets: edgeshot >= 0.9x the plain HAProxy's requests/s and <= +0.3 ms p50.
* **zero**: scale-to-zero -> first response through the activator, against the agent's
  own restore -> first response (create_instance from the appshot, then a GET to the
  instance), alternated. Target: <= the agent's + 5 ms.
* **step**: a load step (32 users on a 10 ms endpoint, 1 instance, 8 users per instance)
  -> the first request served by an added instance; the baseline is the agent's restore
  alone. Target: <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from netkit import plain_haproxy_config

HERE = Path(__file__).resolve().parent
TINY = HERE / "apps" / "tiny"
HOST = "bench.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout: float, what: str, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def http_get(host: str, port: int, path: str = "/", headers: dict[str, str] | None = None,
             timeout: float = 30) -> int:
    import http.client
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


class Net:
    """An agent, an edge and (for throughput) a plain HAProxy, all torn down at exit."""

    def __init__(self, runtime: str) -> None:
        from edgeshot.agent import auth
        self.root = Path(tempfile.mkdtemp(prefix="es-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        t = self.root / "tokens"
        t.mkdir()
        self.agent_tokens = t / "agent.toml"
        self.edge_tokens = t / "edge.toml"
        self.ctl = auth.issue_token(self.agent_tokens, "ctl", [auth.CONTROLLER_AGENT])
        edge_agent = auth.issue_token(self.agent_tokens, "edge", [auth.EDGE_AGENT])
        auth.write_secret(t / "edge-agent.token", edge_agent)
        self.ectl = auth.issue_token(self.edge_tokens, "ctl", [auth.CONTROLLER_EDGE])
        self.runtime = runtime
        pid = os.getpid()
        self.prefix, self.subnet = f"b{pid % 100000}", f"10.237.{pid % 250}.0/24"
        self.agent_port, self.http_port, self.api_port = free_port(), free_port(), free_port()
        self.agent_url = f"http://127.0.0.1:{self.agent_port}"
        self.edge_url = f"http://127.0.0.1:{self.api_port}"
        self.app_dir = self.root / "app"
        shutil.copytree(TINY, self.app_dir)

    # -- processes -----------------------------------------------------------------------
    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.root)
        self.procs.append(p)
        return p

    def start_agent(self) -> None:
        cfg = self.root / "agent.toml"
        cfg.write_text(textwrap.dedent(f"""\
            listen = "127.0.0.1"
            port = {self.agent_port}
            state_dir = "agent-state"
            tokens_file = "{self.agent_tokens}"
            edgepoint = "b"
            server = "s1"
            slot_prefix = "{self.prefix}"
            slot_subnet = "{self.subnet}"
            slots = 8
            access_log = false
            """))
        self.agent = self._spawn([sys.executable, "-m", "edgeshot.cli.agent", "--config",
                                  str(cfg)], self.root / "agent.log")
        wait(lambda: self._ok(self.agent_url + "/v1/health", self.ctl), 30, "the agent")

    def start_edge(self, **extra: object) -> None:
        cfg = {"edgepoint": "b", "listen": "127.0.0.1", "http_port": self.http_port,
               "api_port": self.api_port, "state_dir": "edge-state",
               "tokens_file": str(self.edge_tokens),
               "agent_token_file": str(self.root / "tokens" / "edge-agent.token"),
               "log_level": "WARNING", **extra}
        text = "".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}\n"
                       for k, v in cfg.items())
        text += f'\n[[agents]]\nname = "s1"\nurl = "{self.agent_url}"\n'
        (self.root / "edge.toml").write_text(text)
        self.edge = self._spawn([str(Path(sys.executable).parent / "edgeshot"), "edge",
                                 "--config", str(self.root / "edge.toml")],
                                self.root / "edge.log")
        wait(lambda: self._ok(self.edge_url + "/v1/health", self.ectl), 60, "the edge")

    def _ok(self, url: str, token: str) -> bool:
        import urllib.request
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def run(self, coro):
        return asyncio.run(coro)

    def agent_client(self):
        from edgeshot.agent.client import AgentClient
        return AgentClient(self.agent_url, self.ctl)

    def edge_client(self):
        from edgeshot.edge.client import EdgeClient
        return EdgeClient(self.edge_url, self.ectl)

    # -- the app -------------------------------------------------------------------------
    def spec(self, runtime: str):
        from edgeshot.agent.models import PodSpec, TierSpec, WarmupRequest
        cmd = ("node", "server.js") if runtime == "node" else ("python3", "server.py")
        env = {"UV_USE_IO_URING": "0"} if runtime == "node" else {}
        return PodSpec(app="tiny", version="1", owner="bench", vendor="bench",
                       source_dir=self.app_dir,
                       tiers=(TierSpec(name="web", command=cmd, entry=True, env=env,
                                       cpu="1", memory_mb=256),),
                       warmup=(WarmupRequest(path="/", count=50),))

    def capture(self) -> str:
        from edgeshot.agent.client import AgentError

        async def go(runtime):
            async with self.agent_client() as a:
                return await a.capture(self.spec(runtime), name="tiny-1")
        for runtime in ([self.runtime] if self.runtime != "auto" else ["node", "python"]):
            if runtime == "node" and not shutil.which("node"):
                continue
            try:
                self.run(go(runtime))
                return runtime
            except AgentError as exc:
                print(f"  ({runtime} app not captured: {str(exc)[:200]})", file=sys.stderr)
        raise RuntimeError("no app could be captured")

    def assignment(self, **scaling):
        from edgeshot.edge.models import PlacementAssignment
        from edgeshot.plan import compile_plan
        from edgeshot.spec import load
        policy = self.root / "policy.py"
        policy.write_text(textwrap.dedent(f"""\
            from edgeshot.spec import (SLA, Application, Budget, Controller, Distribution,
                EdgeNetwork, Edgepoint, Local, Owner, Pricing, Routing, Source, Tier)
            network = EdgeNetwork(name="bench", provider=Local(),
                edgepoints=(Edgepoint(name="b", region="eu-central", location="local",
                                      server_type="local"),),
                controller=Controller(location="local", server_type="local"),
                pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001",
                                network_gb="0.01"))
            tiny = Application(name="tiny", version="1", owner=Owner(id="bench"),
                routing=Routing(hosts=("{HOST}",)), source=Source(path="app"),
                tiers=(Tier(name="web", command="python3 server.py"),),
                distribution=Distribution(min=0, max=4),
                sla=SLA(max_response_ms=1000, users_per_instance=8, idle_s=3600),
                budget=Budget(monthly="1000 EUR"))
            """))
        plan = compile_plan(load(policy))
        p = plan.placements[0]
        p = p.model_copy(update={"scaling": p.scaling.model_copy(update=scaling)})
        return PlacementAssignment(placement=p, app=plan.app("tiny"), cost_ceiling=4,
                                   global_share=4)

    def place(self, **scaling) -> None:
        a = self.assignment(**scaling)

        async def go():
            async with self.edge_client() as e:
                await e.set_placements([a])
        self.run(go())

    def reset(self, **scaling) -> None:
        """Take the placement away (its instances stop) and place it again: fresh windows."""
        async def go():
            async with self.edge_client() as e:
                await e.set_placements([])
        self.run(go())
        wait(lambda: not self.instances(), 60, "no instance")
        self.place(**scaling)

    def patch(self, **kw) -> None:
        async def go():
            async with self.edge_client() as e:
                await e.update_placement("tiny/b", **kw)
        self.run(go())

    def ready(self) -> int:
        async def go():
            async with self.edge_client() as e:
                return (await e.load()).placements[0]
        p = self.run(go())
        return p.ready

    def instances(self, state: str = "running"):
        async def go():
            async with self.agent_client() as a:
                return await a.list_instances(state=state)
        return self.run(go())

    def stop_instances(self) -> None:
        async def go():
            async with self.agent_client() as a:
                for i in await a.list_instances():
                    if i.state not in ("stopped", "failed"):
                        await a.stop_instance(i.id)
        self.run(go())

    # -- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        from edgeshot.agent import _pods  # imported at start too: no surprise here
        from edgeshot.agent._slots import SlotPool
        state = self.root / "agent-state"
        pool = SlotPool(state, prefix=self.prefix, subnet=self.subnet, size=8)
        for inst in _pods.list_instances(state):
            if _pods.pid_alive(inst.pid):
                _pods.stop(inst, pool)
            else:
                _pods.release(inst, pool)
        pool.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


# -- wrk ------------------------------------------------------------------------------------
def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes (all their threads), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total / tick


def haproxy_pids(master: int) -> list[int]:
    kids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and _ppid(int(p.name)) == master]
    return [master, *kids]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def wrk(url: str, seconds: float, conns: int = 32, threads: int = 1) -> dict[str, float]:
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency",
                        "-H", f"Host: {HOST}", url], capture_output=True, text=True,
                       timeout=seconds + 60)
    out = r.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk {url}: {out[-500:]} {r.stderr[-500:]}")
    rps = float(m.group(1))
    n = re.search(r"(\d+) requests in", out)
    lat = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: .*", out)
    return {"rps": rps, "p50": _ms(lat["50"]), "p99": _ms(lat["99"]),
            "requests": int(n.group(1)) if n else 0,
            "non2xx": int(errors.group(1)) if errors else 0, "sockerr": sock.group(0) if sock else ""}


def _ms(text: str) -> float:
    v, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def plain_haproxy(net: Net, backend: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = net.root / "plain.cfg"
    cfg.write_text(plain_haproxy_config(port, backend))
    p = net._spawn(["haproxy", "-f", str(cfg)], net.root / "plain.log")
    wait(lambda: _connects(port), 10, "the plain HAProxy")
    return p, port


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# -- benchmarks -----------------------------------------------------------------------------
def bench_throughput(net: Net, rounds: int, seconds: float) -> dict:
    net.place(min=1, max=1)  # one instance: every path reaches the same one
    wait(lambda: net.ready() == 1, 60, "the instance")
    (inst,) = net.instances()
    plain, pport = plain_haproxy(net, inst.address)
    targets = {"direct": f"http://{inst.address}/",
               "plain HAProxy": f"http://127.0.0.1:{pport}/",
               "edgeshot": f"http://127.0.0.1:{net.http_port}/"}
    for url in targets.values():  # warm up every path once
        wrk(url, 1)
    edge_master = int((net.root / "edge-state" / "run" / "haproxy.pid").read_text().split()[0])
    procs = {"direct": lambda: [],
             "plain HAProxy": lambda: [plain.pid],
             "edgeshot": lambda: haproxy_pids(edge_master),
             "edge process": lambda: [net.edge.pid]}
    res: dict[str, list[dict]] = {k: [] for k in targets}
    for r in range(rounds):
        order = list(targets.items())
        order = order[r % 3:] + order[: r % 3]
        for name, url in order:
            before = cpu_seconds(procs[name]())
            edge_before = cpu_seconds(procs["edge process"]())
            w = wrk(url, seconds)
            w["cpu_us"] = (cpu_seconds(procs[name]()) - before) * 1e6 / max(1, w["requests"])
            w["edge_cpu_us"] = (cpu_seconds(procs["edge process"]()) - edge_before) * 1e6 / max(
                1, w["requests"]) if name == "edgeshot" else 0.0
            res[name].append(w)
    plain.send_signal(signal.SIGTERM)
    plain.wait(timeout=10)
    served = {r["svname"]: int(r.get("stot") or 0)
              for r in _stat(net.root / "edge-state" / "run" / "admin.sock")
              if r.get("pxname") == "tiny" and r.get("svname") != "BACKEND"}
    print(f"  (edgeshot sessions per server: {served})")
    out = {}
    for name, runs in res.items():
        out[name] = {k: statistics.median(x[k] for x in runs)
                     for k in ("rps", "p50", "p99", "cpu_us", "edge_cpu_us")}
        out[name]["non2xx"] = sum(x["non2xx"] for x in runs)
        out[name]["runs"] = runs
    return out


def bench_zero(net: Net, rounds: int) -> dict:
    """Scale to zero -> first response via the activator, vs the agent's restore alone."""
    net.reset(min=0, warm_pool=0)
    wait(lambda: net.ready() == 0, 60, "zero instances")
    agent_ms, edge_ms = [], []

    async def agent_restore() -> float:
        async with net.agent_client() as a:
            t0 = time.perf_counter()
            info = await a.create_instance("tiny-1", owner="bench", vendor="bench")
            host, port = info.address.rsplit(":", 1)
            await asyncio.to_thread(http_get, host, int(port), "/")
            ms = (time.perf_counter() - t0) * 1000
            await a.stop_instance(info.id)
            return ms

    for _ in range(rounds):
        agent_ms.append(net.run(agent_restore()))
        time.sleep(0.3)
        t0 = time.perf_counter()
        status = http_get("127.0.0.1", net.http_port, "/", {"Host": HOST})
        edge_ms.append((time.perf_counter() - t0) * 1000)
        assert status == 200, status
        net.reset(min=0, warm_pool=0)  # back to zero, with fresh load windows
    return {"agent restore -> first response": agent_ms,
            "edgeshot: request at zero -> response": edge_ms}


def bench_step(net: Net, rounds: int) -> dict:
    """Load step -> first request served by an added instance."""
    admin = net.root / "edge-state" / "run" / "admin.sock"
    step_ms, restore_ms = [], []
    for _ in range(rounds):
        net.reset(min=1, users_per_instance=8, max=4)
        wait(lambda: len(net.instances()) == 1 and net.ready() == 1, 60, "one instance")
        time.sleep(1.0)
        first = net.instances()[0].id
        t0 = time.perf_counter()
        load = subprocess.Popen(["wrk", "-t1", "-c32", "-d8s", "-H", f"Host: {HOST}",
                                 f"http://127.0.0.1:{net.http_port}/sleep/10"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        served = None
        while time.perf_counter() - t0 < 8:
            for row in _stat(admin):
                if row.get("pxname") == "tiny" and row.get("svname") not in (
                        first, "BACKEND", "edgeshot.activator") and int(row.get("req_tot") or 0):
                    served = (time.perf_counter() - t0) * 1000
                    break
            if served:
                break
            time.sleep(0.01)
        load.wait()
        step_ms.append(served or float("nan"))
        # the added instance's own restore time, as the agent measured it
        for i in net.instances():
            if i.id != first and i.ready_ms:
                restore_ms.append(i.ready_ms)
    return {"load step -> added instance serving": step_ms,
            "agent restore (ready_ms of the added instance)": restore_ms}


def _stat(sock: Path) -> list[dict[str, str]]:
    import csv
    import io
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        return []
    finally:
        s.close()
    return list(csv.DictReader(io.StringIO(data.decode().lstrip("# "))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="throughput,zero,step")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runtime", choices=("auto", "node", "python"), default="auto")
    ap.add_argument("--show-log", action="store_true", help="print the edge's log at the end")
    ap.add_argument("--edge", action="append", default=[], metavar="KEY=JSON",
                    help="an edge configuration value (e.g. log_max_per_s=0)")
    a = ap.parse_args()
    edge_cfg = {k: json.loads(v) for k, v in (x.split("=", 1) for x in a.edge)}
    from edgeshot.agent import _criu, _pods, _slots  # noqa: F401 (needed by the teardown)
    from edgeshot.edge._haproxy import find_haproxy
    missing = [w for w, ok in (("root", os.geteuid() == 0), ("haproxy", find_haproxy()),
                               ("wrk", shutil.which("wrk")), ("criu", _criu.status().usable))
               if not ok]
    if missing:
        print(f"edge_datapath: skipped, needs {', '.join(missing)} (make system, as root)")
        return
    which = set(a.only.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear down on SIGTERM too
    net = Net(a.runtime)
    try:
        net.start_agent()
        runtime = net.capture()
        net.start_edge(**edge_cfg)
        print(f"app: tiny ({runtime}) in a pod; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        if "throughput" in which:
            r = bench_throughput(net, a.rounds, a.seconds)
            print(f"\nthroughput, wrk -t1 -c32, {a.rounds} x {a.seconds:.0f} s rounds, medians:")
            print(f"  {'path':<15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
                  f"{'proxy CPU us/req':>17}")
            for name, v in r.items():
                cpu = "" if name == "direct" else f"{v['cpu_us']:.1f}"
                if name == "edgeshot":
                    cpu += f" (+{v['edge_cpu_us']:.1f} edge process)"
                print(f"  {name:<15} {v['rps']:>9.0f} {v['p50']:>8.2f} {v['p99']:>8.2f} "
                      f"{v['non2xx']:>8} {cpu:>17}")
            pairs = list(zip(r["edgeshot"]["runs"], r["plain HAProxy"]["runs"], strict=True))
            ratios = [x["rps"] / y["rps"] for x, y in pairs]
            deltas = [x["p50"] - y["p50"] for x, y in pairs]
            ratio, dp50 = statistics.median(ratios), statistics.median(deltas)
            print(f"  edgeshot vs plain HAProxy, median of the {len(pairs)} paired rounds: "
                  f"{ratio:.2f}x req/s (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'}), "
                  f"p50 {dp50:+.2f} ms (target <= +0.3: {'met' if dp50 <= 0.3 else 'MISSED'})")
            print("  per round: " + " ".join(f"{x:.2f}x/{d:+.2f}ms"
                                             for x, d in zip(ratios, deltas, strict=True)))
        if "zero" in which:
            r = bench_zero(net, a.rounds)
            print(f"\nscale to zero -> first response, {a.rounds} rounds alternated (ms):")
            for name, v in r.items():
                print(f"  {name:<42} p50 {statistics.median(v):7.1f}  min {min(v):7.1f}  "
                      f"max {max(v):7.1f}")
            (ag, ed) = (statistics.median(v) for v in r.values())
            print(f"  edgeshot - agent: {ed - ag:+.1f} ms (target <= +5 ms: "
                  f"{'met' if ed - ag <= 5 else 'MISSED'})")
        if "step" in which:
            r = bench_step(net, a.rounds)
            print(f"\nload step (32 users, /sleep/10, 8 users per instance), {a.rounds} rounds "
                  "(ms):")
            for name, v in r.items():
                if v:
                    print(f"  {name:<48} p50 {statistics.median(v):7.1f}  max {max(v):7.1f}")
            st = statistics.median(r["load step -> added instance serving"])
            print(f"  target <= 1000 ms: {'met' if st <= 1000 else 'MISSED'}")
    finally:
        if a.show_log:
            print((net.root / "edge.log").read_text(errors="replace")[-6000:])
            print((net.root / "agent.log").read_text(errors="replace")[-4000:])
        net.close()


if __name__ == "__main__":
    main()
