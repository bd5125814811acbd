"""Per-request latency from HAProxy's request logs, into HDR histograms.

``show stat`` has only averages; percentiles need every request's timers. HAProxy
sends one raw log line per request (1 in N at high rates: the edge sets N so that it
reads at most ``log_max_per_s`` lines a second) over UDP on loopback to the edge
process, which reads them without blocking; the format is the frontend's
``log-format``::

    <backend> <server> <status> <Ta ms> <Tr ms> <bytes out> <bytes in> <method> {<region>}

``LatencyBook`` keeps, per (app, version), one counter of millisecond values per
second (HAProxy's timers are integer milliseconds, so a second holds few distinct
values and recording costs a dict increment), from which it answers percentiles over
the resource manager's windows, and per minute an HDR histogram (``hdrh``, the
standard encoding) stored durably with per-region request counts for the dashboards'
history. Requests the activator proxied itself are recorded by the activator (with
the instance's version); origin routes are kept under the version ``@origin``.
Request and error *counts* per version come from HAProxy's counters (``count``), exact
whatever the sampling.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime

from hdrh.histogram import HdrHistogram

from ._store import Store

log = logging.getLogger("edgeshot.edge")
ORIGIN = "@origin"
_HIGHEST_MS = 3_600_000

__all__ = ["LatencyBook", "LogReceiver", "ORIGIN", "parse_line", "percentile"]


def percentile(counts: Counter, pct: float) -> float | None:
    """The value at ``pct`` of a {value: count} counter (nearest rank)."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(pct / 100 * total))
    seen = 0
    for v in sorted(counts):
        seen += counts[v]
        if seen >= rank:
            return float(v)
    return float(max(counts))


def parse_line(line: bytes) -> tuple[str, str, int, int, str] | None:
    """(backend, server, status, Ta ms, region) of a log line; None when malformed."""
    parts = line.rstrip(b"\n").split(b" ", 8)
    if len(parts) < 8:
        return None
    try:
        status = int(parts[2])
        ta = int(parts[3])
    except ValueError:
        return None
    region = parts[8].strip(b"{} \n").decode(errors="replace") if len(parts) > 8 else ""
    return parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), status, ta, \
        region or "-"


class LatencyBook:
    """Latency per (app, version): per-second counters for windows, per-minute HDR."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] | None = None) -> None:
        import time
        self.window_s = window_s
        self.clock = clock or time.time
        # (app, version) -> deque of [second, Counter(ms -> n), errors]
        self.seconds: dict[tuple[str, str], deque[list]] = {}
        # minute -> (app, version) -> [Counter, errors]; minute -> (app, region) -> n
        self.minutes: dict[int, dict[tuple[str, str], list]] = {}
        self.regions: dict[int, Counter] = {}
        # (app, version) -> deque of [second, requests, errors] from HAProxy's counters
        self.counts: dict[tuple[str, str], deque[list]] = {}

    def record(self, app: str, version: str, ms: int, status: int, region: str = "-",
               now: float | None = None, n: int = 1, held: bool = False) -> None:
        """One request (``n``: this many, when the logs are sampled 1 in n). ``held``: a
        request the activator held while an instance was restored: it counts in the
        minute's history (users waited) but not in the windows the resource manager
        scales on (a restore's wait is not a sign of load)."""
        t = self.clock() if now is None else now
        sec = int(t)
        err = n if status >= 500 or status < 0 else 0
        key = (app, version)
        if held:
            self._minute(sec, key, ms, err, n, region)
            return
        dq = self.seconds.get(key)
        if dq is None:
            dq = self.seconds[key] = deque()
        if dq and dq[-1][0] == sec:
            b = dq[-1]
        else:
            b = [sec, Counter(), 0]
            dq.append(b)
            while dq and dq[0][0] <= sec - self.window_s:
                dq.popleft()
        if ms >= 0:
            b[1][ms] += n
        b[2] += err
        self._minute(sec, key, ms, err, n, region)

    def _minute(self, sec: int, key: tuple[str, str], ms: int, err: int, n: int,
                region: str) -> None:
        app = key[0]
        minute = sec // 60
        m = self.minutes.setdefault(minute, {})
        mb = m.get(key)
        if mb is None:
            mb = m[key] = [Counter(), 0]
        if ms >= 0:
            mb[0][ms] += n
        mb[1] += err
        self.regions.setdefault(minute, Counter())[(app, region)] += n

    def count(self, app: str, version: str, requests: int, errors: int,
              now: float | None = None) -> None:
        """Requests and errors (5xx) counted by HAProxy (exact, unlike sampled logs)."""
        if requests <= 0 and errors <= 0:
            return
        sec = int(self.clock() if now is None else now)
        dq = self.counts.get((app, version))
        if dq is None:
            dq = self.counts[(app, version)] = deque()
        if dq and dq[-1][0] == sec:
            dq[-1][1] += requests
            dq[-1][2] += errors
        else:
            dq.append([sec, requests, errors])
            while dq and dq[0][0] <= sec - self.window_s:
                dq.popleft()

    def counted(self, app: str, version: str, window_s: float,
                now: float | None = None) -> tuple[int, int]:
        """(requests, errors) of the last ``window_s`` seconds, from the counters."""
        lo = (self.clock() if now is None else now) - window_s
        req = err = 0
        for sec, r, e in reversed(self.counts.get((app, version), ())):
            if sec < lo:
                break
            req += r
            err += e
        return req, err

    def window(self, app: str, window_s: float, version: str | None = None,
               now: float | None = None) -> tuple[Counter, int]:
        """Merged ms counts and errors of the last ``window_s`` seconds (edge versions of
        ``app``, or one ``version``)."""
        t = self.clock() if now is None else now
        lo = t - window_s
        out: Counter = Counter()
        errors = 0
        for (a, v), dq in self.seconds.items():
            if a != app or v == ORIGIN or (version is not None and v != version):
                continue
            for sec, c, e in reversed(dq):
                if sec < lo:
                    break
                out.update(c)
                errors += e
        return out, errors

    def latency(self, app: str, pct: float, window_s: float, now: float | None = None
                ) -> float | None:
        return percentile(self.window(app, window_s, now=now)[0], pct)

    def versions(self, app: str) -> list[str]:
        return sorted({v for a, v in self.seconds if a == app})

    def flush(self, store: Store, now: float | None = None, everything: bool = False) -> int:
        """Store every complete minute (all of them with ``everything``, at shutdown)."""
        t = self.clock() if now is None else now
        current = int(t) // 60
        done = [m for m in self.minutes if everything or m < current]
        for minute in sorted(done):
            label = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%MZ")
            for (app, version), (counts, errors) in self.minutes.pop(minute).items():
                h = HdrHistogram(1, _HIGHEST_MS, 2)
                for v, n in counts.items():
                    h.record_value(min(int(v), _HIGHEST_MS), n)
                total = sum(counts.values())
                store.add_latency(label, app, version, total,
                                  h.get_value_at_percentile(50) if total else 0,
                                  h.get_value_at_percentile(95) if total else 0,
                                  h.get_value_at_percentile(99) if total else 0,
                                  h.get_max_value() if total else 0, errors,
                                  h.encode().decode())
            regions = self.regions.pop(minute, None)
            if regions:
                store.add_regions(label, dict(regions))
        return len(done)


class LogReceiver:
    """Reads HAProxy's log datagrams on 127.0.0.1 (UDP) on the event loop.

    UDP rather than a unix datagram socket: the kernel queues at most
    ``net.unix.max_dgram_qlen`` (10) datagrams on a unix socket and HAProxy drops the
    rest of a burst; a UDP socket queues up to its receive buffer (8 MiB, forced as
    root). ``port`` 0 picks a free one (see ``port`` after ``start``)."""

    def __init__(self, port: int, on_line: Callable[[bytes], None]) -> None:
        self.port = port
        self.on_line = on_line
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", self.port))
        except OSError:
            s.bind(("127.0.0.1", 0))  # taken: another one (the caller re-renders HAProxy)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                break
            except OSError:
                continue
        s.setblocking(False)
        self.sock = s
        self.port = s.getsockname()[1]
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(s.fileno(), self._drain)
        return self.port

    def _drain(self) -> None:
        s = self.sock
        if s is None:
            return
        recv = s.recv
        on_line = self.on_line
        for _ in range(4096):  # then let the loop breathe; the reader fires again
            try:
                data = recv(8192)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                on_line(data)
            except Exception:  # a malformed line never stops the reader
                log.debug("log line not understood: %r", data[:200])

    def stop(self) -> None:
        if self.sock is not None and self.loop is not None:
            try:
                self.loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self.sock.close()
            self.sock = None
