"""The agent's Prometheus metrics: ``edgeshot_agent_<name>_<unit>``, labels ``app``,
``version``, ``edgepoint``, ``owner`` (docs/architecture.md, "Metrics").

Counters and the restore-latency histogram are updated as things happen; the
instances by state, the appshot store's bytes and the slots are read from the
agent's own state at each scrape, so they are right after an adoption too.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate
from prometheus_client.core import GaugeMetricFamily

LABELS = ("app", "version", "edgepoint", "owner")
RESTORE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class InstanceView:
    app: str
    version: str
    owner: str
    state: str


@dataclass(frozen=True)
class StoredView:
    app: str
    version: str
    owner: str
    kind: str
    size_bytes: int


class _StateCollector:
    def __init__(self, edgepoint: str, instances: Callable[[], Iterable[InstanceView]],
                 stored: Callable[[], Iterable[StoredView]],
                 slots: Callable[[], tuple[int, int]]) -> None:
        self.edgepoint = edgepoint
        self.instances = instances
        self.stored = stored
        self.slots = slots

    def collect(self):
        ep = self.edgepoint
        g = GaugeMetricFamily("edgeshot_agent_instances", "Instances on this server by state",
                              labels=[*LABELS, "state"])
        for (app, version, owner, state), n in sorted(_Tally(
                (i.app, i.version, i.owner, i.state) for i in self.instances()).items()):
            g.add_metric([app, version, ep, owner, state], n)
        yield g
        b = GaugeMetricFamily("edgeshot_agent_appshot_store_bytes",
                              "Bytes of appshots and snapshots kept on this server",
                              labels=[*LABELS, "kind"])
        sizes: dict[tuple[str, str, str, str], int] = {}
        for s in self.stored():
            k = (s.app, s.version, s.owner, s.kind)
            sizes[k] = sizes.get(k, 0) + s.size_bytes
        for (app, version, owner, kind), size in sorted(sizes.items()):
            b.add_metric([app, version, ep, owner, kind], size)
        yield b
        used, total = self.slots()
        s = GaugeMetricFamily("edgeshot_agent_slots", "Instance slots of this server",
                              labels=["edgepoint", "state"])
        s.add_metric([ep, "used"], used)
        s.add_metric([ep, "free"], max(0, total - used))
        yield s


class AgentMetrics:
    """One agent's registry (not the process-global one: tests run several agents)."""

    def __init__(self, edgepoint: str) -> None:
        self.edgepoint = edgepoint
        self.registry = CollectorRegistry()
        r = self.registry
        self.restores = Counter(
            "edgeshot_agent_restores", "Instances created (restored, or cold-started)",
            [*LABELS, "origin", "result"], registry=r)
        self.snapshots = Counter(
            "edgeshot_agent_snapshots", "Instances snapshotted", [*LABELS, "result"], registry=r)
        self.captures = Counter(
            "edgeshot_agent_captures", "Appshots captured", [*LABELS, "result"], registry=r)
        self.restore_latency = Histogram(
            "edgeshot_agent_restore_latency_seconds",
            "Create call to the instance passing its health check", [*LABELS, "origin"],
            buckets=RESTORE_BUCKETS, registry=r)
        self.usage_records = Counter(
            "edgeshot_agent_usage_records", "Usage records written", ["edgepoint"], registry=r)
        self.usage_tick = Histogram(
            "edgeshot_agent_usage_tick_seconds", "CPU time of one metering pass", ["edgepoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=r)
        self.uploads = Counter(
            "edgeshot_agent_upload_bytes", "Appshot bytes received by upload", ["edgepoint"],
            registry=r)

    def watch(self, instances: Callable[[], Iterable[InstanceView]],
              stored: Callable[[], Iterable[StoredView]],
              slots: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StateCollector(self.edgepoint, instances, stored, slots))

    def labels(self, app: str, version: str, owner: str) -> dict[str, str]:
        return {"app": app, "version": version, "edgepoint": self.edgepoint, "owner": owner}

    def generate(self) -> bytes:
        return _generate(self.registry)
