"""The appshot package: a signed directory of CRIU images and app files.

Why so strict: an appshot holds a frozen process tree that the agent restores
*as root*, with the app's memory (secrets included) inside. Restoring a
tampered image runs the tamperer's code as root, and a world-readable image
leaks the app's secrets. So every appshot carries a manifest naming each file
with its size, SHA-256 and mode, signed with Ed25519 by a key the server
trusts (the deployment center's for appshots, the server's own for an
instance's snapshots), and nothing is restored until the signature, every
checksum, the file set and the modes have been checked (`verify`) and the CPU
is known to run the captured code (`check_cpu`).

Layout of an appshot directory::

    manifest.json   canonical JSON of `Manifest` (sorted keys, no spaces)
    manifest.sig    64-byte Ed25519 signature over manifest.json's exact bytes
    <files...>      regular files only, 0600; directories 0700

Life cycle: write into a staging directory beside the final one
(`new_staging_dir`/`staging`), `build` it (hash, manifest, sign), then
`publish` it (fsync + one rename). A crash at any point leaves either nothing
at the final path or a complete appshot; leftovers are dot-named staging
directories that `cleanup_stale` removes. For transfer, `pack` writes a
tarball (manifest first) and `unpack` checks each member against the signed
manifest while extracting into staging, verifies, then publishes.

This module is pure library: no CRIU, no network. Key material is never
logged or put in exception messages; only key ids (a short SHA-256 of the
public key) are.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "RESTORE_CPU_FLAGS",
    "AppshotError",
    "AppshotRejected",
    "IncompatibleCPU",
    "Tier",
    "CpuInfo",
    "FileEntry",
    "Manifest",
    "canonical_json",
    "parse_manifest",
    "local_cpu",
    "parse_cpuinfo",
    "check_cpu",
    "generate_key",
    "key_id",
    "save_private_key",
    "load_private_key",
    "save_public_key",
    "load_public_key",
    "TrustStore",
    "new_staging_dir",
    "staging",
    "is_staging_dir",
    "build",
    "publish",
    "verify",
    "VerifyCache",
    "cleanup_stale",
    "tar_suffix",
    "pack",
    "unpack",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
_RESERVED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_MAX_MANIFEST_BYTES = 64 << 20  # a working set of a big app is a few MB at most
_SIG_BYTES = 64
_CHUNK = 1 << 20
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.staging-(?P<pid>\d+)-[0-9a-f]{12}$")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --------------------------------------------------------------------------- errors


class AppshotError(Exception):
    """Anything wrong with an appshot or with handling one (base class)."""


class AppshotRejected(AppshotError):
    """The appshot must not be restored: untrusted, tampered, incomplete or unsafe.

    `reason` is the short cause ("untrusted signer 1a2b...", "signature does
    not match manifest", "unexpected file x.img (not in the manifest)"), for
    tests and for the API's error bodies.
    """

    def __init__(self, reason: str, *, path: os.PathLike[str] | str | None = None):
        self.reason = reason
        self.path = None if path is None else Path(path)
        where = f"appshot {self.path}" if path is not None else "appshot"
        super().__init__(f"{where} rejected: {reason}")


class IncompatibleCPU(AppshotError):
    """A genuine appshot captured on a CPU this server cannot stand in for.

    Separate from `AppshotRejected` on purpose: the image is fine (signed,
    intact), it just belongs on other hardware; the caller may cold-start or
    place the instance elsewhere instead of raising an alarm.
    """

    def __init__(self, reason: str, *, missing_flags: Iterable[str] = ()):
        self.reason = reason
        self.missing_flags = tuple(sorted(missing_flags))
        super().__init__(f"appshot incompatible with this CPU: {reason}")


# --------------------------------------------------------------------------- manifest


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Port = Annotated[int, Field(ge=1, le=65535)]
PageRange = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]]
"""(start virtual address, number of pages): one run of the working set."""


class Tier(_Frozen):
    """One process of the pod, as restore needs it (plain data from the spec).

    No env here on purpose: env may hold secrets, and the manifest is not secret.
    """

    name: _Name
    command: tuple[str, ...] = Field(min_length=1)
    port: _Port = 8000
    entry: bool = False
    # Restored copies share their random state; this signal (e.g. "SIGUSR2") is
    # sent to the tier after each restore so it reseeds. None: no such hook.
    reseed_signal: str | None = None

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return tuple(shlex.split(v)) if isinstance(v, str) else v

    @classmethod
    def of(cls, tier: Any) -> Tier:
        """From a `Tier`, a mapping, or any object with the same attributes (spec tiers)."""
        if isinstance(tier, Tier):
            return tier
        if isinstance(tier, Mapping):
            return cls.model_validate(tier)
        return cls(**{f: getattr(tier, f) for f in cls.model_fields if hasattr(tier, f)})


class CpuInfo(_Frozen):
    """What a restored process assumes about the CPU it was captured on.

    Programs pick code paths once, at start-up (glibc ifuncs, numpy's SIMD
    dispatch, OpenSSL's capability probe); a restored process keeps those
    choices, so running it where an instruction set is missing dies with
    SIGILL at some random later moment. `flags` holds only the instruction
    set extensions that matter for that (`RESTORE_CPU_FLAGS`), so unrelated
    flags (hypervisor, bug mitigations) do not make servers look different.
    """

    arch: _Name
    vendor: str
    model: str = ""
    flags: tuple[str, ...] = ()

    @field_validator("flags")
    @classmethod
    def _sorted_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))


class FileEntry(_Frozen):
    """Size, SHA-256 (hex) and permission bits of one packaged file."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]
    mode: Annotated[int, Field(ge=0, le=0o7777)]


def _check_relpath(p: str) -> str:
    """A manifest path: relative, normalised, inside the appshot, not reserved."""
    parts = p.split("/")
    if (
        not p
        or p.startswith("/")
        or "\x00" in p
        or "\\" in p
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"unsafe or non-normalised path {p!r}")
    if p in _RESERVED:
        raise ValueError(f"{p!r} is reserved for the signature")
    return p


class Manifest(_Frozen):
    """Everything an agent needs to trust, place, restore and bill an appshot.

    Signed as a whole: `owner` and `vendor` drive billing, `cpu`/`kernel_release`/
    `criu_version` decide where it may be restored, `files` pins every byte.
    """

    format: int = FORMAT_VERSION
    kind: Literal["appshot", "snapshot"]
    app: _Name
    version: _Name
    owner: str  # who is billed; "" only for local experiments
    vendor: str  # who wrote the app (ISV usage); "" when unknown
    instance: str | None = None  # set for kind="snapshot": whose state this is
    tiers: tuple[Tier, ...] = Field(min_length=1)
    entry_port: _Port
    criu_version: str
    kernel_release: str
    cpu: CpuInfo
    created: datetime
    files: dict[str, FileEntry]
    working_set: dict[str, tuple[PageRange, ...]] = Field(default_factory=dict)
    signer: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(
                f"appshot format {v} is not supported by this edgeshot (format {FORMAT_VERSION});"
                " upgrade the agent or re-capture"
            )
        return v

    @field_validator("created")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created must be timezone-aware (UTC)")
        return v.astimezone(UTC)

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for p in v:
            _check_relpath(p)
        return v

    @model_validator(mode="after")
    def _one_entry(self) -> Manifest:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate tier names in {names}")
        entries = [t.name for t in self.tiers if t.entry]
        if len(entries) != 1:
            raise ValueError(f"exactly one tier must be the entry, found {entries or 'none'}")
        return self

    @property
    def entry_tier(self) -> Tier:
        return next(t for t in self.tiers if t.entry)

    def to_json(self) -> bytes:
        """The canonical bytes that get signed."""
        return canonical_json(self.model_dump(mode="json"))


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, ASCII only, no NaN.

    The signature is over bytes, so the same manifest must always give the
    same bytes, on every machine and Python version.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # Two parsers may disagree on which duplicate wins; refuse the ambiguity.
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes (does NOT check the signature: use `verify`)."""
    try:
        return Manifest.model_validate(_loads(data))
    except (ValueError, ValidationError) as exc:
        raise AppshotRejected(f"manifest is invalid: {exc}") from None


# --------------------------------------------------------------------------- CPU

RESTORE_CPU_FLAGS = frozenset(
    # x86: instruction-set extensions user code may select at start-up.
    """
    sse sse2 pni ssse3 sse4_1 sse4_2 sse4a popcnt abm bmi1 bmi2 lzcnt
    avx avx2 fma fma4 f16c movbe aes pclmulqdq vaes vpclmulqdq sha_ni gfni adx
    rdrand rdseed xsave xsaveopt xsavec xsaves fsgsbase cx16 lahf_lm erms fsrm
    clflushopt clwb rtm hle serialize movdiri movdir64b waitpkg avx_vnni
    avx512f avx512cd avx512bw avx512dq avx512vl avx512ifma avx512vbmi
    avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_bf16
    avx512_fp16 amx_tile amx_bf16 amx_int8
    """
    # arm64 (/proc/cpuinfo "Features").
    """
    fp asimd atomics crc32 pmull sha1 sha2 sha3 sha512 sm3 sm4 fphp asimdhp
    asimddp asimdfhm asimdrdm jscvt fcma lrcpc dcpop sve sve2 bf16 i8mm
    """.split()
)


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """CPU identity from /proc/cpuinfo text (first processor; x86 and arm64)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    vendor = fields.get("vendor_id") or fields.get("CPU implementer") or "unknown"
    model = fields.get("model name") or fields.get("CPU part") or ""
    return CpuInfo(
        arch=arch,
        vendor=vendor,
        model=model,
        flags=tuple(f for f in flags if f in RESTORE_CPU_FLAGS),
    )


def local_cpu(path: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
    """This server's `CpuInfo`, as recorded at capture and checked at restore."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise AppshotError(f"cannot read CPU information from {path}: {exc.strerror}") from None
    return parse_cpuinfo(text, platform.machine())


def check_cpu(manifest: Manifest, local: CpuInfo | None = None) -> None:
    """Refuse to restore code on a CPU that lacks what it was captured with.

    Raises `IncompatibleCPU` naming the architecture or vendor mismatch or the
    missing instruction-set flags. Vendor matters even with equal flags:
    CRIU's FPU/xsave state and libraries' tuned paths differ between vendors.
    """
    local = local_cpu() if local is None else local
    cap = manifest.cpu
    if cap.arch != local.arch:
        raise IncompatibleCPU(
            f"captured on {cap.arch}, this server is {local.arch}; restore on an {cap.arch} server"
        )
    if cap.vendor != local.vendor:
        raise IncompatibleCPU(
            f"captured on a {cap.vendor} CPU ({cap.model or 'unknown model'}), this server has"
            f" {local.vendor} ({local.model or 'unknown model'}); restore it on {cap.vendor}"
            " servers or capture an appshot on this hardware"
        )
    missing = sorted(set(cap.flags) - set(local.flags))
    if missing:
        raise IncompatibleCPU(
            f"this CPU lacks {', '.join(missing)} which the app may use since it was captured"
            " with them (it would crash with SIGILL); restore it on a server that has them or"
            " capture on the oldest CPU of the fleet",
            missing_flags=missing,
        )


# --------------------------------------------------------------------------- keys

PublicKeyLike = Ed25519PublicKey | Ed25519PrivateKey


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key (deployment center, or a server for its snapshots)."""
    return Ed25519PrivateKey.generate()


def _public(key: PublicKeyLike) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def _raw_public(key: PublicKeyLike) -> bytes:
    return _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: PublicKeyLike) -> str:
    """Short public id of a key: first 16 hex digits of SHA-256 of the raw public key.

    Only an index into the trust store, never a credential: the signature is
    always checked with the trusted key itself, so a colliding id gains nothing.
    """
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write a whole file atomically with `mode` from its first byte (no readable window)."""
    if path.exists() and not overwrite:
        raise AppshotError(f"{path} already exists; refusing to overwrite a key")
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # umask may have narrowed it; never widened
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_private_key(
    key: Ed25519PrivateKey,
    path: str | os.PathLike[str],
    *,
    format: Literal["pem", "raw"] = "pem",
    overwrite: bool = False,
) -> Path:
    """Save a signing key, mode 0600: whoever reads it can sign code we run as root."""
    path = Path(path)
    if format == "pem":
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        data = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    _write_new(path, data, 0o600, overwrite)
    return path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a PEM (PKCS8) or raw 32-byte Ed25519 key; refuse one others can read."""
    path = Path(path)
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise AppshotError(
            f"private key {path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o});"
            f" run: chmod 600 {path}"
        )
    data = path.read_bytes()
    try:
        if len(data) == 32:
            return Ed25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # Deliberately no detail: the parser's message could quote key bytes.
        raise AppshotError(
            f"{path} is not an unencrypted Ed25519 private key (PEM or raw)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AppshotError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def save_public_key(
    key: PublicKeyLike,
    path: str | os.PathLike[str],
    *,
    format: Literal["pem", "raw"] = "pem",
    overwrite: bool = False,
) -> Path:
    """Save the public half (for trust stores), mode 0644."""
    path = Path(path)
    pub = _public(key)
    if format == "pem":
        data = pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        data = _raw_public(pub)
    _write_new(path, data, 0o644, overwrite)
    return path


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) or raw 32-byte Ed25519 public key."""
    path = Path(path)
    data = path.read_bytes()
    try:
        if len(data) == 32:
            return Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise AppshotError(f"{path} is not an Ed25519 public key (PEM or raw)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AppshotError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


class TrustStore:
    """The public keys whose signatures this server accepts, by key id.

    Typically two: the deployment center's (appshots) and this server's own
    (its instances' snapshots). Adding a key here lets its holder run code as
    root on this server, so `from_dir` refuses a directory or key file that
    group or others may write.
    """

    def __init__(self, keys: Iterable[PublicKeyLike] = ()):
        self._keys: dict[str, Ed25519PublicKey] = {}
        for k in keys:
            self.add(k)

    def add(self, key: PublicKeyLike) -> str:
        kid = key_id(key)
        self._keys[kid] = _public(key)
        return kid

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> TrustStore:
        """Every *.pub / *.pem file of a directory (e.g. /etc/edgeshot/trusted.d)."""
        path = Path(path)
        store = cls()
        for p in [path, *sorted(path.iterdir())]:
            if p != path and (p.suffix not in (".pub", ".pem") or not p.is_file()):
                continue
            mode = stat.S_IMODE(os.stat(p).st_mode)
            if mode & 0o022:
                raise AppshotError(
                    f"trust store {p} is writable by group/others (mode {mode:04o}): anyone able"
                    f" to add a key there could run code as root here; run: chmod go-w {p}"
                )
            if p != path:
                store.add(load_public_key(p))
        return store

    @classmethod
    def coerce(cls, trust: TrustStore | Iterable[PublicKeyLike]) -> TrustStore:
        return trust if isinstance(trust, TrustStore) else cls(trust)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"TrustStore({list(self.ids)})"


# --------------------------------------------------------------------------- files


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until done (short writes happen; ENOSPC surfaces as OSError)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_regular(path: Path) -> int:
    """Open for reading without following a symlink swapped in after the check."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _hash_file(path: Path) -> tuple[str, int]:
    """Streaming SHA-256 and byte count: images are hundreds of MB."""
    h = hashlib.sha256()
    size = 0
    fd = _open_regular(path)
    try:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            size += n
    finally:
        os.close(fd)
    return h.hexdigest(), size


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _walk(root: Path) -> tuple[dict[str, os.stat_result], dict[str, os.stat_result], list[str]]:
    """(files, dirs, others) under root, by relative path, never following links."""
    files: dict[str, os.stat_result] = {}
    dirs: dict[str, os.stat_result] = {"": os.lstat(root)}
    others: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                r = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    dirs[r] = st
                    stack.append(r)
                elif stat.S_ISREG(st.st_mode):
                    files[r] = st
                else:
                    others.append(r)
    return files, dirs, sorted(others)


# --------------------------------------------------------------------------- staging


def new_staging_dir(final_dir: str | os.PathLike[str]) -> Path:
    """Create an empty 0700 staging directory beside `final_dir` (same filesystem).

    Its name (``.<final>.staging-<pid>-<random>``) is what `cleanup_stale`
    recognises, and never what a reader of the store takes for an appshot.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
    path = final.parent / f".{final.name}.staging-{os.getpid()}-{secrets.token_hex(6)}"
    path.mkdir(mode=_DIR_MODE)
    _OURS.add(path.name)
    os.chmod(path, _DIR_MODE)
    return path


def is_staging_dir(path: str | os.PathLike[str]) -> bool:
    return _STAGING_RE.match(Path(path).name) is not None


@contextlib.contextmanager
def staging(final_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A staging dir for `final_dir`, removed on exit unless it was published.

    Usage: ``with staging(final) as st: dump into st; build(st, ...); publish(st, final)``.
    """
    path = new_staging_dir(final_dir)
    try:
        yield path
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


_OURS: set[str] = set()  # staging dirs this process made (pids repeat after a reboot)


def _in_use(name: str, pid: int) -> bool:
    if pid == os.getpid():
        return name in _OURS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(root: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Remove staging dirs left in `root` by crashed builds/unpacks; return them.

    A staging dir whose creating process still runs is kept (it may be
    mid-capture) unless `force`. Call at agent start-up.
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        m = _STAGING_RE.match(p.name)
        if not m or p.is_symlink():
            continue
        if not force and _in_use(p.name, int(m["pid"])):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    return removed


# --------------------------------------------------------------------------- build / publish


def build(
    staging_dir: str | os.PathLike[str],
    *,
    key: Ed25519PrivateKey,
    app: str,
    version: str,
    owner: str,
    vendor: str,
    tiers: Iterable[Tier | Mapping[str, Any] | Any],
    criu_version: str,
    kind: Literal["appshot", "snapshot"] = "appshot",
    entry_port: int | None = None,
    instance: str | None = None,
    working_set: Mapping[str, Iterable[tuple[int, int]]] | None = None,
    kernel_release: str | None = None,
    cpu: CpuInfo | None = None,
    created: datetime | None = None,
) -> Manifest:
    """Hash every file of `staging_dir`, write and sign its manifest, lock modes down.

    Files become 0600 and directories 0700 (images hold the app's secrets).
    Only regular files and directories are allowed: a symlink or device would
    let the bytes restored differ from the bytes hashed. `manifest.sig` is
    written last, so a staging dir without it was never finished. Defaults:
    `entry_port` from the entry tier, kernel and CPU of this machine, now (UTC).
    """
    root = Path(staging_dir)
    for name in (SIGNATURE_NAME, MANIFEST_NAME):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / name)  # a rebuild re-signs from scratch
    files_st, dirs_st, others = _walk(root)
    if others:
        raise AppshotError(
            f"cannot package {root}: {others[0]} is"
            f" {_kind_of(os.lstat(root / others[0]).st_mode)}; appshots hold regular files only"
            " (copy the target in instead)"
        )
    for rel in dirs_st:
        os.chmod(root / rel if rel else root, _DIR_MODE, follow_symlinks=False)
    entries: dict[str, FileEntry] = {}
    for rel in sorted(files_st):
        _check_relpath(rel)
        os.chmod(root / rel, _FILE_MODE, follow_symlinks=False)
        digest, size = _hash_file(root / rel)
        entries[rel] = FileEntry(sha256=digest, size=size, mode=_FILE_MODE)
    try:
        tier_objs = tuple(Tier.of(t) for t in tiers)
    except ValidationError as exc:
        raise AppshotError(f"cannot build appshot {root}: {exc}") from None
    if entry_port is None:
        entry = [t for t in tier_objs if t.entry]
        entry_port = entry[0].port if entry else 0
    try:
        manifest = Manifest(
            kind=kind,
            app=app,
            version=version,
            owner=owner,
            vendor=vendor,
            instance=instance,
            tiers=tier_objs,
            entry_port=entry_port,
            criu_version=criu_version,
            kernel_release=kernel_release if kernel_release is not None else os.uname().release,
            cpu=cpu if cpu is not None else local_cpu(),
            created=created if created is not None else datetime.now(UTC),
            files=entries,
            working_set={k: tuple(tuple(r) for r in v) for k, v in (working_set or {}).items()},
            signer=key_id(key),
        )
    except ValidationError as exc:
        raise AppshotError(f"cannot build appshot {root}: {exc}") from None
    data = manifest.to_json()
    _write_file(root / MANIFEST_NAME, data)
    _write_file(root / SIGNATURE_NAME, key.sign(data))
    return manifest


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE
    )
    try:
        os.fchmod(fd, _FILE_MODE)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging_dir: str | os.PathLike[str], final_dir: str | os.PathLike[str]) -> Path:
    """Make a built staging dir appear at `final_dir` in one step, durably.

    fsync every file and directory, then rename(2) (atomic within one
    filesystem), then fsync the parent: after a crash `final_dir` either does
    not exist or is complete. Refuses to replace an existing `final_dir`:
    appshot versions are immutable; remove the old one explicitly.
    """
    src, dst = Path(staging_dir), Path(final_dir)
    if not (src / SIGNATURE_NAME).is_file():
        raise AppshotError(f"{src} was not built (no {SIGNATURE_NAME}); call build() first")
    if src.resolve().parent != dst.parent.resolve():
        raise AppshotError(
            f"staging dir {src} must be beside {dst} (same directory) for an atomic rename;"
            " create it with new_staging_dir(final_dir)"
        )
    if os.path.lexists(dst):
        raise AppshotError(f"{dst} already exists; appshots are immutable, delete it first")
    files, dirs, _ = _walk(src)
    for rel in files:
        fd = _open_regular(src / rel)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for rel in sorted(dirs, key=len, reverse=True):  # children before parents
        _fsync_dir(src / rel if rel else src)
    try:
        # renameat2(RENAME_NOREPLACE) is not in os; the lexists check above plus
        # rename's refusal to replace a non-empty directory cover it.
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise AppshotError(f"{dst} already exists; appshots are immutable") from None
        if exc.errno == errno.EXDEV:
            raise AppshotError(f"{src} and {dst} are on different filesystems") from None
        raise
    _OURS.discard(src.name)
    _fsync_dir(dst.parent)
    return dst


# --------------------------------------------------------------------------- verify


def _read_small(path: Path, limit: int, what: str, root: Path) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise AppshotRejected(f"missing {what} {path.name}", path=root) from None
    if not stat.S_ISREG(st.st_mode):
        raise AppshotRejected(f"{path.name} is {_kind_of(st.st_mode)}", path=root)
    if st.st_size > limit:
        raise AppshotRejected(f"{path.name} is too large ({st.st_size} bytes)", path=root)
    fd = _open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def _check_signature(
    manifest_bytes: bytes, sig: bytes, trust: TrustStore, root: Path | None
) -> Manifest:
    """Signature first: nothing else in an unsigned manifest deserves a look."""
    try:
        obj = _loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError):
        raise AppshotRejected("manifest is not valid JSON", path=root) from None
    signer = obj.get("signer") if isinstance(obj, dict) else None
    if not isinstance(signer, str):
        raise AppshotRejected("manifest names no signer", path=root)
    pub = trust.get(signer)
    if pub is None:
        shown = signer if re.fullmatch(r"[0-9a-f]{16}", signer) else repr(signer[:40])
        raise AppshotRejected(
            f"untrusted signer {shown} (trusted: {', '.join(trust.ids) or 'none'})", path=root
        )
    if len(sig) != _SIG_BYTES:
        raise AppshotRejected("signature does not match manifest (malformed signature)", path=root)
    try:
        pub.verify(sig, manifest_bytes)
    except InvalidSignature:
        raise AppshotRejected("signature does not match manifest", path=root) from None
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        raise AppshotRejected(f"manifest is invalid: {exc}", path=root) from None


class VerifyCache:
    """Opt-in memory of directories whose checksums this process has verified.

    Hashing 100+ MB of images costs more than a lazy restore itself. An entry
    is keyed by the exact manifest bytes and every entry's (inode, size,
    mtime, ctime, mode, owner): any write, chmod, rename or replacement
    changes ctime or the inode, which forces a full re-hash. The signature,
    the file set and the modes are still checked on every `verify`, so a
    revoked key takes effect at once. Not covered: silent disk corruption,
    and root rewriting a file within the same clock tick (entries younger
    than `settle_s` are never cached for that reason). Per process, never
    persisted: a file on disk saying "verified" would be one more thing to forge.
    """

    def __init__(self, settle_s: float = 2.0) -> None:
        self._entries: dict[Path, str] = {}
        self._settle_ns = int(settle_s * 1e9)
        self.hits = 0

    def _fingerprint(
        self, manifest_bytes: bytes, stats: Mapping[str, os.stat_result], now_ns: int
    ) -> str | None:
        if any(st.st_ctime_ns > now_ns - self._settle_ns for st in stats.values()):
            return None  # too fresh to trust timestamps
        h = hashlib.sha256(manifest_bytes)
        for rel in sorted(stats):
            st = stats[rel]
            h.update(
                f"{rel}\0{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"
                f" {st.st_ctime_ns} {st.st_mode} {st.st_uid}\n".encode()
            )
        return h.hexdigest()

    def forget(self, appshot_dir: str | os.PathLike[str]) -> None:
        self._entries.pop(Path(appshot_dir).resolve(), None)


def verify(
    appshot_dir: str | os.PathLike[str],
    trust: TrustStore | Iterable[PublicKeyLike],
    *,
    cache: VerifyCache | None = None,
) -> Manifest:
    """Check that a directory is exactly what a trusted key signed; return its manifest.

    Order: signature (`untrusted signer <id>` / `signature does not match
    manifest`), then the file set (missing/unexpected/non-regular), sizes,
    SHA-256 of every file, then modes and ownership (group/world readable
    images leak secrets; a dir another user owns can be changed after this
    check). Empty directories are tolerated (no bytes to run). Does not check
    the CPU: call `check_cpu` too. With `cache`, an unchanged directory
    verified before skips the re-hash (see `VerifyCache`).
    """
    root = Path(appshot_dir)
    trust = TrustStore.coerce(trust)
    now_ns = time.time_ns()
    try:
        rst = os.lstat(root)
    except FileNotFoundError:
        raise AppshotRejected("does not exist", path=root) from None
    if not stat.S_ISDIR(rst.st_mode):
        raise AppshotRejected(f"is {_kind_of(rst.st_mode)}, not a directory", path=root)
    manifest_bytes = _read_small(root / MANIFEST_NAME, _MAX_MANIFEST_BYTES, "manifest", root)
    sig = _read_small(root / SIGNATURE_NAME, _SIG_BYTES, "signature", root)
    manifest = _check_signature(manifest_bytes, sig, trust, root)

    files, dirs, others = _walk(root)
    if others:
        o = others[0]
        raise AppshotRejected(
            f"{o} is {_kind_of(os.lstat(root / o).st_mode)}; appshots hold regular files only",
            path=root,
        )
    present = set(files) - _RESERVED
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise AppshotRejected(f"missing file {missing[0]}", path=root)
    extra = sorted(present - set(manifest.files))
    if extra:
        raise AppshotRejected(f"unexpected file {extra[0]} (not in the manifest)", path=root)
    key = root.resolve()
    fingerprint = cache._fingerprint(manifest_bytes, {**dirs, **files}, now_ns) if cache else None
    cached = (
        cache is not None and fingerprint is not None and cache._entries.get(key) == fingerprint
    )
    if cache is not None and not cached:
        cache._entries.pop(key, None)
    for rel, entry in sorted(manifest.files.items()):
        if files[rel].st_size != entry.size:
            raise AppshotRejected(
                f"{rel} has {files[rel].st_size} bytes, the manifest says {entry.size}", path=root
            )
    for rel, entry in [] if cached else sorted(manifest.files.items()):
        digest, size = _hash_file(root / rel)
        if size != entry.size or digest != entry.sha256:
            raise AppshotRejected(
                f"{rel} does not match its SHA-256 (altered after signing)", path=root
            )

    uid = os.geteuid()
    for rel, st in sorted({**dirs, **files}.items()):
        name = rel or "."
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o7000:
            raise AppshotRejected(
                f"{name} has mode {mode:04o}: setuid/setgid/sticky bits have no place in an"
                " image restored as root",
                path=root,
            )
        if mode & 0o077:
            raise AppshotRejected(
                f"{name} has mode {mode:04o}: images hold the app's memory and secrets and must"
                f" not be accessible to group/others (chmod go-rwx -R {root})",
                path=root,
            )
        if rel in manifest.files and mode != manifest.files[rel].mode:
            raise AppshotRejected(
                f"{name} has mode {mode:04o}, the manifest says {manifest.files[rel].mode:04o}",
                path=root,
            )
        if st.st_uid != uid:
            raise AppshotRejected(
                f"{name} is owned by uid {st.st_uid}, not {uid}: another user could change it"
                " between this check and the restore",
                path=root,
            )
    if cache is not None and fingerprint is not None:
        if cached:
            cache.hits += 1
        cache._entries[key] = fingerprint
    return manifest


# --------------------------------------------------------------------------- tarballs


def _zstd() -> str | None:
    return shutil.which("zstd")


def tar_suffix() -> str:
    """The preferred tarball suffix: .tar.zst where the zstd tool exists, else .tar.gz."""
    return ".tar.zst" if _zstd() else ".tar.gz"


def _tarinfo(name: str, st: os.stat_result | None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0  # deterministic tarballs: same appshot, same bytes
    if st is None:
        ti.type = tarfile.DIRTYPE
        ti.mode = _DIR_MODE
    else:
        ti.size = st.st_size
        ti.mode = stat.S_IMODE(st.st_mode)
    return ti


def pack(appshot_dir: str | os.PathLike[str], tar_path: str | os.PathLike[str]) -> Path:
    """Write an appshot dir to a tarball for transfer; manifest and signature first.

    Compression follows the suffix: ``.tar.zst`` (needs the zstd tool) or
    ``.tar.gz``/``.tgz``; anything else gets `tar_suffix()`'s choice. Putting
    the signed manifest first lets `unpack` refuse an untrusted or unexpected
    member before writing a byte of it. Written atomically, mode 0600.
    """
    src, out = Path(appshot_dir), Path(tar_path)
    if not (src / SIGNATURE_NAME).is_file():
        raise AppshotError(f"{src} has no {SIGNATURE_NAME}: build() it before packing")
    name = out.name
    if name.endswith(".tar.zst"):
        comp = "zst"
    elif name.endswith((".tar.gz", ".tgz")):
        comp = "gz"
    else:
        comp = "zst" if _zstd() else "gz"
    if comp == "zst" and not _zstd():
        raise AppshotError(f"cannot write {out}: the zstd tool is not installed; use .tar.gz")
    files, dirs, others = _walk(src)
    if others:
        raise AppshotError(f"cannot pack {src}: {others[0]} is not a regular file")
    tmp = out.with_name(f".{out.name}.partial-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as raw:
            proc = None
            gz = None
            if comp == "zst":
                proc = subprocess.Popen(
                    [_zstd() or "zstd", "-q", "-c", "-T0"], stdin=subprocess.PIPE, stdout=raw
                )
                assert proc.stdin is not None
                tf = tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT)
            else:
                # mtime=0 in the gzip header too: same appshot, same tarball bytes.
                gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="")
                tf = tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT)
            try:
                with tf:
                    rest = (set(files) | set(dirs)) - _RESERVED - {""}
                    for rel in [MANIFEST_NAME, SIGNATURE_NAME, *sorted(rest)]:
                        if rel in dirs:
                            tf.addfile(_tarinfo(rel, None))
                            continue
                        with os.fdopen(_open_regular(src / rel), "rb") as f:
                            tf.addfile(_tarinfo(rel, os.fstat(f.fileno())), f)
            finally:
                if gz is not None:
                    gz.close()
                if proc is not None:
                    assert proc.stdin is not None
                    proc.stdin.close()
                    if proc.wait() != 0:
                        raise AppshotError(f"zstd failed (exit {proc.returncode}) writing {out}")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(out.parent)
    return out


def _member_path(name: str) -> str:
    """A tar member's name as a safe manifest-style relative path, or rejection."""
    n = name
    while n.startswith("./"):
        n = n[2:]
    n = n.rstrip("/")
    try:
        return _check_relpath(n) if n not in _RESERVED else n
    except ValueError:
        raise AppshotRejected(f"unsafe path in tarball: {name!r}") from None


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_ZSTD_MAGIC):
        z = _zstd()
        if not z:
            raise AppshotError(f"{path} is zstd-compressed but the zstd tool is not installed")
        proc = subprocess.Popen(
            [z, "-d", "-q", "-c", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
                yield tf
            proc.stdout.read()
            if proc.wait() != 0:
                raise tarfile.ReadError(f"zstd could not decompress it (exit {proc.returncode})")
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()
    else:
        mode = "r|gz" if magic.startswith(_GZIP_MAGIC) else "r|"
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode=mode) as tf:
            yield tf


def unpack(
    tar_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    trust: TrustStore | Iterable[PublicKeyLike],
) -> Manifest:
    """Extract a tarball into a new appshot at `dest_dir`, only if it verifies.

    Extraction is our own, not tarfile's: only regular files and directories,
    no absolute paths, no ``..``, no links or devices, no member the signed
    manifest does not list or whose size differs from it. Everything goes into
    a staging dir beside `dest_dir`, is `verify`-ed, then `publish`-ed; on
    any failure (tampering, corruption, ENOSPC) the staging dir is removed and
    `dest_dir` is untouched.
    """
    src, dest = Path(tar_path), Path(dest_dir)
    trust = TrustStore.coerce(trust)
    if os.path.lexists(dest):
        raise AppshotError(f"{dest} already exists; appshots are immutable, delete it first")
    stage = new_staging_dir(dest)
    try:
        try:
            _extract(src, stage, trust)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise AppshotRejected(f"tarball {src} is corrupt or truncated: {exc}") from None
        manifest = verify(stage, trust)
        publish(stage, dest)
        return manifest
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _extract(src: Path, stage: Path, trust: TrustStore) -> None:
    manifest: Manifest | None = None
    manifest_bytes: bytes | None = None
    seen: set[str] = set()
    with _open_tar(src) as tf:
        for m in tf:
            rel = _member_path(m.name)
            if not (m.isreg() or m.isdir()):
                kind = "a link" if (m.issym() or m.islnk()) else "a device or special file"
                raise AppshotRejected(
                    f"tar member {m.name!r} is {kind}; only regular files allowed"
                )
            if rel in seen:
                raise AppshotRejected(f"tar member {rel} appears twice")
            seen.add(rel)
            target = stage / rel
            if m.isdir() and rel in _RESERVED:
                raise AppshotRejected(f"tar member {rel} is a directory")
            if m.isdir():
                target.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                continue
            if manifest is None and rel not in _RESERVED:
                raise AppshotRejected(
                    f"tarball must start with {MANIFEST_NAME} and {SIGNATURE_NAME} (found {rel});"
                    " pack it with edgeshot"
                )
            if rel == MANIFEST_NAME and m.size > _MAX_MANIFEST_BYTES:
                raise AppshotRejected(f"{MANIFEST_NAME} is too large ({m.size} bytes)")
            if rel == SIGNATURE_NAME and m.size != _SIG_BYTES:
                raise AppshotRejected("signature does not match manifest (malformed signature)")
            if manifest is not None:
                entry = manifest.files.get(rel)
                if entry is None:
                    raise AppshotRejected(f"unexpected file {rel} (not in the manifest)")
                if m.size != entry.size:
                    raise AppshotRejected(
                        f"{rel} has {m.size} bytes, the manifest says {entry.size}"
                    )
            f = tf.extractfile(m)
            assert f is not None
            target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(
                target,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_MODE,
            )
            small = bytearray() if rel in _RESERVED else None
            try:
                while chunk := f.read(_CHUNK):
                    _write_all(fd, chunk)
                    if small is not None:
                        small += chunk
                entry = manifest.files.get(rel) if manifest is not None else None
                os.fchmod(fd, entry.mode & 0o700 if entry is not None else _FILE_MODE)
            finally:
                os.close(fd)
            if rel == MANIFEST_NAME:
                manifest_bytes = bytes(small or b"")
            elif rel == SIGNATURE_NAME:
                if manifest_bytes is None:
                    raise AppshotRejected(f"tarball must start with {MANIFEST_NAME}")
                manifest = _check_signature(manifest_bytes, bytes(small or b""), trust, None)
    if manifest is None:
        raise AppshotRejected(f"tarball holds no signed {MANIFEST_NAME}")
