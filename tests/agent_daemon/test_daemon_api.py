"""The agent API against real pods with real CRIU, through the client (as root)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
from daemon_helpers import AgentProcess, get, hello_spec, shop_spec

from edgeshot.agent.client import (
    AtCapacity,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)

pytestmark = [pytest.mark.root, pytest.mark.criu]


async def test_health_capacity_and_signing_key(daemon: AgentProcess):
    async with daemon.client(daemon.tokens.edge) as c:
        h = await c.health()
        assert (h.status, h.mode, h.edgepoint, h.server) == ("ok", "restore", "ep1", "s1")
        assert h.source == "agent:ep1:s1" and len(h.signer) == 16
        cap = await c.capacity()
        assert cap.slots.total == daemon.slots and cap.restores
        assert cap.cpu.total == os.cpu_count() and cap.memory.free <= cap.memory.total
        kid, pem = await c.signing_key()
        assert kid == h.signer and "BEGIN PUBLIC KEY" in pem
    async with daemon.client("est1_" + "D" * 43) as c:
        with pytest.raises(Unauthorized):
            await c.health()
    async with daemon.client(daemon.tokens.edge) as c:
        with pytest.raises(Forbidden):
            await c.usage()


async def test_capture_list_verify_and_refusals(daemon: AgentProcess, hello_shot: str):
    async with daemon.client() as c:
        info = await c.get_appshot(hello_shot)
        assert (info.app, info.version, info.owner, info.vendor, info.kind) == (
            "hello", "1.0", "acme", "acme-isv", "appshot")
        assert info.restorable and info.source_included and info.size_bytes > 1_000_000
        assert [a.name for a in await c.list_appshots()] == [hello_shot]
        assert (await c.verify_appshot(hello_shot)).name == hello_shot
        with pytest.raises(Conflict) as e:
            await c.capture(hello_spec(), name=hello_shot)
        assert e.value.code == "exists"
        bad = hello_spec().model_copy(update={"source_dir": Path("/nonexistent/app")})
        with pytest.raises(Invalid, match="source_dir"):
            await c.capture(bad, name="nope-1")
        with pytest.raises(NotFound):
            await c.get_appshot("nope-1")


async def test_instance_lifecycle_keeps_state_across_snapshot(daemon: AgentProcess,
                                                              hello_shot: str):
    async with daemon.client(daemon.tokens.edge) as c:
        t0 = time.monotonic()
        inst = await c.create_instance(hello_shot, owner="acme-shop", lazy=False)
        assert time.monotonic() - t0 < 5
        assert (inst.state, inst.health, inst.origin) == ("running", "healthy", "appshot")
        assert inst.owner == "acme-shop" and inst.vendor == "acme-isv"  # create call wins
        assert inst.netns and os.path.exists(f"/run/netns/{inst.netns}")
        assert inst.address.startswith(daemon.subnet.rsplit(".", 2)[0])
        # answers at once, with the three warm-up requests already served
        assert get(inst.address) == (200, b"hello from edgeshot #4\n")
        listed = await c.list_instances()
        assert [i.id for i in listed] == [inst.id]
        assert listed[0].age_s >= 0 and listed[0].address == inst.address
        assert (await c.capacity()).slots.used == 1
        snap = await c.snapshot_instance(inst.id)
        assert (snap.id, snap.state, snap.address, snap.snapshot is not None) == (
            inst.id, "snapshotted", None, True)
        assert (await c.snapshot_instance(inst.id)).state == "snapshotted"  # a retry is safe
        assert (await c.capacity()).slots.used == 0
        back = await c.create_instance(from_snapshot=inst.id, lazy=False)
        assert (back.id, back.state, back.origin) == (inst.id, "running", "snapshot")
        with pytest.raises(Conflict):
            await c.create_instance(from_snapshot=inst.id)  # it is running
        assert back.restored_from == snap.snapshot
        assert get(back.address) == (200, b"hello from edgeshot #5\n")  # state continued
    async with daemon.client() as c:
        shots = await c.list_appshots("snapshot")
        assert [(s.kind, s.instance, s.owner) for s in shots] == [
            ("snapshot", inst.id, "acme-shop")]
        stopped = await c.stop_instance(inst.id)
        assert stopped.state == "stopped"
        assert await c.list_instances() == []
        assert await c.list_appshots("snapshot") == []
        with pytest.raises(NotFound):
            await c.get_instance(inst.id)
        metrics = await c.metrics()
    common = {"app": "hello", "version": "1.0", "edgepoint": "ep1", "owner": "acme-shop"}
    assert metric(metrics, "edgeshot_agent_snapshots_total", **common, result="ok") == 1
    assert metric(metrics, "edgeshot_agent_restores_total", **common, origin="snapshot",
                  result="ok") == 1
    assert metric(metrics, "edgeshot_agent_restores_total", **common, origin="appshot",
                  result="ok") >= 1
    assert metric(metrics, "edgeshot_agent_restore_latency_seconds_count", **common,
                  origin="snapshot") == 1
    assert metric(metrics, "edgeshot_agent_appshot_store_bytes", app="hello", kind="appshot",
                  owner="acme", version="1.0", edgepoint="ep1") > 1_000_000
    assert metric(metrics, "edgeshot_agent_slots", edgepoint="ep1", state="free") == 6


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition."""
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{want}")


async def test_create_with_the_same_request_id_makes_one_instance(daemon: AgentProcess,
                                                                  hello_shot: str):
    async with daemon.client(daemon.tokens.edge) as c:
        a, b = await asyncio.gather(
            c.create_instance(hello_shot, request_id="retry-test-0001"),
            c.create_instance(hello_shot, request_id="retry-test-0001"))
        assert a.id == b.id
        assert [i.id for i in await c.list_instances()] == [a.id]
        again = await c.create_instance(hello_shot, request_id="retry-test-0001")
        assert again.id == a.id
        await c.stop_instance(a.id)
        with pytest.raises(NotFound):  # gone (a 404 is only taken as done after a retry)
            await c.stop_instance(a.id)


async def test_snapshot_refused_while_a_connection_is_open(daemon: AgentProcess,
                                                           hello_shot: str):
    async with daemon.client(daemon.tokens.edge) as c:
        inst = await c.create_instance(hello_shot)
        host, port = inst.address.split(":")
        s = socket.create_connection((host, int(port)))  # not drained
        try:
            with pytest.raises(Conflict) as e:
                await c.snapshot_instance(inst.id)
            assert e.value.code == "not_restorable" and "TCP connection" in e.value.message
            assert (await c.get_instance(inst.id)).state == "running"  # left running
        finally:
            s.close()
        assert (await c.snapshot_instance(inst.id)).state == "snapshotted"
        await c.stop_instance(inst.id)


async def test_two_tier_pod_and_capacity_limit(daemon: AgentProcess):
    async with daemon.client() as c:
        shot = (await c.capture(shop_spec(), name="shop-1.0.0")).appshot
        assert shot.app == "shop" and shot.restorable
        insts = [await c.create_instance("shop-1.0.0") for _ in range(daemon.slots)]
        try:
            for i in insts:
                status, body = get(i.address, "/catalog")
                assert status == 200 and b"price" in body
            assert len({i.netns for i in insts}) == daemon.slots
            with pytest.raises(AtCapacity):
                await c.create_instance("shop-1.0.0")
            assert (await c.capacity()).slots.free == 0
        finally:
            for i in insts:
                await c.stop_instance(i.id)
        assert await c.list_instances() == []  # the refused one left nothing behind
        assert (await c.capacity()).slots.used == 0
        await c.delete_appshot("shop-1.0.0")
        with pytest.raises(NotFound):
            await c.get_appshot("shop-1.0.0")


async def test_upload_resumes_after_a_broken_connection(daemon: AgentProcess, hello_shot: str,
                                                        tmp_path: Path):
    async with daemon.client() as c:
        tar = await c.download_appshot(hello_shot, tmp_path / "hello.tar.gz")
        data = tar.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        half = len(data) // 2
        # a raw PATCH that announces the whole tarball but dies half-way
        s = socket.create_connection(("127.0.0.1", daemon.port))
        s.sendall(b"PATCH /v1/appshots/hello-copy/upload HTTP/1.1\r\nHost: x\r\n"
                  + f"Authorization: Bearer {daemon.tokens.ctl}\r\n".encode()
                  + f"Upload-Offset: 0\r\nUpload-Length: {len(data)}\r\n".encode()
                  + f"Upload-SHA256: {digest}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                  + data[:half])
        time.sleep(0.3)
        s.close()
        st = await wait_for_async(lambda: c.upload_status("hello-copy"),
                                  lambda st: st is not None and st.offset == half)
        assert st.size == len(data) and not st.complete
        starts: list[int] = []
        info = await c.upload_appshot(tar, "hello-copy", progress=lambda o, n: starts.append(o))
        assert starts == [half]  # resumed where it stopped, not from 0
        assert info.name == "hello-copy" and info.app == "hello"
        assert (await c.verify_appshot("hello-copy")).name == "hello-copy"
        inst = await c.create_instance("hello-copy")
        assert get(inst.address)[0] == 200
        await c.stop_instance(inst.id)
        await c.delete_appshot("hello-copy")
        # a tampered tarball never becomes an appshot
        bad = tmp_path / "bad.tar.gz"
        b = bytearray(data)
        b[len(b) // 3] ^= 0xFF
        bad.write_bytes(bytes(b))
        with pytest.raises(Invalid) as e:
            await c.upload_appshot(bad, "hello-bad")
        assert e.value.code == "appshot_rejected"
        with pytest.raises(NotFound):
            await c.get_appshot("hello-bad")
        assert await c.upload_status("hello-bad") is None


async def wait_for_async(fetch, pred, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        v = await fetch()
        if pred(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last {v!r}")
        await asyncio.sleep(0.05)


async def test_usage_records_are_contiguous_deltas(daemon: AgentProcess, hello_shot: str):
    async with daemon.client() as c:
        before = (await c.usage(0, 1)).head_seq
        inst = await c.create_instance(hello_shot)
        for _ in range(20):
            get(inst.address)
        await asyncio.sleep(1.3)
        await c.snapshot_instance(inst.id)
        await asyncio.sleep(2.3)  # the snapshot's storage is billed
        await c.create_instance(from_snapshot=inst.id)
        await asyncio.sleep(0.8)
        await c.stop_instance(inst.id)
        page = await c.usage(before, 10_000)
    seqs = [r.seq for r in page.records]
    assert seqs == list(range(before + 1, before + 1 + len(seqs)))
    mine = [r for r in page.records if r.instance == inst.id]
    assert len(mine) >= 5
    assert all(r.cpu_seconds >= 0 and r.memory_gb_seconds >= 0 and r.end >= r.start
               for r in mine)
    assert all((r.owner, r.vendor, r.edgepoint, r.app) == ("acme", "acme-isv", "ep1", "hello")
               for r in mine)
    for a, b in zip(mine, mine[1:], strict=False):
        assert b.start >= a.end  # never overlapping: nothing counted twice
    storage = [r for r in mine if r.storage_gb_hours > 0]
    assert storage and all(r.cpu_seconds == 0 and r.memory_gb_seconds == 0 for r in storage)
    assert sum(r.cpu_seconds for r in mine) > 0.01


async def test_malformed_requests_get_a_4xx_naming_the_problem(daemon: AgentProcess):
    t = daemon.tokens.ctl
    cases = [
        ("POST", "/v1/instances", b"{", 422, "Invalid JSON"),
        ("POST", "/v1/instances", b'{"appshot": "a", "from_snapshot": "b"}', 422,
         "exactly one of"),
        ("POST", "/v1/instances", b'{"appshot": "../etc"}', 422, "not a valid name"),
        ("POST", "/v1/instances", b'{"appshot": "x", "colour": 1}', 422, "colour"),
        ("POST", "/v1/instances", b"", 400, "JSON body"),
        ("GET", "/v1/usage?after=-1", None, 400, "after"),
        ("GET", "/v1/usage?limit=abc", None, 400, "limit"),
        ("GET", "/v1/instances/..%2f..%2fetc", None, 400, "instance id"),
        ("PATCH", "/v1/appshots/x/upload", b"abc", 400, "Upload-Offset"),
        ("POST", "/v1/capture", b'{"spec": {"app": "BAD NAME"}}', 422, "spec"),
        ("POST", "/v1/trusted-keys", b'{"pem": "nope"}', 422, "PEM"),
        ("PUT", "/v1/instances", b"{}", 405, "Method Not Allowed"),
    ]
    for method, path, body, status, words in cases:
        got, answer = daemon.http(method, path, token=t, body=body)
        assert got == status, (method, path, got, answer)
        assert words in answer["error"] + " ".join(answer.get("detail") or []), answer


async def test_a_failed_capture_leaves_nothing_and_does_not_block_the_retry(daemon: AgentProcess):
    """A wrong tier command: the capture fails with the app's own complaint and leaves no
    appshot (nor a staging dir), no instance and no slot in use; the same name then
    captures at once with the command fixed."""
    name = "hello-retry-1"
    async with daemon.client() as c:
        with pytest.raises(Invalid) as e:
            await c.capture(hello_spec(command=("python3", "no_such_app.py")), name=name)
        assert e.value.code == "app_failed" and "no_such_app.py" in str(e.value)
        with pytest.raises(NotFound):
            await c.get_appshot(name)
        assert not [p for p in (daemon.state / "appshots").iterdir() if name in p.name]
        assert await c.list_instances() == [] and (await c.capacity()).slots.used == 0
        shot = (await c.capture(hello_spec(), name=name)).appshot
        assert shot.name == name and shot.restorable
        await c.delete_appshot(name)
