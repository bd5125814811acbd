"""What the dashboards' tests need: a local network of two owners' apps, traffic whose
every answer the test keeps, the raw sources it computes figures from (usage records,
the agents' own state and counters), and a headless Chromium."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from _netkit import TWO_EDGEPOINTS, regions_of, write_network_policy
from edgeshot.agent.client import AgentClient
from edgeshot.control import billing
from edgeshot.edge.client import EdgeClient

APP_DIR = Path(__file__).resolve().parent / "app"

# Prices that make a minute of test traffic cost real money: network bytes (counted by
# the edges, exactly) at 2 cents a kilobyte; CPU and memory cheap enough for the budget to
# pay for instances (their price sets the plan's cost ceiling).
PRICING = ('Pricing(cpu_second="0.00001", memory_gb_second="0.000001", '
           'network_gb="20000", storage_gb_hour="0.001")')


@dataclass(frozen=True)
class AppDef:
    name: str
    owner: str
    vendor: str
    idle_s: int = 300
    warm_pool: int = 0
    sla_ms: int = 200
    users_per_instance: int = 10
    service_ms: int = 30
    cap_n: int = 64
    cpu: str = "0.25"
    budget: str = "100 EUR"
    extra: str = ""  # more Application(...) arguments, e.g. load_test=...

    @property
    def host(self) -> str:
        return f"{self.name}.test"


def write_policy(d: Path, apps: list[AppDef], *, edgepoints=TWO_EDGEPOINTS,
                 slots: int = 4) -> Path:
    regions = regions_of(edgepoints)
    app_text = ""
    for a in apps:
        app_text += textwrap.dedent(f'''
            {a.name.replace("-", "_")} = Application(
                name="{a.name}", version="1.0", owner=Owner(id="{a.owner}"), vendor="{a.vendor}",
                routing=Routing(hosts=("{a.host}",)),
                source=Source(path="{APP_DIR}"),
                tiers=(Tier(name="web", command="python3 app.py", reseed_signal="SIGUSR2",
                            env={{"SERVICE_MS": "{a.service_ms}", "CAP_N": "{a.cap_n}"}},
                            resources=Resources(cpu="{a.cpu}", memory_mb=64)),),
                warmup=(WarmupRequest(path="/", count=2),),
                distribution=Distribution(regions={regions!r}, min=0, max=2, global_max=4),
                sla=SLA(max_response_ms={a.sla_ms}, users_per_instance={a.users_per_instance},
                        idle_s={a.idle_s}, warm_pool={a.warm_pool}),
                budget=Budget(monthly="{a.budget}"),
                {a.extra}
            )
        ''')
    return write_network_policy(d, app_text, name="dash", pricing=PRICING, subnets=(200, 40),
                                edgepoints=edgepoints, slots=slots)


def tune_controller(state: Path, **metering: Any) -> None:
    """Metering pulls faster than its production default (the test waits for it)."""
    from edgeshot.control._config import ControllerConfig
    path = state / "controller.toml"
    cfg = ControllerConfig.load(path)
    cfg = cfg.model_copy(update={"metering": cfg.metering.model_copy(update=metering)})
    path.write_text(cfg.to_toml())


# ---------------------------------------------------------------------- traffic


@dataclass
class Sent:
    """Every request the test sent and what came back."""

    # (app, edgepoint, region, status) -> count
    counts: Counter = field(default_factory=Counter)
    ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # GET /, 200
    all_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    def requests(self, app: str | None = None, edgepoint: str | None = None,
                 region: str | None = None) -> int:
        return sum(n for (a, e, r, _s), n in self.counts.items()
                   if (app is None or a == app) and (edgepoint is None or e == edgepoint)
                   and (region is None or r == region))

    def status(self, code_class: int, app: str | None = None,
               edgepoint: str | None = None) -> int:
        return sum(n for (a, e, _r, s), n in self.counts.items()
                   if s // 100 == code_class and (app is None or a == app)
                   and (edgepoint is None or e == edgepoint))


async def send(sent: Sent, public_url: str, edgepoint: str, app: AppDef, region: str,
               n: int, path: str = "/", concurrency: int = 4) -> None:
    """`n` requests to one edgepoint's data path, as users of `region`."""
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:
        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                async with s.get(public_url + path, headers={
                        "Host": app.host, "X-Edgeshot-Region": region, **sent.headers},
                        timeout=aiohttp.ClientTimeout(total=60)) as r:
                    await r.read()
                    status = r.status
                ms = (time.perf_counter() - t0) * 1000
                sent.counts[(app.name, edgepoint, region, status)] += 1
                sent.all_ms[app.name].append(ms)
                if status == 200 and path == "/":
                    sent.ms[app.name].append(ms)

        await asyncio.gather(*(one() for _ in range(n)))


async def until_routable(sent: Sent, public_url: str, edgepoint: str, app: AppDef, region: str,
                         timeout: float = 60.0) -> None:
    """Until the edgepoint routes the app (its HAProxy may still be reloading into the
    placement): probes of /healthz; the answered ones are counted like any request (a
    404 is the frontend's and is in no history)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            t0 = time.perf_counter()
            async with s.get(public_url + "/healthz", headers={
                    "Host": app.host, "X-Edgeshot-Region": region, **sent.headers},
                    timeout=aiohttp.ClientTimeout(total=60)) as r:
                await r.read()
                if r.status != 404:
                    sent.counts[(app.name, edgepoint, region, r.status)] += 1
                    sent.all_ms[app.name].append((time.perf_counter() - t0) * 1000)
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{edgepoint} does not route {app.name}")
            await asyncio.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s), math.ceil(q / 100 * len(s))) - 1)]


# ---------------------------------------------------------------------- raw sources


async def raw_usage(net: Any) -> list[Any]:
    """Every usage record, from every agent and edge process itself."""
    token = net.token("operator")
    out: list[Any] = []
    for a in net.manifest.agents.values():
        async with AgentClient(a["url"], token) as agent:
            async for page in agent.iter_usage():
                out += page.records
    for e in net.manifest.edges.values():
        async with EdgeClient(e["url"], token) as edge:
            async for page in edge.iter_usage():
                out += page.records
    return out


def bill_of(records: list[Any], pricing: Any, month: str, cursors: dict[str, int] | None = None
            ) -> billing.Bill:
    """billing.bill over raw records (those up to each source's cursor, when given)."""
    usage = []
    for r in records:
        if cursors is not None and r.seq > cursors.get(r.source, 0):
            continue
        usage.append(billing.Usage(
            owner=r.owner, vendor=r.vendor, app=r.app, start=r.start, end=r.end,
            cpu_seconds=Decimal(repr(r.cpu_seconds)),
            memory_gb_seconds=Decimal(repr(r.memory_gb_seconds)),
            disk_read_bytes=r.disk_read_bytes, disk_write_bytes=r.disk_write_bytes,
            storage_gb_hours=Decimal(repr(r.storage_gb_hours)), net_in_bytes=r.net_in_bytes,
            net_out_bytes=r.net_out_bytes, requests=r.requests))
    return billing.bill(usage, pricing, month)


_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+-]+)$')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus text exposition's samples of `name` with these labels."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or m["name"] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m["value"])
    return total


async def agents_state(net: Any) -> dict[str, dict[str, Any]]:
    """Per server: capacity, running instances per app, restore/snapshot counters — from
    the agents themselves."""
    token = net.token("operator")
    out = {}
    for server, a in net.manifest.agents.items():
        async with AgentClient(a["url"], token) as agent:
            cap = await agent.capacity()
            insts = await agent.list_instances()
            text = await agent.metrics()
        out[server] = {
            "edgepoint": a["edgepoint"], "capacity": cap,
            "running": Counter(i.app for i in insts if i.state == "running"),
            "snapshotted": Counter(i.app for i in insts if i.state == "snapshotted"),
            "restores": {app: metric_sum(text, "edgeshot_agent_restores_total", app=app,
                                         result="ok") for app in {i.app for i in insts}},
            "metrics": text,
        }
    return out


# ---------------------------------------------------------------------- browser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1360,1800")


class Browser:
    """Debian's chromium through chromium-driver (selenium), with a fresh profile."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not download
        self.profile = tempfile.mkdtemp(prefix="edgeshot-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for f in CHROMIUM_FLAGS:
            opts.add_argument(f)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}
        self.driver = webdriver.Chrome(options=opts, service=Service(
            shutil.which("chromedriver") or "/usr/bin/chromedriver", env=env))
        self.driver.set_page_load_timeout(60)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def fresh(self) -> None:
        """Forget every cookie (log out, in effect)."""
        self.driver.delete_all_cookies()

    def login(self, base: str, token: str) -> str:
        from selenium.webdriver.common.by import By
        d = self.driver
        d.get(base + "/dash/login")
        d.find_element(By.ID, "token").send_keys(token)
        d.find_element(By.ID, "login").click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the form's answer is a new page
            try:
                if not d.find_elements(By.ID, "token") or d.find_elements(By.CLASS_NAME,
                                                                            "error"):
                    break
            except Exception:  # the old page went away under the lookup
                pass
            time.sleep(0.1)
        return d.current_url

    def figure(self, key: str) -> str:
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-k="{key}"]').text.strip()

    def figures(self) -> dict[str, str]:
        from selenium.webdriver.common.by import By
        return {e.get_attribute("data-k"): e.text.strip()
                for e in self.driver.find_elements(By.CSS_SELECTOR, "[data-k]")}

    def resources(self) -> list[str]:
        return self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".concat([location.href])")

    def screenshot(self, path: Path) -> Path:
        d = self.driver
        height = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(1360, min(6000, max(900, int(height) + 40)))
        d.save_screenshot(str(path))
        return path


def number(text: str) -> float:
    """'1,234' / '38 ms' / '12.5 %' -> the number."""
    m = re.search(r"-?[0-9][0-9,]*(\.[0-9]+)?", text)
    if not m:
        raise ValueError(f"no number in {text!r}")
    return float(m.group(0).replace(",", ""))
