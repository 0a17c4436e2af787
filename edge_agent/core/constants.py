"""Control-chart constants for subgroup sizes 2-10 (DOMAIN.md §5), as arrays indexed by n."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

#: Largest subgroup size the X̄-R and X̄-S charts support.
MAX_SUBGROUP = 10

# d2 and d3 are integrals of the normal range distribution: tabulated, not derived here
# (ASTM E2587 / Montgomery, Introduction to SQC, Appendix VI).
_D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970, 10: 3.078}
_D3 = {2: 0.853, 3: 0.888, 4: 0.880, 5: 0.864, 6: 0.848, 7: 0.833, 8: 0.820, 9: 0.808, 10: 0.797}


def c4_exact(n: int) -> float:
    """c4(n) = sqrt(2/(n-1))·Γ(n/2)/Γ((n-1)/2): the bias of the sample standard deviation."""
    if n < 2:
        raise ValueError(f"c4 needs a subgroup size of at least 2, got {n}")
    return math.sqrt(2.0 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


def _table() -> dict[str, NDArray[np.float64]]:
    size = MAX_SUBGROUP + 1
    out = {k: np.full(size, np.nan) for k in ("d2", "d3", "c4", "A2", "D3", "D4", "A3", "B3", "B4")}
    for n in range(2, size):
        d2, d3, c4 = _D2[n], _D3[n], c4_exact(n)
        out["d2"][n], out["d3"][n], out["c4"][n] = d2, d3, c4
        out["A2"][n] = 3.0 / (d2 * math.sqrt(n))
        out["D3"][n] = max(0.0, 1.0 - 3.0 * d3 / d2)
        out["D4"][n] = 1.0 + 3.0 * d3 / d2
        out["A3"][n] = 3.0 / (c4 * math.sqrt(n))
        out["B3"][n] = max(0.0, 1.0 - 3.0 * math.sqrt(1.0 - c4 * c4) / c4)
        out["B4"][n] = 1.0 + 3.0 * math.sqrt(1.0 - c4 * c4) / c4
    return out


_T = _table()
D2: NDArray[np.float64] = _T["d2"]
D3_SD: NDArray[np.float64] = _T["d3"]
C4: NDArray[np.float64] = _T["c4"]
A2: NDArray[np.float64] = _T["A2"]
D3: NDArray[np.float64] = _T["D3"]
D4: NDArray[np.float64] = _T["D4"]
A3: NDArray[np.float64] = _T["A3"]
B3: NDArray[np.float64] = _T["B3"]
B4: NDArray[np.float64] = _T["B4"]

#: d2 for moving ranges of two consecutive individuals (I-MR chart).
D2_MR = _D2[2]
#: MR chart upper limit factor D4(2).
D4_MR = 1.0 + 3.0 * _D3[2] / _D2[2]

#: Water: P[kW] = WATER_KW_PER_LPM_K · flow[L/min] · ΔT[K] (ρ·c_p/60000, DOMAIN.md §3).
WATER_KW_PER_LPM_K = 0.0697

#: AMS2750F furnace class -> uniformity tolerance in °C (DOMAIN.md §4).
AMS2750_TOLERANCE_C = {1: 3.0, 2: 6.0, 3: 8.0, 4: 10.0, 5: 14.0, 6: 28.0}
