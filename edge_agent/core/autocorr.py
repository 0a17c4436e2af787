"""Pre-whitening of autocorrelated per-cycle signals, so SPC rules keep their false-alarm rates.

Real per-cycle process data are AR(1)-like (phi 0.3-0.7, DOMAIN.md §7). Moving ranges then
underestimate sigma and run rules fire far more often than their tables say (Montgomery,
Introduction to SQC, "SPC with autocorrelated process data"). For each row this estimates phi
from its first `n_estimate` good samples and from then on replaces x_k by

    z_k = mu + ((x_k - mu) - phi * (x_(k-1) - mu)) / sqrt(1 - phi^2)

which is independent in control, has the same mean and the same marginal standard deviation as x,
and is in the signal's own unit, so the charts, limits and capability read as usual. A step shift
d in x shows in z as d * sqrt((1 - phi) / (1 + phi)). Only positive autocorrelation is removed:
alternation (negative phi) is what Nelson rule 4 is for. A phi below the 2/sqrt(n) noise level
counts as 0, and the row passes through unchanged.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core._batch import check_rows, occurrence_rounds
from edge_agent.types import Readings

#: Largest phi removed; beyond it the residual carries too little of a shift to be worth charting.
MAX_PHI = 0.9


class Prewhitener:
    """Per-row AR(1) estimation over the first samples, then the whitening transform; vectorized over rows.

    Rows not in `rows` pass through untouched. While a row is estimating, its good samples are
    held back (buffered); the batch that completes the estimate releases them, transformed, so
    the SPC engine's phase I sees the whitened series from the first sample on.
    """

    def __init__(self, capacity: int, rows: ArrayLike, n_estimate: ArrayLike = 50) -> None:
        r = np.asarray(rows, np.int64).reshape(-1)
        check_rows("Prewhitener rows", r, capacity)
        need = np.broadcast_to(np.asarray(n_estimate, np.int64), r.shape)
        if need.size and need.min() < 8:
            raise ValueError(f"Prewhitener: n_estimate must be >= 8 to estimate phi, got {need.min()}")
        self.capacity = capacity
        self.active = np.zeros(capacity, bool)
        self.active[r] = True
        self.n_estimate = np.zeros(capacity, np.int64)
        self.n_estimate[r] = need
        width = int(need.max()) if need.size else 1
        self.n = np.zeros(capacity, np.int64)
        self.buf_x = np.zeros((capacity, width))
        self.buf_t = np.zeros((capacity, width), np.int64)
        self.phi = np.full(capacity, np.nan)  # NaN while estimating
        self.mu = np.full(capacity, np.nan)
        self.prev = np.full(capacity, np.nan)

    def reset(self, rows: ArrayLike) -> None:
        """Estimate phi again from the next samples of `rows` (after a re-baseline)."""
        r = np.asarray(rows, np.int64).reshape(-1)
        self.n[r] = 0
        self.phi[r] = np.nan
        self.mu[r] = np.nan
        self.prev[r] = np.nan

    def transform(self, readings: Readings) -> Readings:
        """Whiten the batch: pass-through rows as they are, estimating rows held back, estimated rows transformed."""
        sig = readings.signal.astype(np.int64)
        mine = self.active[sig]
        if not mine.any():
            return readings
        good = mine & readings.good
        keep_as_is = ~good  # other rows and bad samples (the engine counts those as missing)
        parts = [readings.take(keep_as_is)]
        idx = np.flatnonzero(good)
        for rnd in occurrence_rounds(sig[idx]):
            parts.append(self._round(readings.take(idx[rnd])))
        return Readings.concat([p for p in parts if len(p)])

    def _round(self, r: Readings) -> Readings:
        rows = r.signal.astype(np.int64)
        x = r.value
        estimating = np.isnan(self.phi[rows])
        out: list[Readings] = []
        if estimating.any():
            er, ex, et = rows[estimating], x[estimating], r.t_ns[estimating]
            slot = self.n[er]
            self.buf_x[er, slot] = ex
            self.buf_t[er, slot] = et
            self.n[er] += 1
            done = er[self.n[er] >= self.n_estimate[er]]
            # rows of one estimate length are released together (profiles set a handful of lengths)
            for n in np.unique(self.n_estimate[done]).tolist():
                out.append(self._release(done[self.n_estimate[done] == n], int(n)))
        live = ~estimating
        if live.any():
            lr, lx = rows[live], x[live]
            z = self._whiten(lr, lx, self.prev[lr])
            self.prev[lr] = lx
            out.append(Readings(r.signal[live], r.t_ns[live], z, r.quality[live]))
        return Readings.concat(out)

    def _release(self, rows: NDArray[np.int64], n: int) -> Readings:
        """Estimate phi and mu from the `n` buffered samples of `rows` and return them whitened, oldest first."""
        xb = self.buf_x[rows, :n]
        mu = xb.mean(axis=1)
        d = xb - mu[:, None]
        var = (d * d).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r1 = (d[:, 1:] * d[:, :-1]).sum(axis=1) / var
        r1 = np.where(np.isfinite(r1), r1, 0.0)
        significant = r1 > 2.0 / np.sqrt(n)
        phi = np.where(significant, np.minimum(r1, MAX_PHI), 0.0)
        self.phi[rows] = phi
        self.mu[rows] = mu
        prev = np.concatenate([np.full((rows.size, 1), np.nan), xb[:, :-1]], axis=1)
        z = self._whiten(
            np.repeat(rows, n), xb.reshape(-1), prev.reshape(-1)
        )  # row-major: each row's samples in time order
        self.prev[rows] = xb[:, -1]
        return Readings.of(np.repeat(rows, n).astype(np.int32), self.buf_t[rows, :n].reshape(-1), z)

    def _whiten(
        self, rows: NDArray[np.int64], x: NDArray[np.float64], prev: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        phi, mu = self.phi[rows], self.mu[rows]
        z = mu + ((x - mu) - phi * (prev - mu)) / np.sqrt(1.0 - phi * phi)
        # no previous sample (the first one, or after a gap): x - mu already has the marginal variance
        # that z is scaled to, so z = x (Prais-Winsten); whitening it against mu would inflate it by
        # 1/sqrt(1 - phi²)
        return np.where(np.isfinite(prev), z, x)

    def estimates(self, rows: ArrayLike) -> dict[str, NDArray[np.float64]]:
        """phi and mu of `rows` (NaN while estimating)."""
        r = np.asarray(rows, np.int64).reshape(-1)
        return {"phi": self.phi[r].copy(), "mu": self.mu[r].copy()}
