"""Fixtures for the edgepoint's integration tests: a real agent (real pods, CRIU as root)
with the shop captured into appshots, a test origin, and edge processes (real HAProxy)
started and stopped by each test. Nothing is left running: every edge's HAProxy is
stopped and checked gone, every instance stopped, the agent torn down and checked."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent_daemon"))

from daemon_helpers import AgentProcess, Tokens, shop_spec  # noqa: E402
from helpers import Backend, free_port, request  # noqa: E402

from edgeshot.agent import auth  # noqa: E402
from edgeshot.agent._sys import reap, set_subreaper  # noqa: E402
from edgeshot.edge.client import EdgeClient  # noqa: E402
from edgeshot.edge.models import PlacementAssignment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHOP_HOST = "shop.example.com"


@dataclass
class EdgeTokens:
    file: Path
    ctl: str
    op: str
    owner: str
    stranger: str

    @classmethod
    def make(cls, d: Path) -> EdgeTokens:
        f = d / "edge-tokens.toml"
        return cls(f, auth.issue_token(f, "controller", [auth.CONTROLLER_EDGE]),
                   auth.issue_token(f, "noc", [auth.OPERATOR]),
                   auth.issue_token(f, "acme-shop", ["owner:acme-shop"]),
                   auth.issue_token(f, "agent-ish", [auth.EDGE_AGENT]))


class EdgeProcess:
    """One ``edgeshot edge`` process (``python -m edgeshot.cli.edge``) and its files."""

    def __init__(self, root: Path, agents: list[AgentProcess], agent_token: str,
                 tokens: EdgeTokens, edgepoint: str = "eu", **cfg: object) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.tokens = tokens
        self.http_port = free_port()
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.log = root / "edge.log"
        secret = root / "agent.token"
        auth.write_secret(secret, agent_token)
        self.config = root / "edge.toml"
        base = {"edgepoint": edgepoint, "listen": "127.0.0.1", "http_port": self.http_port,
                "api_port": self.api_port, "state_dir": "state",
                "tokens_file": str(tokens.file), "agent_token_file": "agent.token",
                "tick_s": 0.1, "stable_window_s": 6.0, "panic_window_s": 1.0,
                "scale_down_delay_s": 1.0, "usage_interval_s": 1.0,
                "capacity_interval_s": 0.5, "drain_timeout_s": 5.0,
                "activator_timeout_s": 30.0, "log_level": "INFO", **cfg}
        lines = [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                 for k, v in base.items()]
        for i, a in enumerate(agents):
            lines += ["", "[[agents]]", f'name = "s{i + 1}"', f'url = "{a.url}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.root / "state"

    def start(self, timeout: float = 60) -> EdgeProcess:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "edgeshot"), "edge", "--config",
                 str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if asyncio.run(self._healthy()):
                    return self
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"edge not ready after {timeout} s:\n{self.log_text()}")

    async def _healthy(self) -> bool:
        async with EdgeClient(self.api, self.tokens.ctl, retries=0, timeout=2) as c:
            return (await c.health()).status == "ok"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def client(self, token: str | None = None) -> EdgeClient:
        return EdgeClient(self.api, token or self.tokens.ctl)

    def call(self, fn, token: str | None = None):
        """Run ``await fn(client)`` with a fresh client (from sync test code)."""
        async def go():
            async with self.client(token) as c:
                return await fn(c)
        return asyncio.run(go())

    def get(self, path: str = "/", host: str = SHOP_HOST, **kw):
        return request("127.0.0.1", self.http_port, path, headers={"Host": host,
                                                                   **kw.pop("headers", {})}, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def haproxy_pids(self) -> list[int]:
        """HAProxy processes of this edge (its directory is in their command line)."""
        out = []
        marker = str(self.root).encode()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
                st = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
                continue
            if st != "Z" and argv[0].endswith(b"haproxy") and any(marker in a for a in argv):
                out.append(int(p.name))
        return out

    def teardown(self) -> list[str]:
        left = []
        if self.proc is not None:
            self.stop()
        pids = self.haproxy_pids()
        if pids:
            left.append(f"HAProxy processes {pids}")
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return left


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> Iterator[None]:
    set_subreaper()
    yield
    reap()


@pytest.fixture(scope="session")
def agent_tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return Tokens.make(tmp_path_factory.mktemp("agent-tokens"))


@pytest.fixture(scope="session")
def edge_tokens(tmp_path_factory: pytest.TempPathFactory) -> EdgeTokens:
    return EdgeTokens.make(tmp_path_factory.mktemp("edge-tokens"))


@pytest.fixture(scope="session")
def shop_agent(agent_tokens: Tokens) -> Iterator[AgentProcess]:
    """One agent for the session with the shop captured as shop-1.0.0 and shop-1.1.0."""
    root = Path(tempfile.mkdtemp(prefix="es-edge-agent-"))
    pid = os.getpid()
    a = AgentProcess(root, agent_tokens, prefix=f"e{pid % 100000}",
                     subnet=f"10.239.{pid % 250}.0/24", slots=8)
    a.start()
    try:
        for version in ("1.0.0", "1.1.0"):
            spec = shop_spec().model_copy(update={"version": version})
            status, body = a.http("POST", "/v1/capture", token=agent_tokens.ctl, timeout=300,
                                  body={"spec": spec.model_dump(mode="json"),
                                        "name": f"shop-{version}"})
            assert status == 201, body
        yield a
    finally:
        left = a.teardown()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"left behind by the agent: {left}"


@pytest.fixture(scope="session")
def origin() -> Iterator[Backend]:
    b = Backend("origin")
    yield b
    b.close()


def stop_all_instances(agent: AgentProcess) -> None:
    async def go():
        async with agent.client() as c:
            for inst in await c.list_instances():
                if inst.state not in ("stopped", "failed"):
                    await c.stop_instance(inst.id)
    asyncio.run(go())


@pytest.fixture
def edges(request: pytest.FixtureRequest, shop_agent: AgentProcess, agent_tokens: Tokens,
          edge_tokens: EdgeTokens):
    """Make edge processes for one test; afterwards every edge and its HAProxy is stopped
    (checked), and every instance on the agent too."""
    made: list[EdgeProcess] = []

    def make(**cfg: object) -> EdgeProcess:
        # short paths: HAProxy's and the activator's unix sockets live under it
        e = EdgeProcess(Path(tempfile.mkdtemp(prefix="es-e-")), [shop_agent],
                        agent_tokens.edge, edge_tokens, **cfg)
        made.append(e)
        return e
    yield make
    left = []
    for e in made:
        left += e.teardown()
    stop_all_instances(shop_agent)
    logs = "\n".join(e.log_text()[-4000:] for e in made)
    for e in made:
        shutil.rmtree(e.root, ignore_errors=True)
    if left:
        pytest.fail(f"left running: {left}\n{logs}")
    if "Traceback" in logs:
        pytest.fail(f"an edge process logged an unexpected exception:\n{logs}")


def shop_assignment(origin_url: str, *, cost_ceiling: int = 3, versions=(), **scaling
                    ) -> PlacementAssignment:
    from edgeshot.edge.models import VersionWeight
    from edgeshot.plan import compile_plan
    from edgeshot.spec import load
    plan = compile_plan(load(REPO / "examples" / "shop" / "policy_local.py"))
    app = plan.app("shop").model_copy(update={"origin_url": origin_url})
    p = next(p for p in plan.placements if p.id == "shop/eu")
    p = p.model_copy(update={"scaling": p.scaling.model_copy(update=scaling)})
    return PlacementAssignment(placement=p, app=app, cost_ceiling=cost_ceiling,
                               versions=tuple(VersionWeight(version=v, weight=w)
                                              for v, w in versions))
