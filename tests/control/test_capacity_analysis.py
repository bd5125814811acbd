"""The capacity test's analysis: pure, table-driven (`_capacity.curve` / `analyse`)."""

from __future__ import annotations

import heapq
import math
import random

import pytest

from edgeshot.control._capacity import LoadSpec, Sample, analyse, curve
from edgeshot.plan import ScalingPolicy
from edgeshot.spec import LoadTest, PassCriteria, WeightedPath


def queue_samples(capacity: int, service_ms: float, users_max: int, per_step_s: float = 1.0,
                  overhead_ms: float = 3.0, seed: int = 1) -> list[Sample]:
    """A closed-loop simulation of an instance that serves `capacity` requests at once in
    `service_ms` each, with 1..users_max users (no think time), one step per user count."""
    rng = random.Random(seed)
    out: list[Sample] = []
    t0 = 0.0
    for users in range(1, users_max + 1):
        free = [t0] * capacity  # when each slot frees (a heap)
        arrivals = [(t0 + rng.random() * service_ms / 1000, k) for k in range(users)]
        heapq.heapify(arrivals)
        end = t0 + per_step_s
        while arrivals[0][0] < end:
            start, k = heapq.heappop(arrivals)
            begin = max(start, heapq.heappop(free))
            done = begin + service_ms / 1000
            heapq.heappush(free, done)
            out.append(Sample(done, users, (done - start) * 1000 + overhead_ms * rng.random(),
                              True))
            heapq.heappush(arrivals, (done, k))
        t0 = end
    return out


def spec(required: int, limit: int, users: int = 16, **kw) -> LoadSpec:
    return LoadSpec(users=users, spawn_rate=1, duration_s=users, paths=(("GET", "/", 1),),
                    percentile=95, max_response_ms=limit, required_users=required, **kw)


@pytest.mark.parametrize("capacity,service_ms", [(4, 200), (6, 200), (10, 200), (10, 100),
                                                 (16, 100)])
def test_a_known_capacity_is_found_within_20_percent(capacity, service_ms):
    samples = queue_samples(capacity, service_ms, users_max=capacity + 6)
    res = analyse(samples, spec(capacity, int(service_ms * 1.25), users=capacity + 6))
    assert abs(res.users_per_instance - capacity) <= 0.2 * capacity, res.reasons
    assert res.passed


@pytest.mark.parametrize("capacity,required,passed", [(10, 10, True), (10, 8, True),
                                                      (4, 10, False), (9, 12, False)])
def test_the_verdict_compares_sustained_users_with_the_criteria(capacity, required, passed):
    samples = queue_samples(capacity, 200, users_max=max(capacity, required) + 4)
    res = analyse(samples, spec(required, 250, users=max(capacity, required) + 4))
    assert res.passed is passed
    if not passed:
        assert any(f"needs {required}" in r for r in res.reasons), res.reasons


def test_errors_fail_the_run_and_a_point_with_errors_is_not_sustained():
    samples = queue_samples(10, 100, users_max=12)
    broken = [Sample(s.t, s.users, s.ms, s.users < 6 or i % 3 != 0)
              for i, s in enumerate(samples)]
    res = analyse(broken, spec(4, 125, users=12, max_error_rate=0.01))
    assert res.users_per_instance == 5
    assert any("error rate" in r for r in res.reasons)
    assert not res.passed


def test_no_answer_and_too_few_answers_are_failures_that_say_why():
    res = analyse([], spec(4, 100))
    assert not res.passed and "no answer" in res.reasons[0]
    few = [Sample(i * 0.1, 1, 50.0, True) for i in range(5)]
    res = analyse(few, spec(1, 100))
    assert not res.passed and any("too few answers" in r for r in res.reasons)


def test_a_test_that_never_reaches_the_required_load_does_not_pass():
    samples = queue_samples(20, 100, users_max=5)
    res = analyse(samples, spec(10, 125, users=5))
    assert not res.passed


def test_users_per_instance_divides_by_instances():
    samples = queue_samples(8, 100, users_max=12)
    res = analyse(samples, spec(4, 125, users=12), instances=2)
    assert res.users_per_instance == pytest.approx(4, abs=0.5)


def test_curve_points_carry_percentile_error_rate_and_throughput():
    samples = [Sample(t / 10, 2, 100.0 + t, t % 10 != 0) for t in range(100)]
    (p,) = curve(samples, 95)
    assert p.users == 2 and p.n == 100
    assert p.error_rate == pytest.approx(0.1)
    ok = sorted(100.0 + t for t in range(100) if t % 10 != 0)
    assert p.p_ms == ok[math.ceil(0.95 * len(ok)) - 1]
    assert p.rps == pytest.approx(100 / 9.9)


def test_load_spec_defaults_come_from_the_sla():
    sc = ScalingPolicy(min=0, max=2, users_per_instance=12, max_response_ms=180, percentile=99,
                       scale_down_below=0.3, idle_s=60, warm_pool=0, panic_factor=2.0)
    lt = LoadTest(users=20, spawn_rate=2, duration_s=15, regions=("eu-central",),
                  paths=(WeightedPath(path="/a", weight=3), WeightedPath(method="POST",
                                                                         path="/b")))
    s = LoadSpec.of(lt, sc)
    assert (s.required_users, s.max_response_ms, s.percentile) == (12, 180, 99)
    assert s.paths == (("GET", "/a", 3), ("POST", "/b", 1)) and s.regions == ("eu-central",)
    lt2 = lt.model_copy(update={"criteria": PassCriteria(max_response_ms=150,
                                                         min_users_per_instance=5,
                                                         max_error_rate=0.05)})
    s2 = LoadSpec.of(lt2.model_dump(mode="json"), sc.model_dump(mode="json"))
    assert (s2.required_users, s2.max_response_ms, s2.max_error_rate) == (5, 150, 0.05)


def test_answers_that_saw_the_load_change_belong_to_no_point():
    from edgeshot.control._capacity import steady_samples
    timeline = [[0.0, 0], [1.0, 1], [3.0, 2]]
    raw = [[2.0, 1, 500.0, 1],   # 1.5 -> 2.0 at one user: steady
           [3.2, 2, 500.0, 1],   # left at 2.7 (one user), came back at 3.2 (two)
           [4.0, 2, 500.0, 0]]   # 3.5 -> 4.0 at two users: steady (a failure)
    s = steady_samples(raw, timeline)
    assert [x.steady for x in s] == [True, False, True]
    pts = curve(s, 95)
    assert [(p.users, p.n) for p in pts] == [(1, 1), (2, 1)]
    assert pts[1].error_rate == 1.0
    assert all(x.steady for x in steady_samples(raw, []))  # no timeline: all count
