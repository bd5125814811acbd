"""What the network benchmarks share: free ports, a local network's policy file, and
the plain HAProxy they are compared with. (A package, so that `make bench`, which runs
every bench/*.py, does not run it.)"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def local_policy(dir: Path, apps: str, *, name: str, slot_network: str,
                 edgepoints: tuple[tuple[str, str, int], ...]) -> Path:
    """``dir/policy.py``: a local network (free ports) of ``edgepoints`` ((name, region,
    slots per server)), then ``apps`` (policy text)."""
    http, agent, edge, ctl, stats = free_ports(5)
    eps = "".join(
        f'\n                Edgepoint(name="{n}", region="{r}", location="local", '
        f'server_type="local", slots_per_server={slots}),' for n, r, slots in edgepoints)
    text = textwrap.dedent(f'''
        from edgeshot.spec import (SLA, Application, Budget, Controller, Distribution,
            EdgeNetwork, Edgepoint, Local, Owner, Ports, Pricing, Resources, Routing, Source,
            Tier, WarmupRequest)

        network = EdgeNetwork(
            name="{name}", provider=Local(http_port={http}),
            edgepoints=({eps}
            ),
            controller=Controller(location="local", server_type="local"),
            pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
            ports=Ports(agent={agent}, edge={edge}, controller={ctl}, stats={stats}),
            slot_network="{slot_network}",
        )
    ''') + textwrap.dedent(apps)
    path = dir / "policy.py"
    path.write_text(text)
    return path


def plain_haproxy_config(port: int, backend: str, *, keep_alive: bool = False) -> str:
    """The baseline: one hand-written HAProxy on 127.0.0.1:``port`` in front of
    ``backend`` (ip:port)."""
    ka = "\n            option http-keep-alive" if keep_alive else ""
    return textwrap.dedent(f"""\
        global
            maxconn 4096
        defaults
            mode http{ka}
            timeout connect 3s
            timeout client 60s
            timeout server 60s
        frontend plain
            bind 127.0.0.1:{port}
            default_backend app
        backend app
            server s1 {backend}
        """)
