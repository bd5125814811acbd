"""The usage collector: pulls every agent's and edge process's usage records with its
stored cursor and stores records, hourly aggregates and cursor in one transaction.

One task per endpoint (an agent, an edge process). Each round pulls pages after the
stored cursor until the source's head is reached, then waits `interval_s`. A failed
pull (the source is down, restarting, slow) is retried with exponential backoff and
jitter, up to `max_backoff_s`; the error is kept with the source for status and
metrics. Nothing is lost and nothing is counted twice through restarts of any party:

* the source restarted: it serves the same records under the same seqs (they are in
  its own store); the cursor says which ones are new;
* the collector (the controller) restarted: the cursor was committed with the records;
  a page pulled but not committed is pulled again;
* an endpoint now answers as another source (reconfigured): that source's own cursor
  applies; a source whose head went below the cursor (its store was lost) is reported
  and not read until an operator looks (records below the cursor were stored already;
  new seqs would be mistaken for old ones).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from edgeshot.spec import PeakWindow

from . import _metering_store as ms
from ._store import Store

log = logging.getLogger("edgeshot.metering")


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic GC paused while a page's rows are built (they hold no cycles)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class MeteringSection(BaseModel):
    """`[metering]` of the controller's configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    interval_s: float = Field(5.0, gt=0, description="pull every source this often")
    page_limit: int = Field(5000, ge=1, le=10000, description="records per pull")
    max_backoff_s: float = Field(30.0, gt=0, description="retry a failing source at most "
                                 "this far apart")
    budget_interval_s: float = Field(10.0, gt=0, description="re-assess budgets and cost "
                                     "ceilings this often")


class UsageClient(Protocol):
    async def usage(self, after: int = 0, limit: int = 1000) -> Any: ...


class PageError(RuntimeError):
    """A page that breaks the protocol (wrong source, seqs out of order): not stored."""


class SourceReset(RuntimeError):
    """The source's head is below the stored cursor: its store was replaced."""


@dataclass
class Endpoint:
    name: str  # "agent/<server>" | "edge/<edgepoint>"
    kind: str  # "agent" | "edge"
    client: UsageClient
    failures: int = 0
    pulled: int = 0  # records stored from it by this process
    last_error: str | None = None
    source: str | None = None
    head: int = 0
    cursor: int = 0
    next_try: float = 0.0


@dataclass
class CollectorStats:
    ingested: dict[str, int] = field(default_factory=dict)  # source -> records (this process)
    pages: int = 0
    ingest_seconds: float = 0.0


class Collector:
    def __init__(self, store: Store, endpoints: list[Endpoint], *, peak: PeakWindow | None,
                 interval_s: float = 5.0, page_limit: int = 5000, base_backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0,
                 on_event: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.endpoints = {e.name: e for e in endpoints}
        self.splitter = ms.Splitter(peak)
        self.interval_s = interval_s
        self.page_limit = page_limit
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_event = on_event or (lambda kind, msg, data: None)
        self.stats = CollectorStats()
        # held while a page is committed and handed to `on_ingest` (month totals)
        self.ingest_lock = threading.Lock()
        self.on_ingest: Callable[[dict[tuple[Any, ...], list[int]]], None] | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ running

    def start(self) -> list[asyncio.Task[Any]]:
        self.tasks = [asyncio.create_task(self._loop(e), name=f"usage {e.name}")
                      for e in self.endpoints.values()]
        return self.tasks

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self.tasks = []

    async def _loop(self, ep: Endpoint) -> None:
        while True:
            try:
                await self.pull(ep)
                wait = self.interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                wait = self._failed(ep, exc)
            ep.next_try = time.monotonic() + wait
            await asyncio.sleep(wait)

    def _failed(self, ep: Endpoint, exc: BaseException) -> float:
        ep.failures += 1
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if ep.failures == 1 or text != ep.last_error:
            log.warning("usage from %s: %s (retrying with backoff)", ep.name, text)
        if isinstance(exc, SourceReset | PageError) and text != ep.last_error:
            self.on_event("usage-source-error", f"{ep.name}: {text}", {"endpoint": ep.name})
        ep.last_error = text
        try:
            with self.store.tx() as db:
                ms.note_error(db, ep.name, text)
        except Exception:  # the store is busy or closing: the next round tells again
            pass
        backoff = min(self.max_backoff_s, self.base_backoff_s * 2 ** (ep.failures - 1))
        return backoff * random.uniform(0.5, 1.0)

    async def collect_now(self) -> dict[str, int | str]:
        """One pull of every endpoint until caught up (tests, `edgeshot bill` freshness);
        per endpoint the records stored, or the error."""
        async def one(ep: Endpoint) -> int | str:
            try:
                return await self.pull(ep)
            except Exception as exc:
                self._failed(ep, exc)
                return f"{type(exc).__name__}: {exc}"

        names = list(self.endpoints)
        results = await asyncio.gather(*(one(self.endpoints[n]) for n in names))
        return dict(zip(names, results, strict=True))

    # ------------------------------------------------------------------ one endpoint

    def _cursor(self, ep: Endpoint) -> tuple[str | None, int]:
        rows = self.store.query("SELECT source, cursor FROM usage_sources WHERE endpoint = ?",
                                (ep.name,))
        return (rows[0][0], rows[0][1]) if rows else (None, 0)

    async def pull(self, ep: Endpoint) -> int:
        """Pages after the stored cursor until the source's head; returns records stored."""
        lock = self._locks.setdefault(ep.name, asyncio.Lock())
        async with lock:
            total = 0
            source, cursor = self._cursor(ep)
            while True:
                page = await ep.client.usage(after=cursor, limit=self.page_limit)
                if page.source != source:
                    # first contact, or the endpoint now serves another source: its own cursor
                    with self.store.tx() as db:
                        known = ms.ensure_source(db, page.source, ep.kind, ep.name)
                    source = page.source
                    if known != cursor:
                        cursor = known
                        continue
                if page.head_seq < cursor:
                    raise SourceReset(
                        f"{source}: its last seq is {page.head_seq}, below the {cursor} "
                        "already stored (its usage store was replaced?); not read")
                self._check(page, cursor)
                t0 = time.perf_counter()
                n = await asyncio.to_thread(self._store_page, source, cursor, page.records,
                                            page.last_seq, page.head_seq)
                self.stats.ingest_seconds += time.perf_counter() - t0
                self.stats.pages += 1
                self.stats.ingested[source] = self.stats.ingested.get(source, 0) + n
                total += n
                ep.pulled += n
                cursor = page.last_seq
                ep.source, ep.cursor, ep.head = source, cursor, page.head_seq
                if ep.failures:
                    log.info("usage from %s: back after %d failed pull(s)", ep.name, ep.failures)
                ep.failures, ep.last_error = 0, None
                if not page.records or cursor >= page.head_seq:
                    return total

    def _check(self, page: Any, after: int) -> None:
        prev = after
        for r in page.records:
            if r.source != page.source:
                raise PageError(f"{page.source}: a record of {r.source!r} in its page")
            if r.seq <= prev:
                raise PageError(f"{page.source}: seq {r.seq} after {prev} (not increasing)")
            prev = r.seq
        if page.records and page.last_seq != prev:
            raise PageError(f"{page.source}: last_seq {page.last_seq} but the last record is "
                            f"{prev}")

    def _store_page(self, source: str, after: int, records: list[Any], last_seq: int,
                    head: int) -> int:
        # (in a thread: the event loop goes on; no cyclic GC passes over the new tuples)
        with _no_gc():
            rows = ms.rows_of(records, source)
            acc = ms.aggregate(rows, self.splitter)
        with self.ingest_lock:
            with self.store.tx() as db:
                n = ms.ingest(db, source, after, rows, last_seq, head, self.splitter,
                              aggregates=acc)
            if self.on_ingest is not None:
                self.on_ingest(acc)
        return n

    # ------------------------------------------------------------------ status

    def sources(self) -> list[dict[str, Any]]:
        """Per source: cursor, head, lag (records and seconds), errors."""
        now = time.time()
        out = []
        for row in self.store.query("SELECT * FROM usage_sources ORDER BY source"):
            d = dict(row)
            ep = self.endpoints.get(d["endpoint"] or "")
            head = max(d["head"], ep.head if ep and ep.source == d["source"] else 0)
            d["lag_records"] = max(0, head - d["cursor"])
            d["lag_s"] = (now - d["last_ok"]) if d["last_ok"] else None
            d["failing"] = bool(ep and ep.failures)
            if ep and ep.last_error:
                d["last_error"] = ep.last_error
            out.append(d)
        known = {d["endpoint"] for d in out}
        for ep in self.endpoints.values():  # never reached yet: its source is not known
            if ep.name not in known:
                out.append({"source": None, "endpoint": ep.name, "kind": ep.kind, "cursor": 0,
                            "head": 0, "records": 0, "last_end": None, "last_ok": None,
                            "last_error": ep.last_error, "errors": ep.failures,
                            "lag_records": 0, "lag_s": None, "failing": bool(ep.failures)})
        return out
