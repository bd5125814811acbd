"""Bearer tokens: the one token scheme of every edgeshot API (agent, edge, controller).

A token is 32 random bytes, written ``est1_<43 url-safe base64 chars>``; only its
SHA-256 is stored (a hash suffices for 256-bit random secrets: there is nothing to
brute-force, so no slow KDF is needed). A presented token is hashed and looked up,
then the digest is confirmed with ``hmac.compare_digest``: the comparison never
depends on how much of a secret matched. Tokens are never logged: log lines and
errors name a token by its ``name``.

Scopes (docs/architecture.md, "Tokens"):

====================  =====================================================
``controller-edge``   the controller calling an edge process
``edge-agent``        an edge process calling the agents of its edgepoint
``controller-agent``  the controller calling an agent
``operator``          the whole network (NOC)
``owner:<id>``        one application provider: its own apps only
``vendor:<name>``     one ISV: usage of its applications across owners
``metrics``           read-only: ``/metrics`` of every service, nothing else
                      (what a Prometheus server scrapes with)
====================  =====================================================

Token file (TOML, hashes only; group/others must not be able to write it)::

    [[token]]
    name = "edge-ep1"
    sha256 = "5f1c…"            # hex SHA-256 of the token text
    scopes = ["edge-agent"]

A service checks requests with ``middleware(store)`` and declares each handler's
scopes with ``@requires("edge-agent", "controller-agent")`` (``"owner:*"`` accepts any
owner); ``request["principal"]`` is then the caller. Without a valid token: 401; with
a token lacking every scope the handler accepts: 403. Handlers without ``@requires``
(nor ``@public``) are refused: a forgotten declaration fails closed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._config_file import toml_text
from ._sys import write_private

log = logging.getLogger("edgeshot.auth")

PREFIX = "est1_"
CONTROLLER_EDGE = "controller-edge"
EDGE_AGENT = "edge-agent"
CONTROLLER_AGENT = "controller-agent"
OPERATOR = "operator"
METRICS = "metrics"  # read-only: /metrics, nothing else
FIXED_SCOPES = frozenset({CONTROLLER_EDGE, EDGE_AGENT, CONTROLLER_AGENT, OPERATOR, METRICS})
_ID = r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}"
SCOPE_RE = re.compile(rf"^(?:controller-edge|edge-agent|controller-agent|operator|metrics|"
                      rf"owner:{_ID}|vendor:{_ID})$")
_PATTERN_RE = re.compile(rf"^(?:owner|vendor):(?:\*|{_ID})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_TOKEN_LEN = 512
SCOPES_ATTR = "__edgeshot_scopes__"


class AuthError(Exception):
    """A token file or token that cannot be used (the message never holds a secret)."""


def check_scope(scope: str) -> str:
    if not SCOPE_RE.match(scope):
        raise ValueError(f"unknown scope {scope!r}: one of {sorted(FIXED_SCOPES)}, "
                         "'owner:<id>' or 'vendor:<name>'")
    return scope


def owner_scope(owner_id: str) -> str:
    return check_scope(f"owner:{owner_id}")


def vendor_scope(vendor: str) -> str:
    return check_scope(f"vendor:{vendor}")


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenRecord(BaseModel):
    """One token as stored: its name, the hash of its text, its scopes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]*$")
    sha256: str
    scopes: tuple[str, ...] = Field(min_length=1)
    created: datetime | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.lower().removeprefix("sha256:")
        if not _HEX64.match(v):
            raise ValueError("sha256 must be 64 hex digits (the hash, never the token)")
        return v

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in v)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and scopes (never its text)."""

    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def has(self, *wanted: str) -> bool:
        """True when any scope of this principal matches any of ``wanted`` (``owner:*``
        and ``vendor:*`` match any owner / vendor)."""
        return any(scope_matches(s, w) for s in self.scopes for w in wanted)

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(s.split(":", 1)[1] for s in self.scopes if s.startswith("owner:"))

    @property
    def vendors(self) -> frozenset[str]:
        return frozenset(s.split(":", 1)[1] for s in self.scopes if s.startswith("vendor:"))

    @property
    def is_operator(self) -> bool:
        return OPERATOR in self.scopes

    def may_see(self, *, owner: str | None = None, vendor: str | None = None) -> bool:
        """For services that filter data: operators see everything, an owner its own
        apps, a vendor its own applications' usage."""
        if self.is_operator:
            return True
        return (owner is not None and owner in self.owners) or (
            vendor is not None and vendor in self.vendors)


def scope_matches(held: str, wanted: str) -> bool:
    if held == wanted:
        return True
    if wanted.endswith(":*"):
        return held.startswith(wanted[:-1]) and len(held) > len(wanted) - 1
    return False


class TokenStore:
    """Tokens a service accepts, by hash. Thread-safe; reloads its file when it changes."""

    def __init__(self, records: Iterable[TokenRecord] = (), *, path: Path | None = None) -> None:
        self._by_hash: dict[bytes, TokenRecord] = {}
        self._lock = threading.Lock()
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._set(records)

    def _set(self, records: Iterable[TokenRecord]) -> None:
        by_hash: dict[bytes, TokenRecord] = {}
        names: set[str] = set()
        for r in records:
            if r.name in names:
                raise AuthError(f"token name {r.name!r} appears twice")
            names.add(r.name)
            by_hash[bytes.fromhex(r.sha256)] = r
        self._by_hash = by_hash

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TokenStore:
        store = cls(path=Path(path))
        store.reload()
        return store

    def reload(self) -> None:
        """Read the token file again (called at most once a second when it changed)."""
        assert self.path is not None
        records, stamp = read_token_file(self.path)
        with self._lock:
            self._set(records)
            self._stamp = stamp

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # keep the tokens we have; a vanished file is an operator mistake
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
            try:
                self.reload()
                log.info("reloaded token file %s (%d tokens)", self.path, len(self))
            except AuthError as exc:
                log.error("token file %s not reloaded, keeping the previous tokens: %s",
                          self.path, exc)
                self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def add(self, record: TokenRecord) -> None:
        with self._lock:
            self._set([*self._by_hash.values(), record])

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def records(self) -> list[TokenRecord]:
        return sorted(self._by_hash.values(), key=lambda r: r.name)

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of a presented token, or None (unknown, empty, absurd)."""
        if not token or len(token) > _MAX_TOKEN_LEN:
            return None
        self._maybe_reload()
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        rec = self._by_hash.get(digest)
        # The dict lookup is keyed by a hash the caller cannot steer; the final check is
        # constant-time all the same.
        if rec is None or not hmac.compare_digest(bytes.fromhex(rec.sha256), digest):
            return None
        return Principal(rec.name, frozenset(rec.scopes))

    def authorization(self, header: str | None) -> Principal | None:
        """The principal of an ``Authorization: Bearer <token>`` header value, or None."""
        token = bearer(header)
        return self.authenticate(token) if token else None


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


# ---------------------------------------------------------------- files


def _check_not_writable_by_others(path: Path, what: str) -> os.stat_result:
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise AuthError(f"{what} {path} is writable by group/others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}): anyone able to edit it could "
                        f"grant themselves access; run: chmod go-w {path}")
    return st


def read_token_file(path: str | os.PathLike[str]) -> tuple[list[TokenRecord], tuple[int, int, int]]:
    path = Path(path)
    try:
        st = _check_not_writable_by_others(path, "token file")
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AuthError(f"token file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AuthError(f"token file {path} is not valid TOML: {exc}") from None
    extra = set(data) - {"token"}
    if extra:
        raise AuthError(f"token file {path}: unknown table(s) {sorted(extra)}; "
                        "only [[token]] entries are allowed")
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise AuthError(f"token file {path}: 'token' must be an array of tables ([[token]])")
    records = []
    for i, e in enumerate(entries):
        try:
            records.append(TokenRecord.model_validate(e))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise AuthError(f"token file {path}: token #{i + 1} "
                            f"({e.get('name', '?') if isinstance(e, dict) else '?'}): "
                            f"{where}: {first.get('msg')}") from None
    TokenStore(records)  # duplicate names
    return records, (st.st_ino, st.st_mtime_ns, st.st_size)


def render_token_file(records: Iterable[TokenRecord]) -> str:
    tokens = [{**r.model_dump(exclude_none=True),
               **({"created": r.created.astimezone(UTC)} if r.created else {})} for r in records]
    return toml_text({"token": tokens},
                     header="edgeshot tokens: SHA-256 hashes only (see edgeshot.agent.auth)")


def issue_token(tokens_file: str | os.PathLike[str], name: str, scopes: Iterable[str], *,
                secret_file: str | os.PathLike[str] | None = None) -> str:
    """Make a token, add its hash to ``tokens_file`` (created 0600 if missing) and return
    its text (also written to ``secret_file``, mode 0600, when given). Replaces a token
    of the same name."""
    path = Path(tokens_file)
    records = read_token_file(path)[0] if path.exists() else []
    token = new_token()
    rec = TokenRecord(name=name, sha256=token_hash(token), scopes=tuple(scopes),
                      created=datetime.now(UTC).replace(microsecond=0))
    records = [r for r in records if r.name != name] + [rec]
    write_private(path, render_token_file(records))
    if secret_file is not None:
        write_secret(secret_file, token)
    return token


def write_secret(path: str | os.PathLike[str], token: str) -> None:
    write_private(Path(path), token + "\n")


def read_secret(path: str | os.PathLike[str]) -> str:
    """A client's token from a file holding it (first non-comment line); refuses a file
    group or others can read."""
    path = Path(path)
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise AuthError(f"token secret {path} is accessible to group/others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise AuthError(f"{path} holds no token")


# ---------------------------------------------------------------- throttling


class Throttle:
    """Failed authentications per source address: a bucket of ``burst`` failures that
    refills one every ``refill_s``. A source whose bucket is empty gets 429 instead of 401
    for a token it does not know until it refills; a valid token is always served, so that
    whoever shares an address with a guesser (a NAT, a proxy, the services of one host, a
    misconfigured scraper) is never locked out by it. Guessing a 256-bit token is hopeless
    anyway: the throttle bounds the cost and the log lines of trying. Pure bookkeeping;
    the clock is injectable."""

    def __init__(self, burst: int = 20, refill_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic, max_sources: int = 100_000
                 ) -> None:
        self.burst, self.refill_s, self.clock, self.max_sources = burst, refill_s, clock, max_sources
        self._level: dict[str, tuple[float, float]] = {}  # source -> (failures, at)
        self.failures = 0  # counters, for the services' metrics
        self.throttled = 0
        self._lock = threading.Lock()

    def _now_level(self, source: str, now: float) -> float:
        level, at = self._level.get(source, (0.0, now))
        return max(0.0, level - (now - at) / self.refill_s)

    def retry_after(self, source: str) -> int | None:
        """Seconds until ``source`` may try again (None: it may now); counts a refusal."""
        with self._lock:
            now = self.clock()
            level = self._now_level(source, now)
            if level < self.burst:
                return None
            self.throttled += 1
            return max(1, int((level - self.burst + 1) * self.refill_s + 0.999))

    def failed(self, source: str) -> None:
        with self._lock:
            now = self.clock()
            self.failures += 1
            if len(self._level) >= self.max_sources:  # forget the sources that refilled
                kept = {s: v for s, v in self._level.items() if self._now_level(s, now) > 0}
                if len(kept) >= self.max_sources:  # still full: the oldest half goes
                    kept = dict(list(kept.items())[len(kept) // 2:])
                self._level = kept
            self._level[source] = (self._now_level(source, now) + 1, now)


class ThrottleCollector:
    """A Prometheus collector of a throttle's counts: ``edgeshot_<component>_auth_failures_total``
    and ``edgeshot_<component>_auth_throttled_total``."""

    def __init__(self, throttle: Throttle, component: str) -> None:
        self.throttle, self.component = throttle, component

    def collect(self):  # noqa: ANN201 (prometheus_client's protocol)
        from prometheus_client.core import CounterMetricFamily
        fails = CounterMetricFamily(f"edgeshot_{self.component}_auth_failures",
                                    "failed authentications (unknown tokens, refused logins)")
        fails.add_metric([], self.throttle.failures)
        yield fails
        held = CounterMetricFamily(f"edgeshot_{self.component}_auth_throttled",
                                   "requests refused (429) after too many failed "
                                   "authentications from their address")
        held.add_metric([], self.throttle.throttled)
        yield held


def throttled_response(seconds: int):
    return _json_error(429, "throttled", "too many failed authentications from this "
                       f"address: try again in {seconds} s", **{"Retry-After": str(seconds)})


# ---------------------------------------------------------------- aiohttp


Handler = Callable[..., Awaitable[Any]]


def requires(*scopes: str) -> Callable[[Handler], Handler]:
    """Declare which scopes may call a handler (any one of them suffices)."""
    if not scopes:
        raise ValueError("requires() needs at least one scope; use @public for none")
    for s in scopes:
        if not (s in FIXED_SCOPES or _PATTERN_RE.match(s)):
            raise ValueError(f"unknown scope {s!r}")

    def mark(handler: Handler) -> Handler:
        setattr(handler, SCOPES_ATTR, frozenset(scopes))
        return handler
    return mark


def public(handler: Handler) -> Handler:
    """A handler anyone may call without a token (use sparingly)."""
    setattr(handler, SCOPES_ATTR, None)
    return handler


def _json_error(status: int, code: str, message: str, **headers: str):
    from aiohttp import web
    body = json.dumps({"error": message, "code": code})
    return web.Response(status=status, text=body, content_type="application/json",
                        headers=headers)


def middleware(store: TokenStore, throttle: Throttle | None = None):
    """aiohttp middleware: 401 without a valid token, 403 without a scope the handler
    accepts; sets ``request["principal"]``. Unknown routes answer 401 to anonymous callers
    (nothing about the API is revealed without a token). Failed authentications are
    counted per source address (``throttle``, one per service): past its burst, 429 for
    unknown tokens (valid ones are served)."""
    throttle = throttle or Throttle()
    from aiohttp import web
    from aiohttp.web_urldispatcher import MatchInfoError

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler):
        match = request.match_info
        target = getattr(match, "handler", None)
        declared = getattr(target, SCOPES_ATTR, False)
        if declared is None and not isinstance(match, MatchInfoError):
            request["principal"] = None
            return await handler(request)
        source = request.remote or "-"
        principal = store.authorization(request.headers.get("Authorization"))
        if principal is None:
            why = "no bearer token" if not bearer(request.headers.get("Authorization")) \
                else "unknown token"
            if why == "unknown token":  # a guess (no token at all is a client's first try)
                if (wait := throttle.retry_after(source)) is not None:
                    return throttled_response(wait)
                throttle.failed(source)
            log.info("401 %s %s from %s: %s", request.method, request.path, request.remote, why)
            return _json_error(401, "unauthorized", f"{why}: send 'Authorization: Bearer "
                               "<token>'", **{"WWW-Authenticate": 'Bearer realm="edgeshot"'})
        request["principal"] = principal
        if isinstance(match, MatchInfoError):
            return await handler(request)  # the router's 404/405 for a known caller
        if declared is False:
            log.error("handler for %s %s declares no scopes: refused", request.method,
                      request.path)
            return _json_error(403, "forbidden", "this endpoint declares no scope")
        if not principal.has(*declared):
            log.info("403 %s %s for token %r (scopes %s)", request.method, request.path,
                     principal.name, sorted(principal.scopes))
            return _json_error(403, "forbidden", f"token {principal.name!r} lacks a scope "
                               f"for this endpoint (one of {sorted(declared)})")
        return await handler(request)

    auth_middleware.throttle = throttle  # type: ignore[attr-defined]
    return auth_middleware
