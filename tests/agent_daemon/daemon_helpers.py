"""A real agent daemon for tests: config, tokens, the process, a sync HTTP helper, cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgeshot.agent import _pods, auth
from edgeshot.agent import appshots as A
from edgeshot.agent._slots import SlotPool
from edgeshot.agent._sys import reap
from edgeshot.agent.client import AgentClient

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
SHOP = REPO / "examples" / "shop" / "app"
NONROOT = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           # only to reach the venv's interpreter where it lives under a 0700 /root
           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


def hello_spec(app: str = "hello", version: str = "1.0", **tier) -> A.PodSpec:
    t = dict(name="web", command=("python3", "app.py"), entry=True, cpu="0.5", memory_mb=96,
             reseed_signal="SIGUSR2")
    t.update(tier)
    return A.PodSpec(app=app, version=version, owner="acme", vendor="acme-isv",
                     source_dir=HELLO, tiers=(A.TierSpec(**t),),
                     warmup=(A.WarmupRequest(path="/", count=3),))


def shop_spec() -> A.PodSpec:
    env = {"STORE_PORT": "7001"}
    return A.PodSpec(
        app="shop", version="1.0.0", owner="acme-shop", vendor="acme", source_dir=SHOP,
        tiers=(A.TierSpec(name="web", command=("python3", "web.py"), port=8000, env=env,
                          entry=True, cpu="0.5", memory_mb=128, reseed_signal="SIGUSR2"),
               A.TierSpec(name="store", command=("python3", "store.py"), port=7001, env=env,
                          cpu="0.25", memory_mb=64, reseed_signal="SIGUSR2")),
        warmup=(A.WarmupRequest(path="/catalog", count=3),))


@dataclass
class Tokens:
    file: Path
    ctl: str
    edge: str
    op: str
    owner: str
    vendor: str
    metrics: str

    @classmethod
    def make(cls, d: Path) -> Tokens:
        f = d / "tokens.toml"
        return cls(
            file=f,
            ctl=auth.issue_token(f, "controller", [auth.CONTROLLER_AGENT]),
            edge=auth.issue_token(f, "edge-ep1", [auth.EDGE_AGENT]),
            op=auth.issue_token(f, "noc", [auth.OPERATOR]),
            owner=auth.issue_token(f, "owner-acme", ["owner:acme"]),
            vendor=auth.issue_token(f, "isv-acme", ["vendor:acme-isv"]),
            metrics=auth.issue_token(f, "prometheus", [auth.METRICS]))

    def all(self) -> list[str]:
        return [self.ctl, self.edge, self.op, self.owner, self.vendor, self.metrics]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """One agent daemon (``python -m edgeshot.cli.agent --config FILE``) and its files."""

    def __init__(self, root: Path, tokens: Tokens, *, prefix: str, subnet: str, slots: int = 6,
                 nonroot: bool = False, **extra) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.tokens = tokens
        self.state = root / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = prefix
        self.subnet = subnet
        self.slots = slots
        self.nonroot = nonroot
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        cfg = {"listen": "127.0.0.1", "port": self.port, "state_dir": "state",
               "tokens_file": str(tokens.file), "edgepoint": "ep1", "server": "s1",
               "slot_prefix": prefix, "slot_subnet": subnet, "slots": slots,
               "usage_interval_s": 0.5, "storage_interval_s": 2.0, "health_interval_s": 0.5,
               "access_log": False, **extra}
        self.config = root / "agent.toml"
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" if not isinstance(v, bool)
                                       else f"{k} = {str(v).lower()}\n" for k, v in cfg.items()))
        if nonroot:
            self.state.mkdir(parents=True, exist_ok=True)
            os.chown(self.state, 65534, 65534)
            os.chmod(root, 0o755)

    def start(self, timeout: float = 30) -> AgentProcess:
        argv = [sys.executable, "-m", "edgeshot.cli.agent", "--config", str(self.config)]
        if self.nonroot:
            argv = [*NONROOT, *argv]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("EDGESHOT_STATE", None)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                status, _ = self.http("GET", "/v1/health", token=self.tokens.op)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"agent not ready after {timeout}s:\n{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up at all (a crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM: a graceful stop (an upgrade)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, token: str | None = None, **kw) -> AgentClient:
        return AgentClient(self.url, token or self.tokens.ctl, **kw)

    def http(self, method: str, path: str, *, token: str | None = None,
             body: bytes | dict | None = None, headers: dict[str, str] | None = None,
             timeout: float = 60) -> tuple[int, object]:
        """A plain request (status, parsed JSON or bytes)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            raw, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type")
        if ctype and ctype.startswith("application/json"):
            return status, json.loads(raw)
        return status, raw

    # -- clean-up ------------------------------------------------------------------
    def host(self) -> A.Host:
        return A.Host(state_dir=self.state, slot_prefix=self.prefix, slot_subnet=self.subnet,
                      slots=self.slots)

    def teardown(self) -> list[str]:
        """Stop the agent and everything it started; return what had to be cleaned up
        beyond its own pods (leftovers are bugs)."""
        self.stop()
        leftovers: list[str] = []
        pool = SlotPool(self.state, prefix=self.prefix, subnet=self.subnet, size=self.slots) \
            if os.geteuid() == 0 and not self.nonroot else None
        for inst in _pods.list_instances(self.state):
            if _pods.pid_alive(inst.pid):
                _pods.stop(inst, pool)
            else:
                _pods.release(inst, pool)
        if pool is not None:
            pool.destroy()
        reap()
        time.sleep(0.1)
        if procs := procs_under(self.state):
            leftovers.append("processes " + "; ".join(f"{p} {_describe(p)}" for p in procs))
            for p in procs:
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass
        if os.geteuid() == 0:
            out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            if f"{self.prefix}-" in out:
                leftovers.append("netns of the test pool")
            links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
            if f" {self.prefix}-" in links:
                leftovers.append("links of the test pool")
        reap()
        return leftovers

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_N = [0]


def pool_ids() -> tuple[str, str]:
    """A slot prefix (<= 6 chars) and a /24 no other agent of this session uses."""
    _N[0] += 1
    pid = os.getpid()
    return f"d{(pid * 7 + _N[0]) % 100000}", f"10.{240 + _N[0] % 10}.{pid % 250}.0/24"


def make_agent(tmp: Path, tokens: Tokens, **kw) -> AgentProcess:
    prefix, subnet = pool_ids()
    return AgentProcess(tmp, tokens, prefix=prefix, subnet=subnet, **kw)


def _describe(pid: int) -> str:
    """A leftover process as a reader needs it: its parent and command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "(gone)"
    return f"(parent {ppid}, state {state}, cwd {cwd}): {cmd.strip()[:300]}"


def procs_under(path: Path) -> list[int]:
    """Processes whose cwd or command line points into ``path`` (pods, log pumps)."""
    found = []
    me = os.getpid()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            cwd = os.readlink(p / "cwd")
            cmd = (p / "cmdline").read_bytes()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if state == "Z":
            continue
        if cwd.startswith(str(path)) or str(path).encode() in cmd:
            found.append(int(p.name))
    return found


def get(inst_address: str, path: str = "/") -> tuple[int, bytes]:
    from edgeshot.agent._sys import http_request
    host, port = inst_address.rsplit(":", 1)
    return http_request(host, int(port), path, timeout=5)


def cgroup_cpu_seconds(cgroup: str) -> float | None:
    from edgeshot.agent._cgroups import PodCgroup
    return PodCgroup(cgroup).cpu_seconds()


def wait_for(pred, timeout: float = 10, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
