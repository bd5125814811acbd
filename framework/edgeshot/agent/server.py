"""The agent daemon: the HTTP API of one edge server (``edgeshot agent --config FILE``).

Routes (all under bearer-token auth, see ``auth.py``; JSON bodies are the models
of ``models.py``; errors are ``{"error": ..., "code": ..., "detail": [...]}``):

=======  ==================================  ==================  =========================
method   path                                scopes              answer
=======  ==================================  ==================  =========================
GET      /v1/health                          edge, ctl, op       AgentHealth
GET      /v1/capacity                        edge, ctl, op       Capacity
GET      /v1/appshots[?kind=appshot|snapshot]  edge, ctl, op     AppshotList
GET      /v1/appshots/{name}                 edge, ctl, op       AppshotInfo
DELETE   /v1/appshots/{name}                 ctl                 204
POST     /v1/appshots/{name}/verify          ctl, op             AppshotInfo (422/409)
GET      /v1/appshots/{name}/tarball         ctl                 the packed appshot (Range)
GET      /v1/appshots/{name}/upload          ctl                 UploadStatus (404: none)
PATCH    /v1/appshots/{name}/upload          ctl                 UploadStatus / 201 AppshotInfo
DELETE   /v1/appshots/{name}/upload          ctl                 204
POST     /v1/capture                         ctl                 201 CaptureResult
GET      /v1/instances[?state=&app=]         edge, ctl, op       InstanceList
POST     /v1/instances                       edge, ctl           201 InstanceInfo (healthy)
GET      /v1/instances/{id}                  edge, ctl, op       InstanceInfo
POST     /v1/instances/{id}/snapshot         edge, ctl           InstanceInfo (snapshotted)
POST     /v1/instances/{id}/stop             edge, ctl           InstanceInfo (stopped)
GET      /v1/usage?after=SEQ&limit=N         ctl, op             UsagePage
GET      /v1/signing-key                     edge, ctl, op       {key_id, pem}
POST     /v1/trusted-keys                    ctl                 201 {key_id}
GET      /metrics                            op, ctl, metrics    Prometheus text
=======  ==================================  ==================  =========================

(edge = ``edge-agent``, ctl = ``controller-agent``, op = ``operator``.)

Upload protocol (resumable, streaming): ``PATCH`` with headers ``Upload-Offset``
(where this body starts), ``Upload-Length`` (the whole tarball's size) and
``Upload-SHA256`` (its hex digest); the body is appended as it arrives. A broken
connection keeps what arrived; ``GET .../upload`` says the offset to resume from.
The last chunk makes the agent check the digest, then unpack and verify the
appshot (signature, every checksum) before it appears.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import __version__
from .._config_file import ConfigError, load_config, toml_text
from .._logging import FORMATS, LogFormat, configure_logging
from . import auth
from ._core import Agent, ApiError, check_name
from .auth import CONTROLLER_AGENT, EDGE_AGENT, METRICS, OPERATOR, requires
from .models import (
    AgentHealth,
    AppshotList,
    CaptureRequest,
    CreateInstance,
    InstanceList,
    TrustedKey,
    UsagePage,
)

log = logging.getLogger("edgeshot.agent")

READ = (EDGE_AGENT, CONTROLLER_AGENT, OPERATOR)
RUN = (EDGE_AGENT, CONTROLLER_AGENT)
DEPLOY = (CONTROLLER_AGENT,)
AUDIT = (CONTROLLER_AGENT, OPERATOR)
DEFAULT_PORT = 7440
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
M = TypeVar("M", bound=BaseModel)


class AgentConfig(BaseModel):
    """The agent's configuration (TOML, flat keys; relative paths are relative to the file).

    Required: ``state_dir`` and ``tokens_file``. See ``docs`` of each field below.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    listen: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    state_dir: Path = Field(description="pods, appshots, snapshots, usage and state databases")
    edgepoint: str = Field("local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    server: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "server",
                        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    source: str | None = Field(None, description="usage records' source; default "
                               "agent:<edgepoint>:<server>", max_length=200)
    tokens_file: Path = Field(description="token hashes and scopes (auth.py's format)")
    trust_dir: Path | None = Field(None, description="public keys whose appshots are restored "
                                   "(default <state_dir>/trusted.d)")
    signing_key: Path | None = Field(None, description="Ed25519 key signing snapshots and "
                                     "captures (default <state_dir>/keys/server.key)")
    slot_subnet: str = "10.213.0.0/24"
    slot_prefix: str = Field("es", pattern=r"^[a-z0-9]{1,6}$")
    slots: int = Field(16, ge=1, le=1000)
    usage_interval_s: float = Field(10.0, ge=0.05, le=3600)
    storage_interval_s: float = Field(300.0, ge=0.05, le=86400)
    usage_retention_days: float = Field(35.0, gt=0)
    health_interval_s: float = Field(2.0, ge=0.05, le=3600)
    criu: Path | None = Field(None, description="criu binary (default: the venv's, then PATH)")
    restore: Literal["auto", "off"] = Field("auto", description="off: always cold-start")
    cpus: float | None = Field(None, gt=0, description="cores offered (default: all)")
    memory_mb: int | None = Field(None, gt=0, description="memory offered (default: all)")
    max_upload_bytes: int = Field(64 << 30, gt=0)
    workers: int = Field(16, ge=1, le=256, description="threads for restores, snapshots…")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = Field("text", description="text, or json: one object a line")
    access_log: bool = True

    @field_validator("slot_subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        IPv4Network(v)
        return v

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentConfig:
        return load_config(cls, path, table="agent", paths=(
            "state_dir", "tokens_file", "trust_dir", "signing_key", "criu"))

    def render(self) -> str:
        """This configuration as TOML (for templates and tests)."""
        return toml_text(self.model_dump(mode="json", exclude_none=True))


# ---------------------------------------------------------------- HTTP helpers


def _json(model: BaseModel | dict, status: int = 200) -> web.Response:
    text = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model)
    return web.Response(status=status, text=text, content_type="application/json")


def _error(status: int, code: str, message: str, detail: list[str] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message, "code": code}
    if detail:
        body["detail"] = detail
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    if not raw:
        raise ApiError(400, "no_body", f"this endpoint needs a JSON body ({model.__name__})")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        detail = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
                  for e in exc.errors(include_url=False)][:20]
        raise ApiError(422, "invalid", f"invalid {model.__name__}: " + "; ".join(detail[:3]),
                       detail=detail) from None


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be an integer, not {raw[:40]!r}") from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_query", f"{name} must be between {lo} and {hi}")
    return v


def _header_int(request: web.Request, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise ApiError(400, "missing_header", f"header {name} is required")
    if not raw.isdigit() or len(raw) > 19:
        raise ApiError(400, "bad_header", f"header {name} must be a non-negative integer")
    return int(raw)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error is JSON naming the problem; nothing leaks a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return _error(exc.status, exc.reason.lower().replace(" ", "_"),
                      exc.text if exc.text and not exc.text.startswith(f"{exc.status}:")
                      else exc.reason, headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return _error(500, "internal", "internal error (logged by the agent)")


# ---------------------------------------------------------------- the server

ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/v1/health", "health"),
    ("GET", "/v1/capacity", "capacity"),
    ("GET", "/v1/appshots", "list_appshots"),
    ("GET", "/v1/appshots/{name}", "get_appshot"),
    ("DELETE", "/v1/appshots/{name}", "delete_appshot"),
    ("POST", "/v1/appshots/{name}/verify", "verify_appshot"),
    ("GET", "/v1/appshots/{name}/tarball", "download_appshot"),
    ("GET", "/v1/appshots/{name}/upload", "upload_status"),
    ("PATCH", "/v1/appshots/{name}/upload", "upload_chunk"),
    ("DELETE", "/v1/appshots/{name}/upload", "upload_abort"),
    ("POST", "/v1/capture", "capture"),
    ("GET", "/v1/instances", "list_instances"),
    ("POST", "/v1/instances", "create_instance"),
    ("GET", "/v1/instances/{id}", "get_instance"),
    ("POST", "/v1/instances/{id}/snapshot", "snapshot_instance"),
    ("POST", "/v1/instances/{id}/stop", "stop_instance"),
    ("GET", "/v1/usage", "usage"),
    ("GET", "/v1/signing-key", "signing_key"),
    ("POST", "/v1/trusted-keys", "trust_key"),
    ("GET", "/metrics", "metrics"),
)
"""(method, path, AgentServer handler) of every route: the API's table of contents."""


class AgentServer:
    """The aiohttp application around one ``Agent``."""

    def __init__(self, cfg: AgentConfig, tokens: auth.TokenStore | None = None) -> None:
        self.cfg = cfg
        self.tokens = tokens or auth.TokenStore.from_file(cfg.tokens_file)
        self.agent = Agent(cfg)
        self.auth_throttle = auth.Throttle()  # failed authentications per source address
        self.agent.metrics.registry.register(auth.ThrottleCollector(self.auth_throttle, "agent"))
        self.executor = concurrent.futures.ThreadPoolExecutor(
            cfg.workers, thread_name_prefix="agent")
        self._upload_locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task] = []

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware, auth.middleware(
                                  self.tokens, self.auth_throttle)],
                              client_max_size=1 << 20)
        for method, path, name in ROUTES:
            app.router.add_route(method, path, getattr(self, name))
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    # -- lifecycle -----------------------------------------------------------------
    async def _startup(self, app: web.Application) -> None:
        await self._run(self.agent.open)
        a = self.agent
        log.info("agent %s up on %s:%d (edgepoint %s, %s, %d instance(s) adopted)", a.source,
                 self.cfg.listen, self.cfg.port, self.cfg.edgepoint,
                 "restores with CRIU" if a.restores else "cold-starts instances",
                 a.adopted)
        _trim_heap()
        self._tasks = [asyncio.create_task(self._loop(self.cfg.usage_interval_s, self._meter)),
                       asyncio.create_task(self._loop(self.cfg.health_interval_s,
                                                      self.agent.monitor_once))]

    async def _cleanup(self, app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.agent.close()

    def _meter(self) -> None:
        self.agent.meter.tick(self.agent.usage_targets)
        self.agent.metrics.usage_tick.labels(edgepoint=self.cfg.edgepoint).observe(
            self.agent.meter.tick_seconds)

    async def _loop(self, every: float, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            nxt += every
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            try:
                await asyncio.to_thread(fn)
            except Exception:
                log.exception("background %s failed", getattr(fn, "__name__", fn))
            if loop.time() > nxt + every:
                nxt = loop.time()  # fell behind: do not burst to catch up

    # -- handlers ------------------------------------------------------------------
    @requires(*READ)
    async def health(self, request: web.Request) -> web.Response:
        a = self.agent
        return _json(AgentHealth(
            status="ok", version=__version__, edgepoint=self.cfg.edgepoint,
            server=self.cfg.server, source=a.source, mode="restore" if a.restores else "cold",
            cold_reason=a.cold_reason, signer=a.key_id, uptime_s=round(time.time() - a.started, 3),
            instances=sum(1 for r in a.list_instances() if r.state == "running"),
            adopted=a.adopted))

    @requires(*READ)
    async def capacity(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.agent.capacity))

    @requires(*READ)
    async def list_appshots(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "appshot")
        if kind not in ("appshot", "snapshot", "all"):
            raise ApiError(400, "bad_query", "kind must be appshot, snapshot or all")
        a = self.agent
        shots = []
        if kind in ("appshot", "all"):
            shots += await self._run(a.list_appshots)
        if kind in ("snapshot", "all"):
            shots += await self._run(a.list_snapshots)
        return _json(AppshotList(appshots=shots))

    @requires(*READ)
    async def get_appshot(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.agent.appshot, request.match_info["name"]))

    @requires(*DEPLOY)
    async def delete_appshot(self, request: web.Request) -> web.Response:
        await self._run(self.agent.delete_appshot, request.match_info["name"])
        return web.Response(status=204)

    @requires(*AUDIT)
    async def verify_appshot(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.agent.verify_appshot, request.match_info["name"]))

    @requires(*DEPLOY)
    async def download_appshot(self, request: web.Request) -> web.StreamResponse:
        path = await self._run(self.agent.tarball, request.match_info["name"])
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    @requires(*DEPLOY)
    async def upload_status(self, request: web.Request) -> web.Response:
        return _json(await self._run(self.agent.upload_status, request.match_info["name"]))

    @requires(*DEPLOY)
    async def upload_abort(self, request: web.Request) -> web.Response:
        await self._run(self.agent.upload_abort, request.match_info["name"])
        return web.Response(status=204)

    @requires(*DEPLOY)
    async def upload_chunk(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"], "appshot name")
        offset = _header_int(request, "Upload-Offset")
        size = _header_int(request, "Upload-Length")
        digest = request.headers.get("Upload-SHA256", "")
        if not _HEX64.match(digest):
            raise ApiError(400, "bad_header", "header Upload-SHA256 must be the tarball's "
                           "SHA-256 in hex (64 digits)")
        lock = self._upload_locks.setdefault(name, asyncio.Lock())
        if lock.locked():
            raise ApiError(409, "upload_busy", f"another upload of {name} is in progress")
        async with lock:
            part, have = await self._run(self.agent.upload_begin, name, offset, size,
                                         digest.lower())
            if request.content_length is not None and have + request.content_length > size:
                raise ApiError(400, "too_long", f"offset {have} + {request.content_length} "
                               f"bytes exceed Upload-Length {size}")
            written = 0
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                async for chunk in request.content.iter_chunked(1 << 20):
                    if have + written + len(chunk) > size:
                        raise ApiError(400, "too_long", f"body goes past Upload-Length {size}")
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    written += len(chunk)
            finally:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
                os.close(fd)
                self.agent.metrics.uploads.labels(edgepoint=self.cfg.edgepoint).inc(written)
            if have + written < size:
                return _json(await self._run(self.agent.upload_status, name))
            info = await self._run(self.agent.upload_finish, name)
        self._upload_locks.pop(name, None)
        return _json(info, status=201)

    @requires(*DEPLOY)
    async def capture(self, request: web.Request) -> web.Response:
        req = await _body(request, CaptureRequest)
        return _json(await self._run(self.agent.capture, req), status=201)

    @requires(*READ)
    async def list_instances(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        app = request.query.get("app")
        recs = self.agent.list_instances(state, app)
        return _json(InstanceList(instances=[r.info() for r in recs]))

    @requires(*RUN)
    async def create_instance(self, request: web.Request) -> web.Response:
        req = await _body(request, CreateInstance)
        rec = await self._run(self.agent.create, req)
        return _json(rec.info(), status=201)

    @requires(*READ)
    async def get_instance(self, request: web.Request) -> web.Response:
        return _json(self.agent.get(request.match_info["id"]).info())

    @requires(*RUN)
    async def snapshot_instance(self, request: web.Request) -> web.Response:
        rec = await self._run(self.agent.snapshot, request.match_info["id"])
        return _json(rec.info())

    @requires(*RUN)
    async def stop_instance(self, request: web.Request) -> web.Response:
        rec = await self._run(self.agent.stop, request.match_info["id"])
        return _json(rec.info())

    @requires(*AUDIT)
    async def usage(self, request: web.Request) -> web.Response:
        after = _int_query(request, "after", 0, 0, 2**62)
        limit = _int_query(request, "limit", 1000, 1, 10_000)
        records, head = await self._run(self.agent.meter.page, after, limit)
        return _json(UsagePage(source=self.agent.source, records=records,
                               last_seq=records[-1].seq if records else after, head_seq=head))

    @requires(*READ)
    async def signing_key(self, request: web.Request) -> web.Response:
        kid, pem = await self._run(self.agent.signing_key_pem)
        return _json({"key_id": kid, "pem": pem})

    @requires(*DEPLOY)
    async def trust_key(self, request: web.Request) -> web.Response:
        req = await _body(request, TrustedKey)
        return _json({"key_id": await self._run(self.agent.trust_key, req.pem)}, status=201)

    @requires(*AUDIT, METRICS)
    async def metrics(self, request: web.Request) -> web.Response:
        from ._metrics import CONTENT_TYPE
        body = await self._run(self.agent.metrics.generate)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _trim_heap() -> None:
    """After start-up: give the heap that imports freed back to the system (the agent sits
    idle on every server), and move the start-up objects (modules, model schemas) out of
    the cyclic GC's reach: a full collection then no longer walks them on every restore."""
    import ctypes
    import gc
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def build_app(cfg: AgentConfig, tokens: auth.TokenStore | None = None) -> web.Application:
    """The agent's aiohttp application (tests may run it in-process)."""
    return AgentServer(cfg, tokens).app()


def run(cfg: AgentConfig) -> None:
    """Serve until SIGTERM/SIGINT. Instances keep running when the agent stops: the next
    agent process adopts them."""
    configure_logging(cfg.log_level, cfg.log_format, service="agent")
    from ._sys import set_subreaper
    set_subreaper()
    try:
        tokens = auth.TokenStore.from_file(cfg.tokens_file)
    except auth.AuthError as exc:
        raise ConfigError(str(exc)) from None
    app = build_app(cfg, tokens)
    web.run_app(app, host=cfg.listen, port=cfg.port, print=None,
                access_log=logging.getLogger("aiohttp.access") if cfg.access_log else None,
                shutdown_timeout=10)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeshot.agent.server --config FILE``: the daemon without the CLI's
    imports (``edgeshot agent`` execs this, so the daemon stays lean)."""
    import argparse
    ap = argparse.ArgumentParser(prog="edgeshot agent")
    ap.add_argument("--config", "-c", required=True, type=Path)
    ap.add_argument("--log-format", choices=FORMATS, help="overrides the file's log_format")
    args = ap.parse_args(argv)
    try:
        cfg = AgentConfig.load(args.config)
        if args.log_format:
            cfg = cfg.model_copy(update={"log_format": args.log_format})
        run(cfg)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
