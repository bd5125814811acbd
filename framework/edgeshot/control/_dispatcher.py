"""The global dispatcher's data path: one HAProxy process, rendered and driven by the controller.

What changes rarely (apps, their routing keys, placements, edgepoint addresses)
is rendered into the configuration and static maps; a change there is a
seamless master-worker reload. What changes every tick (the routing table:
chains per app and region, where affinity may stay, redispatch weights) is
pushed through the runtime API into maps and server weights, no reload. Map
files are rewritten too, so that a reload or restart starts from the last table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from .._haproxy_runtime import (
    HAProxyError,
    Runtime,
    check_config,
    find_haproxy,
    map_text,
    read_map,
    write_if_changed,
)
from ._decide import ANY_REGION, RoutingTable, UserRegion
from ._geo import distance_km, rtt_ms

log = logging.getLogger("edgeshot.dispatcher")

COOKIE = "edgeshot_ep"
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("edgeshot.control", "templates"),
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_MANY = 400  # more changed entries than this: replace the whole map atomically


@dataclass(frozen=True)
class DispatchApp:
    """An app as the dispatcher routes it (what its routing key is, where it is placed)."""

    name: str
    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    affinity: bool = False
    edgepoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class DispatchEdgepoint:
    name: str
    region: str
    latitude: float
    longitude: float
    address: str  # host:port of its HAProxy, where the dispatcher sends users
    public_url: str  # where a 307 sends users (redirect mode)


@dataclass
class DispatcherConfig:
    state_dir: Path
    bind: str  # "127.0.0.1:8080"
    stats: bool = True  # HAProxy's stats page and Prometheus exporter, on a 0600 unix socket
    redirect: bool = False  # 307 to the chosen edgepoint instead of proxying
    simulate_latency: bool = False  # local networks: add each region's RTT to responses
    regions: tuple[UserRegion, ...] = ()
    geo: dict[str, str] = field(default_factory=dict)  # CIDR -> region, for clients without header
    haproxy: str = "haproxy"
    nbthread: int | None = None
    maxconn: int = 20000
    retries: int = 3
    check_inter_ms: int = 500
    timeout_connect_ms: int = 500
    hop_token: str | None = None  # sent to the edges in X-Edgeshot-Hop: "this is the dispatcher"


class DispatcherError(Exception):
    pass


class GlobalDispatcher:
    """Render, run and drive the dispatcher's HAProxy."""

    def __init__(self, config: DispatcherConfig) -> None:
        self.config = config
        self.dir = Path(config.state_dir)
        self.maps = self.dir / "maps"
        self.cfg_path = self.dir / "dispatcher.cfg"
        self.socket = _socket_path(self.dir / "dispatcher.sock")
        # the stats and /metrics: never on a TCP port anyone could reach unauthenticated
        self.stats_socket = _socket_path(self.dir / "stats.sock")
        self.lua = self.dir / "delay.lua"
        self.runtime = Runtime(self.socket)
        self.proc: asyncio.subprocess.Process | None = None
        self.apps: tuple[DispatchApp, ...] = ()
        self.edgepoints: dict[str, DispatchEdgepoint] = {}
        self._pushed: dict[str, dict[str, str]] = {"routes": {}, "sticky": {}}
        self._weights: dict[tuple[str, str], int] = {}
        self._table: RoutingTable | None = None

    # ------------------------------------------------------------------ rendering

    def render(self) -> str:
        c = self.config
        apps = []
        for app in self.apps:
            servers = [{"name": ep, "address": self.edgepoints[ep].address,
                        "weight": self._weights.get((app.name, ep), 100)}
                       for ep in app.edgepoints if ep in self.edgepoints]
            apps.append({"name": app.name, "affinity": app.affinity, "servers": servers})
        return _TEMPLATES.get_template("dispatcher.cfg.j2").render(
            socket=self.socket, lua=self.lua, maps=self.maps, bind=c.bind,
            stats_bind=f"unix@{self.stats_socket} mode 600" if c.stats else None, redirect=c.redirect, simulate_latency=c.simulate_latency,
            apps=apps, cookie=COOKIE, retries=c.retries, check_inter_ms=c.check_inter_ms,
            timeout_connect_ms=c.timeout_connect_ms, maxconn=_maxconn(c.maxconn),
            nbthread=c.nbthread, hop_token=c.hop_token)

    def static_maps(self) -> dict[str, dict[str, str]]:
        hosts: dict[str, str] = {}
        wild: dict[str, str] = {}
        paths: dict[str, str] = {}
        affinity: dict[str, str] = {}
        for app in self.apps:
            prefix = (app.path_prefix or "/").rstrip("/") + "/"
            for h in app.hosts:
                if h.startswith("*."):
                    wild[h[1:]] = app.name
                else:
                    hosts[h + prefix] = app.name
            if not app.hosts:
                paths[prefix] = app.name
            if app.affinity:
                affinity[app.name] = "1"
        # map_beg takes the first match in file order: longest prefixes first.
        by_len = lambda d: dict(sorted(d.items(), key=lambda kv: (-len(kv[0]), kv[0])))  # noqa: E731
        regions = {r.name: "1" for r in self.config.regions}
        delay: dict[str, str] = {}
        if self.config.simulate_latency:
            for r in self.config.regions:
                for ep in self.edgepoints.values():
                    km = distance_km(r.latitude, r.longitude, ep.latitude, ep.longitude)
                    delay[f"{r.name}@{ep.name}"] = str(round(rtt_ms(km)))
        return {
            "hosts": by_len(hosts), "wildcards": by_len(wild), "paths": by_len(paths),
            "affinity": affinity, "regions": regions, "geo": dict(self.config.geo),
            "public": {ep.name: ep.public_url.rstrip("/") for ep in self.edgepoints.values()},
            "delay": delay,
        }

    def configure(self, apps: list[DispatchApp], edgepoints: list[DispatchEdgepoint]) -> bool:
        """Set apps and edgepoints; write the configuration and static maps.

        Returns True when the running process must reload to see the change.
        """
        self.apps = tuple(sorted(apps, key=lambda a: a.name))
        self.edgepoints = {e.name: e for e in edgepoints}
        self.maps.mkdir(parents=True, exist_ok=True)
        changed = False
        for name, entries in self.static_maps().items():
            changed |= write_if_changed(self.maps / f"{name}.map", map_text(entries))
        for name in ("routes", "sticky"):
            path = self.maps / f"{name}.map"
            if not path.exists():
                write_if_changed(path, "")
        if self.config.simulate_latency:
            src = Path(__file__).with_name("templates") / "delay.lua"
            changed |= write_if_changed(self.lua, src.read_text())
        changed |= write_if_changed(self.cfg_path, self.render())
        return changed

    # ------------------------------------------------------------------ process

    def check_config(self) -> str:
        """``haproxy -c`` on the configuration; the binary's path."""
        exe = find_haproxy(self.config.haproxy)
        if exe is None:
            raise DispatcherError("haproxy is not installed (run `make system` as root)")
        try:
            check_config(exe, self.cfg_path)
        except HAProxyError as exc:
            raise DispatcherError(f"dispatcher configuration: {exc}") from None
        return exe

    async def start(self) -> None:
        """Start HAProxy (master-worker, in the foreground of this process's children)."""
        exe = self.check_config()
        self.socket.unlink(missing_ok=True)
        log_file = open(self.dir / "haproxy.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = await asyncio.create_subprocess_exec(
            exe, "-W", "-db", "-f", str(self.cfg_path), "-p", str(self.dir / "haproxy.pid"),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        log_file.close()
        await self._wait_ready(None)

    async def _worker_pid(self) -> str | None:
        try:
            return (await self.runtime.show_info()).get("Pid")
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None

    async def _wait_ready(self, old_worker: str | None, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise DispatcherError(f"haproxy exited ({self.proc.returncode}); see "
                                      f"{self.dir / 'haproxy.log'}")
            pid = await self._worker_pid()
            if pid is not None and pid != old_worker:
                return
            await asyncio.sleep(0.05)
        raise DispatcherError(f"haproxy did not answer on {self.socket} within {timeout:.0f} s")

    async def reload(self) -> None:
        """Seamless master-worker reload (after configure() returned True)."""
        if self.proc is None:
            return await self.start()
        self.check_config()
        old = await self._worker_pid()
        self.proc.send_signal(signal.SIGUSR2)
        await self._wait_ready(old)
        # The new worker read the map files, which hold the last table; weights come
        # from the rendered configuration.
        for name in self._pushed:
            self._pushed[name] = read_map(self.maps / f"{name}.map")

    async def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGUSR1)  # soft stop: finish the requests in flight
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.socket.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    # ------------------------------------------------------------------ the table

    async def apply(self, table: RoutingTable) -> int:
        """Push a routing table (only what changed); returns the number of entries written."""
        routes = {f"{app}@{region}": "|".join(chain)
                  for app, per in table.chains.items()
                  for region, chain in zip(table.regions, per, strict=True) if chain}
        sticky = {f"{app}@{ep}": "1" for app, eps in table.sticky.items() for ep in sorted(eps)}
        written = 0
        for name, entries in (("routes", routes), ("sticky", sticky)):
            written += await self._push_map(name, entries)
        written += await self._push_weights(table)
        self._table = table
        return written

    async def _push_map(self, name: str, entries: dict[str, str]) -> int:
        path = self.maps / f"{name}.map"
        before = self._pushed[name]
        if before == entries:
            return 0
        write_if_changed(path, map_text(entries))
        if not self.running:
            self._pushed[name] = dict(entries)
            return len(entries)
        set_ = {k: v for k, v in entries.items() if before.get(k) != v}
        gone = [k for k in before if k not in entries]
        if len(set_) + len(gone) > _MANY:
            await self.runtime.replace_map(path, entries)
        else:
            cmds = [f"set map {path} {k} {v}" if k in before else f"add map {path} {k} {v}"
                    for k, v in set_.items()]
            cmds += [f"del map {path} {k}" for k in gone]
            await self.runtime.check(*cmds)
        self._pushed[name] = dict(entries)
        return len(set_) + len(gone)

    async def _push_weights(self, table: RoutingTable) -> int:
        # Weights matter only when HAProxy redispatches a failed request: accepting
        # placements take it; those at capacity only when nothing else is left.
        cmds = []
        for app in self.apps:
            w = table.weights.get(app.name, {})
            for ep in app.edgepoints:
                if ep not in self.edgepoints:
                    continue
                weight = 100 if w.get(ep, 0) else 1
                if self._weights.get((app.name, ep), 100) != weight:
                    cmds.append(f"set server app_{app.name}/{ep} weight {weight}")
                    self._weights[(app.name, ep)] = weight
        if cmds and self.running:
            await self.runtime.check(*cmds)
        return len(cmds)

    async def health(self) -> dict[str, bool]:
        """Edgepoints HAProxy's own checks see up (any app backend), by name."""
        up: dict[str, bool] = {}
        for app in self.apps:
            try:
                rows = await self.runtime.servers_state(f"app_{app.name}")
            except (TimeoutError, OSError, HAProxyError):
                continue
            for row in rows:
                name = row["srv_name"]
                up[name] = up.get(name, False) or row.get("srv_op_state") == "2"
        return up

    async def counters(self) -> dict[str, dict[str, int]]:
        """Per edgepoint: requests and 5xx the dispatcher sent there (all apps)."""
        out: dict[str, dict[str, int]] = {}
        for row in await self.runtime.show_stat():
            if not row.get("pxname", "").startswith("app_") or row.get("svname") in (
                    "FRONTEND", "BACKEND"):
                continue
            c = out.setdefault(row["svname"], {"requests": 0, "errors": 0})
            c["requests"] += int(row.get("stot") or 0)
            c["errors"] += int(row.get("hrsp_5xx") or 0)
        return out


def _socket_path(wanted: Path) -> Path:
    """A Unix socket path holds at most 107 bytes: deep state directories get a short
    path of their own under /tmp (named after the directory, so it stays the same)."""
    if len(str(wanted)) <= 100:
        return wanted
    import hashlib
    import tempfile
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"edgeshot-{digest}.sock"


def _maxconn(wanted: int) -> int:
    """HAProxy needs ~2 descriptors per connection and refuses to start above the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    return max(256, min(wanted, (limit - 200) // 2))




__all__ = ["ANY_REGION", "COOKIE", "DispatchApp", "DispatchEdgepoint", "DispatcherConfig",
           "DispatcherError", "GlobalDispatcher", "find_haproxy"]
