"""Rollback: from the command to all traffic on the old version (target <= 5 s).

    sudo .venv/bin/python bench/network_rollback.py [--rounds 4]

A real local network: two edgepoints (eu, us), the controller and its dispatcher, real
agents restoring the probe app (tests/control/apps/probe answers with its version in
X-Probe-Version). Versions 1.0 and 1.1 are both captured and distributed; 1.1 serves.
New users keep coming from both regions (8 at a time, no cookies) while, side by side:

  rollback   `edgeshot rollback probe` (the API call): the previous version becomes the
             primary again — one call per edgepoint, its appshot is already everywhere
  redeploy   the baseline: what a rollback costs without the deployment center's help,
             deploying the old code again as a new version (capture, distribution,
             switch)

Each figure is the time from the command to the moment after which every request that
started got the target version. Each round: a rollback, then the baseline (which also
makes the next rollback go back to the old version).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from edgeshot.control._config import CanarySection
from edgeshot.control._localnet import LocalNetwork
from edgeshot.control.client import ControllerClient
from netkit import local_policy

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "tests" / "control" / "apps" / "probe"
HOST = "probe.test"


def policy(dir: Path) -> Path:
    return local_policy(dir, f'''
        probe = Application(
            name="probe", version="1.0", owner=Owner(id="bench"), routing=Routing(hosts=("{HOST}",)),
            source=Source(path="{APP}"),
            tiers=(Tier(name="web", command="python3 app.py", reseed_signal="SIGUSR2",
                        env={{"APP_VERSION": "1.0"}}, resources=Resources(cpu="0.2", memory_mb=48)),),
            warmup=(WarmupRequest(path="/", count=2),),
            distribution=Distribution(min=1, max=3),
            sla=SLA(max_response_ms=1000, users_per_instance=20, idle_s=600),
            budget=Budget(monthly="1000 EUR"),
        )
    ''', name="bench-rollback", slot_network="10.198.0.0/16",
                        edgepoints=(("eu", "eu-central", 4), ("us", "us-east", 4)))


def version_plan(net: LocalNetwork, version: str) -> dict:
    app = net.plan().app("probe")
    tiers = tuple(t.model_copy(update={"env": {**t.env, "APP_VERSION": version}})
                  for t in app.tiers)
    return app.model_copy(update={"version": version, "tiers": tiers}).model_dump(mode="json")


class Traffic:
    """New users from both regions, recording (start time, version) of every answer."""

    def __init__(self, net: LocalNetwork) -> None:
        self.net = net
        self.log: list[tuple[float, str]] = []
        self.errors = 0
        self.stop = asyncio.Event()

    async def run(self, conc: int = 8) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
            async def user(region: str) -> None:
                while not self.stop.is_set():
                    t = time.monotonic()
                    try:
                        async with s.get(self.net.manifest.entry_url + "/", headers={
                                "Host": HOST, "X-Edgeshot-Region": region},
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
                            await r.read()
                            if r.status == 200:
                                self.log.append((t, r.headers.get("X-Probe-Version", "?")))
                            else:
                                self.errors += 1
                    except aiohttp.ClientError:
                        self.errors += 1
            await asyncio.gather(*(user(("eu-central", "us-east")[i % 2]) for i in range(conc)))

    async def switched(self, t0: float, version: str, quiet: float = 2.0,
                       timeout: float = 300.0) -> float:
        """Seconds from t0 until every request that started afterwards got `version`
        (known once `quiet` seconds of answers all had it)."""
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            after = [(t, v) for t, v in self.log if t >= t0]
            wrong = [t for t, v in after if v != version]
            last_wrong = max(wrong) if wrong else t0
            right_since = [t for t, v in after if t > last_wrong]
            if right_since and time.monotonic() - last_wrong >= quiet and len(right_since) >= 10:
                return last_wrong - t0
        raise RuntimeError(f"traffic never all on {version}")


async def bench(net: LocalNetwork, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"rollback": [], "rollback API call": [], "redeploy": []}
    async with ControllerClient(net.manifest.controller_url, net.token()) as c:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = await c.status()
            if all(a["primary"] and a["routed"] for a in st["apps"]):
                break
            await asyncio.sleep(0.3)
        await c.deploy("probe", plan=version_plan(net, "1.1"))  # 1.1 serves, 1.0 previous
        traffic = Traffic(net)
        task = asyncio.create_task(traffic.run())
        await traffic.switched(time.monotonic(), "1.1")
        for k in range(rounds):
            t0 = time.monotonic()
            res = await c.rollback("probe")
            out["rollback API call"].append(time.monotonic() - t0)
            out["rollback"].append(await traffic.switched(t0, res["to"]))
            # baseline: the same kind of switch without the deployment center's help, by
            # deploying the code just left again as a new version (capture, distribute);
            # the next rollback then returns to res["to"]
            label = f"{res['from'].split('-r')[0]}-r{k}"
            t0 = time.monotonic()
            await c.deploy("probe", plan=version_plan(net, label))
            out["redeploy"].append(await traffic.switched(t0, label))
        traffic.stop.set()
        await task
        out["errors"] = [float(traffic.errors)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeshot-bench-rollback-"))
    net = LocalNetwork.create(policy(work), work / "state", simulate_latency=False,
                              canary=CanarySection(interval_s=2),
                              edge_options={"stable_window_s": 10.0, "scale_down_delay_s": 5.0})
    try:
        net.start()
        res = asyncio.run(bench(net, args.rounds))
    finally:
        net.stop()
        left = net.leftovers()
        net.remove()
    errors = int(res.pop("errors")[0])
    base = statistics.median(res["redeploy"])
    t = Table(title=f"network_rollback: command -> all new requests on the target version, "
                    f"{args.rounds} rounds")
    for col in ("switch", "median s", "max s", "vs redeploy (baseline)", "target", "met"):
        t.add_column(col)
    for name, vals in res.items():
        med = statistics.median(vals)
        target = "<= 5 s" if name == "rollback" else "—"
        met = ("yes" if max(vals) <= 5.0 else "MISSED") if name == "rollback" else "—"
        t.add_row(name, f"{med:.2f}", f"{max(vals):.2f}", f"{med / base:.2f}x", target, met)
    Console().print(t)
    print(f"failed requests during the whole run: {errors}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if left:
        print("left behind:", left)


if __name__ == "__main__":
    main()
