"""Two hops (global dispatcher + edgepoint) vs one plain HAProxy in front of the same instance.

    sudo .venv/bin/python bench/network_two_hops.py [--rounds 3] [--seconds 5] [--conns 32]

A real local network (`edgeshot up`'s machinery): one edgepoint, the controller and its
global dispatcher, a real agent that restores a minimal keep-alive HTTP/1.1 app
(bench/apps/hops, asyncio) into a pod; no simulated latency. Side by side, rounds
alternating, wrk against:

  direct    the instance at its slot address (for reference)
  plain     one hand-written HAProxy in front of that instance (the baseline)
  two hops  the global dispatcher (region maps, chains, affinity, retries) -> the
            edgepoint's HAProxy (routing keys, cleave, version weights) -> the instance

Targets (issue 6): two hops <= +1 ms p50 and >= 0.8x the plain HAProxy's requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeshot.agent.client import AgentClient
from edgeshot.control._localnet import LocalNetwork
from edgeshot.control.client import ControllerClient
from netkit import free_ports, local_policy, plain_haproxy_config

HERE = Path(__file__).resolve().parent
# The instance: a minimal keep-alive HTTP/1.1 server (asyncio), so that proxies are measured.
APP = HERE / "apps" / "hops"
HOST = "tiny.test"


def policy(dir: Path) -> Path:
    return local_policy(dir, f'''
        tiny = Application(
            name="tiny", version="1", owner=Owner(id="bench"), routing=Routing(hosts=("{HOST}",)),
            source=Source(path="{APP}"),
            tiers=(Tier(name="web", command="python3 app.py",
                        resources=Resources(cpu="1", memory_mb=64)),),
            warmup=(WarmupRequest(path="/", count=5),),
            distribution=Distribution(min=1, max=1),
            sla=SLA(max_response_ms=1000, users_per_instance=10000, idle_s=3600),
            budget=Budget(monthly="1000 EUR"),
        )
    ''', name="bench-hops", slot_network="10.199.0.0/16", edgepoints=(("eu", "eu-central", 2),))


def wrk(url: str, seconds: float, conns: int, headers: dict[str, str]) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds:g}s", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    r = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if m is None:
        raise RuntimeError(f"wrk {url}: {r.stdout[-400:]} {r.stderr[-400:]}")
    lat = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)", r.stdout, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    return {"rps": float(m.group(1)), "p50": _ms(lat["50"]), "p99": _ms(lat["99"]),
            "bad": int(bad.group(1)) if bad else 0}


def _ms(text: str) -> float:
    v, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def plain_haproxy(dir: Path, backend: str) -> tuple[subprocess.Popen[bytes], int]:
    (port,) = free_ports(1)
    cfg = dir / "plain.cfg"
    cfg.write_text(plain_haproxy_config(port, backend, keep_alive=True))
    p = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the plain HAProxy did not start")


async def ready(net: LocalNetwork) -> str:
    """Wait until the app is routed and its instance answers; return its slot address."""
    async with ControllerClient(net.manifest.controller_url, net.token()) as c:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = await c.status()
            if all(a["primary"] and a["routed"] for a in st["apps"]):
                break
            await asyncio.sleep(0.3)
        else:
            raise RuntimeError("the app did not start")
    for _ in range(100):  # through both hops: the edge restores the instance
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                            f"Host: {HOST}", "-H", "X-Edgeshot-Region: eu-central",
                            net.manifest.entry_url + "/"], capture_output=True, text=True)
        if r.stdout == "200":
            break
        time.sleep(0.2)
    agent = next(iter(net.manifest.agents.values()))
    async with AgentClient(agent["url"], net.token("controller-agent")) as a:
        insts = [i for i in await a.list_instances() if i.state == "running" and i.address]
    if not insts:
        raise RuntimeError("no running instance")
    return insts[0].address  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=32)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeshot-bench-hops-"))
    net = LocalNetwork.create(policy(work), work / "state", simulate_latency=False)
    plain = None
    try:
        net.start()
        backend = asyncio.run(ready(net))
        plain, port = plain_haproxy(work, backend)
        targets = {
            "direct": (f"http://{backend}/", {}),
            "plain": (f"http://127.0.0.1:{port}/", {"Host": HOST}),
            "two hops": (net.manifest.entry_url + "/", {"Host": HOST,
                                                       "X-Edgeshot-Region": "eu-central"}),
        }
        for url, headers in targets.values():  # warm every path
            wrk(url, 1, 4, headers)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for _ in range(args.rounds):
            for name, (url, headers) in targets.items():
                runs[name].append(wrk(url, args.seconds, args.conns, headers))
    finally:
        if plain is not None:
            plain.terminate()
            plain.wait()
        net.stop()
        left = net.leftovers()
        net.remove()
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")}
           for k, v in runs.items()}
    base = med["plain"]
    t = Table(title=f"network_two_hops: wrk -t2 -c{args.conns} -d{args.seconds:g}s, "
                    f"median of {args.rounds} alternating rounds")
    for col in ("path", "req/s", "p50 ms", "p99 ms", "vs plain HAProxy", "non-2xx"):
        t.add_column(col)
    for name, m in med.items():
        bad = sum(r["bad"] for r in runs[name])
        t.add_row(name, f"{m['rps']:.0f}", f"{m['p50']:.2f}", f"{m['p99']:.2f}",
                  f"{m['rps'] / base['rps']:.2f}x, {m['p50'] - base['p50']:+.2f} ms p50", str(bad))
    Console().print(t)
    two = med["two hops"]
    ok_rps = two["rps"] >= 0.8 * base["rps"]
    ok_p50 = two["p50"] - base["p50"] <= 1.0
    print(f"target >= 0.8x throughput: {'met' if ok_rps else 'MISSED'} "
          f"({two['rps'] / base['rps']:.2f}x); target <= +1 ms p50: "
          f"{'met' if ok_p50 else 'MISSED'} ({two['p50'] - base['p50']:+.2f} ms)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(other work on the machine competes with the four processes measured)")
    if left:
        print("left behind:", left, file=sys.stderr)


if __name__ == "__main__":
    main()
