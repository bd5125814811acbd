"""Data-path usage: HAProxy's per-instance counters turned into usage records.

HAProxy counts requests and bytes per server (``req_tot``, ``bin``: from the user,
``bout``: to the user) and forgets them when a server is deleted, a worker is
replaced by a reload, or the process restarts. The meter keeps the latest counters
it saw per (worker, backend, server); ``flush`` turns what grew since the last
committed *baseline* into records and commits records and new baselines in one
SQLite transaction. So:

* a flush before ``del server`` stores what HAProxy is about to forget; a worker told to
  stop (a reload, a stop) exits as soon as its last connection ends, taking its
  counters with it, so the edge holds a CLI session open on it until its counters are
  final (``service.WorkerSession``) and only then lets it go;
* an edge process that crashes loses nothing it committed and writes nothing twice:
  its successor computes the same deltas from the same baselines (HAProxy outlives
  it and is adopted, with any old worker still finishing, read on until it exits);
* requests the activator proxied itself (the first ones of an instance) are counted by
  the activator as "worker 0", whose counters live in the edge process: a crash loses
  those not yet flushed (at most one ``usage_interval_s`` of them).

Records carry only what the data path measures (network bytes, requests); agents fill
CPU, memory, disk and storage (docs/architecture.md: each field has exactly one source). An
interval without traffic produces no record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime

from ._store import Counters, InstanceMeta, Store, iso

ACTIVATOR_WORKER = 0
_SKIP_SERVERS = frozenset({"FRONTEND", "BACKEND", "edgeshot.activator", "origin"})

__all__ = ["UsageMeter", "ACTIVATOR_WORKER", "counters_from_stat"]

log = logging.getLogger("edgeshot.edge")


def counters_from_stat(rows: Iterable[dict[str, str]]) -> dict[tuple[str, str], Counters]:
    """(backend, server) -> counters for instance servers of a ``show stat``."""
    out = {}
    for r in rows:
        sv, px = r.get("svname", ""), r.get("pxname", "")
        if sv in _SKIP_SERVERS or px.startswith("edgeshot.") or px.endswith(".origin"):
            continue
        out[(px, sv)] = Counters(_int(r.get("req_tot")), _int(r.get("bin")),
                                 _int(r.get("bout")))
    return out


def _int(v: str | None) -> int:
    try:
        return int(v) if v else 0
    except ValueError:
        return 0


class UsageMeter:
    def __init__(self, store: Store, source: str, edgepoint: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.source = source
        self.edgepoint = edgepoint
        self.clock = clock
        self.latest: dict[tuple[int, str, str], Counters] = {}
        self.first_seen: dict[tuple[int, str, str], str] = {}
        self.base = store.baselines()
        self.activator: dict[tuple[str, str], list[int]] = {}  # worker 0's counters

    # -- observing -----------------------------------------------------------------------
    def observe(self, worker: int, counters: dict[tuple[str, str], Counters]) -> None:
        now = iso(self.clock())
        for (px, sv), c in counters.items():
            key = (worker, px, sv)
            self.latest[key] = c
            self.first_seen.setdefault(key, now)

    def observe_stat(self, worker: int, rows: Iterable[dict[str, str]]) -> None:
        self.observe(worker, counters_from_stat(rows))

    def count_activator(self, backend: str, instance: str, bytes_in: int,
                        bytes_out: int) -> None:
        """A request the activator proxied to ``instance`` itself."""
        c = self.activator.setdefault((backend, instance), [0, 0, 0])
        c[0] += 1
        c[1] += bytes_in
        c[2] += bytes_out
        self.observe(ACTIVATOR_WORKER, {(backend, instance): Counters(*c)})

    def reset_activator(self) -> None:
        """At start: the previous process's activator counters are gone with it."""
        self._drop(lambda k: k[0] == ACTIVATOR_WORKER)

    # -- committing ----------------------------------------------------------------------
    def flush(self, resolve: Callable[[str], InstanceMeta | None],
              only: Callable[[tuple[int, str, str]], bool] | None = None) -> int:
        """Records for every counter that grew since its baseline (or the keys ``only``
        selects); returns how many records were committed."""
        now = iso(self.clock())
        records, baselines = [], {}
        for key, cur in self.latest.items():
            if only is not None and not only(key):
                continue
            base, since = self.base.get(key, (None, None))
            if base is None or cur.requests < base.requests or cur.bytes_in < base.bytes_in \
                    or cur.bytes_out < base.bytes_out:
                base = Counters(0, 0, 0)  # first sight, or counters that restarted
                since = self.first_seen.get(key, now) if since is None else since
            d = Counters(cur.requests - base.requests, cur.bytes_in - base.bytes_in,
                         cur.bytes_out - base.bytes_out)
            if d == Counters(0, 0, 0):
                continue
            meta = resolve(key[2])
            if meta is None:
                continue  # not ours to bill (yet): kept until it can be attributed
            records.append({"instance": meta.instance, "app": meta.app,
                            "version": meta.version, "owner": meta.owner,
                            "vendor": meta.vendor, "start": since or now, "end": now,
                            "net_in_bytes": d.bytes_in, "net_out_bytes": d.bytes_out,
                            "requests": d.requests})
            baselines[key] = (cur, now)
        if baselines:
            self.store.commit_usage(records, baselines)
            self.base.update(baselines)
        return len(records)

    def forget_worker(self, worker: int) -> None:
        """A worker that is gone: its final counters were flushed; drop its keys."""
        self._drop(lambda k: k[0] == worker)

    def forget_server(self, backend: str, server: str, *,
                      keep_workers: Collection[int] = ()) -> None:
        """A deleted server (flushed first): its keys. An instance back from its snapshot
        is added again under the same name, with counters from zero. ``keep_workers``:
        old workers still running, where the server lives on until they exit (their
        counters are read to the end, so their baselines stay)."""
        self.activator.pop((backend, server), None)
        self._drop(lambda k: k[1] == backend and k[2] == server and k[0] not in keep_workers)

    def _drop(self, which: Callable[[tuple[int, str, str]], bool]) -> None:
        """Forget the keys ``which`` selects (durably); counters never turned into records
        are said out loud: they are not billed."""
        keys = {k for k in self.base if which(k)}
        for k in [k for k in self.latest if which(k)]:
            cur, base = self.latest.pop(k), self.base.get(k, (Counters(0, 0, 0), ""))[0]
            self.first_seen.pop(k, None)
            if cur.requests > base.requests:
                log.warning("usage of %s (worker %d) dropped unbilled: %d request(s) no "
                            "instance record could be found for", k[2], k[0],
                            cur.requests - base.requests)
        if keys:
            self.store.commit_usage([], {}, forget=keys)
            for k in keys:
                self.base.pop(k, None)

    def workers(self) -> set[int]:
        return {k[0] for k in self.latest} | {k[0] for k in self.base}

    # -- serving ---------------------------------------------------------------------------
    def page(self, after: int, limit: int) -> dict:
        rows = self.store.usage_after(after, limit)
        records = [{"source": self.source, "edgepoint": self.edgepoint, **r,
                    "cpu_seconds": 0.0, "memory_gb_seconds": 0.0, "disk_read_bytes": 0,
                    "disk_write_bytes": 0, "storage_gb_hours": 0.0} for r in rows]
        return {"source": self.source, "records": records,
                "last_seq": records[-1]["seq"] if records else after,
                "head_seq": self.store.usage_head()}
