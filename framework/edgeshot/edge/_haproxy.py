"""HAProxy for one edgepoint: configuration from jinja2, the process, its runtime API.

Packets stay in HAProxy; Python decides and pushes decisions in (docs/architecture.md, "The
path of a request"). Three parts:

* ``render(HAProxyConf)``: the configuration and its pattern files (routing-key maps,
  one regex file per cleave route, read raw so no escaping can go wrong). Apps are
  found by routing key (exact host + path prefix, exact host, wildcard or any host
  + prefix, most specific first); a request naming no app here gets 404 and goes
  nowhere (never an open proxy). Each app has a backend (its instances, weighted
  per version, the activator as backup, dynamic cookies when it declares affinity)
  and an origin backend for its origin routes.
* ``HAProxyProcess``: master-worker mode (``-W -S master.sock``), started in its own
  session so that it outlives an edge process that crashes (the next one adopts it
  through its pid file and master socket); seamless reloads through the master CLI
  after ``haproxy -c``; soft stop.
* ``Runtime``: the admin socket (the commands are ``edgeshot._haproxy_runtime``'s,
  shared with the global dispatcher). HAProxy 2.6 refuses ``namespace`` and ``cookie`` on
  servers added at runtime, so instances are servers at their slot's ``ip:port`` and
  affinity uses dynamic cookies (``enable dynamic-cookie backend`` after each add:
  a hash of address and port, i.e. a user is pinned to a slot).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from edgeshot import _haproxy_runtime as _runtime
from edgeshot._haproxy_runtime import (
    HAProxyError,
    check_config,
    find_haproxy,
    parse_stat,
)
from edgeshot._haproxy_runtime import write_atomic as _atomic

__all__ = [
    "HAProxyError", "Route", "Server", "Origin", "AppConf", "HAProxyConf", "Rendered",
    "render", "write_config", "Runtime", "HAProxyProcess", "find_haproxy", "SERVER_OPTIONS",
    "ACTIVATOR", "origin_from_url", "backend_name",
]

ACTIVATOR = "edgeshot.activator"  # the backup server's name in every app backend
# Health checks (the backend's httpchk when the app declares a health path; "timeout
# check" 5 s, three failures: a saturated instance answers slowly, it is not dead) plus
# passive observation: ten connection errors in a row mark an instance down, so a
# killed instance stops receiving requests at once; retry-on + redispatch retry what
# never reached it.
# Connection reuse: HAProxy 2.6 gives servers added at runtime no idle-connection pool
# (pool-max-conn 0, pool-purge-delay 0: a new connection to the instance per request,
# measured 4x slower than a static server here); these restore the static defaults.
SERVER_OPTIONS = ("pool-max-conn -1 pool-purge-delay 5s "
                  "check inter 1s fastinter 250ms downinter 1s fall 3 rise 1 "
                  "observe layer4 error-limit 10 on-error mark-down")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_METHOD = re.compile(r"^[A-Z]{1,16}$|^\*$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^\*$")


# -- configuration -----------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """A cleave route: method ("*" any) and the anchored regex HAProxy's path_reg uses."""

    method: str
    regex: str
    to: str  # "edge" | "origin"


@dataclass(frozen=True)
class Server:
    name: str  # the instance id
    address: str  # "ip:port" of its slot
    weight: int = 100
    draining: bool = False


@dataclass(frozen=True)
class Origin:
    address: str  # host:port
    host: str
    tls: bool
    path_prefix: str | None


def origin_from_url(url: str) -> Origin:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise HAProxyError(f"origin URL {url!r} must be http:// or https:// with a host")
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.hostname
    if not re.match(r"^[A-Za-z0-9.:-]+$", host):
        raise HAProxyError(f"origin host {host!r} is not a host name or address")
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    prefix = u.path.rstrip("/") or None
    if prefix is not None and not re.match(r"^/[A-Za-z0-9._~/-]*$", prefix):
        raise HAProxyError(f"origin path {u.path!r}: only letters, digits and ._~/- allowed")
    return Origin(address=addr, host=host, tls=tls, path_prefix=prefix)


def backend_name(app: str) -> str:
    return app


@dataclass(frozen=True)
class AppConf:
    """One app served at this edgepoint (a placement's data path)."""

    name: str
    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    routes: tuple[Route, ...] = ()  # most specific first
    default_route: str = "edge"
    origin: Origin | None = None
    affinity: bool = False
    cookie_key: str = ""
    health_path: str | None = None
    servers: tuple[Server, ...] = ()
    # a staged version: requests whose X-Edgeshot-Stage token hashes to one of these go
    # to its own backend (the controller's instances), never the public one
    stage_hashes: tuple[str, ...] = ()
    stage_servers: tuple[Server, ...] = ()

    @property
    def backend(self) -> str:
        return backend_name(self.name)

    @property
    def stage_backend(self) -> str:
        return f"{self.name}.stage"

    @property
    def origin_backend(self) -> str:
        return f"{self.name}.origin"

    @property
    def rules(self) -> tuple[Route, ...]:
        """Routes in order, without the trailing ones the default route covers anyway."""
        rs = list(self.routes)
        while rs and rs[-1].to == self.default_route:
            rs.pop()
        return tuple(rs)


@dataclass(frozen=True)
class HAProxyConf:
    edgepoint: str
    listen: str
    http_port: int
    run_dir: Path
    apps: tuple[AppConf, ...] = ()
    log_port: int = 0  # the edge process's UDP log receiver on 127.0.0.1
    log_every: int = 1  # 1 request in N is logged (the edge adapts N at run time)
    maxconn: int | None = None  # None: HAProxy derives it from the file-descriptor limit
    nbthread: int | None = None
    timeout_connect_ms: int = 3000
    timeout_client_s: int = 60
    timeout_server_s: int = 60
    timeout_http_request_s: int = 10
    timeout_keep_alive_s: int = 10
    timeout_queue_s: int = 30
    hard_stop_after_s: int = 60
    server_options: str = SERVER_OPTIONS
    # SHA-256 of the dispatcher's hop token: requests with it keep their region and
    # forwarding headers; None: every request is treated as a user's own
    hop_sha256: str | None = None

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.run_dir / "master.sock"

    @property
    def activator_socket(self) -> Path:
        return self.run_dir / "activator.sock"

    @property
    def promex_socket(self) -> Path:
        return self.run_dir / "promex.sock"

    @property
    def maps_dir(self) -> Path:
        return self.run_dir / "maps"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    # routing keys, most specific first ------------------------------------------------
    @property
    def keys_exact(self) -> list[tuple[str, str]]:
        """(regex over "host|path", app) for exact hosts with a path prefix."""
        out = []
        for app in self.apps:
            if app.path_prefix and app.path_prefix != "/":
                for h in app.hosts:
                    if not h.startswith("*") and h:
                        out.append((len(app.path_prefix), _key_regex(h, app.path_prefix),
                                    app.name))
        return [(r, a) for _, r, a in sorted(out, key=lambda t: -t[0])]

    @property
    def hosts_exact(self) -> list[tuple[str, str]]:
        return [(h, app.name) for app in self.apps
                if not app.path_prefix or app.path_prefix == "/"
                for h in app.hosts if not h.startswith("*")]

    @property
    def keys_wild(self) -> list[tuple[str, str]]:
        """Wildcard hosts (longest suffix first), then any host, each by prefix length."""
        out = []
        for app in self.apps:
            prefix = app.path_prefix or "/"
            hosts = app.hosts or ("*",)
            for h in hosts:
                if h.startswith("*"):
                    rank = (0 if h.startswith("*.") else 1, -len(h), -len(prefix))
                    out.append((rank, _key_regex(h, prefix), app.name))
        return [(r, a) for _, r, a in sorted(out, key=lambda t: t[0])]


def _key_regex(host: str, prefix: str) -> str:
    if host == "*":
        h = r"[^|]*"
    elif host.startswith("*."):
        h = r"[^|]+" + re.escape(host[1:])
    else:
        h = re.escape(host)
    p = prefix.rstrip("/")
    tail = r"(/|$)" if p else "/"
    return rf"^{h}\|{re.escape(p)}{tail}"


@dataclass
class Rendered:
    text: str
    files: dict[str, str] = field(default_factory=dict)  # name in maps_dir -> content


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("edgeshot.edge", "templates"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          autoescape=False)


def _check(conf: HAProxyConf) -> None:
    names = set()
    for app in conf.apps:
        if not re.match(r"^[a-z][a-z0-9-]{0,62}$", app.name):
            raise HAProxyError(f"app name {app.name!r} cannot name an HAProxy backend")
        if app.name in names:
            raise HAProxyError(f"app {app.name!r} appears twice")
        names.add(app.name)
        for h in app.hosts:
            if not _HOST.match(h):
                raise HAProxyError(f"app {app.name}: host {h!r} is not a lowercase host name")
        if app.path_prefix and not re.match(r"^/[A-Za-z0-9._~!$&'()+,;=:@%/-]*$",
                                            app.path_prefix):
            raise HAProxyError(f"app {app.name}: bad path prefix {app.path_prefix!r}")
        if app.health_path and not re.match(r"^/[A-Za-z0-9._~/?=&%-]*$", app.health_path):
            raise HAProxyError(f"app {app.name}: bad health path {app.health_path!r}")
        if app.affinity and not re.match(r"^[A-Za-z0-9]{8,64}$", app.cookie_key):
            raise HAProxyError(f"app {app.name}: the dynamic cookie key must be 8-64 "
                               "letters or digits")
        for r in app.routes:
            if not _METHOD.match(r.method) or r.to not in ("edge", "origin"):
                raise HAProxyError(f"app {app.name}: bad route {r}")
            if "\n" in r.regex:
                raise HAProxyError(f"app {app.name}: a route regex spans lines")
        for h in app.stage_hashes:
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise HAProxyError(f"app {app.name}: a stage token hash is not a SHA-256 digest")
        for s in (*app.servers, *app.stage_servers):
            if not _SAFE_NAME.match(s.name) or not re.match(r"^[0-9.]+:\d+$|^\[[0-9a-f:]+\]:\d+$",
                                                             s.address):
                raise HAProxyError(f"app {app.name}: bad server {s.name} {s.address}")


def render(conf: HAProxyConf) -> Rendered:
    """The configuration text and its pattern files (names relative to ``maps_dir``)."""
    _check(conf)
    files = {
        "hosts.map": "".join(f"{h} {a}\n" for h, a in conf.hosts_exact),
        "keys_exact.map": "".join(f"{r} {a}\n" for r, a in conf.keys_exact),
        "keys_wild.map": "".join(f"{r} {a}\n" for r, a in conf.keys_wild),
    }
    for app in conf.apps:
        for k, r in enumerate(app.rules):
            files[f"{app.name}.{k}.re"] = r.regex + "\n"
        if app.stage_hashes:
            files[f"{app.name}.stage.map"] = "".join(h + "\n" for h in app.stage_hashes)
    text = _ENV.get_template("haproxy.cfg.j2").render(c=conf)
    return Rendered(text, files)


def write_config(conf: HAProxyConf, rendered: Rendered, path: Path | None = None) -> Path:
    """Write the pattern files and the configuration (atomically, each file)."""
    conf.maps_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keep = set(rendered.files)
    for old in conf.maps_dir.iterdir():
        if old.name not in keep and old.suffix in (".map", ".re"):
            old.unlink(missing_ok=True)
    for name, content in rendered.files.items():
        _atomic(conf.maps_dir / name, content)
    target = path or conf.config_path
    _atomic(target, rendered.text)
    return target


# -- runtime API -----------------------------------------------------------------------
class Runtime(_runtime.Runtime):
    """The runtime API of an edgepoint's HAProxy (admin or master socket): instances are
    added with ``SERVER_OPTIONS``; the request-log sampling rate is a variable of the
    configuration (``proc.log_every``)."""

    server_options = SERVER_OPTIONS

    async def set_log_every(self, n: int) -> None:
        """Log 1 request in ``n`` from now on (a process-wide variable the frontend's
        sampling rule reads; no reload)."""
        await self.check("experimental-mode on", f"set var proc.log_every int({int(n)})")


# -- the process -------------------------------------------------------------------------
@dataclass
class Worker:
    pid: int
    reloads: int
    current: bool


class HAProxyProcess:
    """One HAProxy master (and its workers) for an edgepoint, under ``run_dir``."""

    def __init__(self, conf: HAProxyConf, binary: str) -> None:
        self.conf = conf
        self.binary = binary
        self.pidfile = conf.run_dir / "haproxy.pid"
        self.out = conf.run_dir / "haproxy.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.master = Runtime(conf.master_socket, master=True)
        self.admin = Runtime(conf.admin_socket)
        self.adopted = False

    # -- checks ------------------------------------------------------------------------------
    def validate(self, path: Path) -> None:
        check_config(self.binary, path)

    def version(self) -> str:
        r = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        m = re.search(r"version (\S+)", r.stdout)
        return m.group(1) if m else "unknown"

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The master's pid when it is running (ours or adopted)."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if _is_our_haproxy(pid, self.conf.config_path) else None

    def running(self) -> bool:
        return self.pid is not None

    async def start(self, timeout: float = 15.0) -> None:
        """Adopt the HAProxy a previous edge process left running, else start one."""
        self.conf.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.pid is not None and await self._answers():
            self.adopted = True
            return
        self.validate(self.conf.config_path)
        for sock in (self.conf.admin_socket, self.conf.master_socket):
            sock.unlink(missing_ok=True)
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-W", "-S", f"{self.conf.master_socket},mode,600",
                 "-f", str(self.conf.config_path), "-p", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.conf.run_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HAProxyError(f"HAProxy exited with {self.proc.returncode}: "
                                   f"{self._tail()}")
            if await self._answers():
                return
            await asyncio.sleep(0.02)
        raise HAProxyError(f"HAProxy did not answer within {timeout} s: {self._tail()}")

    async def _answers(self) -> bool:
        """Both the worker's admin socket and the master CLI answer."""
        try:
            info = await self.admin.show_info()
            if "Pid" not in info:
                return False
            (procs,) = await self.master.run("show proc")
            return "worker" in procs
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False

    def _tail(self) -> str:
        try:
            return self.out.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    async def workers(self) -> list[Worker]:
        (raw,) = await self.master.run("show proc")
        out, section = [], ""
        for ln in raw.splitlines():
            if ln.startswith("#"):
                section = ln
                continue
            parts = ln.split()
            if len(parts) >= 3 and parts[0].isdigit() and parts[1] == "worker":
                reloads = int(parts[2]) if parts[2].isdigit() else 0
                out.append(Worker(int(parts[0]), reloads, "old" not in section))
        # the current worker is the one with the fewest reloads seen (0)
        if out:
            cur = min(out, key=lambda w: w.reloads)
            for w in out:
                w.current = w is cur
        return out

    async def current_worker(self) -> int:
        info = await self.admin.show_info()
        return int(info["Pid"])

    async def reload(self, timeout: float = 15.0) -> int:
        """Seamless reload with the configuration on disk; returns the new worker's pid."""
        self.validate(self.conf.config_path)
        before = await self.current_worker()
        await self.master.oneshot("reload")  # the master re-executes: it hangs up
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            try:
                pid = await self.current_worker()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, KeyError):
                continue
            if pid != before:
                return pid
        raise HAProxyError(f"reload did not complete within {timeout} s: {self._tail()}")

    async def worker_stats(self, pid: int) -> list[dict[str, str]] | None:
        """``show stat`` of one worker (current or old) through the master; None when it
        is gone."""
        try:
            (raw,) = await self.master.run(f"@!{pid} show stat")
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None
        if not raw.lstrip().startswith("# pxname"):
            return None
        return parse_stat(raw)

    async def stop(self, timeout: float = 10.0) -> None:
        """Soft stop (finish in-flight requests), then hard."""
        pid = self.pid
        if pid is None:
            self._reap()
            return
        for sig, wait in ((signal.SIGUSR1, timeout), (signal.SIGTERM, 3.0),
                          (signal.SIGKILL, 3.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self._reap()
                if not _alive(pid):
                    break
                await asyncio.sleep(0.02)
            if not _alive(pid):
                break
        self._reap()
        for p in (self.pidfile, self.conf.admin_socket, self.conf.master_socket):
            p.unlink(missing_ok=True)

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"


def _is_our_haproxy(pid: int, config: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return (_alive(pid) and any(b"haproxy" in c for c in cmd[:1])
            and str(config).encode() in cmd)
