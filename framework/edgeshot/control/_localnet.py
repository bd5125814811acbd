"""The embedded local network: every process of a network on this machine.

`LocalNetwork.create(policy)` compiles the policy (a `Local` network, or any
network's topology with `local=True`) and writes everything its processes need
into one state directory: the plan, tokens (hashes for the services, secrets
0600 for their callers), one agent configuration per server (its own
127.0.N.k address, slot subnet and netns prefix), one edge process per
edgepoint on 127.0.N.1, the controller with the global dispatcher on
127.0.0.1. `start()` runs them as detached processes and records their pids in
`processes.json`; `stop()` (any later process: `edgeshot down`) stops every
instance through the agents, then the processes, destroys the agents' slot
pools and checks that no process, namespace or mount is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeshot._config_file import toml_text
from edgeshot.agent import auth
from edgeshot.plan import Plan, compile_plan, read_plan, write_plan
from edgeshot.spec import Controller as SpecController
from edgeshot.spec import Local, Spec, load

from ._config import CanarySection, ControllerConfig, DispatcherSection

MANIFEST = "network.json"
PROCESSES = "processes.json"


class NetworkError(Exception):
    pass


def as_local(spec: Spec, http_port: int | None = None) -> Spec:
    """Any network's topology, rehearsed on this machine: same edgepoints, regions,
    servers per edgepoint and apps, every server on a loopback address."""
    net = spec.network
    if net.provider.kind == "local" and http_port is None:
        return spec
    port = http_port or (net.provider.http_port if net.provider.kind == "local" else 8080)
    state = net.provider.state_dir if net.provider.kind == "local" else ".state"
    eps = tuple(e.model_copy(update={"location": "local", "server_type": "local"})
                for e in net.edgepoints)
    local_net = net.model_copy(update={
        "provider": Local(http_port=port, state_dir=state), "edgepoints": eps,
        "controller": SpecController(location="local", server_type="local")})
    return spec.model_copy(update={"network": local_net})


@dataclass
class Proc:
    name: str  # "agent eu-1", "edge eu", "controller"
    kind: str
    argv: list[str]
    pid: int | None = None
    log: str = ""
    health_url: str | None = None


@dataclass
class Manifest:
    """What `up` wrote: enough for `down`, `status` and the demo to find everything."""

    network: str
    policy: str
    state_dir: str
    plan: str
    controller_url: str
    entry_url: str | None
    dashboard_url: str
    tokens: dict[str, str]  # name -> secret file
    agents: dict[str, dict[str, Any]]  # server -> {url, state_dir, slot_prefix, slot_subnet, slots}
    edges: dict[str, dict[str, Any]]  # edgepoint -> {url, public_url, config}
    processes: list[Proc] = field(default_factory=list)
    edge_note: str | None = None
    created: float = field(default_factory=time.time)

    def save(self, state_dir: Path) -> None:
        _write_secret_file(state_dir / MANIFEST, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, state_dir: Path) -> Manifest:
        path = Path(state_dir) / MANIFEST
        if not path.exists():
            raise NetworkError(f"no network in {state_dir} (no {MANIFEST}); run `edgeshot up`")
        data = json.loads(path.read_text())
        data["processes"] = [Proc(**p) for p in data.get("processes", [])]
        return cls(**data)


def _private(fn: Any) -> Any:
    """Files the wrapped call creates are its user's only (0600, directories 0700): the
    state holds token hashes, databases, configurations and logs."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        old = os.umask(0o077)
        try:
            return fn(*args, **kwargs)
        finally:
            os.umask(old)
    return run


def _agent_tokens(edgepoint: str) -> str:
    """The tokens file of an edgepoint's agents (under tokens/): the controller's, the
    operator's and that edgepoint's edge process's token — never another edge's."""
    return f"agent-{edgepoint}.toml"


def _tag(state_dir: Path) -> str:
    """Three letters from the state directory, so that the netns prefixes of two networks
    on one machine differ (17,576 tags; a prefix is the tag and the server's number)."""
    h = hashlib.sha256(str(state_dir.resolve()).encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return "".join(alphabet[b % 26] for b in h[:3])


def edge_available() -> bool:
    """Whether this tree has the edge process (edgeshot.edge.service)."""
    import importlib.util
    return importlib.util.find_spec("edgeshot.edge.service") is not None


class LocalNetwork:
    def __init__(self, state_dir: Path, manifest: Manifest) -> None:
        self.state_dir = Path(state_dir)
        self.manifest = manifest

    # ------------------------------------------------------------------ files

    @classmethod
    @_private
    def create(cls, policy: str | os.PathLike[str], state_dir: str | os.PathLike[str], *,
               local: bool = False, http_port: int | None = None,
               simulate_latency: bool = True, canary: CanarySection | None = None,
               tick_s: float = 1.0, agent_options: dict[str, Any] | None = None,
               edge_options: dict[str, Any] | None = None,
               spec: Spec | None = None) -> LocalNetwork:
        policy = Path(policy).resolve()
        spec = spec or load(policy)
        if spec.network.provider.kind != "local" and not local:
            raise NetworkError(f"{policy}: network {spec.network.name!r} runs on "
                               f"{spec.network.provider.kind}; add --local to rehearse its "
                               "topology on this machine")
        spec = as_local(spec, http_port)
        plan = compile_plan(spec)
        state = Path(state_dir).resolve()
        if (state / PROCESSES).exists() and _alive(_read_procs(state)):
            raise NetworkError(f"a network is already running from {state}; "
                               f"`edgeshot down --state {state}` first")
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        write_plan(plan, state / "plan.json")
        tokens = cls._tokens(state, plan)
        agents = cls._agent_configs(state, plan, tokens, agent_options or {})
        edges, edge_note = cls._edge_configs(state, plan, tokens, edge_options or {})
        ctl = plan.controller
        controller_url = f"http://{ctl.address}:{ctl.ports['controller']}"
        cfg = ControllerConfig(
            state_dir=state / "controller", plan=state / "plan.json", base_dir=Path(spec.base_dir),
            listen=ctl.address or "127.0.0.1", port=ctl.ports["controller"],
            tokens_file=state / "tokens" / "controller.toml",
            agent_token_file=Path(tokens["controller-agent"]),
            edge_token_file=Path(tokens["controller-edge"]),
            edges={ep: e["url"] for ep, e in edges.items()},
            agents={s: a["url"] for s, a in agents.items()}, tick_s=tick_s,
            dispatcher=DispatcherSection(simulate_latency=simulate_latency,
                                         hop_token_file=Path(tokens["dispatcher-hop"])),
            canary=canary or CanarySection())
        (state / "controller.toml").write_text(cfg.to_toml())
        manifest = Manifest(
            network=plan.network, policy=str(policy), state_dir=str(state),
            plan=str(state / "plan.json"), controller_url=controller_url,
            entry_url=f"http://{ctl.address}:{ctl.ports['http']}",
            dashboard_url=controller_url + "/dash", tokens=tokens, agents=agents, edges=edges,
            edge_note=edge_note)
        manifest.save(state)
        return cls(state, manifest)

    @staticmethod
    def _tokens(state: Path, plan: Plan) -> dict[str, str]:
        tdir, sdir = state / "tokens", state / "secrets"
        tdir.mkdir(exist_ok=True, mode=0o700)
        sdir.mkdir(exist_ok=True, mode=0o700)
        secrets: dict[str, str] = {}

        def issue(file: str, name: str, scopes: list[str], secret: str | None = None) -> None:
            path = sdir / f"{secret or name}.token"
            if path.exists():  # one token, accepted by several services
                tok = auth.read_secret(path)
                records = auth.read_token_file(tdir / file)[0] if (tdir / file).exists() else []
                rec = auth.TokenRecord(name=name, sha256=auth.token_hash(tok), scopes=tuple(scopes))
                records = [r for r in records if r.name != name] + [rec]
                _write_secret_file(tdir / file, auth.render_token_file(records))
            else:
                auth.issue_token(tdir / file, name, scopes, secret_file=path)
            secrets[secret or name] = str(path)

        for ep in plan.edgepoints:  # each edgepoint's agents: their own edge's token only
            issue(_agent_tokens(ep.name), "controller-agent", [auth.CONTROLLER_AGENT])
            issue(_agent_tokens(ep.name), f"edge-agent-{ep.name}", [auth.EDGE_AGENT])
            issue(_agent_tokens(ep.name), "operator", [auth.OPERATOR])
        issue("edge.toml", "controller-edge", [auth.CONTROLLER_EDGE])
        issue("edge.toml", "operator", [auth.OPERATOR])
        issue("controller.toml", "operator", [auth.OPERATOR])
        for file in (*(_agent_tokens(ep.name) for ep in plan.edgepoints), "edge.toml",
                     "controller.toml"):  # what Prometheus scrapes with
            issue(file, "metrics", [auth.METRICS])
        hop = sdir / "dispatcher-hop.token"  # the dispatcher's proof to the edges
        if not hop.exists():
            auth.write_secret(hop, auth.new_token())
        secrets["dispatcher-hop"] = str(hop)
        for owner in sorted({a.owner for a in plan.apps}):
            issue("controller.toml", f"owner-{owner}", [auth.owner_scope(owner)])
        for vendor in sorted({a.vendor for a in plan.apps}):
            issue("controller.toml", f"vendor-{vendor}", [auth.vendor_scope(vendor)])
        return secrets

    @staticmethod
    def _agent_configs(state: Path, plan: Plan, tokens: dict[str, str],
                       options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        tag = _tag(state)
        out = {}
        for i, s in enumerate(plan.servers):
            d = state / "agents" / s.name
            d.mkdir(parents=True, exist_ok=True)
            if i >= 0x1000:
                raise NetworkError("a local network has at most 4,096 servers")
            prefix = f"{tag}{i:x}"
            cfg = {"listen": s.address, "port": s.ports["agent"], "state_dir": str(d / "state"),
                   "edgepoint": s.edgepoint, "server": s.name,
                   "tokens_file": str(state / "tokens" / _agent_tokens(s.edgepoint or "")),
                   "slot_subnet": s.slot_subnet, "slot_prefix": prefix, "slots": s.slots,
                   "access_log": False, **options}
            (d / "agent.toml").write_text(toml_text(cfg))
            out[s.name] = {"url": f"http://{s.address}:{s.ports['agent']}", "config": str(d / "agent.toml"),
                           "state_dir": str(d / "state"), "slot_prefix": prefix,
                           "slot_subnet": s.slot_subnet, "slots": s.slots, "edgepoint": s.edgepoint}
        return out

    @staticmethod
    def _edge_configs(state: Path, plan: Plan, tokens: dict[str, str], options: dict[str, Any]
                      ) -> tuple[dict[str, dict[str, Any]], str | None]:
        from . import _edge_http
        out = {}
        for ep in plan.edgepoints:
            host = next(s for s in plan.servers if s.name == ep.edge_host)
            d = state / "edges" / ep.name
            d.mkdir(parents=True, exist_ok=True)
            out[ep.name] = {"url": f"http://{host.address}:{host.ports['edge']}",
                            "public_url": f"http://{host.address}:{host.ports['http']}",
                            "config": str(d / "edge.toml"), "state_dir": str(d / "state")}
        note = _edge_http.write_edge_configs(state, plan, tokens, out, options)
        return out, note

    # ------------------------------------------------------------------ processes

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str]) -> LocalNetwork:
        state = Path(state_dir).resolve()
        return cls(state, Manifest.read(state))

    def token(self, name: str = "operator") -> str:
        return auth.read_secret(self.manifest.tokens[name])

    def plan(self) -> Plan:
        return read_plan(self.manifest.plan)

    def _spawn(self, name: str, kind: str, argv: list[str], health_url: str | None,
               cwd: Path) -> Proc:
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True, mode=0o700)
        log = logs / f"{name.replace(' ', '-')}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("EDGESHOT_STATE", None)
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as f:
            # the agent keeps its umask: its pods' files are for their own users (issue 13)
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                 start_new_session=True, umask=-1 if kind == "agent" else 0o077)
        proc = Proc(name=name, kind=kind, argv=argv, pid=p.pid, log=str(log),
                    health_url=health_url)
        self.manifest.processes.append(proc)
        _write_procs(self.state_dir, self.manifest.processes)
        self.manifest.save(self.state_dir)
        return proc

    def start(self, timeout: float = 90.0, progress: Any = None,
              services: tuple[str, ...] = ("agent", "edge", "controller")) -> None:
        """Agents, edge processes and the controller, all at once (each waits for the
        others it needs: edges retry their agents, the controller captures once the agents
        answer and gives each edge its placements when it first answers); returns once
        all answer their health checks."""
        say = progress or (lambda _msg: None)
        py = sys.executable
        try:
            if "agent" in services:
                for server, a in self.manifest.agents.items():
                    self._spawn(f"agent {server}", "agent",
                                [py, "-m", "edgeshot.cli.agent", "--config", a["config"]],
                                a["url"] + "/v1/health", Path(a["config"]).parent)
            edges = "edge" in services and self.manifest.edge_note is None
            if edges:
                from ._edge_http import edge_argv
                for ep, e in self.manifest.edges.items():
                    self._spawn(f"edge {ep}", "edge", edge_argv(py, e["config"]),
                                e["url"] + "/v1/health", Path(e["config"]).parent)
            if "controller" in services:
                self._spawn("controller", "controller",
                            [py, "-m", "edgeshot.control.server", "--config",
                             str(self.state_dir / "controller.toml")],
                            self.manifest.controller_url + "/v1/health", self.state_dir)
            if "agent" in services:
                self._wait_all("agent", timeout, self.token("operator"))
                say(f"{len(self.manifest.agents)} agent(s) up")
            if edges:
                self._wait_all("edge", timeout, self.token("operator"))
                say(f"{len(self.manifest.edges)} edge process(es) up")
            elif "edge" in services:
                say(f"edge processes not started: {self.manifest.edge_note}")
            if "controller" in services:
                self._wait_all("controller", timeout, None)
                say("controller up")
        except BaseException:
            self.stop()
            raise

    def _wait_all(self, kind: str, timeout: float, token: str | None) -> None:
        deadline = time.monotonic() + timeout
        for p in [p for p in self.manifest.processes if p.kind == kind]:
            while True:
                if not _pid_alive(p.pid):
                    tail = Path(p.log).read_text(errors="replace")[-3000:] if p.log else ""
                    raise NetworkError(f"{p.name} exited at start:\n{tail}")
                if p.health_url and _http_ok(p.health_url, token):
                    break
                if time.monotonic() > deadline:
                    raise NetworkError(f"{p.name} not answering at {p.health_url} after "
                                       f"{timeout:.0f} s; see {p.log}")
                time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> list[str]:
        """Stop everything `start` started; returns what was found left behind and removed."""
        procs = _read_procs(self.state_dir) or self.manifest.processes
        # 1. the controller first (it stops the dispatcher), then the edges
        for kind in ("controller", "edge"):
            _terminate([p for p in procs if p.kind == kind], grace)
        # 2. every instance, through the agents that run them
        with contextlib.suppress(Exception):
            _run_coroutine(self._stop_instances)
        _terminate([p for p in procs if p.kind == "agent"], grace)
        leftovers = self._cleanup()
        (self.state_dir / PROCESSES).unlink(missing_ok=True)
        self.manifest.processes = []
        self.manifest.save(self.state_dir)
        return leftovers

    async def _stop_instances(self) -> None:
        from edgeshot.agent.client import AgentClient, AgentError
        token = self.token("controller-agent")

        async def one(url: str) -> None:
            async with AgentClient(url, token, timeout=10, retries=0) as agent:
                try:
                    insts = await agent.list_instances()
                except AgentError:
                    return
                await asyncio.gather(*(agent.stop_instance(i.id) for i in insts
                                       if i.state not in ("stopped",)),
                                     return_exceptions=True)

        await asyncio.gather(*(one(a["url"]) for a in self.manifest.agents.values()))

    def _cleanup(self) -> list[str]:
        """Pods, slots and processes the agents did not take down with them."""
        leftovers: list[str] = []
        root = os.geteuid() == 0
        for server, a in self.manifest.agents.items():
            st = Path(a["state_dir"])
            try:
                from edgeshot.agent import _pods
                from edgeshot.agent._slots import SlotPool
                pool = (SlotPool(st, prefix=a["slot_prefix"], subnet=a["slot_subnet"],
                                 size=a["slots"]) if root and st.exists() else None)
                if st.exists():
                    for inst in _pods.list_instances(st):
                        if _pods.pid_alive(inst.pid):
                            leftovers.append(f"instance {inst.id} on {server}")
                            _pods.stop(inst, pool)
                        else:
                            _pods.release(inst, pool)
                if pool is not None:
                    pool.destroy()
            except Exception as exc:  # report, never stop the clean-up
                leftovers.append(f"{server}: clean-up error {exc}")
        for pid in _procs_under(self.state_dir):
            leftovers.append(f"process {pid} ({_cmdline(pid)[:80]})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if root:
            tags = [a["slot_prefix"] for a in self.manifest.agents.values()]
            out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                name = line.split()[0] if line.split() else ""
                if any(name.startswith(f"{t}-") for t in tags):
                    leftovers.append(f"netns {name}")
                    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(self.state_dir) in mounts:
            leftovers.append("mounts under the state directory")
        return leftovers

    def leftovers(self) -> list[str]:
        """What of this network still exists (processes, namespaces, mounts): [] after down."""
        found = [f"process {pid} ({_cmdline(pid)[:80]})" for pid in _procs_under(self.state_dir)]
        found += [f"{p.name} (pid {p.pid})" for p in self.manifest.processes if _pid_alive(p.pid)]
        if os.geteuid() == 0:
            tags = [a["slot_prefix"] for a in self.manifest.agents.values()]
            out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            found += [f"netns {ln.split()[0]}" for ln in out.splitlines()
                      if ln.split() and any(ln.split()[0].startswith(f"{t}-") for t in tags)]
            links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
            found += [f"link of {t}" for t in tags if f" {t}-" in links or f"{t}br" in links]
        if str(self.state_dir) in Path("/proc/self/mountinfo").read_text():
            found.append("mounts under the state directory")
        return found

    def remove(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)


# ---------------------------------------------------------------------- helpers


def _run_coroutine(fn: Any) -> Any:
    """asyncio.run(fn()), also from inside a running event loop (in a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fn())
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()


def _write_secret_file(path: Path, text: str) -> None:
    """Atomically, 0600: every file of the network's state is its user's only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_procs(state: Path, procs: list[Proc]) -> None:
    _write_secret_file(state / PROCESSES, json.dumps([asdict(p) for p in procs], indent=1))


def _read_procs(state: Path) -> list[Proc]:
    path = state / PROCESSES
    if not path.exists():
        return []
    return [Proc(**p) for p in json.loads(path.read_text())]


def _alive(procs: list[Proc]) -> bool:
    return any(_pid_alive(p.pid) and _same_process(p) for p in procs)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _same_process(p: Proc) -> bool:
    """The pid still runs the command we started (pids are reused)."""
    return bool(p.argv) and p.argv[-1] in _cmdline(p.pid or 0)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _terminate(procs: list[Proc], grace: float) -> None:
    """SIGTERM to each process we started (each stops what it started: the edge its
    HAProxy, the controller the dispatcher's), SIGKILL to its group after `grace`."""
    live = [p for p in procs if _pid_alive(p.pid) and _same_process(p)]
    for p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p.pid) for p in live):
        _reap()
        time.sleep(0.05)
    for p in live:
        if _pid_alive(p.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _procs_under(path: Path) -> list[int]:
    """Processes whose cwd or command line points into `path`."""
    found = []
    me = os.getpid()
    needle = str(path).encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            cwd = os.readlink(p / "cwd")
            cmd = (p / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if cwd.startswith(str(path)) or needle in cmd:
            found.append(int(p.name))
    return found


def _http_ok(url: str, token: str | None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False
