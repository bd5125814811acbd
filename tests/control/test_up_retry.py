"""`edgeshot up` after a failed start is a real retry (issue 14), on a real local network
(agents, edge process with HAProxy, controller, global dispatcher; CRIU as root), driven
through the CLI as a user would, with the same state directory throughout:

1. a wrong tier command: `up` fails, saying why, and leaves no appshot behind; `down`;
2. the policy fixed, but the app's code broken: `up` says the policy changed and captures
   again, which fails again; `down`;
3. the code fixed, the policy unchanged: `up` says it retries, and the app answers through
   the dispatcher; `down` leaves nothing behind.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _netkit import REPO, write_network_policy
from edgeshot.agent import _criu
from edgeshot.cli import app as cli
from edgeshot.control._localnet import LocalNetwork

pytestmark = [pytest.mark.haproxy, pytest.mark.root, pytest.mark.timeout(900)]

APP = '''
hello = Application(
    name="hello", version="1.0", owner=Owner(id="acme"), vendor="acme-isv",
    routing=Routing(hosts=("hello.test",)),
    source=Source(path="{source}"),
    tiers=(Tier(name="web", command="{command}", reseed_signal="SIGUSR2",
                resources=Resources(cpu="0.25", memory_mb=64)),),
    warmup=(WarmupRequest(path="/", count=2),),
    distribution=Distribution(regions=("eu-central",), min=0, max=1, global_max=1),
    sla=SLA(max_response_ms=1000, users_per_instance=10, idle_s=600),
    budget=Budget(monthly="100 EUR"),
)
'''


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, " ".join(r.output.split())  # unwrapped, whatever the width


def appshots_left(state: Path) -> list[str]:
    """Everything under the agents' appshot directories (staging dirs included)."""
    return sorted(p.name for p in state.glob("agents/*/state/appshots/*"))


def test_up_after_a_failed_start_captures_again_or_retries(tmp_path):
    source = tmp_path / "hello"
    shutil.copytree(REPO / "examples" / "hello", source)
    good = (source / "app.py").read_text()
    text = write_network_policy(
        tmp_path, APP, name="retry", subnets=(150, 50), edgepoints=(("eu", "eu-central", 2),),
        pricing='Pricing(cpu_second="0.00001", memory_gb_second="0.000001", '
                'network_gb="0.01")').read_text()
    state = tmp_path / "state"

    def policy(command: str) -> Path:
        # a fresh file name each time: Python caches compiled modules by mtime and size
        path = tmp_path / f"policy_{command.split()[-1].replace('.', '_')}.py"
        path.write_text(text.replace("{source}", str(source)).replace("{command}", command))
        return path

    try:
        # 1. a wrong tier command
        code, out = run("up", policy("python3 no_such_app.py"), "--state", state,
                        "--timeout", "240")
        assert code == 1, out
        assert "hello 1.0: capturing" in out
        assert "error: hello 1.0: capture of hello-1.0 failed everywhere" in out
        assert "no_such_app.py" in out  # the app's own complaint, from its log
        assert "The network is still up: `edgeshot down --state" in out
        assert appshots_left(state) == []  # nothing half-written to be taken for good
        code, out = run("down", "--state", state)
        assert code == 0, out

        # 2. the policy fixed, the code broken: a changed policy is captured again
        (source / "app.py").write_text("raise SystemExit('broken on purpose')\n")
        fixed = policy("python3 app.py")
        code, out = run("up", fixed, "--state", state, "--timeout", "240")
        assert code == 1, out
        assert "hello 1.0: policy changed since the failed capture — capturing again" in out
        assert "broken on purpose" in out, out
        assert "no_such_app.py" not in out  # the earlier run's failure is history
        assert appshots_left(state) == []
        code, out = run("down", "--state", state)
        assert code == 0, out

        # 3. the code fixed, the policy unchanged: the failed capture is retried
        (source / "app.py").write_text(good)
        code, out = run("up", fixed, "--state", state, "--timeout", "240")
        assert code == 0, out
        assert "hello 1.0: retrying the failed capture" in out
        kind = "CRIU images" if _criu.status().usable else "cold start only"
        assert "captured: hello-1.0 captured on eu-1 in " in out and kind in out, out
        assert "broken on purpose" not in out and "error:" not in out
        assert "network " in out and " is up" in out
        assert appshots_left(state) == ["hello-1.0"]
        net = LocalNetwork.open(state)
        req = urllib.request.Request(net.manifest.entry_url + "/", headers={
            "Host": "hello.test", "X-Edgeshot-Region": "eu-central"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            assert r.read().startswith(b"hello from edgeshot #")
            assert r.headers["X-Edgeshot-Edgepoint"] == "eu"
    finally:
        if (state / "network.json").exists():
            net = LocalNetwork.open(state)
            net.stop()
            assert net.leftovers() == []
