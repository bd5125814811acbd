"""The client's retry policy and typed errors, against small in-process HTTP servers."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgeshot.agent.client import (
    AgentClient,
    AgentUnavailable,
    AtCapacity,
    Conflict,
    Invalid,
    NotFound,
    StartFailed,
)
from edgeshot.agent.models import AgentHealth

TOKEN = "est1_" + "S" * 43
HEALTH = AgentHealth(status="ok", version="0", edgepoint="e", server="s", source="agent:e:s",
                     mode="cold", signer="0" * 16, uptime_s=1, instances=0)
INSTANCE = {"id": "i-1", "app": "a", "version": "1", "owner": "o", "vendor": "v",
            "state": "running", "health": "healthy", "address": "10.0.0.2:8000",
            "netns": "es-slot0", "created": "2026-01-01T00:00:00Z", "age_s": 1}


class Flaky:
    """Serves ``answer`` but drops the connection (no response) the first ``drops`` times."""

    def __init__(self, drops: int, answer: web.Response | None = None) -> None:
        self.drops = drops
        self.calls = 0
        self.bodies: list[bytes] = []
        self.answer = answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.bodies.append(await request.read())
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        if self.calls <= self.drops:
            assert request.transport is not None
            request.transport.close()  # the server vanishes mid-request
            await asyncio.sleep(0.05)
            return web.Response()
        return self.answer or web.Response(text=HEALTH.model_dump_json(),
                                           content_type="application/json")


async def _serve(handler) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_reads_are_retried_after_a_broken_connection():
    f = Flaky(drops=2)
    server = await _serve(f.handle)
    try:
        async with AgentClient(str(server.make_url("")), TOKEN, backoff=0.01) as c:
            assert (await c.health()).status == "ok"
        assert f.calls == 3
    finally:
        await server.close()


async def test_create_is_retried_with_the_same_request_id_and_capture_is_not():
    f = Flaky(drops=1, answer=web.json_response(INSTANCE, status=201))
    server = await _serve(f.handle)
    try:
        async with AgentClient(str(server.make_url("")), TOKEN, backoff=0.01) as c:
            inst = await c.create_instance("app-1")
            assert inst.id == "i-1" and inst.port == 8000 and inst.host == "10.0.0.2"
            ids = {json.loads(b)["request_id"] for b in f.bodies}
            assert f.calls == 2 and len(ids) == 1  # the agent can tell it is a retry
            f.calls, f.drops = 0, 1
            from edgeshot.agent.models import PodSpec, TierSpec
            spec = PodSpec(app="a", version="1", source_dir="/x",
                           tiers=(TierSpec(name="w", command=("x",), entry=True),))
            with pytest.raises(AgentUnavailable, match="not retried"):
                await c.capture(spec)
            assert f.calls == 1
    finally:
        await server.close()


@pytest.mark.parametrize("status,code,cls", [
    (404, "not_found", NotFound), (409, "running", Conflict), (422, "invalid", Invalid),
    (503, "at_capacity", AtCapacity), (502, "start_failed", StartFailed)])
async def test_errors_are_typed_with_the_agents_code(status, code, cls):
    async def handle(request):
        return web.json_response({"error": f"because {code}", "code": code,
                                  "detail": ["x"]}, status=status)
    server = await _serve(handle)
    try:
        async with AgentClient(str(server.make_url("")), TOKEN) as c:
            with pytest.raises(cls) as e:
                await c.get_instance("i-1")
        assert (e.value.status, e.value.code, e.value.detail) == (status, code, ["x"])
        assert f"because {code}" in str(e.value)
    finally:
        await server.close()


async def test_an_unreachable_agent_is_reported_without_the_token():
    c = AgentClient("http://127.0.0.1:9", TOKEN, retries=1, backoff=0.01, connect_timeout=1)
    with pytest.raises(AgentUnavailable) as e:
        await c.health()
    await c.close()
    assert TOKEN not in str(e.value) and TOKEN not in repr(e.value) and TOKEN not in repr(c)
    assert "unreachable after 2 attempts" in str(e.value)
