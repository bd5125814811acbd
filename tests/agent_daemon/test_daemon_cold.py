"""Without root (so without CRIU and namespaces) the agent cold-starts, on own ports, and
says so once. The agent runs here as user nobody (started by root with setpriv)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import AgentProcess, Tokens, get, hello_spec, make_agent

pytestmark = pytest.mark.root  # to become nobody


@pytest.fixture
def cold_agent(tmp_path: Path, tokens: Tokens) -> Iterator[AgentProcess]:
    a = make_agent(tmp_path / "agent", tokens, nonroot=True)
    yield a
    leftovers = a.teardown()
    assert not leftovers, f"left behind: {leftovers}\n{a.log_text()[-3000:]}"


async def test_without_root_instances_cold_start_on_their_own_ports(cold_agent: AgentProcess):
    a = cold_agent.start()
    async with a.client() as c:
        h = await c.health()
        assert h.mode == "cold" and "not root" in h.cold_reason
        assert not (await c.capacity()).restores
        shot = (await c.capture(hello_spec(), name="hello-1.0")).appshot
        assert not shot.restorable and shot.source_included  # spec + source, signed
        assert (await c.verify_appshot("hello-1.0")).name == "hello-1.0"
        one, two = await asyncio.gather(c.create_instance("hello-1.0"),
                                        c.create_instance("hello-1.0"))
        for i in (one, two):
            assert i.origin == "cold" and "not root" in i.cold_reason and i.netns is None
            assert i.host == "127.0.0.1"
        assert one.port != two.port
        assert get(one.address) == (200, b"hello from edgeshot #1\n")  # a cold start
        assert get(one.address) == (200, b"hello from edgeshot #2\n")
        snap = await c.snapshot_instance(one.id)  # no CRIU: stops it, keeps no state
        assert (snap.state, snap.state_kept) == ("snapshotted", False)
        back = await c.create_instance(from_snapshot=one.id)
        assert back.id == one.id and back.origin == "cold"
        assert get(back.address) == (200, b"hello from edgeshot #1\n")
        await asyncio.sleep(1.2)
        page = await c.usage(0, 1000)
        assert sum(r.cpu_seconds for r in page.records if r.instance == one.id) > 0.005
        assert sum(r.memory_gb_seconds for r in page.records if r.instance == two.id) > 0
        for i in (one, two):
            await c.stop_instance(i.id)
        await c.delete_appshot("hello-1.0")
    log = a.log_text()
    assert log.count("not root (CRIU and namespaces need root)") == 1, log  # said once
