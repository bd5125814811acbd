"""The appshot package format: signing, verification, atomicity, safe tarballs.

Why these tests matter: the agent restores appshots as root, so every way of
slipping bytes past `verify` (tampered manifest or image, extra/missing file,
foreign key, link or path tricks in a tarball) must be refused, and a crash
or full disk must never leave a directory that looks like a good appshot.
"""

from __future__ import annotations

import errno
import io
import json
import os
import platform
import signal
import stat
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeshot.agent import _package as pkg
from edgeshot.agent._package import (
    AppshotError,
    AppshotRejected,
    CpuInfo,
    IncompatibleCPU,
    Manifest,
    TrustStore,
)

ARCH = platform.machine()
TEST_CPU = CpuInfo(arch=ARCH, vendor="GenuineIntel", model="Test CPU", flags=("sse2", "avx2"))
TIERS = [
    {"name": "web", "command": ["python", "-m", "shop.web"], "port": 8000, "entry": True},
    {"name": "store", "command": "python -m shop.store", "port": 7000},
]
FILES = {
    "images/pages-1.img": os.urandom(300_000),
    "images/pagemap-1.img": b"pagemap" * 10,
    "images/inventory.img": b"inv",
    "app/source.tar": b"source bytes",
    "empty.img": b"",
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def keys():
    return {
        "center": pkg.generate_key(),
        "server": pkg.generate_key(),
        "stranger": pkg.generate_key(),
    }


@pytest.fixture
def trust(keys):
    return TrustStore([keys["center"].public_key(), keys["server"].public_key()])


def stage_files(stage: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        p = stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o644)  # build must lock it down
    return stage


def build_kwargs(**over):
    kw = dict(
        app="shop",
        version="1.2.0",
        owner="acme",
        vendor="shopsoft",
        tiers=TIERS,
        criu_version="4.2.1",
        kernel_release="6.1.0-test",
        cpu=TEST_CPU,
        working_set={"pagemap-1.img": [(0x7F0000000000, 4), (0x7F0000010000, 1)]},
    )
    kw.update(over)
    return kw


def make_appshot(root: Path, key, name: str = "shop-1.2.0", **over) -> tuple[Path, Manifest]:
    final = root / name
    stage = stage_files(pkg.new_staging_dir(final))
    manifest = pkg.build(stage, key=key, **build_kwargs(**over))
    pkg.publish(stage, final)
    return final, manifest


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# --------------------------------------------------------------------------- manifest model


def test_build_writes_signed_canonical_manifest_and_locks_modes(tmp_path, keys, trust):
    final, m = make_appshot(tmp_path, keys["center"])
    data = (final / "manifest.json").read_bytes()
    assert data == pkg.canonical_json(json.loads(data))
    assert b"\n" not in data and b", " not in data and b": " not in data
    assert m.signer == pkg.key_id(keys["center"]) and len(m.signer) == 16
    assert m.entry_port == 8000 and m.entry_tier.name == "web"
    assert m.kind == "appshot" and m.created.tzinfo is not None
    assert set(m.files) == set(FILES)
    assert m.files["images/inventory.img"].size == 3
    assert m.working_set["pagemap-1.img"][0] == (0x7F0000000000, 4)
    for p in [final, *final.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), p
    assert pkg.verify(final, trust) == m
    assert pkg.parse_manifest(data) == m


def test_manifest_is_frozen_and_forbids_extra_fields(tmp_path, keys):
    _, m = make_appshot(tmp_path, keys["center"])
    with pytest.raises(ValueError):
        m.app = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        Manifest.model_validate({**m.model_dump(), "surprise": 1})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": 2}, "format 2 is not supported"),
        ({"created": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"files": {"../etc/passwd": None}}, "unsafe"),
        ({"files": {"/abs": None}}, "unsafe"),
        ({"files": {"a//b": None}}, "unsafe"),
        ({"files": {"manifest.sig": None}}, "reserved"),
        ({"tiers": [{"name": "web", "command": "x"}]}, "exactly one tier"),
        ({"tiers": [{"name": "a", "command": "x", "entry": True}] * 2}, "duplicate tier"),
        ({"signer": "not-hex"}, "signer"),
        ({"working_set": {"p": [[0, 0]]}}, "greater than or equal to 1"),
    ],
)
def test_manifest_validation(tmp_path, keys, change, match):
    _, m = make_appshot(tmp_path, keys["center"])
    data = m.model_dump(mode="json")
    entry = {"sha256": "0" * 64, "size": 0, "mode": 0o600}
    if "files" in change:
        change = {"files": dict.fromkeys(change["files"], entry)}
    with pytest.raises(ValueError, match=match):
        Manifest.model_validate({**data, **change})


def test_created_is_normalised_to_utc(tmp_path, keys):
    eastern = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    _, m = make_appshot(tmp_path, keys["center"], created=eastern)
    assert m.created == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    assert m.created.utcoffset() == timedelta(0)


_segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
_relpath = (
    st.lists(_segment, min_size=1, max_size=3)
    .map("/".join)
    .filter(lambda p: p not in ("manifest.json", "manifest.sig"))
)
_entry = st.builds(
    pkg.FileEntry,
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(0, 2**40),
    mode=st.integers(0, 0o7777),
)
_name = st.text(min_size=1, max_size=20)
_manifests = st.builds(
    Manifest,
    kind=st.sampled_from(["appshot", "snapshot"]),
    app=_name,
    version=_name,
    owner=_name,
    vendor=_name,
    instance=st.none() | _name,
    tiers=st.just((pkg.Tier(name="web", command=("a", "b"), entry=True),)),
    entry_port=st.integers(1, 65535),
    criu_version=st.text(max_size=10),
    kernel_release=st.text(max_size=10),
    cpu=st.builds(CpuInfo, arch=_name, vendor=st.text(), model=st.text(), flags=st.lists(_segment)),
    created=st.datetimes(timezones=st.just(UTC)),
    files=st.dictionaries(_relpath, _entry, max_size=5),
    working_set=st.dictionaries(
        st.text(max_size=10),
        st.lists(st.tuples(st.integers(0, 2**64), st.integers(1, 2**20)), max_size=4).map(tuple),
        max_size=3,
    ),
    signer=st.text("0123456789abcdef", min_size=16, max_size=16),
)


@settings(max_examples=150, deadline=None)
@given(_manifests)
def test_canonical_json_round_trip(m):
    data = m.to_json()
    back = pkg.parse_manifest(data)
    assert back == m
    assert back.to_json() == data
    assert data == pkg.canonical_json(json.loads(data))  # one encoding only
    data.decode("ascii")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_json)
def test_canonical_json_is_a_fixpoint(value):
    data = pkg.canonical_json(value)
    assert json.loads(data) == value
    assert pkg.canonical_json(json.loads(data)) == data


def test_duplicate_json_keys_are_refused():
    with pytest.raises(AppshotRejected, match="duplicate key"):
        pkg.parse_manifest(b'{"app":"a","app":"b"}')


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("fmt", ["pem", "raw"])
def test_key_save_load_round_trip(tmp_path, fmt):
    key = pkg.generate_key()
    priv = pkg.save_private_key(key, tmp_path / "signing.key", format=fmt)
    pub = pkg.save_public_key(key, tmp_path / "signing.pub", format=fmt)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pkg.key_id(pkg.load_private_key(priv)) == pkg.key_id(key)
    assert pkg.key_id(pkg.load_public_key(pub)) == pkg.key_id(key)
    assert pkg.key_id(key.public_key()) == pkg.key_id(key)
    with pytest.raises(AppshotError, match="refusing to overwrite"):
        pkg.save_private_key(key, priv)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_private_key_readable_by_others_is_refused(tmp_path):
    path = pkg.save_private_key(pkg.generate_key(), tmp_path / "k")
    path.chmod(0o644)
    with pytest.raises(AppshotError, match="chmod 600"):
        pkg.load_private_key(path)


def test_bad_key_file_error_does_not_quote_key_bytes(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"SECRETSECRET" * 5)
    path.chmod(0o600)
    with pytest.raises(AppshotError) as exc:
        pkg.load_private_key(path)
    assert "SECRET" not in str(exc.value)


def test_trust_store_from_dir(tmp_path, keys):
    d = tmp_path / "trusted.d"
    d.mkdir(mode=0o755)
    pkg.save_public_key(keys["center"], d / "center.pub")
    pkg.save_public_key(keys["server"], d / "server.pem", format="raw")
    (d / "README").write_text("ignored")
    store = TrustStore.from_dir(d)
    assert set(store.ids) == {pkg.key_id(keys["center"]), pkg.key_id(keys["server"])}
    assert pkg.key_id(keys["center"]) in store and len(store) == 2
    assert "BEGIN" not in repr(store)
    d.chmod(0o777)
    with pytest.raises(AppshotError, match="writable by group/others"):
        TrustStore.from_dir(d)


# --------------------------------------------------------------------------- verify: tampering


def _rewrite_manifest(final: Path, keys, sign_with: str | None, **change):
    obj = json.loads((final / "manifest.json").read_bytes())
    obj.update(change)
    data = pkg.canonical_json(obj)
    (final / "manifest.json").write_bytes(data)
    if sign_with:
        (final / "manifest.sig").write_bytes(keys[sign_with].sign(data))


def _flip_byte(path: Path, offset: int = 1000):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _resign_with_stranger_id(final, keys):
    _rewrite_manifest(final, keys, "stranger", signer=pkg.key_id(keys["stranger"]))


TAMPER = [
    # (id, mutate(final, keys), reason fragment)
    (
        "tampered-manifest",
        lambda f, k: _rewrite_manifest(f, k, None, owner="mallory"),
        "signature does not match manifest",
    ),
    (
        "manifest-resigned-by-stranger",
        lambda f, k: _rewrite_manifest(f, k, "stranger", owner="mallory"),
        "signature does not match manifest",
    ),
    ("stranger-claims-own-id", _resign_with_stranger_id, "untrusted signer"),
    (
        "bad-signature-bytes",
        lambda f, k: _flip_byte(f / "manifest.sig", 3),
        "signature does not match manifest",
    ),
    (
        "truncated-signature",
        lambda f, k: (f / "manifest.sig").write_bytes(b"x" * 10),
        "signature does not match manifest",
    ),
    ("no-signature", lambda f, k: (f / "manifest.sig").unlink(), "missing signature"),
    ("no-manifest", lambda f, k: (f / "manifest.json").unlink(), "missing manifest"),
    (
        "tampered-image",
        lambda f, k: _flip_byte(f / "images/pages-1.img"),
        "images/pages-1.img does not match its SHA-256",
    ),
    (
        "truncated-image",
        lambda f, k: (f / "images/pages-1.img").write_bytes(b"short"),
        "images/pages-1.img has 5 bytes, the manifest says 300000",
    ),
    (
        "extra-file",
        lambda f, k: (f / "images/evil.img").write_bytes(b"x"),
        "unexpected file images/evil.img",
    ),
    (
        "extra-file-in-new-dir",
        lambda f, k: ((f / "x").mkdir(), (f / "x/y").write_bytes(b"")),
        "unexpected file x/y",
    ),
    (
        "missing-file",
        lambda f, k: (f / "images/inventory.img").unlink(),
        "missing file images/inventory.img",
    ),
    (
        "image-replaced-by-symlink",
        lambda f, k: (
            (f / "images/inventory.img").unlink(),
            (f / "images/inventory.img").symlink_to("/etc/hostname"),
        ),
        "images/inventory.img is a symlink",
    ),
    ("fifo", lambda f, k: os.mkfifo(f / "images/pipe"), "images/pipe is a FIFO"),
    (
        "group-readable-image",
        lambda f, k: (f / "images/pages-1.img").chmod(0o640),
        "images/pages-1.img has mode 0640",
    ),
    ("world-readable-dir", lambda f, k: (f / "images").chmod(0o755), "images has mode 0755"),
    ("world-readable-root", lambda f, k: f.chmod(0o711), ". has mode 0711"),
    (
        "setuid-image",
        lambda f, k: (f / "empty.img").chmod(0o4600),
        "empty.img has mode 4600: setuid",
    ),
    (
        "mode-differs-from-manifest",
        lambda f, k: (f / "empty.img").chmod(0o400),
        "empty.img has mode 0400, the manifest says 0600",
    ),
]


@pytest.mark.parametrize(("mutate", "reason"), [t[1:] for t in TAMPER], ids=[t[0] for t in TAMPER])
def test_verify_refuses_tampering(tmp_path, keys, trust, mutate, reason):
    final, _ = make_appshot(tmp_path, keys["center"])
    mutate(final, keys)
    with pytest.raises(AppshotRejected) as exc:
        pkg.verify(final, trust)
    assert reason in exc.value.reason
    assert str(final) in str(exc.value)


def test_wrong_key_is_an_untrusted_signer(tmp_path, keys, trust):
    final, _ = make_appshot(tmp_path, keys["stranger"])
    with pytest.raises(AppshotRejected) as exc:
        pkg.verify(final, trust)
    assert exc.value.reason.startswith(f"untrusted signer {pkg.key_id(keys['stranger'])}")


def test_signature_is_checked_before_files(tmp_path, keys, trust):
    final, _ = make_appshot(tmp_path, keys["center"])
    _flip_byte(final / "images/pages-1.img")
    (final / "images/inventory.img").unlink()
    _rewrite_manifest(final, keys, None, app="other")
    with pytest.raises(AppshotRejected, match="signature does not match manifest"):
        pkg.verify(final, trust)


def test_server_key_signs_snapshots(tmp_path, keys, trust):
    final, m = make_appshot(tmp_path, keys["server"], kind="snapshot", instance="shop-7f3a")
    assert pkg.verify(final, trust) == m
    assert (m.kind, m.instance) == ("snapshot", "shop-7f3a")
    with pytest.raises(AppshotRejected, match="untrusted signer"):
        pkg.verify(final, [keys["center"].public_key()])  # the center alone does not know it


def test_build_takes_spec_like_tiers(tmp_path, keys, trust):
    class SpecTier:  # any object with the fields, like edgeshot.spec's Tier
        name, command, port, entry, env = "web", ("gunicorn", "app:app"), 9000, True, {"K": "v"}

    final, m = make_appshot(
        tmp_path,
        keys["center"],
        tiers=[SpecTier(), {"name": "w", "command": "python -m 'a b'", "reseed_signal": "SIGUSR2"}],
    )
    assert m.tiers[0].command == ("gunicorn", "app:app") and m.entry_port == 9000
    assert m.tiers[1].command == ("python", "-m", "a b")
    assert m.tiers[1].reseed_signal == "SIGUSR2"
    assert b"env" not in (final / "manifest.json").read_bytes()  # env may hold secrets
    with pytest.raises(AppshotError, match="cannot build"):
        pkg.build(
            stage_files(pkg.new_staging_dir(tmp_path / "y")),
            key=keys["center"],
            **build_kwargs(tiers=[{"name": "web", "command": []}]),
        )


def test_build_refuses_links_and_publish_refuses_unbuilt(tmp_path, keys):
    stage = stage_files(pkg.new_staging_dir(tmp_path / "x"))
    (stage / "link").symlink_to("images/inventory.img")
    with pytest.raises(AppshotError, match="link is a symlink; appshots hold regular files only"):
        pkg.build(stage, key=keys["center"], **build_kwargs())
    with pytest.raises(AppshotError, match="call build"):
        pkg.publish(stage, tmp_path / "x")


def test_verify_cache_skips_rehash_only_while_nothing_changed(tmp_path, keys, trust, monkeypatch):
    final, m = make_appshot(tmp_path, keys["center"])
    fresh = pkg.VerifyCache()  # default settle time: just-written files are never cached
    pkg.verify(final, trust, cache=fresh)
    pkg.verify(final, trust, cache=fresh)
    assert fresh.hits == 0

    cache = pkg.VerifyCache(settle_s=0.05)
    time.sleep(0.1)
    assert pkg.verify(final, trust, cache=cache) == m
    real_hash = pkg._hash_file
    monkeypatch.setattr(pkg, "_hash_file", lambda p: pytest.fail(f"re-hashed {p}"))
    assert pkg.verify(final, trust, cache=cache) == m
    assert cache.hits == 1
    with pytest.raises(AppshotRejected, match="untrusted signer"):  # revocation is immediate
        pkg.verify(final, [keys["server"].public_key()], cache=cache)
    monkeypatch.setattr(pkg, "_hash_file", real_hash)
    _flip_byte(final / "images/pages-1.img")  # same size, new ctime
    with pytest.raises(AppshotRejected, match="does not match its SHA-256"):
        pkg.verify(final, trust, cache=cache)
    assert cache.hits == 1


# --------------------------------------------------------------------------- CPU


def test_foreign_cpu_is_refused_for_the_cpu_not_the_signature(tmp_path, keys, trust):
    foreign = CpuInfo(arch=ARCH, vendor="GenuineIntel", model="Xeon", flags=("avx2", "avx512f"))
    final, _ = make_appshot(tmp_path, keys["center"], cpu=foreign)
    m = pkg.verify(final, trust)  # genuine: passes every integrity check
    local = CpuInfo(arch=ARCH, vendor="GenuineIntel", model="Core", flags=("avx2", "sse2"))
    with pytest.raises(IncompatibleCPU) as exc:
        pkg.check_cpu(m, local=local)
    assert not isinstance(exc.value, AppshotRejected)
    assert exc.value.missing_flags == ("avx512f",)
    assert "lacks avx512f" in str(exc.value)


@pytest.mark.parametrize(
    ("captured", "local", "match"),
    [
        (("x86_64", "GenuineIntel", ("avx2",)), ("x86_64", "GenuineIntel", ("avx2", "sse2")), None),
        (
            ("x86_64", "GenuineIntel", ("avx2",)),
            ("x86_64", "AuthenticAMD", ("avx2",)),
            "AuthenticAMD",
        ),
        (("x86_64", "GenuineIntel", ("avx2",)), ("aarch64", "GenuineIntel", ("avx2",)), "aarch64"),
        (
            ("x86_64", "X", ("avx2", "sha_ni", "vaes")),
            ("x86_64", "X", ("avx2",)),
            "lacks sha_ni, vaes",
        ),
        (("x86_64", "X", ()), ("x86_64", "X", ("avx2",)), None),
    ],
)
def test_check_cpu_table(tmp_path, keys, captured, local, match):
    arch, vendor, flags = captured
    m = pkg.build(
        stage_files(pkg.new_staging_dir(tmp_path / "a")),
        key=keys["center"],
        **build_kwargs(cpu=CpuInfo(arch=arch, vendor=vendor, flags=flags)),
    )
    la, lv, lf = local
    local_cpu = CpuInfo(arch=la, vendor=lv, flags=lf)
    if match is None:
        pkg.check_cpu(m, local=local_cpu)
    else:
        with pytest.raises(IncompatibleCPU, match=match):
            pkg.check_cpu(m, local=local_cpu)


def test_local_cpu_default_accepts_an_appshot_captured_here(tmp_path, keys, trust):
    final, _ = make_appshot(tmp_path, keys["center"], cpu=None)  # default: this machine
    m = pkg.verify(final, trust)
    assert m.cpu == pkg.local_cpu()
    pkg.check_cpu(m)


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248
flags\t\t: fpu sse sse2 avx avx2 avx512f hypervisor ssbd

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu sse
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


@pytest.mark.parametrize(
    ("text", "arch", "vendor", "model", "flags"),
    [
        (
            X86_CPUINFO,
            "x86_64",
            "GenuineIntel",
            "Intel(R) Xeon(R) Gold 6248",
            ("avx", "avx2", "avx512f", "sse", "sse2"),
        ),
        (
            ARM_CPUINFO,
            "aarch64",
            "0x41",
            "0xd0c",
            ("aes", "asimd", "atomics", "crc32", "fp", "pmull", "sha1", "sha2"),
        ),
        ("", "riscv64", "unknown", "", ()),
    ],
)
def test_parse_cpuinfo(text, arch, vendor, model, flags):
    cpu = pkg.parse_cpuinfo(text, arch)
    assert (cpu.arch, cpu.vendor, cpu.model, cpu.flags) == (arch, vendor, model, flags)


# --------------------------------------------------------------------------- publish / atomicity


class Crash(BaseException):
    """Stands for the process dying: no except-Exception handler catches it."""


def test_publish_refuses_existing_and_foreign_dirs(tmp_path, keys):
    final, _ = make_appshot(tmp_path, keys["center"])
    stage = stage_files(pkg.new_staging_dir(final))
    pkg.build(stage, key=keys["center"], **build_kwargs())
    with pytest.raises(AppshotError, match="already exists"):
        pkg.publish(stage, final)
    with pytest.raises(AppshotError, match="must be beside"):
        pkg.publish(stage, tmp_path / "elsewhere" / "shop")


@pytest.mark.parametrize("crash_at", ["fsync", "rename"])
def test_crash_mid_publish_leaves_nothing_that_looks_complete(
    tmp_path, keys, trust, monkeypatch, crash_at
):
    final = tmp_path / "shop-1"
    stage = stage_files(pkg.new_staging_dir(final))
    pkg.build(stage, key=keys["center"], **build_kwargs())
    calls = {"n": 0}
    real = getattr(os, crash_at)

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3 or crash_at == "rename":
            raise Crash
        return real(*a, **kw)

    monkeypatch.setattr(os, crash_at, dying)
    with pytest.raises(Crash):
        pkg.publish(stage, final)
    monkeypatch.undo()
    assert not final.exists()
    assert pkg.is_staging_dir(stage) and stage.exists()
    assert pkg.cleanup_stale(tmp_path) == []  # our own pid is alive: might still be working
    assert pkg.cleanup_stale(tmp_path, force=True) == [stage]
    assert leftovers(tmp_path) == []


def test_enospc_while_writing_manifest_leaves_an_unbuilt_stage(tmp_path, keys, monkeypatch):
    final = tmp_path / "shop-1"
    stage = stage_files(pkg.new_staging_dir(final))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as exc:
        pkg.build(stage, key=keys["center"], **build_kwargs())
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC
    assert not (stage / "manifest.sig").exists()
    with pytest.raises(AppshotError, match="not built"):
        pkg.publish(stage, final)
    assert not final.exists()


def test_staging_context_removes_unpublished_stage(tmp_path, keys):
    final = tmp_path / "shop-1"
    with pytest.raises(RuntimeError):
        with pkg.staging(final) as stage:
            stage_files(stage)
            raise RuntimeError("capture failed")
    assert leftovers(tmp_path) == []
    with pkg.staging(final) as stage:
        stage_files(stage)
        pkg.build(stage, key=keys["center"], **build_kwargs())
        pkg.publish(stage, final)
    assert leftovers(tmp_path) == ["shop-1"]


def test_cleanup_stale_ignores_appshots_and_other_entries(tmp_path, keys):
    final, _ = make_appshot(tmp_path, keys["center"])
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".shop-2.staging-999999999-abcdefabcdef").mkdir()  # dead pid
    (tmp_path / f".shop-3.staging-{os.getpid()}-abcdefabcdef").mkdir()  # our pid, previous boot
    removed = pkg.cleanup_stale(tmp_path)
    assert [p.name for p in removed] == [
        ".shop-2.staging-999999999-abcdefabcdef",
        f".shop-3.staging-{os.getpid()}-abcdefabcdef",
    ]
    assert leftovers(tmp_path) == [".hidden", final.name]
    assert pkg.cleanup_stale(tmp_path / "absent") == []


# --------------------------------------------------------------------------- tarballs


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.zst"])
def test_pack_unpack_round_trip(tmp_path, keys, trust, suffix):
    if suffix == ".tar.zst" and pkg.tar_suffix() != ".tar.zst":
        pytest.skip("zstd tool not installed")
    final, m = make_appshot(tmp_path / "a", keys["center"])
    tar = pkg.pack(final, tmp_path / f"shop{suffix}")
    assert stat.S_IMODE(tar.stat().st_mode) == 0o600
    with tarfile.open(tar, mode="r:gz") if suffix == ".tar.gz" else _zst(tar) as tf:
        names = tf.getnames()
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert "images" in names and "images/pages-1.img" in names
    dest = tmp_path / "b" / "shop-1.2.0"
    assert pkg.unpack(tar, dest, trust) == m
    assert pkg.verify(dest, trust) == m
    for rel, data in FILES.items():
        assert (dest / rel).read_bytes() == data
    assert leftovers(dest.parent) == ["shop-1.2.0"]
    again = pkg.pack(final, tmp_path / f"again{suffix}")
    assert again.read_bytes() == tar.read_bytes()  # deterministic
    with pytest.raises(AppshotError, match="already exists"):
        pkg.unpack(tar, dest, trust)


def _zst(path: Path) -> tarfile.TarFile:
    out = subprocess.run(["zstd", "-d", "-c", str(path)], capture_output=True, check=True).stdout
    return tarfile.open(fileobj=io.BytesIO(out), mode="r:")


def _info(
    name: str, data: bytes = b"", type_=tarfile.REGTYPE, **kw
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.size = len(data) if type_ == tarfile.REGTYPE else 0
    ti.mode = 0o600
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, data


def _write_tar(path: Path, members) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return path


def _signed_prefix(final: Path):
    return [
        _info("manifest.json", (final / "manifest.json").read_bytes()),
        _info("manifest.sig", (final / "manifest.sig").read_bytes()),
    ]


def _rest(final: Path, skip=()):
    return [_info(rel, (final / rel).read_bytes()) for rel in sorted(FILES) if rel not in skip]


EVIL = [
    # (id, members(final), reason fragment)
    ("absolute-path", lambda f: [*_signed_prefix(f), _info("/tmp/evil", b"x")], "unsafe path"),
    ("dotdot", lambda f: [*_signed_prefix(f), _info("../evil", b"x")], "unsafe path"),
    (
        "inner-dotdot",
        lambda f: [*_signed_prefix(f), _info("images/../../evil", b"x")],
        "unsafe path",
    ),
    ("dotdot-first", lambda f: [_info("../evil", b"x")], "unsafe path"),
    (
        "symlink-escape",
        lambda f: [*_signed_prefix(f), _info("images/x", type_=tarfile.SYMTYPE, linkname="/etc")],
        "is a link",
    ),
    (
        "hardlink",
        lambda f: [
            *_signed_prefix(f),
            _info("images/x", type_=tarfile.LNKTYPE, linkname="/etc/passwd"),
        ],
        "is a link",
    ),
    (
        "char-device",
        lambda f: [
            *_signed_prefix(f),
            _info("images/null", type_=tarfile.CHRTYPE, devmajor=1, devminor=3),
        ],
        "device or special file",
    ),
    (
        "fifo",
        lambda f: [*_signed_prefix(f), _info("p", type_=tarfile.FIFOTYPE)],
        "device or special",
    ),
    (
        "unlisted-file",
        lambda f: [*_signed_prefix(f), _info("images/evil.img", b"x")],
        "unexpected file images/evil.img",
    ),
    (
        "size-mismatch",
        lambda f: [*_signed_prefix(f), _info("images/inventory.img", b"inventory!")],
        "images/inventory.img has 10 bytes, the manifest says 3",
    ),
    (
        "same-size-different-bytes",
        lambda f: [
            *_signed_prefix(f),
            *_rest(f, {"images/inventory.img"}),
            _info("images/inventory.img", b"INV"),
        ],
        "images/inventory.img does not match its SHA-256",
    ),
    (
        "missing-member",
        lambda f: [*_signed_prefix(f), *_rest(f, {"app/source.tar"})],
        "missing file app/source.tar",
    ),
    ("duplicate-member", lambda f: [*_signed_prefix(f), *_rest(f), *_rest(f)[:1]], "appears twice"),
    (
        "payload-before-manifest",
        lambda f: [*_rest(f), *_signed_prefix(f)],
        "must start with manifest.json",
    ),
    ("no-manifest", lambda f: [], "no signed manifest.json"),
    (
        "manifest-as-directory",
        lambda f: [_info("manifest.json", type_=tarfile.DIRTYPE)],
        "manifest.json is a directory",
    ),
    (
        "tampered-manifest",
        lambda f: [
            _info("manifest.json", (f / "manifest.json").read_bytes().replace(b"acme", b"evil")),
            _signed_prefix(f)[1],
            *_rest(f),
        ],
        "signature does not match manifest",
    ),
    (
        "sig-before-manifest",
        lambda f: [_signed_prefix(f)[1], _signed_prefix(f)[0], *_rest(f)],
        "must start with manifest.json",
    ),
]


@pytest.mark.parametrize(("members", "reason"), [e[1:] for e in EVIL], ids=[e[0] for e in EVIL])
def test_unpack_refuses_evil_tarballs_and_leaves_nothing(tmp_path, keys, trust, members, reason):
    final, _ = make_appshot(tmp_path / "src", keys["center"])
    tar = _write_tar(tmp_path / "evil.tar.gz", members(final))
    store = tmp_path / "store" / "sub"
    store.mkdir(parents=True)
    dest = store / "shop"
    with pytest.raises(AppshotRejected) as exc:
        pkg.unpack(tar, dest, trust)
    assert reason in exc.value.reason
    assert leftovers(store) == []
    assert not (tmp_path / "store" / "evil").exists() and not Path("/tmp/evil").exists()


def test_unpack_untrusted_tarball(tmp_path, keys, trust):
    final, _ = make_appshot(tmp_path / "src", keys["stranger"])
    tar = pkg.pack(final, tmp_path / "s.tar.gz")
    with pytest.raises(AppshotRejected, match="untrusted signer"):
        pkg.unpack(tar, tmp_path / "store" / "shop", trust)
    assert leftovers(tmp_path / "store") == []


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.zst"])
@pytest.mark.parametrize("cut", [100, 5000, -50])
def test_unpack_truncated_tarball(tmp_path, keys, trust, cut, suffix):
    if suffix == ".tar.zst" and pkg.tar_suffix() != ".tar.zst":
        pytest.skip("zstd tool not installed")
    final, _ = make_appshot(tmp_path / "src", keys["center"])
    tar = pkg.pack(final, tmp_path / f"s{suffix}")
    data = tar.read_bytes()
    tar.write_bytes(data[:cut])
    with pytest.raises(AppshotRejected, match="corrupt or truncated"):
        pkg.unpack(tar, tmp_path / "store" / "shop", trust)
    assert leftovers(tmp_path / "store") == []


def test_enospc_during_unpack_leaves_nothing(tmp_path, keys, trust, monkeypatch):
    final, _ = make_appshot(tmp_path / "src", keys["center"])
    tar = pkg.pack(final, tmp_path / "s.tar.gz")
    store = tmp_path / "store"
    store.mkdir()
    budget = {"left": 100_000}
    real_write = os.write

    def filling_disk(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(store)):
            if budget["left"] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = bytes(data)[: budget["left"]]
            budget["left"] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", filling_disk)
    with pytest.raises(OSError) as exc:
        pkg.unpack(tar, store / "shop", trust)
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC
    assert leftovers(store) == []


CRASHER = """
import os, signal, sys
from edgeshot.agent import _package as pkg
written = 0
real = os.write
def write(fd, data):
    global written
    if os.readlink(f"/proc/self/fd/{fd}").startswith(sys.argv[3]):
        written += len(data)
        if written > 50_000:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(fd, data)
os.write = write
pkg.unpack(sys.argv[1], sys.argv[2], [pkg.load_public_key(sys.argv[4])])
"""


def test_killed_mid_unpack_leaves_only_a_recognisable_stale_stage(tmp_path, keys, trust):
    final, _ = make_appshot(tmp_path / "src", keys["center"])
    tar = pkg.pack(final, tmp_path / "s.tar.gz")
    pub = pkg.save_public_key(keys["center"], tmp_path / "center.pub")
    store = tmp_path / "store"
    store.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(tar), str(store / "shop"), str(store), str(pub)],
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    left = list(store.iterdir())
    assert len(left) == 1 and pkg.is_staging_dir(left[0])
    assert not (store / "shop").exists()
    with pytest.raises(AppshotRejected):
        pkg.verify(left[0], trust)  # and even a direct look finds it incomplete
    assert pkg.cleanup_stale(store) == left  # the dead process's pid is in the name
    assert leftovers(store) == []
    assert pkg.unpack(tar, store / "shop", trust).app == "shop"
