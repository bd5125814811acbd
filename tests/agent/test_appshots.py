"""Appshots with real CRIU: capture, verified restore, copies, snapshots, refusals (as root)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from agent_apps import HOG_APP, URING_APP, hello_spec, inline_spec, shop_spec

from edgeshot.agent import _cgroups, _criu, _package, _workingset
from edgeshot.agent import appshots as A
from edgeshot.agent._sys import http_request

pytestmark = [pytest.mark.root, pytest.mark.criu]


CAPTURE_STEPS: list[str] = []


@pytest.fixture(scope="module")
def hello_shot(host, tmp_path_factory):
    dest = tmp_path_factory.mktemp("shots") / "hello-1.0"
    res = A.capture(hello_spec(), dest, host, tarball=dest.with_suffix(".tar.gz"),
                    progress=CAPTURE_STEPS.append)  # what a user watching is told
    return res


@pytest.fixture(scope="module")
def shop_shot(host, tmp_path_factory):
    return A.capture(shop_spec(), tmp_path_factory.mktemp("shots") / "shop-1.0.0", host)


def _get(inst, path="/"):
    return http_request(inst.address, inst.port, path)


def test_capture_writes_a_signed_private_appshot(hello_shot, host):
    m = hello_shot.manifest
    assert (m.app, m.version, m.owner, m.vendor, m.kind) == ("hello", "1.0", "acme", "acme",
                                                             "appshot")
    assert m.criu_version.startswith("4.") and m.kernel_release == os.uname().release
    assert any(p.startswith("images/pages-") for p in m.files)
    assert "restore.json" in m.files and "source/app.py" in m.files
    for f in hello_shot.path.rglob("*"):
        assert f.stat().st_mode & 0o077 == 0, f
    assert hello_shot.warmup_requests == 3
    assert [s.split(" ")[0] for s in CAPTURE_STEPS] == [
        "starting", "warming", "dumping", "copying", "recording", "signing", "packing"]
    assert "warming up (3 request(s))" in CAPTURE_STEPS
    assert A.verify(hello_shot.path, host.trust()) == m
    # env (secrets) never in the readable-by-design manifest nor restore.json
    assert "env" not in (hello_shot.path / "manifest.json").read_text()


def test_restore_answers_and_continues_warm_state(hello_shot, host, cleanup):
    inst = A.restore(hello_shot.path, host, lazy=False)
    cleanup.append(inst)
    assert inst.origin == "appshot"
    # three warm-up requests were served before the dump
    assert _get(inst) == (200, b"hello from edgeshot #4\n")
    A.stop(inst, host)


def test_restore_reseeds_each_copy(hello_shot, host, cleanup):
    a = A.restore(hello_shot.path, host, lazy=False)
    cleanup.append(a)
    b = A.restore(hello_shot.path, host, lazy=False)
    cleanup.append(b)
    # lazily too: its command line (on its stack) is not in memory before first touch, so
    # its processes are found by their pids in the pod (recorded at capture)
    c = A.restore(hello_shot.path, host, lazy=True)
    cleanup.append(c)
    assert json.loads((hello_shot.path / "restore.json").read_text())["tier_pids"] == \
        {"web": [2]}
    time.sleep(0.2)
    logs = [(i.log_dir / "web.log").read_text() for i in (a, b, c)]
    assert all("reseeded" in text for text in logs), logs
    ids = {_served_by(i) for i in (a, b, c)}
    assert len(ids) == 3, ids


def _served_by(inst) -> str:
    import socket
    with socket.create_connection((inst.address, inst.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return next(line.split(b":", 1)[1].strip().decode() for line in data.split(b"\r\n")
                if line.lower().startswith(b"x-edgeshot-served-by"))


def test_eight_shop_pods_at_once_with_independent_state(shop_shot, host, cleanup):
    insts: list = [None] * 8
    errors: list = []

    def one(i: int) -> None:
        try:
            insts[i] = A.restore(shop_shot.path, host, lazy=False)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cleanup.extend(i for i in insts if i)
    assert not errors, errors
    assert len({i.slot for i in insts}) == 8
    for n, inst in enumerate(insts):
        body = json.dumps({"product": "mug", "qty": n + 1}).encode()
        status, _ = http_request(inst.address, inst.port, "/cart/s1", method="POST", body=body,
                                 headers={"Content-Type": "application/json"})
        assert status == 200
    for n, inst in enumerate(insts):
        status, body = _get(inst, "/cart/s1")
        cart = json.loads(body)
        assert status == 200 and [it["qty"] for it in cart["items"]] == [n + 1], cart
    for inst in insts:
        A.stop(inst, host)


def test_snapshot_then_restore_keeps_state(hello_shot, host, cleanup, tmp_path):
    inst = A.restore(hello_shot.path, host, lazy=False)
    cleanup.append(inst)
    for _ in range(3):
        _get(inst)
    snap = A.snapshot(inst, host, tmp_path / "snap")
    assert not Path(f"/proc/{inst.pid}/cmdline").exists() or \
        Path(f"/proc/{inst.pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    assert inst.slot not in host.pool().in_use()
    m = A.verify(snap, host.trust())
    assert m.kind == "snapshot" and m.instance == inst.id
    back = A.restore(snap, host, lazy=False)
    cleanup.append(back)
    assert back.origin == "snapshot"
    assert _get(back) == (200, b"hello from edgeshot #7\n")
    A.stop(back, host)


def test_working_set_is_recorded_and_marked_eager(hello_shot):
    ws = hello_shot.manifest.working_set
    assert ws and all(runs for runs in ws.values()), ws
    # every recorded page is non-lazy in the signed images: a lazy restore reads it up front
    for pid, runs in ws.items():
        _, _, entries = _workingset.read_pagemap(hello_shot.path / "images" / f"pagemap-{pid}.img")
        for start, n in runs:
            e = next(e for e in entries if e[1] == start)
            assert not e.get(4, 0) & _workingset.PE_LAZY and _workingset._nr(e) == n
    eager, lazy = _workingset.count_lazy(hello_shot.path / "images")
    assert lazy > 0 and eager > 0
    # the whole working set, not the first faults before a background push (5 pages for
    # hello when CRIU's lazy-pages daemon served the recording restore): the interpreter,
    # the handler and the socket code the requests run through
    assert sum(n for runs in ws.values() for _, n in runs) >= 100


def test_working_set_recording_survives_a_throttled_app(host, tmp_path):
    """A recording restore of a CPU-throttled app: faults race the app's own munmaps (its
    request threads exit), the kernel refuses those copies with EAGAIN and they must be
    retried, or the warm-up hangs (as it did when CRIU's daemon served the recording)."""
    for _ in range(2):
        res = A.capture(hello_spec(tier={"cpu": "0.3"}), tmp_path / f"shot-{_}", host)
        assert sum(n for runs in res.manifest.working_set.values() for _, n in runs) >= 100


def test_lazy_restore_matches_eager_and_serves_faults(hello_shot, host, cleanup):
    eager = A.restore(hello_shot.path, host, lazy=False)
    cleanup.append(eager)
    lazy = A.restore(hello_shot.path, host, lazy=True)
    cleanup.append(lazy)
    assert lazy.lazy and not eager.lazy
    for _ in range(3):
        assert _get(lazy) == _get(eager)
    log = (lazy.criu_work / "lazy-pages.log").read_text()
    assert "Error" not in log, log[-2000:]
    # the daemon served this restore: it ran and handed over the lazy pages
    assert lazy.lazy_pid
    deadline = time.monotonic() + 10
    while _alive(lazy.lazy_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(lazy.lazy_pid), "lazy-pages daemon never finished transferring pages"
    A.stop(eager, host)
    A.stop(lazy, host)


def test_a_lazy_pod_stopped_at_once_leaves_no_lazy_pages_daemon(hello_shot, host):
    """Stopped while its daemon still holds the background push back: the daemon goes with
    the pod (it used to wait for a "finished" word forever, and the log pump with it)."""
    lazy = A.restore(hello_shot.path, host, lazy=True)
    assert lazy.lazy_pid
    A.stop(lazy, host)
    assert not _alive(lazy.lazy_pid), "lazy-pages daemon outlived its pod"


def _alive(pid: int) -> bool:
    from edgeshot.agent._sys import pid_alive, reap
    reap(pid)
    return pid_alive(pid)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_manifest_is_refused(hello_shot, host, tmp_path, cleanup):
    bad = _copy(hello_shot.path, tmp_path / "bad")
    raw = json.loads((bad / "manifest.json").read_text())
    raw["owner"] = "mallory"
    (bad / "manifest.json").write_bytes(_package.canonical_json(raw))
    with pytest.raises(A.AppshotRejected, match="signature does not match"):
        A.restore(bad, host)
    assert A.list_instances(host) == []


def test_tampered_image_is_refused(hello_shot, host, tmp_path):
    bad = _copy(hello_shot.path, tmp_path / "bad")
    page = next(bad.glob("images/pages-*.img"))
    data = bytearray(page.read_bytes())
    data[100] ^= 0xFF
    page.write_bytes(bytes(data))
    with pytest.raises(A.AppshotRejected, match="SHA-256"):
        A.restore(bad, host)
    assert A.list_instances(host) == []


def test_wrong_key_is_refused_and_trusted_source_cold_starts(hello_shot, host, cleanup):
    other = _package.TrustStore([_package.generate_key()])
    with pytest.raises(A.AppshotRejected, match="untrusted signer"):
        A.restore(hello_shot.path, host, trust=other)
    with pytest.raises(A.AppshotRejected):
        A.restore(hello_shot.path, host, trust=other, fallback=hello_spec(),
                  fallback_trusted=False)
    inst = A.restore(hello_shot.path, host, trust=other, fallback=hello_spec(),
                     fallback_trusted=True)
    cleanup.append(inst)
    assert inst.origin == "cold" and "untrusted signer" in inst.cold_reason
    assert _get(inst) == (200, b"hello from edgeshot #1\n")
    A.stop(inst, host)


def test_foreign_cpu_is_refused_for_the_cpu_not_the_signature(hello_shot, host, tmp_path):
    staged = _package.new_staging_dir(tmp_path / "foreign")
    shutil.rmtree(staged)
    shutil.copytree(hello_shot.path, staged)
    (staged / "manifest.json").unlink()
    (staged / "manifest.sig").unlink()
    m = hello_shot.manifest
    foreign = _package.CpuInfo(arch=m.cpu.arch, vendor="ForeignCPUVendor", model="X",
                               flags=m.cpu.flags)
    _package.build(staged, key=host.key(), app=m.app, version=m.version, owner=m.owner,
                   vendor=m.vendor, tiers=m.tiers, criu_version=m.criu_version, cpu=foreign,
                   entry_port=m.entry_port)
    dest = _package.publish(staged, tmp_path / "foreign")
    assert _package.verify(dest, host.trust()).cpu.vendor == "ForeignCPUVendor"  # signature ok
    with pytest.raises(A.IncompatibleCPU, match="ForeignCPUVendor"):
        A.restore(dest, host)


def test_io_uring_app_is_refused_at_capture(host, tmp_path):
    spec = inline_spec(tmp_path, "uring", URING_APP)
    with pytest.raises(A.NotRestorable, match="io_uring") as exc:
        A.capture(spec, tmp_path / "uring-shot", host)
    assert "asyncio" in str(exc.value)
    assert not (tmp_path / "uring-shot").exists()
    assert A.list_instances(host) == []


def test_restored_pod_over_its_memory_limit_is_killed(host, tmp_path, cleanup):
    spec = inline_spec(tmp_path, "hog", HOG_APP, memory_mb=64)
    shot = A.capture(spec, tmp_path / "hog-shot", host)
    inst = A.restore(shot.path, host, lazy=False)
    cleanup.append(inst)
    assert _get(inst, "/alloc/8")[0] == 200
    cg = _cgroups.PodCgroup(inst.cgroup)
    assert cg.oom_kills() == 0
    with pytest.raises(OSError):
        _get(inst, "/alloc/200")
    deadline = time.monotonic() + 5
    while cg.oom_kills() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cg.oom_kills() >= 1
    with pytest.raises(OSError):
        _get(inst)
    A.stop(inst, host)


def test_tarball_roundtrip_restores(hello_shot, host, tmp_path, cleanup):
    tar = hello_shot.path.with_suffix(".tar.gz")
    m = A.unpack(tar, tmp_path / "unpacked", host.trust())
    assert m == hello_shot.manifest
    inst = A.restore(tmp_path / "unpacked", host, lazy=False)
    cleanup.append(inst)
    assert _get(inst) == (200, b"hello from edgeshot #4\n")
    A.stop(inst, host)


def test_cold_start_fallback_without_criu(host, monkeypatch, cleanup, hello_shot):
    monkeypatch.setenv("EDGESHOT_CRIU", "/nonexistent/criu")
    _criu.status.cache_clear()
    try:
        assert not A.criu_status().usable
        with pytest.raises(A.NotRestorable, match="CRIU unavailable"):
            A.restore(hello_shot.path, host)
        inst = A.restore(hello_shot.path, host, fallback=hello_spec())
        cleanup.append(inst)
        assert inst.origin == "cold" and inst.cold_reason
        assert _get(inst) == (200, b"hello from edgeshot #1\n")
        A.stop(inst, host)
    finally:
        monkeypatch.undo()
        _criu.status.cache_clear()


def test_a_command_using_port_is_captured_and_restored(host, tmp_path, cleanup):
    """`python3 -m http.server ${PORT}` (no shell): captured, restored, answering HTTP; its
    process is found by its expanded command line (what the reseed signal relies on)."""
    src = tmp_path / "static"
    src.mkdir()
    (src / "index.html").write_text("static over $PORT\n")
    spec = A.PodSpec(app="static", version="1", source_dir=src, tiers=(A.TierSpec(
        name="web", entry=True, health_path="/", port=8123,
        command=("python3", "-m", "http.server", "${PORT}", "--bind", "0.0.0.0")),))
    shot = A.capture(spec, tmp_path / "static-1", host, working_set=False)
    meta = json.loads((shot.path / "restore.json").read_text())
    assert list(meta["tier_pids"]) == ["web"]  # matched by its expanded command line
    inst = A.restore(shot.path, host, lazy=False)
    cleanup.append(inst)
    assert (inst.port, _get(inst)) == (8123, (200, b"static over $PORT\n"))
    A.stop(inst, host)


def test_appshot_list_prints_json_for_scripts(hello_shot, host):
    from typer.testing import CliRunner

    from edgeshot.cli import app
    res = CliRunner().invoke(app, ["appshot", "list", "--appshots", str(hello_shot.path.parent),
                                   "--state-dir", str(host.state_dir), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    shots = [s for s in doc["appshots"] if s["path"] == str(hello_shot.path)]
    assert [(s["kind"], s["app"], s["version"], s["owner"]) for s in shots] == [
        ("appshot", "hello", "1.0", "acme")]
    assert isinstance(doc["instances"], list)
