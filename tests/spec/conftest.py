"""A valid minimal policy file, written to disk with substitutions.

`policy_text(**fields)` renders the template with some fields replaced by
Python source text; `write_policy(dir, **fields)` writes it and returns the
path. Field names are those of TEMPLATE_FIELDS: each is the source of one
argument in the template (e.g. `distribution="Distribution(min=3, max=2)"`),
and `extra` is appended at the end of the file.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

# Source text of every substitutable argument, valid by default.
TEMPLATE_FIELDS: dict[str, str] = {
    # the network
    "network_name": '"testnet"',
    "provider": "Local()",
    "edgepoints": (
        '[Edgepoint(name="ep1", region="eu-central", location="local", server_type="local")]'
    ),
    "controller": 'Controller(location="local", server_type="local")',
    "pricing": ('Pricing(cpu_second="0.00002", memory_gb_second="0.000002", network_gb="0.01")'),
    # the application
    "app_name": '"hello"',
    "version": '"1.0.0"',
    "owner": 'Owner(id="acme")',
    "routing": 'Routing(hosts=["hello.example.com"])',
    "source": 'Source(path=".")',
    "tiers": '[Tier(name="web", command="python app.py")]',
    "cleave": "Cleave()",
    "distribution": "Distribution(min=0, max=2)",
    "sla": "SLA(max_response_ms=200, users_per_instance=10)",
    "budget": 'Budget(monthly="50 EUR")',
    "extra": "",
}

TEMPLATE = """\
from edgeshot.spec import (
    SLA, AWS, Application, Budget, Cleave, Controller, DigitalOcean, Distribution, EdgeNetwork,
    Edgepoint, HealthCheck, Hetzner, LoadTest, Local, Money, Owner, PassCriteria, PeakWindow,
    Pricing, Region, Resources, Route, Routing, Source, Tier, WarmupRequest, WeightedPath,
)

network = EdgeNetwork(
    name={network_name},
    provider={provider},
    edgepoints={edgepoints},
    controller={controller},
    pricing={pricing},
)

app = Application(
    name={app_name},
    version={version},
    owner={owner},
    routing={routing},
    source={source},
    tiers={tiers},
    cleave={cleave},
    distribution={distribution},
    sla={sla},
    budget={budget},
)
{extra}
"""

HETZNER = {
    "provider": "Hetzner()",
    "edgepoints": '[Edgepoint(name="fsn", region="eu-central", location="fsn1", server_type="cx22")]',
    "controller": 'Controller(location="nbg1", server_type="cx22")',
}


def policy_text(**fields: str) -> str:
    unknown = set(fields) - set(TEMPLATE_FIELDS)
    if unknown:
        raise KeyError(f"not template fields: {sorted(unknown)}")
    return TEMPLATE.format(**{**TEMPLATE_FIELDS, **fields})


_serial = itertools.count()


def write_policy(directory: Path, name: str | None = None, **fields: str) -> Path:
    """Write the template with `fields` substituted; a fresh file name unless `name` is given.

    Fresh names matter: Python caches compiled modules by mtime (whole seconds)
    and size, so rewriting one file quickly could load a stale version.
    """
    path = directory / (name or f"policy_{next(_serial)}.py")
    path.write_text(policy_text(**fields))
    return path


@pytest.fixture
def policy(tmp_path: Path):
    """`policy(**fields)` -> path of a policy file written into tmp_path."""

    def make(name: str | None = None, **fields: str) -> Path:
        return write_policy(tmp_path, name, **fields)

    return make
