"""In-control false-alarm behaviour of EWMA and CUSUM against the tabulated ARL0 values (DOMAIN.md §5).

Seeded simulation: S independent in-control N(0, 1) signals with given centre and sigma,
run for T ticks; the run length is the first tick a signal alarms. The ARL estimate
treats the run length as geometric with censoring at T (sum of observed run lengths
plus T per censored signal, over the number of alarms). With S = 2000 the estimate's
standard error is about ARL/sqrt(2000) = 2.2 %; the stated tolerance is 10 % for
CUSUM and 12 % for EWMA, whose tabulated values assume the asymptotic limits while
the engine uses the exact time-varying ones (slightly more early alarms).
"""

from __future__ import annotations

import numpy as np

from edge_agent.core.spc import Rule, SpcEngine, SpcParams
from edge_agent.types import Readings


def run_lengths(params: SpcParams, bits: int, S: int, T: int, seed: int) -> tuple[float, float]:
    """(censored ARL estimate, fraction that alarmed) for the given rule bits."""
    eng = SpcEngine(S, params, max_window=8)
    rng = np.random.default_rng(seed)
    first = np.full(S, -1)
    sig = np.arange(S, dtype=np.int32)
    q = np.zeros(S, np.uint8)
    for i in range(1, T + 1):
        upd = eng.update(Readings(sig, np.full(S, i, np.int64), rng.standard_normal(S), q))
        h = upd.hits
        fired = h.row[((h.mask & np.uint32(bits)) != 0)]
        new = fired[first[fired] < 0]
        first[new] = i
    hit = first > 0
    arl = (first[hit].sum() + T * (~hit).sum()) / hit.sum()
    return float(arl), float(hit.mean())


def test_cusum_in_control_arl_k05_h4_is_168() -> None:
    """Tabular CUSUM k = 0.5, h = 4: tabulated two-sided ARL0 = 168."""
    p = SpcParams(window=2, centre=0.0, sigma=1.0, cusum_k=0.5, cusum_h=4.0)
    arl, frac = run_lengths(p, int(Rule.CUSUM_POS | Rule.CUSUM_NEG), S=2000, T=1200, seed=1)
    assert frac > 0.99
    assert abs(arl - 168) / 168 < 0.10, arl


def test_ewma_in_control_arl_lambda02_L286_is_370() -> None:
    """EWMA λ = 0.2, L = 2.86: tabulated ARL0 = 370."""
    p = SpcParams(window=2, centre=0.0, sigma=1.0, ewma_lambda=0.2, ewma_L=2.86)
    arl, frac = run_lengths(p, int(Rule.EWMA_HIGH | Rule.EWMA_LOW), S=2000, T=1500, seed=2)
    assert frac > 0.9
    assert abs(arl - 370) / 370 < 0.12, arl
