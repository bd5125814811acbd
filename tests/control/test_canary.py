"""Canary analysis, table-driven: every rule of one interval's step, then whole runs."""

from __future__ import annotations

import pytest

from edgeshot.control.canary import Action, CanaryPolicy, CanaryState, Figures, Phase, analyse

POL = CanaryPolicy(max_error_rate=0.01, max_response_ms=150, threshold=2, iterations=3,
                   min_requests=20)
OK = Figures(requests=100, errors=0, latency_ms=40)
PRIMARY = Figures(requests=900, errors=0, latency_ms=40)


@pytest.mark.parametrize(
    ("state", "canary", "primary", "action", "after", "why"),
    [
        (CanaryState(10), Figures(5, 5, 900), PRIMARY, Action.wait, CanaryState(10),
         "too few requests: no verdict, nothing counted"),
        (CanaryState(10), OK, PRIMARY, Action.hold, CanaryState(10, good=1, checks=1),
         "first good check"),
        (CanaryState(10, good=2, checks=2), OK, PRIMARY, Action.promote,
         CanaryState(100, Phase.promoted, good=3, checks=3), "third good check promotes"),
        (CanaryState(10), Figures(100, 30, 40), PRIMARY, Action.hold,
         CanaryState(10, failed=1, checks=1), "errors: first failed check"),
        (CanaryState(10, failed=1, checks=1), Figures(100, 30, 40), PRIMARY, Action.rollback,
         CanaryState(0, Phase.rolled_back, failed=2, checks=2), "second failed check"),
        (CanaryState(10, good=2, checks=2), Figures(100, 0, 400), PRIMARY, Action.hold,
         CanaryState(10, failed=1, good=0, checks=3), "slow: a failed check resets good"),
        (CanaryState(10), Figures(100, 1, 40), PRIMARY, Action.hold,
         CanaryState(10, good=1, checks=1), "1% errors is within the SLA"),
        (CanaryState(10), Figures(100, 2, 40), PRIMARY, Action.hold,
         CanaryState(10, failed=1, checks=1), "2% errors is not"),
        (CanaryState(10), Figures(100, 0, None), PRIMARY, Action.hold,
         CanaryState(10, good=1, checks=1), "no latency samples: judged on errors"),
        (CanaryState(10), Figures(100, 0, 300), Figures(900, 0, 290), Action.hold,
         CanaryState(10, good=1, checks=1), "slow, but the primary is as slow: not its fault"),
        (CanaryState(10), Figures(100, 10, 40), Figures(900, 90, 40), Action.hold,
         CanaryState(10, good=1, checks=1), "errors like the primary's: not its fault"),
        (CanaryState(10), Figures(100, 0, 300), Figures(5, 0, 290), Action.hold,
         CanaryState(10, failed=1, checks=1), "primary with too few requests: no baseline"),
        (CanaryState(10), Figures(100, 50, 40), None, Action.hold,
         CanaryState(10, failed=1, checks=1), "no primary figures at all"),
        (CanaryState(100, Phase.promoted), Figures(100, 90, 40), PRIMARY, Action.hold,
         CanaryState(100, Phase.promoted), "finished canaries do not move"),
        (CanaryState(0, Phase.rolled_back), OK, PRIMARY, Action.hold,
         CanaryState(0, Phase.rolled_back), "rolled back stays rolled back"),
    ],
)
def test_one_step(state, canary, primary, action, after, why):
    v = analyse(state, canary, primary, POL)
    assert (v.action, v.state) == (action, after), why
    assert v.reasons


def test_stepped_weights_then_promotion():
    pol = CanaryPolicy(threshold=2, iterations=1, step_weight=20, max_weight=50, min_requests=1)
    s, seen = CanaryState(10), []
    while s.phase is Phase.progressing:
        v = analyse(s, OK, PRIMARY, pol)
        seen.append((v.action, v.state.weight))
        s = v.state
    assert seen == [(Action.advance, 30), (Action.advance, 50), (Action.promote, 100)]


def test_failed_checks_are_counted_in_total_like_flagger():
    s = CanaryState(10)
    bad, seq = Figures(100, 50, 40), []
    for fig in (bad, OK, OK, bad):
        v = analyse(s, fig, PRIMARY, POL)
        seq.append(v.action)
        s = v.state
    assert seq == [Action.hold, Action.hold, Action.hold, Action.rollback]
    assert s.phase is Phase.rolled_back and s.weight == 0


def test_reasons_name_the_breach():
    v = analyse(CanaryState(10), Figures(100, 40, 400), PRIMARY, POL)
    text = " ".join(v.reasons)
    assert "error rate 40.0% > 1.0%" in text and "latency 400 ms > 150 ms" in text
