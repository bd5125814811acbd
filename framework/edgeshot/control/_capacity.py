"""Capacity tests: the app's declared `LoadTest` against its staged version.

Locust (as a library, in a child process of its own: `_capacity_run.py`, since it
patches the standard library for gevent) ramps synthetic users up to ``users`` at
``spawn_rate`` per second and holds them until ``duration_s``; each user is one
session from one of the declared regions (``X-Edgeshot-Region``), sends one request at
a time with no think time (so "users" are concurrent in-flight requests, docs/architecture.md's
"users per instance") over the declared weighted paths, carrying the stage token
(``X-Edgeshot-Stage``) that alone reaches the staged version. Every answer is kept:
(time, users active, response ms, ok); an answer to a request sent before the number
of users changed belongs to no point of the curve (it saw two loads).

The analysis is a pure function (`analyse`): the response-time curve — per number of
concurrent users, the SLA's percentile, the error rate and the throughput — and the
users per instance the version sustains: the most users at which the percentile stays
within the limit and errors within the criteria (a point needs ``min_samples`` answers
to count). It passes when that is at least the criteria's ``min_users_per_instance``
(default: the SLA's ``users_per_instance``), the whole run's error rate is within
``max_error_rate``, and the limit (``max_response_ms``, default the SLA's) held at
that load.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoadSpec", "Sample", "Point", "CapacityResult", "curve", "analyse", "run",
           "CapacityError"]


class CapacityError(Exception):
    pass


@dataclass(frozen=True)
class LoadSpec:
    users: int
    spawn_rate: float
    duration_s: float
    paths: tuple[tuple[str, str, int], ...]  # (method, path, weight)
    regions: tuple[str, ...] = ()
    percentile: float = 95.0
    max_response_ms: int = 1000
    max_error_rate: float = 0.01
    required_users: int = 1  # per instance

    @classmethod
    def of(cls, load_test: Any, scaling: Any) -> LoadSpec:
        """From a spec `LoadTest` (or its JSON) and the placement's `ScalingPolicy` (the
        SLA: percentile, max response time, users per instance)."""
        lt = load_test if isinstance(load_test, dict) else load_test.model_dump(mode="json")
        crit = lt.get("criteria") or {}
        sc = scaling if isinstance(scaling, dict) else scaling.model_dump(mode="json")
        return cls(
            users=int(lt["users"]), spawn_rate=float(lt["spawn_rate"]),
            duration_s=float(lt["duration_s"]),
            paths=tuple((p.get("method", "GET"), p["path"], int(p.get("weight", 1)))
                        for p in lt["paths"]),
            regions=tuple(lt.get("regions") or ()), percentile=float(sc["percentile"]),
            max_response_ms=int(crit.get("max_response_ms") or sc["max_response_ms"]),
            max_error_rate=float(crit.get("max_error_rate", 0.01)),
            required_users=int(crit.get("min_users_per_instance") or sc["users_per_instance"]))


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the start
    users: int  # users running when the answer came
    ms: float
    ok: bool
    steady: bool = True  # as many users when the request left as when its answer came


@dataclass(frozen=True)
class Point:
    users: int
    p_ms: float | None  # at the spec's percentile, over the answers at this load
    error_rate: float
    rps: float
    n: int


@dataclass(frozen=True)
class CapacityResult:
    passed: bool
    users_per_instance: float
    required: int
    instances: int
    percentile: float
    max_response_ms: int
    max_error_rate: float
    requests: int
    errors: int
    reasons: tuple[str, ...]
    curve: tuple[Point, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [{"users": p.users, "p_ms": p.p_ms, "error_rate": p.error_rate,
                       "rps": round(p.rps, 2), "n": p.n} for p in self.curve]
        d["reasons"] = list(self.reasons)
        return d


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s), math.ceil(q / 100 * len(s))) - 1)]


def curve(samples: Iterable[Sample], percentile: float) -> tuple[Point, ...]:
    """Per number of concurrent users: the percentile of the successful answers' times,
    the error rate and the throughput while that many users ran."""
    by: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.users > 0 and s.steady:  # a request that saw the load change is no one's
            by[s.users].append(s)
    out = []
    for users in sorted(by):
        ss = by[users]
        ok = [s.ms for s in ss if s.ok]
        span = max(s.t for s in ss) - min(s.t for s in ss)
        out.append(Point(users, _pct(ok, percentile), 1 - len(ok) / len(ss),
                         len(ss) / span if span > 0 else 0.0, len(ss)))
    return tuple(out)


def analyse(samples: Sequence[Sample], spec: LoadSpec, instances: int = 1,
            min_samples: int = 6) -> CapacityResult:
    """The users per instance the version sustains within its limits, and the verdict."""
    pts = curve(samples, spec.percentile)
    good = [p for p in pts if p.n >= min_samples and p.p_ms is not None
            and p.p_ms <= spec.max_response_ms and p.error_rate <= spec.max_error_rate]
    sustained = max((p.users for p in good), default=0)
    per = sustained / max(1, instances)
    errors = sum(not s.ok for s in samples)
    rate = errors / len(samples) if samples else 1.0
    reasons = []
    measured = [p for p in pts if p.n >= min_samples]
    if not samples:
        reasons.append("no answer at all from the staged version")
    elif not measured:
        reasons.append(f"too few answers at any load (fewer than {min_samples} per step)")
    if per < spec.required_users:
        first_bad = next((p for p in measured if p.users > sustained), None)
        why = ""
        if first_bad is not None:
            why = (f"; at {first_bad.users} users p{spec.percentile:g} "
                   f"{_ms(first_bad.p_ms)} (limit {spec.max_response_ms} ms), "
                   f"errors {first_bad.error_rate:.1%}")
        reasons.append(f"sustains {per:g} users per instance, needs {spec.required_users}"
                       + why)
    if rate > spec.max_error_rate:
        reasons.append(f"error rate {rate:.2%} over the run (at most {spec.max_error_rate:.2%})")
    if max((p.users for p in measured), default=0) < spec.required_users * instances and \
            per >= spec.required_users:
        reasons.append("the test never reached the required load")
    passed = not reasons
    if passed:
        reasons.append(f"sustains {per:g} users per instance within p{spec.percentile:g} "
                       f"{spec.max_response_ms} ms (needs {spec.required_users})")
    return CapacityResult(passed=passed, users_per_instance=per, required=spec.required_users,
                          instances=instances, percentile=spec.percentile,
                          max_response_ms=spec.max_response_ms,
                          max_error_rate=spec.max_error_rate, requests=len(samples),
                          errors=errors, reasons=tuple(reasons), curve=pts)


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f} ms"


# ---------------------------------------------------------------------- running


async def run(url: str, host: str | None, token: str, spec: LoadSpec, workdir: Path, *,
              instances: int = 1, timeout_s: float | None = None,
              hop: str | None = None) -> CapacityResult:
    """Run the load (a locust child process) against `url` with the stage token; the
    analysis of every answer. The token goes in a 0600 file, never on a command line."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg = {"url": url, "host": host, "token": token, "hop": hop, "users": spec.users,
           "spawn_rate": spec.spawn_rate, "duration_s": spec.duration_s,
           "paths": [list(p) for p in spec.paths], "regions": list(spec.regions),
           "out": str(workdir / "samples.json")}
    path = workdir / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    log = open(workdir / "locust.log", "ab")  # noqa: SIM115
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeshot.control._capacity_run", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        limit = timeout_s or (spec.duration_s + 60)
        try:
            rc = await asyncio.wait_for(proc.wait(), limit)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
    finally:
        log.close()
        path.unlink(missing_ok=True)  # the token's only copy on disk
    if rc != 0:
        tail = (workdir / "locust.log").read_text(errors="replace")[-1500:]
        raise CapacityError(f"the load generator failed (exit {rc}): {tail}")
    data = json.loads((workdir / "samples.json").read_text())
    return analyse(steady_samples(data["samples"], data.get("timeline") or []), spec,
                   instances=instances)


def steady_samples(raw: Sequence[Sequence[Any]], timeline: Sequence[Sequence[float]]
                   ) -> list[Sample]:
    """Samples [t, users, ms, ok] marked steady when the users running did not change
    while the request was out (`timeline`: [t, users] at each change, in order)."""
    import bisect
    times = [float(t) for t, _ in timeline]
    counts = [int(n) for _, n in timeline]

    def users_at(t: float) -> int | None:
        i = bisect.bisect_right(times, t) - 1
        return counts[i] if i >= 0 else None

    out = []
    for t, u, ms, ok in raw:
        start = users_at(float(t) - float(ms) / 1000)
        steady = not times or (start == users_at(float(t)) == int(u))
        out.append(Sample(float(t), int(u), float(ms), bool(ok), steady))
    return out


def spec_json(spec: LoadSpec) -> dict[str, Any]:
    return asdict(spec)


def now() -> float:
    return time.time()
