"""Canary analysis: one pure step per interval, as Flagger does it.

Every interval the deployment center reads the canary version's figures (and the
primary's, as a baseline) from the edge processes and calls `analyse`. A check
*fails* when the canary breaks the SLA (error rate above `max_error_rate`, or
latency at the SLA percentile above `max_response_ms`) *and* is worse than the
primary by a margin: a network-wide slowdown is not the canary's fault. With
too few requests in the interval there is no verdict (neither good nor failed).

After `threshold` failed checks (consecutive or not, as Flagger counts them)
the canary is rolled back. After `iterations` good checks at the current
weight it advances: by `step_weight` up to `max_weight`, then promotion (with
`step_weight = 0` the weight stays where the deploy put it, e.g. 10%, until
promotion).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


class Phase(StrEnum):
    progressing = "progressing"
    promoted = "promoted"
    rolled_back = "rolled_back"


class Action(StrEnum):
    wait = "wait"  # too little traffic to judge this interval
    hold = "hold"  # a good (or failed, below the threshold) check: keep the weight
    advance = "advance"  # more weight to the canary
    promote = "promote"  # all traffic to the canary: it becomes the primary
    rollback = "rollback"  # all traffic back to the primary


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    max_error_rate: float = 0.01
    max_response_ms: float = 150.0  # at the SLA percentile
    threshold: int = 2  # failed checks before rollback
    iterations: int = 3  # good checks at one weight before advancing/promoting
    step_weight: int = 0  # 0: hold the initial weight until promotion
    max_weight: int = 50
    min_requests: int = 20  # per interval, for a verdict
    baseline_margin: float = 0.2  # a breach counts only if worse than the primary by this much


@dataclass(frozen=True, slots=True)
class Figures:
    """One version's figures over one interval (from the edge processes)."""

    requests: int
    errors: int  # 5xx answers
    latency_ms: float | None  # at the SLA percentile; None without samples

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class CanaryState:
    weight: int  # percent of the app's traffic on the canary version
    phase: Phase = Phase.progressing
    good: int = 0  # good checks at the current weight
    failed: int = 0  # failed checks in total
    checks: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    state: CanaryState
    reasons: tuple[str, ...] = field(default=())


def _breaches(canary: Figures, primary: Figures | None, policy: CanaryPolicy) -> list[str]:
    found = []
    worse = 1.0 + policy.baseline_margin
    rate = canary.error_rate
    if rate > policy.max_error_rate:
        base = primary.error_rate if primary and primary.requests >= policy.min_requests else None
        if base is None or rate > max(base * worse, base + policy.max_error_rate / 2):
            found.append(f"error rate {rate:.1%} > {policy.max_error_rate:.1%}"
                         + (f" (primary {base:.1%})" if base is not None else ""))
    lat = canary.latency_ms
    if lat is not None and lat > policy.max_response_ms:
        base_lat = primary.latency_ms if primary and primary.requests >= policy.min_requests else None
        if base_lat is None or lat > base_lat * worse:
            found.append(f"latency {lat:.0f} ms > {policy.max_response_ms:.0f} ms"
                         + (f" (primary {base_lat:.0f} ms)" if base_lat is not None else ""))
    return found


def analyse(
    state: CanaryState, canary: Figures, primary: Figures | None, policy: CanaryPolicy
) -> Verdict:
    """The next step of a canary given one interval's figures."""
    if state.phase is not Phase.progressing:
        return Verdict(Action.hold, state, (f"already {state.phase}",))
    if canary.requests < policy.min_requests:
        return Verdict(Action.wait, state,
                       (f"{canary.requests} requests < {policy.min_requests}: no verdict",))
    breaches = _breaches(canary, primary, policy)
    checks = state.checks + 1
    if breaches:
        failed = state.failed + 1
        if failed >= policy.threshold:
            return Verdict(Action.rollback, replace(state, phase=Phase.rolled_back, weight=0,
                                                    failed=failed, good=0, checks=checks),
                           (*breaches, f"{failed} failed checks: rolled back"))
        return Verdict(Action.hold, replace(state, failed=failed, good=0, checks=checks),
                       (*breaches, f"{failed}/{policy.threshold} failed checks"))
    good = state.good + 1
    if good < policy.iterations:
        return Verdict(Action.hold, replace(state, good=good, checks=checks),
                       (f"good check {good}/{policy.iterations} at {state.weight}%",))
    if policy.step_weight > 0 and state.weight < policy.max_weight:
        weight = min(policy.max_weight, state.weight + policy.step_weight)
        return Verdict(Action.advance, replace(state, weight=weight, good=0, checks=checks),
                       (f"{good} good checks: weight {state.weight}% -> {weight}%",))
    return Verdict(Action.promote, replace(state, phase=Phase.promoted, weight=100, good=good,
                                           checks=checks),
                   (f"{good} good checks at {state.weight}%: promoted",))
