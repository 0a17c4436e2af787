"""Vectorized SPC engine: rolling statistics, control charts, run rules, EWMA, CUSUM and capability for S signals.

State lives in arrays shaped [S] or [max_window, S]. An update takes a Readings
batch touching any subset of rows in any order (rows may repeat: each row's
values are applied in batch order, one vectorized round per repeat). Bad or NaN
values never enter a statistic; they are counted in `missing`.

Every sample updates every per-sample indicator of its row: the rolling window
(running sums for mean/sd, running extremes of the ring pass for min/max), I-MR,
the subgroup count (X̄-R/X̄-S when a subgroup completes), the run rules, EWMA,
CUSUM, spec limits and the alarm state. Read-out (`snapshot`) only combines that
state in O(1) per row (mean = ref + s1/n, min = min(pass so far, suffix of the
previous pass)); capability indices are computed there from running sums. While
every row is in step (full ticks, one ring position) the capability sums of x
take a whole window at a time from the window sums; read-out first adds the
samples since the last such step from the ring buffer (`_cap_pend`).

All arithmetic is float64. float32 for the EWMA and CUSUM state was measured
(4-8% less per tick at S = 100k) and rejected: C± grow without bound during a
sustained shift and lose precision in float32 (7.7e-6 relative after 20k samples
of a 3σ shift, an increment of 2.5 rounds to 2 above 2^24), and the published
EWMA/CUSUM would differ from float64 at ~1e-7 relative; the zone tests must stay
float64 to give the reference's bits at the zone boundaries.

Work is numpy passes over whole arrays: no Python loop per value or per signal.
The Python loops that remain run over rounds of repeated rows, over the slots of
one window pass (suffix extremes, once per `window` samples), over subgroup
slots, and over row blocks of `_BLOCK` rows in a full tick; measured on a 2-core
EPYC, blocks of 8k-32k rows were slower than one block (numpy's per-call cost
outweighs the cache gain), so `_BLOCK` is larger than any engine in use.
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
from edge_agent.types import BAD_THRESHOLD, Readings

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
# kinds 1-4 cover rule bits 12-22: one table lookup on mask >> 12 gives their raised bits; kind 0 is bits 0-11
_KIND_TABLE = np.array(
    [sum(1 << k for k in range(1, _N_KINDS) if (v << 12) & int(_KIND_BITS[k])) for v in range(1 << 11)],
    np.uint8,
)


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
    individuals only; 2-25 also runs the X̄-R and X̄-S charts on consecutive subgroups.
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


_U8 = np.uint8
_U32 = np.uint32


_BLOCK = 1 << 20  # rows per block of a full tick (see _round)
_EXT_BLOCK = 8  # ring slots per block of the window min/max suffixes
_EXACT_PASSES = 8  # ring passes between two exact recomputes of a row's window sums
_GATHER_ROWS = 1024  # up to this many gathered rows an exact window is one gather, not W slot passes
_RUN_CAP = 15  # run counters saturate here: the longest run a rule asks for (N7)


@dataclass(frozen=True, slots=True)
class _Rows:
    """The rows of one vectorized round with their values and per-row flags, as the steps of the round share them."""

    r: slice | NDArray[np.int64]  # a slice in a full tick (views of the state), else row numbers (gathers)
    ra: NDArray[np.int64]  # the same rows as numbers
    x: NDArray[np.float64]
    t: NDArray[np.int64]
    in1: NDArray[np.bool_]  # the row is in phase I
    mb: NDArray[np.uint8]  # [3, n] rule mask bytes of this sample
    done: NDArray[np.bool_]  # the sample completed a subgroup
    redo: NDArray[np.bool_]  # the row's window sums are to be recomputed exactly

    def block(self, b: slice) -> _Rows:
        """The rows `b` of a full tick (views)."""
        return _Rows(
            b, self.ra[b], self.x[b], self.t[b], self.in1[b], self.mb[:, b], self.done[b], self.redo[b]
        )


def _put(arr: NDArray[Any], r: slice | NDArray[np.int64], val: NDArray[Any]) -> None:
    """Write back `val` taken as arr[r]: a slice gave a view already updated in place, fancy rows a copy."""
    if not isinstance(r, slice):
        arr[r] = val


def _set(byte: NDArray[np.uint8], cond: NDArray[np.bool_], bits: int, tmp: NDArray[np.uint8]) -> None:
    """byte |= bits where cond (bits within one byte of the rule mask)."""
    # bool viewed as uint8: same-type loops are about twice as fast as mixed bool/uint8 ones
    np.multiply(cond.view(_U8), _U8(bits), out=tmp)
    np.bitwise_or(byte, tmp, out=byte)


def _run(run: NDArray[np.uint8], cond: NDArray[np.bool_], cap: NDArray[np.uint8]) -> None:
    """Advance a saturating run counter in place: +1 where `cond`, else 0, at most `cap` (an array of _RUN_CAP)."""
    run += 1
    np.multiply(run, cond.view(_U8), out=run)
    # an array, not a scalar: numpy's uint8 minimum with a scalar operand is ~30x slower
    np.minimum(run, cap, out=run)


class SpcEngine:
    """SPC state for `capacity` signal rows, updated from Readings batches; see docs/indicators.md.

    With `charts=False` the engine keeps only the window statistics and the capability study (no
    phase I, limits, rules, EWMA, CUSUM or alarms; those snapshot fields stay NaN): the pipeline
    keeps one for the raw values of the signals whose charts see a pre-whitened series.
    """

    def __init__(
        self,
        capacity: int,
        params: SpcParams | None = None,
        max_window: int = 64,
        alarm_on_delay_ns: ArrayLike = 0,
        alarm_off_delay_ns: ArrayLike = 0,
        charts: bool = True,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"SpcEngine: capacity must be >= 1, got {capacity}")
        if max_window < 2:
            raise ValueError(f"SpcEngine: max_window must be >= 2, got {max_window}")
        S, W = capacity, max_window
        self.capacity, self.max_window = S, W
        self.charts = charts
        self._rows = np.arange(S, dtype=np.int64)
        # configuration
        self.window = np.full(S, W, np.int32)
        self.phase1_n = np.zeros(S, np.int64)
        self.lsl = np.full(S, np.nan)
        self.usl = np.full(S, np.nan)
        self.lam = np.zeros(S)
        self.oml = np.ones(S)  # 1 - lambda
        self.L = np.zeros(S)
        self.k = np.zeros(S)
        self.h = np.zeros(S)
        self.sub_n = np.ones(S, np.int8)
        self.given_cl = np.full(S, np.nan)
        self.given_sigma = np.full(S, np.nan)
        self._has_spec = False
        self._sub_rows = np.empty(0, np.int64)  # rows with subgroups (subgroup_n >= 2)
        self._sub_all = False
        self._sub_uniform = True  # every row with subgroups has the same subgroup_n
        # counters
        # per-row counts that grow by one on every full tick are kept as offsets from the number of
        # full ticks (`_ticks`): a full tick adds 1 to one number instead of S
        self._ticks = 0
        self.n_good_off = np.zeros(S, np.int64)
        self.n_missing = np.zeros(S, np.int64)
        self.missing_run = np.zeros(S, np.int64)
        self._missing_runs = False  # some row may have missing_run > 0
        self.last_t = np.full(S, -1, np.int64)
        self.prev = np.full(S, np.nan)
        # rolling window: ring buffer, time-major so a full tick writes one contiguous row. Every
        # sample updates the sums of (v - ref) and (v - ref)² about a shift `win_ref` near the window
        # mean, which keeps the variance free of cancellation. The shift is a float near the values,
        # so v - ref is exact (Sterbenz) and nothing is ever rounded at the values' magnitude: an
        # update adds (x - old)·((x - ref) + (old - ref)), never x + old (at a level of 1e9 with sd
        # 1e-3 that sum keeps only ~4 digits of the deviations). A row's sums are re-based on its
        # window's two-pass mean and recomputed exactly from the buffer every _EXACT_PASSES passes
        # of its ring (every _EXACT_PASSES·window samples), and at once when an update changed the
        # sum of squares by more than half of what is left (a spike leaving the window). Both depend
        # only on the row's own samples, so results do not depend on how samples are batched. A
        # centre far from the window mean (a level change within the pass) is caught at read-out,
        # which then computes that row's window exactly.
        self.buf = np.zeros((W, S))
        self.pos = np.zeros(S, np.int32)
        self.fill = np.zeros(S, np.int32)
        self.win_ref = np.zeros(S)
        self.win_s1 = np.zeros(S)
        self.win_s2 = np.zeros(S)
        self.win_passes = np.zeros(S, _U8)  # ring passes since the last exact recompute
        # min/max (van Herk / Gil-Werman by blocks): the ring is written in passes of `window` slots;
        # the window is this pass's slots so far (running min/max `pfx_*`, updated per sample) and the
        # previous pass's slots after the newest one. For those, `sfx_*[k]` holds the min/max of the
        # previous pass's slots from k·_EXT_BLOCK on (computed when a pass completes); read-out adds
        # the fewer than _EXT_BLOCK slots before the next block boundary from the buffer
        G = -(-W // _EXT_BLOCK)
        self.pfx_min = np.full(S, np.inf)
        self.pfx_max = np.full(S, -np.inf)
        self.sfx_min = np.full((G + 1, S), np.inf)  # row G: no slots, always empty
        self.sfx_max = np.full((G + 1, S), -np.inf)
        # (pos, window) while every row has that ring position and window and a full window: a full
        # tick then writes one buffer row and `pos` is brought up to date only when leaving this state
        self._lock: tuple[int, int] | None = None
        # phase I (the number of moving ranges is p1_n - 1: the first sample has none)
        self.phase = np.zeros(S, np.int8)
        self._any_phase1 = True  # some row may be in phase I (False: a full tick skips the phase test)
        self.p1_n = np.zeros(S, np.int64)
        self.p1_ref = np.zeros(S)
        self.p1_sum = np.zeros(S)
        self.p1_mr = np.zeros(S)
        self.p1_xbar = np.zeros(S)
        self.p1_r = np.zeros(S)
        self.p1_s = np.zeros(S)
        self.p1_k = np.zeros(S, np.int64)
        # current subgroup: its values are the newest sg_k slots of the ring buffer (window >= subgroup_n)
        self.sg_k = np.zeros(S, np.int8)
        # (phase, n) while every row has subgroups of n and the same sg_k: a full tick then advances one
        # number instead of four uint8 passes; sg_k is written back when leaving this state
        self._sg_lock: tuple[int, int] | None = None
        self.last_xbar = np.full(S, np.nan)
        self.last_r = np.full(S, np.nan)
        self.last_s = np.full(S, np.nan)
        # limits (phase II) and the per-sample thresholds derived from them once per phase II start
        self.cl = np.full(S, np.nan)
        self.sigma = np.full(S, np.nan)
        self.xcl = np.full(S, np.nan)
        self.rbar = np.full(S, np.nan)
        self.sbar = np.full(S, np.nan)
        self.mr_ucl = np.full(S, np.nan)
        self.ew_z = np.zeros(S)  # asymptotic EWMA half-width in sigmas, L·sqrt(λ/(2-λ))
        # every row's (1-λ)^(2i) is too small to change 1 - (1-λ)^(2i): the asymptotic limits apply
        self._ewma_settled = False
        self._nan_sigma = False  # some phase II row has no sigma (its zone tests must all be false)
        # EWMA and CUSUM run on z = (x - CL)/σ, so their limits are the per-signal settings (plain
        # numbers when all rows share them) and no per-row limit array is read per sample; in x
        # units EWMA = CL + σ·ewma_z and C± = σ·c±_z
        self.ewma_z = np.full(S, np.nan)
        self.ewma_decay = np.ones(S)  # (1-λ)^(2i)
        self.cpos_z = np.zeros(S)
        self.cneg_z = np.zeros(S)
        self.npos = np.zeros(S, np.int32)
        self.nneg = np.zeros(S, np.int32)
        # zone histories of the last 8 samples, newest in bit 0: above/below 1σ, above/below 2σ
        self.ha1 = np.zeros(S, _U8)
        self.hb1 = np.zeros(S, _U8)
        self.ha2 = np.zeros(S, _U8)
        self.hb2 = np.zeros(S, _U8)
        # saturating run lengths: above CL, below CL, within ±1σ, rising, falling, alternating
        self.run_pos = np.zeros(S, _U8)
        self.run_neg = np.zeros(S, _U8)
        self.run_in = np.zeros(S, _U8)
        self.run_up = np.zeros(S, _U8)
        self.run_dn = np.zeros(S, _U8)
        self.run_alt = np.zeros(S, _U8)
        # rule mask of each row's latest sample as three bytes (bits 0-7, 8-15, 16-23): uint8 passes
        # are far cheaper than uint32 ones; the uint32 is assembled for the rows with hits only
        self.mask_b = np.zeros((3, S), _U8)
        # capability study accumulators (since the last rebaseline or reset_capability); cap_n - 1 moving ranges
        self.cap_n_off = np.zeros(S, np.int64)  # cap_n = cap_n_off + _ticks
        self._cap_fresh = True  # some row may have no sample in its capability period yet
        self.cap_ref = np.zeros(S)
        self.cap_s1 = np.zeros(S)
        self.cap_s2 = np.zeros(S)
        self.cap_mr = np.zeros(S)
        self.cap_r = np.zeros(S)  # Σ R of the period's subgroups (σ_within = R̄/d2)
        self.cap_k = np.zeros(S, np.int64)
        # in lockstep the sums of (x - ref) and (x - ref)² are not updated per sample: the newest
        # `_cap_pend` samples of every row wait in the ring buffer. When they fill a whole window the
        # window sums give theirs in O(1) passes (_cap_fold_window); read-out, a new period and leaving
        # lockstep first add the pending ones slot by slot, oldest first (_cap_flush), as the
        # per-sample update would have. The moving-range sum stays per sample (no window sum has it)
        self._cap_pend = 0
        self._cap_defer = False  # this full tick defers the capability sums (set by _round)
        # scratch for the per-sample temporaries: a fresh 8·S-byte array per operation would cost page faults
        self._tmp = np.empty((5, S))
        self._btmp = np.empty((5, S), _U8)
        self._bmon = np.empty((7, S), bool)
        self._mbytes = np.empty((3, S), _U8)  # the mask bytes of a gathered (not full) round
        self._cap = np.full(S, _RUN_CAP, _U8)
        self._zero = np.zeros(S)  # float maximum against an array is ~2x faster than against a scalar
        self._uniform: dict[str, float] = {}  # settings every row shares (see _cfg)
        self._flags = np.empty((4, S), bool)  # phase I, subgroup done, window sums to recompute, scratch
        # alarms: one channel per (row, kind); per row one bit per kind says the channel is active
        # (alarm_on) or waits out a persistence delay (alarm_wait), so only channels that can change
        # state go to the tracker; `alarm_busy` (either byte not zero) lets idle rows skip even that
        self.alarms = AlarmTracker(
            S * _N_KINDS,
            np.repeat(np.broadcast_to(np.asarray(alarm_on_delay_ns, np.int64), (S,)), _N_KINDS),
            np.repeat(np.broadcast_to(np.asarray(alarm_off_delay_ns, np.int64), (S,)), _N_KINDS),
        )
        self._instant_alarms = not (np.any(alarm_on_delay_ns) or np.any(alarm_off_delay_ns))
        self.alarm_on = np.zeros(S, _U8)
        self.alarm_wait = np.zeros(S, _U8)
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
            f"use 1 (individuals) or 2..{C.MAX_SUBGROUP}",
        )
        bad(
            "subgroup_n",
            v["subgroup_n"] > v["window"],
            "use a window of at least subgroup_n samples (a subgroup is read from the window's buffer)",
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
        self.window[r] = v["window"].astype(np.int32)
        self.phase1_n[r] = v["phase1_n"].astype(np.int64)
        self.lsl[r], self.usl[r] = v["lsl"], v["usl"]
        self.lam[r], self.L[r] = v["ewma_lambda"], v["ewma_L"]
        self.ew_z[r] = v["ewma_L"] * np.sqrt(v["ewma_lambda"] / (2.0 - v["ewma_lambda"]))
        self.oml[r] = 1.0 - v["ewma_lambda"]
        self.k[r], self.h[r] = v["cusum_k"], v["cusum_h"]
        self.sub_n[r] = v["subgroup_n"].astype(np.int8)
        self.given_cl[r], self.given_sigma[r] = v["centre"], v["sigma"]
        # whole-engine facts that let a full tick skip work: any spec limit at all, which rows have subgroups
        self._has_spec = bool(np.isfinite(self.lsl).any() or np.isfinite(self.usl).any())
        self._sub_rows = np.flatnonzero(self.sub_n >= 2)
        self._uniform = {
            name: float(a[0])
            for name, a in (
                ("lam", self.lam),
                ("oml", self.oml),
                ("usl", self.usl),
                ("lsl", self.lsl),
                ("ew_z", self.ew_z),
                ("L", self.L),
                ("k", self.k),
                ("h", self.h),
            )
            if bool((a == a[0]).all()) or bool(np.isnan(a).all())
        }
        self._sub_all = self._sub_rows.size == self.capacity
        self._sub_uniform = bool((self.sub_n[self._sub_rows] == self.sub_n[self._sub_rows[:1]]).all())
        # before the resets: leaving lockstep writes the common ring position and subgroup count to every row
        self._unlock()
        self._sg_unlock()
        for a, val in (
            (self.n_good_off, -self._ticks),
            (self.n_missing, 0),
            (self.missing_run, 0),
            (self.last_t, -1),
            (self.prev, np.nan),
            (self.pos, 0),
            (self.fill, 0),
        ):
            a[r] = val
        self.buf[:, r] = 0.0
        self.win_ref[r], self.win_s1[r], self.win_s2[r] = 0.0, 0.0, 0.0
        self.win_passes[r] = 0
        self.pfx_min[r], self.pfx_max[r] = np.inf, -np.inf
        self.sfx_min[:, r], self.sfx_max[:, r] = np.inf, -np.inf
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
        self._any_phase1 = True
        self._sg_unlock()
        self.sg_k[r] = 0
        self.mask_b[:, r] = 0
        self.reset_capability(r)
        ch = (r[:, None] * _N_KINDS + np.arange(_N_KINDS)).reshape(-1)
        self.alarms.reset(ch)
        self.alarm_on[r] = 0
        self.alarm_wait[r] = 0
        self.alarm_busy[r] = False
        given = r[np.isfinite(self.given_cl[r]) & np.isfinite(self.given_sigma[r])]
        if given.size and self.charts:
            self._finish_phase1(given)

    def reset_capability(self, rows: ArrayLike) -> None:
        """Start a new capability period (e.g. a shift) for `rows`."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        # pending samples belong to the period that ends here
        self._cap_flush()
        self.cap_n_off[r] = -self._ticks
        self._cap_fresh = True
        for a in (
            self.cap_s1,
            self.cap_s2,
            self.cap_mr,
            self.cap_r,
            self.cap_k,
        ):
            a[r] = 0

    # ------------------------------------------------------------------ update
    def update(self, readings: Readings) -> SpcUpdate:
        """Apply a batch; return the per-sample rule hits and the alarm transitions it caused."""
        sig = readings.signal
        full_tick = is_full_range(sig, self.capacity)
        if not full_tick:
            check_rows("SpcEngine.update Readings.signal", sig, self.capacity)
        if _all_good(readings):
            t, x = readings.t_ns, readings.value
        else:
            good = readings.good
            bad_rows = sig[~good]
            np.add.at(self.n_missing, bad_rows, 1)
            np.add.at(self.missing_run, bad_rows, 1)
            self._missing_runs = True
            sig, t, x = sig[good], readings.t_ns[good], readings.value[good]
        hits: list[RuleHits] = []
        events: list[AlarmEvents] = []
        if full_tick and sig.shape[0] == readings.signal.shape[0]:
            self._round(slice(None), self._rows, x, t, hits, events)
        else:
            for idx in occurrence_rounds(sig):
                rr = sig[idx].astype(np.int64)
                self._round(rr, rr, x[idx], t[idx], hits, events)
        if len(hits) == 1:
            rh = hits[0]
        elif hits:
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
        """One vectorized step: each row in `r` (unique; `ra` the same rows as an array) gets one good value.

        For a full tick `r` is slice(None): the per-sample work then runs over blocks of
        _BLOCK rows (a loop over row blocks, not over signals or values), each a set of
        contiguous views updated in place. Otherwise `r` holds row numbers and each array
        is gathered, updated and written back (`_put`). Both run the same arithmetic on
        every row, so they give identical results.
        """
        full = isinstance(r, slice)
        n = x.shape[0]
        if self._missing_runs:
            self.missing_run[r] = 0
            self._missing_runs = not full
        mb = self.mask_b if full else self._mbytes[:, :n]
        rnd = _Rows(r, ra, x, t, self._flags[0, :n], mb, self._flags[1, :n], self._flags[2, :n])
        in1, redo = rnd.in1, rnd.redo
        if full:
            if self._lock is None:
                self._try_lock()
            if self._sg_lock is None:
                self._try_sg_lock()
            # a period's first sample sets its reference: such ticks update the sums per sample
            self._cap_defer = self._lock is not None and not self._cap_fresh
            if not self._cap_defer:
                self._cap_flush()
            for a in range(0, n, _BLOCK):
                self._step(rnd.block(slice(a, min(a + _BLOCK, n))))
            if self._lock is not None:
                p, w = self._lock
                self._lock = ((p + 1) % w, w)
            if self._sg_lock is not None:
                k0, n0 = self._sg_lock
                self._sg_lock = ((k0 + 1) % n0, n0)
            self._ticks += 1
            self._cap_fresh = False
        else:
            self._unlock()
            self._sg_unlock()
            self._cap_defer = False
            self._step(rnd)
            if self._cap_fresh:
                self._cap_fresh = bool((self.cap_n_off == -self._ticks).any())
        self._recompute_window_sums(ra, redo)
        if self._cap_defer:
            self._cap_pend += 1
            # after the exact recomputes: a row that lost its window sums to cancellation has them back
            if self._lock is not None and self._cap_pend == self._lock[1]:
                self._cap_fold_window()
        if not self._ewma_settled:
            self._ewma_settled = bool(1.0 - self.ewma_decay.max() == 1.0)
        any1 = self._any_phase1 and bool(in1.any())
        self._close_subgroups(rnd)
        if any1:
            r1 = ra[in1]
            ended = r1[self.p1_n[r1] >= self.phase1_n[r1]]
            if ended.size:
                self._finish_phase1(ended)
        if not full:
            self.mask_b[:, r] = mb
        # rows with a rule hit, and those plus the rows with a live alarm (the alarm candidates)
        nzb = self._btmp[0, :n]
        np.bitwise_or(mb[0], mb[1], out=nzb)
        nzb |= mb[2]
        hit = np.not_equal(nzb, 0, out=self._flags[3, :n])
        cand = np.flatnonzero(np.logical_or(hit, self.alarm_busy[r], out=self._bmon[0, :n]))
        if cand.size == 0:
            return
        mc = _mask32(mb, cand)
        # positions, not a boolean mask: indexing by a random mask is ~2x slower than by positions
        on = np.flatnonzero(mc != 0)
        if on.size:
            nz = cand[on]
            hit_rows = nz if full else ra[nz]  # a full tick's positions are its rows
            hits.append(RuleHits(hit_rows.astype(np.int32), t[nz], x[nz], mc[on]))
        if not (any1 and in1.all()):
            ev = self._alarm(ra, x, t, cand, mc)
            if len(ev):
                events.append(ev)

    def _step(self, rnd: _Rows) -> None:
        """Per-sample work for the rows of `rnd` (a block of a full tick or gathered rows): counters, window, capability, phase I, rules, subgroup sums."""
        r, ra, x, t, in1, mb = rnd.r, rnd.ra, rnd.x, rnd.t, rnd.in1, rnd.mb
        n = x.shape[0]
        if not isinstance(r, slice):
            self.n_good_off[r] += 1
        self.last_t[r] = t
        if self._lock is not None and isinstance(r, slice):
            # in lockstep each row's previous good value is its newest ring slot (`prev` is written
            # back when leaving lockstep): no copy of x per tick
            p0, w0 = self._lock
            dx = np.subtract(x, self.buf[(p0 - 1) % w0, r], out=self._tmp[0, :n])
        else:
            prev = self.prev[r]
            dx = np.subtract(x, prev, out=self._tmp[0, :n])  # NaN where there is no previous value
            if isinstance(r, slice):
                np.copyto(prev, x)
            else:
                self.prev[r] = x
        mr = np.abs(dx, out=self._tmp[1, :n])
        self._window(rnd)
        self._capability(r, x, mr)
        if not self.charts:
            # statistics only: subgroups still feed the capability's R̄, nothing is charted
            in1[:] = False
            mb[...] = 0
            self._add_to_subgroups(r, rnd.done)
            return
        if self._any_phase1:
            np.equal(self.phase[r], 0, out=in1)
            any1 = bool(in1.any())
        else:
            in1[:] = False
            any1 = False
        if any1:
            i1 = np.flatnonzero(in1)
            self._phase1(ra[i1], x[i1], mr[i1])
        # phase I rows run through the monitor too (cheaper than splitting the arrays); their
        # monitor state is reset when phase II starts and their bits are dropped here
        self._monitor(r, x, dx, mr, mb)
        if any1:
            mb[:, in1] = 0
        self._add_to_subgroups(r, rnd.done)

    def _try_lock(self) -> None:
        """Enter the lockstep ring state when every row has the same position and window and a full window."""
        p, w = int(self.pos[0]), int(self.window[0])
        if (self.pos == p).all() and (self.window == w).all() and (self.fill == w).all():
            self._lock = (p, w)

    def _try_sg_lock(self) -> None:
        """Enter the subgroup lockstep state when every row has subgroups of one size and the same count in its current one."""
        if self._sub_all and self._sub_uniform:
            k0 = int(self.sg_k[0])
            if bool((self.sg_k == k0).all()):
                self._sg_lock = (k0, int(self.sub_n[0]))

    def _sg_unlock(self) -> None:
        """Leave the subgroup lockstep state: write the common count back to every row."""
        if self._sg_lock is not None:
            self.sg_k[:] = self._sg_lock[0]
            self._sg_lock = None

    def _unlock(self) -> None:
        """Leave the lockstep ring state: write the common position and each row's previous value (its newest slot) back."""
        if self._lock is not None:
            self._cap_flush()
            p, w = self._lock
            self.pos[:] = p
            self.prev[:] = self.buf[(p - 1) % w]
            self._lock = None

    def _window(self, rnd: _Rows) -> None:
        """Write each row's new value into its ring slot; update the window sums and the running min/max of the ring pass; mark rows to recompute exactly in `rnd.redo`."""
        r, ra, x, redo = rnd.r, rnd.ra, rnd.x, rnd.redo
        n = x.shape[0]
        S = self.capacity
        ref, s1, s2 = self.win_ref[r], self.win_s1[r], self.win_s2[r]
        pmn, pmx = self.pfx_min[r], self.pfx_max[r]
        lock = self._lock if isinstance(r, slice) else None
        if lock is not None:
            p0, w0 = lock
            slot = self.buf[p0, r]  # every row evicts the value in this slot
            old: NDArray[np.float64] = slot
        else:
            p = self.pos[r]
            flat = p.astype(np.int64) * S + ra
            old = self.buf.reshape(-1)[flat]
            f = self.fill[r]
            w = self.window[r]
            first = f == 0
            if first.any():
                np.copyto(ref, x, where=first)
            # a slot not yet in the window evicts nothing: as old = ref it adds (x - ref) and (x - ref)²
            np.copyto(old, ref, where=f < w)
        d = np.subtract(x, old, out=self._tmp[2, :n])
        s1 += d
        # (x - ref)² - (old - ref)² = (x - old)·(2·(x - ref) - (x - old)): every operand a deviation
        e = np.subtract(x, ref, out=self._tmp[3, :n])
        e += e
        e -= d
        e *= d
        s2 += e
        # a change larger than what is left (a spike leaving, or leaving a centre it had pulled
        # away) loses the sums to cancellation: such rows are recomputed exactly
        np.abs(e, out=e)
        e += e
        np.greater(e, s2, out=redo)
        if lock is not None:
            slot[...] = x
            if p0 == 0:
                np.copyto(pmn, x)
                np.copyto(pmx, x)
            else:
                np.minimum(pmn, x, out=pmn)
                np.maximum(pmx, x, out=pmx)
            if p0 == w0 - 1:
                # pass complete: min/max of its slots from each block boundary on, for the next pass
                buf, smin, smax = self.buf, self.sfx_min, self.sfx_max
                for k in range(-(-w0 // _EXT_BLOCK) - 1, -1, -1):
                    blk = buf[k * _EXT_BLOCK : min((k + 1) * _EXT_BLOCK, w0), r]
                    np.minimum.reduce(blk, axis=0, out=smin[k, r])
                    np.minimum(smin[k, r], smin[k + 1, r], out=smin[k, r])
                    np.maximum.reduce(blk, axis=0, out=smax[k, r])
                    np.maximum(smax[k, r], smax[k + 1, r], out=smax[k, r])
                # and every _EXACT_PASSES passes the exact window sums
                passes = self.win_passes[r]
                passes += 1
                due = np.greater_equal(passes, _EXACT_PASSES, out=self._flags[3, :n])
                redo |= due
                np.copyto(passes, 0, where=due)
        else:
            self.buf.reshape(-1)[flat] = x
            np.minimum(pmn, x, out=pmn)
            np.maximum(pmx, x, out=pmx)
            start = p == 0
            np.copyto(pmn, x, where=start)
            np.copyto(pmx, x, where=start)
            p += 1
            ended = np.flatnonzero(p >= w)
            if ended.size:
                p[ended] = 0
                self._suffix_extremes(ra[ended], w[ended])
                # and every _EXACT_PASSES passes the exact window sums
                er = ra[ended]
                passes = self.win_passes[er] + 1
                due = passes >= _EXACT_PASSES
                passes[due] = 0
                self.win_passes[er] = passes
                redo[ended[due]] = True
            _put(self.pos, r, p)
            f += 1
            np.minimum(f, w, out=f)
            _put(self.fill, r, f)
        for arr, v in ((self.win_ref, ref), (self.win_s1, s1), (self.win_s2, s2)):
            _put(arr, r, v)
        for arr, v in ((self.pfx_min, pmn), (self.pfx_max, pmx)):
            _put(arr, r, v)

    def _suffix_extremes(self, rows: NDArray[np.int64], w: NDArray[np.int32]) -> None:
        """Block suffix min/max of the pass the rows just completed (slots past a row's window count as empty)."""
        g = _EXT_BLOCK
        G = self.sfx_min.shape[0] - 1
        wmax = int(w.max())
        lo = np.full((G + 1, rows.shape[0]), np.inf)
        hi = np.full((G + 1, rows.shape[0]), -np.inf)
        # slot by slot (no [W, rows] temporaries); min/max are exact, so any order gives the same values
        for j in range(wmax):
            v = self.buf[j, rows]
            inside = j < w
            np.minimum(lo[j // g], np.where(inside, v, np.inf), out=lo[j // g])
            np.maximum(hi[j // g], np.where(inside, v, -np.inf), out=hi[j // g])
        for k in range(G - 1, -1, -1):
            np.minimum(lo[k], lo[k + 1], out=lo[k])
            np.maximum(hi[k], hi[k + 1], out=hi[k])
        self.sfx_min[:G, rows] = lo[:G]
        self.sfx_max[:G, rows] = hi[:G]

    def _recompute_window_sums(self, ra: NDArray[np.int64], redo: NDArray[np.bool_]) -> None:
        """Recompute the window sums exactly for rows that completed a ring pass or lost precision to cancellation."""
        i = np.flatnonzero(redo)
        if i.size == redo.shape[0]:
            self._set_exact(slice(None) if ra.shape[0] == self.capacity else ra)
        elif i.size:
            self._set_exact(ra[i])

    def _set_exact(self, rows: slice | NDArray[np.int64]) -> None:
        """Restart the running window sums of `rows` from the buffer, re-based on the window's two-pass mean."""
        ref, s1, s2 = self._exact_window(rows)
        self.win_ref[rows] = ref
        self.win_s1[rows] = s1
        self.win_s2[rows] = s2

    def _exact_window(
        self, rows: slice | NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Each row's window as (ref, Σ(v - ref), Σ(v - ref)²) about its two-pass mean ref (0, 0, 0 when empty).

        ref is the mean rounded to a float at the values' magnitude; Σ(v - ref) keeps what that
        rounding lost (taking it as 0, as a plain two-pass does, adds n·(mean - ref)² to the sum of
        squares: 1e-4 of a window-2 variance at a level of 1e9 with sd 1e-3).
        """
        W = self.max_window
        if isinstance(rows, slice) and self._lock is not None:
            w_all = self._lock[1]
        else:
            f, wr = self.fill[rows], self.window[rows]
            w_all = int(wr[0]) if f.size and bool((f == wr).all() and (wr == wr[0]).all()) else 0
        if w_all >= 2 and (isinstance(rows, slice) or rows.shape[0] > _GATHER_ROWS):
            # every row has a full window of the same w slots: slot by slot, without [W, rows]
            # temporaries, in the same order (slot 0 first) as the sums over axis 0 below
            w, buf = w_all, self.buf
            acc = buf[0, rows] + buf[1, rows]
            for j in range(2, w):
                acc += buf[j, rows]
            acc /= w
            s1 = np.subtract(buf[0, rows], acc)
            ss = s1 * s1
            dj = np.empty_like(ss)
            for j in range(1, w):
                np.subtract(buf[j, rows], acc, out=dj)
                s1 += dj
                dj *= dj
                ss += dj
            return acc, s1, ss
        f = self.fill[rows]
        v = self.buf[:, rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            if bool((f == W).all()):
                mean = _sum_slots(v) / W
                d = v - mean
            else:
                # slots at or past a row's fill are unused (a shorter window or not yet filled);
                # adding their zeros leaves the sums' bits as the slot-by-slot loop gives them
                valid = np.arange(W)[:, None] < f
                mean = _sum_slots(np.where(valid, v, 0.0)) / f
                d = np.where(valid, v - mean, 0.0)
                mean[f == 0] = 0.0
            s1 = _sum_slots(d)
            d *= d
            return mean, s1, _sum_slots(d)

    def _capability(
        self, r: slice | NDArray[np.int64], x: NDArray[np.float64], mr: NDArray[np.float64]
    ) -> None:
        if self._cap_defer:
            # lockstep: x is in the ring buffer and enters the sums later (see _cap_pend)
            m = self.cap_mr[r]
            m += mr
            return
        ref = self.cap_ref[r]
        if self._cap_fresh:
            # first sample of the period: it sets the reference and has no moving range
            new = self.cap_n_off[r] == -self._ticks
            if new.any():
                np.copyto(ref, x, where=new)
                _put(self.cap_ref, r, ref)
                mr = np.where(new, 0.0, mr)
        d = np.subtract(x, ref, out=self._tmp[2, : x.shape[0]])
        s1 = self.cap_s1[r]
        s1 += d
        _put(self.cap_s1, r, s1)
        d *= d
        s2 = self.cap_s2[r]
        s2 += d
        _put(self.cap_s2, r, s2)
        if not isinstance(r, slice):
            self.cap_n_off[r] += 1
        m = self.cap_mr[r]
        m += mr
        _put(self.cap_mr, r, m)

    def _cap_fold_window(self) -> None:
        """Add the pending samples, exactly every row's window in lockstep, to the capability sums from the window sums."""
        assert self._lock is not None
        w = float(self._lock[1])
        self._cap_pend = 0
        # window sums are about wref: Σ(v - cref) = s1w + w·δ, Σ(v - cref)² = s2w + δ·(2·s1w + w·δ), δ = wref - cref
        s1w = self.win_s1
        d = np.subtract(self.win_ref, self.cap_ref, out=self._tmp[0])
        t = np.multiply(d, w, out=self._tmp[1])
        self.cap_s1 += s1w
        self.cap_s1 += t
        t += s1w
        t += s1w
        t *= d
        t += self.win_s2
        self.cap_s2 += t

    def _cap_flush(self) -> None:
        """Add the pending lockstep samples to the capability sums from the ring buffer, oldest first (the per-sample arithmetic)."""
        m = self._cap_pend
        if not m:
            return
        assert self._lock is not None
        self._cap_pend = 0
        p, w = self._lock
        d = self._tmp[0]
        ref, s1, s2 = self.cap_ref, self.cap_s1, self.cap_s2
        for j in range(p - m, p):
            np.subtract(self.buf[j % w], ref, out=d)
            s1 += d
            d *= d
            s2 += d

    def _phase1(self, r: NDArray[np.int64], x: NDArray[np.float64], mr: NDArray[np.float64]) -> None:
        n = self.p1_n[r]
        first = n == 0
        ref = np.where(first, x, self.p1_ref[r])
        self.p1_ref[r] = ref
        self.p1_sum[r] += x - ref
        self.p1_mr[r] += np.where(first, 0.0, mr)
        self.p1_n[r] = n + 1

    def _add_to_subgroups(self, r: slice | NDArray[np.int64], done: NDArray[np.bool_]) -> None:
        """Count one value into the current subgroup of each row of `r` with subgroups; `done` marks the completed ones."""
        if not self._sub_rows.size:
            done[:] = False
            return
        if self._sg_lock is not None and isinstance(r, slice):
            # every row in step: _round advances the common phase once per tick
            k0, n0 = self._sg_lock
            done[:] = k0 + 1 == n0
            return
        k = self.sg_k[r]
        k += 1
        n = self.sub_n[r]
        # rows without subgroups have n = 1 and k is never read for them
        np.greater_equal(k, n, out=done)
        if not self._sub_all:
            done &= n >= 2
        np.copyto(k, 0, where=done)
        _put(self.sg_k, r, k)

    def _close_subgroups(self, rnd: _Rows) -> None:
        """Statistics of the subgroups completed in this round; phase I ones feed the limits, phase II ones the X̄-R/X̄-S rules."""
        r, ra, in1, done, mb = rnd.r, rnd.ra, rnd.in1, rnd.done, rnd.mb
        if not done.any():
            return
        lockstep = isinstance(r, slice) and self._sub_uniform and self._lock is not None
        if lockstep and bool(done.all()) and not (self._any_phase1 and in1.any()):
            self._close_all_subgroups(mb)
            return
        i = np.flatnonzero(done)
        every = isinstance(r, slice) and i.size == ra.shape[0]
        rows = ra[i]
        ns = self.sub_n[rows]
        xbar, rng, sd = (np.empty(i.size) for _ in range(3))
        for nv in np.unique(ns) if not self._sub_uniform else ns[:1]:
            sel = slice(None) if self._sub_uniform else np.flatnonzero(ns == nv)
            xbar[sel], rng[sel], sd[sel] = self._subgroup_stats(slice(None) if every else rows[sel], int(nv))
        rd: slice | NDArray[np.int64] = slice(None) if every else rows
        self.last_xbar[rd], self.last_r[rd], self.last_s[rd] = xbar, rng, sd
        self.cap_r[rd] += rng
        self.cap_k[rd] += 1
        p1 = in1[i]
        if p1.any():
            rp = rows[p1]
            self.p1_xbar[rp] += xbar[p1]
            self.p1_r[rp] += rng[p1]
            self.p1_s[rp] += sd[p1]
            self.p1_k[rp] += 1
            if p1.all():
                return
            m2 = np.flatnonzero(~p1)
            i, ns, xbar, rng, sd = i[m2], ns[m2], xbar[m2], rng[m2], sd[m2]
            rd = ra[i]
        # one subgroup size for all rows: the chart factors are plain numbers
        nk: int | NDArray[np.int8] = int(ns[0]) if self._sub_uniform else ns
        dev = np.abs(xbar - self.xcl[rd])
        hi, top = self._chart_bits(rd, dev, rng, sd, nk)
        if i.size == mb.shape[1]:
            mb[1] |= hi
            mb[2] |= top
        else:
            mb[1, i] |= hi
            mb[2, i] |= top

    def _close_all_subgroups(self, mb: NDArray[np.uint8]) -> None:
        """Every row completed a subgroup in lockstep (phase II, one subgroup size): the same arithmetic as _close_subgroups on whole rows."""
        assert self._lock is not None
        p, w = self._lock
        n = int(self.sub_n[0])
        buf = self.buf
        v = [buf[(p - n + j) % w] for j in range(n)]  # oldest first, as _subgroup_stats sums
        # computed in place in last_xbar, last_r, last_s: no copies of [S] results
        xbar = np.add(v[0], v[1], out=self.last_xbar)
        mx = np.maximum(v[0], v[1], out=self.last_r)
        mn = np.minimum(v[0], v[1], out=self._tmp[0])
        for j in range(2, n):
            xbar += v[j]
            np.maximum(mx, v[j], out=mx)
            np.minimum(mn, v[j], out=mn)
        xbar /= n
        rng = np.subtract(mx, mn, out=mx)
        ss = np.subtract(v[0], xbar, out=self.last_s)
        ss *= ss
        d = self._tmp[1]
        for j in range(1, n):
            np.subtract(v[j], xbar, out=d)
            d *= d
            ss += d
        ss /= n - 1
        sd = np.sqrt(ss, out=ss)
        self.cap_r += rng
        self.cap_k += 1
        dev = np.subtract(xbar, self.xcl, out=d)
        np.abs(dev, out=dev)
        b1, b2 = self._chart_bits(slice(None), dev, rng, sd, n)
        mb[1] |= b1
        mb[2] |= b2

    def _chart_bits(
        self,
        rows: slice | NDArray[np.int64],
        dev: NDArray[np.float64],
        rng: NDArray[np.float64],
        sd: NDArray[np.float64],
        nk: int | NDArray[np.int8],
    ) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """X̄-R and X̄-S rule bits of the subgroups `rows` completed as mask bytes 1 and 2 (|X̄ - X̄̄| in `dev`)."""
        rbar, sbar = self.rbar[rows], self.sbar[rows]
        lim = np.multiply(C.A2[nk], rbar, out=self._tmp[2, : dev.shape[0]])
        c = dev > lim  # X̄ outside X̄ ± A2·R̄
        # the chart bits 13-15 are bits 5-7 of byte 1, bit 16 is bit 0 of byte 2
        hi = np.multiply(c.view(_U8), _U8(Rule.XBAR_R >> 8))
        np.multiply(C.A3[nk], sbar, out=lim)
        np.greater(dev, lim, out=c)  # X̄ outside X̄ ± A3·s̄
        hi |= np.multiply(c.view(_U8), _U8(Rule.XBAR_S >> 8))
        np.multiply(C.D4[nk], rbar, out=lim)
        np.greater(rng, lim, out=c)
        # D3 and B3 are 0 for n <= 5 and 6: nothing is below a zero lower limit, so that test is skipped
        if not isinstance(nk, int) or C.D3[nk] != 0:
            c |= rng < C.D3[nk] * rbar
        hi |= np.multiply(c.view(_U8), _U8(Rule.R_OUT >> 8))
        np.multiply(C.B4[nk], sbar, out=lim)
        top = np.greater(sd, lim)
        if not isinstance(nk, int) or C.B3[nk] != 0:
            top |= sd < C.B3[nk] * sbar
        return hi, top.view(_U8)

    def _subgroup_stats(
        self, rows: slice | NDArray[np.int64], n: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Mean, range and sd (n-1) of the newest `n` values of each row's window (its completed subgroup).

        Summed oldest first and two-pass, as the textbook formulas read.
        """
        # the ring already moved on: the newest value is in slot pos - 1
        lock = self._lock
        if lock is not None and isinstance(rows, slice):
            p, w = lock
            v = self.buf[[(p - n + j) % w for j in range(n)]]
        else:
            ra = self._rows[rows] if isinstance(rows, slice) else rows
            pa: int | NDArray[np.int64]
            wa: int | NDArray[np.int64]
            if lock is not None:  # pos is not kept up to date in lockstep
                pa, wa = lock
            else:
                pa, wa = self.pos[ra].astype(np.int64), self.window[ra].astype(np.int64)
            flat = self.buf.reshape(-1)
            v = np.stack([flat[((pa - n + j) % wa) * self.capacity + ra] for j in range(n)])
        xbar = _sum_slots(v) / n
        rng = v.max(0) - v.min(0)
        v -= xbar
        v *= v
        sd = np.sqrt(_sum_slots(v) / (n - 1))
        return xbar, rng, sd

    def _finish_phase1(self, r: NDArray[np.int64]) -> None:
        n = self.p1_n[r].astype(F64)
        mrn = self.p1_n[r] - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            cl_est = np.where(n > 0, self.p1_ref[r] + self.p1_sum[r] / n, np.nan)
            sig_est = np.where(mrn > 0, self.p1_mr[r] / mrn / C.D2_MR, np.nan)
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
        self.mr_ucl[r] = C.D4_MR * C.D2_MR * sigma
        self._ewma_settled = False
        self.phase[r] = 1
        self._any_phase1 = bool((self.phase == 0).any())
        self._sg_unlock()
        self.sg_k[r] = 0
        self.ewma_z[r] = 0.0
        self.ewma_decay[r] = 1.0
        for a in (self.cpos_z, self.cneg_z, self.npos, self.nneg, self.ha1, self.hb1, self.ha2, self.hb2):
            a[r] = 0
        for a in (self.run_pos, self.run_neg, self.run_in, self.run_up, self.run_dn, self.run_alt):
            a[r] = 0
        self._nan_sigma = bool(np.isnan(self.sigma[self.phase == 1]).any())

    def _monitor(
        self,
        r: slice | NDArray[np.int64],
        x: NDArray[np.float64],
        dx: NDArray[np.float64],
        mr: NDArray[np.float64],
        mb: NDArray[np.uint8],
    ) -> None:
        """Phase II rule mask bytes of one sample per row into `mb`, updating rule histories, EWMA and CUSUM in place."""
        n = x.shape[0]
        b0, b1, b2 = mb
        tmp, side = self._btmp[3:5, :n]
        B = self._bmon[:, :n]
        U = _U8
        cap = self._cap[:n]
        cl = self.cl[r]
        z = np.subtract(x, cl, out=self._tmp[2, :n])
        z /= self.sigma[r]
        az = np.abs(z, out=self._tmp[3, :n])
        pos = np.greater(z, 0.0, out=B[0])
        neg = np.less(z, 0.0, out=B[1])
        l1 = np.greater(az, 1.0, out=B[2])
        l2 = np.greater(az, 2.0, out=B[3])
        c, c2 = B[4], B[6]
        cu, c2u = c.view(U), c2.view(U)
        # each byte starts as its first condition times its bit
        np.multiply(np.greater(az, 3.0, out=c).view(U), U(Rule.WE1 | Rule.N1), out=b0)
        # within ±1σ is "not beyond 1σ" unless a row has no sigma: NaN is neither
        inside = np.less_equal(az, 1.0, out=B[5]) if self._nan_sigma else np.logical_not(l1, out=B[5])
        hist = []
        for arr, lim, sgn in (
            (self.ha1, l1, pos),
            (self.hb1, l1, neg),
            (self.ha2, l2, pos),
            (self.hb2, l2, neg),
        ):
            h = arr[r]
            h += h  # shift left: the sample 8 back drops out
            h |= np.logical_and(lim, sgn, out=c).view(U)
            _put(arr, r, h)
            hist.append(h)
        ha1, hb1, ha2, hb2 = hist
        first_b1 = True
        for ha, hb, bits, need, v0, v1 in (
            (ha2, hb2, 0x7, 2, Rule.WE2, Rule.N5 >> 8),  # 2 of 3 beyond 2σ
            (ha1, hb1, 0x1F, 4, Rule.WE3, Rule.N6 >> 8),  # 4 of 5 beyond 1σ
        ):
            np.greater_equal(np.bitwise_count(np.bitwise_and(ha, U(bits), out=tmp), out=tmp), U(need), out=c)
            c2 = np.greater_equal(
                np.bitwise_count(np.bitwise_and(hb, U(bits), out=tmp), out=tmp), U(need), out=B[6]
            )
            cu |= c2u
            _set(b0, c, v0, tmp)
            if first_b1:
                np.multiply(cu, U(v1), out=b1)
                first_b1 = False
            else:
                _set(b1, c, v1, tmp)
        # N8: the last 8 all beyond 1σ, on both sides
        np.bitwise_or(ha1, hb1, out=tmp)
        np.equal(tmp, U(0xFF), out=c)
        cu &= np.not_equal(ha1, U(0), out=c2).view(U)
        cu &= np.not_equal(hb1, U(0), out=c2).view(U)
        _set(b1, c, Rule.N8 >> 8, tmp)
        rp, rn, ri = self.run_pos[r], self.run_neg[r], self.run_in[r]
        _run(rp, pos, cap)
        _run(rn, neg, cap)
        _run(ri, inside, cap)
        np.maximum(rp, rn, out=side)
        _set(b0, np.greater_equal(side, U(8), out=c), Rule.WE4, tmp)
        _set(b0, np.greater_equal(side, U(9), out=c), Rule.N2, tmp)
        _set(b1, np.greater_equal(ri, U(15), out=c), Rule.N7 >> 8, tmp)
        up = np.greater(dx, 0.0, out=B[0])
        dn = np.less(dx, 0.0, out=B[1])
        ru, rd, alt = self.run_up[r], self.run_dn[r], self.run_alt[r]
        # the alternation goes on when this difference has the opposite sign of the previous one
        flip = np.logical_and(up, np.greater(rd, U(0), out=c), out=B[2])
        flip |= np.logical_and(dn, np.greater(ru, U(0), out=c), out=c)
        np.multiply(alt, flip.view(U), out=alt)
        alt += np.logical_or(up, dn, out=c).view(U)
        np.minimum(alt, cap, out=alt)
        _run(ru, up, cap)
        _run(rd, dn, cap)
        _set(b0, np.greater_equal(np.maximum(ru, rd, out=tmp), U(5), out=c), Rule.N3, tmp)
        _set(b0, np.greater_equal(alt, U(13), out=c), Rule.N4, tmp)
        for arr, v in (
            (self.run_pos, rp),
            (self.run_neg, rn),
            (self.run_in, ri),
            (self.run_up, ru),
            (self.run_dn, rd),
            (self.run_alt, alt),
        ):
            _put(arr, r, v)
        # NaN (no previous value) never fires
        _set(b1, np.greater(mr, self.mr_ucl[r], out=c), Rule.MR_HIGH >> 8, tmp)
        # EWMA of z, same operation order as lam·z + (1-lam)·ewma
        oml = self._cfg("oml", r)
        t4 = self._tmp[4, :n]
        e = self.ewma_z[r]
        e *= oml
        e += np.multiply(self._cfg("lam", r), z, out=t4)
        _put(self.ewma_z, r, e)
        ewz = self._cfg("ew_z", r)
        if self._ewma_settled:
            # (1-λ)^(2i) no longer changes 1 - (1-λ)^(2i): the limits are the asymptotic ones
            np.multiply(np.greater(e, ewz, out=c).view(U), U(Rule.EWMA_HIGH >> 16), out=b2)
            _set(b2, np.less(e, np.negative(ewz), out=c), Rule.EWMA_LOW >> 16, tmp)
        else:
            decay = self.ewma_decay[r]
            decay *= oml
            decay *= oml
            _put(self.ewma_decay, r, decay)
            # exact time-varying limits L·sqrt(λ/(2-λ)·(1 - (1-λ)^(2i))); once 1 - (1-λ)^(2i) rounds
            # to 1 they equal the settled ones exactly, so settling changes no result
            w = np.subtract(1.0, decay, out=t4)
            np.sqrt(w, out=w)
            w *= ewz
            np.multiply(np.greater(e, w, out=c).view(U), U(Rule.EWMA_HIGH >> 16), out=b2)
            np.negative(w, out=w)
            _set(b2, np.less(e, w, out=c), Rule.EWMA_LOW >> 16, tmp)
        # tabular CUSUM of z: C+ = max(0, z - k + C+), C- = max(0, -z - k + C-), alarm above h
        zero = self._zero[:n]
        k = self._cfg("k", r)
        cp, cn = self.cpos_z[r], self.cneg_z[r]
        cp += z
        cp -= k
        np.maximum(cp, zero, out=cp)
        cn -= z
        cn -= k
        np.maximum(cn, zero, out=cn)
        _put(self.cpos_z, r, cp)
        _put(self.cneg_z, r, cn)
        for cnt_arr, cs in ((self.npos, cp), (self.nneg, cn)):
            cnt = cnt_arr[r]
            cnt += 1
            # int32 times bool directly: no separate bool → int32 copy
            np.multiply(cnt, np.greater(cs, zero, out=c), out=cnt)
            _put(cnt_arr, r, cnt)
        hh = self._cfg("h", r)
        _set(b2, np.greater(cp, hh, out=c), Rule.CUSUM_POS >> 16, tmp)
        _set(b2, np.greater(cn, hh, out=c), Rule.CUSUM_NEG >> 16, tmp)
        if self._has_spec:
            _set(b2, np.greater(x, self._cfg("usl", r), out=c), Rule.ABOVE_USL >> 16, tmp)
            _set(b2, np.less(x, self._cfg("lsl", r), out=c), Rule.BELOW_LSL >> 16, tmp)

    def _cfg(self, name: str, r: slice | NDArray[np.int64]) -> float | NDArray[np.float64]:
        """A per-row setting for rows `r`: a plain number when every row has the same value (no per-row pass)."""
        v = self._uniform.get(name)
        if v is not None:
            return v
        arr: NDArray[np.float64] = getattr(self, name)
        return arr[r]

    def _alarm(
        self,
        ra: NDArray[np.int64],
        x: NDArray[np.float64],
        t: NDArray[np.int64],
        cand: NDArray[np.intp],
        mc: NDArray[np.uint32],
    ) -> AlarmEvents:
        """Feed the (row, kind) channels that can change state to the tracker; `cand` are the positions with a hit or a live alarm, `mc` their masks."""
        rows = cand if ra is self._rows else ra[cand]  # a full tick's positions are its rows
        raised = _KIND_TABLE[mc >> 12]
        raised |= (mc & 0xFFF) != 0
        on = self.alarm_on[rows]
        # a channel can change state only when raised differs from active or a timer runs
        work = raised ^ on
        if not self._instant_alarms:  # without delays no timer ever runs: alarm_wait stays 0
            work |= self.alarm_wait[rows]
        # bit k of row i unpacks to position 8·i + k; only bits below _N_KINDS are ever set
        sel = np.flatnonzero(np.unpackbits(work, bitorder="little").view(bool))
        if sel.size == 0:
            return AlarmEvents.empty()
        loc, kind = sel >> 3, sel & 7
        er = rows[loc]
        chs = er * _N_KINDS + kind
        at = cand[loc]  # position in the round of each selected channel
        kbit = np.left_shift(1, kind).astype(_U8)
        up = (raised[loc] & kbit) != 0
        tr = self.alarms
        if self._instant_alarms:
            # no delays: every selected channel is a transition (active becomes raised), no timers
            tr.active[chs] = up
            self.alarm_on[rows] = raised
            self.alarm_busy[rows] = raised != 0
            ev_t, start, k = t[at], up, loc
        else:
            ev = tr.update(chs, t[at], up, unique=True)
            act = tr.active[chs]
            wait = (tr.pending_since[chs] >= 0) | (tr.clearing_since[chs] >= 0)
            # one row's channels have distinct kind bits, so summing them per row is an OR
            n = cand.size
            on &= ~work
            on |= np.bincount(loc, weights=kbit * act, minlength=n).astype(_U8)
            wt = np.bincount(loc, weights=kbit * wait, minlength=n).astype(_U8)
            self.alarm_on[rows] = on
            self.alarm_wait[rows] = wt
            self.alarm_busy[rows] = (on | wt) != 0
            if not len(ev):
                return ev
            ev_t, start = ev.t_ns, ev.start
            k = loc[_index_of(ev.row, chs)]
            er, kind = np.divmod(ev.row, _N_KINDS)
        # value and limit only for the transitions
        val, lim = self._alarm_value_limit(er, kind, x[cand[k]])
        return AlarmEvents(er, kind.astype(np.int16), ev_t, start, val, lim, mc[k])

    def _alarm_value_limit(
        self, rows: NDArray[np.int64], kind: NDArray[np.int64], x: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The value that decided each alarm transition and the limit it crossed, per kind; `x` is a fresh array (kept as the value)."""
        cl, sg = self.cl[rows], self.sigma[rows]
        # rules and chart (kinds 0, 1): the 3σ limit on the value's side; cl ± 3σ as
        # cl + copysign(3σ, x - cl) gives the same bits with fewer passes (x = cl gives +0)
        val = x
        lim = np.multiply(sg, 3.0)
        np.copysign(lim, np.subtract(x, cl), out=lim)
        lim += cl
        other = np.flatnonzero(kind >= 2)  # EWMA, CUSUM and spec transitions are the fewer
        if other.size == 0:
            return val, lim
        ko, ro, co, so = kind[other], rows[other], cl[other], sg[other]
        for k in (2, 3, 4):
            j = np.flatnonzero(ko == k)
            if j.size == 0:
                continue
            i, rk, ck, sk = other[j], ro[j], co[j], so[j]
            if k == 2:
                lam, L = self._cfg("lam", rk), self._cfg("L", rk)
                # settled: 1 - (1-λ)^(2i) is 1.0 for every row, so the factor is one number
                f = 1.0 if self._ewma_settled else 1 - self.ewma_decay[rk]
                width = L * sk * np.sqrt(lam / (2 - lam) * f)
                e = ck + sk * self.ewma_z[rk]
                val[i] = e
                lim[i] = ck + np.copysign(width, e - ck)
            elif k == 3:
                val[i] = np.maximum(self.cpos_z[rk], self.cneg_z[rk]) * sk
                lim[i] = self._cfg("h", rk) * sk
            else:
                lim[i] = np.where(x[i] >= ck, self._cfg("usl", rk), self._cfg("lsl", rk))
        return val, lim

    # ------------------------------------------------------------------ read-out
    def snapshot(self, rows: ArrayLike | None = None) -> dict[str, NDArray[Any]]:
        """Indicator arrays for `rows` (all rows when None); NaN means no data, the reason_* arrays say why (NoData codes)."""
        rr = self._rows if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        check_rows("SpcEngine.snapshot rows", rr, self.capacity)
        self._cap_flush()
        # all rows: slices (views) instead of gathers
        r: slice | NDArray[np.int64] = slice(None) if rows is None else rr
        mean, sd, mn, mx = self._window_stats(r)
        ph2 = self.phase[r] == 1
        cl, sg = self.cl[r], self.sigma[r]
        ns = self.sub_n[r]
        with np.errstate(invalid="ignore", divide="ignore"):
            lim = np.where(ph2, 1.0, np.nan)
            ewma_w = self.L[r] * sg * np.sqrt(self.lam[r] / (2 - self.lam[r]) * (1 - self.ewma_decay[r]))
            xcl, rbar, sbar = self.xcl[r] * lim, self.rbar[r] * lim, self.sbar[r] * lim
            nsi = np.clip(ns, 2, C.MAX_SUBGROUP)
            has_sub = np.where(ns >= 2, 1.0, np.nan)
            kk, hh = self.k[r] * sg, self.h[r] * sg
            cpos, cneg = self.cpos_z[r] * sg * lim, self.cneg_z[r] * sg * lim
            shift = np.where(
                cpos > hh,
                cl + kk + cpos / self.npos[r],
                np.where(cneg > hh, cl - kk - cneg / self.nneg[r], np.nan),
            )
            cap = self._capability_indices(r)
        f = self.fill[r]
        reason_w = np.where(f == 0, NoData.NO_SAMPLES, np.where(f < 2, NoData.TOO_FEW, NoData.OK)).astype(
            np.uint8
        )
        reason_l = np.where(
            ~ph2,
            NoData.BASELINE,
            np.where(np.isnan(sg), NoData.ZERO_SIGMA, NoData.OK),
        ).astype(np.uint8)
        out: dict[str, NDArray[Any]] = {
            "row": rr,
            "n": self.n_good_off[r] + self._ticks,
            "missing": self.n_missing[r].copy(),
            "missing_run": self.missing_run[r].copy(),
            "last_t_ns": self.last_t[r].copy(),
            "window_n": f.astype(np.int64),
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
            "ewma": (cl + sg * self.ewma_z[r]) * lim,
            "ewma_ucl": (cl + ewma_w) * lim,
            "ewma_lcl": (cl - ewma_w) * lim,
            "cusum_pos": cpos,
            "cusum_neg": cneg,
            "cusum_h": hh * lim,
            "cusum_shift": shift,
            "rule_mask": _mask32(self.mask_b[:, r]),
            "reason_window": reason_w,
            "reason_limits": reason_l,
        }
        out.update(cap)
        return out

    def _window_stats(
        self, r: slice | NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Mean, sd (n-1), min and max of each row's window from the running sums (NaN without data)."""
        f = self.fill[r]
        s1, s2 = self.win_s1[r], self.win_s2[r]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.win_ref[r] + s1 / f
            c = s1 * s1 / f
            var = (s2 - c) / (f - 1)
            # a centre far from the window mean (a level change since the last exact recompute):
            # (Σ(v-ref))²/n within 2^-10 of Σ(v-ref)² would cancel, so those rows are computed exactly
            bad = np.flatnonzero((c > s2 * (1.0 - 2.0**-10)) & (f > 1))
            if bad.size:
                rows = self._rows[r][bad]
                fb = f[bad]
                ref, e1, e2 = self._exact_window(rows)
                mean[bad] = ref + e1 / fb
                var[bad] = (e2 - e1 * e1 / fb) / (fb - 1)
            mean = np.where(f > 0, mean, np.nan)
            sd = np.where(f > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)
        mn, mx = self._window_extremes(r)
        mn = np.where(f > 0, mn, np.nan)
        mx = np.where(f > 0, mx, np.nan)
        return mean, sd, mn, mx

    def _window_extremes(
        self, r: slice | NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Window min and max: this pass so far, the previous pass's slots up to the next block boundary, its block suffix."""
        S, g = self.capacity, _EXT_BLOCK
        if self._lock is not None and isinstance(r, slice):
            # every row: same newest slot and window, full windows
            p, wl = self._lock
            ql = (p - 1) % wl + 1
            kl = -(-ql // g)
            mn = np.minimum(self.pfx_min[r], self.sfx_min[kl, r])
            mx = np.maximum(self.pfx_max[r], self.sfx_max[kl, r])
            if min(kl * g, wl) > ql:
                part = self.buf[ql : min(kl * g, wl), r]
                np.minimum(mn, part.min(0), out=mn)
                np.maximum(mx, part.max(0), out=mx)
            return mn, mx
        rows = self._rows[r]
        w = self.window[r].astype(np.int64)
        # q: the slot after the newest (this pass holds 0..q-1); kb: the first block boundary at or after q
        nxt = self._lock[0] if self._lock is not None else self.pos[r].astype(np.int64)
        q = (nxt - 1) % w + 1
        kb = -(-q // g)
        mn = np.minimum(self.pfx_min[r], self.sfx_min.reshape(-1)[kb * S + rows])
        mx = np.maximum(self.pfx_max[r], self.sfx_max.reshape(-1)[kb * S + rows])
        # slots before a full window (first pass) hold no previous pass
        full = self.fill[r] == w
        end = np.minimum(kb * g, w)
        flat = self.buf.reshape(-1)
        for j in range(g - 1):
            slot = q + j
            take = full & (slot < end)
            v = flat[np.where(take, slot, 0) * S + rows]
            np.minimum(mn, np.where(take, v, np.inf), out=mn)
            np.maximum(mx, np.where(take, v, -np.inf), out=mx)
        return mn, mx

    def _capability_indices(self, r: slice | NDArray[np.int64]) -> dict[str, NDArray[Any]]:
        cap_n = self.cap_n_off[r] + self._ticks
        n = cap_n.astype(F64)
        mu = self.cap_ref[r] + self.cap_s1[r] / n
        overall = np.sqrt(np.maximum(0.0, (self.cap_s2[r] - self.cap_s1[r] ** 2 / n) / (n - 1)))
        ns = np.clip(self.sub_n[r], 2, C.MAX_SUBGROUP)
        k = self.cap_k[r].astype(F64)
        within_sub = self.cap_r[r] / k / C.D2[ns]
        within_ind = self.cap_mr[r] / (cap_n - 1) / C.D2_MR
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
            "cap_n": cap_n,
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
        """Bytes held in per-signal state arrays: ring buffer, suffix extremes, counters, limits, settings, alarms (scratch excluded)."""
        total = 0
        for name, v in vars(self).items():
            # underscore arrays are scratch, constants and the row index, not state
            if isinstance(v, np.ndarray) and not name.startswith("_") and self.capacity in v.shape:
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


def _sum_slots(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sum over axis 0 strictly slot 0 first: sum(0) switches to pairwise summation when few columns make the axis contiguous."""
    if a.shape[0] > 16:
        return np.add.accumulate(a, axis=0)[-1]
    # a subgroup's few slots: one add per slot, no [n, rows] temporary
    acc = a[0] + a[1]
    for j in range(2, a.shape[0]):
        acc += a[j]
    return acc


def _all_good(readings: Readings) -> bool:
    """True when every value may enter a statistic (Readings.good all true), tested by two reductions instead of three passes."""
    if readings.quality.shape[0] and int(readings.quality.max()) >= BAD_THRESHOLD:
        return False
    # a sum is finite only when every term is (a finite sum may also overflow: then the full test decides)
    if np.isfinite(np.add.reduce(readings.value)):
        return True
    return bool(readings.good.all())


def _mask32(b: NDArray[np.uint8], at: NDArray[np.intp] | None = None) -> NDArray[np.uint32]:
    """The uint32 rule masks from their three bytes ([3, n]), at positions `at` (all when None)."""
    b0, b1, b2 = (b[0], b[1], b[2]) if at is None else (b[0][at], b[1][at], b[2][at])
    m = b2.astype(np.uint32) << 16
    m |= b1.astype(np.uint32) << 8
    m |= b0
    return m


def _index_of(keys: NDArray[np.int64], table: NDArray[np.int64]) -> NDArray[np.intp]:
    """Position of each key in `table` (unique values, every key present)."""
    order = np.argsort(table, kind="stable")
    return order[np.searchsorted(table[order], keys)]
