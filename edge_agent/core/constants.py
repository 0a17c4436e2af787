"""Control-chart constants for subgroup sizes 2-25 as published (DOMAIN.md §5), as arrays indexed by n."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

#: Largest subgroup size the X̄-R and X̄-S charts support (the published table ends at 25).
MAX_SUBGROUP = 25

# Every factor is the value printed in ASTM E2587 / Montgomery, Introduction to Statistical Quality
# Control, Appendix VI, for n = 2..25, not re-derived: a quality engineer checks a limit against
# that table. Derived from 3-decimal d2/d3, D4(2) would be 3.2686 instead of 3.267 and A2(2) 1.8806
# instead of 1.880. Where the printed value is not the rounded exact one (D4(3) 2.574, D4(18)
# 1.608, D4(19) 1.597: the table derives D3/D4 from rounded d2/d3), the printed one is kept.
_N = range(2, MAX_SUBGROUP + 1)
# fmt: off
_PUBLISHED: dict[str, tuple[float, ...]] = {
    "d2": (1.128, 1.693, 2.059, 2.326, 2.534, 2.704, 2.847, 2.970, 3.078, 3.173, 3.258, 3.336,
           3.407, 3.472, 3.532, 3.588, 3.640, 3.689, 3.735, 3.778, 3.819, 3.858, 3.895, 3.931),
    "d3": (0.853, 0.888, 0.880, 0.864, 0.848, 0.833, 0.820, 0.808, 0.797, 0.787, 0.778, 0.770,
           0.763, 0.756, 0.750, 0.744, 0.739, 0.734, 0.729, 0.724, 0.720, 0.716, 0.712, 0.708),
    "A2": (1.880, 1.023, 0.729, 0.577, 0.483, 0.419, 0.373, 0.337, 0.308, 0.285, 0.266, 0.249,
           0.235, 0.223, 0.212, 0.203, 0.194, 0.187, 0.180, 0.173, 0.167, 0.162, 0.157, 0.153),
    "D3": (0.0, 0.0, 0.0, 0.0, 0.0, 0.076, 0.136, 0.184, 0.223, 0.256, 0.283, 0.307,
           0.328, 0.347, 0.363, 0.378, 0.391, 0.403, 0.415, 0.425, 0.434, 0.443, 0.451, 0.459),
    "D4": (3.267, 2.574, 2.282, 2.114, 2.004, 1.924, 1.864, 1.816, 1.777, 1.744, 1.717, 1.693,
           1.672, 1.653, 1.637, 1.622, 1.608, 1.597, 1.585, 1.575, 1.566, 1.557, 1.548, 1.541),
    "A3": (2.659, 1.954, 1.628, 1.427, 1.287, 1.182, 1.099, 1.032, 0.975, 0.927, 0.886, 0.850,
           0.817, 0.789, 0.763, 0.739, 0.718, 0.698, 0.680, 0.663, 0.647, 0.633, 0.619, 0.606),
    "B3": (0.0, 0.0, 0.0, 0.0, 0.030, 0.118, 0.185, 0.239, 0.284, 0.321, 0.354, 0.382,
           0.406, 0.428, 0.448, 0.466, 0.482, 0.497, 0.510, 0.523, 0.534, 0.545, 0.555, 0.565),
    "B4": (3.267, 2.568, 2.266, 2.089, 1.970, 1.882, 1.815, 1.761, 1.716, 1.679, 1.646, 1.618,
           1.594, 1.572, 1.552, 1.534, 1.518, 1.503, 1.490, 1.477, 1.466, 1.455, 1.445, 1.435),
}
# fmt: on


def c4_exact(n: int) -> float:
    """c4(n) = sqrt(2/(n-1))·Γ(n/2)/Γ((n-1)/2): the bias of the sample standard deviation."""
    if n < 2:
        raise ValueError(f"c4 needs a subgroup size of at least 2, got {n}")
    return math.sqrt(2.0 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


def _column(name: str) -> NDArray[np.float64]:
    """One published column as an array indexed by n (NaN for n < 2)."""
    out = np.full(MAX_SUBGROUP + 1, np.nan)
    out[2:] = _PUBLISHED[name]
    return out


D2: NDArray[np.float64] = _column("d2")
D3_SD: NDArray[np.float64] = _column("d3")
#: c4 exact (it rounds to the published 4 decimals); it only turns a given σ into s̄ = c4·σ.
C4: NDArray[np.float64] = np.array([np.nan, np.nan, *(c4_exact(n) for n in _N)])
A2: NDArray[np.float64] = _column("A2")
D3: NDArray[np.float64] = _column("D3")
D4: NDArray[np.float64] = _column("D4")
A3: NDArray[np.float64] = _column("A3")
B3: NDArray[np.float64] = _column("B3")
B4: NDArray[np.float64] = _column("B4")

#: d2 for moving ranges of two consecutive individuals (I-MR chart).
D2_MR = float(D2[2])
#: MR chart upper limit factor: D4(2) as published (3.267).
D4_MR = float(D4[2])

#: Water: P[kW] = WATER_KW_PER_LPM_K · flow[L/min] · ΔT[K] (ρ·c_p/60000, DOMAIN.md §3).
WATER_KW_PER_LPM_K = 0.0697

#: AMS2750F furnace class -> uniformity tolerance in °C (DOMAIN.md §4).
AMS2750_TOLERANCE_C = {1: 3.0, 2: 6.0, 3: 8.0, 4: 10.0, 5: 14.0, 6: 28.0}
