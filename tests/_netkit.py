"""Policy files for the tests that run a real local network (tests/billing, tests/control,
tests/dashboards): free ports, slot subnets no other test of the run uses, the hello app;
and ``running``, a started network that is stopped and checked for leftovers afterwards.

Each suite's own kit (``billing/netkit.py``, ``control/netfix.py``,
``dashboards/netkit.py``) writes its apps and calls ``write_network_policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_N = [0]  # policies written by this process: each gets its own name and slot subnet

# The edgepoints of most tests: (name, region[, slots per server]).
TWO_EDGEPOINTS: tuple[tuple, ...] = (("eu", "eu-central"), ("us", "us-east"))


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def as_dispatcher(net) -> dict[str, str]:
    """The header that makes a request to an edgepoint's data path count as the network's
    dispatcher's (its X-Edgeshot-Region kept): for tests that play users of a region."""
    return {"X-Edgeshot-Hop": net.token("dispatcher-hop")}


def regions_of(edgepoints: Sequence[tuple]) -> tuple[str, ...]:
    return tuple(e[1] for e in edgepoints)


def hello_app(regions: Sequence[str], *, affinity: bool = False, min_: int = 0, max_: int = 2,
              global_max: int = 4, sla_ms: int = 500, users_per_instance: int = 10,
              idle_s: int = 600, budget: str = "100 EUR") -> str:
    """The policy text of examples/hello as the app ``hello`` (host hello.test)."""
    cleave = "\n            cleave=Cleave(affinity=True)," if affinity else ""
    return textwrap.dedent(f'''
        hello = Application(
            name="hello", version="1.0", owner=Owner(id="acme"), vendor="acme-isv",
            routing=Routing(hosts=("hello.test",)),
            source=Source(path="{REPO / 'examples' / 'hello'}"),
            tiers=(Tier(name="web", command="python3 app.py", reseed_signal="SIGUSR2",
                        resources=Resources(cpu="0.25", memory_mb=64)),),
            warmup=(WarmupRequest(path="/", count=2),),{cleave}
            distribution=Distribution(regions={tuple(regions)!r}, min={min_}, max={max_},
                                      global_max={global_max}),
            sla=SLA(max_response_ms={sla_ms}, users_per_instance={users_per_instance}, idle_s={idle_s}),
            budget=Budget(monthly="{budget}"),
        )
    ''')


def write_network_policy(d: Path, apps: str, *, name: str, pricing: str,
                         subnets: tuple[int, int], edgepoints: Sequence[tuple] = TWO_EDGEPOINTS,
                         servers: int = 1, slots: int = 4) -> Path:
    """``d/policy.py``: a local network of ``edgepoints`` ((name, region[, slots]), each
    with ``servers`` servers) on free ports, then ``apps`` (policy text). ``name``: the
    network's name prefix; ``pricing``: a ``Pricing(...)`` expression; ``subnets``:
    (first, count) of the second octets of the slot subnets 10.X.0.0/16 this suite uses
    (suites use disjoint ones, so that they can run at the same time)."""
    _N[0] += 1
    http, agent, edge, ctl, stats = free_ports(5)
    first, count = subnets
    slot_net = f"10.{first + (os.getpid() + _N[0]) % count}.0.0/16"
    eps = ",\n                ".join(
        f'Edgepoint(name="{e[0]}", region="{e[1]}", location="local", server_type="local", '
        f"servers={servers}, slots_per_server={e[2] if len(e) > 2 else slots})"
        for e in edgepoints)
    text = textwrap.dedent(f'''
        from edgeshot.spec import (SLA, Application, Budget, Cleave, Controller, Distribution,
            EdgeNetwork, Edgepoint, LoadTest, Local, Owner, PassCriteria, Ports, Pricing,
            Resources, Routing, Source, Tier, WarmupRequest, WeightedPath)

        network = EdgeNetwork(
            name="{name}{os.getpid() % 10000}x{_N[0]}",
            provider=Local(http_port={http}),
            edgepoints=(
                {eps},
            ),
            controller=Controller(location="local", server_type="local"),
            pricing={pricing},
            ports=Ports(agent={agent}, edge={edge}, controller={ctl}, stats={stats}),
            slot_network="{slot_net}",
        )
    ''') + apps
    path = d / "policy.py"
    path.write_text(text)
    return path


@contextlib.contextmanager
def running(n, *, apps: int | None = None, timeout: float = 240) -> Iterator:
    """Start the local network ``n`` (a ``LocalNetwork``), wait until every app (``apps`` of
    them, when given) has a primary version the dispatcher routes, and yield it; afterwards
    stop it and assert that nothing is left behind. A network that does not start fails
    with its events and the end of the controller's log."""
    try:
        n.start()
        asyncio.run(_serving(n, apps, timeout))
        yield n
    finally:
        if (n.state_dir / "processes.json").exists():
            n.stop()
        left = n.leftovers()
        assert left == [], left


async def _serving(n, apps: int | None, timeout: float) -> None:
    from edgeshot.control.client import ControllerClient
    async with ControllerClient(n.manifest.controller_url, n.token()) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await c.status()
            if st["apps"] and (apps is None or len(st["apps"]) == apps) and \
                    all(a["primary"] and a["routed"] for a in st["apps"]):
                return
            await asyncio.sleep(0.3)
        events = [f"{e['kind']}: {e['message']}" for e in await c.events(limit=1000)]
    log = (n.state_dir / "logs" / "controller.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"the apps did not start within {timeout:.0f} s: {events}\n{log}")
