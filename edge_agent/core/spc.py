"""Vectorized SPC engine: rolling statistics, control charts, run rules, EWMA, CUSUM and capability for S signals.

State lives in arrays shaped [S] or [S, max_window]. An update takes a Readings
batch touching any subset of rows in any order (rows may repeat: each row's
values are applied in batch order, one vectorized round per repeat). Bad or NaN
values never enter a statistic; they are counted in `missing`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_agent.core import constants as C
from edge_agent.core._batch import check_rows, is_full_range, occurrence_rounds
from edge_agent.core.alarms import AlarmEvents, AlarmTracker
from edge_agent.types import Readings

F64 = np.float64
U64 = np.uint64


class Rule(IntFlag):
    """Bits of the per-sample rule mask (Western Electric, Nelson, chart limits, EWMA, CUSUM, spec)."""

    WE1 = 1 << 0  # 1 point beyond 3σ
    WE2 = 1 << 1  # 2 of 3 beyond 2σ, same side
    WE3 = 1 << 2  # 4 of 5 beyond 1σ, same side
    WE4 = 1 << 3  # 8 in a row on one side
    N1 = 1 << 4  # 1 beyond 3σ
    N2 = 1 << 5  # 9 in a row on one side
    N3 = 1 << 6  # 6 in a row steadily increasing or decreasing
    N4 = 1 << 7  # 14 in a row alternating up and down
    N5 = 1 << 8  # 2 of 3 beyond 2σ, same side
    N6 = 1 << 9  # 4 of 5 beyond 1σ, same side
    N7 = 1 << 10  # 15 in a row within ±1σ
    N8 = 1 << 11  # 8 in a row outside ±1σ, both sides
    MR_HIGH = 1 << 12  # moving range above the MR chart UCL
    XBAR_R = 1 << 13  # subgroup mean outside X̄ ± A2·R̄
    R_OUT = 1 << 14  # subgroup range outside D3·R̄..D4·R̄
    XBAR_S = 1 << 15  # subgroup mean outside X̄ ± A3·s̄
    S_OUT = 1 << 16  # subgroup sd outside B3·s̄..B4·s̄
    EWMA_HIGH = 1 << 17
    EWMA_LOW = 1 << 18
    CUSUM_POS = 1 << 19
    CUSUM_NEG = 1 << 20
    ABOVE_USL = 1 << 21
    BELOW_LSL = 1 << 22


#: Alarm kinds the engine tracks per row (AlarmEvents.kind) and the rule bits each covers.
ALARM_KINDS: dict[int, tuple[str, int]] = {
    0: ("rules", int(Rule.WE1 | Rule.WE2 | Rule.WE3 | Rule.WE4) | int(sum(1 << b for b in range(4, 12)))),
    1: ("chart", int(Rule.MR_HIGH | Rule.XBAR_R | Rule.R_OUT | Rule.XBAR_S | Rule.S_OUT)),
    2: ("ewma", int(Rule.EWMA_HIGH | Rule.EWMA_LOW)),
    3: ("cusum", int(Rule.CUSUM_POS | Rule.CUSUM_NEG)),
    4: ("spec", int(Rule.ABOVE_USL | Rule.BELOW_LSL)),
}
ALARM_KIND_NAMES: dict[int, str] = {k: v[0] for k, v in ALARM_KINDS.items()}
_N_KINDS = len(ALARM_KINDS)
_KIND_BITS = np.array([ALARM_KINDS[k][1] for k in range(_N_KINDS)], np.uint32)


class NoData(IntEnum):
    """Why an indicator is NaN ("no data"); OK when it has a value."""

    OK = 0
    NO_SAMPLES = 1  # no good sample yet
    TOO_FEW = 2  # fewer good samples than the indicator needs
    BASELINE = 3  # phase I: limits are still being estimated
    NO_SPEC = 4  # no LSL/USL configured
    ZERO_SIGMA = 5  # the estimated sigma is 0 or undefined


@dataclass
class SpcParams:
    """Per-signal configuration; every field is a scalar (broadcast) or an array with one entry per row.

    NaN for `lsl`/`usl` means no such limit; NaN for `centre`/`sigma` means estimate
    it from the first `phase1_n` good samples (phase I). `subgroup_n` 1 means
    individuals only; 2-10 also runs the X̄-R and X̄-S charts on consecutive subgroups.
    """

    window: ArrayLike = 50
    phase1_n: ArrayLike = 100
    lsl: ArrayLike = np.nan
    usl: ArrayLike = np.nan
    ewma_lambda: ArrayLike = 0.2
    ewma_L: ArrayLike = 2.962  # ARL0 ~500 for λ = 0.2 (DOMAIN.md §5)
    cusum_k: ArrayLike = 0.5
    cusum_h: ArrayLike = 5.0  # ARL0 ~465 for k = 0.5
    subgroup_n: ArrayLike = 1
    centre: ArrayLike = np.nan
    sigma: ArrayLike = np.nan


@dataclass(frozen=True, slots=True)
class RuleHits:
    """Samples whose rule mask is not zero: row, time, value and the Rule bits that fired."""

    row: NDArray[np.int32]
    t_ns: NDArray[np.int64]
    value: NDArray[np.float64]
    mask: NDArray[np.uint32]

    def __len__(self) -> int:
        return int(self.row.shape[0])


@dataclass(frozen=True, slots=True)
class SpcUpdate:
    """What one update produced: the rule hits per sample and the alarm start/clear events."""

    hits: RuleHits
    events: AlarmEvents


# Packed rule histories: four 16-bit lanes per uint64, newest sample in each lane's bit 0.
_LANE = [U64(0), U64(16), U64(32), U64(48)]
_KEEP = U64(0xFFFE_FFFE_FFFE_FFFE)
_ONE = U64(1)


def _lane(h: NDArray[np.uint64], lane: int, bits: int) -> NDArray[np.uint64]:
    return (h >> _LANE[lane]) & U64((1 << bits) - 1)


def _bits(cond: NDArray[np.bool_], rule: int) -> NDArray[np.uint32]:
    return cond.astype(np.uint32) * np.uint32(rule)


class SpcEngine:
    """SPC state for `capacity` signal rows, updated from Readings batches; see docs/indicators.md."""

    def __init__(
        self,
        capacity: int,
        params: SpcParams | None = None,
        max_window: int = 64,
        alarm_on_delay_ns: ArrayLike = 0,
        alarm_off_delay_ns: ArrayLike = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"SpcEngine: capacity must be >= 1, got {capacity}")
        if max_window < 2:
            raise ValueError(f"SpcEngine: max_window must be >= 2, got {max_window}")
        S, W = capacity, max_window
        self.capacity, self.max_window = S, W
        self._rows = np.arange(S, dtype=np.int64)
        self._col = np.arange(W, dtype=np.int64)
        # configuration
        self.window = np.full(S, W, np.int64)
        self.phase1_n = np.zeros(S, np.int64)
        self.lsl = np.full(S, np.nan)
        self.usl = np.full(S, np.nan)
        self.lam = np.zeros(S)
        self.L = np.zeros(S)
        self.k = np.zeros(S)
        self.h = np.zeros(S)
        self.sub_n = np.ones(S, np.int64)
        self.given_cl = np.full(S, np.nan)
        self.given_sigma = np.full(S, np.nan)
        # counters
        self.n_good = np.zeros(S, np.int64)
        self.n_missing = np.zeros(S, np.int64)
        self.missing_run = np.zeros(S, np.int64)
        self.last_t = np.full(S, -1, np.int64)
        self.prev = np.full(S, np.nan)
        # rolling window: ring buffer + shifted running sums, exact recompute on wrap or eviction of an extreme
        self.buf = np.zeros((S, W))
        self.pos = np.zeros(S, np.int64)
        self.wraps = np.zeros(S, np.int64)
        self.fill = np.zeros(S, np.int64)
        self.shift = np.zeros(S)
        self.s1 = np.zeros(S)
        self.s2 = np.zeros(S)
        self.rmin = np.full(S, np.inf)
        self.rmax = np.full(S, -np.inf)
        # phase I
        self.phase = np.zeros(S, np.int8)
        self.p1_n = np.zeros(S, np.int64)
        self.p1_ref = np.zeros(S)
        self.p1_sum = np.zeros(S)
        self.p1_mr = np.zeros(S)
        self.p1_mrn = np.zeros(S, np.int64)
        self.p1_xbar = np.zeros(S)
        self.p1_r = np.zeros(S)
        self.p1_s = np.zeros(S)
        self.p1_k = np.zeros(S, np.int64)
        # current subgroup
        self.sg_k = np.zeros(S, np.int64)
        self.sg_ref = np.zeros(S)
        self.sg_s1 = np.zeros(S)
        self.sg_s2 = np.zeros(S)
        self.sg_min = np.zeros(S)
        self.sg_max = np.zeros(S)
        self.last_xbar = np.full(S, np.nan)
        self.last_r = np.full(S, np.nan)
        self.last_s = np.full(S, np.nan)
        # limits (phase II)
        self.cl = np.full(S, np.nan)
        self.sigma = np.full(S, np.nan)
        self.xcl = np.full(S, np.nan)
        self.rbar = np.full(S, np.nan)
        self.sbar = np.full(S, np.nan)
        # EWMA, CUSUM, rules
        self.ewma = np.full(S, np.nan)
        self.ewma_decay = np.ones(S)
        self.cpos = np.zeros(S)
        self.cneg = np.zeros(S)
        self.npos = np.zeros(S, np.int64)
        self.nneg = np.zeros(S, np.int64)
        self.h0 = np.zeros(S, U64)  # lanes: above 2σ, below 2σ, above 1σ, below 1σ
        self.h1 = np.zeros(S, U64)  # lanes: above CL, below CL, up, down
        self.n_mon = np.zeros(S, np.int64)
        self.mask = np.zeros(S, np.uint32)
        # capability study accumulators (since the last rebaseline or reset_capability)
        self.cap_n = np.zeros(S, np.int64)
        self.cap_ref = np.zeros(S)
        self.cap_s1 = np.zeros(S)
        self.cap_s2 = np.zeros(S)
        self.cap_mr = np.zeros(S)
        self.cap_mrn = np.zeros(S, np.int64)
        self.cap_r = np.zeros(S)
        self.cap_s = np.zeros(S)
        self.cap_k = np.zeros(S, np.int64)
        # alarms: one channel per (row, kind); `alarm_busy` lets idle rows skip the tracker
        self.alarms = AlarmTracker(
            S * _N_KINDS,
            np.repeat(np.broadcast_to(np.asarray(alarm_on_delay_ns, np.int64), (S,)), _N_KINDS),
            np.repeat(np.broadcast_to(np.asarray(alarm_off_delay_ns, np.int64), (S,)), _N_KINDS),
        )
        self.alarm_busy = np.zeros(S, bool)
        self.configure(self._rows, params or SpcParams())

    # ------------------------------------------------------------------ configuration
    def configure(self, rows: ArrayLike, params: SpcParams) -> None:
        """Set the parameters of `rows` and restart their statistics from scratch (phase I, or phase II when centre and sigma are given)."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        check_rows("SpcEngine.configure rows", r, self.capacity)
        n = r.shape[0]
        v = {
            f.name: np.broadcast_to(np.asarray(getattr(params, f.name), dtype=F64), (n,))
            for f in fields(params)
        }
        where = "SpcEngine.configure"

        def bad(name: str, cond: NDArray[np.bool_], need: str) -> None:
            if cond.any():
                i = int(np.flatnonzero(cond)[0])
                raise ValueError(f"{where}: row {int(r[i])} has {name}={float(v[name][i]):g}; {need}")

        bad(
            "window",
            (v["window"] < 2) | (v["window"] > self.max_window),
            f"use 2..{self.max_window} (max_window)",
        )
        bad(
            "subgroup_n",
            (v["subgroup_n"] < 1) | (v["subgroup_n"] > C.MAX_SUBGROUP),
            "use 1 (individuals) or 2..10",
        )
        bad("ewma_lambda", ~((v["ewma_lambda"] > 0) & (v["ewma_lambda"] <= 1)), "use 0 < lambda <= 1")
        bad("ewma_L", ~(v["ewma_L"] > 0), "use L > 0 (e.g. 2.962 for lambda 0.2)")
        bad("cusum_k", ~(v["cusum_k"] >= 0), "use k >= 0 (0.5 detects a 1σ shift)")
        bad("cusum_h", ~(v["cusum_h"] > 0), "use h > 0 (4 or 5 are usual)")
        bad("sigma", v["sigma"] <= 0, "a given sigma must be > 0, or NaN to estimate it")
        both = np.isfinite(v["centre"]) & np.isfinite(v["sigma"])
        bad(
            "phase1_n",
            ~both & (v["phase1_n"] < 2),
            "phase I needs >= 2 samples unless centre and sigma are given",
        )
        bad(
            "phase1_n",
            ~both & (v["phase1_n"] % v["subgroup_n"] != 0),
            "make phase1_n a multiple of subgroup_n so phase I ends on a subgroup boundary",
        )
        bad("lsl", v["lsl"] >= v["usl"], "LSL must be below USL")
        self.window[r] = v["window"].astype(np.int64)
        self.phase1_n[r] = v["phase1_n"].astype(np.int64)
        self.lsl[r], self.usl[r] = v["lsl"], v["usl"]
        self.lam[r], self.L[r] = v["ewma_lambda"], v["ewma_L"]
        self.k[r], self.h[r] = v["cusum_k"], v["cusum_h"]
        self.sub_n[r] = v["subgroup_n"].astype(np.int64)
        self.given_cl[r], self.given_sigma[r] = v["centre"], v["sigma"]
        for a, val in (
            (self.n_good, 0),
            (self.n_missing, 0),
            (self.missing_run, 0),
            (self.last_t, -1),
            (self.prev, np.nan),
            (self.pos, 0),
            (self.wraps, 0),
            (self.fill, 0),
            (self.shift, 0.0),
            (self.s1, 0.0),
            (self.s2, 0.0),
            (self.rmin, np.inf),
            (self.rmax, -np.inf),
        ):
            a[r] = val
        self.buf[r] = 0.0
        self.rebaseline(r)

    def rebaseline(
        self, rows: ArrayLike, centre: ArrayLike | None = None, sigma: ArrayLike | None = None
    ) -> None:
        """Restart phase I for `rows` (or set new given centre/sigma); resets charts, EWMA, CUSUM, rules, capability and alarms."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        check_rows("SpcEngine.rebaseline rows", r, self.capacity)
        if centre is not None:
            self.given_cl[r] = centre
        if sigma is not None:
            s = np.broadcast_to(np.asarray(sigma, F64), r.shape)
            if (s <= 0).any():
                raise ValueError("SpcEngine.rebaseline: a given sigma must be > 0, or NaN to estimate it")
            self.given_sigma[r] = s
        for a in (
            self.p1_n,
            self.p1_sum,
            self.p1_mr,
            self.p1_mrn,
            self.p1_xbar,
            self.p1_r,
            self.p1_s,
            self.p1_k,
        ):
            a[r] = 0
        for a in (
            self.cl,
            self.sigma,
            self.xcl,
            self.rbar,
            self.sbar,
            self.last_xbar,
            self.last_r,
            self.last_s,
        ):
            a[r] = np.nan
        self.phase[r] = 0
        self.sg_k[r] = 0
        self.mask[r] = 0
        self.reset_capability(r)
        ch = (r[:, None] * _N_KINDS + np.arange(_N_KINDS)).reshape(-1)
        self.alarms.reset(ch)
        self.alarm_busy[r] = False
        given = r[np.isfinite(self.given_cl[r]) & np.isfinite(self.given_sigma[r])]
        if given.size:
            self._finish_phase1(given)

    def reset_capability(self, rows: ArrayLike) -> None:
        """Start a new capability period (e.g. a shift) for `rows`."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        for a in (
            self.cap_n,
            self.cap_s1,
            self.cap_s2,
            self.cap_mr,
            self.cap_mrn,
            self.cap_r,
            self.cap_s,
            self.cap_k,
        ):
            a[r] = 0

    # ------------------------------------------------------------------ update
    def update(self, readings: Readings) -> SpcUpdate:
        """Apply a batch; return the per-sample rule hits and the alarm transitions it caused."""
        sig = readings.signal
        check_rows("SpcEngine.update Readings.signal", sig, self.capacity)
        good = readings.good
        all_good = bool(good.all())
        if not all_good:
            bad_rows = sig[~good]
            np.add.at(self.n_missing, bad_rows, 1)
            np.add.at(self.missing_run, bad_rows, 1)
            sig, t, x = sig[good], readings.t_ns[good], readings.value[good]
        else:
            t, x = readings.t_ns, readings.value
        hits: list[RuleHits] = []
        events: list[AlarmEvents] = []
        if is_full_range(sig, self.capacity):
            self._round(slice(None), self._rows, x, t, hits, events)
        else:
            for idx in occurrence_rounds(sig):
                rr = sig[idx].astype(np.int64)
                self._round(rr, rr, x[idx], t[idx], hits, events)
        if hits:
            rh = RuleHits(
                np.concatenate([h.row for h in hits]),
                np.concatenate([h.t_ns for h in hits]),
                np.concatenate([h.value for h in hits]),
                np.concatenate([h.mask for h in hits]),
            )
        else:
            rh = RuleHits(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint32))
        return SpcUpdate(rh, AlarmEvents.concat(events))

    def _round(
        self,
        r: slice | NDArray[np.int64],
        ra: NDArray[np.int64],
        x: NDArray[np.float64],
        t: NDArray[np.int64],
        hits: list[RuleHits],
        events: list[AlarmEvents],
    ) -> None:
        """One vectorized step: each row in `r` (unique; `ra` the same rows as an array) gets one good value."""
        self.n_good[r] += 1
        self.missing_run[r] = 0
        self.last_t[r] = t
        prev = self.prev[r].copy()
        has_prev = ~np.isnan(prev)
        mr = np.abs(x - prev)  # NaN where there is no previous value
        self.prev[r] = x
        self._window(r, ra, x)
        self._capability(r, x, mr, has_prev)
        phase = self.phase[r].copy()
        in1 = phase == 0
        mask = np.zeros(x.shape[0], np.uint32)
        any1 = bool(in1.any())
        if any1:
            i1 = np.flatnonzero(in1)
            self._phase1(ra[i1], x[i1], mr[i1], has_prev[i1])
        sub = self.sub_n[r] >= 2
        if sub.all():
            mask |= self._subgroup(r, ra, x, in1)
        elif sub.any():
            isub = np.flatnonzero(sub)
            mask[isub] |= self._subgroup(ra[isub], ra[isub], x[isub], in1[isub])
        if not any1:
            mask |= self._monitor(r, x, prev, mr, has_prev)
            r2 = ra
        elif not in1.all():
            i2 = np.flatnonzero(~in1)
            r2 = ra[i2]
            mask[i2] |= self._monitor(r2, x[i2], prev[i2], mr[i2], has_prev[i2])
        else:
            r2 = ra[:0]
        if any1:
            done = ra[in1][self.p1_n[ra[in1]] >= self.phase1_n[ra[in1]]]
            if done.size:
                self._finish_phase1(done)
        self.mask[r] = mask
        nz = np.flatnonzero(mask)
        if nz.size:
            hits.append(RuleHits(ra[nz].astype(np.int32), t[nz], x[nz], mask[nz]))
        if r2.size:
            ev = self._alarm(ra, x, t, mask)
            if len(ev):
                events.append(ev)

    def _window(self, r: slice | NDArray[np.int64], ra: NDArray[np.int64], x: NDArray[np.float64]) -> None:
        w = self.window[r]
        p = self.pos[r].copy()
        fill = self.fill[r].copy()
        old = self.buf[ra, p]
        self.buf[ra, p] = x
        full = fill == w
        sh = self.shift[r]
        d = x - sh
        od = np.where(full, old - sh, 0.0)
        self.s1[r] += d - od
        self.s2[r] += d * d - od * od
        mn = self.rmin[r].copy()
        mx = self.rmax[r].copy()
        # evicting the current min or max invalidates it; those rows (about 2/window of them) get an exact recompute
        dirty = full & ((old <= mn) | (old >= mx))
        np.minimum(mn, x, out=mn)
        np.maximum(mx, x, out=mx)
        self.rmin[r] = mn
        self.rmax[r] = mx
        p += 1
        wrap = p >= w
        p[wrap] = 0
        self.pos[r] = p
        np.minimum(fill + 1, w, out=fill)
        self.fill[r] = fill
        # an exact pass every 8th wrap bounds the rounding drift of the running sums (and re-centres the shift)
        wraps = self.wraps[r] + wrap
        self.wraps[r] = wraps
        redo = dirty | (wrap & (wraps % 8 == 1))
        if redo.any():
            self._recompute_window(ra[redo])

    def _recompute_window(self, rows: NDArray[np.int64]) -> None:
        vals = self.buf[rows]
        f = self.fill[rows]
        valid = self._col[None, :] < f[:, None]
        cnt = np.maximum(f, 1)
        mean = np.where(valid, vals, 0.0).sum(1) / cnt
        dv = np.where(valid, vals - mean[:, None], 0.0)
        self.shift[rows] = mean
        self.s1[rows] = dv.sum(1)
        self.s2[rows] = (dv * dv).sum(1)
        self.rmin[rows] = np.where(valid, vals, np.inf).min(1)
        self.rmax[rows] = np.where(valid, vals, -np.inf).max(1)

    def _capability(
        self,
        r: slice | NDArray[np.int64],
        x: NDArray[np.float64],
        mr: NDArray[np.float64],
        has_prev: NDArray[np.bool_],
    ) -> None:
        cn = self.cap_n[r].copy()
        ref = np.where(cn == 0, x, self.cap_ref[r])
        self.cap_ref[r] = ref
        d = x - ref
        self.cap_s1[r] += d
        self.cap_s2[r] += d * d
        self.cap_n[r] = cn + 1
        pair = has_prev & (cn > 0)  # moving ranges only within the period
        self.cap_mr[r] += np.where(pair, mr, 0.0)
        self.cap_mrn[r] += pair

    def _phase1(
        self,
        r: NDArray[np.int64],
        x: NDArray[np.float64],
        mr: NDArray[np.float64],
        has_prev: NDArray[np.bool_],
    ) -> None:
        n = self.p1_n[r]
        ref = np.where(n == 0, x, self.p1_ref[r])
        self.p1_ref[r] = ref
        self.p1_sum[r] += x - ref
        pair = has_prev & (n > 0)
        self.p1_mr[r] += np.where(pair, mr, 0.0)
        self.p1_mrn[r] += pair
        self.p1_n[r] = n + 1

    def _subgroup(
        self,
        r: slice | NDArray[np.int64],
        ra: NDArray[np.int64],
        x: NDArray[np.float64],
        in1: NDArray[np.bool_],
    ) -> NDArray[np.uint32]:
        k = self.sg_k[r].copy()
        first = k == 0
        ref = np.where(first, x, self.sg_ref[r])
        d = x - ref
        s1 = np.where(first, 0.0, self.sg_s1[r]) + d
        s2 = np.where(first, 0.0, self.sg_s2[r]) + d * d
        mn = np.where(first, x, np.minimum(self.sg_min[r], x))
        mx = np.where(first, x, np.maximum(self.sg_max[r], x))
        k1 = k + 1
        n = self.sub_n[r]
        done = k1 >= n
        self.sg_k[r] = np.where(done, 0, k1)
        self.sg_ref[r], self.sg_s1[r], self.sg_s2[r] = ref, s1, s2
        self.sg_min[r], self.sg_max[r] = mn, mx
        out = np.zeros(x.shape[0], np.uint32)
        if not done.any():
            return out
        i = np.flatnonzero(done)
        rd, nd = ra[i], n[i].astype(F64)
        xbar = ref[i] + s1[i] / nd
        rng = mx[i] - mn[i]
        sd = np.sqrt(np.maximum(0.0, (s2[i] - s1[i] * s1[i] / nd) / (nd - 1)))
        self.last_xbar[rd], self.last_r[rd], self.last_s[rd] = xbar, rng, sd
        self.cap_r[rd] += rng
        self.cap_s[rd] += sd
        self.cap_k[rd] += 1
        p1 = in1[i]
        if p1.any():
            rp = rd[p1]
            self.p1_xbar[rp] += xbar[p1]
            self.p1_r[rp] += rng[p1]
            self.p1_s[rp] += sd[p1]
            self.p1_k[rp] += 1
        m2 = ~p1
        if m2.any():
            rm, ni = rd[m2], n[i][m2]
            xb, rg, s = xbar[m2], rng[m2], sd[m2]
            xcl, rbar, sbar = self.xcl[rm], self.rbar[rm], self.sbar[rm]
            a2 = C.A2[ni] * rbar
            a3 = C.A3[ni] * sbar
            m = _bits((xb > xcl + a2) | (xb < xcl - a2), Rule.XBAR_R)
            m |= _bits((rg > C.D4[ni] * rbar) | (rg < C.D3[ni] * rbar), Rule.R_OUT)
            m |= _bits((xb > xcl + a3) | (xb < xcl - a3), Rule.XBAR_S)
            m |= _bits((s > C.B4[ni] * sbar) | (s < C.B3[ni] * sbar), Rule.S_OUT)
            out[i[m2]] = m
        return out

    def _finish_phase1(self, r: NDArray[np.int64]) -> None:
        n = self.p1_n[r].astype(F64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cl_est = np.where(n > 0, self.p1_ref[r] + self.p1_sum[r] / n, np.nan)
            sig_est = np.where(self.p1_mrn[r] > 0, self.p1_mr[r] / self.p1_mrn[r] / C.D2_MR, np.nan)
            k = self.p1_k[r].astype(F64)
            xcl_est = np.where(k > 0, self.p1_xbar[r] / k, np.nan)
            rbar_est = np.where(k > 0, self.p1_r[r] / k, np.nan)
            sbar_est = np.where(k > 0, self.p1_s[r] / k, np.nan)
        gcl, gs = self.given_cl[r], self.given_sigma[r]
        ns = np.minimum(self.sub_n[r], C.MAX_SUBGROUP)
        cl = np.where(np.isfinite(gcl), gcl, cl_est)
        sigma = np.where(np.isfinite(gs), gs, sig_est)
        sigma = np.where(sigma > 0, sigma, np.nan)
        self.cl[r], self.sigma[r] = cl, sigma
        # with a given sigma, R̄ = d2·σ and s̄ = c4·σ turn the tabulated factors into the "standard given" limits
        self.xcl[r] = np.where(np.isfinite(gcl), gcl, xcl_est)
        self.rbar[r] = np.where(np.isfinite(gs), C.D2[ns] * gs, rbar_est)
        self.sbar[r] = np.where(np.isfinite(gs), C.C4[ns] * gs, sbar_est)
        self.phase[r] = 1
        self.sg_k[r] = 0
        self.ewma[r] = cl
        self.ewma_decay[r] = 1.0
        self.cpos[r] = 0.0
        self.cneg[r] = 0.0
        self.npos[r] = 0
        self.nneg[r] = 0
        self.h0[r] = 0
        self.h1[r] = 0
        self.n_mon[r] = 0

    def _monitor(
        self,
        r: slice | NDArray[np.int64],
        x: NDArray[np.float64],
        prev: NDArray[np.float64],
        mr: NDArray[np.float64],
        has_prev: NDArray[np.bool_],
    ) -> NDArray[np.uint32]:
        cl = self.cl[r]
        sg = self.sigma[r]
        z = (x - cl) / sg
        a2, b2, a1, b1 = z > 2.0, z < -2.0, z > 1.0, z < -1.0
        up = x > prev
        dn = x < prev
        new0 = a2.astype(U64)
        new0 |= b2.astype(U64) << _LANE[1]
        new0 |= a1.astype(U64) << _LANE[2]
        new0 |= b1.astype(U64) << _LANE[3]
        new1 = (z > 0.0).astype(U64)
        new1 |= (z < 0.0).astype(U64) << _LANE[1]
        new1 |= up.astype(U64) << _LANE[2]
        new1 |= dn.astype(U64) << _LANE[3]
        h0 = ((self.h0[r] << _ONE) & _KEEP) | new0
        h1 = ((self.h1[r] << _ONE) & _KEEP) | new1
        self.h0[r] = h0
        self.h1[r] = h1
        n_mon = np.minimum(self.n_mon[r] + 1, 1 << 20)
        self.n_mon[r] = n_mon
        beyond3 = np.abs(z) > 3.0
        m = _bits(beyond3, Rule.WE1 | Rule.N1)
        pc = np.bitwise_count
        two_of_three = (pc(_lane(h0, 0, 3)) >= 2) | (pc(_lane(h0, 1, 3)) >= 2)
        m |= _bits(two_of_three, Rule.WE2 | Rule.N5)
        four_of_five = (pc(_lane(h0, 2, 5)) >= 4) | (pc(_lane(h0, 3, 5)) >= 4)
        m |= _bits(four_of_five, Rule.WE3 | Rule.N6)
        m |= _bits((_lane(h1, 0, 8) == 0xFF) | (_lane(h1, 1, 8) == 0xFF), Rule.WE4)
        m |= _bits((_lane(h1, 0, 9) == 0x1FF) | (_lane(h1, 1, 9) == 0x1FF), Rule.N2)
        m |= _bits((_lane(h1, 2, 5) == 0x1F) | (_lane(h1, 3, 5) == 0x1F), Rule.N3)
        u13 = _lane(h1, 2, 13)
        alt = ((u13 | _lane(h1, 3, 13)) == 0x1FFF) & ((u13 == 0x1555) | (u13 == 0x0AAA))
        m |= _bits(alt, Rule.N4)
        a1_15, b1_15 = _lane(h0, 2, 15), _lane(h0, 3, 15)
        m |= _bits(((a1_15 | b1_15) == 0) & (n_mon >= 15), Rule.N7)
        a1_8, b1_8 = a1_15 & U64(0xFF), b1_15 & U64(0xFF)
        m |= _bits(((a1_8 | b1_8) == 0xFF) & (a1_8 != 0) & (b1_8 != 0), Rule.N8)
        m |= _bits(has_prev & (mr > C.D4_MR * C.D2_MR * sg), Rule.MR_HIGH)
        # EWMA with the exact time-varying limits
        lam = self.lam[r]
        e = lam * x + (1.0 - lam) * self.ewma[r]
        self.ewma[r] = e
        one_m = 1.0 - lam
        decay = self.ewma_decay[r] * one_m * one_m
        self.ewma_decay[r] = decay
        width = self.L[r] * sg * np.sqrt(lam / (2.0 - lam) * (1.0 - decay))
        m |= _bits(e > cl + width, Rule.EWMA_HIGH)
        m |= _bits(e < cl - width, Rule.EWMA_LOW)
        # tabular CUSUM
        kk = self.k[r] * sg
        hh = self.h[r] * sg
        cp = np.maximum(0.0, x - (cl + kk) + self.cpos[r])
        cn = np.maximum(0.0, (cl - kk) - x + self.cneg[r])
        self.cpos[r] = cp
        self.cneg[r] = cn
        self.npos[r] = np.where(cp > 0, self.npos[r] + 1, 0)
        self.nneg[r] = np.where(cn > 0, self.nneg[r] + 1, 0)
        m |= _bits(cp > hh, Rule.CUSUM_POS)
        m |= _bits(cn > hh, Rule.CUSUM_NEG)
        m |= _bits(x > self.usl[r], Rule.ABOVE_USL)
        m |= _bits(x < self.lsl[r], Rule.BELOW_LSL)
        return m

    def _alarm(
        self, ra: NDArray[np.int64], x: NDArray[np.float64], t: NDArray[np.int64], mask: NDArray[np.uint32]
    ) -> AlarmEvents:
        """Feed the rows that fired or have a live alarm to the tracker, one channel per (row, kind)."""
        cand = np.flatnonzero((mask != 0) | self.alarm_busy[ra])
        if cand.size == 0:
            return AlarmEvents.empty()
        rows = ra[cand]
        mk = mask[cand]
        raised = (mk[:, None] & _KIND_BITS[None, :]) != 0
        ch = (rows[:, None] * _N_KINDS + np.arange(_N_KINDS)[None, :]).reshape(-1)
        val = np.repeat(x[cand][:, None], _N_KINDS, axis=1)
        val[:, 2] = self.ewma[rows]
        val[:, 3] = np.maximum(self.cpos[rows], self.cneg[rows])
        lim = self._alarm_limits(rows, x[cand])
        ev = self.alarms.update(
            ch, np.repeat(t[cand], _N_KINDS), raised.reshape(-1), None, val.reshape(-1), lim.reshape(-1)
        )
        self.alarm_busy[rows] = self.alarms.busy(ch).reshape(-1, _N_KINDS).any(1)
        if not len(ev):
            return ev
        er = ev.row // _N_KINDS
        kind = (ev.row % _N_KINDS).astype(np.int16)
        return AlarmEvents(er, kind, ev.t_ns, ev.start, ev.value, ev.limit, _lookup(er, rows, mk))

    def _alarm_limits(self, rows: NDArray[np.int64], x: NDArray[np.float64]) -> NDArray[np.float64]:
        cl, sg = self.cl[rows], self.sigma[rows]
        hi = x >= cl
        out = np.empty((rows.shape[0], _N_KINDS))
        out[:, 0] = np.where(hi, cl + 3 * sg, cl - 3 * sg)
        out[:, 1] = out[:, 0]
        width = (
            self.L[rows] * sg * np.sqrt(self.lam[rows] / (2 - self.lam[rows]) * (1 - self.ewma_decay[rows]))
        )
        out[:, 2] = np.where(self.ewma[rows] >= cl, cl + width, cl - width)
        out[:, 3] = self.h[rows] * sg
        out[:, 4] = np.where(hi, self.usl[rows], self.lsl[rows])
        return out

    # ------------------------------------------------------------------ read-out
    def snapshot(self, rows: ArrayLike | None = None) -> dict[str, NDArray[Any]]:
        """Indicator arrays for `rows` (all rows when None); NaN means no data, the reason_* arrays say why (NoData codes)."""
        r = self._rows if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        check_rows("SpcEngine.snapshot rows", r, self.capacity)
        f = self.fill[r].astype(F64)
        ph2 = self.phase[r] == 1
        cl, sg = self.cl[r], self.sigma[r]
        ns = self.sub_n[r]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(f > 0, self.shift[r] + self.s1[r] / f, np.nan)
            var = (self.s2[r] - self.s1[r] ** 2 / f) / (f - 1)
            sd = np.where(f > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)
            mn = np.where(f > 0, self.rmin[r], np.nan)
            mx = np.where(f > 0, self.rmax[r], np.nan)
            lim = np.where(ph2, 1.0, np.nan)
            ewma_w = self.L[r] * sg * np.sqrt(self.lam[r] / (2 - self.lam[r]) * (1 - self.ewma_decay[r]))
            xcl, rbar, sbar = self.xcl[r] * lim, self.rbar[r] * lim, self.sbar[r] * lim
            nsi = np.clip(ns, 2, C.MAX_SUBGROUP)
            has_sub = np.where(ns >= 2, 1.0, np.nan)
            kk, hh = self.k[r] * sg, self.h[r] * sg
            cpos, cneg = self.cpos[r] * lim, self.cneg[r] * lim
            shift = np.where(
                cpos > hh,
                cl + kk + cpos / self.npos[r],
                np.where(cneg > hh, cl - kk - cneg / self.nneg[r], np.nan),
            )
            cap = self._capability_indices(r)
        reason_w = np.where(f == 0, NoData.NO_SAMPLES, np.where(f < 2, NoData.TOO_FEW, NoData.OK)).astype(
            np.uint8
        )
        reason_l = np.where(
            ~ph2,
            NoData.BASELINE,
            np.where(np.isnan(sg), NoData.ZERO_SIGMA, NoData.OK),
        ).astype(np.uint8)
        out: dict[str, NDArray[Any]] = {
            "row": r,
            "n": self.n_good[r].copy(),
            "missing": self.n_missing[r].copy(),
            "missing_run": self.missing_run[r].copy(),
            "last_t_ns": self.last_t[r].copy(),
            "window_n": self.fill[r].copy(),
            "mean": mean,
            "sd": sd,
            "min": mn,
            "max": mx,
            "phase": self.phase[r].copy(),
            "cl": cl * lim,
            "sigma": sg * lim,
            "ucl": (cl + 3 * sg) * lim,
            "lcl": (cl - 3 * sg) * lim,
            "mr_cl": C.D2_MR * sg * lim,
            "mr_ucl": C.D4_MR * C.D2_MR * sg * lim,
            "xbar_cl": xcl * has_sub,
            "xbar_ucl_r": (xcl + C.A2[nsi] * rbar) * has_sub,
            "xbar_lcl_r": (xcl - C.A2[nsi] * rbar) * has_sub,
            "r_cl": rbar * has_sub,
            "r_ucl": C.D4[nsi] * rbar * has_sub,
            "r_lcl": C.D3[nsi] * rbar * has_sub,
            "xbar_ucl_s": (xcl + C.A3[nsi] * sbar) * has_sub,
            "xbar_lcl_s": (xcl - C.A3[nsi] * sbar) * has_sub,
            "s_cl": sbar * has_sub,
            "s_ucl": C.B4[nsi] * sbar * has_sub,
            "s_lcl": C.B3[nsi] * sbar * has_sub,
            "last_xbar": self.last_xbar[r].copy(),
            "last_r": self.last_r[r].copy(),
            "last_s": self.last_s[r].copy(),
            "ewma": self.ewma[r] * lim,
            "ewma_ucl": (cl + ewma_w) * lim,
            "ewma_lcl": (cl - ewma_w) * lim,
            "cusum_pos": cpos,
            "cusum_neg": cneg,
            "cusum_h": hh * lim,
            "cusum_shift": shift,
            "rule_mask": self.mask[r].copy(),
            "reason_window": reason_w,
            "reason_limits": reason_l,
        }
        out.update(cap)
        return out

    def _capability_indices(self, r: NDArray[np.int64]) -> dict[str, NDArray[Any]]:
        n = self.cap_n[r].astype(F64)
        mu = self.cap_ref[r] + self.cap_s1[r] / n
        overall = np.sqrt(np.maximum(0.0, (self.cap_s2[r] - self.cap_s1[r] ** 2 / n) / (n - 1)))
        ns = np.clip(self.sub_n[r], 2, C.MAX_SUBGROUP)
        k = self.cap_k[r].astype(F64)
        within_sub = self.cap_r[r] / k / C.D2[ns]
        within_ind = self.cap_mr[r] / self.cap_mrn[r] / C.D2_MR
        within = np.where(self.sub_n[r] >= 2, within_sub, within_ind)
        gs = self.given_sigma[r]
        within = np.where(np.isfinite(gs), gs, within)
        lsl, usl = self.lsl[r], self.usl[r]

        def idx(sig: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
            sig = np.where(sig > 0, sig, np.nan)
            cp = (usl - lsl) / (6 * sig)
            cpu = (usl - mu) / (3 * sig)
            cpl = (mu - lsl) / (3 * sig)
            # one-sided: the missing side is NaN and fmin takes the other
            cpk = np.fmin(cpu, cpl)
            return cp, cpk

        cp, cpk = idx(within)
        pp, ppk = idx(overall)
        no_spec = np.isnan(lsl) & np.isnan(usl)
        few = n < 2
        reason = np.where(
            no_spec,
            NoData.NO_SPEC,
            np.where(n == 0, NoData.NO_SAMPLES, np.where(few, NoData.TOO_FEW, NoData.OK)),
        )
        reason = np.where((reason == NoData.OK) & ~(within > 0), NoData.ZERO_SIGMA, reason).astype(np.uint8)
        bad = reason != NoData.OK
        cp, cpk, pp, ppk = (np.where(bad, np.nan, a) for a in (cp, cpk, pp, ppk))
        return {
            "cap_n": self.cap_n[r].copy(),
            "cap_mean": np.where(n > 0, mu, np.nan),
            "sigma_within": np.where(n > 1, within, np.nan),
            "sigma_overall": np.where(n > 1, overall, np.nan),
            "cp": cp,
            "cpk": cpk,
            "pp": pp,
            "ppk": ppk,
            "reason_capability": reason,
        }

    def state_bytes(self) -> int:
        """Bytes held in per-signal state arrays (ring buffer included)."""
        total = 0
        for v in vars(self).values():
            if isinstance(v, np.ndarray) and v.shape[:1] == (self.capacity,):
                total += v.nbytes
        a = self.alarms
        total += (
            a.active.nbytes
            + a.pending_since.nbytes
            + a.clearing_since.nbytes
            + a.on_delay.nbytes
            + a.off_delay.nbytes
        )
        return total


def _lookup(rows: NDArray[np.int64], keys: NDArray[np.int64], vals: NDArray[np.uint32]) -> NDArray[np.uint32]:
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], rows)
    return vals[order[pos]]
