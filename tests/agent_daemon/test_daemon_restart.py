"""Restarting the agent: instances keep serving, are adopted, usage goes on exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
from daemon_helpers import AgentProcess, cgroup_cpu_seconds, get, hello_spec, wait_for

from edgeshot.agent.client import AgentUnavailable
from edgeshot.agent.models import UsageRecord

pytestmark = [pytest.mark.root, pytest.mark.criu]


class Traffic:
    """Requests to every instance in a loop, from a thread; counts answers and failures."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.ok: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for a in self.addresses:
                try:
                    status, _ = get(a)
                    if status == 200:
                        self.ok[a] += 1
                    else:
                        self.errors.append(f"{a}: {status}")
                except OSError as exc:
                    self.errors.append(f"{a}: {exc!r}")
            time.sleep(0.005)

    def __enter__(self) -> Traffic:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


class Consumer:
    """A metering consumer: pulls with its cursor and stores records with it, across
    agent restarts (it just retries while no agent answers)."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.cursor = 0
        self.records: list[UsageRecord] = []
        self.task: asyncio.Task | None = None

    async def pull_once(self) -> None:
        async with self.agent.client(retries=0, timeout=5) as c:
            while True:
                page = await c.usage(self.cursor, 50)
                if not page.records:
                    return
                self.records += page.records  # "one transaction": records and cursor
                self.cursor = page.last_seq

    async def _loop(self) -> None:
        while True:
            try:
                await self.pull_once()
            except AgentUnavailable:
                pass
            await asyncio.sleep(0.15)

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        await self.pull_once()


def _check_exactly_once(records: list[UsageRecord]) -> None:
    seqs = [r.seq for r in records]
    assert len(seqs) == len(set(seqs)), "a record was seen twice"
    assert seqs == list(range(1, len(seqs) + 1)), "a seq was skipped or reordered"


async def test_sigkill_mid_traffic_instances_keep_serving_and_are_adopted(
        fresh_agent: AgentProcess):
    a = fresh_agent.start()
    async with a.client() as c:
        await c.capture(hello_spec(), name="hello-1.0")
        insts = [await c.create_instance("hello-1.0", lazy=False) for _ in range(2)]
    consumer = Consumer(a)
    consumer.start()
    with Traffic([i.address for i in insts]) as traffic:
        await asyncio.sleep(1.5)
        a.kill()  # SIGKILL mid-traffic
        served = sum(traffic.ok.values())
        await asyncio.sleep(1.0)
        assert sum(traffic.ok.values()) > served + 20  # still serving without an agent
        a.start()
        async with a.client() as c:
            h = await c.health()
            assert h.adopted == 2
            listed = {i.id: i for i in await c.list_instances()}
            assert set(listed) == {i.id for i in insts}
            for i in insts:
                assert (listed[i.id].state, listed[i.id].address) == ("running", i.address)
        await asyncio.sleep(1.0)
        a.stop()  # and a graceful restart (an upgrade) for good measure
        a.start()
        async with a.client() as c:
            assert (await c.health()).adopted == 2
        await asyncio.sleep(1.0)
    assert traffic.errors == []
    assert all(traffic.ok[i.address] > 50 for i in insts)
    # idle now: the counters of the cgroups only creep
    await asyncio.sleep(0.6)
    before = {i.id: cgroup_cpu_seconds(i.pod) for i in insts}
    t_before = time.time()
    deadline = time.monotonic() + 20
    while not all(any(r.instance == i.id and r.end.timestamp() > t_before
                      for r in consumer.records) for i in insts):
        assert time.monotonic() < deadline, "no usage record after the counters were read"
        await asyncio.sleep(0.1)
    await consumer.stop()
    after = {i.id: cgroup_cpu_seconds(i.pod) for i in insts}
    _check_exactly_once(consumer.records)
    for i in insts:
        mine = [r for r in consumer.records if r.instance == i.id]
        assert len(mine) >= 6
        for x, y in zip(mine, mine[1:], strict=False):
            assert y.start == x.end, "a gap or an overlap between records"
        total = sum(r.cpu_seconds for r in mine)
        assert before[i.id] - 1e-6 <= total <= after[i.id] + 1e-6, (total, before, after)
        assert total > 0.01
    async with a.client() as c:
        for i in insts:
            await c.stop_instance(i.id)
        await c.delete_appshot("hello-1.0")


async def test_a_pod_killed_while_the_agent_is_down_is_not_adopted(fresh_agent: AgentProcess):
    a = fresh_agent.start()
    async with a.client() as c:
        await c.capture(hello_spec(), name="hello-1.0")
        dead = await c.create_instance("hello-1.0")
        alive = await c.create_instance("hello-1.0")
    a.kill()
    pod = json.loads((a.state / "pods" / dead.pod / "pod.json").read_text())
    os.kill(pod["pid"], signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pod['pid']}") or open(
        f"/proc/{pod['pid']}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", what="pod gone")
    a.start()
    async with a.client() as c:
        assert (await c.health()).adopted == 1
        d = await c.get_instance(dead.id)
        assert d.state == "failed" and "died while no agent watched" in d.error
        assert (await c.get_instance(alive.id)).state == "running"
        assert (await c.capacity()).slots.used == 1
        assert not (a.state / "slots" / f"{dead.netns}.json").exists()  # slot freed
        assert not (a.state / "pods" / dead.pod).exists()
        assert cgroup_cpu_seconds(dead.pod) is None  # cgroup removed
        # its final usage was written from the dead pod's cgroup before it was removed
        page = await c.usage(0, 1000)
        assert sum(r.cpu_seconds for r in page.records if r.instance == dead.id) > 0.01
        # the freed slot serves a new instance
        again = [await c.create_instance("hello-1.0") for _ in range(a.slots - 1)]
        assert dead.netns in {i.netns for i in again}
        for i in [alive, *again]:
            await c.stop_instance(i.id)
        assert (await c.stop_instance(dead.id)).state == "stopped"  # forget the failed one
        assert await c.list_instances() == []
        await c.delete_appshot("hello-1.0")
