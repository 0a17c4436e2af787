"""Mould and temperature-control-unit indicators: heat removed, supply-return ΔT, tolerance, maintenance counters."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core import constants as C
from edge_agent.core._batch import check_rows, last_occurrences


def heat_removed_kw(
    flow_l_min: ArrayLike,
    t_supply_c: ArrayLike,
    t_return_c: ArrayLike,
    kw_per_lpm_k: ArrayLike = C.WATER_KW_PER_LPM_K,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(heat removed in kW, supply-return ΔT in K): P = ρ·c_p·V̇·(T_return - T_supply); water by default."""
    dt = np.asarray(t_return_c, np.float64) - np.asarray(t_supply_c, np.float64)
    return np.asarray(kw_per_lpm_k, np.float64) * np.asarray(flow_l_min, np.float64) * dt, dt


def outside_tolerance(actual: ArrayLike, set_value: ArrayLike, rel_tolerance: ArrayLike) -> NDArray[np.bool_]:
    """True where |actual - set| > rel_tolerance·|set| (OPC 40082-1 relative tolerances); NaN actual is not judged."""
    a = np.asarray(actual, np.float64)
    s = np.asarray(set_value, np.float64)
    with np.errstate(invalid="ignore"):
        return np.abs(a - s) > np.asarray(rel_tolerance, np.float64) * np.abs(s)


class MoldMaintenance:
    """Shots to the next preventive maintenance and percentage used, per mould (OPC 40082-5 counters).

    Status follows OPC 40082-1 MaintenanceInformation: NOT_DUE 0, WARNING 1 (>= warn_pct used), DUE 2.
    """

    NOT_DUE, WARNING, DUE = 0, 1, 2

    def __init__(self, n_molds: int, interval_cycles: ArrayLike, warn_pct: ArrayLike = 90.0) -> None:
        self.n = n_molds
        self.interval = np.broadcast_to(np.asarray(interval_cycles, np.float64), (n_molds,)).copy()
        if not (self.interval > 0).all():
            raise ValueError("MoldMaintenance: interval_cycles must be > 0 for every mould")
        self.warn_pct = np.broadcast_to(np.asarray(warn_pct, np.float64), (n_molds,)).copy()
        self.at_last_pm = np.zeros(n_molds)
        self.counter = np.full(n_molds, np.nan)

    def record_pm(self, molds: ArrayLike, counter_at_pm: ArrayLike) -> None:
        """Record a preventive maintenance at the given lifetime counter values."""
        m = np.asarray(molds, np.int64).reshape(-1)
        check_rows("MoldMaintenance.record_pm molds", m, self.n)
        self.at_last_pm[m] = counter_at_pm

    def update(self, molds: ArrayLike, lifetime_counter: ArrayLike) -> dict[str, NDArray[Any]]:
        """Take lifetime counter readings (NaN = bad, keeps the last good one); return the maintenance status."""
        m = np.asarray(molds, np.int64).reshape(-1)
        check_rows("MoldMaintenance.update molds", m, self.n)
        c = np.broadcast_to(np.asarray(lifetime_counter, np.float64), m.shape)
        # bad readings are dropped before assigning: a mould repeated in the batch keeps its last good
        # reading (the last occurrence wins), not the counter from before the batch
        good = np.flatnonzero(~np.isnan(c))
        last = good[last_occurrences(m[good])]
        self.counter[m[last]] = c[last]
        return self.status(m)

    def status(self, molds: ArrayLike | None = None) -> dict[str, NDArray[Any]]:
        """Shots used since the last PM, shots to go, percent used and status (NaN where no counter was read)."""
        m = np.arange(self.n) if molds is None else np.asarray(molds, np.int64).reshape(-1)
        used = self.counter[m] - self.at_last_pm[m]
        pct = 100.0 * used / self.interval[m]
        with np.errstate(invalid="ignore"):
            status = np.where(
                pct >= 100.0, self.DUE, np.where(pct >= self.warn_pct[m], self.WARNING, self.NOT_DUE)
            )
        return {
            "mold": m,
            "shots_used": used,
            "shots_to_next": self.interval[m] - used,
            "pct_used": pct,
            "status": np.where(np.isnan(pct), -1, status).astype(np.int8),
        }
