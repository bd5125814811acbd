"""edgeshot.control.canary: canary analysis (pure, one step per interval).

    verdict = analyse(state, canary_figures, primary_figures, policy)
    verdict.action  # wait | hold | advance | promote | rollback
"""

from __future__ import annotations

from ._canary import Action, CanaryPolicy, CanaryState, Figures, Phase, Verdict, analyse

__all__ = ["Action", "CanaryPolicy", "CanaryState", "Figures", "Phase", "Verdict", "analyse"]
